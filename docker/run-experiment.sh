#!/bin/sh
# Submit one fedmtl experiment to a running SuperLink with `flwr run`, stream its log,
# and exit non-zero unless the run completed. Used by docker/compose.yaml's
# `experiment` service; works the same outside Docker.
#
#   SUPERLINK          host:port of the SuperLink            (default superlink:8000)
#   OVERRIDES          Hydra overrides, as for python -m fedmtl.simulate
#   OUTPUT_DIR         the run folder, on the ServerApp's machine (default: outputs/deployed/...)
#   ROOT_CERTIFICATES  CA certificate for a TLS SuperLink; unset = insecure
#   APP_DIR            the Flower app (pyproject.toml with [tool.flwr.app]; default /app)
set -eu
SUPERLINK="${SUPERLINK:-superlink:8000}"
APP_DIR="${APP_DIR:-/app}"
export FLWR_HOME="${FLWR_HOME:-/tmp/flwr-home}"
mkdir -p "$FLWR_HOME"

python - "$FLWR_HOME" <<'PY'
import json, os, sys
home = sys.argv[1]
conn = {"address": os.environ.get("SUPERLINK", "superlink:8000")}
if os.environ.get("ROOT_CERTIFICATES"):
    conn["root-certificates"] = os.environ["ROOT_CERTIFICATES"]
else:
    conn["insecure"] = True
lines = ['[superlink]', 'default = "compose"', '', '[superlink.compose]']
lines += [f"{k} = {json.dumps(v)}" for k, v in conn.items()]
open(os.path.join(home, "config.toml"), "w").write("\n".join(lines) + "\n")
rc = {"overrides": os.environ.get("OVERRIDES", ""), "output-dir": os.environ.get("OUTPUT_DIR", "")}
open(os.path.join(home, "run-config.toml"), "w").write("".join(f"{k} = {json.dumps(v)}\n" for k, v in rc.items()))
PY

# wait for the SuperLink's Control API
i=0
until flwr ls compose --format json >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then echo "run-experiment: no SuperLink at $SUPERLINK after 120 s" >&2; exit 2; fi
  sleep 2
done

out=$(flwr run "$APP_DIR" compose --run-config "$FLWR_HOME/run-config.toml" --format json)
run_id=$(printf '%s' "$out" | python -c 'import json,sys; print(json.load(sys.stdin)["run-id"])') || {
  echo "run-experiment: flwr run failed: $out" >&2; exit 2; }
echo "run-experiment: run $run_id submitted to $SUPERLINK (overrides: ${OVERRIDES:-none})"
flwr log "$run_id" compose --stream || true

while :; do
  status=$(flwr ls compose --run-id "$run_id" --format json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])')
  case "$status" in finished*) break ;; esac
  sleep 3
done
echo "run-experiment: run $run_id $status -> ${OUTPUT_DIR:-outputs/deployed/...}"
[ "$status" = "finished:completed" ]

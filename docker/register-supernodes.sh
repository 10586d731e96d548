#!/bin/sh
# Register every SuperNode public key in CERTS_DIR (supernode-K.pub, from
# docker/certs/generate.sh) with a SuperLink that runs --enable-supernode-auth.
# Used by docker/compose.tls.yaml's `register` service before the SuperNodes start.
#
#   SUPERLINK          host:port of the SuperLink  (default superlink:8000)
#   ROOT_CERTIFICATES  the CA certificate          (default /certs/ca.crt)
#   CERTS_DIR          where the keys are          (default /certs)
set -eu
CERTS_DIR="${CERTS_DIR:-/certs}"
export FLWR_HOME="${FLWR_HOME:-/tmp/flwr-home}"
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "compose"

[superlink.compose]
address = "${SUPERLINK:-superlink:8000}"
root-certificates = "${ROOT_CERTIFICATES:-/certs/ca.crt}"
TOML

i=0
until flwr ls compose --format json >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then echo "register-supernodes: no SuperLink after 120 s" >&2; exit 2; fi
  sleep 2
done
for key in "$CERTS_DIR"/supernode-*.pub; do
  [ -e "$key" ] || { echo "register-supernodes: no supernode-*.pub in $CERTS_DIR (run docker/certs/generate.sh)" >&2; exit 2; }
  # a key registered by an earlier start is refused again; the SuperNode still gets in
  flwr supernode register "$key" compose || echo "register-supernodes: $key not registered now (registered before?)"
done

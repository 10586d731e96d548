#!/bin/sh
# Test certificates and SuperNode keys for docker/compose.tls.yaml (not for production):
# a CA, the SuperLink's certificate (valid for superlink, localhost, 127.0.0.1 and any
# extra names/addresses given as arguments), three SuperNode key pairs and the SuperExec
# shared secrets, written next to this script. Needs Python with the `cryptography`
# package (a Flower dependency).
#
#   sh docker/certs/generate.sh [EXTRA_HOST_OR_IP ...]
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sans="--san superlink"
for h in "$@"; do sans="$sans --san $h"; done
# SuperExec shared secrets: the SuperLink and its serverapp, each SuperNode and its clientapp
n="${SUPERNODES:-3}"
secrets="--superexec-secret superlink"
k=0
while [ "$k" -lt "$n" ]; do secrets="$secrets --superexec-secret supernode-$k"; k=$((k + 1)); done
# shellcheck disable=SC2086
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" python -m fedmtl.deploy.certs "$here" $sans --supernodes "$n" $secrets
echo "The containers run as uid 49999; let them read their keys and secrets (ca.key stays yours):"
echo "  sudo chown 49999:49999 $here/server.key $here/supernode-[0-9] $here/superexec-*.secret"

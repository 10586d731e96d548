#!/bin/sh
# Test certificates and SuperNode keys for docker/compose.tls.yaml (not for production):
# a CA, the SuperLink's certificate (valid for superlink, localhost, 127.0.0.1 and any
# extra names/addresses given as arguments) and three SuperNode key pairs, written next
# to this script. Needs Python with the `cryptography` package (a Flower dependency).
#
#   sh docker/certs/generate.sh [EXTRA_HOST_OR_IP ...]
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sans="--san superlink"
for h in "$@"; do sans="$sans --san $h"; done
# shellcheck disable=SC2086
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" python -m fedmtl.deploy.certs "$here" $sans --supernodes "${SUPERNODES:-3}"
echo "The containers run as uid 49999; let them read the keys:"
echo "  sudo chown -R 49999:49999 $here   (or chmod a+r the files, for a local trial only)"

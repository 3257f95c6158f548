#!/usr/bin/env bash
# Installs the JSON Schema validator the tests check the policy file's schema with: a pinned
# python-jsonschema in a venv under .peers/ (ZR_PEERS_DIR). Idempotent; prints nothing when the
# pinned version is there already. tests/artifacts.rs finds it at .peers/jsonschema/bin/python (or
# ZR_JSONSCHEMA_PYTHON).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${ZR_PEERS_DIR:-$ROOT/.peers}
PYTHON=${PYTHON:-python3}
VERSION=4.23.0
VENV=$PEERS/jsonschema

if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.complete" 2>/dev/null)" = "$VERSION" ]; then exit 0; fi
echo "[install] jsonschema==$VERSION into $VENV" >&2
rm -rf "$VENV"
mkdir -p "$PEERS"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "jsonschema==$VERSION"
echo "$VERSION" >"$VENV/.complete"

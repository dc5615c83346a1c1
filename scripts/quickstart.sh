#!/usr/bin/env bash
# One command on a fresh machine: set up ./.venv (first run only), then the offline quick start.
# Extra arguments go to scripts/quickstart.py (e.g. --epochs 5, --offline).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" requirements.txt
cd "$ROOT"
exec "$PY" scripts/quickstart.py "$@"

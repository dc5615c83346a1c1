# Sourced by the entry-point scripts: makes sure ./.venv exists and holds the requirements,
# then exports PY (the interpreter to use). Re-installs only when a requirements file changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
REQ_FILE="${1:-requirements.txt}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtual environment in $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.installed-$(basename "$REQ_FILE")"
if [ ! -f "$stamp" ] || [ "$ROOT/$REQ_FILE" -nt "$stamp" ] || [ "$ROOT/requirements.txt" -nt "$stamp" ]; then
  echo "==> installing $REQ_FILE into $VENV (first run only; torch is large)"
  "$PY" -m pip install --disable-pip-version-check -q -r "$ROOT/$REQ_FILE"
  touch "$stamp"
fi
export PY ROOT

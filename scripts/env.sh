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
up_to_date() {  # $1: a stamp file, newer than the requirements it covers
  [ -f "$1" ] && ! [ "$ROOT/$REQ_FILE" -nt "$1" ] && ! [ "$ROOT/requirements.txt" -nt "$1" ]
}
# requirements-test.txt includes requirements.txt, so its stamp covers both.
if ! up_to_date "$stamp" && ! up_to_date "$VENV/.installed-requirements-test.txt"; then
  echo "==> installing $REQ_FILE into $VENV (first run only; torch is large)"
  "$PY" -m pip install --disable-pip-version-check -q -r "$ROOT/$REQ_FILE"
  touch "$stamp"
fi
export PY ROOT

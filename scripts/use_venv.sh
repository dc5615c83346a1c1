# Sourced by the run scripts, so that their `python` is the project's environment without activating it:
# an activated virtual environment is used as it is; otherwise ./.venv (made by scripts/quickstart.sh or
# scripts/test.sh, or by hand as in the README) when it exists; otherwise the `python` on PATH.
if [ -z "${VIRTUAL_ENV:-}" ]; then
  _venv="${VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv}"
  if [ -x "$_venv/bin/python" ]; then
    export PATH="$_venv/bin:$PATH"
  fi
  unset _venv
fi

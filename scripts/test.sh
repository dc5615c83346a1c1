#!/usr/bin/env bash
# Runs the test suite in ./.venv, creating it and installing requirements-test.txt when needed.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k models`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" requirements-test.txt
cd "$ROOT"
set +e
"$PY" -m pytest -q "$@" tests
rc=$?
# 5 = "no tests collected": not a failure for an empty selection.
[ "$rc" -eq 5 ] && rc=0
exit "$rc"

#!/usr/bin/env bash
# Fetches the paper's pre-trained CIFAR-100 teachers to save/models/<arch>_vanilla/ckpt_epoch_240.pth.
#
# Usage: bash scripts/fetch_pretrained_teachers.sh [--dest DIR] [ARCH ...]
#   ARCH: wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50 (default: all six)
#   --dest DIR: folder holding the <arch>_vanilla folders (default: <repo>/save/models)
#
# Environment:
#   TEACHER_BASE_URL      base of <arch>_vanilla/ckpt_epoch_240.pth
#                         (default: http://shape2prog.csail.mit.edu/repo, the original's)
#   TEACHER_FALLBACK_URL  second base, tried for a file when the first base fails for it
#                         (default: empty, no fallback; e.g. a mirror of the folder above)
#   TEACHER_DEST          like --dest (--dest wins)
#   TEACHER_RETRIES       retries of a download after a transient error (default: 3)
#   TEACHER_TIMEOUT       seconds allowed to connect, and without progress, per try (default: 30)
#   FETCH_TOOL            curl or wget (default: curl when installed, else wget)
#   PYTHON                interpreter that verifies the files; it needs torch (default: ./.venv,
#                         created and filled from requirements.txt by scripts/env.sh if missing)
#
# Each file is downloaded to a temporary file next to its destination, loaded into its architecture
# with strict=True (scripts/verify_teacher.py), and only then renamed into place, so an interrupted
# or failed download never leaves a partial checkpoint. Files already present and valid are skipped;
# invalid ones are downloaded again. A failed teacher does not stop the others; the exit status is 1
# if any failed (the message then says what to do next: another source, or the commands that train the
# teachers and put them in place), 2 for a usage error. No folder it made is left empty.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEACHERS=(wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50)
CKPT_NAME="ckpt_epoch_240.pth"
BASE_URL="${TEACHER_BASE_URL:-http://shape2prog.csail.mit.edu/repo}"
FALLBACK_URL="${TEACHER_FALLBACK_URL:-}"
DEST="${TEACHER_DEST:-$ROOT/save/models}"
RETRIES="${TEACHER_RETRIES:-3}"
TIMEOUT="${TEACHER_TIMEOUT:-30}"

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

usage_error() {
  echo "fetch_pretrained_teachers.sh: $1 (see --help)" >&2
  exit 2
}

is_teacher() {
  local name
  for name in "${TEACHERS[@]}"; do
    [ "$name" = "$1" ] && return 0
  done
  return 1
}

ARCHS=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dest) [ "$#" -ge 2 ] || usage_error "--dest needs a folder"; DEST="$2"; shift 2 ;;
    --dest=*) DEST="${1#--dest=}"; shift ;;
    --) shift; ARCHS+=("$@"); break ;;
    -*) usage_error "unknown option $1" ;;
    *) ARCHS+=("$1"); shift ;;
  esac
done
if [ "${#ARCHS[@]}" -eq 0 ]; then
  ARCHS=("${TEACHERS[@]}")
fi
for arch in "${ARCHS[@]}"; do
  is_teacher "$arch" || usage_error "unknown teacher '$arch' (choose from: ${TEACHERS[*]})"
done
case "$DEST" in
  /*) ;;
  *) DEST="$PWD/$DEST" ;;
esac
case "$RETRIES$TIMEOUT" in
  *[!0-9]*) usage_error "TEACHER_RETRIES and TEACHER_TIMEOUT must be whole numbers" ;;
esac
[ "$TIMEOUT" -gt 0 ] || usage_error "TEACHER_TIMEOUT must be at least 1 second"

FETCH_TOOL="${FETCH_TOOL:-}"
if [ -z "$FETCH_TOOL" ]; then
  if command -v curl >/dev/null 2>&1; then
    FETCH_TOOL=curl
  elif command -v wget >/dev/null 2>&1; then
    FETCH_TOOL=wget
  else
    echo "fetch_pretrained_teachers.sh: neither curl nor wget is installed" >&2
    exit 1
  fi
fi
case "$FETCH_TOOL" in
  curl | wget) command -v "$FETCH_TOOL" >/dev/null 2>&1 || usage_error "FETCH_TOOL=$FETCH_TOOL is not installed" ;;
  *) usage_error "FETCH_TOOL must be curl or wget, not '$FETCH_TOOL'" ;;
esac

if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
else
  # Explicit argument: a sourced file would otherwise see this script's arguments as its own.
  source "$ROOT/scripts/env.sh" requirements.txt
fi
# Checked once here rather than after each (large) download.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" 2>/dev/null; then
  echo "fetch_pretrained_teachers.sh: $PY cannot import torch, needed to verify the checkpoints (set PYTHON)" >&2
  exit 1
fi

BASES=("$BASE_URL")
if [ -n "$FALLBACK_URL" ]; then
  BASES+=("$FALLBACK_URL")
fi
# mktemp creates 0600 files; the kept checkpoint gets the usual permissions instead.
FILE_MODE="$(printf '%o' "$((0666 & ~0$(umask)))")"

# The outermost folder of $DEST that does not exist yet: what is left of it empty at the end is removed.
MADE_ROOT=""
path="$DEST"
while [ ! -e "$path" ]; do
  MADE_ROOT="$path"
  path="$(dirname -- "$path")"
done

TMP_FILE=""
cleanup() {
  if [ -n "$TMP_FILE" ]; then
    rm -f -- "$TMP_FILE"
    TMP_FILE=""
  fi
}
at_exit() {
  cleanup
  if [ -n "$MADE_ROOT" ] && [ -d "$MADE_ROOT" ]; then
    find "$MADE_ROOT" -depth -type d -empty -delete 2>/dev/null || true
  fi
}
trap at_exit EXIT
trap 'at_exit; exit 130' INT
trap 'at_exit; exit 143' TERM

say() {
  echo "[$1] $2"
}

last_line() {
  printf '%s\n' "$1" | sed '/^[[:space:]]*$/d' | tail -n 1
}

download() {
  local url="$1" out="$2" options
  if [ "$FETCH_TOOL" = curl ]; then
    # --fail: an HTTP error is an error (no HTML error page saved); --retry only retries
    # transient failures (timeouts, 408/429/5xx), never a 404.
    options=(--fail --location --silent --show-error --retry "$RETRIES" --retry-delay 2)
    options+=(--connect-timeout "$TIMEOUT" --speed-limit 1024 --speed-time "$TIMEOUT")
    curl "${options[@]}" --output "$out" "$url"
  else
    options=(--no-verbose --tries="$((RETRIES + 1))" --waitretry=2 --timeout="$TIMEOUT")
    wget "${options[@]}" --output-document="$out" "$url"
  fi
}

verify() {
  "$PY" "$ROOT/scripts/verify_teacher.py" "$1" "$2"
}

# Sets FAIL_REASON and returns 1 on failure. Called as an `if` condition, where `set -e` is off,
# so every step checks its own status.
fetch_one() {
  local arch="$1" dir="$DEST/${1}_vanilla" base url out reasons="" made_dir=""
  local target="$dir/$CKPT_NAME"
  FAIL_REASON=""
  if [ -e "$target" ]; then
    if out="$(verify "$target" "$arch" 2>&1)"; then
      say "$arch" "already present and valid, skipped: $target"
      return 0
    fi
    say "$arch" "$target is not a valid checkpoint ($(last_line "$out")); downloading it again"
  fi
  [ -d "$dir" ] || made_dir="yes"
  if ! out="$(mkdir -p -- "$dir" 2>&1)"; then
    FAIL_REASON="cannot create $dir: $(last_line "$out")"
    return 1
  fi
  for base in "${BASES[@]}"; do
    url="${base%/}/${arch}_vanilla/$CKPT_NAME"
    if ! TMP_FILE="$(mktemp "$dir/.$CKPT_NAME.XXXXXX")"; then
      TMP_FILE=""
      FAIL_REASON="cannot create a temporary file in $dir"
      return 1
    fi
    say "$arch" "downloading $url"
    if ! out="$(download "$url" "$TMP_FILE" 2>&1)"; then
      reasons+="${reasons:+; }$url: download failed: $(last_line "$out")"
    elif ! out="$(verify "$TMP_FILE" "$arch" 2>&1)"; then
      reasons+="${reasons:+; }$url: not a valid $arch checkpoint: $(last_line "$out")"
    elif ! chmod "$FILE_MODE" "$TMP_FILE" || ! mv -f -- "$TMP_FILE" "$target"; then
      reasons+="${reasons:+; }cannot move the download to $target"
    else
      TMP_FILE=""
      say "$arch" "saved $target ($(last_line "$out"))"
      return 0
    fi
    cleanup
  done
  if [ -n "$made_dir" ]; then
    rmdir -- "$dir" 2>/dev/null || true
  fi
  FAIL_REASON="$reasons"
  return 1
}

FAILED=()
for arch in "${ARCHS[@]}"; do
  if ! fetch_one "$arch"; then
    echo "[$arch] FAILED: $FAIL_REASON" >&2
    FAILED+=("$arch")
  fi
done
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "could not fetch ${#FAILED[@]} of ${#ARCHS[@]} teachers: ${FAILED[*]}" >&2
  if [ -z "$FALLBACK_URL" ]; then
    other="set TEACHER_FALLBACK_URL (or TEACHER_BASE_URL) to a mirror"
  else
    other="set TEACHER_BASE_URL to another mirror"
  fi
  echo "what next: rerun when $BASE_URL is reachable; or $other holding <arch>_vanilla/$CKPT_NAME;" \
    "or copy the files from a machine that has them into $DEST; or train each teacher here (240 epochs):" >&2
  for arch in "${FAILED[@]}"; do
    run="${arch}_cifar100_lr_0.05_decay_0.0005_trial_0"  # train_teacher.py's folder with its defaults
    printf '  cd %q && %q train_teacher.py --model %q && mkdir -p %q && cp %q %q\n' "$ROOT" "$PY" "$arch" \
      "$DEST/${arch}_vanilla" "save/models/$run/$CKPT_NAME" "$DEST/${arch}_vanilla/$CKPT_NAME" >&2
  done
  exit 1
fi
echo "all ${#ARCHS[@]} teachers are in $DEST"

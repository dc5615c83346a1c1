#!/usr/bin/env bash
# One command that proves the GPU path, in at most 8 minutes on one H100/H200: tests/test_gpu.py; the README's
# commands (teacher, KD and CRD students, --nce_k 16384 on 20,000 synthetic images); every method for a few
# iterations under --deterministic; --amp --channels_last, --compile, --compile reduce-overhead; kill -9 in an
# epoch then --resume auto (same weights as uninterrupted); torchrun over every GPU; the benchmark's step tables
# with epoch-time estimates for the paper's 240 epochs. Prints a PASS/FAIL line per step and writes a report.
#
#   bash scripts/gpu_check.sh [REPORT.md] [--dry-run] [--jobs N] [--budget SECONDS] [--keep]
#
# REPORT.md: the markdown report (default gpu_check.md). --dry-run lists the steps (no GPU needed). --jobs: runs
# at a time between the teacher and the benchmark (default 6; the benchmark always runs alone). --budget: the
# whole check's time limit (default 480); a step gets at most what is left. --keep: keep the temporary folder.
# Everything is written under a temporary folder (synthetic data, runs, logs). Exit status: 0 when every step
# passed, 1 when one failed, 2 for bad usage or no CUDA device.
#
# Budgets are 3-5x expected times: BENCHMARKS.md's FLOPs per image at >= 50 TFLOP/s (10% of the TF32 peak; eager
# steps at batch 64 are launch-bound, about 2 ms) make a 20,000-image epoch 1-3 s, so a run is dominated by its
# ~10 s of start-up (Python, CUDA, cuDNN autotuning, validation); torch.compile adds about a minute.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMMAND="bash scripts/gpu_check.sh${*:+ $*}"
REPORT=gpu_check.md DRY_RUN=false JOBS=6 BUDGET=480 KEEP=false
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=true ;;
    --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --keep) KEEP=true ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) REPORT=$1 ;;
  esac
  shift
done
if ! [[ $JOBS =~ ^[1-9][0-9]*$ && $BUDGET =~ ^[1-9][0-9]*$ ]]; then
  echo "gpu_check.sh: --jobs and --budget take positive integers" >&2
  exit 2
fi
[[ $REPORT = /* ]] || REPORT="$PWD/$REPORT"
TEACHER=./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth  # the README's --path_t, relative to $WORK
README_CRD="--path_t $TEACHER --distill crd --model_s resnet8x4 -a 0 -b 0.8 --trial 1"  # the README's CRD student

if $DRY_RUN; then
  PY='$PY' WORK='$WORK' NGPU='<GPUs>'
  QPY="${VENV:-$ROOT/.venv}/bin/python"
  [ -x "$QPY" ] || QPY=python3
else
  source "$ROOT/scripts/env.sh" requirements-test.txt || exit 2
  set +e  # env.sh sets -e: a failed step must not end the check
  QPY=$PY
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
  if [ "${NGPU:-0}" -lt 1 ]; then
    echo "gpu_check.sh: no CUDA device here, so there is nothing to prove (--dry-run lists the steps)" >&2
    exit 2
  fi
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
  mkdir -p "$WORK/logs"
  cd "$WORK" || exit 2
  # Unbuffered: a killed or timed-out run keeps its last lines in its log.
  export PY ROOT WORK NGPU TEACHER README_CRD PYTHONUNBUFFERED=1
fi
DEADLINE=$((SECONDS + BUDGET))
$DRY_RUN || trap stop_steps INT TERM

# Step bookkeeping: one entry per step, in launch order; a finished step leaves "<rc> <seconds> <limit>" in
# its log's .rc file and may leave remarks for the report in its .note file.
NAMES=() BUDGETS=() LOGS=() REPORTED=()

slug() { tr -cs '[:alnum:]' '-' <<<"$1" | tr '[:upper:]' '[:lower:]' | cut -c1-48 | sed 's/-$//'; }

# What the steps that run a function of this script do (the dry run lists these instead of the function's name).
declare -A DESCRIBE=(
  [make_data]='$PY -m dataset.synthetic --out $WORK/data20k --train-per-class 200 --test-per-class 10, then'
  [gpu_tests]='$PY -m pytest -q -rs tests/test_gpu.py, then tests/test_determinism.py -k deterministic_cuda (a test skipped here fails the step)'
  [speed_run]="the README's CRD command listed below (its own --save_root) plus these flags; fails on an"
  [kill_and_resume]='train_student.py --distill crd --model_s resnet8x4 -a 0 -b 0.8 --nce_k 256 --deterministic'
  [ddp_run]='$PY -m torch.distributed.run --standalone --nproc_per_node <GPUs> train_student.py + the README'
)
DESCRIBE[make_data]+=' --out $WORK/data500 --train-per-class 5 --test-per-class 1'
DESCRIBE[speed_run]+=" eager fallback of torch.compile or skipped CUDA graphs:"
DESCRIBE[kill_and_resume]+=' --seed 7 --epochs 2 on $WORK/data500: once uninterrupted, once killed with SIGKILL at'
DESCRIBE[kill_and_resume]+=' iteration 3 of epoch 2 and rerun with --resume auto; resnet8x4_last.pth and the CRD state'
DESCRIBE[kill_and_resume]+=' must be equal'
DESCRIBE[ddp_run]+="'s CRD command + --learning_rate 0.05 x <GPUs> --epochs 1 on \$WORK/data20k; results.json must"
DESCRIBE[ddp_run]+=" say world_size <GPUs>"

shown() {  # a command as the dry run lists it
  local text="$*" words=()
  [ "$1 $2" = "bash -c" ] && read -r -a words <<<"$3"
  if ((${#words[@]})) && [ -n "${DESCRIBE[${words[0]}]-}" ]; then
    text=${DESCRIBE[${words[0]}]}
    ((${#words[@]} > 2)) && text+=" ${words[*]:2}"
  fi
  text=${text//"$ROOT/"/}
  echo "${text//"$WORK"/\$WORK}"
}

launch() {  # launch NAME BUDGET CMD...: CMD in the background from $WORK, at most $JOBS at a time
  local i=${#NAMES[@]} name=$1 budget=$2
  shift 2
  NAMES+=("$name") BUDGETS+=("$budget") REPORTED+=(false)
  if $DRY_RUN; then
    LOGS+=("")
    printf '%2d. %s  [budget %ss]\n      %s\n' "$((i + 1))" "$name" "$budget" "$(shown "$@")"
    return
  fi
  local log
  log="$WORK/logs/$(printf %02d $((i + 1)))-$(slug "$name").log"
  LOGS+=("$log")
  while (($(jobs -rp | wc -l) >= JOBS)); do
    wait -n
    print_finished
  done
  local left=$((DEADLINE - SECONDS))
  local limit=$((budget < left ? budget : left))
  if ((limit < 5)); then
    echo "not run: the check's ${BUDGET} s budget was spent" >"$log.note"
    echo "124 0 0" >"$log.rc"
    print_finished
    return
  fi
  (
    export STEP_LOG=$log STEP_NOTE=$log.note
    start=$SECONDS
    timeout -k 10 "$limit" "$@" >"$log" 2>&1 &
    echo $! >"$log.pid"  # timeout leads its own process group: stop_steps signals it, it signals the step
    wait $!
    echo "$? $((SECONDS - start)) $limit" >"$log.rc"
  ) 2>>"$log" &  # bash's own "Killed" notice goes to the log too
}

stop_steps() {  # Ctrl-C or SIGTERM: end the running steps rather than leave them to their time limits
  local log
  for log in "${LOGS[@]}"; do
    [ -f "$log.pid" ] && ! [ -f "$log.rc" ] && kill -TERM "$(cat "$log.pid")" 2>/dev/null
  done
  wait
  echo "gpu_check: stopped; logs in $WORK" >&2
  exit 130
}

finish() {  # wait for every launched step
  $DRY_RUN && return
  wait
  print_finished
}

step() { launch "$@"; finish; }

outcome() {  # outcome I: "PASS", "FAIL (exit N)", "FAIL (timed out after N s)" or "FAIL (not run)"
  local rc secs limit
  read -r rc secs limit <"${LOGS[$1]}.rc"
  if ((rc == 0)); then echo PASS
  elif ((rc == 124 || rc == 137)) && ((limit > 0)); then echo "FAIL (timed out after ${limit} s)"
  elif ((limit == 0)); then echo "FAIL (not run)"
  else echo "FAIL (exit $rc)"
  fi
}

print_finished() {
  local i
  for i in "${!NAMES[@]}"; do
    if ! ${REPORTED[i]} && [ -f "${LOGS[i]}.rc" ]; then
      REPORTED[i]=true
      local result secs
      result=$(outcome "$i")
      secs=$(cut -d' ' -f2 "${LOGS[i]}.rc")
      printf '[%s] %2d. %s (%s s)\n' "${result%% *}" "$((i + 1))" "${NAMES[i]}" "$secs"
    fi
  done
}

# --- the steps' own commands -------------------------------------------------------------------------------

make_data() {  # the README runs' 20,000 images (200 a class) and a 500-image set for few-iteration runs
  cd "$ROOT" &&
    "$PY" -m dataset.synthetic --out "$WORK/data20k" --train-per-class 200 --test-per-class 10 &&
    "$PY" -m dataset.synthetic --out "$WORK/data500" --train-per-class 5 --test-per-class 1
}

gpu_tests() {
  "$PY" -m pytest -q -rs -p no:cacheprovider "$ROOT/tests/test_gpu.py" || return
  # The CUDA cases of the deterministic-op audit (match_sizes' clear error, real deterministic steps).
  "$PY" -m pytest -q -rs -p no:cacheprovider "$ROOT/tests/test_determinism.py" -k deterministic_cuda || return
  if grep -Eq '[0-9]+ skipped' "$STEP_LOG"; then
    echo "tests were skipped on a CUDA machine" | tee -a "$STEP_NOTE"
    return 1
  fi
}

place_teacher() {  # the trained teacher where the README's --path_t expects it; a random one if training failed
  local trained="$WORK/save/models/resnet32x4_cifar100_lr_0.05_decay_0.0005_trial_0/resnet32x4_last.pth"
  mkdir -p "$(dirname "$WORK/$TEACHER")"
  if [ -f "$trained" ]; then
    cp "$trained" "$WORK/$TEACHER"
  else
    echo "- The teacher run left no checkpoint: the students distil a random resnet32x4." >>"$WORK/notes.md"
    (cd "$ROOT" && "$PY" - "$WORK/$TEACHER") <<'EOF'
import sys

import torch

from models import model_dict

model = model_dict["resnet32x4"](num_classes=100)
torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": 0.0}, sys.argv[1])
EOF
  fi
}

fails_on_log() {  # fails_on_log PATTERN WHY: fail the step if its log matches PATTERN
  local found
  found=$(grep -E -m 3 "$1" "$STEP_LOG") || return 0
  printf '%s:\n%s\n' "$2" "$found" | tee -a "$STEP_NOTE"
  return 1
}

speed_run() {  # speed_run NAME FLAGS...: the README's CRD command plus FLAGS
  local name=$1 crd
  shift
  read -r -a crd <<<"$README_CRD"
  local run=("$PY" "$ROOT/train_student.py" "${crd[@]}" --epochs 1 --data_folder "$WORK/data20k"
    --save_root "$WORK/save_$name" "$@")
  "${run[@]}" || return
  fails_on_log 'torch.compile failed' 'torch.compile fell back to eager' &&
    fails_on_log 'skipping cudagraphs' 'inductor skipped CUDA graphs'
}

kill_and_resume() {  # kill -9 in epoch 2, --resume auto: the uninterrupted run's weights, bit for bit
  local args=(--path_t "$TEACHER" --distill crd --model_s resnet8x4 -a 0 -b 0.8 --trial 1 --nce_k 256
    --deterministic --seed 7 --epochs 2 --lr_decay_epochs 1 --print_freq 1 --data_folder "$WORK/data500")
  echo "== uninterrupted run"
  "$PY" "$ROOT/train_student.py" "${args[@]}" --save_root "$WORK/save_whole" || return
  echo "== run killed with SIGKILL at iteration 3 of epoch 2"
  "$PY" "$ROOT/train_student.py" "${args[@]}" --save_root "$WORK/save_killed" >"$WORK/logs/killed_run.log" 2>&1 &
  local pid=$!
  until grep -qs '^Epoch: \[2\]\[3/' "$WORK/logs/killed_run.log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/logs/killed_run.log"; echo "it ended before epoch 2"; return 1; }
    sleep 0.1
  done
  kill -9 "$pid"
  wait "$pid"
  echo "exit status $? (137 = SIGKILL)"
  "$PY" - "$WORK/save_killed" <<'EOF' || return
import sys
from pathlib import Path

import torch

folder, = Path(sys.argv[1]).glob("student_model/*")
done = torch.load(folder / "state.pth", map_location="cpu", weights_only=True)["progress"]["epochs_done"]
sys.exit(None if done == 1 else f"the kill did not land in epoch 2: the saved state has {done} epochs done")
EOF
  echo "== --resume auto"
  "$PY" "$ROOT/train_student.py" "${args[@]}" --save_root "$WORK/save_killed" --resume auto || return
  (cd "$ROOT" && "$PY" - "$WORK/save_whole" "$WORK/save_killed") <<'EOF'
import sys
from pathlib import Path

import torch


def run(root):
    folder, = Path(root).glob("student_model/*")
    load = lambda name: torch.load(folder / name, map_location="cpu", weights_only=True)
    return load("resnet8x4_last.pth")["model"], load("state.pth")


whole, killed = run(sys.argv[1]), run(sys.argv[2])
pairs = {"student (resnet8x4_last.pth)": (whole[0], killed[0]),
         "CRD modules and banks (state.pth)": (whole[1]["distiller"], killed[1]["distiller"])}
different = [f"{part}: {key}" for part, (a, b) in pairs.items() for key in a if not torch.equal(a[key], b[key])]
for part, (a, _) in pairs.items():
    print(f"{part}: {len(a)} tensors compared")
if killed[1]["progress"]["epochs_done"] != 2 or different:
    sys.exit(f"the resumed run differs from the uninterrupted one: {different[:5]}")
print("same weights after kill -9 and --resume auto")
EOF
}

ddp_run() {  # the README's torchrun command over every GPU (learning rate 0.05 x processes, as it says)
  local lr
  lr=$(awk -v n="$NGPU" 'BEGIN { print 0.05 * n }')
  local crd
  read -r -a crd <<<"$README_CRD"
  local run=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NGPU" "$ROOT/train_student.py" "${crd[@]}"
    --learning_rate "$lr" --epochs 1 --data_folder "$WORK/data20k" --save_root "$WORK/save_ddp")
  "${run[@]}" || return
  if ((NGPU == 1)); then
    echo "one GPU: --nproc_per_node 1 runs the single-process path (no process group)." >>"$STEP_NOTE"
    echo "NCCL itself is covered by tests/test_gpu.py." >>"$STEP_NOTE"
  fi
  "$PY" - "$WORK/save_ddp" "$NGPU" <<'EOF'
import json, sys
from pathlib import Path

results = json.loads(next(Path(sys.argv[1]).glob("student_model/*/results.json")).read_text())
print(f"world_size {results['opt'].get('world_size')}, finished {results['finished']}")
sys.exit(0 if results["finished"] and results["opt"].get("world_size") == int(sys.argv[2]) else 1)
EOF
}

export -f make_data gpu_tests fails_on_log speed_run kill_and_resume ddp_run 2>/dev/null

# --- the check ---------------------------------------------------------------------------------------------

if $DRY_RUN; then
  echo "gpu_check.sh --dry-run: the steps of a check, ${BUDGET} s in all, up to $JOBS runs at a time in part 2."
  echo "\$WORK is a temporary folder, the working directory of every run."
  echo
  echo "Part 1, one at a time"
fi
step "synthetic CIFAR-100: 20,000 and 500 train images" 60 bash -c make_data
run=("$PY" "$ROOT/train_teacher.py" --model resnet32x4 --epochs 1 --data_folder "$WORK/data20k"
  --save_root "$WORK/save")
step "README: python train_teacher.py --model resnet32x4 (1 epoch)" 90 "${run[@]}"
if $DRY_RUN; then
  echo "      then its resnet32x4_last.pth is copied to $TEACHER (the README's --path_t)"
  echo
  echo "Part 2, up to $JOBS at a time"
else
  place_teacher
fi

launch "tests/test_gpu.py" 180 bash -c gpu_tests
launch "--compile" 210 bash -c "speed_run compile --compile"
launch "--compile reduce-overhead (CUDA graphs)" 210 bash -c "speed_run reduce_overhead --compile reduce-overhead"
launch "kill -9 in epoch 2, then --resume auto: same weights (--deterministic)" 150 bash -c kill_and_resume
launch "torchrun --nproc_per_node <every GPU> (README's multi-GPU command)" 120 bash -c ddp_run
read -r -a crd <<<"$README_CRD"
run=("$PY" "$ROOT/train_student.py" "${crd[@]}" --epochs 1 --data_folder "$WORK/data20k" --save_root "$WORK/save")
launch "README: CRD student, --nce_k 16384 (default) on 20,000 images" 120 "${run[@]}"
run=("$PY" "$ROOT/train_student.py" --path_t "$TEACHER" --distill kd --model_s resnet8x4 -r 0.1 -a 0.9 -b 0 --trial 1
  --epochs 1 --data_folder "$WORK/data20k" --save_root "$WORK/save")
launch "README: KD student (run_cifar_distill.sh's KD line)" 120 "${run[@]}"
launch "--amp --channels_last" 120 bash -c "speed_run amp --amp --channels_last"

# Every registered method with scripts/run_cifar_distill.sh's -r/-a/-b (its comment line names the run), for the
# 8 iterations of one epoch of 500 images; the methods it lacks get -r 1 -a 0 -b 1.
method_runs=$(cd "$ROOT" && "$QPY" - 2>&1 <<'EOF'
import shlex
from pathlib import Path

import distiller_zoo

label, seen = "", set()
for line in Path("scripts/run_cifar_distill.sh").read_text().splitlines():
    if line.startswith("# "):
        label = line[2:].split(" (")[0].strip()  # "# DKD (replaces KD: ...)" -> DKD
    words = shlex.split(line, comments=True)
    if words[:2] == ["python", "train_student.py"]:
        flags = [w for w in words[2:] if w != "$@"]
        seen.add(flags[flags.index("--distill") + 1])
        print(f"{label}\t{' '.join(flags)}")
for name in distiller_zoo.DISTILLERS:
    if name not in seen:
        print(f"{name} (not in run_cifar_distill.sh)\t--path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth"
              f" --distill {name} --model_s resnet8x4 -r 1 -a 0 -b 1 --trial 1")
EOF
)
if (($?)); then  # the step fails and its log holds the error
  why=${method_runs##*$'\n'}
  launch "every method, --deterministic: listing them failed ($why)" 10 bash -c 'echo "$0"; exit 1' "$method_runs"
  method_runs=
fi
while IFS=$'\t' read -r label flags; do
  [ -n "$label" ] || continue
  read -r -a args <<<"$flags"
  run=("$PY" "$ROOT/train_student.py" "${args[@]}" --deterministic --epochs 1 --init_epochs 1 --nce_k 256
    --data_folder "$WORK/data500" --save_root "$WORK/save_methods")
  launch "every method, --deterministic: $label" 120 "${run[@]}"
done <<<"$method_runs"
finish

$DRY_RUN && { echo; echo "Part 3, alone (timings)"; }
for pair in resnet56:resnet20 resnet32x4:resnet8x4; do
  run=("$PY" "$ROOT/scripts/benchmark.py" --sections steps --device cuda --teacher "${pair%:*}" --student "${pair#*:}"
    --output_dir "$WORK/bench")
  step "benchmark: step tables ${pair/:/ -> } on cuda" 150 "${run[@]}"
done
run=("$PY" "$ROOT/scripts/benchmark.py" --sections logit --device cuda --output_dir "$WORK/bench")
step "benchmark: DKD, DIST and LS against KD on cuda" 30 "${run[@]}"
$DRY_RUN && exit 0

# --- the report --------------------------------------------------------------------------------------------

failed=0
for i in "${!NAMES[@]}"; do [ "$(outcome "$i")" = PASS ] || failed=$((failed + 1)); done
{
  echo "# GPU check"
  echo
  "$PY" - "$ROOT" <<'EOF'
import datetime, subprocess, sys

import torch

commit = subprocess.run(["git", "-C", sys.argv[1], "describe", "--always", "--dirty"], capture_output=True,
                        text=True).stdout.strip() or "unknown"
gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
now = datetime.datetime.now(datetime.timezone.utc)
print(f"{now:%Y-%m-%d %H:%M UTC} · {len(gpus)} x {', '.join(sorted(set(gpus)))} · torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}) · commit {commit}")
EOF
  echo
  passed=$((${#NAMES[@]} - failed))
  echo "Command: \`$COMMAND\` · ${SECONDS} s of the ${BUDGET} s budget · $passed of ${#NAMES[@]} steps passed"
  echo
  echo "| # | step | result | time | budget |"
  echo "|---|---|---|---|---|"
  for i in "${!NAMES[@]}"; do
    echo "| $((i + 1)) | ${NAMES[i]//|/\\|} | $(outcome "$i") | $(cut -d' ' -f2 "${LOGS[i]}.rc") s | ${BUDGETS[i]} s |"
  done
  [ -f "$WORK/notes.md" ] && { echo; cat "$WORK/notes.md"; }
  for i in "${!NAMES[@]}"; do
    [ -s "${LOGS[i]}.note" ] && { echo; echo "Step $((i + 1)), ${NAMES[i]}:"; echo; sed 's/^/    /' "${LOGS[i]}.note"; }
  done
  if ((failed)); then
    echo
    echo "## Failures"
    for i in "${!NAMES[@]}"; do
      [ "$(outcome "$i")" = PASS ] && continue
      echo
      echo "### $((i + 1)). ${NAMES[i]}: $(outcome "$i")"
      echo
      echo '```'
      tail -n 40 "${LOGS[i]}" 2>/dev/null
      echo '```'
    done
  fi
  echo
  echo "## Benchmark (scripts/benchmark.py --sections steps logit --device cuda)"
  echo
  "$PY" - "$WORK/bench/benchmarks.json" <<'EOF'
import json, sys

TRAIN_IMAGES, EPOCHS = 50_000, 240
try:
    sections = json.load(open(sys.argv[1]))["sections"]
except (OSError, ValueError, KeyError) as e:
    sys.exit(print(f"No benchmark results ({type(e).__name__}: {e})."))


def row(what, config, rate):
    epoch = TRAIN_IMAGES / rate
    run = EPOCHS * epoch
    run = f"{run / 60:.0f} min" if run < 3600 else f"{run / 3600:.1f} h"
    return f"| {what} | {config} | {rate:,.0f} | {epoch:,.1f} s | {run} |"


for key, section in sections.items():
    print(f"### {section['title']}\n\n{section['markdown']}\n")
    if "teacher_step" not in section["results"]:  # the logit section: no step rates to turn into epochs
        continue
    try:
        r = section["results"]
        lines = []
        teacher = r["teacher_step"]
        best = max((c for c in teacher if c != "faithful"), key=lambda c: teacher[c]["images_per_s"])
        for config in ("faithful", best):
            lines.append(row(f"train_teacher.py {r['teacher']}, step only", config, teacher[config]["images_per_s"]))
        for method, steps in r["distill_step"].items():
            for config in ("faithful", steps["best"]) if "best" in steps else ():
                lines.append(row(f"{method}, step only", config, steps[config]["images_per_s"]))
        for method, whole in r["whole_step"].items():
            lines.append(row(f"{method}, data path included", "faithful (torchvision)", whole["faithful_images_per_s"]))
            lines.append(row(f"{method}, data path included", f"fast: {whole['fast_config']}",
                             whole["fast_images_per_s"]))
    except (KeyError, TypeError, ValueError) as e:
        print(f"(no epoch-time estimates: the results lack {type(e).__name__}: {e})\n")
        continue
    print(f"**Epoch-time estimates, {r['teacher']} -> {r['student']}**: {TRAIN_IMAGES:,} training images per epoch at "
          f"the measured rate, times the paper's {EPOCHS} epochs (validation, checkpoints and the 30-epoch init stage "
          f"of AB/FT/FSP not included).\n")
    print("| run | config | images/s | epoch | 240 epochs |\n|---|---|---|---|---|")
    print("\n".join(lines) + "\n")
EOF
} >"$REPORT"

echo
echo "gpu_check: $((${#NAMES[@]} - failed)) of ${#NAMES[@]} steps passed in ${SECONDS} s; report: $REPORT"
if ((failed)) || $KEEP; then
  echo "logs and runs kept in $WORK"
else
  rm -rf "$WORK"
fi
((failed == 0))

#!/usr/bin/env bash
# One prepared GPU device check: environment, notebook stack, data, CUDA tests, the full-width
# benchmark and as much of the paper series as the wall-clock budget allows; then a summary.
#
# Usage, from anywhere in a checkout that holds carry/ (tools/make_device_carry.sh builds it):
#   tools/device_check.sh OUT [BUDGET_SECONDS]        # default budget 540 s
# Every step has its own time cap taken from what is left of the budget, keeping a reserve for the
# summary, so the script ends before the budget even when the pipeline is cut off. A failing step
# never stops the script: its exit code goes into OUT/summary.json.
#
# OUT receives at most 8 files (all small): device_check.log (every step's output), tests.log,
# pipeline.log, bench_gpu.json, bench_gpu2.json (only with _BENCH2_SET), gpu_monitor.csv (nvidia-smi, during the pipeline), summary.json,
# results.tar (the run's tables, figures and per-run JSON).
#
# Rehearsal without a GPU (e.g. on a 2-core CPU):
#   KDNB_DEVICE_CHECK_PROFILE=smoke KDNB_DEVICE_CHECK_DEVICE=cpu KDNB_DEVICE_CHECK_WORK=/tmp/dc_work \
#     tools/device_check.sh /tmp/dc_out 120
# Environment overrides: KDNB_DEVICE_CHECK_PROFILE (paper), _DEVICE (cuda; the benchmark's device),
# _SEED (0), _WORK (/tmp: site/, data/, runs/, caches), _PYTHON (python3), _BENCH_STEPS /
# _BENCH_REPEATS (10/3; smoke 2/1), _BENCH_CAP (seconds per benchmark; min(120, 22 % of the budget)), _ONLY (notebook prefixes for the pipeline's --only, e.g. "00 02"),
# _RESERVE (seconds kept for the summary; min(40, budget/6)), _BENCH2_SET (KEY=VALUE ... for a second
# benchmark into bench_gpu2.json; default cuda_graphs=false on cuda, the eager comparison, as the paper
# profile's default is graphs on; empty: none), _GRAPHS (true/false: --set cuda_graphs= for the pipeline;
# empty, the default: the profile's setting, graphs on for paper, independent of any benchmark),
# _FORCE_WHEELS=1 (install the carried wheels even where papermill already imports), _SKIP (step names
# not to run, e.g. "bench"), _TESTS (a pytest -k expression for the CUDA tests, e.g. "graph or cohort"), _TESTS_CAP (seconds for
# them; min(90, budget/6)).
set -u

usage="usage: $0 OUT [BUDGET_SECONDS]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
budget=${2:-540}
case $budget in '' | *[!0-9]*) echo "$usage (budget: whole seconds)" >&2; exit 2 ;; esac
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
repo=$PWD

start=$(date +%s)
deadline=$((start + budget))
profile=${KDNB_DEVICE_CHECK_PROFILE:-paper}
device=${KDNB_DEVICE_CHECK_DEVICE:-cuda}
seed=${KDNB_DEVICE_CHECK_SEED:-0}
work=${KDNB_DEVICE_CHECK_WORK:-/tmp}
py=${KDNB_DEVICE_CHECK_PYTHON:-python3}
if [ "$profile" = smoke ]; then bench_steps=2 bench_repeats=1; else bench_steps=10 bench_repeats=3; fi
bench_steps=${KDNB_DEVICE_CHECK_BENCH_STEPS:-$bench_steps}
bench_repeats=${KDNB_DEVICE_CHECK_BENCH_REPEATS:-$bench_repeats}
reserve=${KDNB_DEVICE_CHECK_RESERVE:-$((budget / 6 < 40 ? budget / 6 : 40))}
site=$work/site
runs=$work/runs
figs=$runs/$profile/figures
log=$out/device_check.log
# Every process a step starts carries this tag in its environment (papermill's kernels included,
# which jupyter_client starts in sessions of their own), so leftovers are found and ended by PID.
tag="dc-$$-$start"

# The repo first so that `import kdnb` works in papermill kernels (their cwd is notebooks/).
export PYTHONPATH="$repo:$site" PYTHONUNBUFFERED=1
export JUPYTER_PATH="$work/jk/share/jupyter" # used only if the kernelspec had to be installed
export KDNB_CACHE_DIR="$work/kdnb-cache" IPYTHONDIR="$work/ipython" MPLCONFIGDIR="$work/mpl"
# One torch.compile cache for the benchmark and every notebook kernel (the pipeline would otherwise
# choose <runs>/compile-cache, and the bench's compiled students would not be reused).
export TORCHINDUCTOR_CACHE_DIR="$runs/compile-cache"
export JUPYTER_RUNTIME_DIR="$work/jupyter-runtime" # connection files; $HOME may be read-only
mkdir -p "$work" "$KDNB_CACHE_DIR" "$IPYTHONDIR" "$MPLCONFIGDIR" "$JUPYTER_RUNTIME_DIR"

step_args=()
aborted=0

left() { echo $((deadline - $(date +%s))); }
note() { echo "[device_check +$(($(date +%s) - start))s, $(left)s left] $*" | tee -a "$log"; }

# End the tagged processes still alive (TERM, then KILL after 5 s).
reap() {
  local pids=() p
  for p in /proc/[0-9]*; do
    grep -qzx "KDNB_DEVICE_CHECK_TAG=$tag" "$p/environ" 2>/dev/null && pids+=("${p#/proc/}")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  note "ending leftover processes ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in 1 2 3 4 5; do
    sleep 1
    kill -0 "${pids[@]}" 2>/dev/null || return 0
  done
  kill -KILL "${pids[@]}" 2>/dev/null
  return 0
}

# shellcheck disable=SC2329  # invoked by trap / bash -c
on_signal() {
  aborted=1
  note "signal received: ending the current step, then writing the summary"
  reap
}
trap on_signal INT TERM HUP

# run_step NAME MAX_SECONDS EXTRA_LOG COMMAND...: run under timeout with cap
# min(MAX_SECONDS, time left - reserve), output to the console, device_check.log and EXTRA_LOG
# (or nothing extra if ""). Records NAME=RC:SECONDS for the summary.
run_step() {
  local name=$1 want=$2 extra=$3 cap grace t0 rc pid
  shift 3
  cap=$(($(left) - reserve))
  [ "$cap" -gt "$want" ] && cap=$want
  # timeout's grace between TERM and KILL, inside the cap: a tenth of it, 2 to 10 s.
  grace=$((cap / 10 < 2 ? 2 : cap / 10 > 10 ? 10 : cap / 10))
  if [[ " ${KDNB_DEVICE_CHECK_SKIP:-} " == *" $name "* ]]; then
    note "step $name skipped (KDNB_DEVICE_CHECK_SKIP)"
    last_rc=skip
    step_args+=(--step "$name=skip:0")
    return 0
  fi
  if [ "$aborted" = 1 ] || [ "$cap" -lt 10 ]; then
    note "step $name skipped (cap ${cap}s)"
    last_rc=skip
    step_args+=(--step "$name=skip:0")
    return 0
  fi
  note "step $name (cap ${cap}s): $*"
  t0=$(date +%s)
  # In the background and waited for, so that a trapped signal interrupts the wait at once.
  (
    set -o pipefail
    timeout -k "$grace" "$((cap - grace))" env KDNB_DEVICE_CHECK_TAG="$tag" "$@" 2>&1 </dev/null |
      tee -a "$log" ${extra:+"$extra"}
  ) &
  pid=$!
  wait "$pid"
  rc=$?
  if [ "$rc" -gt 128 ] && [ "$aborted" = 1 ]; then # the wait was cut short by the trap
    wait "$pid" 2>/dev/null
    rc=$?
  fi
  reap
  last_rc=$rc
  step_args+=(--step "$name=$rc:$(($(date +%s) - t0))")
  note "step $name ended: rc $rc after $(($(date +%s) - t0))s"
}

# ---------------------------------------------------------------- the steps (run by bash -c)
# shellcheck disable=SC2329
step_env() {
  command -v nvidia-smi >/dev/null && { nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv; }
  # torch.compile on CUDA (Triton) needs a C compiler
  echo "C compiler: $(command -v gcc || command -v cc || echo none)"
  echo "nproc $(nproc); $(free -g | awk '/^Mem:/ {print "memory " $2 " GiB"}'); $(df -h "$work" | awk 'NR == 2 {print "free on " $6 ": " $4}')"
  "$py" - "$work/env.json" <<'EOF'
import json, os, platform, subprocess, sys
facts = {"python": platform.python_version(), "executable": sys.executable, "cpu_count": os.cpu_count(),
         "hostname": platform.node()}
try:
    import torch, torchvision
    facts.update(torch_version=torch.__version__, torchvision_version=torchvision.__version__,
                 cuda_available=torch.cuda.is_available(), cuda_version=torch.version.cuda)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu_name=torch.cuda.get_device_name(), gpu_capability=list(torch.cuda.get_device_capability()),
                     gpu_memory_gib=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                     bf16_supported=torch.cuda.is_bf16_supported())
except Exception as exc:  # recorded, not fatal: the later steps say what it breaks
    facts["torch_error"] = repr(exc)
try:
    facts["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                         timeout=5).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    facts["git_commit"] = None
print(json.dumps(facts, indent=1))
with open(sys.argv[1], "w") as f:
    json.dump(facts, f)
EOF
}

# shellcheck disable=SC2329
kernelspec_ok() {
  "$py" -c "from jupyter_client.kernelspec import KernelSpecManager as K; print('kernelspec python3:', K().get_kernel_spec('python3').argv)"
}

# shellcheck disable=SC2329
step_wheels() {
  if [ -z "${KDNB_DEVICE_CHECK_FORCE_WHEELS:-}" ] && "$py" -c 'import papermill, ipykernel, nbclient' 2>/dev/null; then
    echo "papermill, ipykernel and nbclient already import: the carried wheels are not installed"
  else
    set -- carry/wheels/*.whl
    [ -f "$1" ] || { echo "no carry/wheels/*.whl: run tools/make_device_carry.sh and carry carry/"; return 3; }
    echo "installing $# wheels into $site"
    if "$py" -m pip --version >/dev/null 2>&1; then
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$@" || return
    else
      # No pip in the image: a wheel is a zip of its import tree, which is all PYTHONPATH needs.
      echo "no pip: unzipping the wheels into $site"
      mkdir -p "$site" && for w in "$@"; do "$py" -m zipfile -e "$w" "$site" || return; done
    fi
  fi
  "$py" -c 'import papermill, ipykernel, nbclient; print("papermill", papermill.__version__, "ipykernel", ipykernel.__version__, "nbclient", nbclient.__version__)' || return
  if ! kernelspec_ok; then
    echo "no python3 kernelspec: installing one under $work/jk"
    "$py" -m ipykernel install --prefix "$work/jk" && kernelspec_ok || return
  fi
  # Diagnostics only: papermill lists aiohttp for Python 3.12 but never imports it.
  "$py" -m pip check || true
}

# shellcheck disable=SC2329
step_data() {
  set -o pipefail
  local archive=carry/cifar10-jpeg.tar.xz
  if find "$work/data" -maxdepth 2 -type d -name train 2>/dev/null | grep -q .; then
    echo "$work/data already holds a train/ folder: not unpacking again"
    return 0
  fi
  [ -f "$archive" ] || { echo "$archive missing: run tools/make_device_carry.sh and carry carry/"; return 3; }
  mkdir -p "$work/data"
  if command -v xz >/dev/null; then
    xz -T0 -dc "$archive" | tar -x -C "$work/data" || return
  else
    tar -xJf "$archive" -C "$work/data" || return
  fi
  echo "unpacked: $(find "$work/data" -type f -name '*.jpg' | wc -l) images"
}

export -f step_env step_wheels step_data kernelspec_ok
export py work site

# ---------------------------------------------------------------- run
note "device check: profile $profile, device $device, seed $seed, budget ${budget}s (reserve ${reserve}s), out $out, work $work"
run_step env 60 "" bash -c step_env
run_step wheels 90 "" bash -c step_wheels
run_step data 90 "" bash -c step_data

train_dir=$(find "$work/data" -maxdepth 3 -type d -name train 2>/dev/null | head -n 1)
if [ -n "$train_dir" ] && [ -d "$(dirname "$train_dir")/test" ]; then
  KDNB_DATA_DIR=$(dirname "$train_dir")
  export KDNB_DATA_DIR
  note "KDNB_DATA_DIR=$KDNB_DATA_DIR"
else
  note "no unpacked data: KDNB_DATA_DIR not set (the paper profile will fail to load data)"
fi

# Tests marked cuda (none collected: rc 5). nbval is not installed there and not needed;
# --continue-on-collection-errors keeps one unimportable module (cv2 missing) from hiding the rest;
# -v puts each result on its own line, so a run cut off by the cap still says what passed.
run_step tests "${KDNB_DEVICE_CHECK_TESTS_CAP:-$((budget / 6 < 90 ? budget / 6 : 90))}" "$out/tests.log" \
  "$py" -m pytest -v -m cuda -p no:nbval -p no:cacheprovider --continue-on-collection-errors -rfEs \
  --durations=5 ${KDNB_DEVICE_CHECK_TESTS:+-k "$KDNB_DEVICE_CHECK_TESTS"} tests

bench_cap=${KDNB_DEVICE_CHECK_BENCH_CAP:-$((budget * 22 / 100 < 120 ? budget * 22 / 100 : 120))}
run_step bench "$bench_cap" "" \
  "$py" -m kdnb bench --profile "$profile" --device "$device" --steps "$bench_steps" --repeats "$bench_repeats" \
  --json "$out/bench_gpu.json"

# A second benchmark with other engine settings (KEY=VALUE ...): same variants, its own JSON.
# Default on a GPU: eager steps (cuda_graphs=false), to compare with the first benchmark's graphed steps
# (the paper profile's default); KDNB_DEVICE_CHECK_BENCH2_SET="" switches it off.
if [ "$device" = cuda ]; then bench2_default="cuda_graphs=false"; else bench2_default=""; fi
KDNB_DEVICE_CHECK_BENCH2_SET=${KDNB_DEVICE_CHECK_BENCH2_SET-$bench2_default}
if [ -n "$KDNB_DEVICE_CHECK_BENCH2_SET" ]; then
  bench2_set=()
  for kv in $KDNB_DEVICE_CHECK_BENCH2_SET; do bench2_set+=(--set "$kv"); done
  run_step bench2 "$bench_cap" "" \
    "$py" -m kdnb bench --profile "$profile" --device "$device" --steps "$bench_steps" --repeats "$bench_repeats" \
    "${bench2_set[@]}" --json "$out/bench_gpu2.json"
fi

mon_pid=
if command -v nvidia-smi >/dev/null; then
  # One sample every 2 s while the pipeline trains: is the GPU busy or starved?
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv,noheader,nounits -l 2 \
    >"$out/gpu_monitor.csv" 2>/dev/null &
  mon_pid=$!
fi
# CUDA graphs are the profile's setting (paper: on; a capture or replay that fails falls back to eager
# steps with one warning line), not a benchmark's outcome; KDNB_DEVICE_CHECK_GRAPHS=true/false forces them.
pipeline_set=()
case ${KDNB_DEVICE_CHECK_GRAPHS:-} in
  '') ;;
  true | false) pipeline_set=(--set "cuda_graphs=$KDNB_DEVICE_CHECK_GRAPHS")
    note "the series trains with cuda_graphs=$KDNB_DEVICE_CHECK_GRAPHS (KDNB_DEVICE_CHECK_GRAPHS)" ;;
  *) note "KDNB_DEVICE_CHECK_GRAPHS=$KDNB_DEVICE_CHECK_GRAPHS ignored (true or false): the profile's setting" ;;
esac
only=()
# shellcheck disable=SC2206  # prefixes are single words
[ -n "${KDNB_DEVICE_CHECK_ONLY:-}" ] && only=(--only $KDNB_DEVICE_CHECK_ONLY)
run_step pipeline "$budget" "$out/pipeline.log" \
  "$py" -m kdnb pipeline --profile "$profile" --seeds "$seed" --runs-dir "$runs" --figures-dir "$figs" \
  "${pipeline_set[@]}" "${only[@]}"
[ -n "$mon_pid" ] && kill "$mon_pid" 2>/dev/null && wait "$mon_pid" 2>/dev/null

# ---------------------------------------------------------------- always: summary and results
trap - INT TERM HUP
note "writing the summary"
summary_args=(--runs-dir "$runs" --profile "$profile" --seed "$seed" --pipeline-log "$out/pipeline.log"
  --bench-json "$out/bench_gpu.json" --env-json "$work/env.json" --tests-log "$out/tests.log"
  --started "$start" --budget "$budget" "${step_args[@]}")
[ -n "$mon_pid" ] && summary_args+=(--gpu-monitor "$out/gpu_monitor.csv")
timeout 30 "$py" tools/device_summary.py "${summary_args[@]}" --out "$out/summary.json" --markdown 2>&1 | tee -a "$log"

# The run's tables and figures plus each run's small JSON files; never the checkpoints.
list=$work/results.list
: >"$list"
if cd "$runs/$profile" 2>/dev/null; then
  find figures evaluation -maxdepth 2 -type f -size -4M \
    \( -name '*.md' -o -name '*.csv' -o -name '*.png' -o -name '*.json' \) 2>/dev/null
  find . -path '*/seed*/*.json' -size -4M 2>/dev/null | sed 's|^\./||'
  cd "$repo" || exit 0
fi >"$list"
if [ -s "$list" ]; then
  tar -cf "$out/results.tar" -C "$runs/$profile" -T "$list"
  if [ "$(stat -c %s "$out/results.tar")" -gt $((15 * 1024 * 1024)) ]; then
    grep -v '\.png$' "$list" | tar -cf "$out/results.tar" -C "$runs/$profile" -T - # over the limit: no figures
  fi
  note "results.tar: $(wc -l <"$list") files, $(du -h "$out/results.tar" | cut -f1)"
else
  note "no results to pack"
fi

# Nothing that comes back may exceed 16 MiB: keep a log's head and tail.
for f in "$out"/*; do
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((15 * 1024 * 1024)) ]; then
    { head -c 2M "$f"; printf '\n... [truncated by device_check.sh] ...\n'; tail -c 12M "$f"; } >"$f.cut" && mv "$f.cut" "$f"
  fi
done
note "done in $(($(date +%s) - start))s; files: $(cd "$out" && echo *)"
exit 0

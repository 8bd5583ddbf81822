#!/usr/bin/env bash
# Scale-out benchmark (#17): the same series with `--jobs 1` and `--jobs N`, from one finished
# teacher (runs/<profile>/teacher, all its seeds), each in its own runs directory; prints the wall
# times, their ratio and the two results tables' accuracies side by side. Run it alone on an otherwise idle machine.
#   tools/scaleout_bench.sh TEACHER_DIR WORK_DIR [PROFILE] [JOBS] [SEEDS...]
#   e.g. tools/scaleout_bench.sh runs/cpu/teacher /tmp/scaleout cpu 2 0 1 2
set -euo pipefail
teacher=${1:?teacher run folder (runs/<profile>/teacher)}
work=${2:?work folder}
profile=${3:-cpu}
jobs=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
seeds=("${@:-0}")
python=${PYTHON:-python}
compgen -G "$teacher/seed*/metrics.json" > /dev/null || { echo "no finished teacher in $teacher: train it first (python -m kdnb pipeline --profile $profile --only 00 01)" >&2; exit 2; }
mkdir -p "$work"
for j in 1 "$jobs"; do
  runs="$work/jobs$j"
  if [[ -e "$runs" ]]; then echo "$runs exists: move it away or pick another WORK_DIR (nothing is overwritten)" >&2; exit 2; fi
done
# warm the decode cache once so neither variant pays for it
"$python" -c "from kdnb.engine.data import load_dataset; load_dataset()"
for j in 1 "$jobs"; do
  runs="$work/jobs$j"
  mkdir -p "$runs/$profile"
  cp -r "$teacher" "$runs/$profile/teacher"
  start=$(date +%s)
  "$python" -m kdnb pipeline --profile "$profile" --seeds "${seeds[@]}" --runs-dir "$runs" --jobs "$j" \
    > "$work/jobs$j.log" 2>&1 || { echo "jobs $j failed: see $work/jobs$j.log" >&2; exit 1; }
  echo $(( $(date +%s) - start )) > "$work/jobs$j.seconds"
  echo "jobs $j: $(cat "$work/jobs$j.seconds") s"
done
"$python" - "$work" "$profile" "$jobs" <<'PY'
import sys
from pathlib import Path
import pandas as pd
work, profile, jobs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
t1, tn = (float((work / f"jobs{j}.seconds").read_text()) for j in ("1", jobs))
print(f"wall: --jobs 1 {t1/60:.1f} min, --jobs {jobs} {tn/60:.1f} min, speed-up {t1/tn:.2f}x")
# the provenance columns differ by design (date, training time); compare the numbers
cols = ["config", "n_seeds", "test_acc_mean", "test_acc_std", "best_epoch_mean"]
a, b = (pd.read_csv(work / f"jobs{j}" / profile / "figures" / "results.csv")[cols].set_index("config")
        for j in ("1", jobs))
print(pd.concat({"--jobs 1": a, f"--jobs {jobs}": b}, axis=1).round(2).to_string())
print("numbers identical:", a.equals(b), "| largest |difference| of mean test accuracy (pp):",
      round(float((a.test_acc_mean - b.test_acc_mean).abs().max()), 2))
PY

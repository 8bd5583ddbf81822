#!/usr/bin/env bash
# The causal-mask study on the `cpu` profile, from start to README: the ablation (09) over
# seeds 0 1 2 with the main teacher, a second teacher (seed 1) and the main comparison distilled
# from it, then the committed tables and figures rebuilt from these runs. Every step resumes: the
# engine checkpoints each epoch and skips finished runs, so after an interruption run it again.
# About 3.5 h on 2 cores from nothing (less when RUNS_DIR already holds the series' seeds 0 1 2).
#   tools/mask_study.sh [RUNS_DIR]     (default runs; KDNB_DATA_DIR names the data)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
python=${PYTHON:-python}
seeds=(0 1 2)
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "second teacher (seed 1, the same recipe)"
"$python" -m kdnb train --profile cpu --config teacher --seed 1 --runs-dir "$runs"
for s in "${seeds[@]}"; do
  step "KD and KD+FA+AT of seed $s distilled from teacher 1 (one cohort; the baseline has no teacher)"
  "$python" -m kdnb train --profile cpu --config kd kd_fa_at --seed "$s" --set teacher_seed=1 --runs-dir "$runs"
done
step "the series and its ablation with teacher 0, tables and figures into figures/"
"$python" -m kdnb pipeline --profile cpu --seeds "${seeds[@]}" --ablation --runs-dir "$runs" --figures-dir figures
step "the README's headline and docs/results.md's tables"
"$python" tools/readme_results.py
step "done"

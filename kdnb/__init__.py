"""kdnb — a correct, tested reproduction of causal-mask knowledge distillation on CIFAR-10.

Subpackages, each depending only on those before it (``tests/test_layers.py`` checks it):

- :mod:`kdnb.method`: the paper's method — ResNet/CBAM models, KD/FA/AT losses, Grad-CAM causal
  masks, the weighted objective;
- :mod:`kdnb.engine`: training — settings and profiles, data, run folders and locks, the training
  step and loop (alone or as a cohort), speed-ups, TensorBoard logs;
- :mod:`kdnb.evaluation`: measuring a trained model — metrics, corruptions, calibration,
  efficiency, seed-paired statistics;
- :mod:`kdnb.report`: the notebooks' side — the series registry, run lookup, tables, analyses,
  the research answers, plots, the mask ablation, the mask explorer, notebook context.

Entry points: :mod:`kdnb.cli` (``python -m kdnb``), :mod:`kdnb.pipeline` and :mod:`kdnb.jobs` with
:mod:`kdnb.executors` (the series with papermill, locally, on Ray or Slurm), :mod:`kdnb.bench`.
"""

__version__ = "0.1.0"

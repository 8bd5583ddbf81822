"""The body every configuration notebook shares (02–06, and any copy a user makes for another
configuration): settings, the objective on a fixed input, training, its history, learning curves
and what the run shows. A configuration notebook holds its parameters, its story and these calls."""

from __future__ import annotations

import os
from typing import Any

from ..engine.train import RunResult, train
from . import findings, lookup, plots
from . import notebook as nb
from .series import NOTEBOOK_FOR


class StudentNotebook:
    """One configuration's notebook: ``config`` under the notebook's parameters. Building it checks
    the settings and that the teacher it needs is trained (else one line names the notebook to run
    first)."""

    def __init__(self, config: str, profile: str, *, seed: int = 0, data_dir: str | None = None,
                 runs_dir: str | os.PathLike = "../runs", figures_dir: str | os.PathLike | None = None,
                 epochs: int | None = None, device: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        self.name = config
        self.seed = seed
        self.ctx = nb.context(profile, seed=seed, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir,
                              epochs=epochs, device=device, overrides=overrides)
        self.cfg = self.ctx.config(config)
        self.ctx.require_inputs(self.cfg)
        self.result: RunResult | None = None

    def describe(self) -> str:
        """Profile, data, folders and seed, in a few lines."""
        return self.ctx.describe()

    def objective(self):
        """Each active term of the configuration's objective on a fixed random batch (pinned by nbval)."""
        return nb.objective_example(self.name)

    def settings(self):
        """Every run setting, as the run will record it."""
        return lookup.config_table(self.cfg)

    def train(self):
        """Train, resume, or load the finished run; its one-row summary (how it was trained included)."""
        self.result = train(self.cfg, self.ctx.runs_dir, data=self.ctx.load_data(self.cfg), progress=True)
        return lookup.run_summary(self.result)

    def history(self):
        """Per epoch: objective and terms, accuracies (%), validation loss, time."""
        return lookup.history_frame(self._result.history).round(4)

    def curves(self) -> None:
        """Learning curves, saved as ``<notebook>_seed<k>_curves.png`` (the figure shows inline)."""
        r = self._result
        fig = plots.learning_curves(r.history, title=f"{self.name}, seed {self.seed}", best_epoch=r.metrics["best_epoch"])
        self.ctx.save(fig, f"{NOTEBOOK_FOR.get(self.name, self.name)}_seed{self.seed}_curves")

    def findings(self):
        """What this run shows, computed from its own folder (and the baseline and KD of its seed)."""
        from IPython.display import Markdown

        return Markdown(findings.student_findings(self._result, self.ctx.runs_dir))

    @property
    def _result(self) -> RunResult:
        if self.result is None:
            raise RuntimeError("run the training cell first (StudentNotebook.train)")
        return self.result

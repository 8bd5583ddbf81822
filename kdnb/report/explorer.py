"""One test image at a time, interactively: what the teacher's Grad-CAM marks for a chosen class,
which positions the causal mask keeps, and where each student's attention lies.

The fixed grid of ``07`` shows the first image of each class with the settings the runs trained
with; a reader who wants to ask "and for this image? for the wrong class? at keep 0.25? one stage
earlier?" moves a control here. The models are loaded once; a redraw is one Grad-CAM and a forward
pass per student on one image (milliseconds). Headless (papermill, nbval) the same cell shows the
figure of the default settings, so executed notebooks stay deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.config import STUDENT_CONFIGS
from ..method.losses import attention_map
from ..method.masks import CAM_TYPES, causal_mask, gradcam
from ..method.models import STAGES
from .analyses import load_students, load_teacher_of
from .series import LABELS

TRUE_CLASS = -1  # ``explain`` value meaning "the image's own label"


@dataclass(frozen=True)
class View:
    """Everything one redraw shows; arrays are CPU tensors at the stage's resolution."""

    image: torch.Tensor  # uint8 (3, H, W)
    label: str
    explained: str  # the class the Grad-CAM explains
    stage: str
    keep: float
    mask_mode: str
    cam: torch.Tensor  # (h, w) in [0, 1]
    mask: torch.Tensor  # (h, w) at the students' feature size
    attention: dict[str, torch.Tensor]  # model label → (h, w) attention map
    predictions: dict[str, tuple[str, float]]  # model label → (predicted class, its probability)

    @property
    def kept_share(self) -> float:
        """Mean of the mask: the share of positions kept (binary), the mean weight (soft)."""
        return float(self.mask.mean())


class MaskExplorer:
    """The teacher (``teacher_seed``) and the students of ``seed`` of one profile, ready to be asked
    about any test image, class, stage, ``keep`` and mask type."""

    def __init__(self, runs_dir: str | os.PathLike, profile: str, seed: int, data: Any, *,
                 configs: Sequence[str] = STUDENT_CONFIGS, teacher_seed: int = 0,
                 overrides: dict[str, Any] | None = None) -> None:
        self.data = data
        self.teacher = load_teacher_of(runs_dir, profile, teacher_seed, overrides=overrides)
        self.students = {LABELS[c]: m for (c, _), m in
                         load_students(runs_dir, profile, [seed], configs, overrides=overrides).items()}
        self.per_class = [torch.nonzero(data.test_y == k).flatten().tolist() for k in range(data.num_classes)]

    def test_index(self, label: int, image: int) -> int:
        """The test-set index of the ``image``-th test image of class ``label``."""
        of_class = self.per_class[label]
        if not 0 <= image < len(of_class):
            raise ValueError(f"class {self.data.classes[label]!r} has {len(of_class)} test images; image={image}")
        return of_class[image]

    @torch.no_grad()
    def _forward(self, model: torch.nn.Module, x: torch.Tensor, stage: str, size: tuple[int, int]):
        logits, feats = model(x, return_features=True)
        prob, pred = logits.softmax(1).max(1)
        return attention_map(feats[stage], 2, size=size).view(*size), (self.data.classes[int(pred)], float(prob))

    def view(self, label: int = 0, image: int = 0, explain: int = TRUE_CLASS, keep: float = 0.5,
             stage: str = "layer3", mask_mode: str = "binary", students: Sequence[str] | None = None) -> View:
        """The image, cam, mask and attention maps for one choice of the controls."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(STAGES)}")
        students = list(self.students) if students is None else list(students)
        unknown = [s for s in students if s not in self.students]
        if unknown:
            raise ValueError(f"no trained student {unknown}; loaded: {', '.join(self.students)}")
        idx = self.test_index(label, image)
        img = self.data.test_x[idx]
        x = self.data.normalize(img.unsqueeze(0))
        target = torch.tensor([label if explain == TRUE_CLASS else explain])
        cam = gradcam(self.teacher, x, stage, target)
        with torch.no_grad():
            probe = next(iter(self.students.values()), self.teacher)
            size = tuple(probe(x, return_features=True)[1][stage].shape[-2:])
        mask = causal_mask(cam, keep, mask_mode, size)[0]
        attention, predictions = {}, {}
        for name, model in [("teacher", self.teacher), *[(s, self.students[s]) for s in students]]:
            attention[name], predictions[name] = self._forward(model, x, stage, size)
        return View(img, self.data.classes[label], self.data.classes[int(target)], stage, keep, mask_mode,
                    cam[0], mask, attention, predictions)

    def figure(self, **settings: Any):
        """The figure of one :meth:`view` (a matplotlib ``Figure`` outside pyplot, so a redraw from a
        widget callback is not shown a second time by the inline backend)."""
        from .plots import explorer_figure

        return explorer_figure(self.view(**settings))

    def controls(self, **defaults: Any):
        """The ipywidgets controls, one per argument of :meth:`view`, set to ``defaults``."""
        import ipywidgets as w

        classes = list(self.data.classes)
        v = {"label": 0, "image": 0, "explain": TRUE_CLASS, "keep": 0.5, "stage": "layer3", "mask_mode": "binary",
             "students": tuple(self.students), **defaults}
        label = w.Dropdown(options=[(c, i) for i, c in enumerate(classes)], value=v["label"], description="class")
        image = w.IntSlider(value=v["image"], min=0, max=len(self.per_class[v["label"]]) - 1, description="image")
        label.observe(lambda change: setattr(image, "max", len(self.per_class[change["new"]]) - 1), names="value")
        boxes = {
            "label": label, "image": image,
            "explain": w.Dropdown(options=[("true class", TRUE_CLASS)] + [(c, i) for i, c in enumerate(classes)],
                                  value=v["explain"], description="explain"),
            "keep": w.FloatSlider(value=v["keep"], min=0.05, max=1.0, step=0.05, description="keep"),
            "stage": w.Dropdown(options=list(STAGES), value=v["stage"], description="stage"),
            "mask_mode": w.Dropdown(options=list(CAM_TYPES), value=v["mask_mode"], description="mask"),
            "students": w.SelectMultiple(options=list(self.students), value=tuple(v["students"]),
                                         description="students", rows=min(5, max(1, len(self.students)))),
        }
        return boxes

    def show(self, **defaults: Any) -> None:
        """Display the controls and the figure of ``defaults``; moving a control redraws the figure
        in place (an ``update_display_data`` of the same display id). Without ipywidgets, or run
        headless, only the figure of ``defaults`` is seen."""
        from IPython.display import display

        try:
            import ipywidgets as w
        except ImportError:
            display(self.figure(**defaults))
            return
        boxes = self.controls(**defaults)

        def settings() -> dict[str, Any]:
            return {k: b.value for k, b in boxes.items()}

        def redraw(_change: Any = None) -> None:
            try:
                handle.update(self.figure(**settings()))
            except ValueError as err:  # e.g. no student selected: say so instead of a traceback
                handle.update(f"cannot draw: {err}")

        display(w.VBox([w.HBox(list(boxes.values())[:4]), w.HBox(list(boxes.values())[4:])]))
        handle = display(self.figure(**settings()), display_id=True)
        for box in boxes.values():
            box.observe(redraw, names="value")

"""The interactive explorer of 07 (``kdnb.report.explorer``) against the fixed grid of the same notebook
(``results.attention_panel``, batched over one image per class), and its widget plumbing without a
browser (tests/test_browser.py drives it in JupyterLab)."""

from __future__ import annotations

import io
import re
from unittest import mock

import pytest
import torch

from kdnb.report import notebook as nb
from kdnb.report.analyses import attention_panel, first_per_class
from kdnb.report.explorer import TRUE_CLASS, MaskExplorer


@pytest.fixture(scope="module")
def explorer(smoke_pipeline):
    data = nb.context("smoke", seed=0, runs_dir=smoke_pipeline.runs_dir).load_data()
    return MaskExplorer(smoke_pipeline.runs_dir, "smoke", 0, data)


def test_view_matches_the_grid(explorer, smoke_pipeline):
    """The first image of each class shows the same cam, mask and attention maps as 07's grid."""
    panel = attention_panel(smoke_pipeline.runs_dir, "smoke", 0, explorer.data, keeps=[0.25])
    assert first_per_class(explorer.data.test_y, explorer.data.num_classes)[3] == explorer.test_index(3, 0)
    view = explorer.view(label=3, keep=0.25)
    row = list(panel["classes"]).index(view.label)
    torch.testing.assert_close(view.cam, panel["cam"][row], atol=1e-5, rtol=0)
    assert torch.equal(view.mask, panel["masks"][0.25][row])
    for name, amap in view.attention.items():
        torch.testing.assert_close(amap, panel["attention"][name][row], atol=1e-5, rtol=0)
        assert (view.predictions[name][0] == view.label) == bool(panel["predictions"][name][row]), name


def test_controls_change_what_is_computed(explorer):
    label = 1
    base = explorer.view(label=label, explain=TRUE_CLASS)
    assert torch.equal(explorer.view(label=label, explain=label).cam, base.cam)  # "true class" is the label
    other = explorer.view(label=label, explain=(label + 1) % explorer.data.num_classes)
    assert not torch.equal(other.cam, base.cam) and other.explained != base.explained
    assert explorer.view(label=label, keep=0.25).mask.sum() < base.mask.sum()
    assert explorer.view(label=label, stage="layer2").mask.shape[-1] == 2 * base.mask.shape[-1]
    assert torch.equal(explorer.view(label=label, mask_mode="soft").mask.flatten().sort().values,
                       torch.nn.functional.interpolate(base.cam[None, None], size=base.mask.shape, mode="bilinear",
                                                       align_corners=False).flatten().sort().values)
    assert list(explorer.view(label=label, students=["KD"]).attention) == ["teacher", "KD"]
    assert not torch.equal(explorer.view(label=label, image=1).image, base.image)


@pytest.mark.parametrize(("settings", "message"), [
    ({"stage": "layer9"}, "unknown stage 'layer9'"),
    ({"image": 10_000}, "test images; image=10000"),
    ({"students": ["KD+XYZ"]}, "no trained student ['KD+XYZ']"),
    ({"keep": 0.0}, "keep must be in (0, 1]"),
])
def test_bad_settings_are_named(explorer, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        explorer.view(**settings)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_moving_a_control_redraws_the_figure_in_place(explorer):
    """``show`` displays the controls and a figure with a display id; changing a control updates that
    display (no new output), and a setting the figure cannot show is said in words."""
    shown, handle = [], mock.Mock()

    def display(obj, display_id=False):
        shown.append(obj)
        return handle if display_id else None

    with mock.patch("IPython.display.display", display):
        explorer.show(label=0)
    controls, first = shown
    boxes = {b.description: b for row in controls.children for b in row.children}
    assert set(boxes) == {"class", "image", "explain", "keep", "stage", "mask", "students"}
    boxes["class"].value = 4
    (fig,), _ = handle.update.call_args
    assert len(shown) == 2 and handle.update.call_count == 1
    assert _png(fig) != _png(first)
    assert fig.texts[0].get_text().startswith(explorer.data.classes[4])  # the suptitle names the image's class
    boxes["image"].value = boxes["image"].max  # the slider follows the class's number of images
    assert boxes["image"].max == len(explorer.per_class[4]) - 1
    assert handle.update.call_count == 2

"""CAM methods the causal masks can be built from, one file each (``--set cam=<name>``).

To add one, write ``kdnb/method/cams/<name>.py`` (a :class:`~.base.CamMethod` decorated with
``@CAM_METHODS.register``) and import it below.
"""

from __future__ import annotations

from ..registry import Registry
from .base import CamMethod

CAM_METHODS: Registry[type[CamMethod]] = Registry("CAM method")

from . import gradcam  # noqa: E402,F401,I001
from . import gradcampp, layercam  # noqa: E402,F401,I001

__all__ = ["CAM_METHODS", "CamMethod"]

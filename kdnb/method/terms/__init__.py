"""Loss terms, one file each, registered by name (``ce``, ``kd``, ``fa``, ``at``, …).

A run's objective is ``Σ w_<term> · term``; a preset is a mapping ``{term: weight}`` (see
:data:`kdnb.engine.config.PRESETS`) and ``--set w_<term>=…`` sets any registered term's weight. To
add a term, write ``kdnb/method/terms/<name>.py`` (a :class:`~.base.LossTerm` subclass decorated
with ``@TERMS.register``) and import it below: the registration order is the order of tables.
"""

from __future__ import annotations

from ..registry import Registry
from .base import LossTerm, Setting, TermContext, TermInputs

TERMS: Registry[type[LossTerm]] = Registry("loss term")

from . import ce, kd, fa, at  # noqa: E402,F401,I001  (the paper's terms, in this order)
from . import dkd  # noqa: E402,F401,I001

__all__ = ["TERMS", "LossTerm", "Setting", "TermContext", "TermInputs"]

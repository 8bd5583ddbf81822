"""kdnb — a correct, tested reproduction of causal-mask knowledge distillation on CIFAR-10.

Modules: :mod:`kdnb.models` (ResNet/CBAM), :mod:`kdnb.losses` (KD, AT, FA),
:mod:`kdnb.masks` (Grad-CAM causal masks), :mod:`kdnb.objective` (the weighted sum),
:mod:`kdnb.config` (presets, profiles, validation), :mod:`kdnb.data`, :mod:`kdnb.train`.
"""

__version__ = "0.1.0"

"""Optimizers of binary networks: the paper's gradient filter, Bop, and the latent-weight baselines."""

from bnn.optim.bop import Bop
from bnn.optim.frozen import Frozen
from bnn.optim.factory import build_binary_optimizer, build_real_optimizer, weight_mode_for
from bnn.optim.gradient_filter import GradientFilter

__all__ = [
    "Bop", "Frozen", "GradientFilter", "build_binary_optimizer", "build_real_optimizer", "weight_mode_for",
]

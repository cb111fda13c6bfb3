"""Bop (Helwegen et al. 2019, "Latent weights do not exist"): one EMA of the gradient and a flip threshold.

Paper: Koen Helwegen, James Widdicombe, Lukas Geiger, Zechun Liu, Kwang-Ting Cheng, Roeland Nusselder, "Latent
Weights Do Not Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019,
https://arxiv.org/abs/1906.02107 (larq's ``larq.optimizers.Bop`` is the reference implementation).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bnn.checks import check_non_negative, check_rate
from bnn.optim.base import SignFlipOptimizer, Tensors, ema_, flip_


class Bop(SignFlipOptimizer):
    """Binary optimizer for true +-1 weights b, per step and weight::

        m <- (1 - gamma) m + gamma g        b <- -b where |m| > threshold and sign(m) = sign(b)

    (the flip condition is m * b > threshold, as b = +-1). params: +-1 tensors, or groups that may set
    ``gamma`` and ``threshold``. The defaults are larq's (gamma 1e-4, threshold 1e-8). A schedule scales
    gamma (``scheduled``). With threshold 0, Bop is GradientFilter with gamma = 1 and alpha = Bop's gamma,
    bit for bit. ``m`` starts at zero.
    """

    state_keys = ("m",)
    scheduled = "gamma"

    def __init__(self, params: Iterable[Any], gamma: float = 1e-4, threshold: float = 1e-8) -> None:
        gamma = check_rate("gamma", gamma)
        threshold = check_non_negative("threshold", threshold)
        super().__init__(params, dict(gamma=gamma, threshold=threshold))

    def check_group(self, group: dict[str, Any]) -> None:
        check_rate("gamma", group["gamma"])
        check_non_negative("threshold", group["threshold"])

    def update(self, group: dict[str, Any], b: Tensors, g: Tensors, m: Tensors) -> None:
        ema_(m, g, group["gamma"])
        flip_(b, m, group["threshold"])

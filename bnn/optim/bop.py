"""Bop (Helwegen et al. 2019, "Latent weights do not exist"): one EMA of the gradient and a flip threshold.

Paper: Koen Helwegen, James Widdicombe, Lukas Geiger, Zechun Liu, Kwang-Ting Cheng, Roeland Nusselder, "Latent
Weights Do Not Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019,
https://arxiv.org/abs/1906.02107 (larq's ``larq.optimizers.Bop`` is the reference implementation).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from bnn.optim.base import SignFlipOptimizer
from bnn.checks import check_non_negative, check_rate
from bnn.optim.elementwise import ema_, flip_where_exceeds_


class Bop(SignFlipOptimizer):
    """Binary optimizer for true +-1 weights b, per step and weight::

        m <- (1 - gamma_t) m + gamma_t g        b <- -b where |m| > threshold and sign(m) = sign(b)

    (the flip condition is m * b > threshold, as b = +-1). gamma_t is the group's ``lr``: the constructor
    stores ``lr=gamma`` so the same torch lr schedulers that drive the filter's alpha drive Bop's adaptivity
    rate. With threshold 0 Bop is GradientFilter with gamma = 1 and alpha = Bop's gamma, bit for bit.
    ``m`` starts at zero; parameters are replaced by their sign (sign(0) = +1) on construction.
    """

    state_keys = ("m",)

    def __init__(
        self, params: Iterable[Any], gamma: float, threshold: float = 0.0, *, block_elements: int | None = None
    ) -> None:
        gamma = check_rate("gamma", gamma)
        threshold = check_non_negative("threshold", threshold)
        super().__init__(params, dict(lr=gamma, threshold=threshold), block_elements)

    def check_group(self, group: dict[str, Any]) -> None:
        check_rate("gamma", group["lr"])
        check_non_negative("threshold", group["threshold"])

    def update_block(self, operands: list[list[Tensor]], group: dict[str, Any]) -> None:
        binary, grads, m = operands
        ema_(m, grads, group["lr"])
        flip_where_exceeds_(binary, m, group["threshold"])

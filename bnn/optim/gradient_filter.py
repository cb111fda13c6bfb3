"""The paper's optimizer: two cascaded EMAs of the gradient; a weight flips where the output agrees with it.

Paper: Joris Quist, Yunqiang Li, Jan van Gemert, "Understanding weight-magnitude hyperparameters in training
binary networks", ICLR 2023, https://arxiv.org/abs/2303.02452;
official code https://github.com/jorisquist/Understanding-WM-HP-in-BNNs (optimizers/cema_optimizer.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from bnn.checks import check_rate
from bnn.optim.base import SignFlipOptimizer, Tensors, ema_, flip_


class GradientFilter(SignFlipOptimizer):
    """Cascaded-EMA gradient filter for true +-1 weights b, per step and weight::

        m <- (1 - gamma) m + gamma g        x <- (1 - alpha) x + alpha m        b <- -b where x * b > 0

    m follows the gradient at rate gamma, x follows m at rate alpha, and a weight flips when the filtered
    gradient x has its sign. Latent SGD (learning rate eta, momentum mu, weight decay lambda) is this filter
    exactly when alpha * gamma = eta * lambda and (1 - alpha)(1 - gamma) = mu (bnn.mapping).

    params: +-1 tensors, or groups that may set ``alpha`` and ``gamma``. alpha, gamma: rates in (0, 1],
    without defaults: a good alpha depends on the run's length (bnn.config.DEFAULT_FILTER is the grids'
    setting). A schedule scales alpha (``scheduled``), as the official code does. initial_state: ``(m0, x0)``
    per parameter, zeros without it (bnn.mapping.filter_state_from_latent: the state of a latent init).

    The step equals the three lines above bit for bit, in float32 and float64, on any device.
    """

    state_keys = ("m", "x")
    scheduled = "alpha"

    def __init__(self, params: Iterable[Any], alpha: float, gamma: float,
                 initial_state: Sequence[tuple[Tensor, Tensor]] | None = None) -> None:
        super().__init__(params, dict(alpha=check_rate("alpha", alpha), gamma=check_rate("gamma", gamma)))
        if initial_state is not None:
            self.set_state(list(initial_state))

    def check_group(self, group: dict[str, Any]) -> None:
        check_rate("alpha", group["alpha"])
        check_rate("gamma", group["gamma"])

    def update(self, group: dict[str, Any], b: Tensors, g: Tensors, m: Tensors, x: Tensors) -> None:
        ema_(m, g, group["gamma"])
        ema_(x, m, group["alpha"])
        flip_(b, x)

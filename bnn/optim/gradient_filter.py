"""The paper's optimizer: two cascaded EMAs over the gradient, flip where the filter output agrees with b.

Paper: Joris Quist, Yunqiang Li, Jan van Gemert, "Understanding weight-magnitude hyperparameters in training
binary networks", ICLR 2023, https://arxiv.org/abs/2303.02452;
official code https://github.com/jorisquist/Understanding-WM-HP-in-BNNs (optimizers/cema_optimizer.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from bnn.optim.base import SignFlipOptimizer
from bnn.checks import check_rate
from bnn.optim.elementwise import ema_, flip_where_exceeds_


class GradientFilter(SignFlipOptimizer):
    """Cascaded-EMA gradient filter (Quist et al. 2023) for true +-1 weights b, per step and weight::

        m <- (1 - gamma) m + gamma g        x <- (1 - alpha_t) x + alpha_t m        b <- -b where x * b > 0

    alpha_t is the group's ``lr``: the constructor stores ``lr=alpha``, so torch lr schedulers (``LambdaLR``
    multiplying the initial value, as the official code's decay factor does) schedule alpha; gamma is
    constant. ``m`` and ``x`` start at zero, or at ``initial_state`` (one ``(m0, x0)`` per parameter, in
    parameter order; see ``bnn.mapping.filter_state_from_latent`` for the state equivalent to a latent
    init). Parameters are replaced by their sign (sign(0) = +1) on construction.

    The step equals a direct transcription of the three lines above bit for bit (``(1 - gamma) * m +
    gamma * g`` rounded after each multiply and after the add; no fused multiply-add), in float32 and float64
    on any device. ``block_elements`` (elements per cache block on CPU, None = automatic) only changes speed.
    """

    state_keys = ("m", "x")

    def __init__(
        self,
        params: Iterable[Any],
        alpha: float,
        gamma: float,
        initial_state: Sequence[tuple[Tensor, Tensor]] | None = None,
        *,
        block_elements: int | None = None,
    ) -> None:
        alpha = check_rate("alpha", alpha)
        gamma = check_rate("gamma", gamma)
        super().__init__(params, dict(lr=alpha, gamma=gamma), block_elements)
        if initial_state is not None:
            self.set_state(list(initial_state))

    def check_group(self, group: dict[str, Any]) -> None:
        check_rate("alpha", group["lr"])
        check_rate("gamma", group["gamma"])

    def update_block(self, operands: list[list[Tensor]], group: dict[str, Any]) -> None:
        binary, grads, m, x = operands
        ema_(m, grads, group["gamma"])
        ema_(x, m, group["lr"])
        flip_where_exceeds_(binary, x)

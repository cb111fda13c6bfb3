"""Exact translation between latent-weight SGD hyperparameters and the gradient filter's (alpha, gamma).

Latent SGD with momentum mu and L2 weight decay lambda (PyTorch convention: v = mu v + g + lambda w,
w -= eta v) makes the latent weight a 2nd-order IIR filter of the gradient,

    w_t = (1 + mu - eta lambda) w_{t-1} - mu w_{t-2} - eta g_t,

which is exactly the filter's cascade of two EMAs with rates alpha and gamma when

    alpha * gamma = eta * lambda      and      (1 - alpha) (1 - gamma) = mu,

i.e. alpha and gamma are the roots of r^2 - (1 - mu + eta lambda) r + eta lambda = 0 (gamma the larger).
Then the filter output is x_t = -lambda w_t at every step, so sign(w_t) = -sign(x_t): identical binary
weights. The roots are real and in (0, 1] exactly when 0 < eta lambda <= (1 - sqrt(mu))^2.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays unimported until a tensor is handed in: see bnn.checks
    from torch import Tensor

from bnn.checks import check_momentum, check_non_negative, check_positive, check_rate


def _check_latent(lr: float, weight_decay: float, momentum: float) -> tuple[float, float, float]:
    lr = check_positive("lr", lr)
    weight_decay = check_non_negative("weight_decay", weight_decay)
    momentum = check_momentum("momentum", momentum)
    if weight_decay == 0.0:
        raise ValueError(
            "weight_decay: expected a float > 0 for a filter mapping, got 0.0 (without weight decay the latent "
            "weight is a pure accumulator: alpha = 0, and the init is never forgotten)"
        )
    return lr, weight_decay, momentum


_EPS = sys.float_info.epsilon


def _no_real_poles(product: float, momentum: float) -> ValueError:
    bound = ((1.0 - momentum) / (1.0 + math.sqrt(momentum))) ** 2  # (1 - sqrt(mu))^2 without cancellation
    return ValueError(
        f"lr * weight_decay: expected at most (1 - sqrt(momentum))^2 = {bound:.6g} for momentum {momentum!r}, "
        f"got {product:.6g}: the latent update has no real poles in [0, 1), so no (alpha, gamma) reproduces it"
    )


def latent_to_filter(lr: float, weight_decay: float, momentum: float = 0.0) -> tuple[float, float]:
    """(alpha, gamma) of the filter whose sign trajectory equals latent SGD's, exactly; gamma >= alpha.

    ValueError naming the argument for lr <= 0, weight_decay <= 0, momentum outside [0, 1), or a product
    lr * weight_decay above (1 - sqrt(momentum))^2, where the filter has no real poles in [0, 1).
    """
    lr, weight_decay, momentum = _check_latent(lr, weight_decay, momentum)
    product = lr * weight_decay
    if momentum == 0.0:
        if product > 1.0:
            raise _no_real_poles(product, momentum)
        return product, 1.0  # poles 1 - lr * weight_decay and 0, exactly: a single EMA
    # The rates are the roots of r^2 - total r + product: real iff the discriminant is >= 0, and both <= 1 iff
    # total <= 2. A double pole (discriminant 0) computes as slightly negative; allow it that rounding.
    total = 1.0 - momentum + product
    discriminant = total * total - 4.0 * product
    if discriminant < -8.0 * _EPS * total or total > 2.0:
        raise _no_real_poles(product, momentum)
    # The larger root without cancellation, the smaller one from the product.
    larger = 0.5 * (total + math.sqrt(max(discriminant, 0.0)))
    alpha, gamma = sorted((product / larger, larger))  # near a double pole rounding may swap them
    return alpha, min(gamma, 1.0)


def filter_to_latent(alpha: float, gamma: float, lr: float) -> tuple[float, float]:
    """(weight_decay, momentum) of latent SGD at learning rate ``lr`` equivalent to the filter (alpha, gamma)."""
    alpha = check_rate("alpha", alpha)
    gamma = check_rate("gamma", gamma)
    lr = check_positive("lr", lr)
    return alpha * gamma / lr, (1.0 - alpha) * (1.0 - gamma)


def approx_latent_to_filter(lr: float, weight_decay: float, momentum: float = 0.0) -> tuple[float, float]:
    """The usual approximation alpha ~ lr * weight_decay / (1 - momentum), gamma ~ 1 - momentum."""
    lr, weight_decay, momentum = _check_latent(lr, weight_decay, momentum)
    return lr * weight_decay / (1.0 - momentum), 1.0 - momentum


def approx_filter_to_latent(alpha: float, gamma: float, lr: float) -> tuple[float, float]:
    """The approximation's inverse: momentum ~ 1 - gamma, weight_decay ~ alpha * (1 - momentum) / lr."""
    alpha = check_rate("alpha", alpha)
    gamma = check_rate("gamma", gamma)
    lr = check_positive("lr", lr)
    return alpha * gamma / lr, 1.0 - gamma


def filter_reading(opt: Any, rate: float | None = None) -> tuple[float, float]:
    """(alpha, gamma) of the gradient filter whose sign trajectory is the binary optimizer's; NaNs where none is.

    ``opt``: a binary_opt config (bnn.config.BinaryOptConfig, or anything with its field names as attributes).
    ``rate``: the optimizer's scheduled rate this epoch (its param group's ``lr`` for latent SGD, ``alpha`` for
    the filter, ``gamma`` for Bop: bnn.schedules.scheduled_rate); None reads the configured one. bnn.train logs
    the result every epoch as the metrics ``alpha`` and ``gamma``, the one place this reading is computed.

    filter: its own. Latent SGD: latent_to_filter; with weight decay 0 the roots are alpha = 0 and
    gamma = 1 - momentum (a pure accumulator); NaN for a step of 0 or without real roots in (0, 1] (e.g. lr 1,
    weight decay 1e-2, momentum 0.9: the run trains on, it has no filter twin). Bop with threshold 0: alpha = Bop's
    gamma, gamma = 1. Adam (beta2 and eps make it non-linear), Bop with a threshold, frozen: NaN.
    """
    none = (math.nan, math.nan)
    if opt.name == "filter":
        return _float(opt.alpha if rate is None else rate), _float(opt.gamma)
    if opt.name == "sgd":
        lr = opt.lr if rate is None else rate
        if lr is None or opt.weight_decay is None or opt.momentum is None or not lr > 0:
            return none
        if opt.weight_decay == 0:
            return 0.0, 1.0 - opt.momentum
        try:
            return latent_to_filter(lr, opt.weight_decay, opt.momentum)
        except ValueError:
            return none
    if opt.name == "bop" and opt.threshold == 0:
        return _float(opt.gamma if rate is None else rate), 1.0
    return none


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def adam_beta1_to_gamma(beta1: float) -> float:
    """Adam's first-moment rate in the filter reading: gamma = 1 - beta1 (beta2 and eps have no counterpart)."""
    return 1.0 - check_momentum("beta1", beta1)


def filter_state_from_latent(
    latent_weight: Tensor,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    velocity: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The filter state (m0, x0) equivalent to latent init ``latent_weight`` and momentum buffer ``velocity``.

    x0 = -lambda w0, and m0 = -lambda (w0 - (1 - alpha) lr v0 / alpha), which is -lambda w0 for the zero
    velocity every fresh torch SGD starts from. Use with GradientFilter(initial_state=...) together with
    latent_to_filter(lr, weight_decay, momentum) for equivalence from a non-zero latent init.
    """
    alpha, _ = latent_to_filter(lr, weight_decay, momentum)
    w0 = latent_weight.detach()
    x0 = w0 * -weight_decay
    if velocity is None or momentum == 0.0:
        # With momentum 0 the buffer is never read (and gamma = 1 makes m0 irrelevant).
        return x0.clone(), x0
    if velocity.shape != w0.shape:
        raise ValueError(f"velocity: expected shape {tuple(w0.shape)}, got {tuple(velocity.shape)}")
    m0 = (w0 - velocity.detach().to(w0) * ((1.0 - alpha) * lr / alpha)) * -weight_decay
    return m0, x0


__all__ = [
    "adam_beta1_to_gamma",
    "approx_filter_to_latent",
    "approx_latent_to_filter",
    "filter_reading",
    "filter_state_from_latent",
    "filter_to_latent",
    "latent_to_filter",
]

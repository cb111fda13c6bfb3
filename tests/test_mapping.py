"""bnn.mapping: worked values of paper.md, round trips, the init-state mapping, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from bnn.mapping import (
    adam_beta1_to_gamma,
    approx_filter_to_latent,
    approx_latent_to_filter,
    filter_state_from_latent,
    filter_to_latent,
    latent_to_filter,
)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    ("lr", "weight_decay", "momentum", "alpha", "gamma"),
    [(0.1, 5e-4, 0.9, 5.0227e-4, 0.099548), (0.1, 1e-4, 0.9, 1.0009e-4, 0.09991), (0.1, 5e-4, 0.0, 5e-5, 1.0)],
)
def test_worked_values_of_paper(lr, weight_decay, momentum, alpha, gamma):
    got_alpha, got_gamma = latent_to_filter(lr, weight_decay, momentum)
    # paper.md quotes 5 significant digits
    assert f"{got_alpha:.5g}" == f"{alpha:.5g}" and f"{got_gamma:.5g}" == f"{gamma:.5g}"
    assert got_gamma >= got_alpha


def _grid():
    for lr in (1e-3, 0.01, 0.1, 1.0, 3.0):
        for momentum in (0.0, 0.5, 0.9, 0.99):
            bound = (1 - math.sqrt(momentum)) ** 2
            for fraction in (1e-6, 1e-3, 0.1, 0.5, 1.0):
                yield lr, bound * fraction / lr, momentum


def test_round_trip_latent_filter_latent_to_1e12():
    for lr, weight_decay, momentum in _grid():
        alpha, gamma = latent_to_filter(lr, weight_decay, momentum)
        assert 0 < alpha <= gamma <= 1
        # the defining identities, then the inverse map
        assert math.isclose(alpha * gamma, lr * weight_decay, rel_tol=1e-12)
        assert math.isclose((1 - alpha) * (1 - gamma), momentum, rel_tol=1e-12, abs_tol=1e-15)
        back_wd, back_mu = filter_to_latent(alpha, gamma, lr)
        assert math.isclose(back_wd, weight_decay, rel_tol=1e-12)
        assert math.isclose(back_mu, momentum, rel_tol=1e-12, abs_tol=1e-12)


def test_round_trip_filter_latent_filter():
    for alpha in (1e-5, 1e-3, 0.1, 0.4):
        for gamma in (2 * alpha, 0.05, 0.5, 1.0):
            if gamma < 2 * alpha:
                continue
            weight_decay, momentum = filter_to_latent(alpha, gamma, 0.1)
            a, g = latent_to_filter(0.1, weight_decay, momentum)
            # momentum = (1 - alpha)(1 - gamma) is stored to 1e-16 absolute; the roots move by that / (gamma - alpha)
            assert math.isclose(a, alpha, rel_tol=1e-9) and math.isclose(g, gamma, rel_tol=1e-9)
    # A double pole (alpha = gamma) is ill-conditioned: rounding moves the roots by about sqrt(eps).
    for rate in (1e-5, 0.1, 1.0):
        weight_decay, momentum = filter_to_latent(rate, rate, 0.1)
        a, g = latent_to_filter(0.1, weight_decay, momentum)
        assert math.isclose(a, rate, rel_tol=1e-6) and math.isclose(g, rate, rel_tol=1e-6)


def test_approximate_forms_and_their_error():
    alpha, gamma = approx_latent_to_filter(0.1, 5e-4, 0.9)
    assert math.isclose(alpha, 5e-4, rel_tol=1e-15) and math.isclose(gamma, 0.1, rel_tol=1e-15)
    exact_alpha, exact_gamma = latent_to_filter(0.1, 5e-4, 0.9)
    assert 0 < exact_alpha - alpha < 1e-5 and 0 < gamma - exact_gamma < 1e-3  # close, not equal
    weight_decay, momentum = approx_filter_to_latent(5e-4, 0.1, 0.1)
    assert math.isclose(weight_decay, 5e-4, rel_tol=1e-15) and math.isclose(momentum, 0.9, rel_tol=1e-15)
    assert adam_beta1_to_gamma(0.9) == 1 - 0.9 and adam_beta1_to_gamma(0.0) == 1.0


@pytest.mark.parametrize(("momentum", "velocity_scale"), [(0.0, 0.0), (0.9, 0.0), (0.9, 0.3), (0.5, 2.0)])
def test_init_state_mapping_tracks_latent_sgd_from_any_start(momentum, velocity_scale):
    """Latent SGD from w0 (and a loaded momentum buffer v0) vs the filter from the mapped (m0, x0): x = -lambda w."""
    torch.manual_seed(0)
    lr, weight_decay = 0.1, 2e-3
    alpha, gamma = latent_to_filter(lr, weight_decay, momentum)
    w = torch.nn.Parameter(torch.randn(500, dtype=torch.float64) * 0.05)
    velocity = torch.randn(500, dtype=torch.float64) * velocity_scale
    m, x = filter_state_from_latent(w, lr, weight_decay, momentum, velocity)
    sgd = torch.optim.SGD([w], lr=lr, momentum=momentum, weight_decay=weight_decay)
    if momentum:
        sgd.state[w]["momentum_buffer"] = velocity.clone()
    sign_changes = 0
    for _ in range(300):
        g = torch.randn(500, dtype=torch.float64)
        previous = w.detach() < 0
        w.grad = g
        sgd.step()
        m = (1 - gamma) * m + gamma * g
        x = (1 - alpha) * x + alpha * m
        torch.testing.assert_close(x, -weight_decay * w.detach(), rtol=1e-9, atol=1e-15)
        assert torch.equal(x < 0, w.detach() > 0)
        sign_changes += int(((w.detach() < 0) != previous).sum())
    assert sign_changes > 1000


def test_init_state_mapping_needs_the_velocity_when_there_is_one():
    """Leaving out a non-zero momentum buffer must break the identity: the velocity term matters."""
    w = torch.full((3,), 0.5, dtype=torch.float64)
    v = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    with_v, x0 = filter_state_from_latent(w, 0.1, 1e-3, 0.9, v)
    without_v, x0_again = filter_state_from_latent(w, 0.1, 1e-3, 0.9)
    assert torch.equal(x0, x0_again) and torch.equal(x0, -1e-3 * w)
    assert torch.equal(without_v, x0) and not torch.allclose(with_v, without_v)
    with pytest.raises(ValueError, match=r"velocity: expected shape \(3,\)"):
        filter_state_from_latent(w, 0.1, 1e-3, 0.9, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: latent_to_filter(0.0, 1e-4, 0.9), "lr"),
        (lambda: latent_to_filter(-0.1, 1e-4, 0.9), "lr"),
        (lambda: latent_to_filter(0.1, -1e-4, 0.9), "weight_decay"),
        (lambda: latent_to_filter(0.1, 0.0, 0.9), "weight_decay"),
        (lambda: latent_to_filter(0.1, 1e-4, 1.0), "momentum"),
        (lambda: latent_to_filter(0.1, 1e-4, -0.1), "momentum"),
        (lambda: latent_to_filter(0.1, 1e-4, math.nan), "momentum"),
        (lambda: latent_to_filter(1.0, 0.1, 0.9), "weight_decay"),  # no real poles
        (lambda: latent_to_filter(1.0, 2.5, 0.0), "weight_decay"),  # poles outside [0, 1)
        (lambda: approx_latent_to_filter(0.1, 1e-4, 1.5), "momentum"),
        (lambda: filter_to_latent(0.0, 0.5, 0.1), "alpha"),
        (lambda: filter_to_latent(0.5, 1.01, 0.1), "gamma"),
        (lambda: filter_to_latent(0.5, 0.5, 0.0), "lr"),
        (lambda: approx_filter_to_latent(-1.0, 0.5, 0.1), "alpha"),
        (lambda: adam_beta1_to_gamma(1.0), "beta1"),
        (lambda: filter_state_from_latent(torch.ones(2), 0.1, 0.0), "weight_decay"),
    ],
)
def test_bad_inputs_name_the_argument(call, argument):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(argument) or f"* {argument}" in str(info.value)
    if argument == "weight_decay" and "poles" in str(info.value):
        assert "(1 - sqrt(momentum))^2" in str(info.value)


def test_no_real_poles_boundary_is_exact():
    momentum = 0.81
    bound = (1 - math.sqrt(momentum)) ** 2
    alpha, gamma = latent_to_filter(1.0, bound, momentum)  # double pole: alpha = gamma
    assert math.isclose(alpha, gamma, rel_tol=1e-6) and math.isclose(alpha, 1 - math.sqrt(momentum), rel_tol=1e-6)
    with pytest.raises(ValueError, match="no real poles"):
        latent_to_filter(1.0, bound * (1 + 1e-9), momentum)


def test_filter_reading_of_each_binary_optimizer():
    """One reading for bnn.train's per-epoch alpha (``rate``: the scheduled step) and for analysis' runs.parquet."""
    from bnn.config import BinaryOptConfig
    from bnn.mapping import filter_reading

    sgd = BinaryOptConfig(name="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    assert filter_reading(sgd) == latent_to_filter(0.1, 5e-4, 0.9)
    assert filter_reading(sgd, rate=0.05) == latent_to_filter(0.05, 5e-4, 0.9)  # a scheduled step
    assert filter_reading(BinaryOptConfig(name="sgd", momentum=0.9)) == (0.0, pytest.approx(0.1))  # no decay
    no_poles = BinaryOptConfig(name="sgd", lr=1.0, weight_decay=1e-2, momentum=0.9)
    assert all(math.isnan(v) for v in (*filter_reading(no_poles), *filter_reading(sgd, rate=0.0)))
    filt = BinaryOptConfig(name="filter", alpha=1e-3, gamma=0.1)
    assert filter_reading(filt) == (1e-3, 0.1) and filter_reading(filt, rate=5e-4) == (5e-4, 0.1)
    assert filter_reading(BinaryOptConfig(name="bop", gamma=1e-4)) == (1e-4, 1.0)
    for none in (BinaryOptConfig(name="bop", gamma=1e-4, threshold=1e-6), BinaryOptConfig(name="adam"),
                 BinaryOptConfig(name="frozen")):
        assert all(math.isnan(v) for v in filter_reading(none)), none.name

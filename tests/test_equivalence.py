"""The paper's equivalences on real training: a small BNN on sklearn's digits, float64, every step compared.

Latent SGD and the gradient filter with mapped (alpha, gamma) must give identical binary weights at every one
of STEPS steps, with zero mismatches. The network, data order and real-valued optimizer are identical in the
paired runs, so identical binary weights keep every other tensor identical too, which is checked at the end.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from bnn.binarize import binarize_, sign, sign_ste
from bnn.layers import BinaryLinear, init_binary_weights
from bnn.mapping import filter_state_from_latent, latent_to_filter
from bnn.optim import GradientFilter
from bnn.schedules import RateSchedule

STEPS = 224  # 8 epochs of 28 batches
BATCH = 64
HIDDEN = 48


pytestmark = pytest.mark.usefixtures("single_thread")


class TinyBNN(nn.Module):
    """real Linear 64->h, BN, sign, BinaryLinear h->h, BN, sign, real Linear h->10."""

    def __init__(self, weight_mode: str) -> None:
        super().__init__()
        self.inp = nn.Linear(64, HIDDEN)
        self.bn1 = nn.BatchNorm1d(HIDDEN)
        # identity STE: dL/dw = dL/db, which the equivalence needs
        self.binary = BinaryLinear(HIDDEN, HIDDEN, weight_mode=weight_mode, weight_ste="identity")
        self.bn2 = nn.BatchNorm1d(HIDDEN)
        self.out = nn.Linear(HIDDEN, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = sign_ste(self.bn1(self.inp(x)), "bireal")
        h = sign_ste(self.bn2(self.binary(h)), "bireal")
        return self.out(h)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float64), torch.tensor(y)


def batches(data, steps: int):
    x, y = data
    gen = torch.Generator().manual_seed(0)
    done = 0
    while done < steps:
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y) - BATCH + 1, BATCH):
            if done == steps:
                return
            idx = order[start : start + BATCH]
            yield done, x[idx], y[idx]
            done += 1


def twin_models(latent_init_scale: float) -> tuple[TinyBNN, TinyBNN]:
    """A latent-weight model and a true-binary one with identical real parameters and the same latent init."""
    torch.manual_seed(0)
    latent = TinyBNN("latent").double()
    init_binary_weights([latent.binary.weight], "uniform", latent_init_scale, torch.Generator().manual_seed(1))
    binary = TinyBNN("binary").double()
    binary.load_state_dict(latent.state_dict())
    binarize_([binary.binary.weight])  # the filter trains sign(w0); its state carries w0 (state_init latent)
    return latent, binary


def binary_weight(model: TinyBNN) -> torch.Tensor:
    w = model.binary.weight.detach()
    return sign(w) if model.binary.weight_mode == "latent" else w


def train_in_lockstep(data, models, binary_opts, schedule=None, epoch_steps: int = 28) -> int:
    """Train the models side by side on the same batches; assert identical binary weights at every step.

    Returns how many sign changes the first model made, so callers can check the run was not trivial.
    """
    real_opts = [torch.optim.Adam([p for n, p in m.named_parameters() if n != "binary.weight"], lr=1e-2)
                 for m in models]
    schedulers = [RateSchedule(o, schedule) for o in binary_opts] if schedule else []
    previous = binary_weight(models[0]).clone()
    assert all(torch.equal(binary_weight(m), previous) for m in models[1:]), "identical binary weights at step 0"
    changes = 0
    for step, x, y in batches(data, STEPS):
        for model, binary_opt, real_opt in zip(models, binary_opts, real_opts):
            loss = nn.functional.cross_entropy(model(x), y)
            binary_opt.zero_grad(set_to_none=True)
            real_opt.zero_grad(set_to_none=True)
            loss.backward()
            binary_opt.step()
            real_opt.step()
        reference = binary_weight(models[0])
        for model in models[1:]:
            mismatches = int((binary_weight(model) != reference).sum())
            assert mismatches == 0, f"step {step + 1}: {mismatches} binary weights differ"
        changes += int((reference != previous).sum())
        previous = reference.clone()
        if schedulers and (step + 1) % epoch_steps == 0:
            for scheduler in schedulers:
                scheduler.step()
    reals = [{n: t for n, t in m.state_dict().items() if n != "binary.weight"} for m in models]
    for other in reals[1:]:
        assert all(torch.equal(reals[0][n], other[n]) for n in reals[0]), "real parameters must stay identical"
    return changes


@pytest.mark.parametrize(
    ("lr", "weight_decay", "momentum", "init_scale"),
    [(0.1, 5e-4, 0.9, 0.0), (0.05, 2e-2, 0.9, 0.0), (0.05, 2e-2, 0.9, 0.05), (0.2, 0.1, 0.5, 0.01)],
)
def test_latent_sgd_momentum_equals_filter(digits, lr, weight_decay, momentum, init_scale):
    latent, binary = twin_models(init_scale)
    w0 = latent.binary.weight.detach().clone()
    sgd = torch.optim.SGD([latent.binary.weight], lr=lr, momentum=momentum, weight_decay=weight_decay)
    alpha, gamma = latent_to_filter(lr, weight_decay, momentum)
    state = [filter_state_from_latent(w0, lr, weight_decay, momentum)] if init_scale else None
    filt = GradientFilter([binary.binary.weight], alpha=alpha, gamma=gamma, initial_state=state)
    changes = train_in_lockstep(digits, [latent, binary], [sgd, filt])
    assert changes > HIDDEN * HIDDEN, "the weights must flip during training"


def test_latent_sgd_with_decay_schedule_equals_single_ema(digits):
    """SGD + weight decay (no momentum) = one EMA (gamma = 1), alpha_t = lr_t * weight_decay, scheduled alike."""
    lr, weight_decay = 0.5, 2e-2
    latent, binary = twin_models(0.02)
    w0 = latent.binary.weight.detach().clone()
    sgd = torch.optim.SGD([latent.binary.weight], lr=lr, weight_decay=weight_decay)
    alpha, gamma = latent_to_filter(lr, weight_decay)
    assert gamma == 1.0 and alpha == lr * weight_decay
    filt = GradientFilter([binary.binary.weight], alpha=alpha, gamma=1.0,
                          initial_state=[filter_state_from_latent(w0, lr, weight_decay)])
    changes = train_in_lockstep(digits, [latent, binary], [sgd, filt], schedule=lambda epoch: 1 - epoch / 8)
    assert filt.param_groups[0]["alpha"] == 0.0 == sgd.param_groups[0]["lr"]  # 8 epochs of 1 - epoch / 8 done
    assert changes > HIDDEN * HIDDEN


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_equal_lr_weight_decay_products_give_identical_signs(digits, momentum):
    """(lr, wd) = (0.1, 3e-3) and (0.3, 1e-3): only the product matters (zero init; scaled init scales w)."""
    first, second = twin_models(0.0)
    second = TinyBNN("latent").double()
    second.load_state_dict(first.state_dict())
    opts = [torch.optim.SGD([first.binary.weight], lr=0.1, momentum=momentum, weight_decay=3e-3),
            torch.optim.SGD([second.binary.weight], lr=0.3, momentum=momentum, weight_decay=1e-3)]
    changes = train_in_lockstep(digits, [first, second], opts)
    assert changes > HIDDEN * HIDDEN
    # The latent weights themselves differ by the lr ratio: the magnitude is what the product hides.
    torch.testing.assert_close(second.binary.weight, 3 * first.binary.weight, rtol=1e-6, atol=1e-12)

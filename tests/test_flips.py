"""FlipTracker against a direct computation from the recorded sign history; resumption; bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from bnn.flips import FlipTracker

EPOCHS, STEPS_PER_EPOCH = 3, 5


pytestmark = pytest.mark.usefixtures("single_thread")


def make_weights(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(20, 30, generator=gen, dtype=torch.float64)
    latent.view(-1)[:10] = 0.0  # sign(0) = +1
    binary = torch.where(torch.rand(50, generator=gen) < 0.5, -1.0, 1.0)
    return [("block.latent", latent), ("block.binary", binary)]


def optimizer_step(weights: list[torch.Tensor], gen: torch.Generator, step: int) -> None:
    """Stand-in for an optimizer: flips a growing random share of signs, in place, in a few different ways."""
    latent, binary = weights
    share = 0.01 + 0.008 * step
    flat = latent.view(-1)
    chosen = torch.rand(flat.shape, generator=gen) < share
    flat[chosen] = -flat[chosen]  # a flip, except for zeros (-0.0 is still sign +1)
    to_zero = torch.rand(flat.shape, generator=gen) < 0.01
    flat[to_zero] = 0.0  # negative -> 0 flips, positive -> 0 does not
    flat.mul_(1.5)  # magnitude only: no flip
    binary[torch.rand(binary.shape, generator=gen) < share] *= -1


def negative(weights: list[torch.Tensor]) -> list[np.ndarray]:
    return [(w < 0).numpy().copy() for w in weights]


def direct_summaries(history: list[list[np.ndarray]], names: list[str]) -> list[dict[str, float]]:
    """The figures computed straight from the sign after every step (history[0]: at construction)."""
    total = sum(h.size for h in history[0])
    summaries, forget = [], math.nan
    for t in range(1, len(history)):
        agreement = sum(int((h == h0).sum()) for h, h0 in zip(history[t], history[0])) / total
        if math.isnan(forget) and agreement < 0.75:
            forget = float(t)
        if t % STEPS_PER_EPOCH == 0:
            steps = range(t - STEPS_PER_EPOCH + 1, t + 1)
            per_step = [[int((a != b).sum()) for a, b in zip(history[s], history[s - 1])] for s in steps]
            summary = {"flip_ratio": float(np.mean([sum(f) / total for f in per_step]))}
            for i, name in enumerate(names):
                summary[f"flips.{name}"] = float(np.mean([f[i] for f in per_step]))
            summary.update(sign_agreement_init=agreement, init_forget_step=forget, steps=float(t))
            summaries.append(summary)
    return summaries


def assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=0), key


@pytest.fixture(params=["numpy", "torch"])
def counter(request) -> str:
    """Both counters (numpy on the CPU, torch kernels as on a GPU) must give the direct computation's numbers."""
    return request.param


def test_epoch_summaries_match_a_direct_computation(counter: str):
    named = make_weights()
    weights = [w for _, w in named]
    tracker = FlipTracker(named, counter=counter)
    history = [negative(weights)]
    gen = torch.Generator().manual_seed(1)
    got = []
    for step in range(EPOCHS * STEPS_PER_EPOCH):
        tracker.before_step()
        optimizer_step(weights, gen, step)
        tracker.after_step()
        history.append(negative(weights))
        if (step + 1) % STEPS_PER_EPOCH == 0:
            got.append(tracker.epoch_summary())
    want = direct_summaries(history, [n for n, _ in named])
    for g, w in zip(got, want):
        assert_same(g, w)
    assert math.isnan(want[0]["init_forget_step"]) and not math.isnan(want[-1]["init_forget_step"]), \
        "the run must cross the 0.75 agreement level after the first epoch"
    empty = tracker.epoch_summary()
    assert math.isnan(empty["flip_ratio"]) and empty["steps"] == EPOCHS * STEPS_PER_EPOCH


def test_changes_between_steps_are_not_counted_as_flips(counter: str):
    named = make_weights()
    latent, binary = (w for _, w in named)
    tracker = FlipTracker(named, counter=counter)
    tracker.before_step()
    binary[:5] *= -1
    tracker.after_step()
    latent.neg_()  # e.g. a checkpoint load: not part of any optimizer step
    tracker.before_step()
    tracker.after_step()
    summary = tracker.epoch_summary()
    assert summary["flips.block.binary"] == 2.5 and summary["flips.block.latent"] == 0.0
    assert summary["steps"] == 2.0
    agreeing = 600 - int((latent != 0).sum()) + 45  # negated latent: only zeros keep their sign
    assert summary["sign_agreement_init"] == pytest.approx(agreeing / 650, rel=1e-15)
    with pytest.raises(RuntimeError, match="before_step"):
        tracker.after_step()


@pytest.mark.parametrize("saved_by", ["numpy", "torch"])
def test_state_dict_resumes_mid_epoch_with_identical_numbers(counter: str, saved_by: str):
    named = make_weights()
    weights = [w for _, w in named]
    uninterrupted = FlipTracker(named, counter=saved_by)
    gen = torch.Generator().manual_seed(2)
    resumed = None
    summaries: dict[str, list[dict[str, float]]] = {"uninterrupted": [], "resumed": []}
    for step in range(EPOCHS * STEPS_PER_EPOCH):
        if step == 7:  # mid-epoch: save, then a new tracker (whose own initial signs are wrong) loads it
            buffer = io.BytesIO()
            torch.save(uninterrupted.state_dict(), buffer)
            buffer.seek(0)
            resumed = FlipTracker(named, counter=counter)
            resumed.load_state_dict(torch.load(buffer, weights_only=True))
        trackers = [uninterrupted] + ([resumed] if resumed else [])
        for t in trackers:
            t.before_step()
        optimizer_step(weights, gen, step)
        for t in trackers:
            t.after_step()
        if (step + 1) % STEPS_PER_EPOCH == 0:
            summaries["uninterrupted"].append(uninterrupted.epoch_summary())
            if resumed:
                summaries["resumed"].append(resumed.epoch_summary())
    assert len(summaries["resumed"]) == 2
    for a, b in zip(summaries["uninterrupted"][1:], summaries["resumed"]):
        assert_same(b, a)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="named_weights: expected at least one"):
        FlipTracker([])
    with pytest.raises(ValueError, match="counter: expected one of"):
        FlipTracker(make_weights(), counter="gpu")
    with pytest.raises(ValueError, match="counter: 'numpy' needs CPU weights"):
        FlipTracker([("w", torch.ones(3, dtype=torch.bfloat16))], counter="numpy")
    with pytest.raises(ValueError, match="named_weights: expected unique names"):
        FlipTracker([("a", torch.ones(2)), ("a", torch.ones(3))])
    state = FlipTracker(make_weights()).state_dict()
    other = FlipTracker([("block.latent", torch.ones(20, 30)), ("x", torch.ones(50))])
    with pytest.raises(ValueError, match=r"state\['names'\]"):
        other.load_state_dict(state)

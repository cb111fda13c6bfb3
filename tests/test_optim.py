"""GradientFilter and Bop against plain transcriptions of their equations, bit for bit; checkpoints; inputs."""

from __future__ import annotations

import io
import math

import pytest
import torch

from bnn.binarize import binarize_, sign
from bnn.config import BinaryOptConfig, RealOptConfig
from bnn.optim import (Bop, Frozen, GradientFilter, build_binary_optimizer, build_real_optimizer,
                       weight_mode_for)
from bnn.schedules import RateSchedule

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]


pytestmark = pytest.mark.usefixtures("single_thread")


def transcribed_filter(b, m, x, g, alpha, gamma):
    """The paper's three lines, as written."""
    m = (1 - gamma) * m + gamma * g
    x = (1 - alpha) * x + alpha * m
    b = torch.where(x * b > 0, -b, b)
    return b, m, x


def transcribed_bop(b, m, g, gamma, threshold):
    """Helwegen et al.'s rule as stated: flip where |m| > threshold and sign(m) = sign(b)."""
    m = (1 - gamma) * m + gamma * g
    flip = (m.abs() > threshold) & (sign(m) == b)
    return torch.where(flip, -b, b), m


def make_params(device: str, dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    """Latent values of several shapes, a tiny one, and a non-contiguous one; some exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(33, 17, 3, 3), (7,), (64, 40), (3, 5, 1, 1)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype).to(device)) for s in shapes]
    transposed = torch.randn(9, 13, generator=gen, dtype=dtype).to(device).t()
    assert not transposed.is_contiguous()
    params.append(torch.nn.Parameter(transposed))
    with torch.no_grad():
        params[0].view(-1)[:50] = 0.0  # sign(0) = +1
    return params


def make_binary(device: str, dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    params = make_params(device, dtype, seed)
    binarize_(params)
    return params


def random_grads(params, gen: torch.Generator, step: int) -> list[torch.Tensor]:
    grads = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * 10.0 ** (i - 2)
        if i == 1 and step % 3 == 0:
            g.zero_()  # no gradient signal: nothing may flip
        grads.append(g)
    return grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_filter_equals_transcription_with_linear_alpha_decay(device, dtype, threads):
    torch.set_num_threads(threads)
    params = make_params(device, dtype)
    initial = [p.detach().clone() for p in params]
    binarize_(params)
    bs = [sign(w) for w in initial]
    assert all(torch.equal(p, b) for p, b in zip(params, bs)), "binarize_ must set every weight to its sign"
    assert bool((params[0].view(-1)[:50] == 1).all()), "sign(0) must be +1"
    alpha0, gamma, epochs, steps_per_epoch = 0.3, 0.2, 6, 4
    opt = GradientFilter(params, alpha=alpha0, gamma=gamma)
    assert all(torch.equal(p, b) for p, b in zip(params, bs)), "construction must leave the weights alone"
    schedule = RateSchedule(opt, lambda epoch: 1 - epoch / epochs)

    ms = [torch.zeros_like(w) for w in initial]
    xs = [torch.zeros_like(w) for w in initial]
    gen = torch.Generator().manual_seed(1)
    flips = 0
    for epoch in range(epochs):
        alpha = alpha0 * (1 - epoch / epochs)
        assert opt.param_groups[0]["alpha"] == alpha
        for step in range(steps_per_epoch):
            grads = random_grads(params, gen, epoch * steps_per_epoch + step)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            for i, g in enumerate(grads):
                new_b, ms[i], xs[i] = transcribed_filter(bs[i], ms[i], xs[i], g, alpha, gamma)
                flips += int((new_b != bs[i]).sum())
                bs[i] = new_b
            for p, b, m, x in zip(params, bs, ms, xs):
                state = opt.state[p]
                assert torch.equal(p, b) and torch.equal(state["m"], m) and torch.equal(state["x"], x)
        schedule.step()
    assert flips > 100, "the run must exercise flips"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_bop_equals_transcription(device, dtype, threshold):
    params = make_binary(device, dtype, seed=3)
    bs = [p.detach().clone() for p in params]
    opt = Bop(params, gamma=0.3, threshold=threshold)
    schedule = RateSchedule(opt, lambda epoch: 0.5**epoch)
    ms = [torch.zeros_like(b) for b in bs]
    gen = torch.Generator().manual_seed(4)
    flips = 0
    for step in range(12):
        gamma = 0.3 * 0.5 ** (step // 4)
        grads = random_grads(params, gen, step)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for i, g in enumerate(grads):
            new_b, ms[i] = transcribed_bop(bs[i], ms[i], g, gamma, threshold)
            flips += int((new_b != bs[i]).sum())
            bs[i] = new_b
            assert torch.equal(params[i], bs[i]) and torch.equal(opt.state[params[i]]["m"], ms[i])
        if step % 4 == 3:
            schedule.step()
    assert flips > 50


@pytest.mark.parametrize("dtype", DTYPES)
def test_bop_with_zero_threshold_equals_filter_with_gamma_one(dtype):
    bop_params = make_binary("cpu", dtype, seed=5)
    filter_params = [torch.nn.Parameter(p.detach().clone()) for p in bop_params]
    rate = 0.05
    bop = Bop(bop_params, gamma=rate, threshold=0.0)
    filt = GradientFilter(filter_params, alpha=rate, gamma=1.0)
    schedules = [RateSchedule(o, lambda e: 1 - e / 10) for o in (bop, filt)]
    gen = torch.Generator().manual_seed(6)
    changed = 0
    for step in range(30):
        before = [p.detach().clone() for p in bop_params]
        for pb, pf, g in zip(bop_params, filter_params, random_grads(bop_params, gen, step)):
            pb.grad, pf.grad = g, g.clone()
        bop.step()
        filt.step()
        for pb, pf, b0 in zip(bop_params, filter_params, before):
            assert torch.equal(pb, pf)
            assert torch.equal(bop.state[pb]["m"], filt.state[pf]["x"])
            changed += int((pb != b0).sum())
        if step % 3 == 2:
            for s in schedules:
                s.step()
    assert changed > 50


def _train_steps(opt, params, schedule, gen, steps, start):
    for step in range(start, start + steps):
        for p, g in zip(params, random_grads(params, gen, step)):
            p.grad = g
        opt.step()
        if step % 2 == 1:
            schedule.step()


@pytest.mark.parametrize("kind", ["filter", "bop"])
def test_state_dict_round_trip_resumes_bit_for_bit(kind):
    def build(params):
        if kind == "filter":
            opt = GradientFilter(params, alpha=0.2, gamma=0.3)
        else:
            opt = Bop(params, gamma=0.2, threshold=0.01)
        return opt, RateSchedule(opt, lambda e: 1 - e / 20)

    reference = make_binary("cpu", torch.float32, seed=7)
    ref_opt, ref_sched = build(reference)
    ref_gen = torch.Generator().manual_seed(8)
    _train_steps(ref_opt, reference, ref_sched, ref_gen, 10, 0)

    resumed = make_binary("cpu", torch.float32, seed=7)
    opt, sched = build(resumed)
    gen = torch.Generator().manual_seed(8)
    _train_steps(opt, resumed, sched, gen, 5, 0)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in resumed], "opt": opt.state_dict(), "sched": sched.state_dict(),
                "gen": gen.get_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh = make_binary("cpu", torch.float32, seed=99)  # different values: everything must come from the file
    fresh_opt, fresh_sched = build(fresh)
    with torch.no_grad():
        for p, value in zip(fresh, saved["params"]):
            p.copy_(value)
    fresh_opt.load_state_dict(saved["opt"])
    fresh_sched.load_state_dict(saved["sched"])
    fresh_gen = torch.Generator()
    fresh_gen.set_state(saved["gen"])
    _train_steps(fresh_opt, fresh, fresh_sched, fresh_gen, 5, 5)

    key = type(ref_opt).scheduled
    assert fresh_opt.param_groups[0][key] == ref_opt.param_groups[0][key] != 0.2
    for p, q in zip(fresh, reference):
        assert torch.equal(p, q)
        for key in ref_opt.state[q]:
            assert torch.equal(fresh_opt.state[p][key], ref_opt.state[q][key])


def test_initial_state_is_used_and_validated():
    params = [torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))]
    m0 = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    x0 = torch.tensor([-3.0, 3.0, 0.0], dtype=torch.float64)
    opt = GradientFilter(params, alpha=0.5, gamma=0.5, initial_state=[(m0, x0)])
    assert torch.equal(opt.state[params[0]]["m"], m0) and torch.equal(opt.state[params[0]]["x"], x0)
    params[0].grad = torch.zeros(3, dtype=torch.float64)
    opt.step()
    b, m, x = transcribed_filter(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64), m0, x0,
                                 params[0].grad, 0.5, 0.5)
    assert torch.equal(params[0], b) and torch.equal(opt.state[params[0]]["x"], x)
    with pytest.raises(ValueError, match="initial_state"):
        GradientFilter([torch.nn.Parameter(torch.ones(3))], alpha=0.5, gamma=0.5, initial_state=[])
    with pytest.raises(ValueError, match=r"initial_state\[0\]: expected \('m', 'x'\) of shape \(3,\)"):
        GradientFilter([torch.nn.Parameter(torch.ones(3))], 0.5, 0.5, initial_state=[(torch.ones(3), torch.ones(2))])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan, math.inf, "0.1"])
def test_bad_rates_name_the_argument(bad):
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match=r"alpha: expected a float(?: in \(0, 1\])?"):
        GradientFilter(p, alpha=bad, gamma=0.5)
    with pytest.raises(ValueError, match=r"gamma: expected a float(?: in \(0, 1\])?"):
        GradientFilter(p, alpha=0.5, gamma=bad)
    with pytest.raises(ValueError, match=r"gamma: expected a float(?: in \(0, 1\])?"):
        Bop(p, gamma=bad)


@pytest.mark.parametrize("bad", [-1e-8, -1.0, math.nan, math.inf])
def test_bad_threshold_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"threshold: expected a finite float >= 0"):
        Bop([torch.nn.Parameter(torch.ones(2))], gamma=0.5, threshold=bad)


def test_bad_param_groups_and_options():
    ones = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match=r"alpha: expected a float in \(0, 1\], got 2"):
        GradientFilter([{"params": ones, "alpha": 2}], alpha=0.5, gamma=0.5)
    with pytest.raises(ValueError, match=r"param group: unknown key 'lr' for GradientFilter \(allowed: params, "
                                         r"alpha, gamma\)"):
        GradientFilter([{"params": ones, "lr": 0.1}], alpha=0.5, gamma=0.5)
    with pytest.raises(ValueError, match=r"param group: unknown key 'alpha' for Bop"):
        Bop([{"params": ones, "alpha": 0.1}])
    with pytest.raises(ValueError, match="params: Bop trains floating-point weights"):
        Bop([torch.ones(2, dtype=torch.int64)], gamma=0.5)
    opt = GradientFilter(ones, alpha=0.5, gamma=0.5)
    with pytest.raises(ValueError, match="unknown key 'momentum'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "momentum": 0.9})
    assert len(opt.param_groups) == 1, "a refused group must not stay behind"


def test_construction_changes_no_parameter_and_refuses_real_values():
    layer = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in layer.parameters()]
    for build in (lambda ps: GradientFilter(ps, alpha=0.1, gamma=0.1), Bop, Frozen):
        with pytest.raises(ValueError, match=r"holding exactly -1 or \+1; tensor 0 of group 0 does not "
                                             r"\(bnn.binarize.binarize_ sets weights to their sign\)"):
            build(layer.parameters())
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before))
    signs = [torch.nn.Parameter(torch.tensor([1.0, -1.0, -1.0]))]
    kept = signs[0].detach().clone()
    GradientFilter(signs, alpha=0.1, gamma=0.1)
    assert torch.equal(signs[0], kept)


def test_group_alpha_and_gamma_take_effect():
    """Two groups at their own rates: each follows the transcription at its rates, not the defaults."""
    first = make_binary("cpu", torch.float64, seed=12)[:2]
    second = make_binary("cpu", torch.float64, seed=13)[2:]
    groups = [{"params": first, "alpha": 0.5}, {"params": second, "gamma": 0.9}]
    opt = GradientFilter(groups, alpha=0.01, gamma=0.1)
    assert [(g["alpha"], g["gamma"]) for g in opt.param_groups] == [(0.5, 0.1), (0.01, 0.9)]
    rates = [(0.5, 0.1)] * len(first) + [(0.01, 0.9)] * len(second)
    params = first + second
    bs = [p.detach().clone() for p in params]
    ms, xs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(14)
    flips = 0
    for step in range(8):
        grads = random_grads(params, gen, step)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for i, (g, (alpha, gamma)) in enumerate(zip(grads, rates)):
            new_b, ms[i], xs[i] = transcribed_filter(bs[i], ms[i], xs[i], g, alpha, gamma)
            flips += int((new_b != bs[i]).sum())
            bs[i] = new_b
            assert torch.equal(params[i], bs[i]) and torch.equal(opt.state[params[i]]["x"], xs[i])
    assert flips > 20


def test_bop_defaults_are_larqs():
    opt = Bop([torch.nn.Parameter(torch.ones(2))])
    assert opt.defaults == {"gamma": 1e-4, "threshold": 1e-8}


def test_rate_schedule_equals_lambda_lr_and_resumes():
    """On torch's own lr, RateSchedule gives LambdaLR's values bit for bit; on the filter it drives alpha."""
    factor = lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / 7))  # noqa: E731
    ours = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1234567)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1234567)
    schedule, reference = RateSchedule(ours, factor), torch.optim.lr_scheduler.LambdaLR(theirs, factor)
    for _ in range(7):
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
        ours.step()
        theirs.step()
        schedule.step()
        reference.step()
    filt = GradientFilter([torch.nn.Parameter(torch.ones(2))], alpha=0.3, gamma=0.5)
    alpha_schedule = RateSchedule(filt, factor)
    for _ in range(3):
        alpha_schedule.step()
    assert filt.param_groups[0]["alpha"] == 0.3 * factor(3) and filt.param_groups[0]["gamma"] == 0.5
    again = GradientFilter([torch.nn.Parameter(torch.ones(2))], alpha=0.3, gamma=0.5)
    resumed = RateSchedule(again, factor)
    resumed.load_state_dict(alpha_schedule.state_dict())
    assert again.param_groups[0]["alpha"] == filt.param_groups[0]["alpha"] and resumed.epoch == 3
    with pytest.raises(ValueError, match="has no rate to schedule"):
        RateSchedule(Frozen([torch.nn.Parameter(torch.ones(2))]), factor)


def test_factory_builds_each_optimizer_from_config():
    def params():
        return [torch.nn.Parameter(torch.randn(4, 4))]

    sgd = build_binary_optimizer(BinaryOptConfig(name="sgd", lr=0.2, momentum=0.9, weight_decay=1e-4), params())
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.2, 0.9, 1e-4)
    adam = build_binary_optimizer(BinaryOptConfig(name="adam", lr=1e-3, beta1=0.8, weight_decay=1e-5), params())
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.999)
    adamw = build_binary_optimizer(BinaryOptConfig(name="adam", decay_mode="decoupled", weight_decay=1e-2), params())
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 1e-2
    signs = [torch.nn.Parameter(torch.ones(4, 4))]
    bop = build_binary_optimizer(BinaryOptConfig(name="bop", gamma=1e-3, threshold=1e-6), signs)
    assert type(bop) is Bop and bop.defaults == {"gamma": 1e-3, "threshold": 1e-6}
    filt = build_binary_optimizer(BinaryOptConfig(name="filter", alpha=1e-3, gamma=0.1), signs)
    assert type(filt) is GradientFilter and filt.defaults == {"alpha": 1e-3, "gamma": 0.1}
    with pytest.raises(ValueError, match="binary_opt.alpha: is null"):
        build_binary_optimizer(BinaryOptConfig(name="filter"), params())
    real = build_real_optimizer(RealOptConfig(name="sgd", lr=0.05, momentum=0.5), params())
    assert type(real) is torch.optim.SGD and real.defaults["momentum"] == 0.5
    assert type(build_real_optimizer(RealOptConfig(), params())) is torch.optim.Adam
    assert [weight_mode_for(n) for n in ("sgd", "adam", "bop", "filter")] == ["latent", "latent", "binary", "binary"]
    with pytest.raises(ValueError, match="binary_opt.name: expected one of"):
        weight_mode_for("lamb")


@pytest.mark.parametrize("build, reference", [
    (lambda ps: build_binary_optimizer(BinaryOptConfig(name="adam", lr=1e-2, weight_decay=1e-3), ps),
     lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3, foreach=False)),
    (lambda ps: build_binary_optimizer(BinaryOptConfig(name="adam", lr=1e-2, decay_mode="decoupled",
                                                       weight_decay=1e-2), ps),
     lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2, foreach=False)),
    (lambda ps: build_binary_optimizer(BinaryOptConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4), ps),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False)),
    (lambda ps: build_real_optimizer(RealOptConfig(name="adam", lr=1e-2, weight_decay=1e-4), ps),
     lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-4, foreach=False)),
    (lambda ps: build_real_optimizer(RealOptConfig(name="sgd", lr=0.1, momentum=0.5), ps),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, foreach=False)),
], ids=["adam", "adamw", "sgd", "real-adam", "real-sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factory_optimizers_equal_torch_per_tensor_loop_bit_for_bit(build, reference, dtype):
    """The factory uses multi-tensor updates for speed; they must not change a single bit of the trajectory."""
    shapes = [(7, 5), (3,), (2, 3, 3, 3)]
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    fast = [torch.nn.Parameter(t.clone()) for t in start]
    slow = [torch.nn.Parameter(t.clone()) for t in start]
    opt_fast, opt_slow = build(fast), reference(slow)
    for _ in range(40):
        grads = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
        for params, opt in ((fast, opt_fast), (slow, opt_slow)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_results_do_not_depend_on_thread_count():
    """Fused multiply-adds would make the last bit depend on how the work is split; ours must not."""
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(11)
        params = [torch.nn.Parameter(torch.randn(300_001, generator=gen)), torch.nn.Parameter(torch.randn(70_000))]
        binarize_(params)
        opt = GradientFilter(params, alpha=0.37, gamma=0.61)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        results.append([t.clone() for p in params for t in (p, opt.state[p]["m"], opt.state[p]["x"])])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


# --- benchmarks.blocked_filter: what bench_filter times against GradientFilter computes the same bits ---
@pytest.mark.parametrize(("block_elements", "threads", "workers"),
                         [(None, 1, True), (97, 1, True), (97, 2, True), (97, 2, False), (4099, 2, True)])
def test_blocked_filter_equals_the_plain_one(block_elements, threads, workers):
    from benchmarks.blocked_filter import BlockedGradientFilter

    torch.set_num_threads(threads)
    plain_params = make_binary("cpu", torch.float32, seed=15)
    blocked_params = make_binary("cpu", torch.float32, seed=15)
    plain = GradientFilter(plain_params, alpha=0.3, gamma=0.2)
    blocked = BlockedGradientFilter(blocked_params, alpha=0.3, gamma=0.2, block_elements=block_elements,
                                    workers=workers)
    gen = torch.Generator().manual_seed(16)
    for step in range(12):
        for p, q, g in zip(plain_params, blocked_params, random_grads(plain_params, gen, step)):
            p.grad, q.grad = g, g.clone()
        plain.step()
        blocked.step()
    for p, q in zip(plain_params, blocked_params):
        assert torch.equal(p, q)
        assert all(torch.equal(plain.state[p][k], blocked.state[q][k]) for k in ("m", "x"))


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1e-300])
@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_rule_on_special_values(threshold, dtype):
    """The benchmarks' arithmetic flip equals the comparison on zeros of both signs, subnormals, the threshold
    itself, infinities and NaN (no flip), for both signs of b."""
    from benchmarks.blocked_filter import flip_where_exceeds_

    tiny = torch.finfo(dtype).tiny
    values = [0.0, -0.0, tiny / 4, -tiny / 4, tiny, 0.5, -0.5, 0.5000001, -0.5000001, 1e-300, 2e-300, 3.0, -3.0,
              math.inf, -math.inf, math.nan]
    drive = torch.tensor(values * 2, dtype=dtype)
    b = torch.tensor([1.0] * len(values) + [-1.0] * len(values), dtype=dtype)
    expected = torch.where(drive * b > threshold, -b, b)
    flip_where_exceeds_([b], [drive], threshold)
    assert torch.equal(b, expected)

"""GradientFilter.step on a parameter set shaped like ReActNet-A's binary weights (28.25M), against the
official code's way (a per-tensor EMA loop, one torch.cat of all weights, a boolean-mask flip per tensor)
and against benchmarks.blocked_filter (cache blocks on worker threads, an arithmetic flip).

Reports the speedups, checks that every variant's results are identical, and puts the achieved memory
traffic (the bytes one step must move: read g, m, x, b and write m, x, b) beside what a plain tensor copy
reaches on this machine. Run alone: python -m benchmarks.bench_filter
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.blocked_filter import BLOCK_BYTES, BlockedGradientFilter
from bnn.optim import GradientFilter

ALPHA, GAMMA = 1e-3, 0.1
REPEATS = 5
BYTES_MOVED_PER_ELEMENT = 7  # tensors read (g, m, x, b) + written (m, x, b), each once per step


def reactnet_a_binary_shapes() -> list[tuple[int, ...]]:
    """Binary conv weights of ReActNet-A: per block a 3x3 conv and a 1x1 conv (two 1x1 where channels double)."""
    channels = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
    shapes: list[tuple[int, ...]] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        shapes.append((c_in, c_in, 3, 3))
        shapes += [(c_out, c_in, 1, 1)] if c_in == c_out else [(c_in, c_in, 1, 1)] * 2
    return shapes


def official_step(params: list[Tensor], grads: list[Tensor], ms: list[Tensor], xs: list[Tensor],
                  fused: bool) -> None:
    """The official cema_optimizer structure. fused=True is its exact arithmetic (add_ with alpha=, a fused
    multiply-add on CPU); fused=False rounds like the equations as written, the reference for identity."""
    for g, m, x in zip(grads, ms, xs):
        if fused:
            m.mul_(1 - GAMMA).add_(g, alpha=GAMMA)
            x.mul_(1 - ALPHA).add_(m, alpha=ALPHA)
        else:
            m.mul_(1 - GAMMA).add_(g * GAMMA)
            x.mul_(1 - ALPHA).add_(m * ALPHA)
    inertia = torch.cat([x.view(-1) for x in xs])
    b = torch.cat([p.view(-1) for p in params])
    flip_mask = inertia.mul(b) > 0
    offset = 0
    for p in params:
        n = p.numel()
        p[flip_mask[offset : offset + n].reshape_as(p)] *= -1
        offset += n


def per_tensor_step(params: list[Tensor], grads: list[Tensor], ms: list[Tensor], xs: list[Tensor]) -> None:
    """A plain per-tensor loop without the concatenation."""
    for p, g, m, x in zip(params, grads, ms, xs):
        m.mul_(1 - GAMMA).add_(g * GAMMA)
        x.mul_(1 - ALPHA).add_(m * ALPHA)
        p.copy_(torch.where(x * p > 0, -p, p))


class Setup:
    """One copy of the weights and filter state, all starting from the same values."""

    def __init__(self, start: list[Tensor]) -> None:
        self.params = [torch.nn.Parameter(w.clone()) for w in start]
        self.ms = [torch.zeros_like(w) for w in start]
        self.xs = [torch.zeros_like(w) for w in start]

    def tensors(self) -> list[Tensor]:
        return [t for group in (self.params, self.ms, self.xs) for t in group]


def median_seconds(fns: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Round-robin timing (one call of each per round) so that load from other processes hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up: first-touch page faults, allocator
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


MLP_SHAPES = [(128, 784), (128, 128)]  # the cpu preset's binary weights (116,736), as a trial holds them


def trial_sized_step_us(repeats: int = 300) -> dict[str, float]:
    """GradientFilter.step against the blocked step on the cpu preset MLP's binary weights, on one thread as a
    trial runs: 20th percentile of interleaved steps, process CPU microseconds."""
    gen = torch.Generator().manual_seed(2)

    def weights() -> list[torch.nn.Parameter]:
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).sign_()) for s in MLP_SHAPES]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        return params

    steps = {"GradientFilter.step": GradientFilter(weights(), alpha=ALPHA, gamma=GAMMA).step,
             "blocked": BlockedGradientFilter(weights(), alpha=ALPHA, gamma=GAMMA).step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(repeats):
            for name, step in steps.items():
                start = time.process_time()
                step()
                times[name].append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: sorted(t)[len(t) // 5] * 1e6 for name, t in times.items()}


def run(out_dir: Path, device: str = "cpu", repeats: int = REPEATS) -> dict:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    shapes = reactnet_a_binary_shapes()
    start = [torch.randn(s, generator=gen).sign_().to(dev) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dev) for s in shapes]
    numel = sum(w.numel() for w in start)

    # Identity: three steps from the same state with the same gradients, then every buffer compared.
    reference, fused = Setup(start), Setup(start)
    ours = {name: Setup(start) for name in ("plain", "blocked", "blocked_openmp")}
    optimizers = {
        "plain": GradientFilter(ours["plain"].params, alpha=ALPHA, gamma=GAMMA),
        "blocked": BlockedGradientFilter(ours["blocked"].params, alpha=ALPHA, gamma=GAMMA),
        "blocked_openmp": BlockedGradientFilter(ours["blocked_openmp"].params, alpha=ALPHA, gamma=GAMMA,
                                                workers=False),
    }
    for name, opt in optimizers.items():
        for p, g in zip(ours[name].params, grads):
            p.grad = g
    with torch.no_grad():
        for _ in range(3):
            official_step(reference.params, grads, reference.ms, reference.xs, fused=False)
            official_step(fused.params, grads, fused.ms, fused.xs, fused=True)
            for opt in optimizers.values():
                opt.step()
    for name, opt in optimizers.items():
        ours[name].ms = [opt.state[p]["m"] for p in ours[name].params]
        ours[name].xs = [opt.state[p]["x"] for p in ours[name].params]
    identical = {name: all(torch.equal(a, b) for a, b in zip(reference.tensors(), setup.tensors()))
                 for name, setup in ours.items()}
    plain = ours["plain"]
    fused_sign_mismatches = sum(int((a != b).sum()) for a, b in zip(fused.params, plain.params))
    fused_state_mismatches = sum(int((a != b).sum()) for a, b in zip(fused.ms + fused.xs, plain.ms + plain.xs))

    loop = Setup(start)
    src, dst = torch.randn(numel, generator=gen).to(dev), torch.empty(numel, device=dev)
    blocked = optimizers["blocked"]
    timings = {
        "official code (fused EMA)": lambda: official_step(fused.params, grads, fused.ms, fused.xs, True),
        "official structure, unfused EMA": lambda: official_step(
            reference.params, grads, reference.ms, reference.xs, False),
        "per-tensor loop, no concatenation": lambda: per_tensor_step(loop.params, grads, loop.ms, loop.xs),
        "GradientFilter.step": optimizers["plain"].step,
        "blocked: cache blocks on worker threads": blocked.step,
        "blocked, OpenMP threads in each block op": optimizers["blocked_openmp"].step,
        "plain copy of one tensor": lambda: dst.copy_(src),
    }
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] + ([1] if dev.type == "cpu" and default_threads > 1 else [])
    bytes_per_step = BYTES_MOVED_PER_ELEMENT * numel * start[0].element_size()
    by_threads = {}
    block_sweep = {}
    try:
        with torch.no_grad():
            for threads in thread_counts:
                torch.set_num_threads(threads)
                seconds = median_seconds(timings, repeats, sync)
                by_threads[threads] = summarize(seconds, bytes_per_step, 2 * numel * src.element_size())
            torch.set_num_threads(default_threads)
            if dev.type == "cpu":
                for elements in (1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21):
                    blocked.block_elements = elements
                    step_s = median_seconds({"step": blocked.step}, max(3, repeats // 2), sync)["step"]
                    block_sweep[str(elements)] = step_s * 1e3
                blocked.block_elements = None
    finally:
        torch.set_num_threads(default_threads)

    result = {
        "device": str(dev),
        "dtype": "float32",
        "tensors": len(shapes),
        "params": numel,
        "repeats": repeats,
        "load_average_1min": os.getloadavg()[0],
        "block_elements": BLOCK_BYTES // start[0].element_size(),
        "threads": default_threads,
        **by_threads[default_threads],
        "by_threads": by_threads,
        "identical_to_unfused_reference": all(identical.values()),
        "identical_by_variant": identical,
        "official_fused_sign_mismatches_after_3_steps": fused_sign_mismatches,
        "official_fused_state_mismatches_after_3_steps": fused_state_mismatches,
        "bytes_per_step": bytes_per_step,
        "block_sweep_ms": block_sweep,
        "trial_sized_step_us": trial_sized_step_us() if dev.type == "cpu" else {},
        "goals": {"speedup_vs_official": 4.0, "fraction_of_copy_bandwidth": 0.5},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "filter.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "filter.md").write_text(markdown(result))
    return result


def summarize(seconds: dict[str, float], bytes_per_step: int, copy_bytes: int) -> dict:
    ours = seconds["GradientFilter.step"]
    blocked = seconds["blocked: cache blocks on worker threads"]
    official = seconds["official code (fused EMA)"]
    copy_gbps = copy_bytes / seconds["plain copy of one tensor"] / 1e9
    return {
        "ms": {name: s * 1e3 for name, s in seconds.items()},
        "speedup_vs_official": official / ours,
        "speedup_vs_official_unfused": seconds["official structure, unfused EMA"] / ours,
        "speedup_vs_per_tensor_loop": seconds["per-tensor loop, no concatenation"] / ours,
        "blocked_speedup_vs_official": official / blocked,
        "blocked_vs_plain": ours / blocked,
        "workers_vs_openmp_in_each_op": seconds["blocked, OpenMP threads in each block op"] / blocked,
        "achieved_gbps": bytes_per_step / ours / 1e9,
        "blocked_gbps": bytes_per_step / blocked / 1e9,
        "copy_gbps": copy_gbps,
        "fraction_of_copy_bandwidth": bytes_per_step / ours / 1e9 / copy_gbps,
        "blocked_fraction_of_copy_bandwidth": bytes_per_step / blocked / 1e9 / copy_gbps,
    }


def markdown(r: dict) -> str:
    lines = [
        f"## GradientFilter.step: {r['params'] / 1e6:.2f}M params in {r['tensors']} ReActNet-A-shaped tensors "
        f"({r['dtype']}, {r['device']}, median of {r['repeats']}, 1-min load average {r['load_average_1min']:.1f})",
        "",
    ]
    for threads, t in r["by_threads"].items():
        ours = t["ms"]["GradientFilter.step"]
        lines += [f"{threads} thread(s):", "", "| implementation | ms / step | vs GradientFilter.step |"]
        lines.append("|---|---:|---:|")
        for name, ms in t["ms"].items():
            if name != "plain copy of one tensor":
                lines.append(f"| {name} | {ms:.1f} | {ms / ours:.2f}x |")
        lines += [
            "",
            f"- memory traffic: {r['bytes_per_step'] / 1e6:.0f} MB per step (read g, m, x, b; write m, x, b): "
            f"GradientFilter.step {t['achieved_gbps']:.1f} GB/s, blocked {t['blocked_gbps']:.1f} GB/s; a plain "
            f"tensor copy reaches {t['copy_gbps']:.1f} GB/s (read + write): "
            f"{100 * t['fraction_of_copy_bandwidth']:.0f}% and {100 * t['blocked_fraction_of_copy_bandwidth']:.0f}% "
            "(goal 50%)",
            f"- speedup over the official code: GradientFilter.step {t['speedup_vs_official']:.1f}x, blocked "
            f"{t['blocked_speedup_vs_official']:.1f}x (goal 4x); blocked vs GradientFilter.step "
            f"{t['blocked_vs_plain']:.2f}x",
            f"- worker threads for the blocks: {t['workers_vs_openmp_in_each_op']:.2f}x the blocked step with "
            "OpenMP threads in each block op",
            "",
        ]
    variants = ", ".join(f"{name} {same}" for name, same in r["identical_by_variant"].items())
    lines.append(
        f"- identical to the unfused reference (b, m, x bit for bit after 3 steps): {variants}"
        f"; the official fused arithmetic differs in {r['official_fused_state_mismatches_after_3_steps']} state "
        f"values (last bit) and {r['official_fused_sign_mismatches_after_3_steps']} signs"
    )
    if r["block_sweep_ms"]:
        sweep = ", ".join(f"{int(k) // 1024}K: {v:.0f} ms" for k, v in r["block_sweep_ms"].items())
        lines.append(f"- blocked: cache block, elements per operand (default {r['block_elements'] // 1024}K), "
                     f"{r['threads']} threads: {sweep}")
    if r["trial_sized_step_us"]:
        t = r["trial_sized_step_us"]
        lines.append(f"- at a trial's size (the cpu preset MLP's 116,736 binary weights, 1 thread, 20th percentile "
                     f"of process CPU time): GradientFilter.step {t['GradientFilter.step']:.0f} us, blocked "
                     f"{t['blocked']:.0f} us per step")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    summary = run(Path("results/bench"))
    print((Path("results/bench") / "filter.md").read_text())

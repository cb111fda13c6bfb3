"""One prepared GPU check (issue 10), about 8 minutes at most on one GPU; ``--cpu`` runs the same four parts at
small sizes so the test suite can check it. Writes a markdown report (default results/bench/gpu.md).

(a) E1 on the device: latent SGD (momentum, weight decay, non-zero init) against the gradient filter with alpha /
    gamma mapped by bnn.mapping and the matching initial state (filter_state_from_latent), both with
    ``deterministic``; sign mismatches after each of 3 epochs of the smoke model (digits MLP).
(b) ResNet-20 on CIFAR-10-shaped generated data: training steps/s with the on-device loader against a torch
    DataLoader (benchmarks.bench_train.time_cifar_loaders), and the on-device path with ``deterministic``.
(c) GradientFilter.step on ReActNet-A-shaped binary weights (28.3M; --cpu: channels / 8) against the official
    optimizer step as benchmarks.bench_filter transcribes it; sign mismatches against the unfused reference.
(d) A 4-trial smoke grid (e1) through ``wmhp ablate --gpus-per-trial 0.25`` on the local GPU (--cpu: 0).

Run: benchmarks/gpu_check.sh [--cpu] [--out PATH]   (the shell wrapper sets CUBLAS_WORKSPACE_CONFIG first).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bnn.config import from_flat, resolve
from bnn.layers import binary_layers
from bnn.mapping import filter_state_from_latent, latent_to_filter
from bnn.optim import GradientFilter
from bnn.schedules import RateSchedule, multiplier
from bnn.train import Run, configure_determinism

DEFAULT_OUT = Path("results/bench/gpu.md")
E1_SETTING = {"binary_opt.lr": 0.1, "binary_opt.weight_decay": 5.0e-4, "binary_opt.momentum": 0.9}


def e1_on_device(device: str, epochs: int = 3) -> dict[str, Any]:
    """Latent SGD and the mapped filter from the same non-zero latent init: sign mismatches per epoch."""
    base = {"data.name": "digits", "model.name": "mlp", "model.hidden": [64, 64], "batch_size": 64,
            "epochs": epochs, "dtype": "float64", "schedule.name": "constant", "init.scale": 1e-3,
            "deterministic": True, "device": device, **E1_SETTING}  # fmt: skip
    sgd = Run(resolve(from_flat({**base, "binary_opt.name": "sgd"})))
    filt = Run(resolve(from_flat({**base, "binary_opt.name": "filter"})))
    lr, wd, momentum = (E1_SETTING[k] for k in ("binary_opt.lr", "binary_opt.weight_decay", "binary_opt.momentum"))
    alpha, gamma = latent_to_filter(lr, wd, momentum)
    # Same seed, same init stream: the filter's weights are sign(w0) of the latent run's w0.
    start = [filter_state_from_latent(w, lr, wd, momentum) for w in sgd.binary_weights]
    filt.binary_opt = GradientFilter(filt.binary_weights, alpha=alpha, gamma=gamma, initial_state=start)
    schedule = multiplier(filt.config.schedule, filt.config.epochs)
    filt.schedulers = [RateSchedule(o, schedule) for o in (filt.binary_opt, filt.real_opt) if o]
    rows = []
    start_s = time.perf_counter()
    for _ in range(epochs):
        a, b = sgd.run_epoch(), filt.run_epoch()
        mismatches = sum(int((torch.where(w >= 0, 1.0, -1.0) != f).sum())
                         for w, f in zip(sgd.binary_weights, filt.binary_weights))  # fmt: skip
        rows.append({"epoch": int(a["epoch"]), "sign_mismatches": mismatches, "flip_ratio": a["flip_ratio"],
                     "test_acc_sgd": a["test_acc"], "test_acc_filter": b["test_acc"]})  # fmt: skip
    configure_determinism(False, sgd.device)  # process-wide: (b) times the default kernels first
    weights = sum(w.numel() for w in sgd.binary_weights)
    return {"device": str(sgd.device), "alpha": alpha, "gamma": gamma, "weights": weights, "epochs": rows,
            "seconds": time.perf_counter() - start_s}  # fmt: skip


def loaders(device: torch.device, small: bool) -> dict[str, Any]:
    """ResNet-20 training steps/s: on-device loader vs DataLoader, and on-device with deterministic kernels."""
    from benchmarks.bench_train import time_cifar_loaders

    n, batch, workers = (64, 32, 0) if small else (20_000, 128, 8)
    steps = n // batch
    result: dict[str, Any] = {"n": n, "batch_size": batch, "num_workers": workers}
    timed = time_cifar_loaders(device, n=n, batch_size=batch, epochs=2, num_workers=workers)
    result["on_device_steps_s"] = steps / timed["on_device_train_epoch_s"]
    result["dataloader_steps_s"] = steps / timed["dataloader_train_epoch_s"]
    result["on_device_deterministic_steps_s"] = float("nan")
    if device.type != "cuda":
        return result  # deterministic is a no-op on the CPU: nothing to measure
    configure_determinism(True, device)
    try:
        again = time_cifar_loaders(device, n=n, batch_size=batch, epochs=2, num_workers=workers)
    finally:
        configure_determinism(False, device)
    result["on_device_deterministic_steps_s"] = steps / again["on_device_train_epoch_s"]
    return result


def filter_step(device: torch.device, small: bool, repeats: int) -> dict[str, Any]:
    """GradientFilter.step vs the official optimizer step (bench_filter's transcription), and identity."""
    from benchmarks import bench_filter as bf

    shrink = 8 if small else 1
    shapes = [(o // shrink, i // shrink, *k) for o, i, *k in bf.reactnet_a_binary_shapes()]
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen).sign_().to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    reference, official, ours = bf.Setup(start), bf.Setup(start), bf.Setup(start)
    opt = GradientFilter(ours.params, alpha=bf.ALPHA, gamma=bf.GAMMA)
    for p, g in zip(ours.params, grads):
        p.grad = g
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            bf.official_step(reference.params, grads, reference.ms, reference.xs, fused=False)
            opt.step()
        mismatches = sum(int((a != b).sum()) for a, b in zip(reference.params, ours.params))
        numel = sum(w.numel() for w in start)
        src, dst = torch.randn(numel, generator=gen).to(device), torch.empty(numel, device=device)
        seconds = bf.median_seconds({
            "official": lambda: bf.official_step(official.params, grads, official.ms, official.xs, True),
            "filter": opt.step,
            "copy": lambda: dst.copy_(src),
        }, repeats, sync)  # fmt: skip
    step_gbps = bf.BYTES_MOVED_PER_ELEMENT * numel * src.element_size() / seconds["filter"] / 1e9
    copy_gbps = 2 * numel * src.element_size() / seconds["copy"] / 1e9
    return {"params": numel, "official_ms": seconds["official"] * 1e3,
            "filter_ms": seconds["filter"] * 1e3, "speedup": seconds["official"] / seconds["filter"],
            "step_gbps": step_gbps, "copy_gbps": copy_gbps,
            "sign_mismatches_vs_unfused_reference": mismatches}  # fmt: skip


def smoke_grid(gpus_per_trial: float, scratch: Path, small: bool) -> dict[str, Any]:
    """``wmhp ablate e1 --preset smoke`` (4 trials) in a subprocess, as a user would run it (--cpu: 1 epoch)."""
    missing = [name for name in ("ray", "mlflow") if importlib.util.find_spec(name) is None]
    command = [sys.executable, "-m", "wmhp.cli", "ablate", "e1", "--preset", "smoke", "--results-dir",
               str(scratch / "ablate"), "--gpus-per-trial", str(gpus_per_trial)]  # fmt: skip
    if small:
        command += ["--set", "epochs=1"]
    if missing:  # a bare GPU image may hold torch alone; parts (a)-(c) still say what they measure
        return {"command": " ".join(["wmhp", *command[3:]]), "skipped": f"{' and '.join(missing)} not installed"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"command": " ".join(["wmhp", *command[3:]]), "rc": done.returncode, "seconds": time.perf_counter() - started,
            "ok": done.returncode == 0 and any("wmhp ablate: ok" in line for line in lines),
            "tail": [line for line in lines if line.lstrip().startswith(("wmhp ablate", "e1_equivalence"))][-4:]}


def markdown(r: dict[str, Any]) -> str:
    a, b, c, d = r["e1"], r["loaders"], r["filter"], r["grid"]
    lines = [
        f"# GPU check ({r['mode']}): {r['device_name']}",
        "",
        f"torch {torch.__version__}, CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG', 'unset')}, "
        f"total {r['seconds']:.0f} s",
        "",
        f"## (a) E1 on {a['device']}: latent SGD vs the mapped filter (alpha {a['alpha']:.6g}, gamma "
        f"{a['gamma']:.6g}), same non-zero init, {a['weights']} binary weights, deterministic",
        "",
        "| epoch | sign mismatches | flip ratio | test acc SGD | test acc filter |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {e['epoch']} | {e['sign_mismatches']} | {e['flip_ratio']:.4g} | {e['test_acc_sgd']:.4f} | "
          f"{e['test_acc_filter']:.4f} |" for e in a["epochs"]),
        "",
        f"total sign mismatches: {sum(e['sign_mismatches'] for e in a['epochs'])}",
        "",
        f"## (b) ResNet-20, CIFAR-10-shaped generated data (n {b['n']}, batch {b['batch_size']}, "
        f"{b['num_workers']} DataLoader workers): training steps/s",
        "",
        "| loader | steps/s |",
        "|---|---:|",
        f"| on-device | {b['on_device_steps_s']:.2f} |",
        f"| torch DataLoader | {b['dataloader_steps_s']:.2f} |",
        f"| on-device, deterministic | {b['on_device_deterministic_steps_s']:.2f} |"
        if b["on_device_deterministic_steps_s"] == b["on_device_deterministic_steps_s"]
        else "| on-device, deterministic | n/a (a no-op on the CPU) |",
        "",
        f"## (c) filter step, {c['params'] / 1e6:.2f}M ReActNet-A-shaped binary weights",
        "",
        f"official step {c['official_ms']:.2f} ms, GradientFilter.step {c['filter_ms']:.2f} ms: "
        f"speedup {c['speedup']:.2f}x; sign mismatches vs the unfused reference after 3 steps: "
        f"{c['sign_mismatches_vs_unfused_reference']}",
        "",
        f"memory traffic of the filter step (read g, m, x, b; write m, x, b): {c['step_gbps']:.0f} GB/s; a plain "
        f"copy (read + write) reaches {c['copy_gbps']:.0f} GB/s: {100 * c['step_gbps'] / c['copy_gbps']:.0f}%",
        "",
        f"## (d) 4-trial smoke grid: `{d['command']}`",
        "",
    ]
    if "skipped" in d:
        lines.append(f"not run on this machine: {d['skipped']}")
    else:
        lines += [f"{'ok' if d['ok'] else 'FAILED'} (rc {d['rc']}) in {d['seconds']:.1f} s", "", "```", *d["tail"],
                  "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run all four parts on the CPU at small sizes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report path (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --cpu for the small CPU run", file=sys.stderr)
        return 1
    started = time.perf_counter()
    device = torch.device("cpu" if args.cpu else "cuda")
    with tempfile.TemporaryDirectory(prefix="wmhp-gpu-check-") as scratch:
        result = {
            "mode": "--cpu, small sizes" if args.cpu else "GPU",
            "device_name": "CPU" if args.cpu else torch.cuda.get_device_name(0),
            "e1": e1_on_device(device.type),
            "loaders": loaders(device, small=args.cpu),
            "filter": filter_step(device, small=args.cpu, repeats=3 if args.cpu else 10),
            "grid": smoke_grid(0.0 if args.cpu else 0.25, Path(scratch), small=args.cpu),
        }
    result["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(result))
    print(args.out.read_text())
    return 0 if result["grid"].get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())

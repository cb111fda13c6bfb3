"""`make bench`: every benchmark, side by side in one run; figures land in results/bench/.

Usage: python -m benchmarks.run [NAME ...]   (names: filter, train, pipeline, analysis, devices; default all)
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHES = ("filter", "train", "pipeline", "analysis", "devices")


def machine() -> dict[str, object]:
    import os

    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def headlines(summary: dict) -> list[str]:
    """One line per benchmark: its figure beside its goal."""
    lines = ["| benchmark | figure | goal |", "|---|---|---|"]
    if "filter" in summary:
        f = summary["filter"]
        lines.append(f"| filter step, {f['params'] / 1e6:.1f}M weights | GradientFilter.step "
                     f"{f['speedup_vs_official']:.1f}x official ({100 * f['fraction_of_copy_bandwidth']:.0f}% of "
                     f"copy bandwidth), benchmarks.blocked_filter {f['blocked_speedup_vs_official']:.1f}x "
                     f"({100 * f['blocked_fraction_of_copy_bandwidth']:.0f}%), bit-identical: "
                     f"{f['identical_to_unfused_reference']} | >= 4x, >= 50% |")
    if "train" in summary:
        lines.append(f"| training throughput | see train.md | |")
    if "pipeline" in summary:
        for r in summary["pipeline"]["runs"]:
            lines.append(f"| wmhp ablate {r['grid']} ({r['trials']} trials) | {r['ratio']}x a process pool "
                         f"({r['pipeline_s']} s vs {r['pool_s']} s) | <= {r['goal_ratio']}x |")
    if "analysis" in summary:
        a = summary["analysis"]
        lines.append(f"| collect + figures, {a['runs']} runs | {a['total_s']} s | < {a['goal_s']:.0f} s |")
    if "devices" in summary:
        for name, t in summary["devices"]["seconds"].items():
            lines.append(f"| {name} | {t['with']:.2f} with, {t['without']:.2f} without | it saves time |")
    return lines


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; allowed: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    out_dir = Path("results/bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine()}
    for name in names:
        print(f"== bench {name}", flush=True)
        start = time.perf_counter()
        summary[name] = importlib.import_module(f"benchmarks.bench_{name}").run(out_dir)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print("\n".join(headlines(summary)))
    print(f"figures in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

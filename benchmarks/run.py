"""`make bench`: every benchmark, side by side in one run; figures land in results/bench/.

Usage: python -m benchmarks.run [NAME ...]   (names: filter, train, pipeline, analysis; default all)
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHES = ("filter", "train", "pipeline", "analysis")


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
    print(f"figures in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

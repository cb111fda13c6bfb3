"""Shared figure style and output: Agg backend, one caption line, PNG + PDF with reproducible bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

PANEL_W, PANEL_H = 4.6, 3.4
DPI = 150
ANNOTATE_MAX_CELLS = 80  # beyond that (9 x 9) the numbers no longer fit their cells
PNG_COMPRESSION = 4  # zlib level: 6 (the default) spends a third of a figure's time for 10 % smaller files
ACC_LABEL = "test accuracy (%)"
STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "axes.titlesize": 9.5,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "svg.hashsalt": "wmhp",
}
# Latent optimizers solid, filter-family dashed, one colour per optimizer, everywhere.
OPTIMIZER_COLORS = {"sgd": "tab:blue", "adam": "tab:orange", "bop": "tab:green", "filter": "tab:red"}
OPTIMIZER_LABELS = {"sgd": "latent SGD", "adam": "latent Adam", "bop": "Bop", "filter": "gradient filter"}


def figure(ncols: int, nrows: int = 1, title: str = "") -> tuple[Figure, np.ndarray]:
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(PANEL_W * ncols, PANEL_H * nrows + 0.7), squeeze=False, layout="constrained"
        )
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
    for ax in axes.flat:
        _style(ax)
    return fig, axes


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3, which="major")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def save(fig: Figure, out_dir: Path, name: str, caption: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf under out_dir with ``caption`` along the bottom; close the figure."""
    width, height = fig.get_size_inches()
    lines = math.ceil(len(caption) / (width * 15))  # about 15 characters per inch at 7.5 pt
    bottom = (0.08 + 0.14 * lines) / height
    fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))  # (left, bottom, width, height)
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7.5, color="0.3", wrap=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    # No dates or versions in the files: the same results give the same bytes, so committed figures diff cleanly.
    fig.savefig(paths[0], dpi=DPI, metadata={"Software": None}, pil_kwargs={"compress_level": PNG_COMPRESSION})
    fig.set_layout_engine("none")  # keep the layout just computed: the PDF need not solve it again
    fig.savefig(paths[1], metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


def log_axis(ax: Axes, which: str = "x") -> None:
    """Log scale with plain tick labels (1e-4, 0.01, 10): mathtext labels cost most of a figure's drawing time."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(FuncFormatter(lambda value, _: sci(value)))

    def minor(value: float, _: int) -> str:
        # Decades alone can leave a short axis with one label or none: then label 2x and 5x (or every) minor tick.
        low, high = sorted(axis.get_view_interval())
        if value <= 0 or low <= 0:
            return ""
        decades_shown = math.floor(math.log10(high) + 1e-9) - math.ceil(math.log10(low) - 1e-9) + 1
        if decades_shown >= 2:
            return ""
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
        return sci(value) if high / low < 4 or mantissa in (2.0, 5.0) else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def colorbar(fig: Figure, mappable: Any, ax: Axes, label: str) -> Any:
    bar = fig.colorbar(mappable, ax=ax, label=label)
    if bar.ax.get_yscale() == "log":
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: sci(value)))
        bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    return bar


def epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def band(
    ax: Axes, x: Sequence[float], mean: Sequence[float], std: Sequence[float], spread: bool = True, **kwargs: Any
) -> None:
    """A mean line with a +-1 std band over seeds (no band where the std is undefined: one seed, or ``spread``
    False: too many lines for bands to stay readable)."""
    x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
    (line,) = ax.plot(x, mean, **kwargs)
    ok = np.isfinite(std)
    if spread and ok.any():
        ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], color=line.get_color(), alpha=0.18, linewidth=0)


def log_edges(values: Sequence[float]) -> np.ndarray:
    """Cell edges of a log-spaced axis: geometric midpoints, the outer ones mirrored."""
    v = np.log10(np.asarray(sorted(values), dtype=float))
    if len(v) == 1:
        return 10.0 ** np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return 10.0 ** np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


def heatmap(
    ax: Axes, xs: Sequence[float], ys: Sequence[float], grid: np.ndarray, label: str, annotate: bool = True
) -> Any:
    """grid[i, j] at (xs[j], ys[i]) on log-log axes; NaN cells blank; values written in when the grid is small."""
    mesh = ax.pcolormesh(log_edges(xs), log_edges(ys), np.ma.masked_invalid(grid), cmap="viridis", shading="flat")
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.grid(False)
    colorbar = ax.figure.colorbar(mesh, ax=ax)
    colorbar.set_label(label)
    if annotate and grid.size <= ANNOTATE_MAX_CELLS:
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i, y in enumerate(sorted(ys)):
            for j, x in enumerate(sorted(xs)):
                if np.isfinite(grid[i, j]):
                    ax.text(
                        x,
                        y,
                        f"{grid[i, j]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="black" if grid[i, j] > middle else "white",
                    )
    return mesh


def sci(value: float) -> str:
    """Compact number for labels: 5e-04 -> 5e-4, 0.0995 -> 0.0995."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if 1e-2 <= abs(value) < 1e3:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"

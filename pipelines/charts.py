"""Charts for `sluice report`: matplotlib figures on the Agg canvas (no pyplot), inlined as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np

KEPT = "#2b7bba"
REMOVED = "#d9534f"
ACCENT = "#555555"
DPI = 100


def figure(width: float, height: float, ncols: int = 1):
    """A constrained-layout figure of ``ncols`` axes (inches); returns (figure, axes list)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def img(fig, alt: str) -> str:
    """Render ``fig`` with Agg to PNG and return an ``<img>`` tag holding it as a data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version string: same bytes across versions
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    w, h = (round(v * DPI) for v in fig.get_size_inches())
    return f'<img alt="{html.escape(alt)}" width="{w}" height="{h}" src="data:image/png;base64,{data}">'


def _human(axis) -> None:
    """Tick labels like 950, 12k, 3.4M."""
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos: int) -> str:
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.3g}{suffix}"
        return f"{v:.3g}"

    axis.set_major_formatter(FuncFormatter(fmt))


def _short(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def funnel(stages: Sequence[str], docs: Sequence[int], tokens: Sequence[int]) -> str:
    """Documents and tokens left after each stage, as two horizontal bar charts."""
    fig, (a, b) = figure(10, 0.9 + 0.32 * len(stages), 2)
    y = np.arange(len(stages))
    for ax, values, title in ((a, docs, "documents left"), (b, tokens, "tokens (words) left")):
        ax.barh(y, values, color=KEPT)
        ax.set_yticks(y, [_short(s) for s in stages])
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        _human(ax.xaxis)
        ax.grid(axis="x", alpha=0.3)
    b.set_yticklabels([])
    return img(fig, "funnel: documents and tokens left after each stage")


def bars(labels: Sequence[str], counts: Sequence[int], title: str, alt: str, color: str = REMOVED) -> str:
    """A horizontal bar chart, largest first as given."""
    fig, (ax,) = figure(8, 0.9 + 0.28 * len(labels))
    y = np.arange(len(labels))
    ax.barh(y, counts, color=color)
    ax.set_yticks(y, [_short(s, 48) for s in labels])
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return img(fig, alt)


def composition(domains: Sequence[str], before: dict[str, Sequence[int]], after: dict[str, Sequence[int]]) -> str:
    """Per-domain documents and tokens before (read) and after (kept), side by side."""
    fig, axes = figure(10, 3.2, 2)
    x = np.arange(len(domains))
    width = 0.4
    for ax, key in zip(axes, ("documents", "tokens (words)")):
        ax.bar(x - width / 2, before[key], width, label="read", color=ACCENT)
        ax.bar(x + width / 2, after[key], width, label="kept", color=KEPT)
        ax.set_xticks(x, [_short(d, 16) for d in domains], rotation=30 if len(domains) > 6 else 0, ha="right")
        ax.set_title(key, fontsize=10)
        _human(ax.yaxis)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return img(fig, "composition by domain, before and after")


def score_histogram(
    column: str, kept: np.ndarray, removed: np.ndarray, thresholds: Sequence[tuple[str, float]], bins: int = 40
) -> str:
    """Stacked histogram of a score column (kept vs removed rows) with the chosen thresholds as lines.

    A positive, skewed score (perplexity) is binned on a log scale.
    """
    values = np.concatenate([kept, removed])
    fig, (ax,) = figure(8, 3.2)
    lo, hi = float(values.min()), float(values.max())
    log = lo > 0 and hi / lo > 20
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    ax.hist([kept, removed], bins=edges, stacked=True, color=[KEPT, REMOVED], label=["kept", "removed"])
    if log:
        ax.set_xscale("log")
    styles = ("--", ":", "-.", (0, (5, 1)))
    for k, (label, value) in enumerate(thresholds):
        ax.axvline(value, color="black", linestyle=styles[k % len(styles)], linewidth=1.2, label=_short(label, 40))
    ax.set_title(f"{column}: {values.size:,} scored rows", fontsize=10)
    ax.set_xlabel(column)
    ax.set_ylabel("documents")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return img(fig, f"histogram of {column} with thresholds")


def minhash(
    bands: int, rows: int, threshold: float, points: dict[str, float], jaccard: dict[str, int], sizes: dict[str, int]
) -> str:
    """The LSH S-curve P(s) = 1 - (1 - s^r)^b with the manifest's points, candidate Jaccard and cluster sizes."""
    fig, (a, b, c) = figure(12, 3.2, 3)
    s = np.linspace(0, 1, 201)
    a.plot(s, 1.0 - (1.0 - s**rows) ** bands, color=KEPT, label=f"{bands} bands × {rows} rows")
    if points:
        a.plot([float(k) for k in points], list(points.values()), "o", color=ACCENT, markersize=3, label="manifest")
    a.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    a.set_xlabel("Jaccard similarity s")
    a.set_ylabel("P(candidate pair)")
    a.set_title("MinHash LSH S-curve", fontsize=10)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    _labelled_bars(b, jaccard, "candidate pairs by exact Jaccard", ACCENT)
    _labelled_bars(c, sizes, "clusters by size (documents)", REMOVED)
    return img(fig, "MinHash S-curve, candidate Jaccard and cluster sizes")


def cluster_sizes(sizes: dict[str, int], title: str) -> str:
    """Bar chart of cluster (duplicate group) counts by size bin."""
    fig, (ax,) = figure(5, 3)
    _labelled_bars(ax, sizes, title, REMOVED)
    return img(fig, title)


def _labelled_bars(ax, counts: dict[str, int], title: str, color: str) -> None:
    x = np.arange(len(counts))
    ax.bar(x, list(counts.values()), color=color)
    ax.set_xticks(x, list(counts), rotation=45 if len(counts) > 5 else 0, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if not counts:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, ylabel: str) -> str:
    """One line per named (x, y) series (e.g. eval loss over steps per ablation variant)."""
    fig, (ax,) = figure(6.4, 3.2)
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=_short(name))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return img(fig, title)

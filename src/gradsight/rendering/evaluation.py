"""Figures of the trust checks: the sanity-check picture of Adebayo et al. (2018), its similarity curves, and
deletion / insertion curves (Petsiuk et al. 2018).

Example:
    >>> import gradsight                                                                        # doctest: +SKIP
    >>> report = gradsight.sanity_check("efficientnet_lite0", methods=["gradient", "guided_backprop"])
    >>> sanity_figure(report).savefig("sanity.png")                                             # doctest: +SKIP
    >>> similarity_curves_figure(report).savefig("sanity_curves.png")                           # doctest: +SKIP

Each map is shown scaled on its own (0 to its 99th percentile of |map|, as ``rendering.attribution.scale``),
as in the paper, which normalises every map before showing it: the picture compares structure, not magnitude.
"""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .attribution import DEFAULT_PERCENTILE, scale

MEASURE_TITLES = {"spearman": "Spearman rank correlation", "spearman_abs": "Spearman rank correlation of |map|",
                  "ssim": "SSIM", "hog": "Pearson correlation of HOG features"}


def _show(ax, values: np.ndarray, percentile: float) -> None:
    scaled, signed = scale(values, percentile)
    if signed:
        ax.imshow(scaled, cmap="RdBu_r", vmin=-1, vmax=1)
    else:
        ax.imshow(scaled, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _kept_footnote(fig: Figure, report, width_inches: float) -> None:
    """Name, under the figure, the parameters that every randomised copy kept (none: nothing is added)."""
    note = report.kept_note(limit=6)
    if note:
        fig.supxlabel(textwrap.fill("Not randomised: " + note, width=max(60, int(width_inches * 16))), fontsize=7,
                      color="darkred")


def sanity_figure(report, i: int = 0, percentile: float = DEFAULT_PERCENTILE) -> Figure:
    """Rows = methods; columns = the original map, then the map after each randomisation step (cascade: the
    named block and every block above it randomised; independent: that block alone), for input ``i``.
    Under each randomised map: its Spearman rank correlation of |map| with the original; under the figure, the
    parameters no randomisation re-drew (``report.kept``), if any."""
    methods, steps = report.methods, report.steps
    photo = report.photos[i] if i < len(report.photos) and report.photos[i] is not None else None
    columns = 2 + len(steps) if photo is not None else 1 + len(steps)
    fig = Figure(figsize=(1.45 * columns + 0.6, 1.6 * len(methods) + 1.1), layout="constrained")
    axes = np.asarray(fig.subplots(len(methods), columns, squeeze=False))
    first = 0
    if photo is not None:
        first = 1
        axes[0, 0].imshow(photo)
        axes[0, 0].set_title("input", fontsize=8)
        for ax in axes[:, 0]:
            ax.set_axis_off()
    arrow = "down to " if report.order == "cascade" else "only "
    for row, method in enumerate(methods):
        maps = report.maps[method][:, i]
        for column in range(len(maps)):
            ax = axes[row, first + column]
            _show(ax, maps[column], percentile)
            if row == 0:
                title = "original" if column == 0 else arrow + steps[column - 1]
                ax.set_title(title, fontsize=7, rotation=30 if len(steps) > 8 else 0)
            if column == 0:
                ax.set_ylabel(method, fontsize=9)
            else:
                ax.set_xlabel(f"{report.scores[method]['spearman_abs'][column - 1, i]:+.2f}", fontsize=7)
    how = ("cascading randomisation from the logits down" if report.order == "cascade"
           else "independent randomisation, one block at a time")
    fig.suptitle(f"{report.model_name}: {how} (seed {report.seed}); class {int(report.targets[i])}; "
                 "under each map: Spearman |map| with the original", fontsize=9)
    _kept_footnote(fig, report, fig.get_figwidth())
    return fig


def similarity_curves_figure(report) -> Figure:
    """The paper's four similarities against the randomisation step, averaged over images, one line per
    method; the verdict threshold dashed; each method's random-logit similarity as a dotted level."""
    from ..evaluation.similarity import MEASURES

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = np.asarray(fig.subplots(2, 2)).ravel()
    colours = colormaps["tab10"]
    x = np.arange(len(report.steps) + 1)
    labels = ["original", *report.steps]
    for ax, measure in zip(axes, MEASURES):
        for k, method in enumerate(report.methods):
            values = np.concatenate([[1.0], report.scores[method][measure].mean(axis=1)])
            ax.plot(x, values, "o-", color=colours(k % 10), markersize=3, label=method)
            level = float(report.random_logit[method][measure].mean())
            ax.axhline(level, color=colours(k % 10), linestyle=":", linewidth=1,
                       label=f"{method}, random other class: {level:.2f}")
        if measure == "spearman_abs":
            ax.axhline(report.threshold, color="black", linestyle="--", linewidth=1,
                       label=f"verdict threshold {report.threshold:g} (on the mean over steps)")
        ax.set_title(MEASURE_TITLES[measure], fontsize=10)
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower left")
    randomised = "cumulatively from the top" if report.order == "cascade" else "one block at a time"
    fig.suptitle(f"{report.model_name}: similarity of randomised maps to the original (blocks randomised "
                 f"{randomised}; mean over {len(report.targets)} input(s))", fontsize=10)
    _kept_footnote(fig, report, fig.get_figwidth())
    return fig


def faithfulness_figure(results, i: int = 0) -> Figure:
    """One panel per metric: each method's curve for input ``i`` and the random-order floor, AUCs in the legend
    (deletion: lower is better; insertion: higher)."""
    from ..evaluation.faithfulness import RISE_START

    metrics = list(dict.fromkeys(r.metric for r in results))
    fig = Figure(figsize=(5.5 * len(metrics), 4.2), layout="constrained")
    axes = np.asarray(fig.subplots(1, len(metrics), squeeze=False)).ravel()
    colours = colormaps["tab10"]
    methods = list(dict.fromkeys(r.method for r in results))
    for ax, metric in zip(axes, metrics):
        drawn = []
        for r in (r for r in results if r.metric == metric):
            ax.plot(r.fractions, r.curves[i], color=colours(methods.index(r.method) % 10),
                    label=f"{r.method}: AUC {r.auc[i]:.3f}")
            # the random order is the same for every method of a call with one seed: draw each floor once
            if not any(np.array_equal(r.random_curves[i], d) for d in drawn):
                drawn.append(r.random_curves[i])
                ax.plot(r.fractions, r.random_curves[i], color="grey", linestyle="--",
                        label=f"random order: AUC {r.random_auc[i]:.3f}")
        better = "lower" if metric == "deletion" else "higher"
        first = next(r for r in results if r.metric == metric)
        start = "RISE's blur" if first.options.get("baseline") == RISE_START else first.options.get("baseline")
        moved = f"deleted (set to {first.options.get('baseline')})" if metric == "deletion" else \
            f"restored into {start}"
        ax.set_title(f"{metric} ({better} is better)", fontsize=10)
        ax.set_xlabel(f"fraction of pixels {moved}", fontsize=8)
        ax.set_ylabel(f"{results[0].score} of class {int(results[0].targets[i])}")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results[0].model_name}: is the map's ranking of pixels faithful? (input {i})", fontsize=10)
    return fig

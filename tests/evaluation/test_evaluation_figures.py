"""The figures show the report's numbers: each panel's pixels are its map scaled, each line its similarities or
curve, each legend its AUC."""

from __future__ import annotations

import numpy as np
import pytest
from evaluation_models import normal_inputs
from testkit import small_cnn

from gradsight.evaluation.faithfulness import faithfulness
from gradsight.evaluation.sanity import sanity_check
from gradsight.rendering.attribution import scale
from gradsight.rendering.evaluation import faithfulness_figure, sanity_figure, similarity_curves_figure


@pytest.fixture(scope="module")
def report():
    return sanity_check(small_cnn(seed=1), normal_inputs(2, 16, seed=3), methods=["gradient", "grad_cam"],
                        blocks=["12", "7", "3", "0"])


def test_sanity_figure_rows_are_methods_columns_progressive_randomisation(report):
    fig = sanity_figure(report, i=1)
    axes = np.array(fig.axes).reshape(2, 5)  # no photo for model-input arrays: original + 4 steps
    assert [ax.get_title() for ax in axes[0]] == ["original", "down to 12", "down to 7", "down to 3", "down to 0"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["gradient", "grad_cam"]
    for row, method in enumerate(report.methods):
        for column in range(5):
            shown = axes[row, column].images[0].get_array()
            np.testing.assert_array_equal(shown, scale(report.maps[method][column, 1])[0])
        labels = [float(ax.get_xlabel()) for ax in axes[row, 1:]]
        np.testing.assert_allclose(labels, report.scores[method]["spearman_abs"][:, 1], atol=0.005)


def test_similarity_curves_show_the_mean_similarities_and_the_threshold(report):
    fig = similarity_curves_figure(report)
    panels = {ax.get_title(): ax for ax in fig.axes}
    ax = panels["Spearman rank correlation of |map|"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for method in report.methods:
        expected = np.concatenate([[1.0], report.scores[method]["spearman_abs"].mean(axis=1)])
        np.testing.assert_allclose(lines[method].get_ydata(), expected)
    threshold = [line for label, line in lines.items() if label.startswith("verdict threshold")]
    assert len(threshold) == 1 and threshold[0].get_ydata()[0] == report.threshold
    ssim = {line.get_label(): line for line in panels["SSIM"].get_lines()}
    np.testing.assert_allclose(ssim["grad_cam"].get_ydata()[1:], report.scores["grad_cam"]["ssim"].mean(axis=1))


def test_faithfulness_figure_shows_the_curves_and_their_areas():
    net, x = small_cnn(seed=1), normal_inputs(1, 16, seed=3)
    results = [faithfulness(net, x, method=m, metric=metric, steps=16) for metric in ("deletion", "insertion")
               for m in ("gradient", "grad_cam")]
    fig = faithfulness_figure(results)
    assert [ax.get_title() for ax in fig.axes] == ["deletion (lower is better)", "insertion (higher is better)"]
    for ax, metric in zip(fig.axes, ("deletion", "insertion")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert len(lines) == 3  # two methods and one random floor (the same for both)
        for r in (r for r in results if r.metric == metric):
            line = lines[f"{r.method}: AUC {r.auc[0]:.3f}"]
            np.testing.assert_allclose(line.get_xdata(), r.fractions)
            np.testing.assert_allclose(line.get_ydata(), r.curves[0])
        assert f"random order: AUC {results[0 if metric == 'deletion' else 2].random_auc[0]:.3f}" in lines

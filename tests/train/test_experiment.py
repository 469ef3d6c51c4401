"""The layer-arrangement experiment through the Python API: a tiny real run on the embedded digits,
and the statistics checked against hand formulas (the t-test definitions) with scipy's t law."""
import math
import statistics

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from cnnkit.models import create_model
from cnnkit.train.experiment import (VARIANTS, SchemesConfig, compare_schemes, peak_epoch,
                                     read_csv, run_schemes, variant_stats)
from cnnkit.utils import CnnkitError
from cnnkit.viz.experiment import plot_scheme_runs

LIMIT = 300  # first 300 digits images: 270 train + 30 validation per run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    lines = []
    config = SchemesConfig(dataset="digits", seeds=2, epochs=2, train_limit=LIMIT, threads=1,
                           out_dir=str(out), name="api")
    result = run_schemes(config, log=lambda *a: lines.append(" ".join(map(str, a))))
    return result, lines


def test_files_and_one_row_per_run(tiny):
    result, _ = tiny
    for name in ("schemes.csv", "schemes.png", "summary.md", "experiment.yaml"):
        assert (result.exp_dir / name).is_file(), name
    assert (result.exp_dir / "schemes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(result.exp_dir / "schemes.csv")
    assert sorted((r["variant"], r["seed"]) for r in rows) == sorted(
        (v, s) for v in VARIANTS for s in (0, 1))
    for row in rows:
        accs = [float(a) for a in row["val_accs"].split(";")]
        assert row["epochs"] == len(accs) == 2
        assert row["peak_epoch"] == int(np.argmax(accs)) + 1
        assert row["best_val_acc"] == pytest.approx(max(accs), abs=1e-6)
        assert 0.0 <= row["test_acc"] <= 1.0


def test_train_limit_reaches_the_trainer(tiny):
    _, lines = tiny
    # the trainer's own header line counts what it trained on (validation split of 10%)
    headers = [line for line in lines if "digits:" in line and "train," in line]
    assert len(headers) == 6
    assert all("270 train, 30 val, 360 test" in line for line in headers)


def test_runs_share_one_recipe_and_pair_by_seed(tiny):
    result, _ = tiny
    configs = {(r["variant"], r["seed"]): yaml.safe_load(
        open(f"{r['run_dir']}/config.yaml").read()) for r in result.rows}
    reference = configs[(VARIANTS[0], 0)]
    for (variant, seed), cfg in configs.items():
        assert (cfg["model"], cfg["seed"], cfg["name"]) == (variant, seed, f"{variant}-seed{seed}")
        assert {k for k in cfg if cfg[k] != reference[k]} <= {"model", "seed", "name"}


def test_one_seed_gives_all_variants_the_same_initial_weights():
    def initial(variant):
        torch.manual_seed(3)  # what train() does before building the model
        return create_model(variant).state_dict()

    weights = [initial(v) for v in VARIANTS]
    for key in ("block1.conv.weight", "block1.conv.bias", "conv2.weight", "fc.weight"):
        assert all(torch.equal(weights[0][key], w[key]) for w in weights[1:]), key


def test_stats_and_p_values_recomputed_from_the_csv(tiny):
    result, _ = tiny
    rows = read_csv(result.exp_dir / "schemes.csv")
    summary = (result.exp_dir / "summary.md").read_text()
    for variant in VARIANTS:
        accs = np.array([r["test_acc"] for r in rows if r["variant"] == variant])
        peaks = np.array([r["peak_epoch"] for r in rows if r["variant"] == variant])
        s = result.stats[variant]
        assert s.test_acc_mean == pytest.approx(accs.mean())
        assert s.test_acc_std == pytest.approx(accs.std(ddof=1))
        assert s.peak_epoch_mean == pytest.approx(peaks.mean())
        assert s.peak_epoch_std == pytest.approx(peaks.std(ddof=1))
        losses = [r["test_loss"] for r in rows if r["variant"] == variant]
        assert s.test_loss_mean == pytest.approx(np.mean(losses))
        assert f"{100 * accs.mean():.2f}% ± {100 * accs.std(ddof=1):.2f}" in summary
    by = {v: [r["test_acc"] for r in sorted(rows, key=lambda r: r["seed"]) if r["variant"] == v]
          for v in VARIANTS}
    c = result.comparison
    assert 0.0 <= c.paired_p <= 1.0 and 0.0 <= c.welch_p <= 1.0
    assert c.paired_p == pytest.approx(
        stats.ttest_rel(by["simple_cnn_scheme2"], by["simple_cnn_scheme1"]).pvalue)
    assert c.welch_p == pytest.approx(stats.ttest_ind(
        by["simple_cnn_scheme2"], by["simple_cnn_scheme1"], equal_var=False).pvalue)
    assert f"p = {c.paired_p:.4f}" in summary and c.verdict in summary


def test_figure_redrawn_from_the_csv_alone(tiny, tmp_path):
    result, _ = tiny
    path = plot_scheme_runs(read_csv(result.exp_dir / "schemes.csv"), tmp_path / "again.png")
    assert path.stat().st_size > 10_000


def test_existing_experiment_is_not_overwritten(tiny):
    result, _ = tiny
    config = SchemesConfig(dataset="digits", seeds=2, out_dir=str(result.exp_dir.parent),
                           name="api")
    with pytest.raises(CnnkitError, match="already holds an experiment"):
        run_schemes(config)


# --- the statistics, without training ---

def _rows(scheme1, scheme2):
    return ([{"variant": "simple_cnn_scheme1", "seed": s, "test_acc": a, "peak_epoch": 1,
              "test_loss": 1 - a} for s, a in enumerate(scheme1)]
            + [{"variant": "simple_cnn_scheme2", "seed": s, "test_acc": a, "peak_epoch": 2,
                "test_loss": 1 - a} for s, a in enumerate(scheme2)])


def test_t_tests_match_their_definitions():
    a = [0.9910, 0.9902, 0.9921, 0.9899, 0.9915]
    b = [0.9914, 0.9911, 0.9920, 0.9908, 0.9925]
    c = compare_schemes(_rows(a, b))
    # paired: t = mean(d) / (sd(d)/√n), n−1 degrees of freedom, two-sided
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(n))
    assert c.paired_t == pytest.approx(t)
    assert c.paired_p == pytest.approx(2 * stats.t.sf(abs(t), n - 1))
    # Welch: t = (mb − ma)/√(va/n + vb/n), Welch–Satterthwaite degrees of freedom
    va, vb = statistics.variance(a) / n, statistics.variance(b) / n
    tw = (statistics.mean(b) - statistics.mean(a)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (n - 1) + vb ** 2 / (n - 1))
    assert c.welch_t == pytest.approx(tw)
    assert c.welch_p == pytest.approx(2 * stats.t.sf(abs(tw), dof))
    assert c.mean_diff == pytest.approx(statistics.mean(d))
    # the pairing removes the per-seed shift, so the paired test is the more sensitive one here
    assert c.paired_p < 0.05 < c.welch_p
    assert c.verdict.startswith("Significant at α = 0.05: scheme 2 is better")
    assert "Welch's test, ignoring the pairing, does not" in c.verdict


def test_verdict_names_the_better_scheme_with_a_positive_gap():
    c = compare_schemes(_rows([0.9914, 0.9911, 0.9920, 0.9908, 0.9925],
                              [0.9910, 0.9902, 0.9921, 0.9899, 0.9915]))
    assert c.mean_diff < 0 and c.paired_p < 0.05
    assert f"scheme 1 is better by {-100 * c.mean_diff:.2f} points" in c.verdict


def test_verdict_without_a_significant_difference():
    c = compare_schemes(_rows([0.990, 0.992, 0.991], [0.992, 0.990, 0.9905]))
    assert c.paired_p > 0.05
    assert c.verdict.startswith(
        "No significant difference between scheme 1 and scheme 2 at α = 0.05")


def test_zero_variance_differences_are_undefined_not_significant():
    # two seeds that both tie the same way would give t = ±inf and p = 0 in scipy
    c = compare_schemes(_rows([0.90, 0.95], [0.91, 0.96]))
    assert math.isnan(c.paired_p) and "undefined" in c.verdict
    assert not math.isnan(c.welch_p)


def test_variant_stats_and_peak_epoch():
    s = variant_stats(_rows([0.98, 0.99, 0.97], [0.99, 0.99, 0.99]))
    assert s["simple_cnn_scheme1"].test_acc_mean == pytest.approx(0.98)
    assert s["simple_cnn_scheme1"].test_acc_std == pytest.approx(0.01)
    assert s["simple_cnn_scheme2"].test_acc_std == 0.0
    assert peak_epoch([{"val_acc": v} for v in (0.5, 0.9, 0.9, 0.8)]) == 2  # first of a tie
    with pytest.raises(CnnkitError, match="validation"):
        peak_epoch([{"val_acc": None}])


@pytest.mark.parametrize("field, value, message", [
    ("seeds", 1, "--seeds must be at least 2"),
    ("val_fraction", 0.0, "--val-fraction"),
    ("train_limit", 1, "--train-limit"),
    ("alpha", 1.5, "--alpha"),
    ("lr", 0.0, "--lr must be positive"),  # the shared recipe, checked by TrainConfig
])
def test_bad_config_is_refused_before_training(tmp_path, field, value, message):
    config = SchemesConfig(dataset="digits", out_dir=str(tmp_path), **{field: value})
    with pytest.raises(CnnkitError, match=message):
        run_schemes(config)
    assert not any(tmp_path.iterdir())  # nothing was created

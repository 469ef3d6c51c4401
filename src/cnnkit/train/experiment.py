"""The chapter's layer-arrangement experiment: scheme 1 vs scheme 2 (and no BatchNorm), over seeds.

The chapter (`../shared/seed/cnn-chapter.md`, "Layer Arrangement") says to try both orders and
keep the better one. One run per order says little, since seed-to-seed noise can be as large as
the effect, so every variant is trained for seeds 0..S−1 with one recipe through
`train(TrainConfig)`.
A seed fixes the validation split, the batch order and the augmentation, and — because the three
variants create the same parameters in the same order — the initial weights too: run k of
scheme 1 and run k of scheme 2 start from the same weights and see the same batches (paired runs).

Statistics: mean ± sample standard deviation (ddof = 1) over seeds; scheme 2 − scheme 1 tested
with the paired t-test (scipy.stats.ttest_rel: it uses the pairing and is the primary test) and
Welch's t-test (scipy.stats.ttest_ind, equal_var=False: it ignores the pairing), two-sided.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import yaml

from cnnkit.train.config import TrainConfig, config_field
from cnnkit.train.classify import TrainResult, train
from cnnkit.utils import CnnkitError, atomic_write_text

VARIANTS = ("simple_cnn_scheme1", "simple_cnn_scheme2", "simple_cnn_nobn")
LABELS = {
    "simple_cnn_scheme1": "scheme 1: conv→ReLU→Dropout→BN",
    "simple_cnn_scheme2": "scheme 2: conv→BN→ReLU→Dropout",
    "simple_cnn_nobn": "no BN: conv→ReLU→Dropout",
}
CSV_COLUMNS = ["variant", "seed", "test_acc", "test_loss", "best_val_acc", "peak_epoch",
               "epochs", "train_s", "val_accs", "run_dir"]


@dataclass
class SchemesConfig:
    # --- what to compare on ---
    dataset: str = config_field("mnist", "data set name (see `cnnkit datasets`)")
    seeds: int = config_field(5, "runs per variant, with seeds 0..S-1 shared by the three variants (≥ 2)")
    train_limit: int | None = config_field(None, "use only the first N training images (quick runs)")
    val_fraction: float = config_field(0.1, "fraction of the training images held out for validation (> 0)")
    data_dir: str = config_field("~/.cache/cnnkit", "download cache")
    mirror: str | None = config_field(None, "base URL replacing the official download location")
    # --- the one recipe every run uses ---
    epochs: int | None = config_field(None, "epochs per run (default: the data set's recipe)")
    batch_size: int | None = config_field(None, "images per step (default: the data set's recipe)")
    lr: float = config_field(3e-3, "peak learning rate (Adam, one-cycle schedule)")
    drop_rate: float = config_field(0.5, "dropout of the scheme-ordered block (the chapter's 0.5)")
    precision: str = config_field("auto", "bf16 autocast, fp32, or auto", ("auto", "fp32", "bf16"))
    threads: int = config_field(0, "torch threads (0: torch's default)")
    # --- the verdict and the output ---
    alpha: float = config_field(0.05, "significance level of the scheme 1 vs scheme 2 t-tests")
    out_dir: str = config_field("runs", "where the experiment folder is created")
    name: str | None = config_field(None, "experiment folder name (default: schemes-<dataset>-<time>)")
    quiet: bool = config_field(False, "only one line per finished run, no epoch tables")

    def validate(self) -> "SchemesConfig":
        """Check what argparse cannot, the shared recipe included; raise CnnkitError naming the
        flag, before anything is trained or written."""
        self.train_config(VARIANTS[0], 0, Path(self.out_dir)).validate()
        if self.seeds < 2:
            raise CnnkitError(f"--seeds must be at least 2 for a t-test, got {self.seeds}")
        if not 0.0 < self.val_fraction < 1.0:
            raise CnnkitError(f"--val-fraction must be in (0, 1): the peak epoch needs a "
                              f"validation split, got {self.val_fraction}")
        if not 0.0 < self.alpha < 1.0:
            raise CnnkitError(f"--alpha must be in (0, 1), got {self.alpha}")
        return self

    def train_config(self, variant: str, seed: int, runs_dir: Path) -> TrainConfig:
        """The recipe shared by every run; only the model and the seed change."""
        return TrainConfig(
            model=variant, model_args={"drop_rate": self.drop_rate}, dataset=self.dataset,
            data_dir=self.data_dir, mirror=self.mirror, train_limit=self.train_limit,
            val_fraction=self.val_fraction,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            precision=self.precision, threads=self.threads, seed=seed,
            out_dir=str(runs_dir), name=f"{variant}-seed{seed}", quiet=self.quiet)


@dataclass
class VariantStats:
    n: int
    test_acc_mean: float
    test_acc_std: float  # sample std, ddof = 1
    peak_epoch_mean: float
    peak_epoch_std: float
    test_loss_mean: float


@dataclass
class Comparison:
    """Scheme 2 − scheme 1 on test accuracy; p-values are two-sided, NaN when undefined."""
    n: int
    mean_diff: float
    paired_t: float
    paired_p: float
    welch_t: float
    welch_p: float
    alpha: float
    verdict: str  # the one-sentence interpretation


@dataclass
class SchemesResult:
    exp_dir: Path
    rows: list[dict]
    stats: dict[str, VariantStats]
    comparison: Comparison
    wall_s: float


# --- statistics (pure functions of the per-run rows) ---

def peak_epoch(history: list[dict]) -> int:
    """1-based epoch of the highest validation accuracy (the first one on a tie)."""
    accs = [row["val_acc"] for row in history]
    if not accs or any(a is None for a in accs):
        raise CnnkitError("the peak epoch needs a validation accuracy for every epoch")
    return max(range(len(accs)), key=accs.__getitem__) + 1


def run_row(variant: str, seed: int, result: TrainResult) -> dict:
    """One row of schemes.csv from a finished run."""
    peak = peak_epoch(result.history)  # first: it refuses a history without validation
    val_accs = [row["val_acc"] for row in result.history]
    return {"variant": variant, "seed": seed, "test_acc": result.test.top1,
            "test_loss": result.test.loss, "best_val_acc": max(val_accs),
            "peak_epoch": peak, "epochs": len(result.history),
            "train_s": result.train_seconds, "val_accs": ";".join(f"{a:.6f}" for a in val_accs),
            "run_dir": str(result.run_dir)}


def variant_stats(rows: list[dict]) -> dict[str, VariantStats]:
    """Mean ± sample std of test accuracy and peak epoch per variant, in VARIANTS order."""
    out = {}
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in rows)]:
        accs = [float(r["test_acc"]) for r in rows if r["variant"] == variant]
        peaks = [float(r["peak_epoch"]) for r in rows if r["variant"] == variant]
        losses = [float(r["test_loss"]) for r in rows if r["variant"] == variant]
        out[variant] = VariantStats(len(accs), statistics.mean(accs), _std(accs),
                                    statistics.mean(peaks), _std(peaks), statistics.mean(losses))
    return out


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def compare_schemes(rows: list[dict], alpha: float = 0.05) -> Comparison:
    """Paired and Welch t-tests of scheme 2 − scheme 1 test accuracy, matched by seed."""
    from scipy import stats  # noqa: PLC0415  (slow import, only needed here)

    by_seed = {v: {int(r["seed"]): float(r["test_acc"]) for r in rows if r["variant"] == v}
               for v in ("simple_cnn_scheme1", "simple_cnn_scheme2")}
    seeds = sorted(set(by_seed["simple_cnn_scheme1"]) & set(by_seed["simple_cnn_scheme2"]))
    if len(seeds) < 2:
        raise CnnkitError(f"a t-test needs both schemes at ≥ 2 common seeds, got {len(seeds)}")
    a = [by_seed["simple_cnn_scheme1"][s] for s in seeds]
    b = [by_seed["simple_cnn_scheme2"][s] for s in seeds]
    diffs = [y - x for x, y in zip(a, b)]
    # With zero variance the t statistic is 0/0 (scipy: NaN) or ±inf (scipy: p = 0, which would
    # read as "significant" after two seeds that merely tie in the same way): call both undefined.
    paired = stats.ttest_rel(b, a) if _spread(diffs) else _UNDEFINED
    welch = stats.ttest_ind(b, a, equal_var=False) if _spread(a) or _spread(b) else _UNDEFINED
    mean_diff = statistics.mean(diffs)
    comparison = Comparison(len(seeds), mean_diff, float(paired[0]), float(paired[1]),
                            float(welch[0]), float(welch[1]), alpha, "")
    comparison.verdict = _verdict(comparison)
    return comparison


_UNDEFINED = (math.nan, math.nan)


def _spread(values: list[float]) -> bool:
    return max(values) > min(values)


def _verdict(c: Comparison) -> str:
    """One honest sentence about scheme 2 − scheme 1."""
    points = f"{100 * c.mean_diff:+.2f} points"
    if math.isnan(c.paired_p):
        return (f"The paired t-test is undefined: scheme 2 − scheme 1 is {points} on every one "
                f"of the {c.n} seeds (zero variance); run more seeds before drawing a conclusion.")
    if c.paired_p < c.alpha:
        better = "scheme 2" if c.mean_diff > 0 else "scheme 1"
        welch = ("Welch's test agrees" if c.welch_p < c.alpha
                 else f"Welch's test, ignoring the pairing, does not (p = {c.welch_p:.3g})")
        return (f"Significant at α = {c.alpha:g}: {better} is better by "
                f"{100 * abs(c.mean_diff):.2f} points on average "
                f"(paired p = {c.paired_p:.3g}, {c.n} seeds); {welch}.")
    return (f"No significant difference between scheme 1 and scheme 2 at α = {c.alpha:g} "
            f"(paired p = {c.paired_p:.3g}, Welch p = {c.welch_p:.3g}, {c.n} seeds): the mean "
            f"gap of {points} cannot be told apart from seed-to-seed noise, which does not "
            f"show that the two orders are equal either.")


# --- tables ---

def format_stats_table(stats: dict[str, VariantStats]) -> str:
    """Markdown table: one line per variant."""
    lines = ["| variant | layer order | runs | test accuracy (mean ± std) | "
             "peak val epoch (mean ± std) | test loss (mean) |", "|---|---|---:|---:|---:|---:|"]
    for variant, s in stats.items():
        lines.append(f"| {variant} | {LABELS[variant].split(': ')[1]} | {s.n} | "
                     f"{100 * s.test_acc_mean:.2f}% ± {100 * s.test_acc_std:.2f} | "
                     f"{s.peak_epoch_mean:.1f} ± {s.peak_epoch_std:.1f} | "
                     f"{s.test_loss_mean:.3f} |")
    return "\n".join(lines)


def format_comparison(c: Comparison) -> str:
    return (f"scheme 2 − scheme 1 test accuracy: {100 * c.mean_diff:+.3f} points over {c.n} "
            f"paired seeds\n"
            f"paired t-test (scipy.stats.ttest_rel): t = {c.paired_t:.3f}, p = {c.paired_p:.4f}\n"
            f"Welch's t-test (scipy.stats.ttest_ind, equal_var=False): t = {c.welch_t:.3f}, "
            f"p = {c.welch_p:.4f}\n{c.verdict}")


def write_csv(path: Path, rows: list[dict]) -> None:
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    table.writeheader()
    table.writerows(rows)
    atomic_write_text(path, out.getvalue())


def read_csv(path: Path) -> list[dict]:
    """schemes.csv back as rows with numbers, e.g. to re-plot or re-test without re-training."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("seed", "peak_epoch", "epochs"):
            row[key] = int(row[key])
        for key in ("test_acc", "test_loss", "best_val_acc", "train_s"):
            row[key] = float(row[key])
    return rows


def headline(config: SchemesConfig) -> str:
    """What the experiment ran on, e.g. "mnist, first 20,000 training images"."""
    subset = f", first {config.train_limit:,} training images" if config.train_limit else ""
    return f"{config.dataset}{subset}"


def _summary_markdown(config: SchemesConfig, result: SchemesResult) -> str:
    epochs = result.rows[0]["epochs"]
    return (f"# Layer-arrangement experiment: {headline(config)}\n\n"
            f"{config.seeds} seeds × {len(VARIANTS)} variants, {epochs} epochs each, "
            f"one recipe (`cnnkit train` defaults for {config.dataset}, lr {config.lr:g}, "
            f"dropout {config.drop_rate:g}); wall time {result.wall_s / 60:.1f} min.\n\n"
            f"{format_stats_table(result.stats)}\n\n"
            f"```\n{format_comparison(result.comparison)}\n```\n\n"
            f"Per-run numbers: `schemes.csv`; run folders: `runs/`.\n\n"
            f"![validation curves and test accuracies](schemes.png)\n")


# --- the experiment ---

def make_experiment_dir(config: SchemesConfig) -> Path:
    name = config.name or f"schemes-{config.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    exp_dir = Path(config.out_dir).expanduser() / name
    if (exp_dir / "schemes.csv").exists():
        raise CnnkitError(f"{exp_dir} already holds an experiment; choose another --name")
    exp_dir.mkdir(parents=True, exist_ok=True)
    return exp_dir


def run_schemes(config: SchemesConfig, *, log=print) -> SchemesResult:
    """Train every variant for every seed, then write schemes.csv, schemes.png and summary.md."""
    from cnnkit.viz.experiment import plot_scheme_runs  # noqa: PLC0415  (matplotlib on demand)

    config.validate()
    exp_dir = make_experiment_dir(config)
    atomic_write_text(exp_dir / "experiment.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
    train_log = (lambda *_: None) if config.quiet else log
    rows: list[dict] = []
    total, start = config.seeds * len(VARIANTS), time.perf_counter()
    # Seed-major order: an interrupted experiment still holds complete, paired seeds.
    for seed in range(config.seeds):
        for variant in VARIANTS:
            result = train(config.train_config(variant, seed, exp_dir / "runs"), log=train_log)
            rows.append(run_row(variant, seed, result))
            write_csv(exp_dir / "schemes.csv", rows)
            log(f"[{len(rows)}/{total}] {variant} seed {seed}: test {result.test.top1:.4f}, "
                f"val peak at epoch {rows[-1]['peak_epoch']}, {result.train_seconds:.0f} s")
    wall_s = time.perf_counter() - start
    result = SchemesResult(exp_dir, rows, variant_stats(rows),
                           compare_schemes(rows, config.alpha), wall_s)
    plot_scheme_runs(rows, exp_dir / "schemes.png", labels=LABELS,
                     title=f"{headline(config)}, {rows[0]['epochs']} epochs")
    atomic_write_text(exp_dir / "summary.md", _summary_markdown(config, result))
    return result


__all__ = ["SchemesConfig", "SchemesResult", "VariantStats", "Comparison", "run_schemes",
           "variant_stats", "compare_schemes", "peak_epoch", "read_csv", "format_stats_table",
           "format_comparison", "VARIANTS"]

"""The CycleGAN judge (cnnkit.generation.judge) on real horse2zebra photos: fake generators whose
judgement follows from the definitions (identity: success = the judge's error on the source
domain, cycle L1 = 0; swapping in real target images: success = the judge's accuracy there, FID =
the floor), a tiny trained CycleGAN judged by `cnnkit cyclegan eval` in a real process, and its
one-line errors."""
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from cnnkit.data.array_dataset import resize_images
from cnnkit.data.unpaired import load_unpaired, to_unit_range
from cnnkit.generation.fid import (Classifier, features, frechet_distance, kid_from_features,
                                   statistics)
from cnnkit.generation.judge import (NOT_INCEPTION, judge_generators, judge_translation,
                                     load_judge, real_reference, summarise_judges)
from cnnkit.train.classify import train
from cnnkit.train.config import TrainConfig
from cnnkit.train.cyclegan import (CycleGanConfig, _write_grid, load_domains, load_translator,
                                   train_cyclegan)
from cnnkit.utils import CnnkitError
from tests.cli._run import assert_one_line_error, cnnkit
from tests.data.test_unpaired import make_unpaired

SIDE = 32  # the CycleGAN's crop and the judge's input: translated images reach the judge as is
QUIET = dict(quiet=True, tensorboard=False, threads=1, precision="fp32")


def _judge(out_dir, name, **overrides):
    config = dict(model="resnet18", dataset="horse2zebra-domains", image_size=SIDE, epochs=2,
                  batch_size=8, val_fraction=0.0, out_dir=str(out_dir), name=name, **QUIET)
    return train(TrainConfig(**{**config, **overrides}), log=lambda *_: None).run_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """DATA_DIR/horse2zebra-128 (16 + 16 training, 6 + 6 test photos), two resnet18 judges
    trained on them (2 epochs, seeds 0 and 1) and a 1-block CycleGAN trained 1 epoch on 4 images
    per domain."""
    tmp = tmp_path_factory.mktemp("judge")
    data_dir = tmp / "data"
    root = make_unpaired(data_dir / "horse2zebra-128", n_train=16, n_test=6)
    judge_dir = _judge(tmp, "judge", data_dir=str(data_dir))
    second_judge = _judge(tmp, "judge_seed1", data_dir=str(data_dir), seed=1)
    gan = train_cyclegan(CycleGanConfig(
        dataset="horse2zebra", data_dir=str(data_dir), train_limit=4, load_size=SIDE + 4,
        crop_size=SIDE, ngf=4, ndf=4, n_blocks=1, n_layers_d=2, pool_size=2, epochs=1,
        grid_images=2, out_dir=str(tmp), name="gan", **QUIET), log=lambda *_: None)
    return dict(tmp=tmp, data_dir=data_dir, root=root, judge=judge_dir, gan=gan.run_dir,
                second_judge=second_judge,
                test=load_unpaired(root, "test"), train=load_unpaired(root, "train"))


class Lookup(nn.Module):
    """A fake generator: an input image found among `sources` becomes the `outputs` image at the
    same index; any other image passes unchanged."""

    def __init__(self, sources: torch.Tensor, outputs: torch.Tensor):
        super().__init__()
        self.sources, self.outputs = sources.flatten(1), outputs  # (N, 3·S·S), (N, 3, S, S)

    def forward(self, x):
        out = x.clone()
        for i, image in enumerate(x):
            hit = (self.sources == image.flatten()).all(1).nonzero()  # (hits, 1)
            if len(hit):
                out[i] = self.outputs[hit[0, 0]]
        return out


def _unit(images):
    return to_unit_range(resize_images(images, SIDE))


def _judge_on(judge, images):
    """Predicted classes by the plain forward pass: the oracle for the judge's own path."""
    with torch.no_grad():
        return judge.model(judge.normalise(resize_images(images, SIDE))).argmax(1)


def test_identity_translator_scores_the_judges_error_and_no_cycle_loss(setup):
    judge = load_judge(setup["judge"], ("horse", "zebra"))
    test, train_set = setup["test"], setup["train"]
    same = nn.Identity()
    result, = judge_generators(same, same, [judge], test, train_set, ("horse", "zebra"),
                               image_size=SIDE)
    horse, zebra = judge.classes.index("horse"), judge.classes.index("zebra")
    acc_horse = (_judge_on(judge, test.a) == horse).double().mean().item()
    acc_zebra = (_judge_on(judge, test.b) == zebra).double().mean().item()
    assert result.domain_accuracy == pytest.approx({"horse": acc_horse, "zebra": acc_zebra})
    assert result.judge_accuracy == pytest.approx((acc_horse * 6 + acc_zebra * 6) / 12)
    ab, ba = result.directions["AtoB"], result.directions["BtoA"]
    # Untranslated horses count as zebras exactly where the judge errs on horses.
    assert ab.success == pytest.approx(1 - acc_horse) and ba.success == pytest.approx(1 - acc_zebra)
    assert ab.cycle_l1 == 0.0 and ba.cycle_l1 == 0.0
    assert (ab.source, ab.target, ab.n, ab.n_real, ab.n_floor) == ("horse", "zebra", 6, 6, 6)
    # FID of the "translations" = FID(real test horses, real test zebras), with the features
    # fid.py takes independently (the input of the classifier's last Linear, by a hook).
    oracle = Classifier(judge.model, judge.mean, judge.std, judge.image_shape, judge.classes)
    fa, fb = (features(oracle, resize_images(x, SIDE)) for x in (test.a, test.b))
    assert result.feature_dim == fa.shape[1] == 512
    assert ab.fid == pytest.approx(frechet_distance(*statistics(fa), *statistics(fb)), rel=1e-6)
    assert ba.fid == pytest.approx(frechet_distance(*statistics(fb), *statistics(fa)), rel=1e-6)
    # The floor: the median FID of the two disjoint samples of 6 of the 16 training zebras, in the
    # random order of the judging seed (0).
    fb_train = features(oracle, resize_images(setup["train"].b, SIDE))
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0)).numpy()
    floors = [frechet_distance(*statistics(fb_train[order[i:i + 6]]), *statistics(fb))
              for i in (0, 6)]
    assert ab.floor_samples == 2 and ab.fid_floors == pytest.approx(floors, rel=1e-6)
    assert ab.fid_floor == pytest.approx(sum(floors) / 2, rel=1e-6)  # two: median = mean
    assert ab.fid_ratio == pytest.approx(ab.fid / ab.fid_floor)
    # KID's floor takes all 16 at once.
    assert (ab.kid_floor, ab.kid_floor_se) == pytest.approx(kid_from_features(fb_train, fb),
                                                            rel=1e-6)


def test_swapping_in_real_target_images_scores_the_judges_accuracy_and_the_floor(setup):
    judge = load_judge(setup["judge"], ("zebra", "horse"))  # the classes in either order
    test, train_set = setup["test"], setup["train"]
    a, b = _unit(test.a), _unit(test.b)
    # G turns the i-th test horse into the i-th test zebra, F the reverse.
    result, = judge_generators(Lookup(a, b), Lookup(b, a), [judge], test, train_set,
                               ("horse", "zebra"), image_size=SIDE)
    ab, ba = result.directions["AtoB"], result.directions["BtoA"]
    assert ab.success == pytest.approx(result.domain_accuracy["zebra"])
    assert ba.success == pytest.approx(result.domain_accuracy["horse"])
    assert ab.cycle_l1 == 0.0 and ab.fid == pytest.approx(0.0, abs=1e-6)  # the same set
    # Swapping in the real *training* zebras of the first floor sample (the seed's random order)
    # reproduces that sample's FID; with only those six as the training set, the whole floor.
    first = train_set.b[torch.randperm(16, generator=torch.Generator().manual_seed(0))[:6]]
    swapped, = judge_generators(Lookup(a, _unit(first)), nn.Identity(), [judge], test,
                                train_set, ("horse", "zebra"), image_size=SIDE)
    sab = swapped.directions["AtoB"]
    assert sab.fid == pytest.approx(sab.fid_floors[0], rel=1e-9) and sab.fid_floor > 0
    assert sab.fid_floors[1] != pytest.approx(sab.fid_floors[0])  # another sample, another FID
    six = replace(train_set, a=train_set.a[:6], b=first)
    alone = judge_generators(Lookup(a, _unit(first)), nn.Identity(), [judge], test, six,
                             ("horse", "zebra"), image_size=SIDE)[0].directions["AtoB"]
    assert alone.floor_samples == 1 and alone.fid == pytest.approx(alone.fid_floor, rel=1e-6)
    assert (alone.kid, alone.kid_se) == pytest.approx((alone.kid_floor, alone.kid_floor_se),
                                                      rel=1e-6)
    zebra = judge.classes.index("zebra")
    assert sab.success == pytest.approx((_judge_on(judge, first) == zebra).double().mean().item())
    assert sab.cycle_l1 > 0  # F is the identity: the horse does not come back


def test_several_judges_at_once_and_their_real_references_made_once(setup):
    """Several judges in one call (the test images translated once) give each judge's own
    verdict; `references` keeps each judge's view of the real photos for the next call, which
    uses it as kept (a run judging every epoch makes it once)."""
    judges = [load_judge(setup[name], ("horse", "zebra")) for name in ("judge", "second_judge")]
    test, train_set = setup["test"], setup["train"]
    g, f = Lookup(_unit(test.a), _unit(test.b.flip(0))), nn.Identity()
    alone = [judge_generators(g, f, [judge], test, train_set, ("horse", "zebra"),
                              image_size=SIDE)[0] for judge in judges]
    references = {}
    together = judge_generators(g, f, judges, test, train_set, ("horse", "zebra"),
                                image_size=SIDE, references=references)
    assert together == alone and together[0] != together[1]
    assert sorted(references) == sorted(str(judge.path) for judge in judges)
    # Kept references are used as they are: made from six training photos, they bring that
    # floor into a call on all sixteen.
    six = replace(train_set, a=train_set.a[:6], b=train_set.b[:6])
    kept = {str(judges[0].path): real_reference(judges[0], test, six)}
    again, = judge_generators(g, f, judges[:1], test, train_set, ("horse", "zebra"),
                              image_size=SIDE, references=kept)
    small, = judge_generators(g, f, judges[:1], test, six, ("horse", "zebra"), image_size=SIDE)
    assert again == small and again != alone[0]


def test_cli_eval_prints_the_judgement(setup):
    proc = cnnkit("cyclegan", "eval", setup["gan"], "--judge", setup["judge"], "--n", "5")
    assert proc.returncode == 0, proc.stderr
    result = judge_translation(setup["gan"], setup["judge"], n=5, device="cpu")
    out = proc.stdout
    for j in result.directions.values():
        row = next(line for line in out.splitlines() if line.startswith(f"{j.source} → "))
        assert re.search(rf"\s{j.success * 100:.1f}%\s", row), row
        assert row.rstrip().endswith(f"{j.n} vs {j.n_real}; 3 × {j.n_floor} train")
        assert j.n == j.n_real == j.n_floor == 5 and j.fid >= 0 and j.cycle_l1 > 0
        # Every training photo is read for the floor (16 of them: 3 samples of 5), not only n.
        assert j.floor_samples == 3 and f"{j.target} [{min(j.fid_floors):.3f} – " in out
        assert j.fid_floor == sorted(j.fid_floors)[1]  # the median of three
    assert f"{result.judge_accuracy:.1%}" in out and f"resized whole to {SIDE}×{SIDE}" in out
    assert NOT_INCEPTION in out and "NOT Inception-FID" in out


def test_cli_eval_with_several_judges_prints_their_mean_and_spread(setup):
    second = setup["second_judge"]
    proc = cnnkit("cyclegan", "eval", setup["gan"], "--judge", setup["judge"], second,
                  "--n", "5")
    assert proc.returncode == 0, proc.stderr
    results = [judge_translation(setup["gan"], j, n=5, device="cpu")
               for j in (setup["judge"], second)]
    assert proc.stdout.count("NOT Inception-FID") == 2  # each judge's own table
    assert "over 2 judges: mean ± standard deviation [min – max]" in proc.stdout
    for name, first in results[0].directions.items():
        successes = sorted(100 * r.directions[name].success for r in results)
        ratios = [r.directions[name].fid_ratio for r in results]
        row = next(line for line in proc.stdout.splitlines()
                   if line.startswith(f"{first.source} → ") and "±" in line and "[" in line)
        mean = sum(successes) / 2
        spread = abs(successes[1] - successes[0]) / 2 ** 0.5  # the sample sd of two values
        assert f"success {mean:.1f}% ± {spread:.1f}% [{successes[0]:.1f}% – {successes[1]:.1f}%]" \
            in row, row
        assert f"FID/floor {sum(ratios) / 2:.2f} ± " in row, row
    assert summarise_judges(results[:1]).count("± 0.00") == 2  # one judge: no spread


def test_cli_errors_for_judges_that_do_not_fit(setup):
    digits = train(TrainConfig(model="plain_cnn", dataset="digits", epochs=1, train_limit=32,
                               batch_size=16, out_dir=str(setup["tmp"]), name="digits", **QUIET),
                   log=lambda *_: None).run_dir
    proc = cnnkit("cyclegan", "eval", setup["gan"], "--judge", digits)
    assert_one_line_error(proc, "has 10 classes", "a CycleGAN's judge has two",
                          "horse2zebra-domains")
    folder = _judge(setup["tmp"], "ab", dataset="unpaired-domains", data_dir=str(setup["root"]),
                    epochs=1, train_limit=8)
    proc = cnnkit("cyclegan", "eval", setup["gan"], "--judge", folder)
    assert_one_line_error(proc, "knows classes A, B but the CycleGAN's domains are horse, zebra")
    with pytest.raises(CnnkitError, match=r"is a cyclegan checkpoint"):
        judge_translation(setup["gan"], setup["gan"])
    with pytest.raises(CnnkitError, match=r"--n must be at least 3 images"):
        judge_translation(setup["gan"], setup["judge"], n=2)
    with pytest.raises(CnnkitError, match=r"--image-size must be a positive multiple of 4"):
        judge_translation(setup["gan"], setup["judge"], n=3, image_size=30, device="cpu")


def test_held_out_training_images_judge_each_epoch_and_pick_best_pt(setup):
    """--val-images 3 --judge J0 J1: the last 3 of the 8 training images per domain never
    train; each epoch's averaged generators are judged on them (translated whole at --judge-size,
    here the load size the crops come from; the crops from images rescaled at random), and
    best.pt is the epoch whose worse direction has the lowest FID / floor — by two judges, the
    mean of the verdicts that direct calls give."""
    gan = train_cyclegan(CycleGanConfig(
        dataset="horse2zebra", data_dir=str(setup["data_dir"]), train_limit=8, load_size=SIDE + 4,
        min_load_size=SIDE, crop_size=SIDE, ngf=4, ndf=4, n_blocks=1, n_layers_d=2, pool_size=2,
        epochs=3, grid_images=1, val_images=3, judge_size=SIDE + 4, ema_decay=0.5,
        judge=[str(setup["judge"]), str(setup["second_judge"])], out_dir=str(setup["tmp"]),
        name="gan_val", **QUIET), log=lambda *_: None)
    history = gan.history
    ratios = [row["val_fid_ratio"] for row in history]
    assert all(r == max(row["val_fid_ratio_ab"], row["val_fid_ratio_ba"])
               for r, row in zip(ratios, history))
    best = torch.load(gan.run_dir / "best.pt", weights_only=True)
    assert best["best"]["epoch"] == 1 + ratios.index(min(ratios))
    assert best["position"]["epochs_done"] == best["best"]["epoch"]
    # 5 training images per domain: 5 steps an epoch, one pair each
    assert best["position"]["step"] == 5 * best["best"]["epoch"]
    # `cyclegan eval` of the folder reads best.pt, its averaged generators (EMA ≠ live weights)
    live, averaged = best["models"]["generator_ab"], best["ema"]["generator_ab"]["model"]
    assert any(not torch.equal(live[k], averaged[k]) for k in live)
    from cnnkit.inference.load import load_model  # noqa: PLC0415
    g_ab, g_ba = (load_model(gan.run_dir, task="cyclegan", part=p).model
                  for p in ("generator_ab", "generator_ba"))
    assert all(torch.equal(v, averaged[k]) for k, v in g_ab.state_dict().items())
    held = load_unpaired(setup["root"], "train", limit=8)
    val = replace(held, a=held.a[5:], b=held.b[5:])
    floor = replace(held, a=held.a[:5], b=held.b[:5])
    verdicts = [judge_generators(g_ab, g_ba, [load_judge(setup[judge])], val, floor,
                                 ("horse", "zebra"), image_size=SIDE + 4)[0]
                for judge in ("judge", "second_judge")]  # one at a time: training's are at once
    row = history[best["best"]["epoch"] - 1]
    by_judge = [v.directions["AtoB"].fid_ratio for v in verdicts]
    assert by_judge[0] != pytest.approx(by_judge[1])  # two rulers: the mean is neither one
    assert row["val_fid_ratio_ab"] == pytest.approx(sum(by_judge) / 2)
    assert row["val_success_ba"] == pytest.approx(
        sum(v.directions["BtoA"].success for v in verdicts) / 2)
    # `cyclegan eval` translates the test images at the run's --judge-size too
    assert judge_translation(gan.run_dir, setup["judge"], n=3, device="cpu").image_size == SIDE + 4


def test_cli_train_takes_several_judges_and_names_a_missing_one(setup):
    """`cnnkit cyclegan train --judge J0 J1` (a real subprocess): both saved, absolute, in the
    run's config, the held-out columns in metrics.csv; a judge path that does not exist is one
    line and exit 2."""
    common = ["cyclegan", "train", "--dataset", "horse2zebra", "--data-dir", setup["data_dir"],
              "--train-limit", "8", "--load-size", SIDE + 4, "--crop-size", SIDE, "--ngf", "4",
              "--ndf", "4", "--n-blocks", "1", "--n-layers-d", "2", "--pool-size", "2",
              "--epochs", "1", "--grid-images", "1", "--val-images", "3", "--threads", "1",
              "--precision", "fp32", "--quiet", "--no-tensorboard", "--out-dir", setup["tmp"]]
    proc = cnnkit(*common, "--name", "gan_cli_judges", "--judge", setup["judge"],
                  setup["second_judge"])
    assert proc.returncode == 0, proc.stderr
    run_dir = setup["tmp"] / "gan_cli_judges"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["judge"] == [str(Path(setup["judge"]).resolve()),
                              str(Path(setup["second_judge"]).resolve())]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_fid_ratio_ab", "val_success_ba", "val_fid_ratio"} <= set(header)
    missing = setup["tmp"] / "no_such_judge"
    proc = cnnkit(*common, "--name", "gan_cli_missing", "--judge", setup["judge"], missing)
    assert_one_line_error(proc, "no_such_judge")


def test_choose_each_keeps_each_generator_from_its_own_best_epoch(setup):
    """--choose each, trained one epoch per call (resumed twice, so the choice so far rides in
    last.pt): best.pt's G is the epoch with the lowest held-out horse → zebra FID / floor, its F
    the epoch with the lowest zebra → horse, weights and averages alike."""
    common = dict(dataset="horse2zebra", data_dir=str(setup["data_dir"]), train_limit=8,
                  load_size=SIDE + 4, crop_size=SIDE, ngf=4, ndf=4, n_blocks=1, n_layers_d=2,
                  pool_size=2, epochs=3, grid_images=1, val_images=3, judge=str(setup["judge"]),
                  ema_decay=0.5, choose="each", **QUIET)
    run_dir, lines, snapshots = setup["tmp"] / "gan_each", [], []
    for epochs in (1, 2, 3):
        resume = dict(resume=str(run_dir)) if snapshots else dict(
            out_dir=str(setup["tmp"]), name="gan_each", **common)
        train_cyclegan(CycleGanConfig(max_epochs=epochs, **resume), log=lines.append)
        snapshots.append(torch.load(run_dir / "last.pt", weights_only=True))
    history = snapshots[-1]["history"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    for part, key in (("generator_ab", "val_fid_ratio_ab"), ("generator_ba", "val_fid_ratio_ba")):
        scores = [row[key] for row in history]
        epoch = 1 + scores.index(min(scores))
        assert best["best"]["each"][part] == {"epoch": epoch, "value": min(scores),
                                              "metric": key}
        then = snapshots[epoch - 1]
        for group in ("models", "ema"):
            saved = best[group][part] if group == "models" else best[group][part]["model"]
            there = then[group][part] if group == "models" else then[group][part]["model"]
            assert all(torch.equal(saved[k], there[k]) for k in there), (part, group)
    assert "each_best" not in best["extra"] and set(snapshots[-1]["extra"]["each_best"]) == {
        "generator_ab", "generator_ba"}
    # The run folder's translations_best.png is the grid of best.pt's generators, as
    # translate reads them, titled with the latest choice.
    chosen = [line for line in lines if line.startswith("best.pt: horse → zebra from epoch ")]
    test, domains = load_domains(CycleGanConfig(**common), "test", load_size=None, limit=1)
    fixed = {d: to_unit_range(resize_images(x, SIDE)) for d, x in (("a", test.a), ("b", test.b))}
    again = setup["tmp"] / "best_again.png"
    _write_grid(again, chosen[-1], load_translator(run_dir / "best.pt", "AtoB")[0],
                load_translator(run_dir / "best.pt", "BtoA")[0], fixed, domains)
    with Image.open(run_dir / "translations_best.png") as grid, Image.open(again) as expected:
        assert np.array_equal(np.asarray(grid), np.asarray(expected))
    with pytest.raises(CnnkitError, match="--choose each .* needs --val-images and --judge"):
        CycleGanConfig(**{**common, "val_images": 0, "judge": None}).validate()


def test_held_out_images_need_a_judge_and_leave_training_images(setup):
    common = dict(dataset="horse2zebra", data_dir=str(setup["data_dir"]), train_limit=4,
                  load_size=SIDE + 4, crop_size=SIDE, out_dir=str(setup["tmp"]), **QUIET)
    with pytest.raises(CnnkitError, match="--val-images and --judge go together"):
        CycleGanConfig(val_images=3, **common).validate()
    with pytest.raises(CnnkitError, match="--val-images must be at least 3"):
        CycleGanConfig(val_images=2, judge=str(setup["judge"]), **common).validate()
    with pytest.raises(CnnkitError, match="--val-images 4 leaves no training images"):
        train_cyclegan(CycleGanConfig(val_images=4, judge=str(setup["judge"]), name="none",
                                      **common), log=lambda *_: None)
    with pytest.raises(CnnkitError, match="--ema-decay must be in"):
        CycleGanConfig(ema_decay=1.0, **common).validate()
    with pytest.raises(CnnkitError, match="--judge-size must be a positive multiple of 4"):
        CycleGanConfig(judge_size=30, **common).validate()

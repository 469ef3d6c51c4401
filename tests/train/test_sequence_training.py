"""The trainer on sequence targets: the attention reader on mnist-seq, end to end."""
import os

import torch
from PIL import Image

from cnnkit.train import TrainConfig, train
from tests.conftest import DATASETS


def test_attention_reader_trains_and_draws_its_attention(tmp_path):
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    for f in (DATASETS / "mnist").glob("*.gz"):
        os.symlink(f, cache / f.name)
    result = train(TrainConfig(model="cnn_attention_seq", dataset="mnist-seq",
                               data_dir=str(tmp_path / "cache"), train_limit=2000, test_limit=1000,
                               epochs=3,
                               batch_size=32, out_dir=str(tmp_path), name="seq", quiet=True,
                               threads=1), log=lambda *_: None)
    # sequence accuracy counts a sequence only when all 5 positions are right
    assert result.test.count == 1000
    assert result.test.top1 <= result.test.token_acc
    assert result.test.token_acc > 0.6  # chance is 1/11; the END-padding prior alone gives ~0.2
    for name in ("attention.png", "predictions.png", "confusion.png", "curves.png"):
        with Image.open(result.run_dir / name) as img:
            assert img.size[0] > 300
    ckpt = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert ckpt["spec"]["image_shape"] == [1, 28, 140]

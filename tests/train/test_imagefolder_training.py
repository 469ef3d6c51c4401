"""Training on a folder of real JPEG images, decoded once into memory or streamed per batch."""
import torch

from cnnkit.train import TrainConfig, train
from tests.data.conftest import unzip_cifar_test


def test_streamed_and_in_memory_folders_train_identically(tmp_path):
    unzip_cifar_test(tmp_path / "images", per_class=12, classes=("cat", "dog", "ship"))
    common = dict(model="lenet", dataset="imagefolder", data_dir=str(tmp_path / "images"),
                  epochs=2, batch_size=8, out_dir=str(tmp_path), quiet=True, threads=1,
                  deterministic=True, precision="fp32", crop_padding=2)
    memory = train(TrainConfig(name="memory", **common), log=lambda *_: None)
    streamed = train(TrainConfig(name="stream", stream=True, workers=0, **common),
                     log=lambda *_: None)
    assert memory.classes == streamed.classes == ["cat", "dog", "ship"]
    a = torch.load(memory.run_dir / "last.pt", weights_only=True)
    b = torch.load(streamed.run_dir / "last.pt", weights_only=True)
    # LeNet's input format (1×28×28) applied to the 32×32 colour photos
    assert a["spec"]["image_shape"] == b["spec"]["image_shape"] == [1, 28, 28]
    wa, wb = a["models"]["model"], b["models"]["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert memory.test.count == streamed.test.count > 0
    assert (streamed.run_dir / "predictions.png").is_file()

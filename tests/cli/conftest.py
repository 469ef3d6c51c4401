"""Fixtures the CLI tests share."""
import pytest

from cnnkit.train import TrainConfig, train


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    """A LeNet trained for one epoch on the bundled digits: the classifier generate-eval uses."""
    out = tmp_path_factory.mktemp("clf")
    result = train(TrainConfig(dataset="digits", epochs=1, val_fraction=0.0, out_dir=str(out),
                               name="lenet", quiet=True), log=lambda *a: None)
    return result.run_dir / "last.pt"

"""create_model(name, weights=PATH): strict loading of reference-layout files."""
import pytest
import torch

from cnnkit.models import create_model
from cnnkit.utils import CnnkitError


def test_torchvision_file_with_aux_heads_loads_into_aux_free_googlenet(tmp_path):
    # torchvision's GoogLeNet checkpoint holds aux1/aux2 even though the model is used without.
    with_aux = create_model("googlenet", aux_logits=True)
    path = tmp_path / "googlenet.pth"
    torch.save(with_aux.state_dict(), path)
    model = create_model("googlenet", weights=str(path))
    assert not any(k.startswith("aux") for k in model.state_dict())
    torch.testing.assert_close(model.fc.weight, with_aux.fc.weight)


def test_torchvision_segmentation_file_with_aux_head_loads_into_the_default_model(tmp_path):
    # torchvision's pretrained DeepLabV3/FCN files hold aux_classifier.* (trained with aux_loss).
    with_aux = create_model("deeplabv3_mobilenet_v3_large", num_classes=3, aux_loss=True)
    path = tmp_path / "deeplab.pth"
    torch.save(with_aux.state_dict(), path)
    model = create_model("deeplabv3_mobilenet_v3_large", num_classes=3, weights=str(path))
    assert not any(k.startswith("aux_classifier.") for k in model.state_dict())
    torch.testing.assert_close(model.classifier[4].weight, with_aux.classifier[4].weight)


def test_other_architecture_or_missing_file_is_refused(tmp_path):
    path = tmp_path / "lenet.pth"
    torch.save(create_model("lenet").state_dict(), path)
    with pytest.raises(CnnkitError, match="does not fit 'simple_cnn'"):
        create_model("simple_cnn", weights=str(path))
    with pytest.raises(CnnkitError, match="not found"):
        create_model("lenet", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CnnkitError, match="cannot read checkpoint"):
        create_model("lenet", weights=str(tmp_path / "junk.pth"))

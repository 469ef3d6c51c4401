"""GeneralizedRCNNTransform: resize rule, padding, targets scaled with the image, round trip."""
import pytest
import torch

from cnnkit.models.detection.transform import GeneralizedRCNNTransform, ImageList
from cnnkit.utils import CnnkitError


def _transform(min_size=80, max_size=300, **kw):
    return GeneralizedRCNNTransform(min_size, max_size, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], **kw)


def _target(h, w):
    masks = torch.zeros(1, h, w, dtype=torch.uint8)
    masks[0, 5:15, 10:20] = 1
    return {"boxes": torch.tensor([[10., 5., 20., 15.]]), "labels": torch.tensor([1]),
            "masks": masks, "keypoints": torch.tensor([[[10., 5., 2.], [20., 15., 1.]]])}


def test_short_side_to_min_size_capped_by_max_size_then_padded():
    t = _transform().eval()
    images = [torch.rand(3, 40, 100), torch.rand(3, 40, 200)]
    batch, targets = t(images)
    assert isinstance(batch, ImageList) and targets is None
    # 40×100: ×2 -> 80×200; 40×200: ×2 would give a 400 long side, so ×1.5 -> 60×300
    assert batch.image_sizes == [(80, 200), (60, 300)]
    assert batch.tensors.shape == (2, 3, 96, 320)  # the largest size, up to multiples of 32
    assert (batch.tensors[1, :, 60:] == 0).all() and (batch.tensors[0, :, :, 200:] == 0).all()
    # normalised inside: (x - mean) / std
    flat = torch.full((3, 40, 100), 0.75)
    torch.testing.assert_close(t([flat])[0].tensors[0, :, :80, :200],
                               torch.ones(3, 80, 200))


def test_targets_are_scaled_with_the_image_and_the_callers_dicts_untouched():
    t = _transform().train()
    target = _target(40, 100)
    original = {k: v.clone() for k, v in target.items()}
    _, (out,) = t([torch.rand(3, 40, 100)], [target])
    torch.testing.assert_close(out["boxes"], torch.tensor([[20., 10., 40., 30.]]))
    torch.testing.assert_close(out["keypoints"], torch.tensor([[[20., 10., 2.], [40., 30., 1.]]]))
    assert out["masks"].dtype == torch.uint8 and out["masks"].shape == (1, 80, 200)
    expected = torch.zeros(80, 200, dtype=torch.uint8)
    expected[10:30, 20:40] = 1  # nearest ×2: each pixel becomes a 2×2 block
    assert torch.equal(out["masks"][0], expected)
    assert all(torch.equal(target[k], original[k]) for k in original)


@pytest.mark.parametrize("exact", [True, False])
def test_exact_masks_stay_centred_on_the_resized_image(exact):
    """A 5-pixel-wide band at columns c…c+5, resized ×0.4 (120 → 48, as a photo to the CPU
    detectors' 128 px): its centre in continuous coordinates must move to (c + 2.5)·0.4, where
    the bilinear image and the scaled boxes put it. torchvision's nearest samples each output
    pixel's top-left source pixel — 0.4 output pixels off on average; nearest-exact its centre."""
    t = _transform(min_size=48)
    t.exact_masks = exact
    errors = []
    for column in range(0, 115):
        masks = torch.zeros(1, 120, 120, dtype=torch.uint8)
        masks[0, :, column:column + 5] = 1
        target = {"boxes": torch.tensor([[column, 0., column + 5., 120.]]),
                  "labels": torch.tensor([1]), "masks": masks}
        _, (out,) = t.train()([torch.rand(3, 120, 120)], [target])
        columns = out["masks"][0].nonzero()[:, 1].float() + 0.5  # pixel centres
        errors.append(columns.mean().item() - (column + 2.5) * 0.4)
    bias = sum(errors) / len(errors)
    assert (abs(bias) < 0.05) if exact else (abs(bias) > 0.3)


def test_empty_targets_resize():
    t = _transform().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 40, 100, dtype=torch.uint8),
             "keypoints": torch.zeros(0, 17, 3)}
    _, (out,) = t([torch.rand(3, 40, 100)], [empty])
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 80, 200)
    assert out["keypoints"].shape == (0, 17, 3)


def test_postprocess_maps_detections_back_to_the_original_image():
    t = _transform().train()
    target = _target(40, 100)
    batch, (resized,) = t([torch.rand(3, 40, 100)], [target])
    t.eval()
    pred = {"boxes": resized["boxes"].clone(), "keypoints": resized["keypoints"].clone(),
            "masks": torch.ones(1, 1, 28, 28)}
    (back,) = t.postprocess([pred], batch.image_sizes, [(40, 100)])
    torch.testing.assert_close(back["boxes"], target["boxes"])
    torch.testing.assert_close(back["keypoints"], target["keypoints"])
    assert back["masks"].shape == (1, 1, 40, 100)  # pasted at the original size
    assert back["masks"][0, 0, 6:14, 11:19].min() > 0.5 and back["masks"][0, 0, 30:].max() == 0


def test_multi_scale_training_and_fixed_size():
    torch.manual_seed(0)
    t = _transform(min_size=(48, 64, 80)).train()
    shorts = {t([torch.rand(3, 40, 100)])[0].image_sizes[0][0] for _ in range(30)}
    assert shorts == {48, 64, 80}
    assert t.eval()([torch.rand(3, 40, 100)])[0].image_sizes == [(80, 200)]  # the last one
    fixed = _transform(fixed_size=(64, 32)).eval()  # (width, height)
    assert fixed([torch.rand(3, 40, 100)])[0].image_sizes == [(32, 64)]


def test_bad_images_raise_one_line_errors():
    t = _transform()
    with pytest.raises(CnnkitError, match="float"):
        t([torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(CnnkitError, match=r"\(C, H, W\)"):
        t([torch.zeros(1, 3, 8, 8)])

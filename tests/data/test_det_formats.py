"""COCO JSON, PASCAL VOC XML and YOLO txt: round trips on the real raccoon annotations, masks and
keypoints against hand-made ones, and a one-line error (or a skip) for every kind of bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data.det_coco import decode_segmentation, read_coco, write_coco
from cnnkit.data.det_formats import (convert, load_detection, read_voc, read_yolo, write_voc,
                                     write_yolo)
from cnnkit.data.detection import COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

RACCOON = DATASETS / "raccoon"


def _coco(tmp_path, annotations, images=None, categories=None, name="ann.json"):
    data = {"images": images or [{"id": 1, "file_name": "a.png", "width": 7, "height": 5}],
            "annotations": annotations,
            "categories": categories or [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


# --- round trips ---

def test_coco_voc_yolo_coco_keeps_the_raccoon_boxes_and_labels(tmp_path):
    original = read_voc(RACCOON / "annotations")
    assert len(original.images) == 200 and original.num_objects() == 217
    write_coco(original, tmp_path / "a.json")
    coco = read_coco(tmp_path / "a.json")
    write_voc(coco, tmp_path / "voc")
    voc = read_voc(tmp_path / "voc")
    write_yolo(voc, tmp_path / "yolo")
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "raccoon\n"
    yolo = read_yolo(tmp_path / "yolo", images=RACCOON / "images")
    write_coco(yolo, tmp_path / "b.json")
    back = read_coco(tmp_path / "b.json")
    assert back.classes == voc.classes == coco.classes == ("raccoon",)
    by_name = {e.file_name: t for e, t in zip(back.images, back.targets)}
    for entry, t in zip(original.images, original.targets):
        other = by_name[entry.file_name]
        assert torch.equal(other["labels"], t["labels"])
        # YOLO keeps 6 decimals of a fraction of the side: < 0.001 · 2000 px.
        assert torch.allclose(other["boxes"], t["boxes"], atol=2e-3, rtol=0)
    # COCO and VOC hold the corners exactly.
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(coco.targets, voc.targets))
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_fractional_boxes_and_difficult_flags_survive_voc(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 8, "bbox": [0.25, 0.5, 3.5, 2.125]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 1}])
    write_voc(read_coco(path), tmp_path / "voc")
    xml = (tmp_path / "voc" / "a.xml").read_text()
    assert "<xmin>1.25</xmin>" in xml and "<difficult>1</difficult>" in xml
    back = read_voc(tmp_path / "voc")
    assert back.classes == ("cat", "dog")  # the order of classes.txt, not of the objects
    t = back.targets[0]
    assert t["boxes"].tolist() == [[0.25, 0.5, 3.75, 2.625], [1, 1, 3, 3]]
    assert t["labels"].tolist() == [2, 1] and t["iscrowd"].tolist() == [0, 1]


def test_polygon_and_rle_masks_decode_to_the_hand_made_pixels(tmp_path):
    # An L in a 7 × 5 image: row 1, columns 1-3, then column 1 down to row 3 (continuous corners).
    expected = np.zeros((5, 7), np.uint8)
    expected[1, 1:4] = 1
    expected[2:4, 1] = 1
    polygon = [[1, 1, 4, 1, 4, 2, 2, 2, 2, 4, 1, 4]]
    assert np.array_equal(decode_segmentation(polygon, 5, 7), expected)
    # Uncompressed RLE: alternating runs of 0s and 1s down the columns (Fortran order): column
    # 0 and the top of column 1 (6 zeros), rows 1-3 of column 1, then one pixel in columns 2, 3.
    rle = {"size": [5, 7], "counts": [6, 3, 2, 1, 4, 1, 18]}
    assert np.array_equal(decode_segmentation(rle, 5, 7), expected)
    Image.new("RGB", (7, 5)).save(tmp_path / "a.png")
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 3, 3], "segmentation": polygon},
        {"id": 2, "image_id": 1, "category_id": 8, "bbox": [1, 1, 3, 3], "segmentation": rle,
         "iscrowd": 1}])
    ds = load_detection(path, "coco", tmp_path)
    masks = ds.targets[0]["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, 5, 7)
    assert (masks.numpy() == expected).all()
    # cnnkit writes compressed RLE; it reads back to the same pixels.
    write_coco(ds, tmp_path / "out.json")
    written = json.loads((tmp_path / "out.json").read_text())["annotations"][0]
    assert isinstance(written["segmentation"]["counts"], str) and written["area"] == 5
    again = load_detection(tmp_path / "out.json", "coco", tmp_path)
    assert torch.equal(again.targets[0]["masks"], masks)
    assert again.category_ids == [3, 8] and again.targets[0]["iscrowd"].tolist() == [0, 1]


def test_keypoints_survive_a_coco_round_trip(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "p.png")
    kp = np.zeros((17, 3))
    kp[5] = (10.5, 12, 2)   # left shoulder, visible
    kp[6] = (20, 12.25, 1)  # right shoulder, occluded
    categories = [{"id": 1, "name": "person", "keypoints": list(COCO_PERSON_KEYPOINTS),
                   "skeleton": [[6, 7], [6, 8]]}]
    path = _coco(tmp_path, [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [5, 5, 20, 20],
                             "keypoints": kp.flatten().tolist(), "num_keypoints": 2}],
                 images=[{"id": 5, "file_name": "p.png", "width": 40, "height": 30}],
                 categories=categories)
    ds = load_detection(path, "coco", tmp_path)
    assert ds.keypoint_names == COCO_PERSON_KEYPOINTS and ds.skeleton == [(5, 6), (5, 7)]
    assert ds.flip_index[5:7] == [6, 5] and np.allclose(ds.kpt_sigmas, COCO_PERSON_SIGMAS)
    target = ds.targets[0]
    assert target["keypoints"].shape == (1, 17, 3) and target["image_id"] == 5
    assert np.array_equal(target["keypoints"][0].numpy(), kp.astype(np.float32))
    write_coco(ds, tmp_path / "out.json")
    again = load_detection(tmp_path / "out.json", "coco", tmp_path)
    assert torch.equal(again.targets[0]["keypoints"], target["keypoints"])
    assert again.skeleton == ds.skeleton and again.keypoint_names == ds.keypoint_names
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["annotations"][0]["num_keypoints"] == 2
    assert saved["categories"][0]["skeleton"] == [[6, 7], [6, 8]]  # 1-based again


def test_yolo_names_from_data_yaml_and_notes_on_what_cannot_be_kept(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    Image.new("RGB", (100, 50)).save(images / "x.jpg")
    Image.new("RGB", (10, 10)).save(images / "empty.jpg")
    (tmp_path / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    (labels / "x.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.2 0.2\n")
    ann = read_yolo(labels)  # images/: the sibling folder, Ultralytics' layout
    assert ann.classes == ("cat", "dog") and [e.file_name for e in ann.images] == ["empty.jpg",
                                                                                    "x.jpg"]
    assert ann.targets[0]["boxes"].shape == (0, 4)  # no label file: no objects
    assert torch.allclose(ann.targets[1]["boxes"], torch.tensor([[40.0, 15, 60, 35],
                                                                  [0, 0, 20, 10]]))
    assert ann.targets[1]["labels"].tolist() == [2, 1]
    Image.new("RGB", (7, 5)).save(tmp_path / "a.png")
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 3, 3],
                             "segmentation": [[1, 1, 4, 1, 4, 4]], "iscrowd": 1}])
    _, notes = convert(path, "coco", tmp_path / "out", "yolo")
    assert notes == ["instance masks dropped: yolo annotations hold boxes only",
                     "crowd/difficult flags dropped: YOLO txt has no field for them"]


# --- bad input: one line naming the file and the entry, or skipped ---

def test_malformed_json_and_xml_name_the_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(CnnkitError) as err:
        read_coco(tmp_path / "broken.json")
    assert _one_line(err).startswith(f"{tmp_path / 'broken.json'} is not valid JSON (")
    path = _coco(tmp_path, [{"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 2]}])
    with pytest.raises(CnnkitError) as err:
        read_coco(path)
    assert _one_line(err) == ("ann.json, annotation #0 (id 4): an annotation needs image_id, "
                              "category_id and bbox [x, y, w, h]")
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text("<annotation><size><width>9</width>")
    with pytest.raises(CnnkitError) as err:
        read_voc(voc)
    assert _one_line(err).startswith("a.xml: not well-formed XML (")
    (voc / "a.xml").write_text("<annotation><size><width>9</width><height>9</height></size>"
                               "<object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                               "<xmax>4</xmax><ymax>4</ymax></bndbox></object>"
                               "<object><name>a</name></object></annotation>")
    with pytest.raises(CnnkitError) as err:
        read_voc(voc)
    assert _one_line(err).startswith("a.xml, object 2: an <object> needs <name> and <bndbox>")
    ann = read_voc(voc, skip_bad=True)
    assert ann.num_objects() == 1 and ann.skipped[0].startswith("a.xml, object 2:")


@pytest.mark.parametrize("annotation, message", [
    ({"bbox": [5, 1, 4, 2]}, "ann.json, annotation #1 (id 2): box (x1, y1, x2, y2) = "
                             "(5, 1, 9, 3) lies outside the 7×5 image"),
    ({"bbox": [1, 1, 0, 2]}, "ann.json, annotation #1 (id 2): box (x1, y1, x2, y2) = "
                             "(1, 1, 1, 3) has non-positive size (0 × 2 px)"),
    ({"category_id": 99}, "ann.json, annotation #1 (id 2): unknown category 99; known: 3, 8"),
    ({"image_id": 42}, "ann.json, annotation #1 (id 2): annotation for a missing image (42 is "
                       "not among the images)"),
    ({"segmentation": {"size": [6, 7], "counts": [42]}},
     "ann.json, annotation #1 (id 2): mask is 7×6 (RLE size [h, w] = [6, 7]) but the image is "
     "7×5"),
    ({"segmentation": [[1, 1, 40, 1, 40, 3]]},
     "ann.json, annotation #1 (id 2): polygon lies outside the 7×5 image"),
])
def test_bad_coco_entries_are_one_line_or_skipped(tmp_path, annotation, message):
    good = {"id": 1, "image_id": 1, "category_id": 8, "bbox": [1, 1, 2, 2]}
    path = _coco(tmp_path, [good, {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2],
                                   **annotation}])
    with pytest.raises(CnnkitError) as err:
        read_coco(path)
    assert _one_line(err) == message
    ann = read_coco(path, skip_bad=True)
    assert ann.skipped == [message] and ann.targets[0]["labels"].tolist() == [2]


def test_bad_voc_and_yolo_entries_name_file_and_entry(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "b.xml").write_text("<annotation><filename>b.jpg</filename><size><width>10</width>"
                               "<height>8</height></size><object><name>cow</name><bndbox>"
                               "<xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox>"
                               "</object></annotation>")
    with pytest.raises(CnnkitError) as err:
        read_voc(voc, classes=["cat"])
    assert _one_line(err) == "b.xml, object 1: unknown category 'cow'; known: 'cat'"
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.new("RGB", (10, 10)).save(labels / "a.png")
    (labels / "classes.txt").write_text("cat\n")
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 oops 0.2 0.2\n")
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(CnnkitError) as err:
        read_yolo(labels)
    assert _one_line(err) == ("a.txt, line 2: expected `class cx cy w h` (an integer, four "
                              "numbers), got '0 0.5 oops 0.2 0.2'")
    ann = read_yolo(labels, skip_bad=True)
    assert ann.num_objects() == 1 and len(ann.skipped) == 2
    assert ann.skipped[1] == ("ghost.txt, line 1: annotation for a missing image ('ghost' is "
                              "not among the images)")


def test_convert_reads_and_writes_every_pair(tmp_path):
    src = tmp_path / "voc"
    write_voc(read_voc(RACCOON / "annotations", files=["raccoon-1.jpg", "raccoon-10.jpg"]), src)
    for fmt, dst in (("coco", tmp_path / "c.json"), ("yolo", tmp_path / "y"),
                     ("voc", tmp_path / "v")):
        ann, notes = convert(src, "voc", dst, fmt)
        assert len(ann.images) == 2 and notes == []
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == ["classes.txt",
                                                                   "raccoon-1.txt",
                                                                   "raccoon-10.txt"]
    with pytest.raises(CnnkitError, match="unknown annotation format 'kitti'"):
        convert(src, "voc", tmp_path / "k", "kitti")

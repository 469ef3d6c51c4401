"""`cnnkit convert` as a user runs it: the real raccoon annotations through the formats, and one
line on stderr (exit 2) for a malformed file."""
import json

from tests.cli._run import assert_one_line_error, cnnkit
from tests.conftest import DATASETS

RACCOON = DATASETS / "raccoon"


def test_voc_to_coco_to_yolo(tmp_path):
    coco = tmp_path / "raccoon.json"
    proc = cnnkit("convert", RACCOON / "annotations", coco, "--from", "voc", "--to", "coco")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("(coco): 200 images, 217 objects, 1 class")
    data = json.loads(coco.read_text())
    assert len(data["images"]) == 200 and len(data["annotations"]) == 217
    assert data["categories"] == [{"id": 1, "name": "raccoon", "supercategory": "raccoon"}]
    first = next(a for a in data["annotations"]
                 if data["images"][a["image_id"] - 1]["file_name"] == "raccoon-1.jpg")
    assert first["bbox"] == [80, 87, 442, 321]  # VOC 81 88 522 408, 1-based corners

    yolo = tmp_path / "labels"
    proc = cnnkit("convert", coco, yolo, "--from", "coco", "--to", "yolo")
    assert proc.returncode == 0, proc.stderr
    # Class 0, then centre and size as fractions of the 650×417 image.
    expected = [301 / 650, 247.5 / 417, 442 / 650, 321 / 417]
    assert (yolo / "raccoon-1.txt").read_text() == "0 " + " ".join(f"{v:.6f}" for v in
                                                                    expected) + "\n"
    back = tmp_path / "back.json"
    proc = cnnkit("convert", yolo, back, "--from", "yolo", "--to", "coco",
                  "--images", RACCOON / "images")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(back.read_text())["annotations"]) == 217


def test_malformed_files_exit_2_with_one_line(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [], "annotations": [}')
    proc = cnnkit("convert", broken, tmp_path / "out", "--from", "coco", "--to", "voc")
    assert_one_line_error(proc, "cnnkit convert: error:", "broken.json is not valid JSON")
    assert not (tmp_path / "out").exists()

    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "good.xml").write_text((RACCOON / "annotations" / "raccoon-1.xml").read_text())
    (voc / "bad.xml").write_text("<annotation><object><name>raccoon</name></annotation>")
    proc = cnnkit("convert", voc, tmp_path / "c.json", "--from", "voc", "--to", "coco")
    assert_one_line_error(proc, "bad.xml: not well-formed XML")
    proc = cnnkit("convert", voc, tmp_path / "c.json", "--from", "voc", "--to", "coco",
                  "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("skipped: bad.xml: not well-formed XML")
    assert "1 images, 1 objects" in proc.stdout and "1 entries skipped" in proc.stdout

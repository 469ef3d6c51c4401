"""The three detection annotation formats people have, read and written, and `convert`.

* COCO JSON (https://cocodataset.org/#format-data): one file of images, annotations (boxes,
  masks, keypoints) and categories; read and written by det_coco.py (read_coco, write_coco).
* PASCAL VOC XML (Everingham et al. 2010, the VOC devkit): one file per image with <filename>,
  <size> and an <object> (<name>, <difficult>, <bndbox> xmin ymin xmax ymax) per object. The
  corners are 1-based pixel indices, so x1 = xmin - 1, x2 = xmax (detectron2's
  data/datasets/pascal_voc.py does the same). "difficult" is kept as iscrowd: COCO's evaluation
  then ignores the object, as VOC's does. Box-only: masks and keypoints are not written.
* YOLO txt (Darknet; Ultralytics' labels/): one `<stem>.txt` per image, a line `class cx cy w h`
  per object, 0-based class and coordinates normalised by the image size; an image without a
  file has no objects. Class names: classes.txt (one per line, as LabelImg writes it; also
  obj.names) or data.yaml's `names`; cnnkit writes classes.txt. Box-only, like VOC.
* Oxford-IIIT Pet (Parkhi et al. 2012; read only): list files and trimaps, one instance per image.

Readers return `Annotations` (checked by det_annotations.assemble: one-line errors naming the
file and the entry, or skipped with skip_bad); `from_annotations` then decodes the images into a
DetectionDataset. Writers replace each file atomically (a temporary file, then os.replace).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml
from PIL import Image

from cnnkit.data.det_annotations import Annotations, ImageEntry, ObjectEntry, Problems, assemble
from cnnkit.data.det_coco import read_coco, write_coco
from cnnkit.data.detection import DetectionDataset, from_annotations
from cnnkit.data.imagefolder import IMAGE_EXTENSIONS
from cnnkit.utils import CnnkitError, atomic_write_text

FORMATS = ("coco", "voc", "yolo")
NAMES_FILES = ("classes.txt", "obj.names")  # YOLO class names, one per line


# --- PASCAL VOC XML ---

def read_voc(folder: str | Path, *, files: Sequence[str] | None = None,
             classes: Sequence[str] | None = None, images: str | Path | None = None,
             skip_bad: bool = False) -> Annotations:
    """The XML files in `folder` (or the `files` named, with or without .xml), sorted by name.

    classes: the class order (labels 1..K); None: folder/classes.txt where present, else the
    names found, sorted. images: the image folder, asked for sizes an XML leaves out."""
    folder, problems = Path(folder), Problems(skip_bad)
    if not folder.is_dir():
        raise CnnkitError(f"VOC annotation folder {folder} does not exist")
    paths = (sorted(folder.glob("*.xml")) if files is None else
             [folder / (f if f.endswith(".xml") else Path(f).stem + ".xml") for f in files])
    if not paths:
        raise CnnkitError(f"{folder} holds no .xml files; expected one PASCAL VOC file per image")
    entries, objects = {}, []
    for i, path in enumerate(paths):
        try:
            entries[i], found = _parse_voc(path, i + 1, images, problems)
        except ValueError as err:  # the whole file is unusable
            problems(path.name, str(err))
            continue
        objects += [ObjectEntry(i, *o) for o in found]
    if classes is None:
        listed = folder / "classes.txt"
        classes = (_read_names(listed) if listed.is_file()
                   else sorted({o.category for o in objects}))
    labels = {c: label for label, c in enumerate(classes, 1)}
    return assemble(entries, objects, labels, classes=classes,
                    category_ids=list(range(1, len(classes) + 1)), problems=problems)


def _parse_voc(path: Path, image_id: int, images: Path | None, problems: Problems):
    """(ImageEntry, [(name, box, where, difficult)]) of one XML file; ValueError saying why the
    file is unusable. A bad <object> goes to `problems` (and is left out under skip_bad)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ValueError(f"annotation file {path} not found") from None
    except ET.ParseError as err:
        raise ValueError(f"not well-formed XML ({err})") from None
    if root.tag != "annotation":
        raise ValueError(f"the root element is <{root.tag}>, not <annotation>")
    file_name = (root.findtext("filename") or "").strip() or path.stem + ".jpg"
    try:
        width, height = (int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
    except ValueError:
        width = height = 0
    if (width < 1 or height < 1) and images is not None and (Path(images) / file_name).is_file():
        try:
            with Image.open(Path(images) / file_name) as img:
                width, height = img.size  # the header only: nothing decoded
        except OSError:
            pass  # reported below, as a missing size
    if width < 1 or height < 1:
        raise ValueError("no <size><width>/<height>; pass the images folder to read the size "
                         "from the image")
    found = []
    for n, obj in enumerate(root.iter("object"), 1):
        where = f"{path.name}, object {n}"
        try:
            corners = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            name = obj.findtext("name").strip()
        except (TypeError, ValueError, AttributeError):
            problems(where, "an <object> needs <name> and <bndbox> with numeric xmin, ymin, "
                            "xmax, ymax")
            continue
        # A missing <difficult> means 0, as in the VOC devkit's reader.
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        # 1-based inclusive pixel indices → continuous corners.
        box = (corners[0] - 1, corners[1] - 1, corners[2], corners[3])
        found.append((name, box, where, difficult))
    return ImageEntry(file_name, height, width, image_id, path.name), found


def write_voc(ann: Annotations | DetectionDataset, folder: str | Path) -> Path:
    """One XML file per image (`<stem>.xml`) and classes.txt (the class order) in `folder`."""
    ann = ann.annotations() if isinstance(ann, DetectionDataset) else ann
    folder = Path(folder)
    for entry, t in zip(_unique_stems(ann), ann.targets):
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = entry.file_name
        size = ET.SubElement(root, "size")
        for key, value in (("width", entry.width), ("height", entry.height), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        ET.SubElement(root, "segmented").text = "0"
        for box, label, crowd in zip(t["boxes"].double().tolist(), t["labels"].tolist(),
                                     t["iscrowd"].tolist()):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = ann.classes[label - 1]
            for key, value in (("pose", "Unspecified"), ("truncated", "0"),
                               ("difficult", str(int(bool(crowd))))):
                ET.SubElement(obj, key).text = value
            bndbox = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"),
                                  (box[0] + 1, box[1] + 1, box[2], box[3])):
                ET.SubElement(bndbox, key).text = _number(value)
        ET.indent(root, space="\t")
        atomic_write_text(folder / f"{Path(entry.file_name).stem}.xml",
                          ET.tostring(root, encoding="unicode") + "\n")
    atomic_write_text(folder / "classes.txt", "".join(f"{c}\n" for c in ann.classes))
    return folder


def _number(value: float) -> str:
    """Integers as integers (what VOC tools expect), else enough digits to read back the same
    float32."""
    return str(int(round(value))) if abs(value - round(value)) < 1e-6 else f"{value:.9g}"


def _unique_stems(ann: Annotations) -> list[ImageEntry]:
    """The image entries, refusing two that would write the same `<stem>` file."""
    seen: dict[str, str] = {}
    for entry in ann.images:
        stem = Path(entry.file_name).stem
        if stem in seen:
            raise CnnkitError(f"{seen[stem]} and {entry.file_name} would both write {stem}.*; "
                              f"VOC and YOLO keep one annotation file per image stem")
        seen[stem] = entry.file_name
    return ann.images


# --- YOLO txt ---

def read_yolo(folder: str | Path, *, images: str | Path | None = None,
              classes: Sequence[str] | None = None, skip_bad: bool = False) -> Annotations:
    """`<stem>.txt` label files in `folder` for the images in `images` (default: the folder
    itself if it holds images, else its sibling images/, Ultralytics' layout)."""
    folder, problems = Path(folder), Problems(skip_bad)
    if not folder.is_dir():
        raise CnnkitError(f"YOLO label folder {folder} does not exist")
    image_dir = Path(images) if images is not None else _yolo_images(folder)
    classes = list(classes) if classes is not None else _yolo_names(folder)
    if not image_dir.is_dir():
        raise CnnkitError(f"image folder {image_dir} does not exist")
    files = {p.stem: p for p in sorted(image_dir.iterdir())
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}
    entries, objects = {}, []
    for i, (stem, path) in enumerate(files.items()):
        try:
            with Image.open(path) as img:
                width, height = img.size  # the header only
        except OSError as err:
            problems(path.name, f"cannot read the image size ({err})")
            continue
        entries[stem] = ImageEntry(path.name, height, width, i + 1, path.name)
    for txt in sorted(folder.glob("*.txt")):
        if txt.name in NAMES_FILES:
            continue
        entry = entries.get(txt.stem)
        for number, line in enumerate(txt.read_text().splitlines(), 1):
            where, values = f"{txt.name}, line {number}", line.split()
            if not values:
                continue
            try:
                cls, cx, cy, w, h = int(values[0]), *(float(v) for v in values[1:])
            except ValueError:
                problems(where, f"expected `class cx cy w h` (an integer, four numbers), got "
                                f"'{line.strip()}'")
                continue
            # Normalised centre and size → corners in pixels (an orphan file's line is
            # refused by assemble before its box matters).
            size = (entry.width, entry.height) if entry else (1, 1)
            box = ((cx - w / 2) * size[0], (cy - h / 2) * size[1],
                   (cx + w / 2) * size[0], (cy + h / 2) * size[1])
            objects.append(ObjectEntry(txt.stem, cls, box, where))
    labels = {c: c + 1 for c in range(len(classes))}
    return assemble(entries, objects, labels, classes=classes,
                    category_ids=list(range(1, len(classes) + 1)), problems=problems)


def _yolo_images(folder: Path) -> Path:
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
        return folder  # LabelImg saves the labels beside the images
    sibling = folder.parent / "images"
    if sibling.is_dir():
        return sibling
    raise CnnkitError(f"no images for the YOLO labels in {folder}: YOLO boxes are fractions of "
                      f"the image size; pass the image folder (--images)")


def _yolo_names(folder: Path) -> list[str]:
    """Class names from classes.txt / obj.names, or data.yaml's names, beside the labels or up
    to two folders above (Ultralytics keeps data.yaml at the data set's root)."""
    for place in (folder, folder.parent, folder.parent.parent):
        for name in NAMES_FILES:
            if (place / name).is_file():
                return _read_names(place / name)
        if (place / "data.yaml").is_file():
            return _yaml_names(place / "data.yaml")
    raise CnnkitError(f"no class names for the YOLO labels in {folder}: add classes.txt (one "
                      f"name per line) or data.yaml (names: [...])")


def _read_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise CnnkitError(f"{path} lists no class names")
    return names


def _yaml_names(path: Path) -> list[str]:
    try:
        names = (yaml.safe_load(path.read_text()) or {}).get("names")
    except (yaml.YAMLError, AttributeError) as err:
        raise CnnkitError(f"{path} is not a YAML mapping with names ({err})") from None
    if isinstance(names, dict):  # Ultralytics' {0: person, 1: bicycle, ...}
        if sorted(names) != list(range(len(names))):
            raise CnnkitError(f"{path}: names must be numbered 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise CnnkitError(f"{path} has no `names:` list of class names")
    return [str(n) for n in names]


def write_yolo(ann: Annotations | DetectionDataset, folder: str | Path) -> Path:
    """`<stem>.txt` per image (empty for an image without objects) and classes.txt."""
    ann = ann.annotations() if isinstance(ann, DetectionDataset) else ann
    folder = Path(folder)
    for entry, t in zip(_unique_stems(ann), ann.targets):
        lines = []
        for (x1, y1, x2, y2), label in zip(t["boxes"].double().tolist(), t["labels"].tolist()):
            w, h = entry.width, entry.height
            lines.append(f"{label - 1} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                         f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
        atomic_write_text(folder / f"{Path(entry.file_name).stem}.txt", "".join(lines))
    atomic_write_text(folder / "classes.txt", "".join(f"{c}\n" for c in ann.classes))
    return folder


# --- Oxford-IIIT Pet trimaps ---

def read_oxford_pets(folder: str | Path, list_file: str, *, skip_bad: bool = False
                     ) -> Annotations:
    """One instance per image of annotations/`list_file` ("Image CLASS-ID SPECIES BREED-ID"
    lines), from its trimap (1 pet, 2 background, 3 border): mask = trimap != 2, the pet with
    its border band, box = the mask's extent, as TensorFlow's object-detection
    create_pet_tf_record.py derives them. Class = the breed, the file name before its last '_';
    classes in CLASS-ID order (from list.txt where present), the CLASS-IDs as category ids."""
    folder, problems = Path(folder), Problems(skip_bad)
    rows = {}
    for list_name in dict.fromkeys(("list.txt", list_file)):
        path = folder / "annotations" / list_name
        if not path.is_file():
            raise CnnkitError(f"Oxford-IIIT Pet list {path} not found")
        lines = path.read_text().splitlines()
        rows[list_name] = [(n, line.split()) for n, line in enumerate(lines, 1)
                           if line.strip() and not line.startswith("#")]
    breeds: dict[str, int] = {}
    for n, (stem, class_id, *_) in rows["list.txt"] + rows[list_file]:
        if breeds.setdefault(stem.rsplit("_", 1)[0], int(class_id)) != int(class_id):
            raise CnnkitError(f"{list_file}, line {n}: {stem} has CLASS-ID {class_id}, another "
                              f"image of its breed {breeds[stem.rsplit('_', 1)[0]]}")
    classes = sorted(breeds, key=breeds.get)
    entries, objects = {}, []
    for i, (n, (stem, *_)) in enumerate(rows[list_file]):
        where, trimap_path = f"{list_file}, line {n} ({stem})", \
            folder / "annotations" / "trimaps" / f"{stem}.png"
        try:
            with Image.open(trimap_path) as img:
                trimap = np.asarray(img)
        except OSError as err:
            problems(where, f"cannot read its trimap {trimap_path} ({err})")
            continue
        mask = (trimap != 2).astype(np.uint8)
        ys, xs = np.nonzero(mask)
        if not len(xs):
            problems(where, f"its trimap {trimap_path} marks no pet pixel")
            continue
        entries[i] = ImageEntry(f"{stem}.jpg", mask.shape[0], mask.shape[1], i + 1, where)
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        objects.append(ObjectEntry(i, stem.rsplit("_", 1)[0], box, where, mask=mask))
    labels = {c: label for label, c in enumerate(classes, 1)}
    return assemble(entries, objects, labels, classes=classes,
                    category_ids=[breeds[c] for c in classes], problems=problems)


# --- any format ---

def read_annotations(src: str | Path, fmt: str, *, images: str | Path | None = None,
                     skip_bad: bool = False) -> Annotations:
    """COCO (a JSON file), VOC (a folder of XML) or YOLO (a folder of txt) annotations."""
    if fmt == "coco":
        return read_coco(src, skip_bad=skip_bad)
    if fmt == "voc":
        return read_voc(src, images=images, skip_bad=skip_bad)
    if fmt == "yolo":
        return read_yolo(src, images=images, skip_bad=skip_bad)
    raise CnnkitError(f"unknown annotation format '{fmt}'; choose from {', '.join(FORMATS)}")


def write_annotations(ann: Annotations | DetectionDataset, dst: str | Path, fmt: str) -> Path:
    writers = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}
    if fmt not in writers:
        raise CnnkitError(f"unknown annotation format '{fmt}'; choose from {', '.join(FORMATS)}")
    dst = Path(dst)
    kind = "JSON file" if fmt == "coco" else "folder"
    if dst.exists() and dst.is_dir() != (fmt != "coco"):
        raise CnnkitError(f"{dst} exists and is not a {kind}; {fmt} annotations go into a {kind}")
    return writers[fmt](ann, dst)


def convert(src: str | Path, src_format: str, dst: str | Path, dst_format: str, *,
            images: str | Path | None = None, skip_bad: bool = False
            ) -> tuple[Annotations, list[str]]:
    """Read `src` in one format, write `dst` in another: (what was read, notes on what the
    target format cannot hold)."""
    ann = read_annotations(src, src_format, images=images, skip_bad=skip_bad)
    notes = []
    if dst_format in ("voc", "yolo"):
        for key, what in (("masks", "instance masks"), ("keypoints", "keypoints")):
            if any(key in t for t in ann.targets):
                notes.append(f"{what} dropped: {dst_format} annotations hold boxes only")
        if dst_format == "yolo" and any(int(t["iscrowd"].sum()) for t in ann.targets):
            notes.append("crowd/difficult flags dropped: YOLO txt has no field for them")
    write_annotations(ann, dst, dst_format)
    return ann, notes


def load_detection(src: str | Path, fmt: str, images: str | Path, *, name: str = "detection",
                   skip_bad: bool = False, quiet: bool = True) -> DetectionDataset:
    """Annotations in any format plus their images, decoded into a DetectionDataset."""
    ann = read_annotations(src, fmt, images=images, skip_bad=skip_bad)
    return from_annotations(ann, images, name=name, skip_bad=skip_bad, quiet=quiet)

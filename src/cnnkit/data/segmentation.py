"""Segmentation data: images with a class index per pixel, decoded once into memory.

`SegmentationDataset` holds uint8 images (N, C, H, W) and int64 masks (N, H, W) whose void
pixels carry `ignore_index`. `load_segmentation_folder` reads the user's format:

    ROOT/images/<stem>.png|jpg|...   ROOT/masks/<stem>.png        (the same stems)
    ROOT/classes.txt   optional: one class per line, `name` or `index name [r g b]`
    ROOT/palette.txt   colour masks: one `R G B name` line per class (or palette.json)

with ROOT/train and ROOT/test (or val) as the splits when they exist, each holding images/ and
masks/; otherwise 80/20 with seed 0. A class named void (or ignore, unlabelled) marks the value or
colour of void pixels. The registered sets (isbi2012, oxford-pets-seg, camvid: datasets.py) go
through the same `pair_files` → `assemble` path with their own `LabelMap`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cnnkit.data.array_dataset import channel_stats, convert_channels
from cnnkit.data.imagefolder import IMAGE_EXTENSIONS, _pixels
from cnnkit.utils import CnnkitError, suggest

IGNORE_INDEX = 255  # void pixels, as in PASCAL VOC's masks; skipped by the losses and metrics
VOID_NAMES = {"void", "ignore", "unlabelled", "unlabeled"}
TEST_FRACTION, SPLIT_SEED = 0.2, 0
_LOSSY = {".jpg", ".jpeg", ".webp"}  # JPEG blurs label values at every edge: never a mask
_FORMAT = "ROOT/images/* and ROOT/masks/* with the same stems (or ROOT/train/ and ROOT/test/ so)"


@dataclass
class SegmentationDataset:
    """A segmentation data set decoded once into memory.

    images: uint8 (N, C, H, W); masks: int64 (N, H, W) with values 0..K-1, or `ignore_index` for
    void pixels; classes[k] names class k. mean/std: per-channel statistics on the 0..1 scale
    (published values, else the training images'). files: the image stems, for messages and
    figure titles.
    """

    images: torch.Tensor
    masks: torch.Tensor
    classes: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ignore_index: int = IGNORE_INDEX
    files: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        n, channels, height, width = self.images.shape
        if tuple(self.masks.shape) != (n, height, width):
            raise ValueError(f"masks must be (N, H, W) = {(n, height, width)}, got "
                             f"{tuple(self.masks.shape)}")
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values, got "
                             f"{len(self.mean)}/{len(self.std)}")
        self.images = self.images.contiguous()
        self.masks = self.masks.to(torch.int64).contiguous()
        labelled = self.masks[self.masks != self.ignore_index]
        low, high = (int(labelled.min()), int(labelled.max())) if len(labelled) else (0, 0)
        if not 0 <= low <= high < len(self.classes):
            raise ValueError(f"mask values must be 0..{len(self.classes) - 1} or "
                             f"{self.ignore_index}, found {low}..{high}")
        self.files = list(self.files) or [str(i) for i in range(n)]  # names for figure titles
        if len(self.files) != n:
            raise ValueError(f"{len(self.files)} file names for {n} images")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> "SegmentationDataset":
        """The images and masks at `index` (a copy), with the same classes and normalisation."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return replace(self, images=self.images[index].contiguous(),
                       masks=self.masks[index].contiguous(),
                       files=[self.files[i] for i in index.tolist()])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def class_counts(self) -> list[int]:
        """Labelled pixels per class (void pixels not counted)."""
        labelled = self.masks[self.masks != self.ignore_index]
        return torch.bincount(labelled, minlength=len(self.classes)).tolist()


# --- mask values → classes ---

@dataclass(frozen=True)
class LabelMap:
    """How the pixel values of a mask file become class indices (or the ignore index).

    index: grey or palette-index value → class; colour: packed 0xRRGGBB → class, for RGB masks
    (None: RGB masks are an error). `palette` names the palette file, for messages.
    """

    index: dict[int, int]
    colour: dict[int, int] | None = None
    palette: str | None = None

    def apply(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """int64 (H, W) class indices of `raw` (read_mask's (H, W) values or (H, W, 3) RGB)."""
        if raw.ndim == 3:
            if self.colour is None:
                raise _colour_mask_error(path)
            rgb = raw.astype(np.int64)
            packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W)
            # A handful of distinct colours: look each up once, not per pixel.
            found, inverse = np.unique(packed, return_inverse=True)
            mapped = np.array([self.colour.get(int(c), -1) for c in found], dtype=np.int64)
            if (mapped < 0).any():
                bad = int(found[mapped < 0][0])
                raise CnnkitError(f"mask {path} has {self._describe(bad, False)}")
            return mapped[inverse.reshape(packed.shape)]
        # Grey or palette-index values are small integers: one lookup table, one gather.
        if raw.size and raw.min() < 0:
            raise CnnkitError(f"mask {path} has {self._describe(int(raw.min()), True)}")
        table = np.full(max(int(raw.max(initial=0)), *self.index) + 1, -1, dtype=np.int64)
        table[list(self.index)] = list(self.index.values())
        labels = table[raw]
        if (labels < 0).any():
            raise CnnkitError(f"mask {path} has {self._describe(int(raw[labels < 0][0]), True)}")
        return labels

    def _describe(self, value: int, index: bool) -> str:
        if not index:
            rgb = (value >> 16, (value >> 8) & 255, value & 255)
            return f"colour {rgb}, which no line of the palette {self.palette} gives"
        keys = sorted(k for k, v in self.index.items() if v != IGNORE_INDEX)
        void = sorted(k for k, v in self.index.items() if v == IGNORE_INDEX)
        classes = (f"0..{len(keys) - 1}" if keys == list(range(len(keys)))
                   else ", ".join(map(str, keys)))
        return (f"label value {value}; expected a class value ({classes}) or void "
                f"({', '.join(map(str, void))})")


def _colour_mask_error(path: Path) -> CnnkitError:
    return CnnkitError(f"mask {path} is a colour (RGB) image; add ROOT/palette.txt with one "
                       f"`R G B name` line per class, or save the masks as index PNGs (one class "
                       f"number per pixel)")


def index_map(num_classes: int) -> LabelMap:
    """Values 0..K-1 are the classes themselves; IGNORE_INDEX is void."""
    return LabelMap({**{k: k for k in range(num_classes)}, IGNORE_INDEX: IGNORE_INDEX})


def read_mask(path: Path) -> np.ndarray:
    """A mask file's raw values: int64 (H, W) for grey/index masks, uint8 (H, W, 3) for colour."""
    return _mask_pixels(_open(path, "mask"))


def _open(path: Path, what: str) -> Image.Image:
    """The decoded file; a missing or broken one is a one-line CnnkitError naming it."""
    if what == "mask" and path.suffix.lower() in _LOSSY:
        raise CnnkitError(f"mask {path} is lossy ({path.suffix}): compression changes the label "
                          f"values at every edge; save masks as PNG")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise CnnkitError(f"{what} {path} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CnnkitError(f"cannot decode {what} {path} ({err}); remove or replace the file") \
            from None


def _mask_pixels(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        return np.asarray(img.convert("RGB"))
    if img.mode in ("LA", "PA"):  # a transparency channel carries no labels
        img = img.getchannel(0)
    # L, P (palette indices, as PASCAL VOC stores masks), 1, I, I;16: the values as stored.
    return np.asarray(img).astype(np.int64)


def _shorter_side(img: Image.Image, size: int, resample: int) -> Image.Image:
    """The shorter side scaled to `size`, then the centre size × size crop: the aspect ratio is
    kept (torchvision's Resize(size) + CenterCrop(size))."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.resize((nw, nh), resample).crop((left, top, left + size, top + size))


# --- finding and decoding pairs ---

def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            if path.stem in found:
                raise CnnkitError(f"{found[path.stem]} and {path} share the stem '{path.stem}'; "
                                  f"keep one of them")
            found[path.stem] = path
    return found


def pair_files(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by stem, in sorted order; an image without a mask raises."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise CnnkitError(f"{folder} does not exist; expected {_FORMAT}")
    # A mask without an image is left alone (harmless); an image without a mask is an error.
    images, masks = _by_stem(images_dir), _by_stem(masks_dir)
    if not images:
        raise CnnkitError(f"no images found in {images_dir}; expected {_FORMAT}")
    missing = [path for stem, path in images.items() if stem not in masks]
    if missing:
        more = f"; {len(missing) - 1} more images lack one" if len(missing) > 1 else ""
        raise CnnkitError(f"image {missing[0]} has no mask (expected {masks_dir}/"
                          f"{missing[0].stem}.png){more}")
    return [(path, masks[stem]) for stem, path in images.items()]


def decode_pairs(pairs: list[tuple[Path, Path]], label_map: LabelMap, *,
                 image_size: int | None = None, channels: int | None = None, quiet: bool = True,
                 desc: str = "decoding") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and int64 masks (N, H, W) of `pairs`.

    image_size: the shorter side of image and mask scaled to it, then the centre square (image:
    PIL's BILINEAR, which low-pass filters when shrinking, i.e. antialiased; mask: NEAREST, so no
    new labels). Without it every image must have the first one's size. channels None: the first
    image's (grey 1 or RGB 3), the others converted to it.
    """
    if image_size is not None and image_size < 1:
        raise CnnkitError(f"image_size must be a positive number of pixels, got {image_size}")
    if channels not in (None, 1, 3):
        raise CnnkitError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    # Per file only PIL and numpy (single-threaded); torch once on the stack: small tensor ops
    # per image stall on the intra-op thread pool of a busy 2-core machine.
    images, masks = [], []
    for image_path, mask_path in tqdm(pairs, desc=desc, unit="img", disable=quiet, leave=False):
        image, mask = _open(image_path, "image"), _open(mask_path, "mask")
        if mask.size != image.size:
            raise CnnkitError(f"mask {mask_path} is {mask.size[0]}×{mask.size[1]} but its image "
                              f"{image_path} is {image.size[0]}×{image.size[1]}; a mask must "
                              f"have its image's size")
        if image_size is not None:
            # PIL resizes palette images by NEAREST whatever it is asked: give it colours first.
            image = image.convert("RGBA") if image.mode == "P" else image
            image = _shorter_side(image, image_size, Image.BILINEAR)
            mask = _shorter_side(mask, image_size, Image.NEAREST)
        pixels = _pixels(image)  # (H, W) grey or (H, W, 3) RGB
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels  # (H, W, C)
        channels = channels or pixels.shape[2]
        if pixels.shape[2] != channels:
            # PIL's buffer is read-only; torch wants a writable array.
            converted = convert_channels(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None],
                                         channels)
            pixels = converted[0].permute(1, 2, 0).numpy()  # (H, W, channels)
        if images and pixels.shape != images[0].shape:
            raise CnnkitError(f"{image_path} is {pixels.shape[1]}×{pixels.shape[0]} but "
                              f"{pairs[0][0]} is {images[0].shape[1]}×{images[0].shape[0]}; pass "
                              f"image_size (--image-size) to resize them all")
        images.append(pixels)
        masks.append(label_map.apply(_mask_pixels(mask), mask_path))
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (N, C, H, W) view
    return stacked.contiguous(), torch.from_numpy(np.stack(masks))  # masks (N, H, W)


# Training-set statistics by (training image files, image_size, channels): loading the test split
# needs them too, and decoding the training images again for each load would double the time.
_STATS: dict[tuple, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def assemble(pairs: list[tuple[Path, Path]], train_pairs: list[tuple[Path, Path]],
             label_map: LabelMap, *, name: str, classes: list[str], image_size: int | None = None,
             channels: int | None = None, mean: tuple[float, ...] | None = None,
             std: tuple[float, ...] | None = None, quiet: bool = True) -> SegmentationDataset:
    """Decode `pairs` into a SegmentationDataset; mean/std None: those of `train_pairs`' images."""
    images, masks = decode_pairs(pairs, label_map, image_size=image_size, channels=channels,
                                 quiet=quiet)
    if mean is None or std is None:
        key = (tuple(str(image) for image, _ in train_pairs), image_size, images.shape[1])
        if key not in _STATS:
            train_images = images if pairs == train_pairs else decode_pairs(
                train_pairs, label_map, image_size=image_size, channels=images.shape[1],
                quiet=quiet, desc="decoding train (statistics)")[0]
            _STATS[key] = channel_stats(train_images)
        mean, std = _STATS[key]
    return SegmentationDataset(images, masks, list(classes), name, mean, std, IGNORE_INDEX,
                               files=[image.stem for image, _ in pairs])


# --- the user's folder ---

def load_segmentation_folder(root: str | Path, split: str = "train", *,
                             image_size: int | None = None, channels: int | None = None,
                             num_classes: int | None = None, palette: str | Path | None = None,
                             quiet: bool = True) -> SegmentationDataset:
    """Decode split `split` ("train" or "test") of a folder in cnnkit's segmentation format.

    image_size: resize every image and mask (shorter side, then centre crop) to a square of this
    side; None keeps the native size, which must then be the same for all. channels: 1 or 3
    (None: the first training image's). num_classes: K, checked against classes.txt or the
    palette where present, else taken from the largest training label (+1). palette: a palette
    file to use instead of ROOT/palette.txt or ROOT/palette.json.
    """
    root = Path(root).expanduser()
    if split not in ("train", "test"):
        raise suggest(split, ("train", "test"), "split")
    if not root.is_dir():
        raise CnnkitError(f"segmentation folder {root} does not exist; expected {_FORMAT}")
    if (root / "train").is_dir():
        test_root = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
        if test_root is None:
            raise CnnkitError(f"{root} has train/ but neither test/ nor val/; add one, or put "
                              f"images/ and masks/ directly in {root} for an automatic 80/20 split")
        train_pairs = pair_files(root / "train" / "images", root / "train" / "masks")
        pairs = train_pairs if split == "train" else pair_files(test_root / "images",
                                                                 test_root / "masks")
    else:
        every = pair_files(root / "images", root / "masks")
        # A private generator: the split depends only on the file names and the seed.
        order = torch.randperm(len(every), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_test = int(len(every) * TEST_FRACTION + 0.5)
        train_pairs = [every[i] for i in sorted(order[n_test:].tolist())]
        test_pairs = [every[i] for i in sorted(order[:n_test].tolist())]
        pairs = train_pairs if split == "train" else test_pairs
        if not pairs:
            raise CnnkitError(f"{root} has {len(every)} image(s): too few for a test split "
                              f"({TEST_FRACTION:.0%}); add more, or ROOT/train and ROOT/test")
    classes, label_map = _folder_classes(root, palette, num_classes, train_pairs)
    return assemble(pairs, train_pairs, label_map, name=root.name, classes=classes,
                    image_size=image_size, channels=channels, quiet=quiet)


def _folder_classes(root: Path, palette: str | Path | None, num_classes: int | None,
                    train_pairs: list[tuple[Path, Path]]) -> tuple[list[str], LabelMap]:
    """The class names and the LabelMap of a folder: from its palette, classes.txt, or its masks."""
    palette_path = Path(palette) if palette is not None else next(
        (p for p in (root / "palette.txt", root / "palette.json") if p.is_file()), None)
    classes_path = root / "classes.txt"
    entries = None  # (raw value, name, colour or None) per line
    if palette_path is not None:
        entries = read_class_file(palette_path, palette=True)
    if classes_path.is_file():
        listed = read_class_file(classes_path)
        if entries is not None and [e[1] for e in listed] != [e[1] for e in entries]:
            raise CnnkitError(f"{classes_path} and {palette_path} name different classes; "
                              f"keep one of them")
        entries = entries or listed
    if entries is None:  # plain index masks: the classes are the values 0..K-1
        k = num_classes or _largest_label(train_pairs) + 1
        return [str(c) for c in range(k)], index_map(k)
    # Void entries are no class: later classes close up, so their indices stay 0..K-1.
    classes, index, colour = [], {IGNORE_INDEX: IGNORE_INDEX}, {}
    for value, name, rgb in entries:
        void = name.lower() in VOID_NAMES
        target = IGNORE_INDEX if void else len(classes)
        classes += [] if void else [name]
        index[value] = target
        if rgb is not None:
            colour[(rgb[0] << 16) | (rgb[1] << 8) | rgb[2]] = target
    if num_classes is not None and num_classes != len(classes):
        raise CnnkitError(f"num_classes={num_classes} but {palette_path or classes_path} lists "
                          f"{len(classes)} classes; make them agree")
    source = str(palette_path or classes_path)
    return classes, LabelMap(index, colour or None, source)


def _largest_label(train_pairs: list[tuple[Path, Path]]) -> int:
    largest = -1
    for _, mask_path in train_pairs:
        raw = read_mask(mask_path)
        if raw.ndim == 3:
            raise _colour_mask_error(mask_path)
        labelled = raw[raw != IGNORE_INDEX]
        largest = max(largest, int(labelled.max(initial=-1)))
    if largest < 0:
        raise CnnkitError(f"every training mask is void ({IGNORE_INDEX}); label some pixels")
    return largest


def read_class_file(path: Path, *, palette: bool = False
                    ) -> list[tuple[int, str, tuple[int, int, int] | None]]:
    """(mask value, name, colour or None) per class of a class file, in its order.

    classes.txt: `name` or `index name [r g b]` per line; a palette (palette=True): `R G B name`
    per line, or JSON {"name": [R, G, B], ...}. `#` starts a comment line. Where no index is
    given, a class's value in an index mask is its position in the file.
    """
    if not path.is_file():
        raise CnnkitError(f"class file {path} not found")
    if path.suffix.lower() == ".json":
        try:
            table = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CnnkitError(f"{path} is not valid JSON ({err})") from None
        if not isinstance(table, dict):
            raise CnnkitError(f"{path} must hold one object {{\"name\": [R, G, B], ...}}")
        entries = [(i, str(name), rgb) for i, (name, rgb) in enumerate(table.items())]
    else:
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            t = line.split()
            if not t or t[0].startswith("#"):
                continue
            if palette and len(t) >= 4 and all(x.isdigit() for x in t[:3]):
                entries.append((len(entries), " ".join(t[3:]), [int(x) for x in t[:3]]))
            elif not palette and not t[0].isdigit():
                entries.append((len(entries), line.strip(), None))
            elif not palette and len(t) in (2, 5) and all(x.isdigit() for x in t[2:]):
                entries.append((int(t[0]), t[1], [int(x) for x in t[2:]] or None))
            else:
                expected = "`R G B name`" if palette else "`name` or `index name [r g b]`"
                raise CnnkitError(f"{path}, line {number}: expected {expected}, got "
                                  f"'{line.strip()}'")
    if not entries:
        raise CnnkitError(f"{path} lists no classes")
    for _, name, rgb in entries:
        if rgb is not None and (not isinstance(rgb, list) or len(rgb) != 3 or not all(
                isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
            raise CnnkitError(f"{path}: the colour {rgb} of '{name}' is not three values 0..255")
    entries = [(value, name, None if rgb is None else tuple(rgb)) for value, name, rgb in entries]
    # Two classes on one value or one colour would make a mask ambiguous.
    for kind, position in (("value", 0), ("colour", 2)):
        seen = [e[position] for e in entries if e[position] is not None]
        repeated = sorted({v for v in seen if seen.count(v) > 1})
        if repeated:
            raise CnnkitError(f"{path} gives the {kind} {repeated[0]} to two classes")
    return entries

"""Data sets decoded once into memory, verified downloads, and a fast whole-batch pipeline.

`load_dataset(name, split)` → `ArrayDataset` (uint8 images in one tensor) → `InMemoryLoader`
(shuffled, augmented, normalised batches by tensor indexing, no per-sample Python). Segmentation
sets give a `SegmentationDataset` (images + int64 masks), augmented by `JointAugment`.
"""
from cnnkit.data.array_dataset import ArrayDataset
from cnnkit.data.augment import BatchAugment
from cnnkit.data.datasets import (DEFAULT_DATA_DIR, DatasetInfo, get_dataset_info, list_datasets,
                                  load_dataset, register_dataset)
from cnnkit.data.imagefolder import ImageFolderDataset
from cnnkit.data.loader import InMemoryLoader, StreamingLoader
from cnnkit.data.mnist_seq import build_mnist_seq
from cnnkit.data.seg_augment import JointAugment
from cnnkit.data.segmentation import SegmentationDataset, load_segmentation_folder

__all__ = ["ArrayDataset", "DatasetInfo", "register_dataset", "list_datasets", "get_dataset_info",
           "load_dataset", "InMemoryLoader", "BatchAugment", "StreamingLoader",
           "ImageFolderDataset", "DEFAULT_DATA_DIR", "build_mnist_seq", "SegmentationDataset",
           "load_segmentation_folder", "JointAugment"]

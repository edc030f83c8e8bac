"""Data layer: offline sources, class-incremental splits, transforms (docs/benchmarks.md)."""

from mist_jax.data.batches import host_batches
from mist_jax.data.preprocess import get_preprocess
from mist_jax.data.sources import ImageSet, LazyImages, load_dataset
from mist_jax.data.splits import (
    class_order, per_class_split, per_class_subsample, remap_labels, seen_indices, task_indices,
    task_ranges)
from mist_jax.data.transforms import (
    EvalTransform, ResizeCropTransform, TrainTransform, get_transforms,
    test_transform, train_transform)

__all__ = ["EvalTransform", "ImageSet", "LazyImages", "ResizeCropTransform", "TrainTransform",
           "class_order", "get_preprocess", "host_batches", "get_transforms",
           "load_dataset", "per_class_split",
           "per_class_subsample", "remap_labels", "seen_indices", "task_indices", "task_ranges",
           "test_transform", "train_transform"]

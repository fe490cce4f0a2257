import pytest

from jobs.models import InvalidRequest
from jobs.sweeps import MAX_CHILDREN, expand_grid

from tests.conftest import small_config


def test_grid_expands_to_the_product_of_its_values():
    children = expand_grid(small_config(), {"arch": ["ping", "coba"], "seed": [42, 43, 44]})
    assert len(children) == 6
    assert {(c["arch"], c["seed"]) for c in children} == {(a, s) for a in ("ping", "coba") for s in (42, 43, 44)}
    # each child is a full, resolved engine config
    assert {c["ei_strength"] for c in children if c["arch"] == "coba"} == {0.0}


@pytest.mark.parametrize("grid,field", [
    ({"nope": [1]}, "grid.nope"),
    ({"seed": []}, "grid.seed"),
    ({"n_e": [10, -1]}, "grid.n_e"),
    ({"seed": list(range(MAX_CHILDREN + 1))}, "grid"),
])
def test_bad_grid_names_the_field(grid, field):
    with pytest.raises(InvalidRequest) as error:
        expand_grid(small_config(), grid)
    assert error.value.field == field


def test_bad_base_names_the_field():
    with pytest.raises(InvalidRequest) as error:
        expand_grid(small_config(lr=-1.0), {"seed": [1]})
    assert error.value.field == "base.lr"

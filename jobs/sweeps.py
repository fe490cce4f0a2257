"""Expand one sweep request (a base config and a grid) into child run configs."""

from __future__ import annotations

import itertools
from dataclasses import fields
from typing import Any

from engine.config import Config, ConfigError
from jobs.models import InvalidRequest

MAX_CHILDREN = 256  # a typo in a grid should not queue ten thousand runs


def expand_grid(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid over the base config; each child is validated
    into a full `Config` dict, so a bad value is reported before anything is queued."""
    known = {f.name for f in fields(Config)}
    for name, values in grid.items():
        if name not in known:
            raise InvalidRequest(f"grid.{name}", "is not a config field")
        if not isinstance(values, list) or not values:
            raise InvalidRequest(f"grid.{name}", "must be a non-empty list of values")
    names = list(grid)
    total = 1
    for name in names:
        total *= len(grid[name])
    if total > MAX_CHILDREN:
        raise InvalidRequest("grid", f"expands to {total} runs; at most {MAX_CHILDREN} are allowed")
    return [_child(base, dict(zip(names, combo))) for combo in itertools.product(*(grid[n] for n in names))]


def _child(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    try:
        return Config.from_dict({**base, **overrides}).to_dict()
    except ConfigError as exc:
        where = "grid" if exc.field in overrides else "base"
        raise InvalidRequest(f"{where}.{exc.field}", exc.message) from exc
    except TypeError as exc:  # a value of a type the dataclass cannot even hold
        raise InvalidRequest("base", str(exc)) from exc

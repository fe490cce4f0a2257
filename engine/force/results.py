"""Where an experiment's results go: `out_dir/result.json` (rewritten atomically
as units finish, so readers see partial results and a restart can skip what is
done) and `.npz` arrays beside it (also written atomically)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.force.simulate import ForceCancelled

RESULT = "result.json"


class ResultWriter:
    """Owns one experiment's result dict; `units_total` units of work."""

    def __init__(self, out_dir: Path, experiment: str, params: dict[str, Any], units_total: int,
                 on_progress: Callable[[int, int], None] | None, should_stop: Callable[[], bool] | None):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.on_progress, self.should_stop = on_progress, should_stop
        self.units_total, self.units_done = units_total, 0
        previous = self.previous(self.out, experiment, params)
        self.result: dict[str, Any] = previous or {"experiment": experiment, "params": params, "complete": False}
        self.result["complete"] = False
        self.result["units_total"] = units_total

    @staticmethod
    def previous(out: Path, experiment: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The partial result of an earlier attempt with the same experiment and params."""
        try:
            old = json.loads((out / RESULT).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return old if old.get("experiment") == experiment and old.get("params") == params else None

    def save(self) -> None:
        self.result["units_done"] = self.units_done
        write_json(self.out / RESULT, self.result)

    def unit_done(self, count: int = 1) -> None:
        self.units_done += count
        self.save()
        self.tick(0.0)

    def tick(self, fraction: float) -> None:
        """Progress inside the current unit; raises ForceCancelled when asked to stop."""
        if self.on_progress:
            total = 1000 * self.units_total
            self.on_progress(min(total, int(1000 * (self.units_done + fraction))), total)
        if self.should_stop and self.should_stop():
            raise ForceCancelled(f"{self.result['experiment']} stopped after {self.units_done} of "
                                 f"{self.units_total} units")

    def step_ticker(self, total_steps: int, offset: int = 0) -> Callable[[int], None]:
        """A simulate tick(done_steps) for a unit of `total_steps` steps (`offset` already run)."""
        return lambda done: self.tick((offset + done) / total_steps)

    def save_npz(self, name: str, **arrays: np.ndarray) -> None:
        path = self.out / name
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)

    def finish(self) -> dict[str, Any]:
        self.units_done = self.units_total
        self.result["complete"] = True
        self.save()
        if self.on_progress:
            self.on_progress(1000 * self.units_total, 1000 * self.units_total)
        return self.result


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_plain(data)))
    os.replace(tmp, path)


def _plain(x: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x

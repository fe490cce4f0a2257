"""spikeboard's engine: simulation and training of E/I spiking networks (no web code).

The names below load on first use (PEP 562), so that `import engine.config`
does not import torch: the CLI's remote commands and the HTTP client read
configs and nothing else.
"""

import sys
from importlib import import_module
from types import ModuleType

_EXPORTS = {
    "Config": "engine.config", "ConfigError": "engine.config",
    "InputEvents": "engine.encoding", "poisson_encode": "engine.encoding", "poisson_events": "engine.encoding",
    "simulate": "engine.simulate",
    "NonFiniteError": "engine.train", "TrainingCancelled": "engine.train", "train": "engine.train",
    "train_packed": "engine.packed",
    "init_weights": "engine.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


class _Engine(ModuleType):
    """`engine.train` and `engine.simulate` name functions, as they always have, although
    submodules of the same names exist: when the import system binds such a submodule
    on the package, the package keeps the function instead."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, ModuleType) and _EXPORTS.get(name) == value.__name__ and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Engine

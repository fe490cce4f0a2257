"""spikeboard's engine: simulation and training of E/I spiking networks (no web code)."""

from engine.config import Config, ConfigError
from engine.encoding import InputEvents, poisson_encode, poisson_events
from engine.simulate import simulate
from engine.train import NonFiniteError, TrainingCancelled, train
from engine.weights import init_weights

__all__ = [
    "Config", "ConfigError", "InputEvents", "NonFiniteError", "TrainingCancelled",
    "init_weights", "poisson_encode", "poisson_events", "simulate", "train",
]

"""Counter-based random streams: a generator per (run seed, purpose, epoch, batch).

Every draw during training comes from a generator derived from its coordinates,
so a run resumed at any epoch boundary draws exactly what an uninterrupted run
would, with no mutable RNG state to save or restore.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, tag: str, *counters: int) -> int:
    """A 63-bit seed for (seed, tag, counters...), stable across processes and versions."""
    entropy = [seed, zlib.crc32(tag.encode()), *counters]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_generator(seed: int, tag: str, epoch: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, tag, epoch, batch))

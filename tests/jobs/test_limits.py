"""jobs.limits' memory estimate for the fast backend follows its chunking (engine.fast.common)."""

import math

from engine import Config
from engine.fast.common import chunk_steps
from jobs.limits import RunLimits, estimate


def test_seed_recipe_at_batch_256_fits_a_small_server_on_the_fast_backend_only():
    """The study's medium runs (1024 E / 256 I, batch 256, 2,000 steps): the fast backend's
    estimate is a few GB (measured peak RSS 2.41 GB, docs/RESULTS.md), the reference's tens."""
    fast = Config(recipe="seed", tier="medium")
    assert (fast.batch_size, fast.n_e, fast.n_steps, fast.backend) == (256, 1024, 2000, "fast")
    assert 2.0e9 < estimate(fast).memory_bytes < 3.0e9
    limits = RunLimits(memory_bytes=8e9)
    assert limits.check(fast) == [] and limits.check(fast.replace(arch="coba")) == []
    refused = limits.check(fast.replace(backend="reference"))
    assert [field for field, _ in refused] == ["batch_size"]


def test_fast_estimate_counts_the_chunk_starts_that_short_chunks_multiply():
    """At batch 256 a chunk is 6 steps, so 334 chunk-start states of [B, 2N + M] are kept:
    more than the whole estimate a per-neuron-step constant fitted at batch 64 gave."""
    config = Config(recipe="seed", tier="medium")
    n, m = config.n_e + config.n_i, 2 * config.n_e + config.n_i
    chunk = chunk_steps(config.n_steps, config.batch_size, m)
    starts = math.ceil(config.n_steps / chunk) * config.batch_size * (2 * n + m) * 4
    assert chunk == 6 and starts > 1.6e9
    assert estimate(config).memory_bytes > starts + 400e6
    # batch 64 of the canonical model: longer chunks, a fraction of it
    assert estimate(Config(tier="medium")).memory_bytes < 0.7e9

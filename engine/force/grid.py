"""The Q x G grid: many (Q, G) points per batch (one omega0 and eta0 serve them
all, scaled per point), batches run in this process or in a pool of processes
(CPU), and each finished point is added to the result so a restart skips it."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

from engine.force import measures
from engine.force.config import ForceConfig
from engine.force.results import ResultWriter
from engine.force.simulate import ForceCancelled, learn, make_setup, test

STOP_FILE = ".stop"
POLL_S = 1.0


def grid_batch(config_fields: dict, points: list[tuple[float, float]], networks: list[str],
               tick: Callable[[float], None] | None = None) -> list[dict]:
    """Train and test each network type on a batch of (q, g) points; one row per point."""
    config = ForceConfig.from_dict(config_fields)
    qs, gs = [q for q, _ in points], [g for _, g in points]
    setup = make_setup(config, gs, qs)
    rows = [{"q": q, "g": g} for q, g in points]
    phis = {}
    progress = batch_progress(config, networks)
    for i, network in enumerate(networks):
        def step_tick(done: int, i=i) -> None:
            if tick is not None:
                tick(progress(i, done))

        trained = learn(network, setup, [config.alpha] * len(points), tick=step_tick)
        tested = test(network, setup, trained, tick=step_tick)
        phis[network] = trained.rls.phi.cpu().numpy()
        for b, row in enumerate(rows):
            row[network] = measures.network_result(float(tested.sq_error[b]), config.test_steps, config.dt_s,
                                                   setup.supervisor.k, float(tested.end_rate_hz[b]))
    if len(phis) == 2:
        for b, row in enumerate(rows):
            row["decoder_fit"] = measures.decoder_fit(phis["lif"][b], phis["rate"][b])
    return rows


def step_cost(network: str, n: int, learning: bool, update_every: int) -> float:
    """What one step of a batch costs, relative to a rate-twin step, so that progress (and a
    progress bar's time left) moves with the work and not with the step count. From the
    compiled loop's profile at N 2000 (docs/PERFORMANCE.md, FORCE): a rate step is one N x N
    product per point (about 100-200 us); a LIF step touches N cells and the few spiking
    columns (about 12 us at N 2000: it grows with N, not N^2); an RLS update, every
    `update_every` learning steps, is one pass over P's N^2 / 2 float64 (about 3 ms, some 30
    rate steps, at any N: both are N^2). An estimate: within a factor of two at N 2000."""
    product = 1.0 if network == "rate" else min(1.0, 240.0 / n)
    return product + (30.0 / update_every if learning else 0.0)


def batch_progress(config: ForceConfig, networks: list[str]) -> Callable[[int, int], float]:
    """(index of the network running, its steps done) -> the fraction of the batch's work done."""
    phases = (config.warmup_steps, config.learn_steps, config.test_steps)

    def done_cost(network: str, steps: int) -> float:
        cost, start = 0.0, 0
        for phase, length in enumerate(phases):
            cost += step_cost(network, config.n, phase == 1, config.update_every) * min(max(steps - start, 0), length)
            start += length
        return cost

    totals = [done_cost(network, config.n_steps) for network in networks]
    return lambda i, steps: (sum(totals[:i]) + done_cost(networks[i], steps)) / sum(totals)


def run_grid(params: dict, w: ResultWriter) -> None:
    config = ForceConfig.from_dict(params["config"])
    points = [(q, g) for q in params["q_values"] for g in params["g_values"]]
    rows = w.result.setdefault("points", [])
    done = {(row["q"], row["g"]) for row in rows}
    pending = [pt for pt in points if pt not in done]
    w.units_done = len(points) - len(pending)
    w.result.update(q_values=params["q_values"], g_values=params["g_values"],
                    phases={"warmup_s": config.warmup_s, "learn_s": config.learn_s, "test_s": config.test_s})
    w.save()
    size = params["batch"]
    batches = [pending[i:i + size] for i in range(0, len(pending), size)]

    def add(batch_rows: list[dict]) -> None:
        rows.extend(batch_rows)
        w.unit_done(len(batch_rows))

    if params["processes"] == 1 or len(batches) == 1:
        for batch in batches:
            add(grid_batch(params["config"], batch, params["networks"],
                           tick=lambda f, n=len(batch): w.tick(f * n)))
    else:
        _run_pool(params, batches, w, add)


def _run_pool(params: dict, batches: list, w: ResultWriter, add: Callable[[list[dict]], None]) -> None:
    stop_file = w.out / STOP_FILE
    stop_file.unlink(missing_ok=True)
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    with ProcessPoolExecutor(params["processes"], mp_context=context, initializer=_init_worker) as pool:
        futures: set[Future] = {pool.submit(_pool_batch, params["config"], batch, params["networks"],
                                            str(stop_file), os.getpid()) for batch in batches}
        try:
            while futures:
                finished, futures = wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    add(future.result())
                w.tick(0.0)  # raises ForceCancelled when asked to stop
        except BaseException:
            stop_file.touch()  # the workers stop at their next tick
            for future in futures:
                future.cancel()
            raise


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _pool_batch(config_fields: dict, batch: list, networks: list[str], stop_file: str, parent: int) -> list[dict]:
    def tick(_: float) -> None:
        if Path(stop_file).exists() or os.getppid() != parent:
            raise ForceCancelled("grid stopped")

    return grid_batch(config_fields, batch, networks, tick)

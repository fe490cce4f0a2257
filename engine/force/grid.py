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
    for i, network in enumerate(networks):
        def step_tick(done: int, i=i) -> None:
            if tick is not None:
                tick((i * config.n_steps + done) / (len(networks) * config.n_steps))

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

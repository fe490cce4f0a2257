"""Benchmark (not a test): seconds per FORCE grid point, the compiled loop vs the
torch reference loop, measured in the same run on the same machine.

    spikeboard bench force [--n 2000] [--batches 1 64] [--fraction 0.005] [--reps 1]
                           [--threads 2] [--ref-threads 1] [--json]
    spikeboard bench force --profile [POINTS ...]   (CPU cost of the compiled loop's pieces)

A grid point is both twins (LIF and rate) through the 15 s protocol (5 s warm-up,
5 s learning with an RLS update every 50 steps, 5 s test) at the study's grid
settings (p 0.4, centred encoders, float32 dynamics, float64 RLS). Every per-step
cost is the same all through a phase, so the protocol is run shortened by
`--fraction` (each phase that fraction of 5 s; 0.005 = 25 ms, 500 steps) and the
time projected to the whole protocol from runs at `--fraction` and twice that (a straight line
through the two: what does not grow with the run's length, such as P = alpha I for every point of
the batch, is counted once, not scaled): labelled "projected". Per point = (LIF + rate) / batch,
in wall seconds and in CPU seconds of the process (all threads; less sensitive to the machine's
load than wall time). The measurements alternate
(reference, compiled, reference, ...) so that a change in the machine's load hits
both; the compiled kernels are compiled (or loaded from numba's cache) before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

PROTOCOL_S = 5.0  # each phase of the study's protocol


def _time_run(backend: str, n: int, batch: int, fraction: float, threads: int) -> dict:
    """Wall and CPU seconds of each twin through the protocol with every phase `fraction` x 5 s."""
    import torch

    from engine.force import simulate
    from engine.force.config import ForceConfig

    torch.set_num_threads(threads)
    seconds = PROTOCOL_S * fraction
    config = ForceConfig(n=n, p=0.4, encoder="centred", q=20.0, g=0.125, alpha=5e-6, warmup_s=seconds,
                         learn_s=seconds, test_s=seconds, backend=backend)
    setup = simulate.make_setup(config, [config.g] * batch, [config.q] * batch)
    times = {}
    for network in ("lif", "rate"):
        wall, cpu = time.perf_counter(), time.process_time()
        trained = simulate.learn(network, setup, [config.alpha] * batch)
        simulate.test(network, setup, trained)
        times[network] = (time.perf_counter() - wall, time.process_time() - cpu)
        del trained
    return times


def _time_point(backend: str, n: int, batch: int, fraction: float, threads: int) -> dict:
    """Seconds per point of the whole protocol, projected from runs at `fraction` and 2 x `fraction`:
    time = fixed + per_protocol x fraction (fixed: P = alpha I for the batch, P's other triangle
    filled in, state copies; the same once per run whatever its length, so not scaled)."""
    short, long = (_time_run(backend, n, batch, f, threads) for f in (fraction, 2 * fraction))
    row = {"backend": backend, "batch": batch, "threads": threads}
    for network in ("lif", "rate"):
        for i, kind in enumerate(("wall", "cpu")):
            # the line's intercept, kept within [0, the short run] where noise tilts the line
            fixed = min(max(2 * short[network][i] - long[network][i], 0.0), short[network][i])
            per_fraction = (short[network][i] - fixed) / fraction
            row[f"{network}_{kind}_fixed_s"] = fixed
            row[f"{network}_{kind}_per_point_s"] = (fixed + per_fraction) / batch
    row["lif_per_point_s"], row["rate_per_point_s"] = row["lif_wall_per_point_s"], row["rate_wall_per_point_s"]
    row["per_point_s"] = row["lif_per_point_s"] + row["rate_per_point_s"]
    row["cpu_per_point_s"] = row["lif_cpu_per_point_s"] + row["rate_cpu_per_point_s"]
    return row


def _profile(n: int, batches: list[int]) -> list[dict]:
    """CPU microseconds per point-step of the compiled loop's pieces on one thread
    (`time.thread_time`, so other processes' load counts less): the rate twin's gemm alone, a whole
    rate step, a LIF step, and milliseconds per RLS update and point (learning minus dynamics)."""
    import numpy as np
    import torch

    from engine.force import compiled, simulate
    from engine.force.config import ForceConfig
    from engine.force.rls import rls_init

    torch.set_num_threads(1)
    steps = 500
    config = ForceConfig(n=n, p=0.4, encoder="centred", q=20.0, g=0.125, alpha=5e-6, warmup_s=steps * 5e-5,
                         learn_s=steps * 5e-5, test_s=steps * 5e-5, backend="compiled")

    def cpu(call, reps: int) -> float:
        call()
        start = time.thread_time()
        for _ in range(reps):
            call()
        return (time.thread_time() - start) / reps

    rows = []
    for batch in batches:
        setup = simulate.make_setup(config, [config.g] * batch, [config.q] * batch)
        row = {"batch": batch}
        r = simulate.initial_state("rate", setup).r.numpy()
        product = np.empty_like(r)
        gemm_args = (product, r, setup.weights.omega0.numpy(), np.array([84, 78], np.uint8),
                     compiled._blas_table(np.float32), np.empty(2, np.int32), np.empty(2, np.float32))
        row["gemm_us"] = cpu(lambda: compiled._recurrent(*gemm_args), 50) / batch * 1e6
        for network in ("lif", "rate"):
            state = simulate.initial_state(network, setup)
            z = torch.zeros(batch, 1, dtype=config.torch_dtype)
            out = torch.empty(steps, batch, 1, dtype=config.torch_dtype)
            rls = rls_init([config.alpha] * batch, n, 1)
            dynamics = cpu(lambda: compiled.advance_compiled(network, setup, state, z, rls.phi, 0, steps, out), 2)
            learning = cpu(lambda: compiled.advance_compiled(network, setup, state, z, rls.phi, 0, steps, out,
                                                             rls=rls), 2)
            row[f"{network}_step_us"] = dynamics / steps / batch * 1e6
            row[f"{network}_rls_ms"] = (learning - dynamics) / (steps // config.update_every) / batch * 1e3
        rows.append(row)
        print(f"  one thread, {batch} points: rate gemm {row['gemm_us']:.0f} us, rate step {row['rate_step_us']:.0f} us, "
              f"LIF step {row['lif_step_us']:.0f} us per point-step; RLS {row['lif_rls_ms']:.2f} ms (LIF), "
              f"{row['rate_rls_ms']:.2f} ms (rate) per update and point", flush=True)
    return rows


def _warm_up() -> None:
    """Compile (or load) the kernels for float32 outside the timings."""
    _time_run("compiled", 50, 2, 0.0004, 2)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spikeboard bench force", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="neurons (default 2000)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64],
                    help="points per batch (default 1 64: the grid experiment's default batch)")
    ap.add_argument("--fraction", type=float, default=0.005,
                    help="run each 5 s phase this fraction long and twice that, and project (default 0.005; at most 0.5)")
    ap.add_argument("--reps", type=int, default=1, help="interleaved repetitions (default 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="compiled loop: threads over points (default: all cores)")
    ap.add_argument("--ref-threads", type=int, default=1,
                    help="reference loop: torch threads (default 1, its fastest on a CPU; docs/force.md)")
    ap.add_argument("--skip-reference", action="store_true", help="time the compiled loop only")
    ap.add_argument("--profile", type=int, nargs="*", metavar="POINTS",
                    help="instead: CPU cost of the compiled loop's pieces on one thread at these batches "
                         "(default 1 8 32)")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON too")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.fraction <= 0.5:
        _parser().error("--fraction must be in (0, 0.5]")
    _warm_up()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.profile is not None:
        print(f"FORCE compiled loop's pieces, N {args.n}, CPU time of one thread; load average {load:.1f}")
        rows = _profile(args.n, args.profile or [1, 8, 32])
        if args.json:
            print(json.dumps({"profile": rows, "load_start": load}))
        return 0
    print(f"FORCE grid point: N {args.n}, both twins, 15 s protocol (phases run at {args.fraction:g} and "
          f"{2 * args.fraction:g} x 5 s, projected); {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f} at start")
    rows = []
    for batch in args.batches:
        for _ in range(args.reps):
            order = ["compiled"] if args.skip_reference else ["reference", "compiled"]
            for backend in order:
                threads = args.threads if backend == "compiled" else args.ref_threads
                row = _time_point(backend, args.n, batch, args.fraction, threads)
                rows.append(row)
                print(f"  {backend:9s} batch {batch:3d} threads {threads}: {row['per_point_s']:8.1f} s per point "
                      f"(LIF {row['lif_per_point_s']:.1f} s + rate {row['rate_per_point_s']:.1f} s); CPU "
                      f"{row['cpu_per_point_s']:.1f} s (LIF {row['lif_cpu_per_point_s']:.1f} + rate "
                      f"{row['rate_cpu_per_point_s']:.1f})", flush=True)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load_end:.1f} at the end")
    best = lambda backend, batch: statistics.median(
        r["per_point_s"] for r in rows if r["backend"] == backend and r["batch"] == batch)
    summary = []
    if not args.skip_reference:
        base = best("reference", args.batches[0])
        for batch in args.batches:
            compiled, reference = best("compiled", batch), best("reference", batch)
            summary.append({"batch": batch, "compiled_s": compiled, "reference_s": reference,
                            "speedup_same_batch": reference / compiled,
                            f"speedup_vs_reference_batch_{args.batches[0]}": base / compiled})
            print(f"batch {batch}: compiled {compiled:.1f} s per point, reference {reference:.1f} s: "
                  f"{reference / compiled:.1f}x at the same batch, {base / compiled:.1f}x vs the reference "
                  f"at batch {args.batches[0]}")
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary, "load_start": load, "load_end": load_end}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

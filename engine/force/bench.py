"""Benchmark (not a test): seconds per FORCE grid point, the compiled loop vs the
torch reference loop, measured in the same run on the same machine.

    spikeboard bench force [--n 2000] [--batches 1 8] [--fraction 0.02] [--reps 1]
                           [--threads 2] [--ref-threads 1] [--json]

A grid point is both twins (LIF and rate) through the 15 s protocol (5 s warm-up,
5 s learning with an RLS update every 50 steps, 5 s test) at the study's grid
settings (p 0.4, centred encoders, float32 dynamics, float64 RLS). Every per-step
cost is the same all through a phase, so the protocol is run shortened by
`--fraction` (each phase that fraction of 5 s; 0.02 = 100 ms, 2000 steps) and the
time scaled by 1 / fraction: labelled "projected". `--fraction 1` runs it whole.
Per point = (LIF time + rate time) / batch. The measurements alternate
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


def _time_point(backend: str, n: int, batch: int, fraction: float, threads: int) -> dict:
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
        start = time.perf_counter()
        trained = simulate.learn(network, setup, [config.alpha] * batch)
        simulate.test(network, setup, trained)
        times[network] = time.perf_counter() - start
    scale = 1.0 / fraction
    return {"backend": backend, "batch": batch, "threads": threads, "lif_s": times["lif"], "rate_s": times["rate"],
            "per_point_s": (times["lif"] + times["rate"]) * scale / batch,
            "lif_per_point_s": times["lif"] * scale / batch, "rate_per_point_s": times["rate"] * scale / batch}


def _warm_up() -> None:
    """Compile (or load) the kernels for float32 outside the timings."""
    _time_point("compiled", 50, 2, 0.0004, 2)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spikeboard bench force", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="neurons (default 2000)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="points per batch (default 1 8)")
    ap.add_argument("--fraction", type=float, default=0.02,
                    help="run each 5 s phase this fraction long and project (default 0.02; 1 = whole protocol)")
    ap.add_argument("--reps", type=int, default=1, help="interleaved repetitions (default 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="compiled loop: threads over points (default: all cores)")
    ap.add_argument("--ref-threads", type=int, default=1,
                    help="reference loop: torch threads (default 1, its fastest on a CPU; docs/force.md)")
    ap.add_argument("--skip-reference", action="store_true", help="time the compiled loop only")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON too")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.fraction <= 1:
        _parser().error("--fraction must be in (0, 1]")
    _warm_up()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"FORCE grid point: N {args.n}, both twins, 15 s protocol (phases run at {args.fraction:g} x 5 s, "
          f"projected); {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
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
                      f"(LIF {row['lif_per_point_s']:.1f} s + rate {row['rate_per_point_s']:.1f} s)", flush=True)
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

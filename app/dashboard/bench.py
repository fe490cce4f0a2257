"""Dashboard benchmark (not a test): first paint of the Runs page with 1,000
stored runs, and the delay from an epoch being stored to its point on the chart.

    python -m app.dashboard.bench [--runs 1000] [--reps 5]

Needs the test extras (Playwright) and Debian's chromium. Starts its own server
on 127.0.0.1 with a throwaway data folder; targets: paint <= 2 s, delay <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.store import RunStore

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
EPOCHS_JS = """() => Math.max(0, ...Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.data && m.data.epoch).map(m => m.data.epoch.length))"""
FCP_JS = """() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"""


def record(epoch: int) -> dict:
    return {"epoch": epoch, "test_acc": 10 + 7 * epoch + random.random(), "train_acc": 10 + 6 * epoch,
            "train_loss": 2.3 / epoch, "test_loss": 2.3 / epoch, "rate_e_hz": 9 + random.random(),
            "rate_i_hz": 16 + random.random(), "active_frac_e": 0.9, "active_frac_i": 1.0, "grad_norm": 0.1,
            "w_norm": {"W_in": 40.0, "W_out": 1.0}, "grad_ratio": {"W_in": 1e-3, "W_out": 0.1}, "epoch_s": 1.0}


def fill_store(store: RunStore, n_runs: int, epochs: int = 10) -> None:
    """n_runs finished runs with `epochs` stored epochs each (the table's worst case)."""
    for i in range(n_runs):
        config = {"arch": random.choice(["ping", "coba"]), "seed": 40 + i % 7, "tier": "small", "n_e": 800,
                  "n_i": 200, "epochs": epochs, "trainable": ["W_in", "W_out"], "t_ms": 200.0, "dt_ms": 0.1}
        run = store.create_run(RunKind.TRAIN, config)
        for epoch in range(1, epochs + 1):
            store.record_epoch(run.id, epoch, record(epoch))
    while store.claim_next() is not None:
        pass
    for run in store.list_runs(state=RunState.RUNNING, limit=n_runs)[0]:
        store.transition(run.id, RunState.SUCCEEDED)


def start_server(data_dir: Path, workers: int = 0) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(port),
                                "--data-dir", str(data_dir), "--workers", str(workers)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(url + "/api/health", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def summary(name: str, values: list[float], target: float) -> str:
    best, median = min(values), statistics.median(values)
    verdict = "meets" if median <= target else "MISSES"
    return (f"{name:<42} best {best:6.2f} s   median {median:6.2f} s   ({len(values)} reps; "
            f"target <= {target:g} s: median {verdict})")


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = DataDir.at(Path(tmp) / "data")
        store = RunStore(data.db_path)
        started = time.perf_counter()
        fill_store(store, args.runs)
        print(f"stored {args.runs} runs x 10 epochs in {time.perf_counter() - started:.1f} s")
        live = store.create_run(RunKind.TRAIN, {"arch": "ping", "seed": 1, "tier": "small", "n_e": 800,
                                                "n_i": 200, "epochs": 100, "trainable": ["W_in", "W_out"]})
        store.claim_next()
        process, url = start_server(data.root)
        paints, fcps, delays = [], [], []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                for _ in range(args.reps):
                    page = browser.new_page(viewport={"width": 1500, "height": 1000})
                    t0 = time.perf_counter()
                    page.goto(url + "/")
                    page.locator("a[href^='/run?id=']").first.wait_for(timeout=60_000)
                    paints.append(time.perf_counter() - t0)
                    fcps.append(page.evaluate(FCP_JS) / 1000)
                    page.close()
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(f"{url}/run?id={live.id}")
                page.get_by_text("Convergence").first.wait_for(timeout=60_000)
                page.wait_for_timeout(2000)
                for epoch in range(1, args.reps * 2 + 1):
                    store.heartbeat(live.id, 1)
                    t0 = time.perf_counter()
                    store.record_epoch(live.id, epoch, record(epoch))
                    page.wait_for_function(f"() => ({EPOCHS_JS})() >= {epoch}", polling="raf", timeout=30_000)
                    delays.append(time.perf_counter() - t0)
                    time.sleep(0.7)  # epochs do not arrive in lockstep with the feed's ticks
                browser.close()
        finally:
            process.terminate()
            process.wait(15)
            store.close()
    print(summary(f"Runs page, {args.runs} runs: table painted", paints, 2.0))
    print(summary("Runs page: first contentful paint", fcps, 2.0))
    print(summary("epoch stored -> point on the accuracy chart", delays, 1.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

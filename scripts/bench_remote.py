"""Remote workers' figures (issue 22), on this machine.

    PYTHONPATH=. python scripts/bench_remote.py [--runs 20] [--slots 4] [--epochs 3] [--skip-cluster]

1. Cluster: a Ray head (no CPUs) plus two worker nodes (tests/jobs/cluster.py) and
   `spikeboard serve --executor ray`; RUNS tiny runs submitted at once, SLOTS at a
   time. Prints submit -> first epoch per run (the first run's is the cold figure),
   and the epochs the server received per second over the API.
2. Baseline: the same run's submit -> first epoch on the local executor.
3. The API alone: a queue-only server and RUNS threads posing as remote workers,
   each reporting epochs as a worker does (metrics.jsonl and a checkpoint of the
   real size as PUTs, then the epoch) as fast as the server takes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.client import Client
from jobs.models import FINISHED_STATES, RunState
from tests.app.conftest import free_port, start_server
from tests.jobs.cluster import ADMIN, ClusterServer, RayCluster, short_tmp

CONFIG = {"arch": "ping", "n_e": 40, "n_i": 10, "t_ms": 20.0, "batch_size": 200, "tier": "smoke"}


def cluster_figures(runs: int, slots: int, epochs: int, cpus_per_node: int) -> None:
    root = short_tmp()
    cluster = RayCluster(root, nodes=2, cpus_per_node=cpus_per_node)
    server = ClusterServer(root / "server", cluster.address, free_port(), workers=slots)
    try:
        started = time.monotonic()
        server.start()
        print(f"cluster + server up in {time.monotonic() - started:.1f} s")
        with Client(server.url, token=ADMIN) as api:
            submitted, first = {}, {}
            for _ in range(runs):
                run = api.submit_run({**CONFIG, "epochs": epochs})
                submitted[run.id] = time.monotonic()
            seen_epochs: dict[str, int] = {}
            t_first_epoch = None
            while True:
                listing = api.list_runs(limit=1000).data
                now = time.monotonic()
                for run in listing:
                    if run.n_epochs and run.id not in first:
                        first[run.id] = now
                    seen_epochs[run.id] = run.n_epochs
                if t_first_epoch is None and first:
                    t_first_epoch = now
                if all(r.state in FINISHED_STATES for r in listing):
                    break
                time.sleep(0.2)
            done = time.monotonic()
            states = [r.state for r in listing]
        waits = sorted(first[i] - submitted[i] for i in first)
        total = sum(seen_epochs.values())
        print(f"{runs} runs x {epochs} epochs, {slots} at a time on 2 nodes x {cpus_per_node} CPUs: "
              f"{states.count(RunState.SUCCEEDED)} succeeded")
        print(f"submit -> first epoch: first run {waits[0]:.1f} s, median {statistics.median(waits):.1f} s, "
              f"last {waits[-1]:.1f} s (later runs wait for a slot)")
        print(f"epochs over the API: {total} in {done - t_first_epoch:.1f} s from the first one = "
              f"{total / (done - t_first_epoch):.2f} epochs/s (training-bound)")
    finally:
        server.stop()
        cluster.shutdown()


def local_first_epoch(epochs: int) -> None:
    """The baseline: the same run on the local executor (a subprocess beside the server)."""
    root = short_tmp()
    server = start_server(root / "data", workers=1, token=ADMIN)
    try:
        with Client(server.url, token=ADMIN) as api:
            started = time.monotonic()
            run = api.submit_run({**CONFIG, "epochs": epochs})
            while api.metrics(run).empty:
                time.sleep(0.1)
            print(f"baseline, local executor: submit -> first epoch {time.monotonic() - started:.1f} s")
            api.wait(run, timeout_s=300)
    finally:
        server.stop()


def api_figures(runs: int, epochs_each: int) -> None:
    import engine
    from jobs.models import RunKind
    from jobs.paths import DataDir
    from jobs.store import RunStore

    root = short_tmp()
    server = start_server(root / "data", workers=0, token=ADMIN)
    store = RunStore(DataDir.at(root / "data").db_path)
    try:
        # a real checkpoint's size for this config
        folder = root / "one"
        engine.train(engine.Config.from_dict({**CONFIG, "epochs": 1}), folder)
        checkpoint = (folder / "checkpoints" / "last.pt").read_bytes()
        record = (folder / "metrics.jsonl").read_text().splitlines()[0]
        config = engine.Config.from_dict({**CONFIG, "epochs": epochs_each}).to_dict()
        credentials = {}
        for _ in range(runs):  # dispatched as the scheduler does: claimed, then a credential each
            store.create_run(RunKind.TRAIN, config)
            run = store.claim_next()
            credentials[run.id] = store.issue_credential(run.id, run.attempt)
        latencies: list[float] = []
        lock = threading.Lock()

        def worker(run_id: str, credential: str) -> None:
            headers = {"Authorization": f"Bearer {credential}"}
            binary = {**headers, "Content-Type": "application/octet-stream"}
            base = f"{server.url}/api/worker/runs/{run_id}"
            with httpx.Client(timeout=60) as http:
                lines, beaten = [], time.monotonic()
                for epoch in range(1, epochs_each + 1):
                    t0 = time.perf_counter()
                    lines.append(record)
                    http.put(f"{base}/files/metrics.jsonl", content="\n".join(lines).encode(),
                             headers=binary).raise_for_status()
                    http.put(f"{base}/files/checkpoints/last.pt", content=checkpoint,
                             headers=binary).raise_for_status()
                    http.post(f"{base}/epochs", json={"epoch": epoch, "record": {**json.loads(record),
                                                                                 "epoch": epoch}},
                              headers=headers).raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                    if time.monotonic() - beaten > 1.0:  # a real worker beats every second
                        http.post(f"{base}/heartbeat", json={}, headers=headers).raise_for_status()
                        beaten = time.monotonic()

        threads = [threading.Thread(target=worker, args=item) for item in credentials.items()]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        stored = sum(len(store.metrics(run_id)) for run_id in credentials)
        latencies.sort()
        print(f"API alone: {runs} remote workers x {epochs_each} epoch reports "
              f"(metrics.jsonl PUT + {len(checkpoint) / 1024:.0f} KiB checkpoint PUT + epoch POST): "
              f"{stored} epochs stored in {elapsed:.1f} s = {stored / elapsed:.0f} epochs/s; "
              f"per report p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
              f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms")
    finally:
        store.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--api-epochs", type=int, default=30, help="epoch reports per fake worker")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--cluster-only", action="store_true")
    args = parser.parse_args()
    if not args.cluster_only:
        api_figures(args.runs, args.api_epochs)
    local_first_epoch(args.epochs)
    if not args.skip_cluster:
        cluster_figures(args.runs, args.slots, args.epochs, args.cpus_per_node)


if __name__ == "__main__":
    main()

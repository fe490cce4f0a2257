"""Runs end to end through a real server: follow, cancel, crash recovery, sweeps, load."""

import json
import os
import signal
import threading
import time

import httpx

from jobs.models import RunState
from jobs.scheduler import pid_alive
from tests.conftest import small_config


def _wait_for(predicate, timeout_s, poll_s=0.05):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll_s)
    return value


def test_submit_follow_events_and_fetch_metrics(server_factory):
    server = server_factory()
    with server.client() as api:
        run = api.submit_run(small_config(epochs=2))
        events = list(api.follow(run.id, timeout_s=120))
        names = [name for name, _ in events]
        assert names[-1] == "end" and names[0] == "state"
        assert [data["epoch"] for name, data in events if name == "epoch"] == [1, 2]
        states = [data["state"] for name, data in events if name == "state"]
        assert states[-1] == "succeeded" and "running" in states
        metrics = api.metrics(run.id).to_dict("records")
        assert [m["epoch"] for m in metrics] == [1, 2] and 0 <= metrics[-1]["test_acc"] <= 100
        as_csv = httpx.get(f"{server.url}/api/runs/{run.id}/metrics", params={"format": "csv"})
        as_csv.raise_for_status()
        lines = as_csv.text.splitlines()
        header = lines[0].split(",")
        assert len(lines) == 3 and "w_norm.W_in" in header and "test_acc" in header
        accept_csv = httpx.get(f"{server.url}/api/runs/{run.id}/metrics", headers={"Accept": "text/csv"})
        assert accept_csv.headers["content-type"].startswith("text/csv") and accept_csv.text.splitlines() == lines
        names = {a["name"] for a in httpx.get(f"{server.url}/api/runs/{run.id}/artifacts").json()["data"]}
        assert {"config.json", "metrics.jsonl", "artifacts/weights_final.npz"} <= names
        config = httpx.get(f"{server.url}/api/runs/{run.id}/artifacts/config.json").json()
        assert config == api.get_run(run.id).config


def test_cancel_a_running_job_within_five_seconds(server_factory):
    server = server_factory()
    with server.client() as api:
        run = api.submit_run(small_config(epochs=100))
        running = _wait_for(lambda: (r := api.get_run(run.id)).progress > 0 and r.worker_pid and r, 120)
        pid = running.worker_pid
        start = time.monotonic()
        api.cancel(run.id)
        _wait_for(lambda: api.get_run(run.id).state == RunState.CANCELLED and not pid_alive(pid), 5)
        latency = time.monotonic() - start
        print(f"\ncancel latency: {latency:.2f} s (state cancelled and worker {pid} gone)")
        assert latency < 5
        slot_free = api.submit_run(small_config(epochs=1))  # the one slot takes the next run
        _wait_for(lambda: api.get_run(slot_free.id).state != RunState.QUEUED, 10)


def test_a_paused_queue_lets_running_runs_finish_and_starts_queued_ones_on_resume(server_factory):
    server = server_factory(workers=2)  # a slot stays free the whole time the queue is paused
    with server.client() as api:
        running = api.submit_run(small_config(epochs=2))
        _wait_for(lambda: api.get_run(running.id).state == RunState.RUNNING, 60)
        assert httpx.post(f"{server.url}/api/queue/pause").json()["paused"] is True
        waiting = api.submit_run(small_config(epochs=1))
        deadline = time.monotonic() + 2.0  # eight scheduler ticks with a free slot
        while time.monotonic() < deadline:
            assert api.get_run(waiting.id).state == RunState.QUEUED
            time.sleep(0.1)
        assert api.wait(running.id, timeout_s=120).state == RunState.SUCCEEDED  # it went on
        assert api.get_run(waiting.id).state == RunState.QUEUED
        assert httpx.get(f"{server.url}/api/health").json()["paused"] is True
        resumed = httpx.post(f"{server.url}/api/queue/resume").json()
        assert resumed == {"paused": False, "paused_at": None, "queued": 1, "running": 0}
        _wait_for(lambda: api.get_run(waiting.id).state != RunState.QUEUED, 10)


def test_a_server_started_paused_starts_nothing_until_resumed(server_factory, tmp_path):
    """`spikeboard serve --paused` on a data dir with queued runs (a copy to inspect, a
    machine back from maintenance): the queue holds from before the first tick."""
    data_dir = tmp_path / "data"
    queue_only = server_factory(data_dir, workers=0)  # the runs wait
    with queue_only.client() as api:
        waiting = api.submit_run(small_config(epochs=1))
    queue_only.stop()
    paused = server_factory(data_dir, workers=1, paused=True, log_name="server2.log")
    time.sleep(1.0)  # four scheduler ticks with a free slot
    with paused.client() as api:
        assert api.get_run(waiting.id).state == RunState.QUEUED
        assert httpx.get(f"{paused.url}/api/health").json()["paused"] is True
        httpx.post(f"{paused.url}/api/queue/resume")
        _wait_for(lambda: api.get_run(waiting.id).state != RunState.QUEUED, 10)


def _kill_mid_run_and_restart(server_factory, tmp_path, kill_worker_too: bool):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir)
    with server.client() as api:
        # 4 epochs, killed after the first: a worker's SIGTERM grace can let a batch end,
        # and with 2 the run sometimes finished its last epoch in it and succeeded
        run = api.submit_run(small_config(epochs=4))
        _wait_for(lambda: api.get_run(run.id).n_epochs >= 1, 120)
    pid = httpx.get(f"{server.url}/api/runs/{run.id}").json()["worker_pid"]
    if kill_worker_too:  # the box died: nothing gets to run shutdown code
        os.kill(pid, signal.SIGKILL)
    server.kill()
    # A worker never outlives its server: it gets SIGTERM when its parent dies.
    _wait_for(lambda: not pid_alive(pid), 10)
    killed_at = time.monotonic()
    restarted = server_factory(data_dir, log_name="server2.log")
    with restarted.client() as api:
        # 60 s: a loaded 2-core machine took up to ~20 s to start the server alone
        _wait_for(lambda: api.get_run(run.id).attempt == 2 and api.get_run(run.id).state == RunState.RUNNING, 60)
        recovery = time.monotonic() - killed_at
        done = api.wait(run.id, timeout_s=120, poll_s=0.2)
        metrics = api.metrics(run.id)
    print(f"\nrecovery (kill -9{' + worker' if kill_worker_too else ''} -> running again): {recovery:.2f} s")
    assert done.state == RunState.SUCCEEDED, done.error
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    assert done.resumed_from_epoch >= 1  # resumed from its checkpoint, not from zero
    jsonl = [json.loads(line)["epoch"] for line in (data_dir / "runs" / run.id / "metrics.jsonl").open()]
    assert jsonl == [1, 2, 3, 4]


def test_kill_9_server_mid_run_resumes_on_restart(server_factory, tmp_path):
    _kill_mid_run_and_restart(server_factory, tmp_path, kill_worker_too=False)


def test_kill_9_server_and_worker_mid_run_resumes_on_restart(server_factory, tmp_path):
    _kill_mid_run_and_restart(server_factory, tmp_path, kill_worker_too=True)


def test_sweep_of_two_archs_and_two_seeds(server_factory):
    server = server_factory(workers=2)
    with server.client() as api:
        sweep = api.submit_sweep(small_config(epochs=1), {"arch": ["ping", "coba"], "seed": [1, 2]})
        assert len(sweep.run_ids) == 4 and sweep.state == RunState.RUNNING
        done = api.wait_sweep(sweep.id, timeout_s=180, poll_s=0.3)
        children = api.list_runs(sweep_id=sweep.id).data
    assert done.state == RunState.SUCCEEDED and done.counts["succeeded"] == 4
    assert sorted((c.config["arch"], c.config["seed"]) for c in children) == \
        [("coba", 1), ("coba", 2), ("ping", 1), ("ping", 2)]
    assert all(c.n_epochs == 1 for c in children)


def test_twenty_concurrent_clients_while_jobs_run(server_factory):
    server = server_factory(workers=2)
    with server.client() as api:
        runs = [api.submit_run(small_config(epochs=1, seed=s)) for s in (1, 2)]
    failures: list[str] = []
    requests: list[str] = []  # list.append is atomic across threads; += on an int is not

    def poll(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(10):
                for path in ("/api/runs", f"/api/runs/{runs[i % 2].id}",
                             f"/api/runs/{runs[n % 2].id}/metrics", "/api/health"):
                    response = http.get(path)
                    requests.append(path)
                    if response.status_code != 200:
                        failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                time.sleep(0.05)

    clients = [threading.Thread(target=poll, args=(n,)) for n in range(20)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(120)
    assert failures == [] and len(requests) == 20 * 10 * 4
    with server.client() as api:
        assert all(api.wait(r.id, timeout_s=120).state == RunState.SUCCEEDED for r in runs)


def test_a_backup_taken_mid_run_is_served_elsewhere_and_the_run_resumes(server_factory, tmp_path):
    """The machine is lost mid-training: the backup `spikeboard backup` took while the
    server trained is restored on another data dir, and the run goes on from there."""
    from app.cli import main as cli_main

    server = server_factory(tmp_path / "data")
    with server.client() as api:
        run = api.submit_run(small_config(epochs=8))  # about 2 s an epoch: still training at the backup
        _wait_for(lambda: api.get_run(run.id).n_epochs >= 1, 120)
        assert cli_main(["backup", "--data-dir", str(tmp_path / "data"), "--to", str(tmp_path / "b.tar.gz")]) == 0
    server.kill()  # the machine is gone: nothing after the backup survives
    assert cli_main(["restore", str(tmp_path / "b.tar.gz"), "--data-dir", str(tmp_path / "new")]) == 0
    elsewhere = server_factory(tmp_path / "new", log_name="server2.log")
    with elsewhere.client() as api:
        restored = api.get_run(run.id)
        assert restored.n_epochs >= 1 and restored.restarts == 1
        done = api.wait(run.id, timeout_s=180, poll_s=0.2)
        metrics = api.metrics(run.id)
    assert done.state == RunState.SUCCEEDED, done.error
    assert metrics["epoch"].tolist() == list(range(1, 9))
    assert done.resumed_from_epoch >= 1  # from the copied checkpoint, not from zero
    jsonl = [json.loads(line)["epoch"] for line in (tmp_path / "new" / "runs" / run.id / "metrics.jsonl").open()]
    assert jsonl == list(range(1, 9))


def test_a_running_run_sent_back_gives_its_slot_away_and_resumes_in_its_turn(server_factory):
    """One slot, a long run training and a short one waiting: `runs requeue` stops the long
    one at its next batch, the short one trains, then the long one resumes from its
    checkpoint; a restart, not a crash, and no epoch lost or stored twice."""
    from app.cli import main as cli_main

    server = server_factory(workers=1)
    with server.client() as api:
        long = api.submit_run(small_config(epochs=8))  # about 2 s an epoch: still training when sent back
        _wait_for(lambda: api.get_run(long.id).n_epochs >= 1, 120)
        short = api.submit_run(small_config(epochs=1, seed=7))
        assert cli_main(["runs", "requeue", long.id, "--server", server.url]) == 0
        # the short run takes the slot while the long one waits behind it
        seen = _wait_for(lambda: (lambda s, l: (s, l) if s.state != RunState.QUEUED else None)(
            api.get_run(short.id), api.get_run(long.id)), 60)
        done_long = api.wait(long.id, timeout_s=180, poll_s=0.2)
        done_short = api.get_run(short.id)
        metrics = api.metrics(long.id)
        # a run that is not running cannot be sent back: a clear refusal, exit status 2
        assert cli_main(["runs", "requeue", long.id, "--server", server.url]) == 2
    short_now, long_then = seen
    assert long_then.state == RunState.QUEUED and long_then.requeue_requested and long_then.n_epochs < 8
    assert done_short.state == RunState.SUCCEEDED and done_short.finished_at < done_long.finished_at
    assert done_long.state == RunState.SUCCEEDED, done_long.error
    assert done_long.restarts == 1 and done_long.attempt == 2 and not done_long.requeue_requested
    assert done_long.resumed_from_epoch >= 1  # from its checkpoint, not from zero
    assert metrics["epoch"].tolist() == list(range(1, 9))

"""The worker process: runs one claimed run and reports everything through a transport.

    python -m jobs.worker DATA_DIR RUN_ID ATTEMPT              # the store, on the server's machine
    python -m jobs.worker --server URL RUN_ID ATTEMPT          # the server's API, from any machine
                                                               # (credential in SPIKEBOARD_RUN_CREDENTIAL)
    python -m jobs.worker DATA_DIR RUN_ID ATTEMPT RUN_ID ATTEMPT ...   # a pack (jobs.packing), the store

A pack's runs train in lockstep (engine.packed), each with its own transport,
heartbeat, stop flag and outcome: a cancelled or failed run leaves the pack and is
recorded at once, the others go on; the process exits when every run is recorded.

One code path for both (jobs.transport). It stops between batches when SIGTERM
arrives, the run's cancel flag is set, its lease is lost (the run was requeued
and claimed again) or its parent (the server, or the Ray task) died. A stop with
the cancel flag set ends the run `cancelled`; any other stop gives the run back
to the queue, to resume from its checkpoint.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from jobs.finetune import copy_start_weights
from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.transport import CREDENTIAL_ENV, Assignment, HttpTransport, LeaseLost, StoreTransport, Transport

log = logging.getLogger("jobs.worker")
HEARTBEAT_S = 1.0
# After a stop request, how long the training loop gets to reach a batch boundary
# before the worker records the stop itself and exits hard. Safe: every file the
# engine writes is atomic or truncated on resume, and epochs replay idempotently.
STOP_GRACE_S = 0.75
THREADS_ENV = "SPIKEBOARD_THREADS"
SYNC_S = 2.0  # a remote FORCE run's partial result reaches the server at most this often


class Heartbeat(threading.Thread):
    """Beats every HEARTBEAT_S with the latest progress; sets `stop` when the run
    is to stop for a reason the worker learns only from outside (server, parent)."""

    def __init__(self, transport: Transport, stop: threading.Event):
        super().__init__(daemon=True, name="heartbeat")
        self.transport, self.stop = transport, stop
        self.progress: float | None = None
        self.parent = os.getppid()
        self.nice = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the niceness the session has (main())
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            if self.stop.wait(HEARTBEAT_S):
                return  # the stop watchdog takes over
            self.beat()

    def beat(self) -> None:
        try:
            go_on = self.transport.beat(self.progress)
        except Exception:  # the server stayed unreachable: stop, the run is requeued there
            log.exception("heartbeat failed")
            go_on = False
        if not go_on or os.getppid() != self.parent:
            self.stop.set()
        self.nice = share_cpu_as_niced(self.nice)  # a `renice` of the worker reaches its session

    def finish(self) -> None:
        self._done.set()

    def wait_finished(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the server dies, so a killed server leaves no
    worker behind (the run is requeued and resumes on the next start)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the heartbeat's parent check covers it


def execute(run: Assignment, transport: Transport, beat: Heartbeat, stop: threading.Event) -> None:
    run_dir = transport.run_dir()

    def on_progress(done: int, total: int) -> None:
        beat.progress = done / total if total else None

    def synced(every_s: float):
        """Progress of an analysis or FORCE run, whose result.json holds every unit done:
        a remote worker sends it on to the server, so the pages show the units and a next
        attempt resumes after them. An analysis reports once a unit (each is sent); FORCE
        reports within units too (sent at most every `every_s`)."""
        synced_at = [0.0]

        def on_unit(done: int, total: int) -> None:
            on_progress(done, total)
            if time.monotonic() - synced_at[0] < every_s and done < total:
                return
            try:
                transport.sync()
            except LeaseLost:
                stop.set()  # a newer attempt owns the run: stop at the next unit
            synced_at[0] = time.monotonic()
        return on_unit

    if run.kind is RunKind.TRAIN:
        if run.config.get("init_run"):  # a fine-tune (jobs.finetune): its source's weights, once
            copy_start_weights(transport.source_dir(run.config["init_run"]), run_dir)
        _train(run, run_dir, transport, on_progress, stop)
    elif run.kind is RunKind.FORCE:
        _force(run, run_dir, synced(SYNC_S), stop)
    else:
        _analyse(run, transport, synced(0.0), stop)


def _train(run: Assignment, run_dir, transport: Transport, on_progress, stop: threading.Event) -> None:
    import engine

    config = engine.Config.from_dict(run.config)
    if (run_dir / "checkpoints" / "last.pt").exists():
        transport.mark_resumed(run.n_epochs)

    def on_epoch(record: dict[str, Any]) -> None:
        # Replayed epochs (resume) hit the primary key and are ignored.
        try:
            transport.record_epoch(int(record["epoch"]), record)
        except LeaseLost:
            stop.set()  # a newer attempt owns the run: stop at the next batch, record nothing
        else:
            stop_if_asked(transport, stop)

    engine.train(config, run_dir, resume=True, on_epoch=on_epoch, should_stop=stop.is_set,
                 on_progress=on_progress)


def _analyse(run: Assignment, transport: Transport, on_progress, stop: threading.Event) -> None:
    from engine.analyses import registry

    out_dir = transport.run_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    registry.run_analysis(run.config["name"], transport.source_dir(run.source_run_id), run.config.get("params", {}),
                          out_dir, on_progress=on_progress, should_stop=stop.is_set)


def _force(run: Assignment, run_dir, on_progress, stop: threading.Event) -> None:
    """A FORCE experiment; a restarted run skips the units its result.json already holds."""
    from engine.force.experiments import run_experiment

    run_experiment(run.config["experiment"], run.config["params"], run_dir, on_progress=on_progress,
                   should_stop=stop.is_set)


def stop_if_asked(transport: Transport, stop: threading.Event) -> None:
    """Asked at each stored epoch, not only by the heartbeat: a heartbeat can come late
    on a loaded machine (or be starved by the training thread), and a run of a pack
    gets no SIGTERM, so a cancel or a requeue requested during epoch e would otherwise
    race the rest of the run. With this, the run never trains past the epoch after it."""
    try:
        if transport.stop_requested():
            stop.set()
    except Exception:  # the store or server is busy: the heartbeat asks again
        log.exception("could not read the stop flags")


def record_outcome(transport: Transport, stop: threading.Event, exc: BaseException | None) -> RunState | None:
    """Turn how `execute` ended into the run's next state (None: left to the queue)."""
    import engine

    if exc is None:
        target, error = RunState.SUCCEEDED, None
    elif stop.is_set() or isinstance(exc, engine.TrainingCancelled):
        if not transport.cancel_requested():
            transport.requeue()  # the server is stopping, or the lease is lost: not the run's fault
            return None
        target, error = RunState.CANCELLED, None
    elif isinstance(exc, engine.NonFiniteError):
        target, error = RunState.FAILED, str(exc)
    else:
        target, error = RunState.FAILED, f"{type(exc).__name__}: {exc}\n\n" + "".join(traceback.format_exception(exc))
    return target if transport.finish(target, error) else None


def open_transport(argv: list[str]) -> Transport:
    """`DATA_DIR RUN_ID ATTEMPT` (the store) or `--server URL RUN_ID ATTEMPT` (the API)."""
    if argv[0] == "--server":
        url, run_id, attempt = argv[1], argv[2], int(argv[3])
        credential = os.environ.get(CREDENTIAL_ENV)
        if not credential:
            raise SystemExit(f"{CREDENTIAL_ENV} is not set: the server issues it when it dispatches the run")
        return HttpTransport(url, run_id, attempt, credential)
    return StoreTransport(DataDir.at(argv[0]), argv[1], int(argv[2]))


def share_cpu_as_niced(last: int | None = None) -> int:
    """Give the worker's session the niceness of its process; returns that niceness, for
    the next call. Executors start each worker in a session of its own (a Ctrl-C on the
    server's terminal must not reach it), and Linux with sched_autogroup shares the CPU
    between sessions, not processes: niceness then orders only a session's own threads,
    and the runs of `nice -n 19 spikeboard serve` took as much CPU as anything else on
    the machine (found running nb024 for days in the background). The session's autogroup
    takes the process's nice value at start (if above 0), and again whenever it changes
    (the heartbeat asks): `renice` of a worker reached only its main thread, and the study
    kept its autogroup's 19 until /proc was written by hand."""
    nice = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's: what `renice -p PID` sets
    if nice != (0 if last is None else last):
        autogroup = Path("/proc/self/autogroup")
        try:
            autogroup.write_text(str(nice))
        except OSError:  # no sched_autogroup, a kernel without autogroup writes, or a read-only /proc
            pass
    return nice


def main(argv: list[str]) -> int:
    share_cpu_as_niced()
    if argv and argv[0] != "--server" and len(argv) > 3:
        pairs = argv[1:]
        if len(pairs) % 2:
            raise SystemExit("a pack is DATA_DIR followed by RUN_ID ATTEMPT pairs")
        return main_pack(DataDir.at(argv[0]), [(pairs[i], int(pairs[i + 1])) for i in range(0, len(pairs), 2)])
    die_with_parent()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = os.environ.get(THREADS_ENV)
    transport = open_transport(argv)
    run = transport.assignment()
    if run is None:
        transport.close()
        return 0  # a stale launch: the run moved on without us
    beat = Heartbeat(transport, stop)
    beat.start()  # before torch's import, which takes seconds on a loaded node
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    outcome = threading.Lock()  # the main thread or the stop watchdog records it, once

    def finish(exc: BaseException | None) -> None:
        # The first caller records and exits; a second one waits here for that exit
        # (returning would let interpreter teardown kill the first mid-write).
        outcome.acquire()
        try:
            record_outcome(transport, stop, exc)
        except Exception:  # the server stayed unreachable: it requeues the run itself
            log.exception("could not record the outcome")
        transport.close()
        logging.shutdown()
        # Skip interpreter teardown (seconds with torch loaded): the store is
        # committed and the run folder's files are complete.
        os._exit(0)

    threading.Thread(target=_watch_stop, args=(beat, finish), daemon=True, name="stop-watchdog").start()
    exc: BaseException | None = None
    try:
        execute(run, transport, beat, stop)
    except Exception as caught:  # recorded as the run's failure, never lost
        exc = caught
    finally:
        beat.finish()
    finish(exc)
    return 0


class PackMember:
    """One run of a pack: its transport, stop flag, heartbeat and recorded outcome."""

    def __init__(self, transport: StoreTransport, run: Assignment):
        self.transport, self.run = transport, run
        self.stop = threading.Event()
        self.beat = Heartbeat(transport, self.stop)
        self.recorded = False


def main_pack(data: DataDir, runs: list[tuple[str, int]]) -> int:
    """Train the runs of a pack in one process (engine.packed.train_packed)."""
    die_with_parent()
    members: list[PackMember] = []
    for run_id, attempt in runs:
        transport = StoreTransport(data, run_id, attempt)
        run = transport.assignment()
        if run is None or run.kind is not RunKind.TRAIN:  # a stale launch, or not packable after all
            transport.close()
            continue
        members.append(PackMember(transport, run))
    if not members:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: [m.stop.set() for m in members])
    for member in members:
        member.beat.start()
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    outcome = threading.Lock()  # runs are recorded one at a time, each once

    def finish(member: PackMember, exc: BaseException | None) -> None:
        with outcome:
            if member.recorded:
                return
            member.recorded = True
            member.beat.finish()
            try:
                record_outcome(member.transport, member.stop, exc)
            except Exception:  # the store stayed unreachable: the scheduler settles the run
                log.exception("run %s: could not record the outcome", member.run.id)
            if all(m.recorded for m in members):
                for m in members:
                    m.transport.close()
                logging.shutdown()
                os._exit(0)  # as main(): skip the interpreter's teardown

    for member in members:
        threading.Thread(target=_watch_stop, args=(member.beat, lambda exc, m=member: finish(m, exc)),
                         daemon=True, name=f"stop-watchdog-{member.run.id}").start()
    try:
        _train_pack(members, finish)
    except Exception as exc:  # recorded as the failure of every run still in the pack
        for member in members:
            finish(member, exc)
    for member in members:
        finish(member, None)  # each was recorded as it left; nothing is left to record here
    return 0


def _train_pack(members: list[PackMember], finish) -> None:
    """Train the members' runs; `finish(member, exc)` records each run as it leaves."""
    import engine
    from engine.packed import train_packed

    ready, configs, run_dirs = [], [], []
    for member in members:
        run, transport = member.run, member.transport
        try:
            run_dir = transport.run_dir()
            if run.config.get("init_run"):  # a fine-tune: its source's weights, once
                copy_start_weights(transport.source_dir(run.config["init_run"]), run_dir)
            if (run_dir / "checkpoints" / "last.pt").exists():
                transport.mark_resumed(run.n_epochs)
            configs.append(engine.Config.from_dict(run.config))
        except Exception as exc:  # this run's failure: the others train
            finish(member, exc)
            continue
        ready.append(member)
        run_dirs.append(run_dir)
    members = ready
    if not members:
        return

    def on_epoch(k: int, record: dict[str, Any]) -> None:
        if members[k].recorded:  # its stop watchdog recorded its end while it finished an epoch
            return
        try:
            members[k].transport.record_epoch(int(record["epoch"]), record)
        except LeaseLost:
            members[k].stop.set()  # a newer attempt owns the run: it leaves the pack at the next batch
        else:
            stop_if_asked(members[k].transport, members[k].stop)

    def on_progress(k: int, done: int, total: int) -> None:
        members[k].beat.progress = done / total if total else None

    def on_done(k: int, result: Any) -> None:
        finish(members[k], result if isinstance(result, BaseException) else None)

    train_packed(configs, run_dirs, resume=True, on_epoch=on_epoch, on_progress=on_progress,
                 should_stop=lambda k: members[k].stop.is_set(), on_done=on_done)


def _watch_stop(beat: Heartbeat, finish) -> None:
    """A stopped run must free its slot in about a second even when a batch or
    the test evaluation takes longer: past the grace, stop without the loop."""
    import engine

    beat.stop.wait()
    if not beat.wait_finished(STOP_GRACE_S):
        finish(engine.TrainingCancelled("stopped while a batch was running"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main(sys.argv[1:]))

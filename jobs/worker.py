"""The worker process: runs one claimed run and records everything in the store.

    python -m jobs.worker DATA_DIR RUN_ID ATTEMPT

It stops between batches when SIGTERM arrives, the run's cancel flag is set, its
lease is lost (the run was requeued and claimed again) or its parent (the
server) died. A stop with the cancel flag set ends the run `cancelled`; any other
stop gives the run back to the queue, to resume from its checkpoint.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Any

from jobs.finetune import copy_start_weights
from jobs.models import Conflict, InvalidTransition, Run, RunKind, RunState
from jobs.paths import DataDir
from jobs.store import RunStore

log = logging.getLogger("jobs.worker")
HEARTBEAT_S = 1.0
# After a stop request, how long the training loop gets to reach a batch boundary
# before the worker records the stop itself and exits hard. Safe: every file the
# engine writes is atomic or truncated on resume, and epochs replay idempotently.
STOP_GRACE_S = 0.75
THREADS_ENV = "SPIKEBOARD_THREADS"


class Heartbeat(threading.Thread):
    """Beats every HEARTBEAT_S with the latest progress; sets `stop` when the run
    is to stop for a reason the worker learns only from outside (store, parent)."""

    def __init__(self, store: RunStore, run: Run, stop: threading.Event):
        super().__init__(daemon=True, name="heartbeat")
        self.store, self.run_id, self.attempt, self.stop = store, run.id, run.attempt, stop
        self.progress: float | None = None
        self.parent = os.getppid()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            if self.stop.wait(HEARTBEAT_S):
                return  # the stop watchdog takes over
            self.beat()

    def beat(self) -> None:
        held = self.store.heartbeat(self.run_id, self.attempt, progress=self.progress)
        if not held or self.store.cancel_requested(self.run_id) or os.getppid() != self.parent:
            self.stop.set()

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


def execute(run: Run, data: DataDir, store: RunStore, beat: Heartbeat, stop: threading.Event) -> None:
    run_dir = data.run_dir(run.id)

    def on_progress(done: int, total: int) -> None:
        beat.progress = done / total if total else None

    if run.kind is RunKind.TRAIN:
        copy_start_weights(data, run.id, run.config)  # a fine-tune's (jobs.finetune)
        _train(run, run_dir, store, on_progress, stop)
    elif run.kind is RunKind.FORCE:
        _force(run, run_dir, on_progress, stop)
    else:
        _analyse(run, data, on_progress, stop)


def _train(run: Run, run_dir, store: RunStore, on_progress, stop: threading.Event) -> None:
    import engine

    config = engine.Config.from_dict(run.config)
    if (run_dir / "checkpoints" / "last.pt").exists():
        store.mark_resumed(run.id, run.attempt, len(store.metrics(run.id)))

    def on_epoch(record: dict[str, Any]) -> None:
        # Replayed epochs (resume) hit the primary key and are ignored.
        store.record_epoch(run.id, int(record["epoch"]), record)

    engine.train(config, run_dir, resume=True, on_epoch=on_epoch, should_stop=stop.is_set,
                 on_progress=on_progress)


def _analyse(run: Run, data: DataDir, on_progress, stop: threading.Event) -> None:
    from engine.analyses import registry

    out_dir = data.run_dir(run.id)
    out_dir.mkdir(parents=True, exist_ok=True)
    registry.run_analysis(run.config["name"], data.run_dir(run.source_run_id), run.config.get("params", {}),
                          out_dir, on_progress=on_progress, should_stop=stop.is_set)


def _force(run: Run, run_dir, on_progress, stop: threading.Event) -> None:
    """A FORCE experiment; a restarted run skips the units its result.json already holds."""
    from engine.force.experiments import run_experiment

    run_experiment(run.config["experiment"], run.config["params"], run_dir, on_progress=on_progress,
                   should_stop=stop.is_set)


def record_outcome(store: RunStore, run: Run, stop: threading.Event, exc: BaseException | None) -> RunState | None:
    """Turn how `execute` ended into the run's next state (None: left to the queue)."""
    import engine

    if exc is None:
        target, error = RunState.SUCCEEDED, None
    elif stop.is_set() or isinstance(exc, engine.TrainingCancelled):
        if not store.cancel_requested(run.id):
            store.requeue(run.id, run.attempt, restart=True)  # the server is stopping: not the run's fault
            return None
        target, error = RunState.CANCELLED, None
    elif isinstance(exc, engine.NonFiniteError):
        target, error = RunState.FAILED, str(exc)
    else:
        target, error = RunState.FAILED, f"{type(exc).__name__}: {exc}\n\n" + "".join(traceback.format_exception(exc))
    try:
        store.transition(run.id, target, error=error, attempt=run.attempt)
    except (Conflict, InvalidTransition) as lost:  # a newer attempt owns the run
        log.warning("not recording %s: %s", target.value, lost)
        return None
    return target


def main(argv: list[str]) -> int:
    data_dir, run_id, attempt = argv[0], argv[1], int(argv[2])
    die_with_parent()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = os.environ.get(THREADS_ENV)
    data = DataDir.at(data_dir)
    store = RunStore(data.db_path)
    run = store.get_run(run_id)
    if run.attempt != attempt or run.state is not RunState.RUNNING:
        return 0  # a stale launch: the run moved on without us
    store.set_worker_pid(run.id, attempt, os.getpid())
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    beat = Heartbeat(store, run, stop)
    beat.start()
    outcome = threading.Lock()  # the main thread or the stop watchdog records it, once

    def finish(exc: BaseException | None) -> None:
        # The first caller records and exits; a second one waits here for that exit
        # (returning would let interpreter teardown kill the first mid-write).
        outcome.acquire()
        record_outcome(store, run, stop, exc)
        logging.shutdown()
        # Skip interpreter teardown (seconds with torch loaded): the store is
        # committed and the run folder's files are complete.
        os._exit(0)

    threading.Thread(target=_watch_stop, args=(beat, finish), daemon=True, name="stop-watchdog").start()
    exc: BaseException | None = None
    try:
        execute(run, data, store, beat, stop)
    except Exception as caught:  # recorded as the run's failure, never lost
        exc = caught
    finally:
        beat.finish()
    finish(exc)
    return 0


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

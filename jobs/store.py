"""RunStore: the SQLite source of truth for runs, their epochs and sweeps.

One connection per store (one writer per process), WAL so readers in other
processes never block the writer, and a busy timeout so concurrent writers
(the server and its workers) wait instead of failing. Every state change is one
transaction made through `_tx()`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from jobs.models import (FINISHED_STATES, Conflict, Run, RunKind, RunNotFound, RunState, Sweep,
                         SweepNotFound, check_transition)
from jobs.schema import ADDED_RUN_COLUMNS, QUEUE_ORDER, RUN_COLUMNS, SCHEMA
from jobs.studies import Study, StudyNotFound

BUSY_TIMEOUT_MS = 10_000
# Queued -> running, the same for a run claimed from the queue and for a pack-mate
# (params: now, now); it starts a new attempt and clears a "sent back" mark.
CLAIM = ("UPDATE runs SET state = 'running', attempt = attempt + 1, heartbeat_at = ?, "
         "started_at = COALESCE(started_at, ?), worker_pid = NULL, requeued_at = NULL ")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The server shares this connection between its event loop and request
        # threads; the lock makes each transaction atomic within the process.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=BUSY_TIMEOUT_MS / 1000)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        with self._tx() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            present = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
            for column, definition in ADDED_RUN_COLUMNS.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {definition}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front,
        so a read-then-write (check a transition, then apply it) cannot race."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- runs ---------------------------------------------------------------------
    def create_run(self, kind: RunKind, config: dict[str, Any], *, sweep_id: str | None = None,
                   source_run_id: str | None = None, code_version: str | None = None) -> Run:
        with self._tx() as conn:
            run_id = _insert_run(conn, kind, config, sweep_id, source_run_id, code_version)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> Run:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return Run.from_row(rows[0])

    def list_runs(self, *, state: RunState | None = None, kind: RunKind | None = None,
                  sweep_id: str | None = None, limit: int = 100, offset: int = 0) -> tuple[list[Run], int]:
        where, params = _run_filters(state, kind, sweep_id)
        count = self._read(f"SELECT COUNT(*) FROM runs {where}", params)[0][0]
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY created_at DESC, id "
                          f"LIMIT ? OFFSET ?", (*params, limit, offset))
        return [Run.from_row(r) for r in rows], count

    def transition(self, run_id: str, target: RunState, *, error: str | None = None,
                   attempt: int | None = None) -> Run:
        """Move a run to `target` if the table allows it (and, for a worker, if
        it still holds the run's current attempt)."""
        with self._tx() as conn:
            _transition(conn, run_id, target, error=error, attempt=attempt)
        return self.get_run(run_id)

    def claim_next(self, now: float | None = None, kinds: Iterable[RunKind] | None = None) -> Run | None:
        """Queued -> running for the oldest queued run (of `kinds`, if given), in one
        statement, so two schedulers can never start the same run; none while the queue
        is paused."""
        now = time.time() if now is None else now
        only = [RunKind(k).value for k in kinds] if kinds is not None else None
        if only == []:
            return None
        of_kinds = f"AND kind IN ({', '.join('?' * len(only))}) " if only is not None else ""
        with self._tx() as conn:
            row = conn.execute(
                CLAIM + f"WHERE id = (SELECT id FROM runs WHERE state = 'queued' {of_kinds}"
                "AND NOT EXISTS (SELECT 1 FROM queue_pause) "
                f"ORDER BY {QUEUE_ORDER} LIMIT 1) "
                "AND state = 'queued' RETURNING id", (now, now, *(only or []))).fetchone()
        return None if row is None else self.get_run(row["id"])

    def move_to_front(self, run_id: str) -> Run:
        """A queued run is claimed next (before every run queued so far, moved or not)."""
        with self._tx() as conn:
            state = _state(conn, run_id)
            if state is not RunState.QUEUED:
                raise Conflict(f"run {run_id} is {state.value}; only a queued run can move to the front of the queue")
            conn.execute("UPDATE runs SET priority = 1 + (SELECT MAX(priority) FROM runs) WHERE id = ?", (run_id,))
        return self.get_run(run_id)

    def request_requeue(self, run_id: str, now: float | None = None) -> Run:
        """A running run goes back to the end of the queue: its worker sees `requeued_at` at
        its next heartbeat (or a signal), stops at the next batch and requeues the run as a
        restart; queued, it is served as if submitted now, with no priority from an earlier
        "Start next". Only a running run that is not being cancelled (409 otherwise)."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            state = _state(conn, run_id)
            if state is not RunState.RUNNING:
                raise Conflict(f"run {run_id} is {state.value}; only a running run can go back to the queue")
            if conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()[0]:
                raise Conflict(f"run {run_id} is being cancelled; it will not go back to the queue")
            # a second request (a double click) keeps the first one's place
            conn.execute("UPDATE runs SET requeued_at = COALESCE(requeued_at, ?), priority = 0 WHERE id = ?",
                         (now, run_id))
        return self.get_run(run_id)

    def stop_flags(self, run_id: str) -> tuple[bool, bool]:
        """(cancel requested, sent back to the queue while running): why a worker is to stop."""
        rows = self._read("SELECT cancel_requested, requeued_at IS NOT NULL AND state = 'running' "
                          "FROM runs WHERE id = ?", (run_id,))
        return (bool(rows[0][0]), bool(rows[0][1])) if rows else (False, False)

    def stop_requested(self, run_id: str) -> bool:
        """Whether a running run's worker is to stop: cancelled, or sent back to the queue."""
        return any(self.stop_flags(run_id))

    def pause_queue(self, now: float | None = None) -> float:
        """No queued run starts until `resume_queue`; returns when the pause began (a
        second pause keeps the first's time)."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO queue_pause (id, paused_at) VALUES (1, ?)", (now,))
            return conn.execute("SELECT paused_at FROM queue_pause").fetchone()[0]

    def resume_queue(self) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM queue_pause")

    def queue_paused_at(self) -> float | None:
        """When the queue was paused; None while it serves runs."""
        rows = self._read("SELECT paused_at FROM queue_pause")
        return rows[0][0] if rows else None

    def claim(self, run_id: str, now: float | None = None) -> Run | None:
        """Queued -> running for this run (a pack-mate, jobs.packing); None if it is no
        longer queued, or the queue was paused since its pack's first run was claimed."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            row = conn.execute(
                CLAIM + "WHERE id = ? AND state = 'queued' AND NOT EXISTS (SELECT 1 FROM queue_pause) "
                "RETURNING id", (now, now, run_id)).fetchone()
        return None if row is None else self.get_run(row["id"])

    def set_worker_pid(self, run_id: str, attempt: int, pid: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE runs SET worker_pid = ? WHERE id = ? AND attempt = ?", (pid, run_id, attempt))

    def heartbeat(self, run_id: str, attempt: int, *, now: float | None = None,
                  progress: float | None = None) -> bool:
        """Record that the worker of `attempt` is alive; False once it lost the run
        (requeued, finished, or claimed again by a newer attempt)."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET heartbeat_at = ?, progress = COALESCE(?, progress) "
                "WHERE id = ? AND attempt = ? AND state = 'running'", (now, progress, run_id, attempt))
            return cur.rowcount == 1

    def mark_resumed(self, run_id: str, attempt: int, epoch: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE runs SET resumed_from_epoch = ? WHERE id = ? AND attempt = ?",
                         (epoch, run_id, attempt))

    def request_cancel(self, run_id: str) -> Run:
        """Queued runs are cancelled at once; running ones get the flag their worker
        polls. A finished run cannot be cancelled (InvalidTransition)."""
        with self._tx() as conn:
            state = _state(conn, run_id)
            if state is RunState.QUEUED:
                _transition(conn, run_id, RunState.CANCELLED)
            else:
                check_transition(run_id, state, RunState.CANCELLED)
                conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
        return self.get_run(run_id)

    def cancel_requested(self, run_id: str) -> bool:
        rows = self._read("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,))
        return bool(rows and rows[0][0])

    def delete_run(self, run_id: str) -> None:
        """Delete a finished run's records; unfinished runs must be cancelled first,
        and so must unfinished analyses that read this run's folder."""
        with self._tx() as conn:
            state = _state(conn, run_id)
            if state not in FINISHED_STATES:
                raise Conflict(f"run {run_id} is {state.value}; cancel it before deleting it")
            readers = [r["id"] for r in conn.execute(
                "SELECT id FROM runs WHERE source_run_id = ? AND kind = 'analysis' "
                "AND state IN ('queued', 'running') ORDER BY created_at", (run_id,))]
            if readers:
                raise Conflict(f"run {run_id} is the source of unfinished analyses {', '.join(readers)}; "
                               "cancel them (or let them finish) before deleting it")
            conn.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM run_credentials WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def reap_stale(self, now: float, stale_after_s: float) -> list[str]:
        """Requeue running runs whose heartbeat lapsed (their worker is gone);
        they resume from their last checkpoint when claimed again."""
        with self._tx() as conn:
            rows = conn.execute(
                "UPDATE runs SET state = 'queued', worker_pid = NULL "
                "WHERE state = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < ?) RETURNING id",
                (now - stale_after_s,)).fetchall()
        return [r["id"] for r in rows]

    def requeue(self, run_id: str, attempt: int, *, restart: bool = False) -> bool:
        """Give a running run back to the queue (its worker stopped without finishing).
        `restart`: the server stopped or restarted, which is not the run's fault and
        does not count against its retry budget (`Run.crashes`)."""
        with self._tx() as conn:
            cur = conn.execute("UPDATE runs SET state = 'queued', worker_pid = NULL, "
                               "restarts = restarts + ? "
                               "WHERE id = ? AND attempt = ? AND state = 'running'",
                               (int(restart), run_id, attempt))
            return cur.rowcount == 1

    # --- per-run credentials of remote workers ---------------------------------------
    def issue_credential(self, run_id: str, attempt: int) -> str:
        """A new secret for the worker of `attempt` (replacing any older attempt's):
        it lets that worker report on this run only, and only while the attempt holds it."""
        token = secrets.token_urlsafe(32)
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO run_credentials (run_id, attempt, token_sha256, issued_at) "
                         "VALUES (?, ?, ?, ?)", (run_id, attempt, _sha256(token), time.time()))
        return token

    def credential_attempt(self, run_id: str, token: str) -> int | None:
        """The attempt `token` was issued for on `run_id`; None if it is not that run's credential."""
        rows = self._read("SELECT attempt, token_sha256 FROM run_credentials WHERE run_id = ?", (run_id,))
        if not rows or not secrets.compare_digest(rows[0]["token_sha256"], _sha256(token)):
            return None
        return int(rows[0]["attempt"])

    # --- metrics --------------------------------------------------------------------
    def record_epoch(self, run_id: str, epoch: int, record: dict[str, Any]) -> bool:
        """Store one epoch; a replayed epoch (resume) is ignored. True if new."""
        with self._tx() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO metrics (run_id, epoch, record, recorded_at) "
                               "VALUES (?, ?, ?, ?)", (run_id, epoch, json.dumps(record), time.time()))
            return cur.rowcount == 1

    def metrics(self, run_id: str, *, after_epoch: int = 0) -> list[dict[str, Any]]:
        rows = self._read("SELECT record FROM metrics WHERE run_id = ? AND epoch > ? ORDER BY epoch",
                          (run_id, after_epoch))
        return [json.loads(r["record"]) for r in rows]

    def last_epochs(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The latest stored epoch record of each run that has one (one query, for tables)."""
        if not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        rows = self._read(f"SELECT m.run_id, m.record FROM metrics m JOIN (SELECT run_id, MAX(epoch) AS epoch "
                          f"FROM metrics WHERE run_id IN ({marks}) GROUP BY run_id) last "
                          f"ON m.run_id = last.run_id AND m.epoch = last.epoch", tuple(run_ids))
        return {r["run_id"]: json.loads(r["record"]) for r in rows}

    def changes_since(self, since: float) -> tuple[list[Run], list[tuple[str, float, dict]]]:
        """One cheap poll for everything a live view may need: runs that are
        unfinished or were created or finished at or after `since`, and the epochs
        recorded at or after it as (run_id, recorded_at, record). Workers stamp
        epochs with their own clock just before committing, so a poller should
        look back a little and drop the (run_id, epoch) pairs it has seen."""
        with self._lock:
            epochs = self._conn.execute("SELECT run_id, recorded_at, record FROM metrics "
                                        "WHERE recorded_at >= ? ORDER BY recorded_at", (since,)).fetchall()
            runs = self._conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE state IN ('queued', 'running') "
                f"OR created_at >= ? OR finished_at >= ?", (since, since)).fetchall()
        return ([Run.from_row(r) for r in runs],
                [(r["run_id"], r["recorded_at"], json.loads(r["record"])) for r in epochs])

    # --- sweeps ---------------------------------------------------------------------
    def create_sweep(self, base: dict[str, Any], grid: dict[str, list[Any]],
                     configs: list[dict[str, Any]], code_version: str | None = None) -> Sweep:
        sweep_id = new_id()
        with self._tx() as conn:
            conn.execute("INSERT INTO sweeps (id, base, grid, created_at) VALUES (?, ?, ?, ?)",
                         (sweep_id, json.dumps(base), json.dumps(grid), time.time()))
            for config in configs:
                _insert_run(conn, RunKind.TRAIN, config, sweep_id, None, code_version)
        return self.get_sweep(sweep_id)

    def get_sweep(self, sweep_id: str) -> Sweep:
        rows = self._read("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
        if not rows:
            raise SweepNotFound(sweep_id)
        children = self._read("SELECT id, state FROM runs WHERE sweep_id = ? ORDER BY created_at, id",
                              (sweep_id,))
        row = rows[0]
        return Sweep(id=row["id"], base=json.loads(row["base"]), grid=json.loads(row["grid"]),
                     created_at=row["created_at"], run_ids=tuple(c["id"] for c in children),
                     child_states=tuple(RunState(c["state"]) for c in children),
                     cancel_requested=bool(row["cancel_requested"]))

    def list_sweeps(self, *, limit: int = 100, offset: int = 0) -> tuple[list[Sweep], int]:
        count = self._read("SELECT COUNT(*) FROM sweeps")[0][0]
        rows = self._read("SELECT id FROM sweeps ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                          (limit, offset))
        return [self.get_sweep(r["id"]) for r in rows], count

    def mark_sweep_cancelled(self, sweep_id: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE sweeps SET cancel_requested = 1 WHERE id = ?", (sweep_id,))

    # --- studies ----------------------------------------------------------------------
    def create_study(self, name: str, plan: dict[str, Any], *, source_run_id: str | None = None,
                     source_analyses: list[tuple[str, dict[str, Any]]] = (),
                     code_version: str | None = None) -> Study:
        """The study, its training runs (one sweep over the plan's grid) and, for an
        inference-only study, its analyses of the source run: one transaction."""
        study_id = new_id()
        with self._tx() as conn:
            sweep_id = None
            if plan["runs"]:
                sweep_id = new_id()
                conn.execute("INSERT INTO sweeps (id, base, grid, created_at) VALUES (?, ?, ?, ?)",
                             (sweep_id, json.dumps(plan["base"]), json.dumps(plan["grid"]), time.time()))
            conn.execute("INSERT INTO studies (id, name, plan, source_run_id, sweep_id, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (study_id, name, json.dumps(plan), source_run_id, sweep_id, time.time()))
            for run in plan["runs"]:
                run_id = _insert_run(conn, RunKind.TRAIN, run["config"], sweep_id, None, code_version)
                _insert_member(conn, study_id, run_id, run["label"], "train", "")
            for analysis, config in source_analyses:
                run_id = _insert_run(conn, RunKind.ANALYSIS, config, None, source_run_id, code_version)
                _insert_member(conn, study_id, run_id, "source", "analysis", analysis)
        return self.get_study(study_id)

    def add_study_analysis(self, study_id: str, label: str, analysis: str, config: dict[str, Any],
                           source_run_id: str, code_version: str | None = None) -> bool:
        """Queue `analysis` on the study's run `label` unless it is queued already. True if new."""
        with self._tx() as conn:
            exists = conn.execute("SELECT 1 FROM study_runs WHERE study_id = ? AND label = ? AND role = "
                                  "'analysis' AND analysis = ?", (study_id, label, analysis)).fetchone()
            if exists:
                return False
            run_id = _insert_run(conn, RunKind.ANALYSIS, config, None, source_run_id, code_version)
            _insert_member(conn, study_id, run_id, label, "analysis", analysis)
            return True

    def get_study(self, study_id: str) -> Study:
        rows = self._read("SELECT * FROM studies WHERE id = ?", (study_id,))
        if not rows:
            raise StudyNotFound(study_id)
        members = self._read("SELECT s.run_id, s.label, s.role, s.analysis, runs.state, runs.progress FROM study_runs s "
                             "LEFT JOIN runs ON runs.id = s.run_id WHERE s.study_id = ? "
                             "ORDER BY s.rowid", (study_id,))
        return Study.from_rows(rows[0], members)

    def list_studies(self, *, limit: int = 100, offset: int = 0) -> tuple[list[Study], int]:
        count = self._read("SELECT COUNT(*) FROM studies")[0][0]
        rows = self._read("SELECT id FROM studies ORDER BY created_at DESC, id LIMIT ? OFFSET ?", (limit, offset))
        return [self.get_study(r["id"]) for r in rows], count

    def study_ids_with_unfinished_runs(self) -> list[str]:
        """Studies that may still need analyses queued: a member run not yet finished,
        or a finished training run without all of the plan's analyses."""
        rows = self._read(
            "SELECT DISTINCT s.study_id FROM study_runs s JOIN runs ON runs.id = s.run_id "
            "JOIN studies st ON st.id = s.study_id LEFT JOIN sweeps sw ON sw.id = st.sweep_id "
            "WHERE COALESCE(sw.cancel_requested, 0) = 0 AND (runs.state IN ('queued', 'running') "
            "OR (s.role = 'train' AND runs.state = 'succeeded' AND "
            "(SELECT COUNT(*) FROM study_runs a WHERE a.study_id = s.study_id AND a.label = s.label "
            "AND a.role = 'analysis') < json_array_length(st.plan, '$.analyses')))")
        return [r["study_id"] for r in rows]


# --- helpers that run inside a transaction ---------------------------------------------

def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _insert_run(conn: sqlite3.Connection, kind: RunKind, config: dict[str, Any], sweep_id: str | None,
                source_run_id: str | None, code_version: str | None) -> str:
    run_id = new_id()
    conn.execute("INSERT INTO runs (id, kind, config, state, created_at, code_version, sweep_id, "
                 "source_run_id) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                 (run_id, kind.value, json.dumps(config), time.time(), code_version, sweep_id, source_run_id))
    return run_id


def _insert_member(conn: sqlite3.Connection, study_id: str, run_id: str, label: str, role: str,
                   analysis: str) -> None:
    conn.execute("INSERT INTO study_runs (study_id, run_id, label, role, analysis) VALUES (?, ?, ?, ?, ?)",
                 (study_id, run_id, label, role, analysis))


def _state(conn: sqlite3.Connection, run_id: str) -> RunState:
    row = conn.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    return RunState(row["state"])


def _transition(conn: sqlite3.Connection, run_id: str, target: RunState, *, error: str | None = None,
                attempt: int | None = None) -> None:
    current = _state(conn, run_id)
    check_transition(run_id, current, target)
    now = time.time()
    finished = now if target in FINISHED_STATES else None
    sql = ("UPDATE runs SET state = ?, error = COALESCE(?, error), finished_at = ?, "
           "requeued_at = CASE WHEN ? IS NULL THEN requeued_at END, "  # finished: no longer sent back
           "progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END, "
           "started_at = CASE WHEN ? = 'running' THEN COALESCE(started_at, ?) ELSE started_at END "
           "WHERE id = ?")
    params: tuple = (target.value, error, finished, finished, target.value, target.value, now, run_id)
    if attempt is not None:
        sql += " AND attempt = ?"
        params += (attempt,)
    if conn.execute(sql, params).rowcount != 1:
        raise Conflict(f"run {run_id} was claimed by another attempt")


def _run_filters(state: RunState | None, kind: RunKind | None, sweep_id: str | None) -> tuple[str, tuple]:
    clauses, params = [], []
    for column, value in (("state", state), ("kind", kind), ("sweep_id", sweep_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value.value if hasattr(value, "value") else value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)

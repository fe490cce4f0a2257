"""Table definitions, in one place (as huey's SqliteStorage keeps them)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    code_version TEXT,
    sweep_id TEXT REFERENCES sweeps(id),
    source_run_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    heartbeat_at REAL,
    worker_pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resumed_from_epoch INTEGER
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, created_at);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep_id);

CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    record TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE INDEX IF NOT EXISTS metrics_recorded ON metrics(recorded_at);

CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    base TEXT NOT NULL,
    grid TEXT NOT NULL,
    created_at REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);

-- A study preset queued as runs: its training runs (one sweep) and the analyses
-- queued on them (or on a source run). `plan` is the expanded StudyPlan (JSON).
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    source_run_id TEXT,
    sweep_id TEXT REFERENCES sweeps(id),
    created_at REAL NOT NULL
);

-- Members of a study. role 'train': `label` names the run in the plan;
-- role 'analysis': `analysis` ran on the training run `label` (or 'source').
CREATE TABLE IF NOT EXISTS study_runs (
    study_id TEXT NOT NULL REFERENCES studies(id),
    run_id TEXT NOT NULL,
    label TEXT NOT NULL,
    role TEXT NOT NULL,
    analysis TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (study_id, run_id),
    UNIQUE (study_id, label, role, analysis)
);

-- The queue's hold: while its one row exists no queued run starts (running runs go on).
-- A user queueing several runs pauses first, orders them, then resumes. It outlives a
-- server restart, as the queue itself does.
CREATE TABLE IF NOT EXISTS queue_pause (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    paused_at REAL NOT NULL
);

-- The credential of a run's current attempt, issued when the run is dispatched to
-- a remote worker (jobs.transport.HttpTransport). Only its SHA-256 is kept, and a new
-- dispatch replaces it, so a worker of an older attempt is locked out.
CREATE TABLE IF NOT EXISTS run_credentials (
    run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    token_sha256 TEXT NOT NULL,
    issued_at REAL NOT NULL
);
"""

# Columns added after the first release, with their definitions: a store opened
# on an older file adds them (SQLite has no ADD COLUMN IF NOT EXISTS).
# restarts: requeues that were not the run's fault (server stop or restart); the
# retry budget counts attempts minus restarts.
# priority: the queue is served highest priority first, then oldest first; "move to
# the front" gives a queued run one more than any run has (a study's COBA half need not
# wait days behind its PING half).
# requeued_at: when a user sent the running run back to the queue (its worker stops at the
# next batch and requeues it, as a restart). Queued, it stands at the end of the queue as it
# was then, as if submitted at that moment, instead of taking the next free slot back (or,
# by its age, the one after). Cleared when it is claimed.
ADDED_RUN_COLUMNS = {"restarts": "INTEGER NOT NULL DEFAULT 0", "priority": "INTEGER NOT NULL DEFAULT 0",
                     "requeued_at": "REAL"}

# The order queued runs are served in (jobs.packing sorts its pack-mates the same way).
# Runs that have run before (a server stop requeued them, or a crash) come first: a restart
# gives their slots back to them, not to runs queued or moved to the front meanwhile. A run
# its user sent back to the queue (`requeued_at`) does not: it gave its slot away on purpose.
QUEUE_ORDER = "(attempt > 0 AND requeued_at IS NULL) DESC, priority DESC, COALESCE(requeued_at, created_at), id"

# Every read of a run goes through this projection, so `Run.from_row` sees one shape.
RUN_COLUMNS = """
    runs.*, (SELECT COUNT(*) FROM metrics m WHERE m.run_id = runs.id) AS n_epochs
"""

"""The live feed: one poll of the store per tick for every open page.

Each tick asks the service what changed (runs, new epochs) since shortly before
the previous tick and hands each subscribed session the news on its own
document's next tick. Sessions are never touched from the feed's task directly:
that would change a Bokeh document without holding its lock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from jobs.models import Run
from jobs.service import JobService

log = logging.getLogger("app.dashboard.live")
TICK_S = 0.1
# Workers stamp an epoch with their own clock before committing it, and a commit
# may wait up to the store's 10 s busy timeout, so an epoch can appear "in the
# past": look back further than that and drop the pairs already delivered.
LOOKBACK_S = 15.0


@dataclass(frozen=True)
class News:
    runs: dict[str, Run] = field(default_factory=dict)            # id -> current record
    epochs: dict[str, list[dict]] = field(default_factory=dict)   # id -> new epoch records, in order
    queue_changed: bool = False          # the queue was paused or resumed (by any client)
    queue_paused_at: float | None = None  # when it was paused; None while it serves runs

    def __bool__(self) -> bool:
        return bool(self.runs or self.epochs or self.queue_changed)


Listener = Callable[[News], None]


class LiveFeed:
    def __init__(self, jobs: JobService, tick_s: float = TICK_S):
        self.jobs, self.tick_s = jobs, tick_s
        self._listeners: dict[int, tuple[object, Listener]] = {}
        self._keys = itertools.count()
        self._since = time.time()
        self._delivered: dict[tuple[str, int], float] = {}
        self._last_runs: dict[str, tuple] = {}
        self._paused_at = jobs.queue_paused_at()

    # --- sessions ------------------------------------------------------------------
    def subscribe(self, doc, listener: Listener) -> int:
        key = next(self._keys)
        self._listeners[key] = (doc, listener)
        return key

    def unsubscribe(self, key: int) -> None:
        self._listeners.pop(key, None)

    @property
    def subscribers(self) -> int:
        return len(self._listeners)

    # --- polling -------------------------------------------------------------------
    def poll(self) -> News:
        """What is new since the last poll (runs whose visible fields changed,
        epochs not delivered yet)."""
        now = time.time()
        runs, epochs = self.jobs.changes(self._since - LOOKBACK_S)
        self._since = now
        paused_at = self.jobs.queue_paused_at()
        news = News(queue_changed=paused_at != self._paused_at, queue_paused_at=paused_at)
        self._paused_at = paused_at
        for run in runs:
            visible = (run.state, run.progress, run.n_epochs, run.error)
            if self._last_runs.get(run.id) != visible:
                self._last_runs[run.id] = visible
                news.runs[run.id] = run
        for run_id, recorded_at, record in epochs:
            key = (run_id, int(record["epoch"]))
            if key not in self._delivered:
                self._delivered[key] = recorded_at
                news.epochs.setdefault(run_id, []).append(record)
        horizon = now - 2 * LOOKBACK_S
        self._delivered = {k: t for k, t in self._delivered.items() if t >= horizon}
        active = {run.id for run in runs}
        self._last_runs = {k: v for k, v in self._last_runs.items() if k in active}
        return news

    def publish(self, news: News) -> None:
        for doc, listener in list(self._listeners.values()):
            try:
                doc.add_next_tick_callback(partial(listener, news))
            except Exception:  # a document being torn down; its session unsubscribes itself
                log.debug("could not schedule news on a closing document", exc_info=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            if not self._listeners:
                self._since = time.time()
                continue
            try:
                news = await asyncio.to_thread(self.poll)
            except Exception:  # a busy or closing store must not end the feed
                log.exception("live feed poll failed")
                continue
            if news:
                self.publish(news)

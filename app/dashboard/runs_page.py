"""Runs: every run and sweep with live state, the launch form, and actions."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pandas as pd
import panel as pn
import param
from bokeh.models.widgets.tables import NumberFormatter

from app.api.deps import Services
from app.dashboard import layout, time_left
from app.dashboard.config_form import ConfigForm
from app.dashboard.live import LiveFeed, News
from jobs.models import InvalidRequest, JobsError, Run, RunKind, RunState

MAX_ROWS = 5000  # newest first; older runs stay reachable through the API's paging
COLUMNS = ["id", "kind", "state", "progress", "epochs", "arch", "seed", "tier", "size", "test_acc",
           "rate_e_hz", "created", "sweep", "detail"]
# with these the table fits beside the form on a 1500-px-wide window; detail takes the rest
COLUMN_WIDTHS = {"id": 103, "kind": 58, "state": 74, "progress": 74, "epochs": 64, "arch": 50, "seed": 50,
                 "tier": 54, "size": 56, "test_acc": 64, "rate_e_hz": 62, "created": 118, "sweep": 62}
# the runs and sweeps sections' least width: the columns above, the checkboxes, a sliver of detail
TABLES_MIN_WIDTH = 1030
# Tabulator keeps 25 px right of a sortable header's title for its arrow: at these widths
# "progress", "epochs", "arch", "seed", "acc (%)" and "E (Hz)" showed as "pr…", "e…", "a…",
# "s…", "a…", "E …". A smaller arrow and title let every header read in full.
# (:host outranks the theme's sheet, which Panel links after this one)
COMPACT_HEADERS = """
:host .tabulator .tabulator-header { font-size: 12px; }
:host .tabulator .tabulator-header .tabulator-col.tabulator-sortable .tabulator-col-title { padding-right: 13px; }
:host .tabulator .tabulator-header .tabulator-col .tabulator-col-content .tabulator-col-sorter { right: 2px; }
:host .tabulator .tabulator-header .tabulator-col .tabulator-col-content .tabulator-col-sorter .tabulator-arrow {
  border-left-width: 4px; border-right-width: 4px; }
"""


# A run's progress sits at 0 until its first batch (an analysis: its first unit) ends, and
# on a machine's first run that includes compiling the fast backend's kernels (numba on
# CPU, Triton on a GPU: about a minute here), which read as a stuck run.
STARTING_NOTE = "starting: a machine's first run compiles the kernels first (about a minute)"
STARTING = "starting"  # the state column's word for it; the state filter counts it as running


def starting(run: Run) -> bool:
    """Running, and nothing done yet (no progress, no epoch)."""
    return run.state is RunState.RUNNING and not run.progress and run.n_epochs == 0


SENT_BACK_NOTE = "sent back to the queue: resumes from its checkpoint in its turn"
STOPPING_NOTE = "going back to the queue at its next batch"


def _state_note(run: Run, last: dict | None) -> str:
    if run.requeued_at is not None:  # sent back: say why it waits (or that it is stopping)
        return SENT_BACK_NOTE if run.state is RunState.QUEUED else STOPPING_NOTE
    if starting(run):
        return STARTING_NOTE
    # the table has each run's last epoch only: its pace is that epoch's (the Run page's, the median of ten)
    return time_left.describe(time_left.seconds_left(run, [last] if last else []))


def run_row(run: Run, last: dict | None) -> dict:
    config = run.config
    train = run.kind is RunKind.TRAIN
    size = f"{config.get('n_e')}/{config.get('n_i')}" if train else ""
    error = (run.error or "").strip().splitlines()
    if error:
        detail = error[0][:100]
    elif run.kind is RunKind.ANALYSIS:
        detail = f"{config.get('name', '')} of {run.source_run_id}"
    elif run.kind is RunKind.FORCE:  # no name, no source run: its row read "of None"
        detail = f"FORCE {config.get('experiment', '')}"
    else:
        detail = ""
    if not error:  # one note on why the run waits, or how long it has left
        if (note := _state_note(run, last)):
            detail = f"{detail} · {note}" if detail else note
    return {
        "id": run.id, "kind": run.kind.value, "state": STARTING if starting(run) else run.state.value,
        "progress": round(100 * (1.0 if run.state is RunState.SUCCEEDED else run.progress or 0.0)),
        "epochs": f"{run.n_epochs}/{config.get('epochs', '')}" if train else "",
        # seed as text: FORCE and analysis rows have none, and a column of ints and None
        # would turn float ("42.0")
        "arch": config.get("arch", ""), "seed": "" if config.get("seed") is None else str(config["seed"]),
        "tier": config.get("tier", ""),
        "size": size, "test_acc": (last or {}).get("test_acc"), "rate_e_hz": (last or {}).get("rate_e_hz"),
        "created": dt.datetime.fromtimestamp(run.created_at).strftime("%Y-%m-%d %H:%M"),  # "26-12-07" read as a day
        "sweep": run.sweep_id or "", "detail": detail,
    }


class RunsPage(param.Parameterized):
    state = param.Selector(default="all", objects=["all", *(s.value for s in RunState)])
    kind = param.Selector(default="all", objects=["all", *(k.value for k in RunKind)])
    text = param.String(default="", doc="matches id, arch, tier, sweep")

    def __init__(self, services: Services, feed: LiveFeed, **params):
        super().__init__(**params)
        self.jobs, self.feed = services.jobs, feed
        self.status = layout.status_line()
        self.form = ConfigForm()
        self.table = pn.widgets.Tabulator(
            self._frame(), pagination="remote", page_size=20, selectable="checkbox", show_index=False,
            # fit_columns: the columns share the panel's width (fit_data let it overflow)
            disabled=True, sizing_mode="stretch_width", height=640, layout="fit_columns",
            sorters=[{"field": "created", "dir": "desc"}], widths=COLUMN_WIDTHS,
            formatters={"progress": {"type": "progress", "legend": True, "color": "#2b6cb0"},
                        "id": {"type": "link", "urlPrefix": "/run?id=", "target": "_self"},
                        # blank, not "NaN", where a run has no epoch yet (or is no training run)
                        "test_acc": NumberFormatter(format="0.0", nan_format="", null_format=""),
                        "rate_e_hz": NumberFormatter(format="0.0", nan_format="", null_format="")},
            titles={"test_acc": "acc (%)", "rate_e_hz": "E (Hz)", "size": "E/I"},
            # a cut cell shows in full on hover; "acc (%)" may take two lines rather than an ellipsis
            configuration={"columnDefaults": {"tooltip": True, "headerWordWrap": True},
                           # an empty store showed a blank table
                           # (the form is beside the table or, in a narrow window, above it)
                           "placeholder": "No runs to show: launch one with the launch form "
                                          "(or widen the filters)."},
            stylesheets=[COMPACT_HEADERS])
        self.table.add_filter(pn.bind(self._filter, state=self.param.state, kind=self.param.kind,
                                      text=self.param.text))
        self.sweeps = pn.widgets.Tabulator(self._sweeps_frame(), show_index=False, disabled=True,
                                           sizing_mode="stretch_width", height=220, layout="fit_data_stretch",
                                           formatters={"compare": {"type": "link", "target": "_self",
                                                                   "label": "compare"}},
                                           configuration={"placeholder": "No sweeps yet: a JSON grid in the "
                                                                         "launch form queues one."})
        self.queue_note = pn.pane.Alert("", alert_type="warning", visible=False, margin=(0, 10),
                                        sizing_mode="stretch_width")
        self.queue_button = pn.widgets.Button(label="Pause queue", button_type="default", align="end")
        self.queue_button.on_click(self.toggle_queue)
        self._show_queue(self.jobs.queue_paused_at())
        pn.state.curdoc and self._follow()

    # --- data --------------------------------------------------------------------------
    def _frame(self) -> pd.DataFrame:
        runs, _ = self.jobs.list_runs(limit=MAX_ROWS)
        last = self.jobs.last_epochs([r.id for r in runs])
        frame = pd.DataFrame([run_row(r, last.get(r.id)) for r in runs], columns=COLUMNS)
        return frame.sort_values("created", kind="stable").reset_index(drop=True)

    def _sweeps_frame(self) -> pd.DataFrame:
        sweeps, _ = self.jobs.list_sweeps(limit=200)
        return pd.DataFrame([{
            "sweep": s.id, "state": s.state.value, "runs": len(s.run_ids),
            "done": sum(c.finished for c in s.child_states),
            "grid": ", ".join(f"{k}={v}" for k, v in s.grid.items()),
            "created": dt.datetime.fromtimestamp(s.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            "compare": "/compare?runs=" + ",".join(s.run_ids)} for s in sweeps],
            columns=["sweep", "state", "runs", "done", "grid", "created", "compare"])

    @staticmethod
    def _filter(frame: pd.DataFrame, state: str, kind: str, text: str) -> pd.DataFrame:
        keep = pd.Series(True, index=frame.index)
        if state != "all":
            keep &= frame["state"].replace(STARTING, RunState.RUNNING.value) == state
        if kind != "all":
            keep &= frame["kind"] == kind
        if text.strip():
            needle = text.strip().lower()
            keep &= frame[["id", "arch", "tier", "sweep", "detail"]].astype(str).apply(
                lambda col: col.str.lower().str.contains(needle, regex=False)).any(axis=1)
        return frame[keep]

    # --- live --------------------------------------------------------------------------
    def _follow(self) -> None:
        key = self.feed.subscribe(pn.state.curdoc, self._on_news)
        pn.state.on_session_destroyed(lambda _ctx: self.feed.unsubscribe(key))

    def _on_news(self, news: News) -> None:
        if news.queue_changed:  # paused or resumed here, in another tab or over the API
            self._show_queue(news.queue_paused_at)
        if not news.runs and not news.epochs:
            return
        frame = self.table.value
        # index labels, not positions: Tabulator.stream numbers an empty table's first row 1
        index = dict(zip(frame["id"], frame.index))
        ids = set(news.runs) | set(news.epochs)
        last = self.jobs.last_epochs([i for i in ids if i in index or i in news.runs])
        patches: dict[str, list] = {}
        fresh = []
        for run_id in ids:
            run = news.runs.get(run_id)
            if run is None:
                try:
                    run = self.jobs.get_run(run_id)
                except JobsError:
                    continue
            row = run_row(run, last.get(run_id))
            if run_id in index:
                for column in ("state", "progress", "epochs", "test_acc", "rate_e_hz", "detail"):
                    if frame.at[index[run_id], column] != row[column]:
                        patches.setdefault(column, []).append((index[run_id], row[column]))
            else:
                fresh.append(row)
        if patches:
            self.table.patch(patches, as_index=True)
        if fresh and frame.empty:
            # streaming into an empty table shows nothing until a reload: set its value
            self.table.value = self._frame()
        elif fresh:
            self.table.stream(pd.DataFrame(fresh, columns=COLUMNS).sort_values("created"), follow=False)
        if fresh or any(r.sweep_id for r in news.runs.values()):
            self.sweeps.value = self._sweeps_frame()

    # --- actions -----------------------------------------------------------------------
    def _selected(self) -> list[str]:
        return list(self.table.selected_dataframe["id"])

    def launch(self, _event=None) -> None:
        self.form.clear_errors()
        try:
            grid = self.form.sweep_grid()
        except ValueError as exc:
            self.form.show_error("sweep_grid", str(exc))
            layout.say(self.status, "The sweep grid is not valid; see the field.", "danger")
            return
        try:
            if grid is None:
                run = self.jobs.submit_run(self.form.values())
                message = f'Queued run <a href="/run?id={run.id}">{run.id}</a>.'
            else:
                sweep = self.jobs.submit_sweep(self.form.values(), grid)
                message = f"Queued sweep {sweep.id} with {len(sweep.run_ids)} runs."
        except InvalidRequest as exc:
            shown = self.form.show_error(exc.field, exc.message)
            layout.say(self.status, f"Not launched: {exc.field} {exc.message}" if not shown
                       else "Not launched: a field needs attention (marked below).", "danger")
            return
        layout.say(self.status, message)  # the live feed adds the row within a tick

    def _act(self, verb: str, action, order=iter) -> None:
        ids = self._selected()
        if not ids:
            layout.say(self.status, f"Select runs to {verb} (tick their boxes).", "warning")
            return
        done, refused = [], []
        for run_id in order(ids):
            try:
                action(run_id)
                done.append(run_id)
            except JobsError as exc:
                refused.append(f"{run_id}: {exc}")
        message = f"{verb.capitalize()}: {len(done)} run(s)." + ("".join(f"<br>{r}" for r in refused))
        layout.say(self.status, message, "warning" if refused else "success")

    def cancel(self, _event=None) -> None:
        self._act("cancel", self.jobs.cancel_run)

    def rerun(self, _event=None) -> None:
        self._act("re-run", self.jobs.rerun)

    def back_to_queue(self, _event=None) -> None:
        # a running run gives its slot to the queue's next run and waits its turn (a long
        # study run in the way of a short one); it resumes from its checkpoint
        self._act("send back to the queue", self.jobs.requeue_run)

    def start_next(self, _event=None) -> None:
        # the run moved last starts first: move the ticked runs in reverse, so they
        # start in the order the table lists them
        self._act("start next", self.jobs.move_to_front, order=reversed)

    def toggle_queue(self, _event=None) -> None:
        # what the button said, not the store's state now: a pause from another client just
        # before a click on "Pause queue" (or a double click) must not resume the queue.
        # The banner says what happened (a status line would go stale when another client resumes).
        resume = self.queue_button.label == "Resume queue"
        try:
            status = self.jobs.resume_queue() if resume else self.jobs.pause_queue()
        except (JobsError, sqlite3.Error) as exc:
            layout.say(self.status, f"The queue could not be {'resumed' if resume else 'paused'}: {exc}", "danger")
            return
        self._show_queue(status.paused_at)

    def _show_queue(self, paused_at: float | None) -> None:
        self.queue_button.label = "Resume queue" if paused_at is not None else "Pause queue"
        self.queue_button.button_type = "success" if paused_at is not None else "default"
        self.queue_note.visible = paused_at is not None
        if paused_at is not None:
            since = dt.datetime.fromtimestamp(paused_at).strftime("%Y-%m-%d %H:%M")
            self.queue_note.object = (f"<b>Queue paused</b> since {since}: no queued run starts, running runs "
                                      "go on. Order the queued runs with <i>Start next</i>, then "
                                      "<i>Resume queue</i>.")

    def delete(self, _event=None) -> None:
        self._act("delete", self.jobs.delete_run)
        self.table.value = self._frame()
        self.table.selection = []

    def compare(self, _event=None) -> None:
        ids = self._selected()
        if not ids:
            layout.say(self.status, "Select the runs to compare (tick their boxes).", "warning")
            return
        # Location.href is read-only in the browser: a new path and query with reload=True,
        # sent in one change, make the page load the new URL
        pn.state.location.param.update(reload=True, pathname="/compare", search="?runs=" + ",".join(ids))

    # --- view --------------------------------------------------------------------------
    def view(self) -> pn.Column:
        launch = pn.widgets.Button(label="Launch", button_type="primary", width=120)
        launch.on_click(self.launch)
        form = layout.section("Launch a run or a sweep", self.form.panel(), launch, width=430,
                              sizing_mode=None)
        actions = pn.Row(*(self._button(label, handler, kind) for label, handler, kind in (
            ("Compare selected", self.compare, "primary"), ("Cancel", self.cancel, "warning"),
            ("Start next", self.start_next, "default"), ("Back to queue", self.back_to_queue, "default"),
            ("Re-run", self.rerun, "default"),
            ("Delete", self.delete, "danger"))))
        filters = pn.Row(
            pn.widgets.Select.from_param(self.param.state, label="state", width=130),
            pn.widgets.Select.from_param(self.param.kind, label="kind", width=130),
            pn.widgets.TextInput.from_param(self.param.text, label="search", placeholder="id, arch, sweep...",
                                            width=220))
        # the actions get a row of their own: beside the filters, six buttons pushed the page
        # wider than a 1400 px window
        runs = layout.section("Runs", filters, actions,
                              pn.Row(self.queue_button, self.queue_note, sizing_mode="stretch_width"), self.table)
        sweeps = layout.section("Sweeps", self.sweeps)
        # the tables go below the form where the window is too narrow for both side by side
        # (1280-1440 px laptops): beside it, the runs table scrolled sideways, "detail" out of view
        tables = pn.Column(runs, sweeps, sizing_mode="stretch_width", styles={"flex": f"1 1 {TABLES_MIN_WIDTH}px"})
        return layout.page("Runs", "/", pn.FlexBox(form, tables, flex_wrap="wrap", align_items="flex-start",
                                                   sizing_mode="stretch_width"), status=self.status)

    @staticmethod
    def _button(label: str, handler, kind: str) -> pn.widgets.Button:
        button = pn.widgets.Button(label=label, button_type=kind, align="end")
        button.on_click(handler)
        return button


def create(services: Services, feed: LiveFeed) -> pn.Column:
    return RunsPage(services, feed).view()

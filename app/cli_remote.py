"""The command line against a server: `--server URL` on train/study/force, `runs` and `queue`.

    spikeboard train --server http://gpu-box:8000 --tier smoke --epochs 3   # queue, then show its epochs
    spikeboard runs list|show|follow|cancel|front|requeue|download --server http://gpu-box:8000
    spikeboard queue pause|resume|show --server http://gpu-box:8000   # queue and order runs, then resume

Everything goes through the REST API (`app.client.Client`); nothing opens a data
directory. The token comes from --token or SPIKEBOARD_TOKEN; `runs` and `queue` take the
server from --server or SPIKEBOARD_URL (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

if TYPE_CHECKING:  # app.client loads the API's models: only when a remote command runs
    from app.client import Client, Event


def add_remote_arguments(sub: argparse._SubParsersAction, train: argparse.ArgumentParser,
                         study: argparse.ArgumentParser, force: argparse.ArgumentParser,
                         backup: argparse.ArgumentParser) -> None:
    """--server/--token on the queueing commands and on backup, and the `runs` command group."""
    group = backup.add_argument_group("from a server (download through its REST API, for a copy off its machine)")
    group.add_argument("--server", metavar="URL", help="back up this spikeboard server's data directory, "
                                                       "e.g. http://gpu-box:8000")
    group.add_argument("--token", help="its bearer token (default: SPIKEBOARD_TOKEN)")
    for parser in (train, study, force):
        group = parser.add_argument_group("against a server (queue through its REST API, nothing local)")
        group.add_argument("--server", metavar="URL", help="queue on this spikeboard server, e.g. http://gpu-box:8000")
        group.add_argument("--token", help="its bearer token (default: SPIKEBOARD_TOKEN)")
        if parser is train:
            group.add_argument("--detach", action="store_true",
                               help="print the queued run and return instead of following its epochs")
    for action in train._actions:  # --out names a local folder: not needed with --server (checked below)
        if action.dest == "out":
            action.required = False
            action.help = f"{action.help} (required without --server)"

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--server", metavar="URL",
                        help="the spikeboard server (default: SPIKEBOARD_URL or http://127.0.0.1:8000)")
    server.add_argument("--token", help="its bearer token (default: SPIKEBOARD_TOKEN)")
    runs = sub.add_parser("runs", help="list, show, follow, cancel, reorder or download runs on a server")
    verbs = runs.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", parents=[server], help="runs, newest first")
    listing.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    listing.add_argument("--kind", choices=("train", "analysis", "force"))
    listing.add_argument("--sweep", help="only the runs of this sweep")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("-q", "--quiet", action="store_true", help="print run ids only")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    show = verbs.add_parser("show", parents=[server], help="one run as JSON, with its last epoch")
    show.add_argument("run_id")
    follow = verbs.add_parser("follow", parents=[server], help="live state and epochs until the run ends")
    follow.add_argument("run_id")
    cancel = verbs.add_parser("cancel", parents=[server], help="cancel queued or running runs")
    cancel.add_argument("run_ids", nargs="+", metavar="run_id")
    front = verbs.add_parser("front", parents=[server],
                             help="queued runs start next, in the order given (before every run queued so far)")
    front.add_argument("run_ids", nargs="+", metavar="run_id")
    requeue = verbs.add_parser("requeue", parents=[server],
                               help="running runs go back to the queue: each stops at its next batch, gives its "
                                    "slot to the next queued run and resumes from its checkpoint in its turn")
    requeue.add_argument("run_ids", nargs="+", metavar="run_id")
    queue = sub.add_parser("queue", help="pause or resume a server's queue (queue and order runs, then resume)")
    queue_verbs = queue.add_subparsers(dest="verb", required=True)
    queue_verbs.add_parser("show", parents=[server], help="paused or serving, and how many runs wait and run")
    queue_verbs.add_parser("pause", parents=[server], help="no queued run starts until resumed; running runs go on")
    queue_verbs.add_parser("resume", parents=[server], help="queued runs start again, in queue order")
    download = verbs.add_parser("download", parents=[server], help="files of a run's folder")
    download.add_argument("run_id")
    download.add_argument("names", nargs="*", metavar="NAME",
                          help="e.g. artifacts/weights_final.npz (default: every file of the run)")
    download.add_argument("--to", default=".", help="folder to write into, as TO/RUN_ID/NAME (default: .)")


def remote_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int | None:
    """Run `args` through a server and return the exit status; None: a local command."""
    if args.command == "runs":
        return _with_client(args, RUNS[args.verb])
    if args.command == "queue":
        return _with_client(args, queue_command)
    if args.command == "train" and not getattr(args, "server", None) and args.out is None:
        parser.error("train: --out is required (or --server URL to queue the run on a server)")
    if args.command in QUEUE and getattr(args, "server", None):
        return _with_client(args, QUEUE[args.command])
    if args.command == "backup" and args.server:
        if args.data_dir:
            parser.error("backup: --data-dir names a local data directory; with --server the server's is backed up")
        return _with_client(args, download_backup)
    return None


def download_backup(client: Client, args: argparse.Namespace) -> int:
    try:
        path = client.backup(args.to)
    except OSError as exc:  # the local file: a folder without write access, a full disk
        print(f"spikeboard: backup failed: {exc}", file=sys.stderr)
        return 2
    print(f"backed up {client.url} to {path} ({path.stat().st_size / 1e6:.1f} MB); "
          f"serve it with: spikeboard restore {path} --data-dir NEW && spikeboard serve --data-dir NEW")
    return 0


def _with_client(args: argparse.Namespace, command: Callable[["Client", argparse.Namespace], int]) -> int:
    from app.client import Client, ClientError, InvalidRequest

    try:
        with Client(args.server, token=args.token) as client:
            return command(client, args)
    except InvalidRequest as exc:
        print(f"spikeboard: invalid request: {exc}", file=sys.stderr)
    except (ClientError, ValueError) as exc:  # ValueError: a bad --set or --config before sending
        print(f"spikeboard: {exc}", file=sys.stderr)
    return 2


# --- queueing through the API ---------------------------------------------------------------

def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the user gave (--config FILE, the named flags, --set KEY=VALUE); the
    server fills in the rest and validates them all."""
    from app.cli import set_fields

    fields: dict[str, Any] = {}
    if args.config:
        fields.update(json.loads(Path(args.config).read_text()))
    for name in ("arch", "tier", "seed", "epochs", "device", "backend"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    fields.update(set_fields(args.set))
    return fields


def queue_train(client: Client, args: argparse.Namespace) -> int:
    if args.out or args.resume:
        print("spikeboard: --out and --resume name a local run folder; with --server the server keeps "
              "(and resumes) its runs", file=sys.stderr)
        return 2
    run = client.submit_run(config_fields(args))
    print(json.dumps({"run_id": run.id, "state": run.state.value, "server": client.url}))
    warn_if_paused(client)
    if args.detach:
        return 0
    return follow_run(client, run.id)


def queue_study(client: Client, args: argparse.Namespace) -> int:
    from app.cli import study_overrides

    if args.name is None:
        for preset in client.study_presets().data:
            print(f"{preset.name:<9} {preset.title}")
        return 0
    if args.local:
        print("spikeboard: give --local OUT or --server URL, not both", file=sys.stderr)
        return 2
    study = client.submit_study(args.name, study_overrides(args), args.source)
    print(json.dumps({"study_id": study.id, "runs": len(study.members), "server": client.url}))
    warn_if_paused(client)
    return 0


def queue_force(client: Client, args: argparse.Namespace) -> int:
    from app.cli import force_params

    if args.out:
        print("spikeboard: give --out OUT or --server URL, not both", file=sys.stderr)
        return 2
    run = client.submit_force(args.experiment, force_params(args.set or []))
    print(json.dumps({"run_id": run.id, "kind": run.kind.value, "server": client.url}))
    warn_if_paused(client)
    return 0


def warn_if_paused(client: Client) -> None:
    """A run queued on a paused queue waits: say so, or `train --server` follows it in silence."""
    from app.client import ClientError

    try:
        paused = client.queue().paused
    except (ClientError, ValueError):  # an older server, a blip: the run is queued all the same
        return
    if paused:
        print("spikeboard: the server's queue is paused: queued runs wait until "
              "`spikeboard queue resume`", file=sys.stderr)


QUEUE = {"train": queue_train, "study": queue_study, "force": queue_force}


# --- spikeboard runs ... ------------------------------------------------------------------

def runs_list(client: Client, args: argparse.Namespace) -> int:
    page = client.list_runs(state=args.state, kind=args.kind, sweep_id=args.sweep, limit=args.limit)
    if args.json:
        print(page.model_dump_json(indent=2))
    elif args.quiet:
        for run in page.data:
            print(run.id)
    else:
        print(f"{'ID':<14}{'KIND':<10}{'STATE':<11}{'PROGRESS':>9}{'EPOCHS':>8}  {'ARCH':<6}CREATED")
        for run in page.data:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created_at))
            arch = run.config.get("arch", "") if run.kind.value == "train" else ""
            print(f"{run.id:<14}{run.kind.value:<10}{run.state.value:<11}{run.progress:>8.0%}{run.n_epochs:>8}"
                  f"  {arch:<6}{created}")
        print(f"{len(page.data)} of {page.count} runs", file=sys.stderr)
    return 0


def runs_show(client: Client, args: argparse.Namespace) -> int:
    run = client.get_run(args.run_id)
    shown = run.model_dump(mode="json")
    metrics = client.metrics(run)
    shown["last_epoch"] = None if metrics.empty else json.loads(metrics.iloc[-1].to_json())
    print(json.dumps(shown, indent=2))
    return 0


def runs_follow(client: Client, args: argparse.Namespace) -> int:
    return follow_run(client, args.run_id)


def follow_run(client: Client, run_id: str, out: TextIO | None = None) -> int:
    """Print state changes and one line per epoch as they happen; exit 0 once the run
    succeeded, 1 if it failed or was cancelled. Ctrl-C stops following, not the run."""
    out = out or sys.stdout
    started = time.monotonic()
    state = "unknown"
    try:
        for event in client.follow(run_id):
            state = _print_event(event, started, out, state)
    except KeyboardInterrupt:
        print(f"\nstopped following; the run goes on: spikeboard runs follow {run_id} --server {client.url}",
              file=sys.stderr)
        return 130
    return 0 if state == "succeeded" else 1


def _print_event(event: Event, started: float, out: TextIO, state: str) -> str:
    elapsed = f"[{time.monotonic() - started:6.1f} s]"
    if event.name == "state":
        state = event.data["state"]
        line = f"{elapsed} {event.data['id']} {state}"
        if event.data.get("error"):
            line += f": {event.data['error'].strip().splitlines()[-1]}"
        print(line, file=out, flush=True)
    elif event.name == "epoch":
        print(f"{elapsed} {format_epoch(event.data)}", file=out, flush=True)
    return state


def format_epoch(record: dict[str, Any]) -> str:
    """One epoch's headline numbers; keys a run kind does not have are left out."""
    parts = [f"epoch {record.get('epoch', '?'):>3}"]
    for key, label, unit in (("train_loss", "loss", ""), ("test_acc", "test acc", "%"),
                             ("rate_e_hz", "rate E", " Hz"), ("rate_i_hz", "rate I", " Hz"),
                             ("epoch_s", "took", " s")):
        value = record.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.{1 if unit else 3}f}{unit}")
    return "  ".join(parts)


def runs_cancel(client: Client, args: argparse.Namespace) -> int:
    def cancel(run_id: str) -> str:
        run = client.cancel(run_id)
        pending = run.state.value == "running" and run.cancel_requested
        return f"{run.id} {run.state.value}{' (cancel requested)' if pending else ''}"

    return _each_run(args.run_ids, cancel)


def runs_front(client: Client, args: argparse.Namespace) -> int:
    def front(run_id: str) -> str:
        run = client.move_to_front(run_id)
        return f"{run.id} queued, priority {run.priority}"

    # the run moved last starts first: move them in reverse, so the first named starts first
    return _each_run(args.run_ids, front, act_order=reversed)


def runs_requeue(client: Client, args: argparse.Namespace) -> int:
    def requeue(run_id: str) -> str:
        run = client.requeue(run_id)
        return f"{run.id} {run.state.value} (going back to the queue at its next batch)"

    return _each_run(args.run_ids, requeue)


def _each_run(run_ids: list[str], act: Callable[[str], str], act_order: Callable = iter) -> int:
    """`act` on each run (in `act_order`), then its lines in the order given; an API error
    is printed and the others go on (exit status 2)."""
    from app.client import ApiError

    lines, status = {}, 0
    for run_id in act_order(run_ids):
        try:
            lines[run_id] = act(run_id)
        except ApiError as exc:
            lines[run_id] = None
            print(f"spikeboard: {run_id}: {exc}", file=sys.stderr)
            status = 2
    for run_id in run_ids:
        if lines.get(run_id):
            print(lines[run_id])
    return status


def queue_command(client: Client, args: argparse.Namespace) -> int:
    status = {"show": client.queue, "pause": client.pause_queue, "resume": client.resume_queue}[args.verb]()
    if status.paused:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.paused_at))
        print(f"paused since {since}: {status.queued} queued run(s) wait, {status.running} running "
              f"(spikeboard queue resume)")
    else:
        print(f"serving: {status.queued} queued, {status.running} running")
    return 0


def runs_download(client: Client, args: argparse.Namespace) -> int:
    names = args.names or [a.name for a in client.artifacts(args.run_id)]
    folder = Path(args.to) / args.run_id
    for name in names:
        target = folder / name
        client.download(args.run_id, name, target)
        print(target)
    return 0


RUNS = {"list": runs_list, "show": runs_show, "follow": runs_follow, "cancel": runs_cancel,
        "front": runs_front, "requeue": runs_requeue, "download": runs_download}

"""The `spikeboard` command line: train, simulate, serve, study, bench."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from engine.config import ARCHS, BACKENDS, TIERS, Config, ConfigError

CONFIG_DEFAULTS = {f.name: f.default for f in dataclass_fields(Config)}


def _config_help(name: str, what: str) -> str:
    # the flags default to None so that --config FILE values survive; the help says what None means
    return f"{what} (default: {CONFIG_DEFAULTS[name]}, the config's)"


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as ping


def set_fields(items: list[str] | None) -> dict[str, Any]:
    """The --set KEY=VALUE items as fields, each VALUE read as JSON where it parses
    (seed=[42, 43], backend=fast)."""
    fields: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(key, "needs KEY=VALUE after --set")
        fields[key] = _parse_value(value)
    return fields


def build_config(args: argparse.Namespace) -> Config:
    """Config from --config FILE, then the named flags, then --set KEY=VALUE."""
    fields: dict[str, Any] = {}
    if args.config:
        fields.update(json.loads(Path(args.config).read_text()))
    for name in ("arch", "tier", "seed", "epochs", "device", "backend"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    fields.update(set_fields(args.set))
    return Config.from_dict(fields)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.train import train

    config = build_config(args)
    print(f"spikeboard: {config.arch}, {config.tier} tier, {config.epochs} epochs, {config.backend} backend "
          f"on {config.device}; loading data", file=sys.stderr)
    bars: list[Any] = []  # made at the first batch, when its total is known

    def on_progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="batch", desc=f"{config.arch} seed {config.seed}", file=sys.stderr))
        bars[0].total, bars[0].n = total, done
        bars[0].refresh()

    def on_epoch(record: dict[str, Any]) -> None:
        if bars:
            bars[0].set_postfix(epoch=record["epoch"], acc=f"{record['test_acc']:.1f}%",
                                rate_e=f"{record['rate_e_hz']:.1f}Hz")

    try:
        summary = train(config, args.out, resume=args.resume, on_epoch=on_epoch, on_progress=on_progress)
    finally:
        for bar in bars:
            bar.close()
    print(json.dumps(summary, indent=2))
    print(f"spikeboard: convergence: {summary.get('convergence', '?')}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from engine.inspect import simulate_run

    result = simulate_run(args.run, weights=args.weights, samples=args.samples)
    print(json.dumps(result, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.server import serve

    serve(host=args.host, port=args.port, data_dir=args.data_dir, workers=args.workers, token=args.token,
          executor=args.executor, ray_address=args.ray_address, runs_per_gpu=args.runs_per_gpu,
          public_url=args.public_url, analysis_slots=args.analysis_slots, pack_runs=args.pack_runs,
          paused=args.paused)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from jobs.backup import backup
    from jobs.paths import DataDir

    summary = backup(DataDir.at(_data_dir(args)), args.to)
    print(f"backed up {summary.runs} run(s), {summary.files} file(s), {summary.bytes / 1e6:.1f} MB to {summary.path}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from jobs.backup import restore
    from jobs.paths import DataDir

    summary = restore(args.archive, DataDir.at(_data_dir(args)))
    requeued = f"; {len(summary.requeued)} that were running are queued again to resume" if summary.requeued else ""
    print(f"restored {summary.runs} run(s) into {summary.data_dir}{requeued}; "
          f"serve it with: spikeboard serve --data-dir {summary.data_dir}")
    return 0


def _data_dir(args: argparse.Namespace) -> str:
    from app.settings import Settings

    return str(args.data_dir or Settings.from_env().data_dir)


def study_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--tier, --epochs, then --set KEY=VALUE (JSON values, e.g. --set seed=[42])."""
    overrides: dict[str, Any] = {}
    for name in ("tier", "epochs"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    overrides.update(set_fields(args.set))
    return overrides


def cmd_study(args: argparse.Namespace) -> int:
    """List presets, run one here (--local OUT) or queue it in a data dir's store."""
    from engine.studies import expand, list_presets

    if args.name is None:
        for preset in list_presets():
            print(f"{preset['name']:<9} {preset['title']}")
        return 0
    overrides = study_overrides(args)
    if args.local:
        from engine.studies.local import run_study_local
        from engine.studies.report import build_report, entries_from_folder, report_csv, report_markdown

        plan = expand(args.name, overrides)
        out = run_study_local(plan, args.local, source_run=args.source, parallel=args.parallel,
                              threads=args.threads, log=lambda line: print(line, file=sys.stderr))
        from engine.studies.figures import figures_markdown, write_figures

        entries = entries_from_folder(out)
        report = build_report(plan.to_dict(), entries)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        # the seed entry's figures as PNGs beside the Markdown (issue 17, item 14)
        figures = write_figures(out, entries) if plan.runs else []
        (out / "report.md").write_text(report_markdown(report) + "\n" + figures_markdown(figures))
        (out / "report.csv").write_text(report_csv(report))
        print(report_markdown(report))
        return 0
    from jobs.models import JobsError
    from jobs.paths import DataDir
    from jobs.service import JobService
    from jobs.store import RunStore

    data = DataDir.at(_data_dir(args))
    store = RunStore(data.db_path)
    try:
        study = JobService(store, data).submit_study(args.name, overrides, args.source)
    except JobsError as exc:
        print(f"spikeboard: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(json.dumps({"study_id": study.id, "runs": len(study.run_ids),
                      "hint": f"a server on {data.root} runs it: spikeboard serve --data-dir {data.root}"}))
    return 0


def force_params(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE: a ForceConfig field (or config.FIELD) goes under params.config,
    any other key is an experiment parameter; values are JSON (bare words are strings)."""
    from dataclasses import fields as dataclass_fields

    from engine.force.config import ForceConfig

    fields = {f.name for f in dataclass_fields(ForceConfig)}
    params: dict[str, Any] = {"config": {}}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(key, "needs KEY=VALUE after --set")
        name = key.removeprefix("config.")
        if key.startswith("config.") or name in fields:
            params["config"][name] = _parse_value(value)
        else:
            params[key] = _parse_value(value)
    return params


def cmd_force(args: argparse.Namespace) -> int:
    """Run a FORCE experiment here (--out) or queue it in a data dir's store."""
    params = force_params(args.set or [])
    if args.out:
        from tqdm import tqdm

        from engine.force.experiments import run_experiment

        bar = tqdm(total=0, unit="", desc=f"force {args.experiment}", file=sys.stderr)

        def on_progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        try:
            result = run_experiment(args.experiment, params, args.out, on_progress=on_progress)
        finally:
            bar.close()
        print(json.dumps({k: v for k, v in result.items() if k != "params"}, indent=2))
        return 0
    from jobs.models import JobsError
    from jobs.paths import DataDir
    from jobs.service import JobService
    from jobs.store import RunStore

    data = DataDir.at(_data_dir(args))
    store = RunStore(data.db_path)
    try:
        run = JobService(store, data).submit_force(args.experiment, params)
    except JobsError as exc:
        print(f"spikeboard: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(json.dumps({"run_id": run.id, "kind": run.kind.value,
                      "hint": f"a server on {data.root} runs it: spikeboard serve --data-dir {data.root}"}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikeboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one network into a run folder",
                           description="Train one network into a run folder. Flags override --config FILE, "
                                       "--set overrides both; unset fields take the config's defaults.")
    train.add_argument("--arch", choices=ARCHS, help=_config_help("arch", "network: PING (E<->I loop) or COBA"))
    train.add_argument("--tier", choices=TIERS, help=_config_help(
        "tier", "data: smoke 500 images, small 1,000, medium 2,000, large 70,000"))
    train.add_argument("--seed", type=int, help=_config_help("seed", "seed of the weights, data split and input"))
    train.add_argument("--epochs", type=int, help=_config_help("epochs", "passes over the training images"))
    train.add_argument("--device", help=_config_help("device", "cpu, cuda or cuda:N"))
    train.add_argument("--backend", choices=BACKENDS, help=_config_help(
        "backend", "fast (spike-identical, 10-30x faster) or reference (the executable spec)"))
    train.add_argument("--config", help="JSON file of config fields")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any config field, value as JSON (repeatable), e.g. --set n_e=200")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")

    simulate = sub.add_parser("simulate", help="run inference with a run folder's weights")
    simulate.add_argument("--run", required=True, help="run folder")
    simulate.add_argument("--weights", choices=("final", "init", "last"), default="final")
    simulate.add_argument("--samples", type=int, default=None, help="test images to use (default: all)")

    # serve: every flag defaults to None so that SPIKEBOARD_* variables apply (app.settings)
    from app.settings import field_help

    serve = sub.add_parser("serve", help="serve the API and dashboard",
                           description="Serve the API and dashboard. Each flag overrides its SPIKEBOARD_* "
                                       "environment variable, which overrides the default.")
    serve.add_argument("--host", help=field_help("host"))
    serve.add_argument("--port", type=int, help=field_help("port"))
    serve.add_argument("--data-dir", help=field_help("data_dir"))
    serve.add_argument("--workers", type=int, help=field_help("workers"))
    serve.add_argument("--analysis-slots", type=int, help=field_help("analysis_slots"))
    serve.add_argument("--token", help=field_help("token"))
    serve.add_argument("--executor", choices=("local", "ray"), help=field_help("executor"))
    serve.add_argument("--ray-address", help=field_help("ray_address"))
    serve.add_argument("--runs-per-gpu", type=int, help=field_help("runs_per_gpu"))
    serve.add_argument("--pack-runs", type=int, help=field_help("pack_runs"))
    serve.add_argument("--public-url", help=field_help("public_url"))
    serve.add_argument("--paused", action="store_true", default=None, help=field_help("paused"))

    from engine.force.names import EXPERIMENT_NAMES as EXPERIMENTS  # no torch: `spikeboard runs` starts fast
    from engine.studies import PRESETS

    study = sub.add_parser("study", help="run or queue a named experiment of the study (no name: list them)")
    study.add_argument("name", nargs="?", choices=list(PRESETS), metavar="PRESET",
                       help="preset: " + ", ".join(PRESETS))
    study.add_argument("--tier", choices=TIERS)
    study.add_argument("--epochs", type=int)
    study.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a config field, grid axis (a JSON list) or analysis parameter (repeatable)")
    study.add_argument("--source", help="the trained run an inference preset analyses: a run id "
                                        "(queued) or a run folder (--local)")
    study.add_argument("--local", metavar="OUT", help="run here into folder OUT instead of queueing")
    study.add_argument("--parallel", type=int, default=1, help="with --local: runs trained at once")
    study.add_argument("--threads", type=int, default=1, help="with --local: torch threads per run")
    study.add_argument("--data-dir", help="the store to queue into (env SPIKEBOARD_DATA_DIR, default spikeboard-data)")

    force = sub.add_parser("force", help="run or queue a FORCE experiment (LIF vs rate twin, docs/force.md)")
    force.add_argument("experiment", choices=list(EXPERIMENTS), metavar="EXPERIMENT",
                       help="experiment: " + ", ".join(EXPERIMENTS))
    force.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a ForceConfig field (e.g. n=200) or experiment parameter (e.g. q_values=[5,10]), "
                            "value as JSON (repeatable)")
    force.add_argument("--out", help="run here into folder OUT (result.json and .npz files) instead of queueing")
    force.add_argument("--data-dir", help="the store to queue into (env SPIKEBOARD_DATA_DIR, default spikeboard-data)")

    backup = sub.add_parser("backup", help="write a data directory to one .tar.gz, also while its server runs",
                            description="Write the store and every run folder to one .tar.gz: a consistent "
                                        "snapshot, safe while the server trains (docs/RELIABILITY.md).")
    backup.add_argument("--to", required=True, metavar="FILE", help="the .tar.gz to write (outside the data dir)")
    backup.add_argument("--data-dir", help="the data directory (env SPIKEBOARD_DATA_DIR, default spikeboard-data; "
                                           "not with --server)")
    restore = sub.add_parser("restore", help="unpack a backup into a new data directory, to serve from",
                             description="Unpack a `spikeboard backup` into a new or empty data directory. "
                                         "Runs that were running when it was taken are queued again and "
                                         "resume from their checkpoints when it is served.")
    restore.add_argument("archive", help="the .tar.gz written by `spikeboard backup`")
    restore.add_argument("--data-dir", help="the new data directory (env SPIKEBOARD_DATA_DIR, default spikeboard-data)")

    sub.add_parser("bench", help="benchmark reference vs fast engine (see --help after bench); `bench force`: FORCE per grid point", add_help=False)
    from app.cli_remote import add_remote_arguments  # --server on train/study/force, and `runs`

    add_remote_arguments(sub, train=train, study=study, force=force, backup=backup)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["bench", "force"]:  # seconds per FORCE grid point (engine/force/bench.py)
        from engine.force.bench import main as force_bench_main

        return force_bench_main(argv[2:])
    if argv[:1] == ["bench"]:  # the benchmark parses its own flags
        from engine.bench import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from app.cli_remote import remote_command

    if (status := remote_command(parser, args)) is not None:  # through a server's REST API
        return status
    if args.command in ("backup", "restore"):  # files and SQLite only: no torch
        from jobs.backup import BackupError

        try:
            return cmd_backup(args) if args.command == "backup" else cmd_restore(args)
        except BackupError as exc:
            print(f"spikeboard: {exc}", file=sys.stderr)
            return 2
    # torch comes in here, with the local commands: through a server the CLI never needs it
    from engine.data import DataError
    from engine.train import NonFiniteError, TrainingCancelled

    commands = {"train": cmd_train, "simulate": cmd_simulate, "serve": cmd_serve, "force": cmd_force, "study": cmd_study}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"spikeboard: invalid config: {exc}", file=sys.stderr)
    except (DataError, NonFiniteError, FileNotFoundError, ValueError) as exc:
        print(f"spikeboard: {exc}", file=sys.stderr)
    except (TrainingCancelled, KeyboardInterrupt):
        print("spikeboard: stopped; resume with --resume", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

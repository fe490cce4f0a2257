"""The `spikeboard` command line hands `bench` and its flags to engine.bench."""

from __future__ import annotations

import pytest

from app.cli import main


def test_bench_subcommand_parses_the_benchmarks_own_flags(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spikeboard bench")
    assert "--ref-batch" in out and "--infer-batch" in out and "--device" in out


def test_bench_rejects_an_unknown_flag_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--batchsize", "4"])
    assert done.value.code == 2
    assert "unrecognized arguments: --batchsize" in capsys.readouterr().err


# --- first use (issue 16): help, defaults, settings, progress, convergence ----------

def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_train_help_names_every_flag_and_its_default(capsys):
    text = _help(capsys, "train")
    for flag, default in (("--arch", "ping"), ("--tier", "smoke"), ("--seed", "42"), ("--epochs", "10"),
                          ("--backend", "fast"), ("--device", "cpu")):
        assert f"(default: {default}, the config's)" in text.split(flag, 2)[-1].split("--", 1)[0], flag


def test_study_and_force_names_are_choices_from_the_registries(capsys):
    from engine.force.experiments import EXPERIMENTS
    from engine.studies import PRESETS

    for command, names in (("study", PRESETS), ("force", EXPERIMENTS)):
        with pytest.raises(SystemExit) as done:
            main([command, "no_such_name"])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice: 'no_such_name'" in err and all(repr(n) in err for n in names), err


def test_fast_is_the_default_backend_of_the_config_the_cli_and_the_api():
    from app.api.schemas import RunCreate
    from app.cli import build_parser, build_config
    from engine.config import Config

    assert Config().backend == "fast"
    assert build_config(build_parser().parse_args(["train", "--out", "x"])).backend == "fast"
    config_schema = next(d for d in RunCreate.model_json_schema()["$defs"].values() if "backend" in d["properties"])
    assert config_schema["properties"]["backend"]["default"] == "fast"


@pytest.fixture
def served(monkeypatch):
    from app import server

    started = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, host, port, **kw: started.append((app, host, port)))
    monkeypatch.setattr(server, "create_app", lambda settings: settings)
    return started


def test_serve_reads_spikeboard_variables_and_flags_override_them(served, monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKEBOARD_PORT", "8765")
    monkeypatch.setenv("SPIKEBOARD_WORKERS", "0")
    monkeypatch.setenv("SPIKEBOARD_DATA_DIR", str(tmp_path / "env-data"))
    assert main(["serve"]) == 0
    settings, host, port = served[-1]
    assert (host, port, settings.workers, settings.data_dir) == ("127.0.0.1", 8765, 0, tmp_path / "env-data")
    assert main(["serve", "--port", "8766", "--data-dir", str(tmp_path / "flag-data")]) == 0
    settings, _, port = served[-1]
    assert (port, settings.workers, settings.data_dir) == (8766, 0, tmp_path / "flag-data")


def test_python_m_app_server_is_the_same_parser(served, monkeypatch):
    from app import server

    monkeypatch.setenv("SPIKEBOARD_HOST", "localhost")
    with pytest.raises(SystemExit) as done:
        server.main(["--port", "8767"])
    assert done.value.code == 0 and served[-1][1:] == ("localhost", 8767)


@pytest.mark.slow  # a real smoke training (~20 s on 2 busy cores)
def test_train_progress_starts_with_its_total_and_reports_convergence(capsys, tmp_path):
    code = main(["train", "--epochs", "1", "--set", "n_e=20", "--set", "n_i=5", "--set", "t_ms=10",
                 "--set", "batch_size=250", "--out", str(tmp_path / "run")])
    assert code == 0
    err = capsys.readouterr().err
    assert "0batch [" not in err and "| 0/2 [" in err, err  # the bar knows its total from the start
    assert "fast backend" in err
    assert "convergence: not enough epochs (1 of the 10 the slopes need)" in err

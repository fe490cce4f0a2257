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

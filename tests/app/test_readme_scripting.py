"""README's "Scripting" section, run verbatim against a real server on 127.0.0.1.

Its ```bash blocks run in bash, its ```python blocks in one Python process (like a
notebook's cells), all with SPIKEBOARD_URL / SPIKEBOARD_TOKEN pointing at the test
server; ```sh blocks (the export lines naming a remote machine) are only shown.
The blocks are read from README.md here, so the README cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.models import RunState
from tests.app.conftest import REPO

BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
TOKEN = "readme-test-token"


def scripting_blocks() -> list[tuple[str, str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Scripting\n", 1)[1].split("\n## ", 1)[0]
    return [(lang, code) for lang, code in BLOCK.findall(section)]


def test_the_section_has_each_kind_of_example():
    blocks = scripting_blocks()
    code = "\n".join(c for _, c in blocks)
    assert [lang for lang, _ in blocks].count("python") == 2 and [lang for lang, _ in blocks].count("bash") == 2
    for needle in ("curl", "from spikeboard import Client", "wait_sweep(sweep, progress=True)",
                   "spikeboard train --server", "spikeboard runs follow"):
        assert needle in code


def run_examples(url: str, token: str | None, cwd: Path) -> dict[str, str]:
    env = {**os.environ, "SPIKEBOARD_URL": url, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg",
           # the `spikeboard` and `python3` of this interpreter
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["SPIKEBOARD_TOKEN"] = token or ""  # as the README says: empty for a server without one
    outputs: dict[str, str] = {}
    blocks = scripting_blocks()
    python_cells = [code for lang, code in blocks if lang == "python"]
    first_cell = next(i for i, (lang, _) in enumerate(blocks) if lang == "python")
    notebook = "import sys\nfor cell in sys.argv[1:]:\n    exec(compile(cell, 'README.md', 'exec'), {})\n"
    for i, (lang, code) in enumerate(blocks):
        if lang == "bash":
            args = ["bash", "-euo", "pipefail", "-c", code]
        elif lang == "python":
            if i != first_cell:
                continue  # the cells run together, in one process, at the first
            args = [sys.executable, "-c", notebook, *python_cells]
        else:
            assert lang == "sh", f"block {i}: {lang}: run it here or mark it sh"
            continue
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"README block {i} ({lang}) failed:\n{code}\n{done.stdout}\n{done.stderr}"
        outputs[f"{lang}{i}"] = done.stdout + done.stderr
    return outputs


def check_outputs(outputs: dict[str, str], cwd: Path) -> None:
    text = "\n".join(outputs.values())
    assert "event: end" in text and "test_acc" in text  # curl's events and CSV
    assert "InvalidRequest" not in text and "['config.n_e']" in text  # the 422 example caught
    assert "succeeded" in text and "epoch   1" in text  # train --server followed to its end
    assert (cwd / "weights_final.npz").stat().st_size > 0
    assert (cwd / "accuracy_vs_coupling.png").read_bytes()[:4] == b"\x89PNG"
    downloaded = list((cwd / "downloads").glob("*/metrics.jsonl"))
    assert len(downloaded) == 1 and downloaded[0].read_text().count("\n") == 1


@pytest.mark.parametrize("token", [TOKEN, pytest.param(None, marks=pytest.mark.slow)], ids=["token", "no-token"])
def test_readme_examples_run_against_a_served_instance(server_factory, tmp_path, token):
    server = server_factory(workers=2, token=token)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    check_outputs(run_examples(server.url, token, cwd), cwd)
    with server.client() as api:  # everything the examples queued finished well
        runs = api.list_runs(limit=1000).data
    assert len(runs) == 1 + 1 + 3 + 1 and {r.state for r in runs} == {RunState.SUCCEEDED}

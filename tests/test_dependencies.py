"""Every third-party package the code imports is declared in pyproject.toml (issue 16),
and the ones whose internals the code relies on have an upper bound."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"engine", "jobs", "app", "tests"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> dict[str, dict[str, str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"runtime": project["dependencies"], **project["optional-dependencies"]}
    return {group: {_name(r): r for r in reqs} for group, reqs in groups.items()}


def imported(folders: tuple[str, ...]) -> set[str]:
    names = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - LOCAL - set(sys.stdlib_module_names)


def distributions(modules: set[str]) -> dict[str, str]:
    owners = packages_distributions()
    return {m: _name(owners[m][0]) for m in modules if m in owners}


def test_every_imported_package_is_declared():
    groups = declared()
    runtime = set(groups["runtime"])
    everything = set().union(*groups.values())
    code = distributions(imported(("engine", "jobs", "app")))
    tests = distributions(imported(("tests",)))
    assert {m: d for m, d in code.items() if d not in everything} == {}
    # the runtime code needs nothing beyond the runtime list, except lazily imported extras
    # (Triton only on CUDA, and Playwright, which only the dashboard benchmark, a dev tool, imports)
    lazy = set(groups["ray"]) | set(groups["full-mnist"]) | set(groups["gpu"]) | {"playwright"}
    assert {m: d for m, d in code.items() if d not in runtime | lazy} == {}
    assert {m: d for m, d in tests.items() if d not in everything} == {}


def test_packages_whose_internals_the_code_uses_are_bounded():
    runtime = declared()["runtime"]
    for name in ("numba", "llvmlite", "bokeh-fastapi"):
        assert re.search(r"(<|==)", runtime[name]), runtime[name]


def test_the_quick_start_installs_torchs_cpu_build_of_the_pinned_version_first():
    """PyPI's Linux torch is the CUDA build (multi-GB) that a CPU machine cannot use: the quick
    start's first command installs the CPU build of the version pinned here."""
    (torch,) = [r for r in declared()["runtime"].values() if _name(r) == "torch"]
    version = torch.split("==")[1].strip()
    quick_start = (REPO / "README.md").read_text().split("## Quick start")[1].split("\n## ")[0]
    commands = [line.strip() for line in quick_start.splitlines() if line.startswith("    ")]
    assert commands[0] == f"pip install torch=={version} --index-url https://download.pytorch.org/whl/cpu", commands
    assert commands[1].startswith("pip install -e . "), commands


# The Triton that PyPI's CUDA build of the pinned torch requires (its wheel metadata:
# "triton==3.7.1"); change it with the torch pin.
CUDA_TORCH_TRITON = {"2.13.0": "3.7.1"}


def test_the_test_extra_installs_beside_the_cuda_build_of_torch():
    """`pip install -e '.[test]'` on a GPU machine: the test extra pulls the gpu extra, whose Triton
    range must take the version the CUDA torch pins, or pip cannot resolve the two together."""
    (torch,) = [r for r in declared()["runtime"].values() if _name(r) == "torch"]
    pinned = CUDA_TORCH_TRITON[torch.split("==")[1].strip()]
    triton = declared()["gpu"]["triton"]
    version = lambda text: tuple(int(part) for part in text.split("."))
    for bound in triton.removeprefix("triton").split(","):
        operator, limit = re.fullmatch(r"\s*(>=|<|<=|==)\s*([\d.]+)\s*", bound).groups()
        holds = {">=": version(pinned) >= version(limit), "<": version(pinned) < version(limit),
                 "<=": version(pinned) <= version(limit), "==": version(pinned) == version(limit)}[operator]
        assert holds, (triton, pinned)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "spikeboard[gpu]" in project["optional-dependencies"]["test"]

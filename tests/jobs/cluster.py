"""A real multi-node Ray cluster on this machine, and a spikeboard server driving it.

The head runs no tasks (0 CPUs); each worker node is its own raylet with its
own processes, started from a working directory of its own. The server runs in
another directory with a *relative* data path, so no worker process can reach
its data directory or its SQLite file by any path it is given: a worker that
still reached for the file would fail its run. Used by tests/jobs/test_cluster.py
and scripts/bench_remote.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
ADMIN = "cluster-admin-token"
MIB = 2**20


@contextlib.contextmanager
def working_directory(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class RayCluster:
    """ray.cluster_utils.Cluster: a head without CPUs plus worker nodes, each a separate raylet."""

    def __init__(self, root: Path, nodes: int = 2, cpus_per_node: int = 1):
        from ray.cluster_utils import Cluster

        self.root = root
        self.nodes_dir = root / "nodes"  # the worker nodes' working directory: no data there
        self.nodes_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        head = {"num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * MIB,
                # notice a dead node in ~3 s, not the default ~30 s
                "_system_config": {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                                   "health_check_failure_threshold": 3}}
        with working_directory(self.nodes_dir):
            # Ray gives a node 30 s to register, which a heavily loaded 2-core box can miss: once more
            self.cluster = _twice(lambda: Cluster(initialize_head=True, head_node_args=head))
        self.workers = [self.add_node(cpus_per_node) for _ in range(nodes)]

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, cpus: int = 1):
        with working_directory(self.nodes_dir):
            return _twice(lambda: self.cluster.add_node(num_cpus=cpus, object_store_memory=80 * MIB))

    def node_running(self, pid: int):
        """The worker node whose processes include an ancestor of `pid`."""
        chain = set(ancestors(pid))
        for node in self.workers:
            if chain & set(node_pids(node)):
                return node
        return None

    def kill_node(self, node) -> None:
        """kill -9 of every process of the node at once (raylet, its Ray workers, their
        spikeboard workers): nothing on it gets to report anything."""
        pids = set(node_pids(node))
        for pid in list(pids):
            pids.update(descendants(pid))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        # every descendant too: a spikeboard worker runs in a session of its own
        pids = {pid for node in [*self.workers, self.cluster.head_node] if node for pid in node_pids(node)}
        for pid in list(pids):
            pids.update(descendants(pid))
        with contextlib.suppress(Exception):
            self.cluster.shutdown()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _twice(start):
    try:
        return start()
    except Exception:  # "The current node timed out during startup"
        return start()


def node_pids(node) -> list[int]:
    return [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def descendants(pid: int) -> list[int]:
    parents, found, frontier = _parents(), [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def ancestors(pid: int) -> list[int]:
    parents, chain = _parents(), []
    while pid in parents and pid > 1:
        pid = parents[pid]
        chain.append(pid)
    return chain


def worker_processes(run_id: str) -> list[int]:
    """Live `python -m jobs.worker ... RUN_ID ...` processes of the run (on any node here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"jobs.worker" in argv and run_id.encode() in argv and state not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@dataclass
class ClusterServer:
    """`spikeboard serve --executor ray` joined to the cluster, in a directory of its own."""
    root: Path
    ray_address: str
    port: int
    workers: int = 2
    process: subprocess.Popen | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self, timeout_s: float = 180) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")
        args = [sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", "data",  # relative: it names nothing where the worker nodes run
                "--workers", str(self.workers), "--executor", "ray", "--ray-address", self.ray_address,
                "--token", ADMIN]
        env = {**os.environ, "PYTHONPATH": str(REPO), "SPIKEBOARD_DASHBOARD": "0",
               "SPIKEBOARD_THREADS_PER_RUN": "1", "SPIKEBOARD_STALE_AFTER_S": "30"}
        self.process = subprocess.Popen(args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log")))

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def short_tmp() -> Path:
    """Ray's unix sockets need a short path."""
    return Path(tempfile.mkdtemp(prefix="sbc-", dir="/tmp"))

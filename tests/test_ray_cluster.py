"""A Ray cluster of two nodes on this machine (issue 27).

The test starts a Ray head and a second node with ``ray start`` (one CPU each, each with
its own temporary folder, on a loopback address), then runs

- ``fleetsim compare --address`` (two cells of scenarios/tiny.yaml, run at once: one
  per node) and
- one run with ``training.backend: ray`` and two actors

on that cluster, checks that both nodes ran work (and prints which node ran what), and
that the files equal those of the local backends bit for bit. Both nodes are stopped
whatever happens: every process of their sessions is killed, by session id.

The cluster is started once for this module (marked ``cluster``; CI's ``pytest -q`` runs
it once, in about a minute on 2 cores). Run it alone with ``pytest -m cluster``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "scenarios" / "tiny.yaml")
RAY = Path(sys.executable).with_name("ray")  # the CLI of this environment's Ray
# Loopback, but not 127.0.0.1: Ray rewrites that one (and "localhost") to the machine's
# network address, so the nodes would not stay on the loopback interface.
HOST = "127.0.0.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    address: str
    sessions: list[int] = field(default_factory=list)  # the session id of each node
    dirs: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def _start_node(c: Cluster, head: bool) -> None:
    """``ray start`` in a session of its own: its daemons (and the workers they start)
    stay in that session, so they can be found and stopped by its id alone."""
    tmp = Path(tempfile.mkdtemp(prefix="fsray", dir="/tmp"))  # short: unix socket paths
    c.dirs.append(tmp)
    args = [str(RAY), "start", "--num-cpus", "1", "--node-ip-address", HOST,
            "--temp-dir", str(tmp), "--disable-usage-stats",
            "--object-store-memory", str(80 * 2**20),
            # every port of its own, so that other Rays on this machine never collide
            "--dashboard-agent-listen-port", str(_free_port()),
            "--dashboard-agent-grpc-port", str(_free_port()),
            "--runtime-env-agent-port", str(_free_port()),
            "--metrics-export-port", str(_free_port())]
    if head:
        args += ["--head", "--port", c.address.rsplit(":", 1)[1], "--include-dashboard",
                 "false", "--dashboard-port", str(_free_port()),
                 "--ray-client-server-port", str(_free_port())]
    else:
        args += ["--address", c.address]
    log = tmp / "start.log"
    with log.open("wb") as f:
        p = subprocess.Popen(args, env=c.env, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        c.sessions.append(p.pid)  # before waiting: a start that hangs is stopped too
        rc = p.wait(timeout=180)
    if rc:
        raise RuntimeError(f"ray start failed ({rc}):\n{log.read_text()[-3000:]}")


def _session_pids(sessions: list[int]) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(p.name)) in sessions:
                    out.append(int(p.name))
    return out


def _stop(c: Cluster) -> None:
    """Kill every process of the nodes' sessions (daemons, workers), then their folders."""
    for sid in c.sessions:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (left := _session_pids(c.sessions)) and time.monotonic() < deadline:
        for pid in left:  # a process that left the group but not the session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not _session_pids(c.sessions), "Ray processes survived the cluster's stop"
    for d in c.dirs:
        subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    env = dict(os.environ)
    # the workers import this checkout's fleetsim, as the driver does
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Every process of this cluster in one authentication mode, whatever this process or
    # ~/.ray/auth_token say: a local ray.init() (tests/test_ray.py) turns token mode on
    # in its process and writes a token there, after which a `ray start --head` with the
    # mode unset requires tokens that a joining node does not send.
    env["RAY_AUTH_MODE"] = "disabled"
    c = Cluster(f"{HOST}:{_free_port()}", env=env)
    try:
        _start_node(c, head=True)
        _start_node(c, head=False)
        yield c
    finally:
        _stop(c)


def _h5(path: Path) -> dict[str, bytes]:
    """Every dataset of a run.h5, as bytes (attributes are provenance: command, wall
    time, platform; not results)."""
    out: dict[str, bytes] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()].tobytes())
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _files(out: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.csv"))}
    for p in sorted(out.rglob("run.h5")):
        for k, v in _h5(p).items():
            files[f"{p.relative_to(out)}:{k}"] = v
    return files


def test_compare_on_two_ray_nodes_gives_the_local_bits(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    from fleetsim.batch import expand_grid, run_batch

    grid = expand_grid([TINY], "fedavg,fedavg:stragglers=wait", "0", [])
    run_batch(grid, tmp_path / "local", jobs=1, backend="local", progress=False)
    cmd = [sys.executable, "-m", "fleetsim.cli", "compare", TINY, "--policies",
           "fedavg,fedavg:stragglers=wait", "--seeds", "0", "--out",
           str(tmp_path / "cluster"), "--address", cluster.address, "--quiet"]
    p = subprocess.run(cmd, env=cluster.env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    print(p.stdout)  # "ray node <id>: k runs: <cells>", one line per node
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ray node ")]
    ran = {ln.split()[2].rstrip(":"): ln.split(": ", 2)[2].split(", ") for ln in lines}
    assert len(ran) == 2, p.stdout  # both nodes ran cells
    assert sorted(c for cells in ran.values() for c in cells) == sorted(
        c.rel_dir for c in grid.cells)
    got, want = _files(tmp_path / "cluster"), _files(tmp_path / "local")
    assert len([k for k in want if k.endswith("rounds.csv")]) == 2
    assert got.keys() == want.keys() and got == want


RUN_ON_CLUSTER = """
import json, sys
from fleetsim.build import build, load_scenario
from fleetsim.results import write_run
import ray
tiny, address, out = sys.argv[1:4]
sc = load_scenario(tiny, ["training.backend=ray", "training.workers=2",
                          f"training.ray_address={address}"])
built = build(sc, tiny)
try:
    log = built.engine.run()
finally:
    built.backend.close()
write_run(out, sc, log)
print(json.dumps({"actors": built.backend.nodes, "jobs": built.backend.jobs_per_node,
                  "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
                  "trained": sum(r["completed"] + r["rejected"] for r in log.rounds)}))
"""


def test_ray_backend_on_two_nodes_gives_the_in_process_bits(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    import json

    from fleetsim.build import load_scenario, run_scenario
    from fleetsim.results import write_run

    # a driver process of its own, in the cluster's authentication mode
    p = subprocess.run([sys.executable, "-c", RUN_ON_CLUSTER, TINY, cluster.address,
                        str(tmp_path / "cluster")], env=cluster.env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got_run = json.loads(p.stdout.strip().splitlines()[-1])
    print("actor nodes:", got_run["actors"], "jobs per node:", got_run["jobs"])
    actors, jobs = got_run["actors"], got_run["jobs"]
    # one CPU per node and one per actor: the two actors sit on the two nodes
    assert len(set(actors)) == 2 and set(actors) == set(got_run["nodes"])
    assert len(jobs) == 2 and all(n > 0 for n in jobs.values()), jobs
    assert sum(jobs.values()) == got_run["trained"]
    sc = load_scenario(TINY, ["training.backend=ray", "training.workers=2",
                              f"training.ray_address={cluster.address}"])
    write_run(tmp_path / "local", sc, run_scenario(load_scenario(TINY, []), TINY))
    got, want = _files(tmp_path / "cluster"), _files(tmp_path / "local")
    assert "run.h5:rounds/accuracy" in got and "run.h5:timeline/device" in got
    assert got == want

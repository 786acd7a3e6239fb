"""Benchmark of the LaunchManager and its REST API on the simulated cloud (issue 6 targets).

Usage (as root: the instance hosts are private sshds on this machine)::

    .venv/bin/python bench/bench_manager.py [--boot-delay 5] [--idle-requests 1000]
        [--poll-fast 2 --poll-slow 30] [--only launch|latency|aws] [--no-pin] [--no-control]
        [--keep] [--py-spy OUT.txt | OUT.gil.txt]

What runs where:

- this process: the simulated cloud (moto on 127.0.0.1, in-process so that DescribeInstances can
  be counted at the cloud), the instance hosts (one private OpenSSH sshd per running instance),
  and the driver (POSTs, waits for ``ready``);
- a subprocess: a real ``jupyter_server`` with jupyter-ec2 pointed at the simulated cloud by
  :func:`jupyter_ec2.testing.demo.simulated_config` (``existing`` environment, the image
  interpreter), started through ``bench/_sim.py serve``, which adds timestamped events (phases,
  provisioning steps as the worker thread sees them, spans of the EC2 layer, the state store, the
  provisioner and the forward, every boto3 call, each poll, the event loop's lag, CPU starvation
  and GC pauses) without changing any code path;
- more subprocesses: plain ``http.client`` clients on loopback (``bench/_sim.py client``) that
  measure ``/api/status`` latency and play the polling browser tabs, and (part 2) a control
  server: the same server and extension under another owner id (so it manages nothing), probed at
  the same moments, so that the machine's own noise can be told apart from the launches' effect.

Parts: (1) ``POST instances`` → ``ready`` for one instance and for five at once, with a breakdown
of where the time goes; (2) ``/api/status`` p50/p99 idle (before the launches, and after them with
five instances ready) versus during five launches with a slow simulated boot; on a machine with
two or more CPUs the local server and its clients get CPU 0 and the simulated cloud the others,
as a laptop and EC2 would (``--no-pin`` to share them); (3) DescribeInstances per minute with 1
and with 20 clients polling ``GET instances`` every second, counted at moto (by the extension's
user agent), in the server's boto3 calls, and by ``LaunchManager.aws_calls``. The manager runs
with its default polling (``poll_fast`` 2 s, ``poll_slow`` 30 s) unless told otherwise.

Only figures and ratios are printed; nothing is asserted. Every loop is bounded. Nothing
connects anywhere but 127.0.0.1 (instances are reached through the harness's ssh_config). The
notebook user created on this machine is removed at the end, and every sshd, remote Jupyter
server and local server started here is stopped, also on failure. ``--keep`` keeps the work
directory (events.jsonl, server.log, client samples) for a closer look.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_ec2.provision import SCRIPT_STEPS  # noqa: E402
from jupyter_ec2.testing.cloud import SimulatedCloud, free_port  # noqa: E402
from jupyter_ec2.testing.demo import IMAGE_PYTHON, remove_user, simulated_config  # noqa: E402
from jupyter_ec2.testing.hosts import InstanceHosts  # noqa: E402

SIM = HERE.parent / "_sim.py"
API = "/jupyter-ec2/api/"
TARGETS = {
    "one": 3.0,
    "five": 6.0,
    "p99_ratio": 2.0,
    "p99_ms": 50.0,
}
T_START = time.monotonic()
REPORT_STREAM = sys.stdout  # where the report goes (see the end of this file)


def say(text: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[{time.monotonic() - T_START:6.1f}s] {text}", file=sys.stderr, flush=True)


# -- the local server and a small HTTP client -------------------------------------------------


class Api:
    """JSON over one keep-alive loopback connection per thread, with the server's token."""

    def __init__(self, port: int, token: str):
        self.port = port
        self.token = token
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        headers = {"Authorization": f"token {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        # A kept-alive connection the server closed is retried once, for GET only: a POST
        # that may have reached the server is never sent twice (it would launch twice).
        attempts = 2 if method == "GET" else 1
        for attempt in range(attempts):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == attempts - 1:
                    raise
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")


class Server:
    """jupyter_server with jupyter-ec2, instrumented by ``_sim.py serve``, in a subprocess."""

    def __init__(self, work: Path, config: dict, env: dict):
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.events_path = work / "events.jsonl"
        self.log_path = work / "server.log"
        self.config_path = work / "jupyter_server_config.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        (work / "jupyter-config").mkdir(exist_ok=True)
        (work / "runtime").mkdir(exist_ok=True)
        self.env = {
            **env,
            "JUPYTER_CONFIG_DIR": str(work / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen | None = None
        self.api = Api(self.port, self.token)

    def start(self, timeout: float = 60.0) -> None:
        args = [
            sys.executable,
            str(SIM),
            "serve",
            str(self.events_path),
            "--",
            f"--config={self.config_path}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={self.work}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                status, _ = self.api.request("GET", "/api/status")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.2)
        # The extension starts its poller once the loop runs; the first call warms the client.
        for _ in range(100):
            if any(e["k"] == "poll" for e in self.events()):
                return
            time.sleep(0.1)

    def events(self) -> list[dict]:
        out = []
        with contextlib.suppress(FileNotFoundError), open(self.events_path, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def cpu_seconds(self) -> float:
        return _proc_cpu(self.proc.pid) if self.proc and self.proc.poll() is None else 0.0

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        started_by_it = descendants(proc.pid)  # e.g. ssh clients of the forwards
        proc.send_signal(signal.SIGTERM)  # jupyter_server shuts down cleanly on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # by PID: our own child
            proc.wait(timeout=10)
        for pid in started_by_it:  # whatever it left behind, by PID
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def descendants(pid: int) -> list[int]:
    """PIDs of the live descendants of ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for child, ppid in parent.items():
            if ppid == current:
                found.append(child)
                todo.append(child)
    return found


PYENV_LOCK = Path("/root/.pyenv/shims/.pyenv-shim")


def host_shell_rc_cost(rounds: int = 5) -> float | None:
    """Median seconds root's shell start-up files cost per SSH command on this host.

    sshd runs every command through the login shell, and Debian's bash reads ~/.bashrc when
    started by sshd (it sees SSH_CLIENT). Measured without SSH: ``bash -c true`` with and
    without SSH_CLIENT, same clean environment.
    """
    home = pwd.getpwuid(0).pw_dir
    base = {"HOME": home, "PATH": "/usr/bin:/bin", "SHLVL": "0", "USER": "root"}
    # No Ctrl-C or SIGTERM may kill these shells half-way: a `pyenv rehash` killed while it
    # holds its lock leaves the lock behind, and every root login on the host then stalls 60 s.
    # They run in their own session (no terminal signal reaches them) and an interruption of
    # this process waits until they are done (a second or so).
    with uninterruptible():
        costs = _rc_costs(base, rounds)
    return statistics.median(costs) if costs else None


_interrupts = {"deferred": False, "pending": False}


def on_interrupt(*_: object) -> None:
    """SIGINT/SIGTERM: clean up as for Ctrl-C, unless inside :func:`uninterruptible`."""
    if _interrupts["deferred"]:
        _interrupts["pending"] = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def uninterruptible():
    _interrupts["deferred"] = True
    try:
        yield
    finally:
        _interrupts["deferred"] = False
        if _interrupts["pending"]:
            _interrupts["pending"] = False
            raise KeyboardInterrupt


def _rc_costs(base: dict, rounds: int) -> list[float]:
    costs = []
    for _ in range(rounds):
        times = []
        for extra in ({"SSH_CLIENT": "127.0.0.1 40000 22"}, {}):
            t0 = time.monotonic()
            subprocess.run(
                ["/bin/bash", "-c", "true"],
                env={**base, **extra},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                check=False,
            )
            times.append(time.monotonic() - t0)
        costs.append(times[0] - times[1])
    return costs


def remote_jupyter_start_cost(work: Path) -> tuple[float, float] | None:
    """(wall s, CPU s) of one ``jupyter_server`` start with the image interpreter, until it answers.

    What every simulated instance spends in setup.sh's 'ready' step; five at once share this
    machine's cores, where real instances would each have their own.
    """
    home = work / "calibration"
    home.mkdir()
    port = free_port()
    token = secrets.token_hex(16)
    proc = subprocess.Popen(
        [
            IMAGE_PYTHON,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={home}",
        ],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    api = Api(port, token)
    result = None
    try:
        for _ in range(1500):  # at most about 30 s
            if proc.poll() is not None:
                break
            with contextlib.suppress(OSError, http.client.HTTPException):
                if api.request("GET", "/api/status")[0] == 200:
                    result = (time.monotonic() - t0, _proc_cpu(proc.pid))
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.terminate()  # by PID: our own child
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    return result


def stale_pyenv_lock() -> float | None:
    """Age in seconds of a pyenv rehash lock left behind (None when there is none).

    pyenv's rehash (run by root's ~/.bashrc at every SSH login here) waits up to 60 s for this
    file to vanish; a rehash killed while holding it leaves it behind, and then every root SSH
    command on this host stalls 60 s. Holders keep it for milliseconds: older than 2 min is stale.
    """
    with contextlib.suppress(OSError):
        age = time.time() - PYENV_LOCK.stat().st_mtime
        return age if age > 120 else None
    return None


CPUS = sorted(os.sched_getaffinity(0))
LOCAL_CPUS = set(CPUS[:1])  # "the laptop": the local server and the latency client
CLOUD_CPUS = set(CPUS[1:]) or set(CPUS)  # "the cloud": moto, sshds, setup.sh, remote Jupyters


def pin_process(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of a process (children inherit it)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpus_busy_seconds(cpus: set[int]) -> float:
    """CPU seconds the given CPUs spent not idle since boot (per-CPU lines of /proc/stat)."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                numbers = [int(v) for v in values[:8]]
                total += sum(numbers) - numbers[3] - numbers[4]
    return total / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds of a process, its live descendants and its reaped children."""
    if pid is None:
        return 0.0
    tck = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as f:
                stats[int(entry)] = f.read().rsplit(")", 1)[1].split()
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)
    total, todo, first = 0.0, [pid], True
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is None:
            continue
        total += (int(fields[11]) + int(fields[12])) / tck
        if first:  # the root's children reaped so far
            total += (int(fields[13]) + int(fields[14])) / tck
            first = False
        todo.extend(children.get(current, []))
    return total


def run_client(work: Path, name: str, spec: dict, cpus: set[int] | None = None) -> subprocess.Popen:
    """Start a ``_sim.py client`` process; its samples land in work/<name>.json."""
    spec = {**spec, "out": str(work / f"{name}.json")}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, str(SIM), "client", str(spec_path)], stdin=subprocess.DEVNULL
    )
    if cpus:
        pin_process(proc.pid, cpus)
    return proc


def client_samples(work: Path, name: str, proc: subprocess.Popen, timeout: float) -> list:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # by PID: our own child
        proc.wait(timeout=10)
    with contextlib.suppress(FileNotFoundError, ValueError):
        return json.loads((work / f"{name}.json").read_text())["samples"]
    return []


# -- the simulated cloud, counted ---------------------------------------------------------------


class DescribeCounter:
    """Counts DescribeInstances at moto, split by who asked (the extension's user agent)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        self._original = None

    def install(self) -> None:
        from moto.ec2.responses import EC2Response

        original = EC2Response.describe_instances
        counter = self

        def describe_instances(self):  # runs in moto's request thread
            agent = str(self.headers.get("User-Agent", ""))
            with counter._lock:
                counter.calls.append((time.monotonic(), "jupyter-ec2/" in agent))
            return original(self)

        self._original = original
        EC2Response.describe_instances = describe_instances

    def uninstall(self) -> None:
        if self._original is not None:
            from moto.ec2.responses import EC2Response

            EC2Response.describe_instances = self._original
            self._original = None

    def count(self, t0: float, t1: float, extension: bool = True) -> int:
        with self._lock:
            return sum(1 for t, ext in self.calls if t0 <= t < t1 and ext == extension)


# -- launching and waiting ----------------------------------------------------------------------


@dataclass
class LaunchRun:
    """What the driver saw of one batch of launches."""

    n: int
    posted: list[tuple[float, float, int, object]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ready_seen: dict[str, float] = field(default_factory=dict)
    failed: dict[str, object] = field(default_factory=dict)
    t_first_post: float = 0.0
    t_all_ready_seen: float | None = None
    cpu_server: float = 0.0
    cpu_machine: float = 0.0


def launch_batch(
    server: Server, n: int, all_ids: list[str], timeout: float = 120.0, poll: float = 0.05
) -> LaunchRun:
    """POST n launches at once (one thread each), then poll ``GET instances`` until all ready."""
    run = LaunchRun(n)
    barrier = threading.Barrier(n)
    posted: list = [None] * n

    def post(i: int) -> None:
        barrier.wait(timeout=10)
        t0 = time.monotonic()
        try:
            status, body = server.api.request("POST", API + "instances", {"profile": "cpu"})
        except OSError as err:
            status, body = -1, str(err)
        posted[i] = (t0, time.monotonic(), status, body)

    cpu0, busy0 = server.cpu_seconds(), machine_busy_seconds()
    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    run.posted = [p for p in posted if p is not None]
    run.t_first_post = min(p[0] for p in run.posted)
    for _, _, status, body in run.posted:
        if status == 202 and isinstance(body, dict):
            run.ids.append(body["id"])
            all_ids.append(body["id"])
        else:
            run.failed[f"POST#{len(run.failed)}"] = (status, body)
    deadline = time.monotonic() + timeout
    pending = set(run.ids)
    while pending and time.monotonic() < deadline:
        status, body = server.api.request("GET", API + "instances")
        now = time.monotonic()
        for inst in body.get("instances", []) if isinstance(body, dict) else []:
            if inst["id"] in pending:
                if inst["phase"] == "ready":
                    run.ready_seen[inst["id"]] = now
                    pending.discard(inst["id"])
                elif inst["phase"] == "failed":
                    run.failed[inst["id"]] = inst["error"]
                    pending.discard(inst["id"])
        time.sleep(poll)
    for instance_id in pending:
        run.failed[instance_id] = "not ready before the bench's timeout"
    if run.ready_seen and not pending and len(run.ready_seen) == len(run.ids):
        run.t_all_ready_seen = max(run.ready_seen.values())
    run.cpu_server = server.cpu_seconds() - cpu0
    run.cpu_machine = machine_busy_seconds() - busy0
    return run


def terminate_all(server: Server, hosts: InstanceHosts | None, ids: list[str]) -> None:
    """DELETE every instance this run made, then wait (bounded) until no host remains."""
    for instance_id in ids:
        with contextlib.suppress(Exception):
            server.api.request("DELETE", API + f"instances/{instance_id}")
    if hosts is not None:
        for instance_id in ids:
            with contextlib.suppress(Exception):
                hosts.wait_for_no_host(instance_id, timeout=15)


# -- analysis -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def breakdown(events: list[dict], run: LaunchRun) -> dict[str, dict]:
    """Per instance: ordered segments (name, seconds) from POST to ready, and extras."""
    by_id: dict[str, dict] = {}
    post_of = {}
    for t0, t1, status, body in run.posted:
        if status == 202 and isinstance(body, dict):
            post_of[body["id"]] = (t0, t1)
    for instance_id in run.ids:
        t_post, t_202 = post_of[instance_id]
        mine = [e for e in events if e.get("id") == instance_id and e["t"] >= t_post - 1]
        phases: dict[str, float] = {}
        for e in mine:
            if e["k"] == "phase":
                phases.setdefault(e["phase"], e["t"])
        spans = {}
        for e in mine:
            if e["k"] == "span":
                spans.setdefault(e["name"], e)
        running_seen = next(
            (
                e["t"]
                for e in mine
                if e["k"] == "log" and e["step"] == "ec2" and "running" in e["text"]
            ),
            None,
        )
        progress = [e for e in mine if e["k"] == "progress"]
        retries = sum(1 for e in progress if "not reachable yet" in e["text"])
        launch = spans.get("backend.launch")
        aws_in_launch = []
        if launch:
            aws_in_launch = [
                e
                for e in events
                if e["k"] == "aws"
                and e["th"] == launch["th"]
                and launch["t0"] <= e["t0"] <= launch["t"]
            ]
        provision = spans.get("provisioner.provision")
        script = spans.get("provisioner.run_script")
        forward = spans.get("tunnels.open")
        connect = None
        if provision:
            connect = next(
                (
                    e
                    for e in events
                    if e["k"] == "span"
                    and e["name"] == "provisioner.connect"
                    and e["th"] == provision["th"]
                    and provision["t0"] <= e["t0"] <= provision["t"]
                ),
                None,
            )

        def first_progress(step: str, after: float, progress: list = progress) -> float | None:
            return next((e["t"] for e in progress if e["step"] == step and e["t"] >= after), None)

        marks: list[tuple[str, float | None]] = [("POST sent", t_post)]
        marks.append(("202 answered (RunInstances done)", t_202))
        marks.append(("poller saw EC2 'running'", running_seen))
        marks.append(("phase connecting", phases.get("connecting")))
        t_upload = first_progress("upload", phases.get("connecting", t_post))
        marks.append(("SSH session up", t_upload))
        after = t_upload or t_post
        for step in SCRIPT_STEPS:
            t_step = first_progress(step, after)
            marks.append((f"setup.sh {step}", t_step))
            after = t_step or after
        marks.append(("setup.sh exited", script["t"] if script else None))
        marks.append(("provision() returned", provision["t"] if provision else None))
        marks.append(("forward up", forward["t"] if forward else None))
        marks.append(("ready", phases.get("ready")))

        labels = {
            "POST sent": "POST → 202: validation + EC2 calls + RunInstances",
            "202 answered (RunInstances done)": "202 → poller sees 'running' (boot + poll wait)",
            "poller saw EC2 'running'": "'running' seen → connecting (_wait_running wakes)",
            "phase connecting": "connecting → SSH session up (target + SSH login)",
            "SSH session up": "SFTP upload of 3 files + script start-up",
            "setup.sh exited": "SFTP clean-up + close",
            "provision() returned": "port forward: tunnels.open()",
            "forward up": "forward up → phase ready",
        }
        for step in SCRIPT_STEPS:
            labels[f"setup.sh {step}"] = f"  setup.sh step {step}"
        segments = []
        known = [(name, t) for name, t in marks if t is not None]
        for (name, t), (_, t_next) in zip(known, known[1:], strict=False):
            segments.append((labels.get(name, name), t_next - t))
        total = (phases["ready"] - t_post) if "ready" in phases else None
        by_id[instance_id] = {
            "segments": segments,
            "total": total,
            "launch_span": (launch["t"] - launch["t0"]) if launch else None,
            "aws_in_launch": [(e["op"], e["t"] - e["t0"]) for e in aws_in_launch],
            "connect": (connect["t"] - connect["t0"]) if connect else None,
            "retries": retries,
            "provision": (provision["t"] - provision["t0"]) if provision else None,
            "forward": (forward["t"] - forward["t0"]) if forward else None,
            "t_ready": phases.get("ready"),
            "t_post": t_post,
        }
    return by_id


def lag_stats(events: list[dict], t0: float, t1: float) -> dict:
    """The server loop's lag, CPU starvation and GC pauses over [t0, t1] (0.5 s windows)."""
    windows = [
        e for e in events if e["k"] == "lag" and t0 - 0.25 <= e["t0"] and e["t"] <= t1 + 0.25
    ]
    span = sum(e["t"] - e["t0"] for e in windows)
    gcs = [e for e in events if e["k"] == "gc" and t0 <= e["t0"] <= t1]
    if not windows:
        return {"max_ms": float("nan"), "over20": 0, "n": 0, "runq": float("nan"), "gc": []}
    return {
        "max_ms": 1000 * max(e["max"] for e in windows),
        "over20": sum(e["over20"] for e in windows),
        "n": sum(e["n"] for e in windows),
        "runq": sum(e.get("runq", 0.0) for e in windows) / span if span else float("nan"),
        "gc": [e["pause"] for e in gcs],
    }


def worst(values: list[float]) -> float:
    return max(values) if values else float("nan")


def ms(seconds: float | None) -> str:
    return "    -" if seconds is None else f"{1000 * seconds:7.0f}"


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# -- the parts --------------------------------------------------------------------------------


def part_launch(server: Server, hosts: InstanceHosts, all_ids: list[str], report: dict) -> None:
    say("part 1a: one launch")
    one = launch_batch(server, 1, all_ids)
    time.sleep(0.3)
    report["one"] = (one, breakdown(server.events(), one))
    terminate_all(server, hosts, one.ids)
    time.sleep(0.5)
    say("part 1b: five launches at once")
    five = launch_batch(server, 5, all_ids)
    time.sleep(0.3)
    report["five"] = (five, breakdown(server.events(), five))
    terminate_all(server, hosts, five.ids)


def part_latency(
    server: Server,
    work: Path,
    all_ids: list[str],
    report: dict,
    idle_requests: int,
    cpus: set[int] | None,
    py_spy: str | None = None,
    control: Server | None = None,
) -> None:
    spec = {
        "port": server.port,
        "token": server.token,
        "path": "/api/status",
        "threads": 1,
        "interval": 0.01,
    }
    # The control: an identical server (same extension, its own owner id, so no instance) probed
    # the same way at the same moments. Machine noise hits both alike; the launches only one.
    cspec = {**spec, "port": control.port, "token": control.token} if control else None
    controls: dict[str, list] = {}
    cpu_use: dict[str, dict] = {}

    def snapshot(probes: list[subprocess.Popen | None]) -> dict:
        """CPU seconds so far: the local CPUs in all, and each of our processes there."""
        return {
            "t": time.monotonic(),
            "cpus": cpus_busy_seconds(cpus) if cpus else 0.0,
            "server": tree_cpu_seconds(server.proc.pid),
            "control": tree_cpu_seconds(control.proc.pid) if control else 0.0,
            "probes": sum(tree_cpu_seconds(p.pid) for p in probes if p is not None),
        }

    def account(name: str, before: dict, after: dict) -> None:
        d = {k: after[k] - before[k] for k in before}
        d["others"] = d["cpus"] - d["server"] - d["control"] - d["probes"]
        cpu_use[name] = d

    def idle_window(name: str) -> tuple[list, float, float]:
        t0 = time.monotonic()
        extra = {"count": idle_requests, "end_at": time.monotonic() + 60}
        proc = run_client(work, name, {**spec, **extra}, cpus)
        cproc = run_client(work, f"{name}-control", {**cspec, **extra}, cpus) if cspec else None
        time.sleep(0.3)  # both probes are sampling
        before = snapshot([proc, cproc])
        for _ in range(int(idle_requests / 100) * 10 + 100):  # bounded; the probe ends first
            if proc.poll() is not None:
                break
            after = snapshot([proc, cproc])
            time.sleep(0.1)
        account(name, before, after)
        samples = client_samples(work, name, proc, timeout=90)
        if cproc is not None:
            controls[name] = client_samples(work, f"{name}-control", cproc, timeout=30)
        return samples, t0, time.monotonic()

    say(f"part 2: /api/status idle, no instance ({idle_requests} requests)")
    idle_before, tb0, tb1 = idle_window("idle-before")
    say("part 2: /api/status during five launches with a slow boot")
    stop_file = work / "during.stop"
    extra = {"count": 20_000, "end_at": time.monotonic() + 150, "stop_file": str(stop_file)}
    proc = run_client(work, "during", {**spec, **extra}, cpus)
    cproc = run_client(work, "during-control", {**cspec, **extra}, cpus) if cspec else None
    spy = None
    if py_spy:
        # Diagnosis only: sample the server's stacks (every thread, or only the GIL holder).
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(server.proc.pid),
                "--rate",
                "200",
                "--nonblocking",
                "--threads",
                "--format",
                "raw",
                "--duration",
                "25",
                "-o",
                py_spy,
                *(["--gil"] if py_spy.endswith(".gil.txt") else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(1.0)  # the client is connected and sampling
    cpu0 = server.cpu_seconds()
    before = snapshot([proc, cproc])
    run = launch_batch(server, 5, all_ids, poll=0.25)  # a panel's pace, not a benchmark's
    t_end = run.t_all_ready_seen or time.monotonic()
    account("during", before, snapshot([proc, cproc]))
    stop_file.write_text("stop")
    during_all = client_samples(work, "during", proc, timeout=30)
    if cproc is not None:
        controls["during"] = client_samples(work, "during-control", cproc, timeout=30)
    cpu_during = server.cpu_seconds() - cpu0
    if spy is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=40)
        if spy.poll() is None:
            spy.kill()  # by PID: our own child
            spy.wait(timeout=10)
    say(f"part 2: /api/status idle, five instances ready ({idle_requests} requests)")
    idle_after, ta0, ta1 = idle_window("idle-after")
    during = [s for s in during_all if run.t_first_post <= s[0] <= t_end]
    if "during" in controls:
        controls["during"] = [s for s in controls["during"] if run.t_first_post <= s[0] <= t_end]
    events = server.events()
    ok = lambda samples: [s[1] for s in samples if s[2] == 200]  # noqa: E731
    errors = lambda samples: sum(1 for s in samples if s[2] != 200)  # noqa: E731
    report["latency"] = {
        "idle_before": ok(idle_before),
        "idle_after": ok(idle_after),
        "idle": ok(idle_before) + ok(idle_after),
        "idle_errors": errors(idle_before) + errors(idle_after),
        "during": ok(during),
        "during_errors": errors(during),
        "run": run,
        "lag_before": lag_stats(events, tb0, tb1),
        "lag_after": lag_stats(events, ta0, ta1),
        "lag_during": lag_stats(events, run.t_first_post, t_end),
        "worst": sorted(during, key=lambda s: -s[1])[:5],
        "attribution": attribute(events, during, 0.01),
        "cpu_during": cpu_during,
        "during_seconds": t_end - run.t_first_post,
        "control": {name: ok(samples) for name, samples in controls.items()},
        "cpu_use": cpu_use if cpus else {},
    }


def attribute(events: list[dict], samples: list, top: float) -> dict:
    """Why the slowest ``top`` share of samples were slow: what overlapped each one in the server.

    First match wins, in this order: a garbage-collector pause; a call of the state store on the
    event loop's thread (it fsyncs); an SSH handshake (provisioner.connect, tunnels.open) or an EC2
    call (backend.*) in a worker thread — GIL and CPU contention from our own threads; the loop's
    thread waiting for a CPU (over 25 % of its 0.5 s window); setup.sh's output being streamed
    by a worker; otherwise unexplained.
    """
    main = next((e["th"] for e in events if e["k"] == "serve_start"), None)
    ordered = sorted(samples, key=lambda s: -s[1])
    chosen = ordered[: max(1, int(len(ordered) * top))] if ordered else []
    gcs = [(e["t0"], e["t"]) for e in events if e["k"] == "gc"]
    loop_calls = [
        (e["t0"], e["t"], e["name"])
        for e in events
        if e["k"] == "span" and e["th"] == main and e["t"] - e["t0"] > 0.002
    ]
    ssh = [
        (e["t0"], e["t"], e["name"])
        for e in events
        if e["k"] == "span" and e["name"] in ("provisioner.connect", "tunnels.open")
    ]
    ec2 = [
        (e["t0"], e["t"], e["name"])
        for e in events
        if e["k"] == "span" and e["name"] in ("backend.launch", "backend.list_instances")
    ]
    provisioning = [
        (e["t0"], e["t"], e["name"])
        for e in events
        if e["k"] == "span" and e["name"] == "provisioner.run_script"
    ]
    starved = [
        (e["t0"], e["t"])
        for e in events
        if e["k"] == "lag" and e.get("runq", 0) > 0.25 * max(1e-9, e["t"] - e["t0"])
    ]
    counts: dict[str, int] = {}
    for t0, dur, *_ in chosen:
        t1 = t0 + dur

        def hit(spans: list, t0: float = t0, t1: float = t1) -> bool:
            return any(a < t1 and b > t0 for a, b, *_ in spans)

        if hit(gcs):
            cause = "GC pause (gen 2)"
        elif hit(loop_calls):
            names = sorted({n for a, b, n in loop_calls if a < t1 and b > t0})
            cause = "loop blocked by " + ", ".join(names)
        elif hit(ssh):
            cause = "SSH handshake in a worker (GIL/CPU)"
        elif hit(ec2):
            cause = "EC2 calls in a worker (GIL/CPU)"
        elif hit(starved):
            cause = "loop thread waiting for a CPU"
        elif hit(provisioning):
            cause = "setup.sh output streaming in a worker (GIL/CPU)"
        else:
            cause = "unexplained"
        counts[cause] = counts.get(cause, 0) + 1
    return {"n": len(chosen), "threshold": chosen[-1][1] if chosen else None, "counts": counts}


def part_aws_calls(
    server: Server, work: Path, counter: DescribeCounter, report: dict, window: float
) -> None:
    """Windows aligned on the poller: each holds the same number of its (slow) polls."""
    run = report["latency"]["run"]
    ready_at = run.t_all_ready_seen or time.monotonic()
    say("part 3: waiting for the poller's first steady poll")
    t0 = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        polls = [e["t"] for e in server.events() if e["k"] == "poll" and e["t"] > ready_at + 0.05]
        if polls:
            t0 = polls[0]
            break
        time.sleep(0.2)
    if t0 is None:
        t0 = time.monotonic()
    # A window of one poll_slow period, starting half a period after a poll, holds one poll.
    windows = {
        1: (t0 + window / 2, t0 + 1.5 * window),
        20: (t0 + 1.5 * window, t0 + 2.5 * window),
    }
    results = {}
    for clients, (w0, w1) in windows.items():
        say(f"part 3: {clients} client(s) polling GET instances every 1 s for {w1 - w0:.0f} s")
        spec = {
            "port": server.port,
            "token": server.token,
            "path": API + "instances",
            "threads": clients,
            "interval": 1.0,
            "count": int(window) + 5,
            "start_at": w0,
            "end_at": w1,
            "stagger": True,
            "max_seconds": window + 30,
        }
        proc = run_client(work, f"poll{clients}", spec)
        samples = client_samples(work, f"poll{clients}", proc, timeout=w1 - time.monotonic() + 30)
        while time.monotonic() < w1 + 0.5:
            time.sleep(0.1)
        events = server.events()
        polls = [e for e in events if e["k"] == "poll"]
        before = [e["aws_calls"] for e in polls if e["t"] < w0]
        upto = [e["aws_calls"] for e in polls if e["t"] < w1]
        results[clients] = {
            "window": w1 - w0,
            "requests": len(samples),
            "ok": sum(1 for s in samples if s[2] == 200),
            "latency": [s[1] for s in samples if s[2] == 200],
            "moto_ext": counter.count(w0, w1, extension=True),
            "moto_harness": counter.count(w0, w1, extension=False),
            "server_describe": sum(
                1
                for e in events
                if e["k"] == "aws" and e["op"] == "DescribeInstances" and w0 <= e["t0"] < w1
            ),
            "server_all_aws": sum(1 for e in events if e["k"] == "aws" and w0 <= e["t0"] < w1),
            "aws_calls": (upto[-1] if upto else 0) - (before[-1] if before else 0),
        }
    report["aws"] = results


# -- the report ---------------------------------------------------------------------------------


def print_report(report: dict, args: argparse.Namespace, meta: dict) -> None:
    out = []
    p = out.append
    p("")
    p("jupyter-ec2 LaunchManager benchmark (issue 6) — simulated cloud, loopback only")
    p(
        f"machine: {os.cpu_count()} cores · server: jupyter_server subprocess · "
        f"LaunchManager poll_fast={meta['poll_fast']} s, poll_slow={meta['poll_slow']} s"
        f"{' (defaults)' if meta['defaults'] else ' (NOT the defaults)'} · environment 'existing' "
        f"({IMAGE_PYTHON})"
    )
    p(
        "load average (1 min) at start {:.2f}, at end {:.2f} — other work on this machine adds "
        "noise".format(meta["load_start"][0], meta.get("load_end", (float("nan"),))[0])
    )
    if meta.get("rc_cost") is not None:
        p(
            f"host: root's ~/.bashrc (pyenv init + rehash) costs {1000 * meta['rc_cost']:.0f} ms "
            "per SSH command on this machine (provisioning and each forward open one); an "
            "Ubuntu AMI's costs ~0"
        )
    if meta.get("jupyter_start"):
        wall, cpu = meta["jupyter_start"]
        p(
            f"host: one remote jupyter_server start (setup.sh 'ready' step) takes {wall:.2f} s, "
            f"{cpu:.2f} s of CPU; five simulated instances share this machine's "
            f"{os.cpu_count()} cores, where real ones would each have their own"
        )
    if meta.get("stale_lock_after") is not None:
        p(f"WARNING: a stale pyenv lock appeared during the run ({PYENV_LOCK}): figures are off")
    p("")
    summary = []

    def launch_section(key: str, title: str, target: float) -> None:
        if key not in report:
            return
        run, parts = report[key]
        p(f"== 1. {title}: POST instances → ready ==")
        if run.failed:
            p(f"   FAILED: {run.failed}")
        totals = [v["total"] for v in parts.values() if v["total"] is not None]
        if run.n == 1 and totals:
            wall = totals[0]
        elif totals and len(totals) == run.n:
            wall = max(v["t_ready"] for v in parts.values()) - run.t_first_post
        else:
            wall = None
        seen = (run.t_all_ready_seen - run.t_first_post) if run.t_all_ready_seen else None
        p(
            f"   wall time to ready: {wall:.2f} s (target ≤ {target:.0f} s, ratio "
            f"{wall / target:.2f}×) · as seen by a 50 ms poller: {seen:.2f} s"
            if wall is not None and seen is not None
            else "   wall time: n/a"
        )
        if run.n > 1 and totals:
            p("   per instance: " + ", ".join(f"{t:.2f}" for t in sorted(totals)) + " s")
        p(
            f"   CPU during the run: server process {run.cpu_server:.1f} s, whole machine "
            f"{run.cpu_machine:.1f} s of {os.cpu_count() * (seen or 1):.1f} s available"
        )
        # Segment table: one column per instance (one) or median/max (five).
        names: list[str] = []
        for v in parts.values():
            for name, _ in v["segments"]:
                if name not in names:
                    names.append(name)
        if run.n == 1:
            p(f"   {'where the time goes (ms)':<58} {'ms':>7} {'share':>6}")
        else:
            p(f"   {'where the time goes (ms)':<58} {'median':>7} {'max':>7}")
        for name in names:
            values = [dict(v["segments"]).get(name) for v in parts.values()]
            values = [x for x in values if x is not None]
            if not values:
                continue
            if run.n == 1:
                share = values[0] / totals[0] if totals else 0
                p(f"   {name:<58} {ms(values[0])} {100 * share:5.0f}%")
            else:
                p(f"   {name:<58} {ms(statistics.median(values))} {ms(max(values))}")
        waits, remote, local = [], [], []
        for v in parts.values():
            seg = dict(v["segments"])
            waits.append(
                seg.get("202 → poller sees 'running' (boot + poll wait)", 0)
                + seg.get("'running' seen → connecting (_wait_running wakes)", 0)
            )
            if v["total"] is not None:
                on_instance = sum(d for name, d in v["segments"] if name.startswith("  setup.sh"))
                remote.append(on_instance)
                local.append(v["total"] - on_instance - waits[-1])
        if waits:
            p(
                f"   split (median per instance): waiting for 'running' (poller timer + "
                f"_wait_running tick, no boot delay at all) {statistics.median(waits):.2f} s · "
                + (
                    f"setup.sh steps on the instance {statistics.median(remote):.2f} s · "
                    f"the rest (EC2 calls, SSH, upload, forward) {statistics.median(local):.2f} s"
                    if remote
                    else ""
                )
            )
        first = next(iter(parts.values()), None)
        if first and first["aws_in_launch"]:
            ops: dict[str, list[float]] = {}
            for v in parts.values():
                for op, d in v["aws_in_launch"]:
                    ops.setdefault(op, []).append(d)
            n_calls = sum(len(x) for x in ops.values()) / max(1, len(parts))
            spans = [v["launch_span"] for v in parts.values() if v["launch_span"]]
            p(
                f"   inside POST: backend.launch median "
                f"{1000 * statistics.median(spans):.0f} ms,"
                f" {n_calls:.0f} AWS calls per launch: "
                + ", ".join(f"{op} {1000 * statistics.median(d):.0f}" for op, d in ops.items())
                + " (ms, median)"
            )
        retries = sum(v["retries"] for v in parts.values())
        connects = [v["connect"] for v in parts.values() if v["connect"] is not None]
        if connects:
            p(
                "   SSH login (provisioner.connect) median "
                f"{1000 * statistics.median(connects):.0f} ms,"
                f" {retries} retr{'y' if retries == 1 else 'ies'} while sshd was not up"
            )
        p("")
        if wall is not None:
            summary.append(
                (
                    f"launch→ready, {title}",
                    f"{wall:.2f} s",
                    f"≤ {target:.0f} s",
                    wall / target,
                    wall <= target,
                )
            )
        else:
            summary.append(
                (f"launch→ready, {title}", "failed", f"≤ {target:.0f} s", float("nan"), False)
            )

    launch_section("one", "one instance", TARGETS["one"])
    launch_section("five", "five instances at once", TARGETS["five"])

    if "latency" in report:
        lat = report["latency"]
        idle, during = lat["idle"], lat["during"]
        p("== 2. /api/status latency (plain http.client, keep-alive, one request every 10 ms) ==")
        if meta.get("pinned"):
            p(
                f"   CPUs split as on a real laptop: local server + latency client on CPU "
                f"{sorted(LOCAL_CPUS)}, simulated cloud + instance hosts (sshd, setup.sh, remote "
                f"Jupyter) on CPU {sorted(CLOUD_CPUS)} (--no-pin to share all CPUs)"
            )
        else:
            p("   server, client and simulated instances share every CPU (--no-pin)")
        p(
            f"   {'':<30} {'n':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'err':>3}"
            f" | server loop: {'lag max':>7} {'>20ms':>5} {'CPU-starved':>11} {'GC pauses':>14}"
        )
        for name, values, errors, lag in (
            ("idle, no instance", lat["idle_before"], None, lat["lag_before"]),
            ("idle, 5 instances ready", lat["idle_after"], None, lat["lag_after"]),
            ("idle (both)", idle, lat["idle_errors"], None),
            (
                f"during 5 launches (boot {args.boot_delay:g} s)",
                during,
                lat["during_errors"],
                lat["lag_during"],
            ),
        ):
            head = (
                f"   {name:<30} {len(values):>5} {1000 * percentile(values, 0.5):7.2f} "
                f"{1000 * percentile(values, 0.99):7.2f} {1000 * worst(values):7.1f} "
                f"{'' if errors is None else errors:>3}"
            )
            if lag is None:
                p(head)
                continue
            gcs = lag["gc"]
            gc_text = f"{len(gcs)}, max {1000 * max(gcs):.0f} ms" if gcs else "none >20 ms"
            p(
                f"{head} | {lag['max_ms']:7.1f} {lag['over20']:>5} {100 * lag['runq']:10.0f}% "
                f"{gc_text:>14}"
            )
        ctl = lat.get("control") or {}
        if ctl:
            for name, key in (
                ("control, same moments: idle 1", "idle-before"),
                ("control, same moments: idle 2", "idle-after"),
                ("control, same moments: during", "during"),
            ):
                values = ctl.get(key, [])
                p(
                    f"   {name:<30} {len(values):>5} {1000 * percentile(values, 0.5):7.2f} "
                    f"{1000 * percentile(values, 0.99):7.2f} {1000 * worst(values):7.1f}"
                )
        p(
            "   server loop: how late a 10 ms timer on the server's event loop fired (max, count "
            ">20 ms); CPU-starved: share of the time the loop's thread waited for a CPU; GC: "
            "garbage-collector pauses >20 ms"
        )
        p99_idle, p99_during = percentile(idle, 0.99), percentile(during, 0.99)
        ratio = p99_during / p99_idle if p99_idle else float("nan")
        p(
            f"   p99 during / idle (same server, before + after) = {ratio:.2f}× (target ≤ "
            f"{TARGETS['p99_ratio']:.0f}×); p99 during = {1000 * p99_during:.1f} ms (target < "
            f"{TARGETS['p99_ms']:.0f} ms)"
        )
        paired = None
        if ctl.get("during"):
            p99_control = percentile(ctl["during"], 0.99)
            paired = p99_during / p99_control if p99_control else float("nan")
            p(
                f"   p99 during / p99 of the idle control at the same moments = {paired:.2f}× "
                "(the same ratio with the machine's own noise cancelled)"
            )
        if lat.get("cpu_use"):
            p(
                f"   CPU {sorted(LOCAL_CPUS)} (the laptop's), share of its time: {'busy':>6} "
                f"{'server+ssh':>10} {'control':>8} {'probes':>7} {'other work':>10}"
            )
            for name, key in (
                ("idle, no instance", "idle-before"),
                ("idle, 5 instances ready", "idle-after"),
                ("during the launches", "during"),
            ):
                d = lat["cpu_use"].get(key)
                if not d or d["t"] <= 0:
                    continue
                span = d["t"] * len(LOCAL_CPUS)

                def pct(value: float, span: float = span) -> str:
                    return f"{100 * value / span:5.0f}%"

                p(
                    f"   {name:<44} {pct(d['cpus']):>6} {pct(d['server']):>10} "
                    f"{pct(d['control']):>8} {pct(d['probes']):>7} {pct(max(0.0, d['others'])):>10}"
                )
        att = lat["attribution"]
        if att["threshold"] is not None:
            p(
                f"   the slowest 1% during the launches ({att['n']} requests ≥ "
                f"{1000 * att['threshold']:.1f} ms) overlapped: "
                + "; ".join(
                    f"{k}: {v}" for k, v in sorted(att["counts"].items(), key=lambda kv: -kv[1])
                )
            )
        p(
            f"   server process CPU during the launches: {lat['cpu_during']:.2f} s in "
            f"{lat['during_seconds']:.1f} s "
            f"({100 * lat['cpu_during'] / max(1e-9, lat['during_seconds']):.0f}% of one core)"
        )
        run = lat["run"]
        if run.t_all_ready_seen:
            p(
                f"   the five launches took {run.t_all_ready_seen - run.t_first_post:.1f} s to "
                f"ready (boot delay {args.boot_delay:g} s); slowest samples (s after the first "
                "POST: ms): "
                + ", ".join(
                    f"{s[0] - run.t_first_post:.2f}s: {1000 * s[1]:.0f}" for s in lat["worst"]
                )
            )
        if run.failed:
            p(f"   FAILED: {run.failed}")
        p("")
        summary.append(
            (
                "/api/status p99 during ÷ idle",
                f"{ratio:.2f}×",
                f"≤ {TARGETS['p99_ratio']:.0f}×",
                ratio / TARGETS["p99_ratio"],
                ratio <= TARGETS["p99_ratio"],
            )
        )
        if paired is not None:
            summary.append(
                (
                    "  same ÷ idle control, same moments",
                    f"{paired:.2f}×",
                    f"≤ {TARGETS['p99_ratio']:.0f}×",
                    paired / TARGETS["p99_ratio"],
                    paired <= TARGETS["p99_ratio"],
                )
            )
        summary.append(
            (
                "/api/status p99 during",
                f"{1000 * p99_during:.1f} ms",
                f"< {TARGETS['p99_ms']:.0f} ms",
                1000 * p99_during / TARGETS["p99_ms"],
                1000 * p99_during < TARGETS["p99_ms"],
            )
        )

    if "aws" in report:
        res = report["aws"]
        p(
            "== 3. DescribeInstances per minute, 5 ready instances, clients polling GET instances "
            "every 1 s =="
        )
        p(
            f"   {'clients':>7} {'window s':>8} {'GETs':>6} {'GET p50 ms':>10} "
            f"{'at moto':>8} {'/min':>6} {'server boto3':>12} {'aws_calls':>9} {'harness':>8}"
        )
        for clients, r in res.items():
            per_min = r["moto_ext"] * 60 / r["window"]
            p(
                f"   {clients:>7} {r['window']:8.0f} {r['ok']:>6} "
                f"{1000 * percentile(r['latency'], 0.5):10.2f} {r['moto_ext']:>8} {per_min:6.1f} "
                f"{r['server_describe']:>12} {r['aws_calls']:>9} {r['moto_harness']:>8}"
            )
        p(
            "   'at moto': DescribeInstances moto served to the extension (its user agent); "
            "'server boto3': the server's own DescribeInstances calls; 'aws_calls': "
            "LaunchManager.aws_calls delta; 'harness': the instance hosts' own polling (not ours)."
        )
        p(
            "   windows are one poll_slow period long and start half a period after a poll, so "
            "each holds exactly the polls the manager's timer makes."
        )
        a, b = res.get(1), res.get(20)
        if a and b:
            rate1 = a["moto_ext"] * 60 / a["window"]
            rate20 = b["moto_ext"] * 60 / b["window"]
            ratio = rate20 / rate1 if rate1 else float("nan")
            p(f"   20 clients ÷ 1 client = {ratio:.2f}× (target: equal, 1.00×)")
            summary.append(
                (
                    "DescribeInstances/min, 20 vs 1 client",
                    f"{rate20:.1f} vs {rate1:.1f}",
                    "equal",
                    ratio,
                    rate20 == rate1,
                )
            )
        p("")

    p("== Summary against the issue-6 targets ==")
    p(f"   {'measure':<40} {'value':>16} {'target':>10} {'ratio':>7}  verdict")
    for name, value, target, ratio, ok in summary:
        p(f"   {name:<40} {value:>16} {target:>10} {ratio:6.2f}×  {verdict(ok)}")
    p("")
    print("\n".join(out), file=REPORT_STREAM, flush=True)


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot-delay", type=float, default=5.0, help="simulated boot (part 2)")
    parser.add_argument(
        "--idle-requests", type=int, default=1000, help="per idle window (two windows)"
    )
    parser.add_argument(
        "--window", type=float, default=None, help="part 3 window (s); default poll_slow"
    )
    parser.add_argument("--poll-fast", type=float, default=2.0, help="LaunchManager.poll_fast")
    parser.add_argument("--poll-slow", type=float, default=30.0, help="LaunchManager.poll_slow")
    parser.add_argument("--only", choices=["launch", "latency", "aws"], action="append")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (events, logs)")
    parser.add_argument(
        "--py-spy",
        metavar="OUT",
        help="diagnosis: py-spy record the server during part 2's launches (raw format; a "
        "name ending in .gil.txt samples only the thread holding the GIL)",
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="part 2: no control server probed alongside (default: one, to cancel machine noise)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="part 2: let server and simulated instances share every CPU (default: split them)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("Run as root: the instance hosts are sshds and a notebook user on this machine.")
        return 1
    if not Path(IMAGE_PYTHON).exists():
        print(f"{IMAGE_PYTHON} is missing: run `make sim-image` first.")
        return 1
    age = stale_pyenv_lock()
    if age is not None:
        print(
            f"{PYENV_LOCK} is a pyenv rehash lock left behind {age:.0f} s ago: root's ~/.bashrc "
            "runs `pyenv rehash` at every SSH login, which would now wait 60 s each time and make "
            f"every figure meaningless. Remove that file (rm {PYENV_LOCK}) and run again."
        )
        return 2
    only = set(args.only or ["launch", "latency", "aws"])
    if "aws" in only:
        only.add("latency")  # part 3 polls the five instances part 2 made ready
    window = args.window or args.poll_slow

    user = None
    for _ in range(20):
        candidate = f"jec2b{secrets.token_hex(3)}"
        try:
            pwd.getpwnam(candidate)
        except KeyError:
            user = candidate
            break
    assert user is not None
    work = Path(tempfile.mkdtemp(prefix="jupyter-ec2-bench-manager-"))
    cloud = hosts = server = control = None
    counter = DescribeCounter()
    all_ids: list[str] = []
    report: dict = {}
    meta = {
        "load_start": os.getloadavg(),
        "poll_fast": args.poll_fast,
        "poll_slow": args.poll_slow,
        "defaults": args.poll_fast == 2.0 and args.poll_slow == 30.0,
    }
    code = 0

    signal.signal(signal.SIGTERM, on_interrupt)
    signal.signal(signal.SIGINT, on_interrupt)
    try:
        say(f"starting the simulated cloud, instance hosts and the server (notebook user {user})")
        cloud = SimulatedCloud().start()
        os.environ.update(cloud.env())  # any stray boto3 call of this process stays on loopback
        counter.install()
        hosts = InstanceHosts(cloud, work / "hosts", boot_delay=0.0)
        config = simulated_config(
            cloud,
            hosts,
            work / "state",
            notebook_user=user,
            idle_stop_command="/bin/true",
            idle_stop_minutes=30,
            profiles={"cpu": {"display_name": "CPU (t3.medium)", "instance_type": "t3.medium"}},
        )
        config["LaunchManager"] = {"poll_fast": args.poll_fast, "poll_slow": args.poll_slow}
        config["ServerApp"]["allow_unauthenticated_access"] = False
        meta["rc_cost"] = host_shell_rc_cost()
        meta["jupyter_start"] = remote_jupyter_start_cost(work)
        server = Server(work, config, dict(os.environ))
        server.start()
        say(f"server up on 127.0.0.1:{server.port}")
        if "launch" in only:
            part_launch(server, hosts, all_ids, report)
        if "latency" in only:
            # A new set of hosts with a slow boot: instances read 'pending' for boot_delay s.
            hosts.close()
            pinned = meta["pinned"] = not args.no_pin and len(CPUS) > 1
            if pinned:
                # "The laptop" (server, latency client) and "the cloud" (this process: moto,
                # sshds and everything they start) get their own CPUs, as they would for real.
                pin_process(os.getpid(), CLOUD_CPUS)
                pin_process(server.proc.pid, LOCAL_CPUS)
            if not args.no_control:
                say("starting the control server (same extension, another owner id)")
                control_config = json.loads(json.dumps(config))
                control_config["EC2Backend"]["owner_id"] = f"jec2bctl{secrets.token_hex(4)}"
                control_config["EC2Launcher"]["state_dir"] = str(work / "control" / "state")
                control = Server(work / "control", control_config, dict(os.environ))
                control.start()
                if pinned:
                    pin_process(control.proc.pid, LOCAL_CPUS)
            hosts = InstanceHosts(cloud, work / "hosts", boot_delay=args.boot_delay)
            part_latency(
                server,
                work,
                all_ids,
                report,
                args.idle_requests,
                LOCAL_CPUS if pinned else None,
                args.py_spy,
                control,
            )
            if control is not None:
                control.stop()
            if pinned:
                pin_process(os.getpid(), set(CPUS))
                pin_process(server.proc.pid, set(CPUS))
        if "aws" in only:
            part_aws_calls(server, work, counter, report, window)
    except Exception as err:  # noqa: BLE001 - report what we have, then clean up
        code = 1
        print(f"bench failed: {type(err).__name__}: {err}", file=sys.stderr)
        if server is not None:
            print(server.tail(), file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    finally:
        say("cleaning up: terminate instances, stop the server, hosts and cloud, remove the user")
        if server is not None:
            with contextlib.suppress(Exception):
                terminate_all(server, hosts, all_ids)
            with contextlib.suppress(Exception):
                server.stop()
        if control is not None:
            with contextlib.suppress(Exception):
                control.stop()
        if hosts is not None:
            with contextlib.suppress(Exception):
                hosts.close()
        counter.uninstall()
        if cloud is not None:
            with contextlib.suppress(Exception):
                cloud.stop()
        remove_user(user)
        for instance_id in all_ids:
            # What provisioning left on this machine for our instances (and only ours).
            shutil.rmtree(f"/var/lib/jupyter-ec2/{instance_id}", ignore_errors=True)
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    try:
        pwd.getpwnam(user)
        say(f"WARNING: the user {user} is still there")
    except KeyError:
        pass
    meta["stale_lock_after"] = stale_pyenv_lock()
    meta["load_end"] = os.getloadavg()
    if report:
        print_report(report, args, meta)
    say(f"done in {time.monotonic() - T_START:.0f} s")
    return code


if __name__ == "__main__":
    # moto prints to stdout (e.g. for the Price List call it does not serve): while the bench runs,
    # stdout goes to stderr, so that stdout holds the report alone.
    report_stream = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        REPORT_STREAM = report_stream
        status = main()
    sys.exit(status)

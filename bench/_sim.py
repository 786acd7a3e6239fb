"""Helpers of ``bench_manager.py``, each run as its own process (never imported by the product).

Two modes::

    python bench/_sim.py serve EVENTS.jsonl -- [jupyter_server arguments…]
    python bench/_sim.py client SPEC.json

``serve`` runs a real ``jupyter_server`` (the extension and everything the environment enables)
and appends timestamped events (one JSON object per line, ``time.monotonic()`` clock, the same
clock as every other process on this machine) to EVENTS.jsonl. Phase changes, log lines,
provisioning progress as the worker thread sees it, and every poll of the manager with its
``aws_calls`` counter come from the manager's own event stream (``LaunchManager.subscribe``);
spans of the EC2 layer, the provisioner, the forward and the store, every boto3 API call, and
the lag of the server's event loop come from wrappers of those layers' public methods, which
only observe: arguments and results pass through unchanged. The manager is not patched.

``client`` is a plain ``http.client`` load/latency client on 127.0.0.1 in its own process (so
it shares neither the server's event loop nor the bench's GIL): ``threads`` threads, each with
one keep-alive connection, each sending ``GET path`` with a fixed period until a count, an end
time or a stop file says stop (every loop is bounded). It writes every sample as
``[start_monotonic, seconds, status]`` to ``out``.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import inspect
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

# -- the instrumented server --------------------------------------------------------------------

_events_lock = threading.Lock()
_events_file = None


def emit(kind: str, **fields) -> None:
    """Append one event (monotonic time ``t``, thread ``th``) to the events file."""
    fields.setdefault("t", time.monotonic())
    fields["k"] = kind
    fields["th"] = threading.get_ident()
    line = json.dumps(fields, default=str)
    with _events_lock:
        if _events_file is not None:
            _events_file.write(line + "\n")


def _span(name: str, ident=None):
    """Wrap a sync function: emit ``span`` with start, end and an optional instance id."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            ok = False
            result = None
            try:
                result = func(*args, **kwargs)
                ok = True
                return result
            finally:
                fields = {"name": name, "t0": t0, "t": time.monotonic(), "ok": ok}
                if ident is not None:
                    # Observation must never break the call.
                    with contextlib.suppress(Exception):
                        fields["id"] = ident(args, kwargs, result)
                emit("span", **fields)

        return wrapper

    return decorate


_gc_pause = [0.0, 0.0]  # total seconds, longest pause in the current window
_gc_started = [0.0]


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.monotonic()
    else:
        pause = time.monotonic() - _gc_started[0]
        _gc_pause[0] += pause
        _gc_pause[1] = max(_gc_pause[1], pause)
        if pause > 0.02:
            emit("gc", t0=_gc_started[0], generation=info.get("generation"), pause=pause)


def _runqueue_wait() -> float:
    """Seconds the main thread (the event loop's) has waited for a CPU (``schedstat``)."""
    try:
        with open(f"/proc/self/task/{_main_tid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


_main_tid = threading.get_native_id()


def _instrument() -> None:
    """Wrap jupyter-ec2 and botocore methods so they report what they do and when."""
    import asyncio

    import botocore.client

    from jupyter_ec2 import app as app_module
    from jupyter_ec2 import aws, provision, store, tunnel

    # Every boto3 API call of the server process, whoever makes it.
    original_call = botocore.client.BaseClient._make_api_call

    @functools.wraps(original_call)
    def make_api_call(self, operation_name, api_params):
        t0 = time.monotonic()
        ok = False
        try:
            result = original_call(self, operation_name, api_params)
            ok = True
            return result
        finally:
            emit("aws", op=operation_name, t0=t0, t=time.monotonic(), ok=ok)

    botocore.client.BaseClient._make_api_call = make_api_call

    backend = aws.EC2Backend
    backend.launch = _span("backend.launch", lambda a, k, r: r.instance_id)(backend.launch)
    for name in (
        "client",
        "ssh_access_cidrs",
        "find_by_launch_id",
        "instance_type_architecture",
        "resolve_image",
        "ensure_key_pair",
        "_network",
        "ensure_security_group",
        "_run_instance",
        "list_instances",
        "owned",
        "stop",
        "start",
        "terminate",
    ):
        setattr(backend, name, _span(f"backend.{name}")(getattr(backend, name)))

    prov = provision.Provisioner
    prov.provision = _span("provisioner.provision", lambda a, k, r: a[2])(prov.provision)
    prov.connect = _span("provisioner.connect")(prov.connect)
    prov._run_script = _span("provisioner.run_script", lambda a, k, r: a[2])(prov._run_script)
    prov.read_idle_status = _span("provisioner.read_idle_status", lambda a, k, r: a[2])(
        prov.read_idle_status
    )
    tun = tunnel.TunnelManager
    tun.open = _span("tunnels.open", lambda a, k, r: a[1])(tun.open)

    # State on disk: the manager calls some of these on the event loop's thread (fsync inside).
    st = store.StateStore
    for name in (
        "write_json_secret",
        "read_json",
        "delete_json",
        "forget",
        "pin_host_key",
        "pinned_host_key",
        "load_or_create_key_pair",
    ):
        if hasattr(st, name):
            setattr(st, name, _span(f"store.{name}")(getattr(st, name)))

    def _forward_event(event):
        if event.kind == "phase":
            emit("phase", id=event.instance_id, phase=event.phase.value)
        elif event.kind in ("log", "progress"):
            emit(event.kind, id=event.instance_id, step=event.step, text=event.text)
        elif event.kind == "poll":
            emit("poll", t0=event.data["t0"], aws_calls=event.data["aws_calls"])

    # The event loop's lag: how late a 10 ms sleep wakes up (blocking code or GIL contention).
    original_start = app_module.EC2Launcher._start_jupyter_server_extension

    async def start_extension(self, serverapp):
        async def lag_monitor():
            period = 0.010
            late: list[float] = []
            window_start = time.monotonic()
            wait0 = _runqueue_wait()
            gc0 = _gc_pause[0]
            for _ in range(10_000_000):  # bounded: about 28 hours at this period
                before = time.monotonic()
                await asyncio.sleep(period)
                late.append(time.monotonic() - before - period)
                if time.monotonic() - window_start >= 0.5:
                    late.sort()
                    emit(
                        "lag",
                        t0=window_start,
                        n=len(late),
                        max=late[-1],
                        p50=late[len(late) // 2],
                        over5=sum(1 for x in late if x > 0.005),
                        over20=sum(1 for x in late if x > 0.020),
                        # CPU starvation of the loop's thread (waiting on the run queue) and the
                        # time the garbage collector stopped the process, in the same window.
                        runq=_runqueue_wait() - wait0,
                        gc=_gc_pause[0] - gc0,
                        gc_max=_gc_pause[1],
                    )
                    late = []
                    _gc_pause[1] = 0.0
                    window_start = time.monotonic()
                    wait0 = _runqueue_wait()
                    gc0 = _gc_pause[0]

        self._bench_lag_task = asyncio.ensure_future(lag_monitor())
        # The manager's own event stream: phases, log lines, provisioning steps, polls.
        self.manager.subscribe(_forward_event)
        emit("extension_started")
        return await original_start(self, serverapp)

    app_module.EC2Launcher._start_jupyter_server_extension = start_extension
    # The handler signatures must stay what the class says (nothing inspects them, but be safe).
    assert inspect.iscoroutinefunction(app_module.EC2Launcher._start_jupyter_server_extension)


def serve(events_path: str, server_args: list[str]) -> int:
    """Run jupyter_server with the instrumentation on; events go to ``events_path``.

    The ``serve_start`` event's ``th`` is the main thread, the one the event loop runs on.
    """
    global _events_file
    _events_file = open(events_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    _instrument()
    import gc

    gc.callbacks.append(_gc_callback)
    emit("serve_start", pid=os.getpid())
    from jupyter_server.serverapp import ServerApp

    try:
        ServerApp.launch_instance(argv=server_args)
    finally:
        emit("serve_end")
        _events_file.flush()
    return 0


# -- the HTTP client ----------------------------------------------------------------------------


def _client_thread(spec: dict, index: int, out: list) -> None:
    headers = {"Authorization": f"token {spec['token']}"}
    period = float(spec["interval"])
    count = int(spec["count"])
    end_at = float(spec.get("end_at") or time.monotonic() + 600)
    stop_file = spec.get("stop_file")
    start_at = float(spec.get("start_at") or time.monotonic())
    if spec.get("stagger"):
        start_at += random.uniform(0, period)
    while time.monotonic() < start_at:
        time.sleep(min(0.05, max(0.0, start_at - time.monotonic())))
    conn = http.client.HTTPConnection("127.0.0.1", int(spec["port"]), timeout=30)
    next_at = time.monotonic()
    for i in range(count):
        now = time.monotonic()
        if now >= end_at:
            break
        if stop_file and i % 10 == 0 and os.path.exists(stop_file):
            break
        t0 = time.monotonic()
        try:
            conn.request("GET", spec["path"], headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            status = -1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", int(spec["port"]), timeout=30)
        out.append([t0, time.monotonic() - t0, status, index])
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()
    conn.close()


def client(spec_path: str) -> int:
    """Run the client described by the JSON file ``spec_path``; write samples to spec['out']."""
    spec = json.loads(Path(spec_path).read_text())
    samples: list = []
    threads = [
        threading.Thread(target=_client_thread, args=(spec, i, samples), daemon=True)
        for i in range(int(spec.get("threads", 1)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=float(spec.get("max_seconds", 300)))
    tmp = spec["out"] + ".tmp"
    Path(tmp).write_text(json.dumps({"samples": samples}))
    os.replace(tmp, spec["out"])
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        rest = argv[2:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        return serve(argv[1], rest)
    if len(argv) == 2 and argv[0] == "client":
        return client(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

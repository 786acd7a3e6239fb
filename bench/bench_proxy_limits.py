"""What a hostile remote can do to the local server through the proxy: figures, no assertions.

Three attacks of issue #18, each against the relay of ``jupyter_ec2.proxy`` running in this
process (the local server's side; authentication is left out, it is not what is measured),
with the hostile remote in a child process on loopback, so its memory is not counted:

1. a 1 MB gzip bomb served as HTML (about 1 GiB inflated): this process's RSS growth and the
   slowest ``/api/status`` answered meanwhile;
2. a websocket flood to a client that reads nothing, for a few seconds: RSS growth, bytes the
   remote managed to send, and the proxy's log lines;
3. a remote that accepts and never answers: the time to the browser's 504 (first-byte timeout
   2 s here) and the file descriptors left afterwards.

    python bench/bench_proxy_limits.py
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from tornado import httpclient, httpserver, web, websocket
from tornado.testing import bind_unused_port

from jupyter_ec2.proxy import (
    LIMITS_SETTING,
    LOOKUP_SETTING,
    ProxyLimits,
    RelayHandler,
    RemoteEndpoint,
    close_upstream_pool,
)

INSTANCE = "i-00000000000000b0b"
FLOOD_SECONDS = 5.0


def rss() -> int:
    """This process's resident memory, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the hostile remote (child process) -------------------------------------------------------


def gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """About 1 MB of gzip that inflates to ``inflated`` zero bytes."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as f:
        chunk = b"\0" * (1 << 24)
        for _ in range(inflated // len(chunk)):
            f.write(chunk)
    return out.getvalue()


class _Bomb(web.RequestHandler):
    def initialize(self, bomb: bytes) -> None:
        self.bomb = bomb

    def get(self) -> None:
        self.set_header("Content-Type", "text/html")
        self.set_header("Content-Encoding", "gzip")
        self.write(self.bomb)


class _Flood(websocket.WebSocketHandler):
    def initialize(self, stats: dict) -> None:
        self.stats = stats

    def check_origin(self, origin: str) -> bool:
        return True

    async def open(self) -> None:
        piece = b"x" * 65536
        try:
            while self.ws_connection is not None:
                # Shielded: the write future must not be cancelled with this task at exit.
                await asyncio.shield(self.write_message(piece, binary=True))
                self.stats["sent"] += len(piece)
        except websocket.WebSocketClosedError:
            pass


class _Stats(web.RequestHandler):
    def initialize(self, stats: dict) -> None:
        self.stats = stats

    def get(self) -> None:
        self.write(self.stats)


def far_end() -> None:
    """Serve the hostile remote; print its port; run until stdin closes."""
    bomb = gzip_bomb()
    stats = {"sent": 0, "bomb_bytes": len(bomb)}
    prefix = f"/jupyter-ec2/remote/{INSTANCE}/"
    app = web.Application(
        [
            (prefix + "bomb.html", _Bomb, {"bomb": bomb}),
            (prefix + "flood", _Flood, {"stats": stats}),
            ("/stats", _Stats, {"stats": stats}),
        ]
    )

    async def main() -> None:
        sock, port = bind_unused_port()
        server = httpserver.HTTPServer(app)
        server.add_sockets([sock])
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.stop()
        await server.close_all_connections()
        await asyncio.sleep(0.2)

    asyncio.run(main())


# -- the local side ---------------------------------------------------------------------------


class BenchRelay(RelayHandler):
    """The proxy's relay with the instance looked up and nothing else (no authentication)."""

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        self.find_endpoint(self.path_args[0])


class Status(web.RequestHandler):
    def get(self) -> None:
        self.write({"ok": True})


class _LineCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _status_poller(port: int, stop: threading.Event, out: list[float]) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while not stop.is_set():
        start = time.perf_counter()
        with opener.open(f"http://127.0.0.1:{port}/api/status", timeout=60) as r:
            r.read()
        out.append((time.perf_counter() - start) * 1000)
        time.sleep(0.01)


def _rss_sampler(stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(rss())
        time.sleep(0.005)


async def run(far_port: int) -> None:
    endpoints = {INSTANCE: RemoteEndpoint(local_port=far_port, token="remote-token")}
    app = web.Application(
        [
            ("/api/status", Status),
            (r"/jupyter-ec2/remote/([^/]+)/(.*)", BenchRelay),
        ],
        **{
            LOOKUP_SETTING: endpoints.get,
            LIMITS_SETTING: ProxyLimits(first_byte_timeout=2.0),
            "base_url": "/",
        },
    )
    sock, port = bind_unused_port()
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    base = f"http://127.0.0.1:{port}/jupyter-ec2/remote/{INSTANCE}/"
    client = httpclient.AsyncHTTPClient()
    loop = asyncio.get_running_loop()
    counter = _LineCounter()
    counter.setLevel(logging.WARNING)  # the access log (101, 200…) is not counted
    logging.getLogger("tornado").addHandler(counter)
    logging.getLogger("tornado").setLevel(logging.INFO)

    # 1. gzip bomb
    stop = threading.Event()
    latencies: list[float] = []
    samples: list[int] = []
    before = rss()
    threads = [
        threading.Thread(target=_status_poller, args=(port, stop, latencies)),
        threading.Thread(target=_rss_sampler, args=(stop, samples)),
    ]
    for t in threads:
        t.start()
    response = await client.fetch(base + "bomb.html", raise_error=False, request_timeout=120)
    await asyncio.sleep(0.5)
    stop.set()
    for t in threads:
        await loop.run_in_executor(None, t.join)
    bomb_bytes = json.loads((await client.fetch(f"http://127.0.0.1:{far_port}/stats")).body)[
        "bomb_bytes"
    ]
    print(f"gzip bomb: {bomb_bytes / 1e6:.2f} MB on the wire, ~1 GiB inflated")
    print(f"  answer {response.code}, body {len(response.body or b'')} bytes")
    print(f"  RSS growth {(max(samples) - before) / 1e6:.1f} MB (target < 100 MB)")
    print(
        f"  /api/status meanwhile: {len(latencies)} requests, slowest {max(latencies):.1f} ms "
        "(target < 100 ms)"
    )

    # 2. websocket flood to a client that reads nothing
    counter.lines.clear()
    stop = threading.Event()
    samples = []
    before = rss()
    sampler = threading.Thread(target=_rss_sampler, args=(stop, samples))
    sampler.start()
    ws = await websocket.websocket_connect(base.replace("http", "ws", 1) + "flood")
    await asyncio.sleep(FLOOD_SECONDS)
    stop.set()
    await loop.run_in_executor(None, sampler.join)
    sent = json.loads((await client.fetch(f"http://127.0.0.1:{far_port}/stats")).body)["sent"]
    ws.close()
    print(f"websocket flood, {FLOOD_SECONDS:g} s, client reading nothing:")
    print(f"  remote got out {sent / 1e6:.1f} MB before back-pressure held it")
    print(f"  RSS growth {(max(samples) - before) / 1e6:.1f} MB (target < 100 MB)")
    print(f"  log lines {len(counter.lines)} (warnings; target <= 1)")

    # 3. a remote that accepts and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    endpoints[INSTANCE] = RemoteEndpoint(local_port=silent.getsockname()[1], token="t")
    await asyncio.sleep(0.2)
    fds_before = len(os.listdir("/proc/self/fd"))
    start = time.perf_counter()
    response = await client.fetch(base + "lab", raise_error=False, request_timeout=60)
    took = time.perf_counter() - start
    await asyncio.sleep(0.5)
    fds_after = len(os.listdir("/proc/self/fd"))
    print("silent remote (first-byte timeout 2 s):")
    print(f"  answer {response.code} after {took:.2f} s")
    print(f"  file descriptors before {fds_before}, after {fds_after}")
    silent.close()
    close_upstream_pool(app.settings)
    server.stop()


def main() -> None:
    """Start the hostile remote, run the three attacks, print the figures."""
    if len(sys.argv) > 1 and sys.argv[1] == "--far-end":
        far_end()
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--far-end"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # A flood cut off at exit leaves a cancelled write behind: noise, not a figure.
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        far_port = int(child.stdout.readline())
        asyncio.run(run(far_port))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)


if __name__ == "__main__":
    main()

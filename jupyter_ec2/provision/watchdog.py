"""jupyter-ec2 idle watchdog: stops the instance when its Jupyter server has been idle long enough.

Shipped to the instance by ``setup.sh`` and run there as root (``python3 watchdog.py
SETTINGS.json``) by a systemd unit or in the background with a pid file. It uses the standard
library only and runs on the instance's own ``python3``, not in this package: Python 3.7 or newer
(:data:`MIN_PYTHON`; ``datetime.fromisoformat`` is 3.7's). ``setup.sh`` runs ``watchdog.py
--check`` before starting it, so an older interpreter fails provisioning with a clear message.

Every few seconds it asks the instance's own Jupyter server, over 127.0.0.1 with the token from
the server's config file, for ``/api/kernels`` and ``/api/terminals``. The machine is *idle*
when no kernel is busy and no kernel or terminal has had activity for ``idle_stop_minutes``
(fractions allowed); open browser tabs and the SSH forward alone do not count as activity. Then
it runs ``command`` (a word list, never through a shell) and starts a new idle period, in case
the command did not power the machine off.

It keeps a status file (JSON, world-readable, no secrets) that the extension reads to show
"stops in N min": ``idle_since``, ``stops_at`` and ``now`` as Unix times, plus ``busy``,
``kernels``, ``terminals``, ``server`` ("up"/"unreachable") and the last command run.

Settings (JSON): ``instance_id``, ``config_file``, ``status_file``, ``pid_file``,
``idle_stop_minutes`` (0 = do nothing but report), ``command`` (list of words), and optionally
``interval`` (seconds between polls), ``keepalive_file`` (default: ``keepalive.json`` beside
the status file), and ``before_stop`` (a word list: ``before_stop.py run SETTINGS``, run before
``command``, its outcome logged and kept as ``last_before_stop``; it never prevents the stop)
with ``before_stop_timeout``.

Keepalive: the extension writes ``{"until": UNIX_TIME}`` (instance clock) to the keepalive file
("Keep running 1 h"); it is read before every decision, and the machine never stops before that
time (``stops_at`` is the later of the idle deadline and ``until``).
"""

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: The oldest Python this file runs on.
MIN_PYTHON = (3, 7)


def python_problem(version_info):
    """Why this interpreter cannot run the watchdog (None when it can)."""
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return None
    have = ".".join(str(part) for part in version_info[:3])
    need = ".".join(str(part) for part in MIN_PYTHON)
    return (
        f"the idle watchdog needs Python {need} or newer, but this host's python3 is {have}: "
        "install a newer python3 on the image, or turn idle auto-stop off (idle_stop_minutes = 0)"
    )


def parse_time(text):
    """A Jupyter timestamp (ISO 8601, UTC, maybe with ``Z``) as a Unix time, or None."""
    if not text or not isinstance(text, str):
        return None
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def poll_interval(idle_seconds, configured=None):
    """Seconds between polls: a tenth of the idle time, from 0.5 s to 30 s."""
    if configured:
        return float(configured)
    return min(30.0, max(0.5, idle_seconds / 10.0))


class Reading:
    """What one look at the Jupyter server found."""

    def __init__(self, up, busy=False, last_activity=None, kernels=0, terminals=0, error=""):
        self.up = up
        self.busy = busy
        self.last_activity = last_activity
        self.kernels = kernels
        self.terminals = terminals
        self.error = error


def summarize(kernels, terminals):
    """A :class:`Reading` from the JSON of ``/api/kernels`` and ``/api/terminals``."""
    busy = False
    latest = None
    for item in list(kernels or []) + list(terminals or []):
        if not isinstance(item, dict):
            continue
        if item.get("execution_state") in ("busy", "starting"):
            busy = True
        moment = parse_time(item.get("last_activity"))
        if moment is not None and (latest is None or moment > latest):
            latest = moment
    return Reading(True, busy, latest, len(kernels or []), len(terminals or []))


def read_keepalive(path):
    """The ``until`` (Unix time) of a keepalive file, or None when absent or unreadable."""
    try:
        with open(path) as f:
            until = json.load(f).get("until")
    except (OSError, ValueError, AttributeError):
        return None
    return float(until) if isinstance(until, (int, float)) else None


class IdleClock:
    """The idle decision, free of I/O: feed it readings, ask it whether to stop."""

    def __init__(self, idle_seconds, started):
        self.idle_seconds = idle_seconds
        self.idle_since = started
        self.keep_until = None  # a keepalive: never stop before this time

    def observe(self, reading, now):
        """Move the start of the idle period forward for activity seen in ``reading``."""
        if not reading.up:
            return
        if reading.busy:
            self.idle_since = now
        elif reading.last_activity is not None:
            # Activity can only push the idle period later, and never into the future.
            self.idle_since = max(self.idle_since, min(reading.last_activity, now))

    @property
    def stops_at(self):
        """When the stop command runs if nothing happens meanwhile."""
        deadline = self.idle_since + self.idle_seconds
        return deadline if self.keep_until is None else max(deadline, self.keep_until)

    def due(self, now):
        """Whether the machine has been idle for the whole idle time."""
        return self.idle_seconds > 0 and now >= self.stops_at

    def rearm(self, now):
        """Start a new idle period (after running the stop command)."""
        self.idle_since = now


class Watchdog:
    """Polls the server, writes the status file, runs the stop command when due."""

    def __init__(self, settings):
        self.settings = settings
        self.instance_id = settings.get("instance_id", "")
        self.minutes = float(settings.get("idle_stop_minutes", 0))
        self.command = [str(word) for word in settings.get("command", [])]
        self.status_file = settings["status_file"]
        self.config_file = settings["config_file"]
        self.keepalive_file = settings.get("keepalive_file") or os.path.join(
            os.path.dirname(self.status_file), "keepalive.json"
        )
        self.interval = poll_interval(self.minutes * 60.0, settings.get("interval"))
        self.clock = IdleClock(self.minutes * 60.0, time.time())
        self.last_command = None
        self.stopping = False
        self.before_stop = [str(word) for word in settings.get("before_stop") or []]
        self.before_stop_timeout = float(settings.get("before_stop_timeout") or 60)
        self.last_before_stop = None

    def log(self, message):
        """One line on stderr (the watchdog's log file)."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        sys.stderr.write(f"{stamp} jupyter-ec2 watchdog {self.instance_id}: {message}\n")
        sys.stderr.flush()

    def _server(self):
        with open(self.config_file) as f:
            config = json.load(f)
        app = config.get("ServerApp", {})
        token = config.get("IdentityProvider", {}).get("token", "")
        handlers = [urllib.request.ProxyHandler({})]
        scheme = "http"
        if app.get("certfile"):
            scheme = "https"
            context = ssl.create_default_context(cafile=app["certfile"])
            handlers.append(urllib.request.HTTPSHandler(context=context))
        base = "{}://127.0.0.1:{}{}".format(scheme, int(app["port"]), app.get("base_url", "/"))
        return base, token, urllib.request.build_opener(*handlers)

    def read(self):
        """Ask the server for its kernels and terminals; a Reading (``up`` False on failure)."""
        try:
            base, token, opener = self._server()
            answers = []
            for path in ("api/kernels", "api/terminals"):
                request = urllib.request.Request(base + path)  # noqa: S310 - http(s) on loopback
                request.add_header("Authorization", "token " + token)
                try:
                    with opener.open(request, timeout=10) as answer:
                        answers.append(json.loads(answer.read().decode("utf-8")))
                except urllib.error.HTTPError as err:
                    if path == "api/terminals" and err.code == 404:  # terminals disabled
                        answers.append([])
                    else:
                        raise
            return summarize(answers[0], answers[1])
        except Exception as err:  # the server is restarting, gone, or misconfigured
            return Reading(False, error=str(err)[:200])

    def write_status(self, reading, now):
        """Write the status file atomically (mode 0644: it holds no secrets)."""
        status = {
            "version": 1,
            "instance_id": self.instance_id,
            "enabled": self.minutes > 0,
            "idle_stop_minutes": self.minutes,
            "idle_since": self.clock.idle_since,
            "stops_at": self.clock.stops_at if self.minutes > 0 else None,
            "now": now,
            "busy": reading.busy,
            "kernels": reading.kernels,
            "terminals": reading.terminals,
            "server": "up" if reading.up else "unreachable",
            "last_command": self.last_command,
            "last_before_stop": self.last_before_stop,
            "keep_until": self.clock.keep_until,
        }
        tmp = self.status_file + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(status, f, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.status_file)

    def run_before_stop(self, now):
        """Run the before-stop step (``before_stop.py run``); its outcome is logged and kept in
        the status file, and a failure or timeout never keeps the stop command from running."""
        if not self.before_stop:
            return
        env = {"PATH": STD_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
        try:
            done = subprocess.run(
                self.before_stop,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                # The step bounds itself; this only guards against the runner itself hanging.
                timeout=self.before_stop_timeout + 30,
            )
            lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
            result = json.loads(lines[-1]) if lines else {"ok": False, "detail": "no output"}
        except Exception as err:
            result = {"ok": False, "detail": "the before-stop step failed: " + str(err)[:300]}
        result["at"] = now
        self.last_before_stop = result
        self.log(
            "before stop: {} ({})".format(
                "done" if result.get("ok") else "FAILED", result.get("detail", "")
            )  # fmt: skip
        )

    def run_command(self, now):
        """Run the before-stop step, then the stop command (no shell); start a new idle period."""
        self.log("idle for {:.2f} min: running {}".format(self.minutes, " ".join(self.command)))
        self.run_before_stop(now)
        env = {"PATH": STD_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
        try:
            done = subprocess.run(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=300,
            )
            code, output = done.returncode, done.stdout.decode("utf-8", "replace")[-500:]
        except Exception as err:
            code, output = None, str(err)[:500]
        if output.strip():
            self.log(f"stop command said: {output.strip()}")
        self.last_command = {"at": now, "exit_code": code}
        self.clock.rearm(time.time())

    def tick(self):
        """One poll: read, decide, report."""
        now = time.time()
        reading = self.read()
        self.clock.keep_until = read_keepalive(self.keepalive_file)
        self.clock.observe(reading, now)
        if self.clock.due(now):
            self.run_command(now)
        self.write_status(reading, time.time())

    def run(self):
        """Poll until SIGTERM."""
        self.log(
            f"watching (idle stop after {self.minutes:.2f} min, poll every {self.interval:.1f} s)"
        )
        while not self.stopping:
            try:
                self.tick()
            except Exception as err:  # never die of one bad poll
                self.log(f"poll failed: {err}")
            deadline = time.monotonic() + self.interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.2, self.interval))


def write_pid_file(path):
    """Write this process's PID atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def main(argv=None):
    """``watchdog.py SETTINGS.json``: run the watchdog until SIGTERM."""
    argv = sys.argv[1:] if argv is None else argv
    problem = python_problem(sys.version_info)
    if argv == ["--check"] or problem:
        if problem:
            sys.stdout.write(f"error: {problem}\n")
            return 1
        return 0
    if len(argv) != 1:
        sys.stderr.write("usage: watchdog.py SETTINGS.json | --check\n")
        return 2
    with open(argv[0]) as f:
        settings = json.load(f)
    watchdog = Watchdog(settings)

    def stop(signum, frame):
        watchdog.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid_file = settings.get("pid_file")
    if pid_file:
        write_pid_file(pid_file)
    try:
        watchdog.run()
    finally:
        if pid_file:
            try:
                with open(pid_file) as f:
                    if f.read().strip() == str(os.getpid()):
                        os.unlink(pid_file)
            except OSError:
                pass
        watchdog.log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A throwaway non-root user of this machine for the user-mode demo and Binder tests.

:class:`ScratchUser` creates a user with a random name (``useradd -m``), copies the project's
source into its home (so nothing under /work needs other permissions), runs commands as that
user with a clean environment (``runuser``), and is removed afterwards (``userdel -r``) with
every process it still runs, by PID. :meth:`ScratchUser.files_outside` lists the files the user
owns outside its home and the temporary directories, which must stay empty.

The fixture :func:`repo2docker_user` (registered as a plugin by ``tests/conftest.py``, so that
its one session-wide value is shared) is such a user with this repository installed in its home
as repo2docker installs it; the Binder test and the user-mode demo test each run something of
their own on it, so the slow install from PyPI happens once per session.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_ec2.testing.hosts import end_processes

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ROOT = Path(__file__).resolve().parent.parent
#: Directories of the worktree that are never copied (environments, builds, caches).
SKIP = {".venv", "node_modules", ".git", "tests/artifacts", ".ruff_cache", "__pycache__"}
#: Places a user may write to; anything it owns elsewhere is a leak.
ALLOWED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 - what is allowed, not used


class ScratchUser:
    """A non-root user created for one test module and removed after it."""

    def __init__(self) -> None:
        self.name = "jec2demo" + secrets.token_hex(4)
        #: Where :meth:`copy_source` put the source, once it has.
        self.src: Path | None = None
        # Files a removed user left behind keep its uid, which a new user may get: only files
        # changed after this marker count as this user's.
        fd, marker = tempfile.mkstemp(prefix="jec2demo-since-")
        os.close(fd)
        self.since = marker
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", self.name],
            check=True,
        )
        # A key-only account: no password can match, and not locked (sshd without PAM refuses
        # locked accounts even for key logins).
        subprocess.run(["usermod", "-p", "*", self.name], check=True)
        if _devpts_lacks_tty_group():
            # A non-root sshd gives a session's pty to the tty group, and ends the connection
            # when it cannot. Where devpts is mounted with gid=5 (as on most systems and in
            # Docker) new ptys already have that group; this machine's devpts is not, so the
            # user joins the group to be able to hand its own ptys to it.
            subprocess.run(["usermod", "-aG", "tty", self.name], check=True)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)

    def copy_source(self) -> Path:
        """Copy the worktree (with the built lab extension, without environments) to ~/src."""
        dest = self.home / "src"

        def ignore(directory: str, names: list[str]) -> set[str]:
            rel = os.path.relpath(directory, ROOT)
            return {n for n in names if n in SKIP or os.path.normpath(os.path.join(rel, n)) in SKIP}

        shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(dest)], check=True)
        self.src = dest
        return dest

    def env(self, **extra: str) -> list[str]:
        """``env -i`` words for a clean login-like environment of this user."""
        words = [
            f"HOME={self.home}",
            f"USER={self.name}",
            f"LOGNAME={self.name}",
            "SHELL=/bin/bash",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "LANG=C.UTF-8",
        ]
        return ["/usr/bin/env", "-i", *words, *(f"{k}={v}" for k, v in extra.items())]

    def command(self, args: list[str], **extra: str) -> list[str]:
        """``args`` run as this user, in its home, with :meth:`env`."""
        return ["runuser", "-u", self.name, "--", *self.env(**extra), *args]

    def run(self, args: list[str], timeout: float = 900, **extra: str) -> str:
        """Run ``args`` as this user; return its output, raise with it on failure."""
        done = subprocess.run(
            self.command(args, **extra),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def popen(self, args: list[str], log: Path, **extra: str) -> subprocess.Popen:
        """Start ``args`` as this user in the background, output to ``log``."""
        with open(log, "wb") as out:
            return subprocess.Popen(
                self.command(args, **extra),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pids(self) -> list[int]:
        """Every process running as this user."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == self.uid:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def files_outside(self) -> list[str]:
        """Files this user owns outside its home and the temporary directories."""
        prune = [str(self.home), *ALLOWED_TEMP, "/proc", "/sys", "/dev"]
        expression: list[str] = []
        for path in prune:
            expression += ["-path", path, "-o"]
        done = subprocess.run(
            [
                "find",
                "/",
                "(",
                *expression[:-1],
                ")",
                "-prune",
                "-o",
                "-user",
                self.name,
                "-newer",
                self.since,
                "-print",
            ],
            capture_output=True,
            text=True,
        )
        return [line for line in done.stdout.splitlines() if line]

    def diagnostics(self, log: Path) -> str:
        """The tail of ``log`` and of every sshd log the user's demo left, for failures."""
        parts = [f"== {log}\n" + log.read_text(errors="replace")[-6000:]]
        for temp in ALLOWED_TEMP[:1]:
            for sshd_log in Path(temp).glob("jupyter-ec2-*/hosts/hosts/*/sshd.log"):
                if sshd_log.stat().st_uid == self.uid:
                    parts.append(f"== {sshd_log}\n" + sshd_log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def remove(self) -> None:
        """End the user's processes (by PID), delete its temporary files, remove it and its home."""
        end_processes(self.pids())
        for temp in ALLOWED_TEMP:
            subprocess.run(
                ["find", temp, "-xdev", "-uid", str(self.uid), "-delete"], capture_output=True
            )
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True)
        Path(self.since).unlink(missing_ok=True)


def repo2docker_path(user: ScratchUser) -> str:
    """PATH with the user's ``~/env/bin`` (made by :func:`repo2docker_user`) first."""
    return f"{user.home}/env/bin:/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="session")
def repo2docker_user() -> Iterator[ScratchUser]:
    """A non-root user with the repository built in its home as repo2docker builds it.

    A copy of the source in ``~/src`` (``user.src``), a fresh virtual environment ``~/env`` made
    from the system python, and, as that user with the environment first on PATH, ``pip install
    -r binder/requirements.txt`` and ``binder/postBuild`` (packages from PyPI; postBuild installs
    jupyter-ec2 with its simulated cloud from the copy, makes the simulated image under the
    user's cache directory and fails unless the server extension is enabled). Made once for the
    session, because the Binder and demo tests only run different things on top of it; removed
    (with every process and temporary file of the user) after the session, also on failure.
    """
    user = ScratchUser()
    try:
        user.copy_source()
        user.run(["/usr/bin/python3", "-m", "venv", f"{user.home}/env"])
        path = repo2docker_path(user)
        requirements = f"{user.src}/binder/requirements.txt"
        user.run(["python", "-m", "pip", "install", "-q", "-r", requirements], PATH=path)
        user.run([f"{user.src}/binder/postBuild"], PATH=path)
        yield user
    finally:
        user.remove()


def _devpts_lacks_tty_group() -> bool:
    """Whether /dev/pts is mounted without ``gid=5`` (new ptys then get the user's group)."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 3 and fields[1] == "/dev/pts":
                return "gid=5" not in fields[3].split(",")
    return False


def api(url: str, token: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    """One authenticated JSON request to the local server; (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - a loopback URL the test built
        url,
        data=data,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        with OPENER.open(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_for_text(log: Path, pattern: str, proc, timeout: float) -> re.Match:
    """Wait until ``log`` holds ``pattern``; fail with the log if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    pytest.fail(f"{pattern!r} did not appear:\n{log.read_text(errors='replace')[-4000:]}")


def launch_to_ready_through_proxy(base: str, token: str) -> dict:
    """POST a launch, poll it to ``ready``, GET the remote /api/status through the proxy."""
    status, launched = api(f"{base}/jupyter-ec2/api/instances", token, "POST", {"profile": "cpu"})
    assert status == 202, launched
    instance_id = launched["id"]
    deadline = time.monotonic() + 300
    while True:
        status, instance = api(f"{base}/jupyter-ec2/api/instances/{instance_id}", token)
        assert status == 200, instance
        if instance["phase"] in ("ready", "failed") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert instance["phase"] == "ready", instance
    assert instance["url"].endswith(f"/jupyter-ec2/remote/{instance_id}/lab"), instance["url"]
    # The url is on the instance's own origin (<id>.localhost), which only a browser resolves and
    # which takes a handoff cookie; a script reaches the same relay on the local path with the
    # local token in its Authorization header.
    remote = f"{base}/jupyter-ec2/remote/{instance_id}/lab"
    # A forward that is being re-established answers 503 and asks to retry in a moment.
    deadline = time.monotonic() + 30
    while True:
        status, answer = api(remote[: -len("lab")] + "api/status", token)
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status == 200, answer
    assert "started" in answer
    return instance

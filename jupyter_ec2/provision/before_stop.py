"""jupyter-ec2 before-stop step: saves the work open in the instance's JupyterLab before a stop.

Shipped to the instance by ``setup.sh`` (next to ``watchdog.py``) and run there before every
stop and terminate: by the idle watchdog before its stop command, and by the extension over SSH
before it asks EC2 to stop or terminate (``c.Provisioner.before_stop``). Two sub-commands:

``before_stop.py run SETTINGS.json``
    Runs on the host's own ``python3`` (standard library only, 3.7 or newer), as root or as the
    notebook user. Carries out the configured step **as the notebook user**, bounded by the
    settings' ``timeout`` (the whole process group is killed past it), and prints one JSON line
    ``{"ok", "action", "detail", "seconds"}``. It always exits 0: a failed or hung step is
    reported, never allowed to block the stop that follows.

``before_stop.py save CONFIG.json``
    Runs on the notebook environment's interpreter (it needs tornado, which jupyter_server
    brings, and pycrdt, which jupyter-collaboration brings). A plain Jupyter server never holds
    a browser's unsaved edits, but with jupyter-collaboration the browser's edits live in the
    server's shared documents ("rooms"). For every notebook the server has a session for, and
    every other notebook under its root (bounded), this joins the document's collaboration room
    over the server's own websocket API (``api/collaboration/session`` then
    ``api/collaboration/room``), syncs the shared document, and when its shared state says
    ``dirty`` sends the room the same ``save`` request JupyterLab sends for Ctrl+S, waiting for
    the server's answer. A notebook whose shared state is clean is left alone (nothing is
    written).

Settings (JSON): ``instance_id``, ``action`` (``save-notebooks`` or ``command``), ``command``
(a shell command line, for ``command``), ``timeout`` (seconds), ``python`` (the environment's
interpreter), ``config_file`` (the server's config), ``notebook_user``, ``workdir``.
"""

import json
import os
import signal
import subprocess
import sys
import time

STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: At most this many notebooks are looked at by ``save`` (sessions first).
MAX_NOTEBOOKS = 200

#: lib0 message types of the collaboration websocket (jupyter_server_ydoc's MessageType).
SYNC, RAW = 0, 2
#: y-protocol sync message types.
SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE = 0, 1, 2


def outcome(ok, action, detail, started):
    """The one JSON line ``run`` prints."""
    return json.dumps(
        {
            "ok": bool(ok),
            "action": action,
            "detail": str(detail)[-800:],
            "seconds": round(time.time() - started, 2),
        },
        sort_keys=True,
    )


def _drop_to(user):
    """A preexec function that becomes ``user`` (when running as root), else None."""
    if os.geteuid() != 0 or not user or user == "root":
        return None
    import pwd

    entry = pwd.getpwnam(user)

    def become():
        os.setsid()
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return become


def user_env(user):
    """A clean environment for the notebook user."""
    home = "/root"
    try:
        import pwd

        home = pwd.getpwnam(user).pw_dir if user else os.path.expanduser("~")
    except KeyError:
        pass
    return {"PATH": STD_PATH, "LANG": "C.UTF-8", "HOME": home, "USER": user or ""}


def bounded(argv, settings):
    """Run ``argv`` as the notebook user within the timeout: (exit code or None, output)."""
    user = settings.get("notebook_user") or ""
    timeout = float(settings.get("timeout") or 60)
    preexec = _drop_to(user) or os.setsid
    workdir = settings.get("workdir") or "/"
    if not os.path.isdir(workdir):
        workdir = "/"
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=user_env(user),
        preexec_fn=preexec,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        out, _ = proc.communicate()
        return None, out.decode("utf-8", "replace")
    return proc.returncode, out.decode("utf-8", "replace")


def run(settings):
    """Carry out the configured step; the JSON outcome line (never raises)."""
    started = time.time()
    action = settings.get("action") or ""
    timeout = float(settings.get("timeout") or 60)
    try:
        if action == "save-notebooks":
            here = os.path.abspath(__file__)
            argv = [settings["python"], here, "save", settings["config_file"]]
        elif action == "command":
            argv = ["/bin/sh", "-c", settings["command"]]
        else:
            return outcome(True, action or "nothing", "nothing to do", started)
        code, output = bounded(argv, settings)
    except Exception as err:  # a missing user or interpreter: report it, never block
        return outcome(False, action, f"could not run: {err}", started)
    text = " ".join(line.strip() for line in output.splitlines() if line.strip())
    if code is None:
        return outcome(False, action, f"timed out after {timeout:g} s; {text}".strip(), started)
    if code != 0:
        return outcome(False, action, f"exit status {code}: {text}".strip(), started)
    return outcome(True, action, text or "done", started)


# -- save: runs on the environment's interpreter --------------------------------------------


def server_of(config_file):
    """(http base URL, token, ssl context or None) of the server in ``config_file``."""
    with open(config_file) as f:
        config = json.load(f)
    app = config.get("ServerApp", {})
    token = config.get("IdentityProvider", {}).get("token", "")
    context = None
    scheme = "http"
    if app.get("certfile"):
        import ssl

        scheme = "https"
        context = ssl.create_default_context(cafile=app["certfile"])
    base = "{}://127.0.0.1:{}{}".format(scheme, int(app["port"]), app.get("base_url", "/"))
    return base, token, context


def var_uint(num):
    """lib0's variable-length unsigned integer."""
    out = bytearray()
    while True:
        byte = num & 0x7F
        num >>= 7
        if num:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def var_string(text):
    """lib0's length-prefixed UTF-8 string."""
    data = text.encode("utf-8")
    return var_uint(len(data)) + data


def read_var_uint(data, pos):
    """(value, next position) of a lib0 variable-length unsigned integer at ``pos``."""
    num = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        num |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return num, pos


def save_request(request_id):
    """The ``save`` message JupyterLab sends a document room for Ctrl+S."""
    return var_uint(RAW) + var_string("save") + var_uint(request_id)


def raw_json(message):
    """The JSON of a RAW message from the server, or None for any other message."""
    if not message or message[0] != RAW:
        return None
    length, pos = read_var_uint(message, 1)
    try:
        return json.loads(bytes(message[pos : pos + length]).decode("utf-8"))
    except ValueError:
        return None


async def _save_all(config_file, deadline):
    from urllib.parse import quote

    from pycrdt import Doc, Map, create_sync_message, handle_sync_message
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    base, token, context = server_of(config_file)
    headers = {"Authorization": "token " + token}
    client = AsyncHTTPClient()

    async def api(method, path, body=None):
        request = HTTPRequest(
            base + path,
            method=method,
            headers=dict(headers, **({"Content-Type": "application/json"} if body else {})),
            body=None if body is None else json.dumps(body),
            ssl_options=context,
            request_timeout=max(1.0, deadline - time.time()),
        )
        answer = await client.fetch(request)
        return json.loads(answer.body.decode("utf-8") or "null")

    # Candidates: notebooks with a session first (a notebook open in JupyterLab has one), then
    # the rest of the tree, so a notebook open without a kernel is not missed.
    paths = []
    for session in await api("GET", "api/sessions") or []:
        path = session.get("path") or (session.get("notebook") or {}).get("path")
        notebook = session.get("type") in (None, "notebook") and str(path).endswith(".ipynb")
        if notebook and path not in paths:
            paths.append(path)
    pending_dirs = [""]
    while pending_dirs and len(paths) < MAX_NOTEBOOKS:
        listing = await api("GET", "api/contents/" + quote(pending_dirs.pop(0)) + "?content=1")
        for item in listing.get("content") or []:
            if item.get("type") == "directory" and not item["name"].startswith("."):
                pending_dirs.append(item["path"])
            elif item.get("type") == "notebook" and item["path"] not in paths:
                paths.append(item["path"])
    paths = paths[:MAX_NOTEBOOKS]

    saved, clean, failed = [], 0, []
    ws_base = "ws" + base[len("http") :]
    for path in paths:
        try:
            session = await api(
                "PUT", "api/collaboration/session/" + quote(path),
                {"format": "json", "type": "notebook"},
            )  # fmt: skip
        except HTTPClientError as err:
            if err.code == 404 and not saved and not clean:
                raise SystemExit(
                    "the notebook server has no collaboration API (install "
                    "jupyter-collaboration in its environment): unsaved browser edits cannot "
                    "be reached from the server"
                ) from None
            failed.append(f"{path} ({err.code})")
            continue
        room = "json:notebook:" + session["fileId"]
        url = f"{ws_base}api/collaboration/room/{room}?sessionId={quote(session['sessionId'])}"
        conn = await websocket_connect(
            HTTPRequest(
                url,
                headers=headers,
                ssl_options=context,
                connect_timeout=max(1.0, deadline - time.time()),
            )
        )
        try:
            doc = Doc()
            conn.write_message(create_sync_message(doc), binary=True)
            synced = False
            while not synced:
                message = await _read(conn, deadline)
                if message[0] != SYNC:
                    continue
                reply = handle_sync_message(message[1:], doc)
                if reply is not None:
                    conn.write_message(reply, binary=True)
                synced = message[1] == SYNC_STEP2
            state = doc.get("state", type=Map)
            if not state.get("dirty"):
                clean += 1
                continue
            conn.write_message(save_request(1), binary=True)
            while True:
                answer = raw_json(await _read(conn, deadline))
                if answer and answer.get("type") == "save" and answer.get("responseTo") == 1:
                    break
            if answer.get("status") == "success":
                saved.append(path)
            else:
                failed.append(f"{path} ({answer.get('status')})")
        finally:
            conn.close()
    return saved, clean, failed


async def _read(conn, deadline):
    import asyncio

    message = await asyncio.wait_for(conn.read_message(), max(0.1, deadline - time.time()))
    if message is None:
        raise ConnectionError("the server closed the collaboration websocket")
    return message if isinstance(message, bytes) else message.encode("utf-8")


def save(config_file, timeout=3600.0):
    """Save every notebook with unsaved changes in the server's shared documents; exit code."""
    import asyncio

    saved, clean, failed = asyncio.run(_save_all(config_file, time.time() + timeout))
    parts = [f"saved {len(saved)} notebook(s)" + (": " + ", ".join(saved) if saved else "")]
    parts.append(f"{clean} without unsaved changes")
    if failed:
        parts.append("could not save " + ", ".join(failed))
    sys.stdout.write("; ".join(parts) + "\n")
    return 1 if failed else 0


def main(argv=None):
    """``before_stop.py run SETTINGS.json`` | ``before_stop.py save CONFIG.json``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "run":
        try:
            with open(argv[1]) as f:
                settings = json.load(f)
        except (OSError, ValueError) as err:
            sys.stdout.write(outcome(False, "", f"no settings: {err}", time.time()) + "\n")
            return 0
        sys.stdout.write(run(settings) + "\n")
        return 0
    if len(argv) == 2 and argv[0] == "save":
        return save(argv[1])
    sys.stderr.write("usage: before_stop.py run SETTINGS.json | save CONFIG.json\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())

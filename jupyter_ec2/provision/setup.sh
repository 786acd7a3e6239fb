#!/usr/bin/env bash
# jupyter-ec2: make this host serve one instance's Jupyter server, idempotently.
#
# Shipped in the jupyter_ec2 package, uploaded with a JSON parameter file (and watchdog.py next
# to it) and run as root (through sudo when the login user is not root), or without root by the
# notebook user itself ("user mode": state in its home, no system services):
#
#   setup.sh PARAMS.json                    provision; a second run changes nothing and says so
#   setup.sh --print-params PARAMS.json     print the parameters as this script holds them (JSON)
#   setup.sh --supervise STATE_DIR PYTHON   (internal) keep the server running, as the notebook user
#   setup.sh --verify-sha256 FILE SUMS      (internal) FILE's SHA-256 is the one SUMS publishes
#   setup.sh --gpu-check SYSFS_ROOT         (internal) none | loaded ADDR… | missing ADDR… (NVIDIA)
#
# The parameter file holds the remote token: the script keeps a private copy for its run and
# deletes the uploaded file at once, and the copy goes on every exit path (error, signal, a
# dropped connection); stale uploads of this instance from interrupted runs are removed too.
#
# Pid files: root only trusts pid files that root wrote into root's own directory ($STATE),
# never one the notebook user can write, so no notebook-user file can make root signal a pid.
#
# Output, one marker per line among the commands' own output:
#   ::step NAME PERCENT            a step begins
#   ::done NAME changed|unchanged  a step ends
#   ::result KEY VALUE             a value for the caller (port, tls_fingerprint)
#   ::fail NAME CODE               the step failed; the lines before say why
#   ::end                          everything succeeded
#
# Every value comes from the parameter file as data. No value is ever evaluated as shell code:
# values are read by python3's json module, passed NUL-separated into an array, and only ever
# used as single words (arguments, file contents), never spliced into a command string.
set -euo pipefail
umask 077

STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [[ -z ${JEC2_CLEAN_ENV:-} ]]; then
  # A clean, predictable environment: no PYTHONPATH, pyenv, proxies or pip settings leak in.
  exec /usr/bin/env -i JEC2_CLEAN_ENV=1 PATH="$STD_PATH" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
    HOME="${HOME:-/}" USER="${USER:-}" LOGNAME="${LOGNAME:-}" /bin/bash "$0" "$@"
fi

STATE_ROOT=/var/lib/jupyter-ec2
# User mode (run without root by the notebook user itself, e.g. the demo as an ordinary user or on
# Binder): the state lives in that user's home and files root would own are the user's own.
USER_MODE=""
ADMIN=0:0

# -- reading the parameter file --------------------------------------------------------------

# Flattens the JSON into key NUL value NUL pairs (see jupyter_ec2.provision.params.flatten_params).
FLATTEN_PY='
import json, sys
with open(sys.argv[1], "rb") as f:
    data = json.load(f)
if not isinstance(data, dict) or data.get("version") != 1:
    sys.exit("error: unsupported parameter file version")
out = []
def walk(prefix, value):
    if isinstance(value, dict):
        for key in sorted(value):
            walk(prefix + [str(key)], value[key])
    elif isinstance(value, list):
        out.append((".".join(prefix + ["#"]), str(len(value))))
        for index, item in enumerate(value):
            walk(prefix + [str(index)], item)
    elif value is True:
        out.append((".".join(prefix), "true"))
    elif value is False:
        out.append((".".join(prefix), "false"))
    elif value is None:
        out.append((".".join(prefix), ""))
    elif isinstance(value, str):
        out.append((".".join(prefix), value))
    else:
        out.append((".".join(prefix), json.dumps(value)))
walk([], data)
buf = sys.stdout.buffer
for key, value in out:
    if "\0" in key or "\0" in value or not key:
        sys.exit("error: a parameter holds a NUL character")
    buf.write(key.encode("utf-8") + b"\0" + value.encode("utf-8") + b"\0")
buf.write(b"::end\0\0")
'

declare -A P=()
load_params() {
  local key value complete=""
  while IFS= read -r -d '' key && IFS= read -r -d '' value; do
    if [[ $key == "::end" ]]; then complete=1; break; fi
    P["$key"]=$value
  done < <(python3 -c "$FLATTEN_PY" "$1")
  [[ -n $complete ]] || die "could not read the parameter file"
}

print_params() {
  load_params "$1"
  local args=() key
  for key in "${!P[@]}"; do args+=("$key" "${P[$key]}"); done
  python3 -c '
import json, sys
a = sys.argv[1:]
print(json.dumps(dict(zip(a[0::2], a[1::2])), sort_keys=True))
' "${args[@]}"
}

# -- small python helpers (stdlib only, run by the system python3, never by the environment's) --

ENSURE_KEYS_PY='
import os, sys
path, keys = sys.argv[1], sys.argv[2:]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
try:
    with open(path) as f:
        have = f.read().splitlines()
except FileNotFoundError:
    have = None
present = set()
for line in have or []:
    words = line.split()
    for i in range(len(words) - 1):
        present.add((words[i], words[i + 1]))
missing = [k for k in keys if tuple(k.split()[:2]) not in present]
changed = False
if have is None or missing:
    tmp = path + ".jupyter-ec2.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in (have or []) + missing))
    os.replace(tmp, path)
    changed = True
if os.stat(path).st_mode & 0o077:
    os.chmod(path, 0o600)
    changed = True
print("changed" if changed else "unchanged")
'

RENDER_CONFIG_PY='
import json, sys
params_file, port, home = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(params_file) as f:
    config = json.load(f)["jupyter_config"]
app = config["ServerApp"]
app["port"] = port
root = app.get("root_dir", "~/notebooks")
if root == "~" or root.startswith("~/"):
    root = home + root[1:]
app["root_dir"] = root
sys.stdout.write(json.dumps(config, indent=1, sort_keys=True) + "\n")
'

RENDER_JSON_PY='
import json, sys
params_file, what, state = sys.argv[1], sys.argv[2], sys.argv[3]
with open(params_file) as f:
    p = json.load(f)
if what == "environment":
    out = {"environment": p["environment"], "wheel_dir": p["wheel_dir"], "python": sys.argv[4]}
elif what == "before_stop":
    out = dict(
        p["before_stop"],
        instance_id=p["instance_id"],
        config_file=state + "/jupyter_server_config.json",
        python=sys.argv[4],
        notebook_user=sys.argv[5],
        workdir=sys.argv[6],
    )
else:
    step = [sys.argv[4], state + "/before_stop.py", "run", state + "/before_stop.json"]
    out = {
        "instance_id": p["instance_id"],
        "config_file": state + "/jupyter_server_config.json",
        "status_file": state + "/idle-status.json",
        "pid_file": state + "/watchdog.pid",
        "idle_stop_minutes": p["idle_stop_minutes"],
        "command": p["idle_stop_command"],
        "before_stop": None if p["before_stop"]["action"] == "nothing" else step,
        "before_stop_timeout": p["before_stop"]["timeout"],
    }
sys.stdout.write(json.dumps(out, indent=1, sort_keys=True) + "\n")
'

CONFIG_PORT_PY='
import json, sys
try:
    with open(sys.argv[1]) as f:
        print(int(json.load(f)["ServerApp"]["port"]))
except Exception:
    print("")
'

FREE_PORT_PY='
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is fine
if len(sys.argv) > 1:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
else:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
s.close()
'

READY_PY='
import json, ssl, sys, time, urllib.error, urllib.request
config_file, timeout = sys.argv[1], float(sys.argv[2])
with open(config_file) as f:
    config = json.load(f)
app = config["ServerApp"]
token = config["IdentityProvider"]["token"]
port = int(app["port"])
handlers = [urllib.request.ProxyHandler({})]
scheme = "http"
if app.get("certfile"):
    scheme = "https"
    handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=app["certfile"])))
opener = urllib.request.build_opener(*handlers)
url = "%s://127.0.0.1:%d%sapi/status" % (scheme, port, app["base_url"])
def get(with_token):
    request = urllib.request.Request(url)
    if with_token:
        request.add_header("Authorization", "token " + token)
    try:
        with opener.open(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
deadline = time.monotonic() + timeout
last = "no answer"
while True:
    try:
        status, body = get(True)
        if status == 200 and b"started" in body:
            break
        last = "HTTP %d" % status
    except Exception as err:
        last = str(err)
    if time.monotonic() > deadline:
        print("error: the Jupyter server did not answer on 127.0.0.1:%d within %d s (%s)" % (port, timeout, last))
        sys.exit(1)
    time.sleep(0.05)
status, _ = get(False)
if status not in (401, 403):
    print("error: the Jupyter server answered without the token (HTTP %d)" % status)
    sys.exit(1)
print("the Jupyter server answers on 127.0.0.1:%d with the token and refuses requests without it" % port)
'

# Who holds LOCKFILE...: "PID (COMMAND)" per holder, from /proc/locks (nothing is locked here).
LOCK_HOLDERS_PY='
import os, sys
wanted = {}
for path in sys.argv[1:]:
    try:
        st = os.stat(path)
    except OSError:
        continue
    wanted[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = path
holders = []
with open("/proc/locks") as f:
    for line in f:
        words = line.split()
        if "->" in words:
            continue  # a waiter, not a holder
        for i, word in enumerate(words):
            if word.count(":") == 2 and i > 0:
                major, minor, inode = word.split(":")
                try:
                    key = (int(major, 16), int(minor, 16), int(inode))
                except ValueError:
                    break
                if key in wanted:
                    pid = words[i - 1]
                    try:
                        with open("/proc/%s/cmdline" % pid, "rb") as c:
                            command = c.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                    except OSError:
                        command = "?"
                    holders.append("%s holds %s: pid %s (%s)" % ("a process", wanted[key], pid, command[:200]))
                break
print("\n".join(sorted(set(holders))))
'

# Installs pip into a venv made with --without-pip (when python3 has no ensurepip): from a pip
# wheel in the wheel directory, or from the package index (its published SHA-256 checked).
BOOTSTRAP_PIP_PY='
import hashlib, json, os, re, subprocess, sys, urllib.parse, urllib.request
venv_python, wheel_dir, index_url, work = sys.argv[1:5]
name = re.compile(r"^pip-(\d+(?:\.\d+)*)-py3-none-any\.whl$")
def key(filename):
    return tuple(int(p) for p in name.match(filename).group(1).split("."))
def compatible(spec):
    # requires-python of pip releases: comma-separated >=, <, != clauses on X.Y[.Z].
    here = sys.version_info[:3]
    for clause in (spec or "").split(","):
        m = re.match(r"^\s*(>=|<=|<|>|!=|==)\s*(\d+(?:\.\d+)*)(?:\.\*)?\s*$", clause)
        if not m:
            continue
        want = tuple(int(p) for p in m.group(2).split("."))
        have = here[: len(want)]
        ok = {">=": have >= want, "<=": have <= want, "<": have < want, ">": have > want,
              "!=": have != want, "==": have == want}[m.group(1)]
        if not ok:
            return False
    return True
if wheel_dir:
    found = [f for f in os.listdir(wheel_dir) if name.match(f)]
    if not found:
        sys.exit("error: python3 has no ensurepip and the wheel directory %s holds no pip wheel (pip-*-py3-none-any.whl): add one" % wheel_dir)
    wheel = os.path.join(wheel_dir, max(found, key=key))
else:
    url = urllib.parse.urljoin(index_url, "pip/")
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        files = json.load(answer).get("files", [])
    choices = [f for f in files if name.match(f.get("filename", "")) and not f.get("yanked")
               and compatible(f.get("requires-python")) and f.get("hashes", {}).get("sha256")]
    if not choices:
        sys.exit("error: the package index %s offers no pip wheel for this Python" % index_url)
    best = max(choices, key=lambda f: key(f["filename"]))
    wheel = os.path.join(work, best["filename"])
    with urllib.request.urlopen(urllib.parse.urljoin(url, best["url"]), timeout=300) as answer:
        data = answer.read()
    if hashlib.sha256(data).hexdigest() != best["hashes"]["sha256"]:
        sys.exit("error: the pip wheel from %s does not match its published SHA-256" % index_url)
    with open(wheel, "wb") as f:
        f.write(data)
print("installing pip from " + wheel)
subprocess.check_call([venv_python, os.path.join(wheel, "pip"), "install", "--no-index",
    "--no-cache-dir", "--disable-pip-version-check", "--no-input", "--quiet", wheel])
'

SHA256_PY='
import hashlib, re, sys
path, sums = sys.argv[1], sys.argv[2]
digest = hashlib.sha256()
with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
with open(sums) as f:
    words = f.read().split()
published = words[0].lower() if words else ""
if not re.match(r"^[0-9a-f]{64}$", published):
    sys.exit("error: the published checksum file holds no SHA-256")
if digest.hexdigest() != published:
    sys.exit("error: the download has SHA-256 %s, but the published one is %s: refusing to run it" % (digest.hexdigest(), published))
print("SHA-256 checked: " + published)
'

# -- output and bookkeeping ------------------------------------------------------------------

CURRENT_STEP=start
STEP_CHANGED=0
FILE_CHANGED=0

die() {
  echo "error: $*"
  exit 1
}

step() {
  CURRENT_STEP=$1
  STEP_CHANGED=0
  echo "::step $1 $2"
}

changed() { STEP_CHANGED=1; }

step_done() {
  if ((STEP_CHANGED)); then
    echo "::done $CURRENT_STEP changed"
  else
    echo "::done $CURRENT_STEP unchanged"
  fi
}

on_exit() {
  local code=$?
  trap '' PIPE HUP INT TERM
  [[ -n ${WORK:-} ]] && rm -rf -- "$WORK"
  [[ -n ${UPLOADED_PARAMS:-} ]] && rm -f -- "$UPLOADED_PARAMS"
  if ((code != 0)); then echo "::fail $CURRENT_STEP $code" 2>/dev/null || true; fi
}

# A signal or a dropped connection (SIGPIPE on the next write) ends the run through on_exit.
on_signal() { exit $((128 + $1)); }

# install_file SRC DEST MODE UID:GID — put SRC's content at DEST atomically (DEST's directory
# must be root's); sets FILE_CHANGED and marks the step changed when anything differs.
install_file() {
  local src=$1 dest=$2 mode=$3 owner=$4 tmp
  [[ $owner == 0:0 ]] && owner=$ADMIN
  tmp=$(mktemp "${dest%/*}/.jupyter-ec2.XXXXXX")
  cat -- "$src" >"$tmp"
  chown -- "$owner" "$tmp"
  chmod -- "$mode" "$tmp"
  if [[ -f $dest && ! -L $dest ]] && cmp -s -- "$tmp" "$dest" &&
    [[ $(stat -c '%a %u %g' -- "$dest") == "$(stat -c '%a %u %g' -- "$tmp")" ]]; then
    rm -f -- "$tmp"
    FILE_CHANGED=0
  else
    mv -f -- "$tmp" "$dest"
    FILE_CHANGED=1
    changed
  fi
}

# alive PID — the process exists and is not a zombie.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*") "}
  [[ ${stat:0:1} != Z ]]
}

# trusted_pid PIDFILE — the PID in the file, if root may believe it: a regular file (no
# symlink) owned by root and writable by root only, in a directory only root can write. In user
# mode "root" is the user running this script (ADMIN), the only one who could signal anyway.
trusted_pid() {
  local file=$1 pid owner=${ADMIN%:*}
  [[ -f $file && ! -L $file ]] || return 1
  [[ $(stat -c '%u %a' -- "$file") =~ ^$owner\ [0-7][0-5][0-5]$ ]] || return 1
  [[ $(stat -c '%u %a' -- "${file%/*}") =~ ^$owner\ [0-7][0-5][0-5]$ ]] || return 1
  pid=$(head -c 20 -- "$file" 2>/dev/null | tr -dc 0-9) || return 1
  [[ -n $pid ]] || return 1
  echo "$pid"
}

# write_pid PIDFILE PID — a pid file only root can write (PIDFILE's directory is root's).
write_pid() {
  local tmp
  tmp=$(mktemp "${1%/*}/.jupyter-ec2-pid.XXXXXX")
  echo "$2" >"$tmp"
  chmod 0644 -- "$tmp"
  mv -f -- "$tmp" "$1"
}

# pid_alive PIDFILE [WORD] — the trusted PID in the file is alive and its command line names
# this instance (and WORD, when given).
pid_alive() {
  local pid cmdline
  pid=$(trusted_pid "$1") || return 1
  alive "$pid" || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$STATE"* && $cmdline == *"${2:-}"* ]]
}

# stop_pidfile PIDFILE [WORD] — end that process (TERM, then KILL of its process group after
# 15 s: the supervisor leads its own session, so its server goes with it).
stop_pidfile() {
  local pid i
  pid_alive "$1" "${2:-}" || return 0
  pid=$(trusted_pid "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    alive "$pid" || { rm -f -- "$1"; return 0; }
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f -- "$1"
}

# as_user CMD... — run CMD as the notebook user, in its home, with a clean environment.
as_user() {
  (cd "$NB_HOME" 2>/dev/null || cd /; exec "${AS_USER[@]}" "$@")
}

have_systemd() { [[ -z $USER_MODE && -d /run/systemd/system ]] && command -v systemctl >/dev/null; }

check_unit_word() {
  [[ $1 =~ ^/[A-Za-z0-9._+/-]+$ ]] || die "the path $1 cannot go into a systemd unit"
}

# -- the steps -------------------------------------------------------------------------------

# The cloud-init wait: bounded; "never ran" (no /var/lib/cloud/instance, or status "not run" /
# "disabled") is told from "still running"; problems it reports reach this log.
step_cloud_init() {
  step cloud-init 5
  local limit=${P[cloud_init_timeout]} status long rc=0
  if [[ $FAST == true ]] || ! command -v cloud-init >/dev/null; then
    step_done
    return
  fi
  status=$(cloud-init status 2>/dev/null | sed -n 's/^status: *//p' | head -n 1) || true
  if [[ ! -e /var/lib/cloud/instance || $status == "not run" || $status == disabled ]]; then
    echo "cloud-init never ran on this host (status: ${status:-unknown}); not waiting for it"
    step_done
    return
  fi
  if [[ $status == running ]]; then
    echo "waiting up to ${limit%.*} s for cloud-init to finish"
    timeout "${limit%.*}" cloud-init status --wait >/dev/null 2>&1 || rc=$?
    if ((rc == 124)); then
      cloud-init status --long 2>&1 | sed 's/^/cloud-init: /' || true
      die "cloud-init was still running after ${limit%.*} s; see /var/log/cloud-init-output.log on the instance"
    fi
  fi
  rc=0
  long=$(cloud-init status --long 2>&1) || rc=$?
  if ((rc != 0)) || [[ $long == *degraded* ]]; then
    echo "warning: cloud-init reported problems at boot (exit status $rc):"
    sed 's/^/cloud-init: /' <<<"$long"
  else
    echo "cloud-init is done"
  fi
  step_done
}

# Host key rotation, after the first connection verified the handed-over key: a new key made
# here, reported over this verified session, and used by sshd only once jupyter-ec2 answered
# that it pinned it (so no crash loses the key that then authenticates the instance). The
# handed-over key, readable through the metadata service, no longer authenticates this host.
step_host_key() {
  step host-key 8
  if [[ ${P[host_key.rotate]} != true ]]; then
    step_done
    return
  fi
  local key_file=${P[host_key.key_file]} pid_file=${P[host_key.sshd_pid_file]}
  local how="" pid unit public ack=""
  # How sshd will re-read its keys, settled before anything changes.
  if have_systemd; then
    for unit in ssh sshd; do
      if systemctl is-active --quiet -- "$unit.service"; then how=systemd:$unit; break; fi
    done
  fi
  if [[ -z $how ]]; then
    pid=$(trusted_pid "$pid_file") && alive "$pid" &&
      [[ $(readlink "/proc/$pid/exe") == */sshd ]] ||
      die "cannot rotate the host key: no ssh service runs and $pid_file names no running sshd (c.Provisioner.sshd_pid_file; or rotate_host_key = False)"
    how=pid:$pid
  fi
  [[ -f $key_file && ! -L $key_file && $(stat -c %u -- "${key_file%/*}") == "${ADMIN%:*}" ]] ||
    die "cannot rotate the host key: $key_file is not sshd's host key file (c.Provisioner.sshd_host_key_file)"
  command -v ssh-keygen >/dev/null || die "cannot rotate the host key: ssh-keygen is missing"
  ssh-keygen -q -t ed25519 -N "" -C "jupyter-ec2-$ID" -f "$WORK/host_key" </dev/null >/dev/null
  public=$(cut -d' ' -f1,2 <"$WORK/host_key.pub")
  echo "made a new host key on this host: $public"
  echo "::result host_key_next $public"
  read -r -t 60 ack || true
  [[ $ack == pinned ]] || die "jupyter-ec2 did not confirm that it pinned the new host key; nothing changed"
  install_file "$WORK/host_key" "$key_file" 0600 0:0
  install_file "$WORK/host_key.pub" "$key_file.pub" 0644 0:0
  case $how in
    systemd:*) systemctl reload -- "${how#systemd:}.service" ;;
    pid:*) kill -HUP "${how#pid:}" ;;
  esac
  echo "sshd now answers with the new host key; the handed-over one no longer works"
  echo "::result host_key $public"
  step_done
}

step_user() {
  step user 10
  if ! getent passwd "$NB_USER" >/dev/null; then
    echo "creating the user $NB_USER"
    useradd --create-home --shell /bin/bash --user-group -- "$NB_USER"
    # No password ("*": none can match), but not "!" (locked): sshd without PAM refuses locked
    # accounts even for key logins, and the managed key must log in as this user.
    usermod -p '*' -- "$NB_USER"
    changed
  fi
  NB_UID=$(id -u -- "$NB_USER")
  NB_GID=$(id -g -- "$NB_USER")
  NB_HOME=$(getent passwd "$NB_USER" | cut -d: -f6)
  [[ -d $NB_HOME ]] || die "the home directory of $NB_USER does not exist"
  if [[ $NB_UID == "$(id -u)" ]]; then
    AS_USER=(/usr/bin/env -i "HOME=$NB_HOME" "USER=$NB_USER" "LOGNAME=$NB_USER" SHELL=/bin/bash
      "PATH=$STD_PATH" LANG=C.UTF-8)
  else
    AS_USER=(setpriv "--reuid=$NB_UID" "--regid=$NB_GID" --init-groups
      /usr/bin/env -i "HOME=$NB_HOME" "USER=$NB_USER" "LOGNAME=$NB_USER" SHELL=/bin/bash
      "PATH=$STD_PATH" LANG=C.UTF-8)
  fi
  if [[ $NB_USER != "${P[login_user]}" && $NB_USER != root ]]; then
    # The managed key logs in as the notebook user too; no password is ever set.
    local keys=() i result
    for ((i = 0; i < ${P[authorized_keys.#]}; i++)); do keys+=("${P[authorized_keys.$i]}"); done
    result=$(as_user python3 -c "$ENSURE_KEYS_PY" "$NB_HOME/.ssh/authorized_keys" "${keys[@]}")
    [[ $result == unchanged ]] || changed
    local sudoers="/etc/sudoers.d/jupyter-ec2-$NB_USER"
    if [[ ${P[notebook_user_sudo]} == true ]]; then
      [[ -d /etc/sudoers.d ]] || die "sudo is not installed, so $NB_USER cannot be given sudo"
      printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$NB_USER" >"$WORK/sudoers"
      if command -v visudo >/dev/null; then visudo -cqf "$WORK/sudoers"; fi
      install_file "$WORK/sudoers" "$sudoers" 0440 0:0
    elif [[ -e $sudoers ]]; then
      rm -f -- "$sudoers"
      changed
    fi
  fi
  step_done
}

# -- GPU: an NVIDIA device needs its driver (a resize to a GPU type, or a GPU profile) --------
# Going back to a CPU type needs nothing: with no NVIDIA device the step only says so.

# nvidia_devices SYSFS — one line per NVIDIA display or 3D controller (PCI vendor 0x10de, class
# 0x03xx) under SYSFS/bus/pci/devices: "ADDRESS DRIVER", DRIVER "-" when none is bound.
nvidia_devices() {
  local sysfs=${1%/} dev vendor class driver
  for dev in "$sysfs"/bus/pci/devices/*; do
    [[ -r $dev/vendor && -r $dev/class ]] || continue
    vendor=$(<"$dev/vendor")
    class=$(<"$dev/class")
    [[ ${vendor,,} == 0x10de && ${class,,} == 0x03* ]] || continue
    driver=-
    if [[ -L $dev/driver ]]; then driver=$(basename -- "$(readlink -- "$dev/driver")"); fi
    echo "${dev##*/} $driver"
  done
}

# gpu_check SYSFS — "none" (no NVIDIA GPU), "loaded ADDRESS…" (the nvidia driver serves every
# one), or "missing ADDRESS…" (the devices no nvidia driver serves).
gpu_check() {
  local lines addr driver missing=() loaded=()
  lines=$(nvidia_devices "$1")
  if [[ -z $lines ]]; then
    echo none
    return
  fi
  while read -r addr driver; do
    if [[ $driver == nvidia ]]; then loaded+=("$addr"); else missing+=("$addr"); fi
  done <<<"$lines"
  if ((${#missing[@]})); then echo "missing ${missing[*]}"; else echo "loaded ${loaded[*]}"; fi
}

# nvidia_package — the newest NVIDIA server driver the host's apt offers, or nothing.
nvidia_package() {
  { apt-cache "${APT_DIR_ARGS[@]}" pkgnames nvidia-headless- 2>/dev/null || true; } |
    { grep -E '^nvidia-headless-[0-9]+-server$' || true; } | sort -t- -k3,3n | tail -n 1
}

GPU_IMAGE_HELP="launch from an image that has the NVIDIA driver, such as an AWS Deep Learning AMI (Deep Learning Base OSS Nvidia Driver GPU AMI, Ubuntu), as the profile's ami, or resize back to a CPU type"

step_gpu() {
  step gpu 15
  local verdict pkg=""
  verdict=$(gpu_check "${P[gpu.sysfs_root]}")
  case $verdict in
    none) echo "no NVIDIA GPU on this instance" ;;
    loaded*) echo "NVIDIA GPU with its driver loaded: ${verdict#loaded }" ;;
    *)
      echo "NVIDIA GPU without its driver: ${verdict#missing }"
      [[ -z $USER_MODE ]] ||
        die "this instance has an NVIDIA GPU but no NVIDIA driver, and without root none can be installed: $GPU_IMAGE_HELP"
      if command -v apt-get >/dev/null; then
        [[ $APT_ROOT == / ]] || APT_DIR_ARGS=(-o "Dir=$APT_ROOT")
        apt_wait $((SECONDS + APT_TIMEOUT))
        DEBIAN_FRONTEND=noninteractive apt-get "${APT_DIR_ARGS[@]}" -qq update || true
        pkg=$(nvidia_package)
      fi
      [[ -n $pkg ]] ||
        die "this instance has an NVIDIA GPU (${verdict#missing }) but no NVIDIA driver, and its image's apt offers none: $GPU_IMAGE_HELP"
      echo "installing the NVIDIA driver $pkg from the image's apt"
      apt_install "$pkg" "nvidia-utils-${pkg#nvidia-headless-}"
      modprobe nvidia 2>/dev/null ||
        die "the NVIDIA driver $pkg is installed but its module does not load yet: Stop and Start the instance, or $GPU_IMAGE_HELP"
      changed
      ;;
  esac
  step_done
}

# apt, only where nothing else works: wait (bounded) for apt's daily jobs and for the dpkg and
# apt locks, pass DPkg::Lock::Timeout, retry `apt-get update`, and name the lock holder when
# giving up. APT_ROOT relocates apt (its Dir) for chroots and tests; "/" is the host's own.
APT_DIR_ARGS=()
apt_locks() {
  local root=${APT_ROOT%/}
  printf '%s\n' "$root/var/lib/dpkg/lock-frontend" "$root/var/lib/dpkg/lock" \
    "$root/var/lib/apt/lists/lock" "$root/var/cache/apt/archives/lock"
}

apt_busy() {
  local locks=() holders unit
  mapfile -t locks < <(apt_locks)
  holders=$(python3 -c "$LOCK_HOLDERS_PY" "${locks[@]}")
  if [[ $APT_ROOT == / ]] && have_systemd; then
    for unit in apt-daily.service apt-daily-upgrade.service unattended-upgrades.service; do
      if [[ $(systemctl is-active -- "$unit" 2>/dev/null) == activating ]]; then
        holders+=${holders:+$'\n'}"$unit is running"
      fi
    done
  fi
  [[ -n $holders ]] && echo "$holders"
}

apt_wait() {
  local deadline=$1 holders="" said=0
  while holders=$(apt_busy); do
    if ((SECONDS >= deadline)); then
      die "apt stayed locked for ${APT_TIMEOUT} s: $(tr '\n' ';' <<<"$holders" | sed 's/;$//')"
    fi
    ((said)) || { echo "waiting for apt: $(head -n 1 <<<"$holders")"; said=1; }
    sleep 1
  done
}

apt_install() {
  local deadline=$((SECONDS + APT_TIMEOUT)) tries=0 left
  [[ $APT_ROOT == / ]] || APT_DIR_ARGS=(-o "Dir=$APT_ROOT")
  command -v apt-get >/dev/null || die "this host has no apt-get to install $*"
  apt_wait "$deadline"
  # `apt-get update` does not wait for its lock (apt 2.6): retry it until the deadline.
  until DEBIAN_FRONTEND=noninteractive apt-get "${APT_DIR_ARGS[@]}" -qq update; do
    tries=$((tries + 1))
    ((SECONDS < deadline)) || die "apt-get update kept failing (${tries} tries)$(apt_busy | sed 's/^/; /' | tr -d '\n')"
    sleep 5
    apt_wait "$deadline"
  done
  left=$((deadline - SECONDS))
  ((left > 10)) || left=10
  DEBIAN_FRONTEND=noninteractive apt-get "${APT_DIR_ARGS[@]}" -o "DPkg::Lock::Timeout=$left" \
    install -y -qq "$@" || die "apt-get install $* failed$(apt_busy | sed 's/^/; /' | tr -d '\n')"
}

# make_venv VENV — a virtual environment with pip, from the host's python3 ($BASE_PY). Without
# ensurepip (stock Debian and Ubuntu lack it: it is python3-venv), the venv is made without pip
# and pip comes as a wheel (the wheel directory, or the package index); apt is the last resort.
make_venv() {
  local venv=$1
  if [[ -x $venv/bin/python ]] && as_user "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  if as_user "$BASE_PY" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "creating a virtual environment with pip"
    as_user "$BASE_PY" -m venv -- "$venv"
    return 0
  fi
  echo "$BASE_PY has no ensurepip: creating the virtual environment without pip, then adding pip"
  if as_user "$BASE_PY" -m venv --without-pip -- "$venv" &&
    as_user "$BASE_PY" -c "$BOOTSTRAP_PIP_PY" "$venv/bin/python" "${P[wheel_dir]}" \
      "${P[index_url]}" "$ENV_DIR"; then
    return 0
  fi
  echo "could not add pip without apt; installing python3-venv with apt"
  apt_install python3-venv
  as_user "$BASE_PY" -m venv --clear -- "$venv"
}

install_pip_env() {
  local venv=$ENV_DIR/venv i packages=() source_args=() pip_env=()
  for ((i = 0; i < ${P[environment.packages.#]}; i++)); do
    packages+=("${P[environment.packages.$i]}")
  done
  if [[ -n ${P[wheel_dir]} ]]; then
    [[ -d ${P[wheel_dir]} ]] || die "the wheel directory ${P[wheel_dir]} does not exist"
    source_args=(--no-index --find-links "${P[wheel_dir]}")
    pip_env=(PIP_CONFIG_FILE=/dev/null)  # only that directory, whatever the host's pip.conf says
  fi
  as_user mkdir -p -m 0700 -- "$ENV_DIR"
  if command -v uv >/dev/null; then
    echo "creating a virtual environment with uv"
    [[ -x $venv/bin/python ]] || as_user env UV_PYTHON_DOWNLOADS=never uv venv --python "$BASE_PY" -- "$venv"
    as_user env UV_PYTHON_DOWNLOADS=never "${pip_env[@]}" uv pip install --python "$venv/bin/python" \
      "${source_args[@]}" -- "${packages[@]}"
  else
    make_venv "$venv"
    as_user env "${pip_env[@]}" "$venv/bin/python" -m pip install --disable-pip-version-check \
      --no-input --progress-bar off "${source_args[@]}" -- "${packages[@]}"
  fi
}

install_conda_env() {
  local prefix=$ENV_DIR/conda url i packages=()
  for ((i = 0; i < ${P[environment.packages.#]}; i++)); do
    packages+=("${P[environment.packages.$i]}")
  done
  as_user mkdir -p -m 0700 -- "$ENV_DIR"
  if [[ ! -x $prefix/bin/conda ]]; then
    url=${P[environment.installer_url]:-}
    [[ -n $url ]] || url="https://github.com/conda-forge/miniforge/releases/latest/download/Miniforge3-Linux-$(uname -m).sh"
    echo "downloading Miniforge from $url and its published SHA-256 ($url.sha256)"
    as_user curl -fsSL --retry 3 -o "$ENV_DIR/miniforge.sh" -- "$url"
    as_user curl -fsSL --retry 3 -o "$ENV_DIR/miniforge.sh.sha256" -- "$url.sha256" ||
      die "could not download $url.sha256, the installer's published checksum"
    python3 -c "$SHA256_PY" "$ENV_DIR/miniforge.sh" "$ENV_DIR/miniforge.sh.sha256" || {
      as_user rm -f -- "$ENV_DIR/miniforge.sh" "$ENV_DIR/miniforge.sh.sha256"
      die "the Miniforge installer from $url does not match its published SHA-256"
    }
    echo "installing Miniforge"
    if [[ -d $prefix ]]; then
      as_user bash "$ENV_DIR/miniforge.sh" -b -u -p "$prefix"
    else
      as_user bash "$ENV_DIR/miniforge.sh" -b -p "$prefix"
    fi
    as_user rm -f -- "$ENV_DIR/miniforge.sh" "$ENV_DIR/miniforge.sh.sha256"
  fi
  echo "installing packages with conda"
  as_user "$prefix/bin/conda" install --yes --quiet --prefix "$prefix" -c conda-forge -- "${packages[@]}"
}

# A disk copied from a saved image of another instance (P[image_source], issue 15): the units
# of that instance would start with its token and its idle stop, so they are retired and the
# files holding its token removed; no process of it survives the copy, so nothing else runs.
retire_image_source() {
  local src=${P[image_source]} unit reload=0
  [[ -n $src && $src != "$ID" ]] || return 0
  [[ $src =~ ^i-[0-9a-f]{8,17}$ ]] || die "bad image source"
  if have_systemd; then
    for unit in "jupyter-ec2-$src" "jupyter-ec2-$src-watchdog"; do
      if [[ -e /etc/systemd/system/$unit.service ]]; then
        systemctl disable --now --quiet -- "$unit" 2>/dev/null || true
        rm -f -- "/etc/systemd/system/$unit.service"
        echo "retired $unit, a service of the instance the image was saved from"
        reload=1
      fi
    done
    if ((reload)); then systemctl daemon-reload; fi
  fi
  rm -f -- "$STATE_ROOT/$src/jupyter_server_config.json" "$STATE_ROOT/$src/watchdog.json" \
    "$STATE_ROOT/$src/idle-status.json"
}

# Compares two environment markers (what was asked, where from), not the interpreter paths.
SAME_ENV_PY='
import json, sys
def load(path):
    with open(path) as f:
        data = json.load(f)
    return data.get("environment"), data.get("wheel_dir")
sys.exit(0 if load(sys.argv[1]) == load(sys.argv[2]) else 1)
'

# reuse_image_environment — the environment the image's source instance installed, when it is
# the one asked for: this instance's environment directory becomes a link to it (its files keep
# their paths, so nothing inside needs rewriting). Succeeds only when it linked.
reuse_image_environment() {
  local src=${P[image_source]} marker
  [[ -n $src && $src != "$ID" && $kind != existing ]] || return 1
  marker=$STATE_ROOT/$src/environment.json
  [[ -f $marker && -d $NB_HOME/.jupyter-ec2/$src && ! -e $ENV_DIR && ! -L $ENV_DIR ]] || return 1
  python3 -c "$SAME_ENV_PY" "$marker" "$WORK/environment.json" || return 1
  as_user ln -s -- "$src" "$ENV_DIR"
  if ! as_user "$PY" -c 'import jupyter_server' 2>/dev/null; then
    as_user rm -f -- "$ENV_DIR"
    echo "the environment saved in the image does not work here; installing a new one"
    return 1
  fi
  echo "the $kind environment is already on this disk (saved in the image of $src): reusing it"
}

step_environment() {
  step environment 20
  local kind=${P[environment.kind]} marker="$STATE/environment.json"
  ENV_DIR=$NB_HOME/.jupyter-ec2/$ID
  case $kind in
    existing) PY=${P[environment.python]} ;;
    pip) PY=$ENV_DIR/venv/bin/python ;;
    conda) PY=$ENV_DIR/conda/bin/python ;;
    *) die "unknown environment kind $kind" ;;
  esac
  python3 -c "$RENDER_JSON_PY" "$PARAMS" environment "$STATE" "$PY" >"$WORK/environment.json"
  retire_image_source
  local same=0 reused=0
  if [[ ! -f $marker ]] && reuse_image_environment; then reused=1; fi
  if [[ -f $marker ]] && cmp -s -- "$marker" "$WORK/environment.json" && [[ -x $PY ]]; then same=1; fi
  if ((reused)); then
    :
  elif [[ $kind == existing ]]; then
    [[ -e $PY ]] || die "the interpreter $PY does not exist on this host"
    if ((!same)) || [[ $FAST != true ]]; then
      as_user "$PY" -c 'import jupyter_server' ||
        die "the interpreter $PY cannot import jupyter_server: install jupyter_server and ipykernel into it, or use the pip or conda environment kind"
    fi
  elif ((!same)) || { [[ $FAST != true ]] && ! as_user "$PY" -c 'import jupyter_server' 2>/dev/null; }; then
    echo "installing the $kind environment"
    if [[ $kind == pip ]]; then install_pip_env; else install_conda_env; fi
    as_user "$PY" -c 'import jupyter_server' ||
      die "the new $kind environment cannot import jupyter_server"
  fi
  install_file "$WORK/environment.json" "$marker" 0644 0:0
  # A reused environment is the image's work: the step reports it as already done.
  if ((reused)); then STEP_CHANGED=0; fi
  ENV_CHANGED=$STEP_CHANGED
  step_done
}

step_notebooks() {
  step notebooks 60
  if [[ ! -d $NB_HOME/notebooks ]]; then
    as_user mkdir -p -- "$NB_HOME/notebooks"
    changed
  fi
  # jupyter-collaboration's file id store (before_stop = save-notebooks) is a SQLite file in
  # the Jupyter data dir, which SQLite does not create: the server fails without it.
  if [[ ! -d $NB_HOME/.local/share/jupyter ]]; then
    as_user mkdir -p -- "$NB_HOME/.local/share/jupyter"
    changed
  fi
  step_done
}

step_tls() {
  step tls 65
  local dir=$STATE/tls
  TLS_FINGERPRINT=""
  if [[ ${P[tls]} == true ]]; then
    if [[ ! -f $dir/cert.pem || ! -f $dir/key.pem ]] ||
      ! openssl x509 -checkend 604800 -noout -in "$dir/cert.pem" >/dev/null 2>&1; then
      echo "making a self-signed certificate for 127.0.0.1 and localhost"
      install -d -m 0755 -o "${ADMIN%:*}" -g "${ADMIN#*:}" -- "$dir"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
        -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>&1
      install_file "$WORK/key.pem" "$dir/key.pem" 0600 "$NB_UID:$NB_GID"
      install_file "$WORK/cert.pem" "$dir/cert.pem" 0644 0:0
    fi
    chown -- "$NB_UID:$NB_GID" "$dir/key.pem"
    TLS_FINGERPRINT=$(openssl x509 -noout -fingerprint -sha256 -in "$dir/cert.pem" | cut -d= -f2)
    echo "::result tls_fingerprint $TLS_FINGERPRINT"
  elif [[ -e $dir ]]; then
    rm -rf -- "$dir"
    changed
  fi
  TLS_CHANGED=$STEP_CHANGED
  step_done
}

step_config() {
  step config 70
  local port=${P[port]}
  if [[ $port == 0 ]]; then
    # Keep the port of an earlier run unless something else took it meanwhile.
    port=$(python3 -c "$CONFIG_PORT_PY" "$CONFIG")
    if [[ -n $port ]] && ! server_running && ! python3 -c "$FREE_PORT_PY" "$port"; then port=""; fi
    [[ -n $port ]] || port=$(python3 -c "$FREE_PORT_PY")
  fi
  PORT=$port
  python3 -c "$RENDER_CONFIG_PY" "$PARAMS" "$PORT" "$NB_HOME" >"$WORK/config.json"
  install_file "$WORK/config.json" "$CONFIG" 0600 "$NB_UID:$NB_GID"
  CONFIG_CHANGED=$STEP_CHANGED
  step_done
}

server_running() {
  if have_systemd; then
    systemctl is-active --quiet -- "$SERVICE"
  else
    pid_alive "$SUPERVISOR_PID" --supervise
  fi
}

start_supervisor() {
  rm -f -- "$SUPERVISOR_PID" "$RUN/server.pid"
  (
    cd "$NB_HOME" 2>/dev/null || cd /
    exec setsid "${AS_USER[@]}" /bin/bash "$STATE/setup.sh" --supervise "$STATE" "$PY"
  ) </dev/null >/dev/null 2>&1 &
  # Root writes the pid file (setsid does not fork here: the subshell leads no group).
  write_pid "$SUPERVISOR_PID" "$!"
  local i
  for ((i = 0; i < 100; i++)); do
    pid_alive "$SUPERVISOR_PID" --supervise && return 0
    sleep 0.05
  done
  die "the supervisor did not start"
}

# Install a systemd unit file and enable the unit; UNIT_CHANGED=1 when the file changed (the
# caller then restarts the service).
install_unit() {
  local src=$1 name=$2
  install_file "$src" "/etc/systemd/system/$name.service" 0644 0:0
  UNIT_CHANGED=$FILE_CHANGED
  if ((UNIT_CHANGED)); then systemctl daemon-reload; fi
  if ! systemctl is-enabled --quiet -- "$name"; then
    systemctl enable --quiet -- "$name"
    changed
  fi
}

step_service() {
  step service 80
  local restart=0
  if ((ENV_CHANGED || TLS_CHANGED || CONFIG_CHANGED)); then restart=1; fi
  install -d -m 0700 -o "$NB_UID" -g "$NB_GID" -- "$RUN"
  if [[ $(stat -c '%u' -- "$RUN") != "$NB_UID" ]]; then chown -- "$NB_UID:$NB_GID" "$RUN"; fi
  if have_systemd; then
    check_unit_word "$PY"
    check_unit_word "$NB_HOME"
    cat >"$WORK/unit" <<EOF
# Written by jupyter-ec2 for instance $ID.
[Unit]
Description=Jupyter server of jupyter-ec2 instance $ID
After=network.target

[Service]
Type=simple
User=$NB_UID
Group=$NB_GID
WorkingDirectory=$NB_HOME
Environment=JUPYTER_RUNTIME_DIR=$RUN/runtime
ExecStart=$PY -m jupyter_server --config=$CONFIG
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
    install_unit "$WORK/unit" "$SERVICE"
    ((UNIT_CHANGED)) && restart=1
    if ((restart)) && systemctl is-active --quiet -- "$SERVICE"; then
      echo "restarting the Jupyter server"
      systemctl restart -- "$SERVICE"
      changed
    elif ! systemctl is-active --quiet -- "$SERVICE"; then
      echo "starting the Jupyter server"
      systemctl start -- "$SERVICE"
      changed
    fi
  else
    # No systemd: a supervisor loop (this script) keeps the server running. A new copy of the
    # script alone does not restart a running supervisor (that would end the user's kernels):
    # the running one keeps the old file's inode, the next start uses the new one.
    install_file "$0" "$STATE/setup.sh" 0755 0:0
    if pid_alive "$SUPERVISOR_PID" --supervise && ((restart)); then
      echo "restarting the Jupyter server"
      stop_pidfile "$SUPERVISOR_PID" --supervise
    fi
    if ! pid_alive "$SUPERVISOR_PID" --supervise; then
      echo "starting the Jupyter server under a supervisor"
      start_supervisor
      changed
    fi
  fi
  step_done
}

step_ready() {
  step ready 90
  if ! python3 -c "$READY_PY" "$CONFIG" "${P[ready_timeout]}"; then
    echo "the last lines of the server's log:"
    if have_systemd; then
      journalctl -u "$SERVICE" -n 30 --no-pager 2>/dev/null || true
    else
      as_user tail -n 30 -- "$RUN/server.log" 2>/dev/null || true
    fi
    exit 1
  fi
  echo "::result port $PORT"
  step_done
}

watchdog_running() {
  if have_systemd; then
    systemctl is-active --quiet -- "$WATCHDOG"
  else
    pid_alive "$STATE/watchdog.pid"
  fi
}

stop_watchdog() {
  if have_systemd; then
    if systemctl is-enabled --quiet -- "$WATCHDOG" 2>/dev/null || watchdog_running; then
      systemctl disable --now --quiet -- "$WATCHDOG" || true
      changed
    fi
  elif pid_alive "$STATE/watchdog.pid"; then
    stop_pidfile "$STATE/watchdog.pid"
    changed
  fi
}

# The before-stop step (before_stop.py) and its settings, run before every stop: by the
# watchdog before its stop command, and by the extension over SSH before Stop and Terminate.
install_before_stop() {
  install_file "$SCRIPT_DIR/before_stop.py" "$STATE/before_stop.py" 0644 0:0
  python3 -c "$RENDER_JSON_PY" "$PARAMS" before_stop "$STATE" "$PY" "$NB_USER" \
    "$NB_HOME/notebooks" >"$WORK/before_stop.json"
  install_file "$WORK/before_stop.json" "$STATE/before_stop.json" 0600 0:0
  printf '#!/bin/sh\n# Written by jupyter-ec2: the before-stop step of %s.\nexec %q %q run %q\n' \
    "$ID" "$BASE_PY" "$STATE/before_stop.py" "$STATE/before_stop.json" >"$WORK/before-stop"
  install_file "$WORK/before-stop" "$STATE/before-stop" 0755 0:0
}

step_watchdog() {
  step watchdog 95
  local minutes=${P[idle_stop_minutes]} system_python
  system_python=$BASE_PY
  install_before_stop
  if [[ $minutes =~ ^0(\.0*)?$ ]]; then
    echo "idle auto-stop is off"
    stop_watchdog
    if [[ -e $STATE/idle-status.json ]]; then
      rm -f -- "$STATE/idle-status.json"
      changed
    fi
    step_done
    return
  fi
  local restart=0
  # The watchdog runs on this host's python3: refuse one too old for it, saying so.
  "$system_python" "$SCRIPT_DIR/watchdog.py" --check || exit 1
  install_file "$SCRIPT_DIR/watchdog.py" "$STATE/watchdog.py" 0644 0:0
  ((FILE_CHANGED)) && restart=1
  python3 -c "$RENDER_JSON_PY" "$PARAMS" watchdog "$STATE" "$system_python" >"$WORK/watchdog.json"
  install_file "$WORK/watchdog.json" "$STATE/watchdog.json" 0600 0:0
  ((FILE_CHANGED)) && restart=1
  if have_systemd; then
    check_unit_word "$system_python"
    cat >"$WORK/watchdog-unit" <<EOF
# Written by jupyter-ec2 for instance $ID.
[Unit]
Description=Idle auto-stop of jupyter-ec2 instance $ID
After=$SERVICE.service

[Service]
Type=simple
ExecStart=$system_python $STATE/watchdog.py $STATE/watchdog.json
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
    install_unit "$WORK/watchdog-unit" "$WATCHDOG"
    ((UNIT_CHANGED)) && restart=1
    if ((restart)) && watchdog_running; then
      systemctl restart -- "$WATCHDOG"
      changed
    elif ! watchdog_running; then
      systemctl start -- "$WATCHDOG"
      changed
    fi
  else
    if ((restart)) && pid_alive "$STATE/watchdog.pid"; then stop_pidfile "$STATE/watchdog.pid"; fi
    if ! pid_alive "$STATE/watchdog.pid"; then
      echo "starting the idle watchdog ($minutes min)"
      rm -f -- "$STATE/watchdog.pid"
      (
        cd /
        exec setsid /usr/bin/env -i "PATH=$STD_PATH" LANG=C.UTF-8 HOME=/root \
          "$system_python" "$STATE/watchdog.py" "$STATE/watchdog.json"
      ) </dev/null >>"$STATE/watchdog.log" 2>&1 &
      local i
      for ((i = 0; i < 100; i++)); do
        pid_alive "$STATE/watchdog.pid" && break
        sleep 0.05
      done
      pid_alive "$STATE/watchdog.pid" || die "the idle watchdog did not start"
      changed
    fi
  fi
  step_done
}

provision() {
  UPLOADED_PARAMS=$1
  trap on_exit EXIT
  trap 'on_signal 1' HUP
  trap 'on_signal 2' INT
  trap 'on_signal 13' PIPE
  trap 'on_signal 15' TERM
  SCRIPT_DIR=$(cd "$(dirname -- "$0")" && pwd)
  WORK=$(mktemp -d /tmp/jupyter-ec2-work.XXXXXXXX)
  # Our own copy (root's, 0600, in WORK), and the uploaded file (it holds the token) goes now.
  PARAMS=$WORK/params.json
  cat -- "$UPLOADED_PARAMS" >"$PARAMS"
  rm -f -- "$UPLOADED_PARAMS"
  UPLOADED_PARAMS=""
  cd /
  load_params "$PARAMS"

  # The parameters were validated before upload; check the ones that name paths once more.
  ID=${P[instance_id]}
  NB_USER=${P[notebook_user]}
  [[ $ID =~ ^i-[0-9a-f]{8,17}$ ]] || die "bad instance id"
  [[ $NB_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "bad user name"
  STATE=$STATE_ROOT/$ID
  [[ ${P[state_dir]} == "$STATE" ]] || die "bad state directory"
  if [[ $(id -u) != 0 ]]; then
    [[ $NB_USER == "$(id -un)" ]] ||
      die "setup.sh must run as root (the login user needs passwordless sudo), or as the notebook user $NB_USER itself"
    USER_MODE=1
    ADMIN=$(id -u):$(id -g)
    STATE_ROOT=$(getent passwd "$NB_USER" | cut -d: -f6)/.local/state/jupyter-ec2
    STATE=$STATE_ROOT/$ID
    echo "running without root as $NB_USER: state in $STATE, no system services"
  fi
  SERVICE=jupyter-ec2-$ID
  WATCHDOG=jupyter-ec2-$ID-watchdog
  CONFIG=$STATE/jupyter_server_config.json
  RUN=$STATE/run
  SUPERVISOR_PID=$STATE/supervisor.pid
  FAST=${P[fast]}
  BASE_PY=${P[base_python]}
  [[ $BASE_PY == /* ]] || BASE_PY=$(command -v -- "$BASE_PY") || die "this host has no ${P[base_python]}"
  APT_ROOT=${P[apt.root]}
  APT_TIMEOUT=${P[apt.timeout]%.*}
  install -d -m 0755 -o "${ADMIN%:*}" -g "${ADMIN#*:}" -- "$STATE_ROOT" "$STATE"
  # Uploads of this instance that an interrupted run left behind (a run deletes its own at once).
  find /tmp -maxdepth 1 -type d -name "jupyter-ec2-$ID-*" -mmin +1 \
    -exec rm -f -- '{}/params.json' \; 2>/dev/null || true

  step_cloud_init
  step_host_key
  exec </dev/null  # nothing after this reads the session's input
  step_user
  step_gpu
  step_environment
  step_notebooks
  step_tls
  step_config
  step_service
  step_ready
  step_watchdog
  echo "::end"
}

# -- the supervisor (no systemd): runs as the notebook user ------------------------------------

supervise() {
  local state=$1 py=$2 run=$1/run child="" stopping=0 fails=0 started delay
  [[ -d $run ]] || exit 1
  exec </dev/null >>"$run/server.log" 2>&1
  export JUPYTER_RUNTIME_DIR=$run/runtime
  mkdir -p -m 0700 -- "$JUPYTER_RUNTIME_DIR"
  trap 'stopping=1; if [[ -n $child ]]; then kill -TERM "$child" 2>/dev/null || true; fi' TERM INT HUP
  while ((!stopping)); do
    started=$SECONDS
    echo "jupyter-ec2 supervisor: starting the Jupyter server"
    "$py" -m jupyter_server "--config=$state/jupyter_server_config.json" &
    child=$!
    echo "$child" >"$run/server.pid"
    # `wait` returns early when a signal arrives: wait until the server is really gone.
    while alive "$child"; do wait "$child" || true; done
    wait "$child" 2>/dev/null || true
    child=""
    ((stopping)) && break
    if ((SECONDS - started < 30)); then fails=$((fails + 1)); else fails=0; fi
    delay=$((fails > 5 ? 30 : fails))
    echo "jupyter-ec2 supervisor: the server exited; restarting in $delay s"
    sleep "$delay" &
    wait $! || true
  done
  rm -f -- "$run/server.pid"
}

case ${1:-} in
  --print-params)
    [[ $# == 2 ]] || die "usage: setup.sh --print-params PARAMS.json"
    print_params "$2"
    ;;
  --supervise)
    [[ $# == 3 ]] || die "usage: setup.sh --supervise STATE_DIR PYTHON"
    supervise "$2" "$3"
    ;;
  --verify-sha256)
    [[ $# == 3 ]] || die "usage: setup.sh --verify-sha256 FILE SUMS"
    python3 -c "$SHA256_PY" "$2" "$3"
    ;;
  --gpu-check)
    [[ $# == 2 ]] || die "usage: setup.sh --gpu-check SYSFS_ROOT"
    gpu_check "$2"
    ;;
  -* | "")
    die "usage: setup.sh PARAMS.json"
    ;;
  *)
    [[ $# == 1 ]] || die "usage: setup.sh PARAMS.json"
    exec 2>&1
    provision "$1"
    ;;
esac

#!/bin/bash
# jupyter-ec2: run Dask's own scheduler or worker on this host as a systemd service, idempotently.
#
# Shipped in the jupyter_ec2 package, uploaded with a JSON parameter file and run as root (through
# sudo when the login user is not root), after setup.sh has provisioned the same host:
#
#   dask.sh PARAMS.json
#
# role "scheduler" (the notebook instance): `python -m dask scheduler` bound to the instance's
# private address, its dashboard on the instance's loopback under the proxy's path, and
# DASK_SCHEDULER_ADDRESS given to the Jupyter server (a systemd drop-in), so the kernels' Client()
# connects. role "worker": `python -m dask worker` pointed at that scheduler, bound to the
# worker's private address, ready once the scheduler has registered it.
#
# Output markers are setup.sh's: ::step NAME PERCENT, ::done NAME changed|unchanged,
# ::result KEY VALUE, ::end. Values come from the parameter file as data, never as shell code.

set -euo pipefail
umask 077

STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [[ -z ${JEC2_CLEAN_ENV:-} ]]; then
  exec /usr/bin/env -i JEC2_CLEAN_ENV=1 PATH="$STD_PATH" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
    HOME="${HOME:-/}" /bin/bash "$0" "$@"
fi

# Prints key NUL value NUL for each top-level field (every value is a string, number or bool).
FLAT_PY='
import json, sys
with open(sys.argv[1], "rb") as f:
    data = json.load(f)
if not isinstance(data, dict) or data.get("version") != 1:
    sys.exit("error: unsupported parameter file version")
out = sys.stdout.buffer
for key in sorted(data):
    value = data[key]
    value = ("true" if value else "false") if isinstance(value, bool) else "" if value is None else str(value)
    if "\0" in value:
        sys.exit("error: a parameter holds a NUL character")
    out.write(key.encode() + b"\0" + value.encode() + b"\0")
out.write(b"::end\0\0")
'

# Waits until HOST:PORT accepts a TCP connection.
WAIT_PORT_PY='
import socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        socket.create_connection((host, port), timeout=2).close()
        break
    except OSError as err:
        if time.monotonic() > deadline:
            print("error: nothing answers on %s:%d after %d s (%s)" % (host, port, timeout, err))
            sys.exit(1)
        time.sleep(0.2)
'

CURRENT_STEP=start
STEP_CHANGED=0
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
  if ((STEP_CHANGED)); then echo "::done $CURRENT_STEP changed"; else echo "::done $CURRENT_STEP unchanged"; fi
}
check_word() {
  [[ $1 =~ ^[A-Za-z0-9._+/:=-]+$ ]] || die "the value $1 cannot go into a systemd unit"
}

declare -A P=()
load_params() {
  local key value complete=""
  while IFS= read -r -d '' key && IFS= read -r -d '' value; do
    if [[ $key == "::end" ]]; then complete=1; break; fi
    P["$key"]=$value
  done < <(python3 -c "$FLAT_PY" "$1")
  [[ -n $complete ]] || die "could not read the parameter file"
}

# install_unit SRC PATH — put SRC at PATH (root's, 0644); FILE_CHANGED=1 when it differed.
install_unit() {
  FILE_CHANGED=0
  if [[ -f $2 ]] && cmp -s -- "$1" "$2"; then return; fi
  install -D -m 0644 -o 0 -g 0 -- "$1" "$2"
  FILE_CHANGED=1
  changed
}

as_user() {
  (cd "$NB_HOME" 2>/dev/null || cd /; exec setpriv "--reuid=$NB_UID" "--regid=$NB_GID" --init-groups \
    /usr/bin/env -i "HOME=$NB_HOME" "USER=$NB_USER" "LOGNAME=$NB_USER" "PATH=$STD_PATH" LANG=C.UTF-8 "$@")
}

step_install() {
  step dask-install 10
  if ! as_user "$PY" -c 'import distributed, bokeh' 2>/dev/null; then
    [[ ${P[environment_kind]} != existing ]] ||
      die "the interpreter $PY cannot import distributed and bokeh: install them into it, or use the pip or conda environment kind"
    echo "installing distributed and bokeh into the environment"
    local args=(install --quiet --disable-pip-version-check)
    if [[ -n ${P[wheel_dir]} ]]; then args+=(--no-index --find-links "${P[wheel_dir]}"); fi
    as_user "$PY" -m pip "${args[@]}" distributed bokeh 2>&1
    as_user "$PY" -c 'import distributed, bokeh' || die "distributed did not install into $PY"
    changed
  fi
  step_done
}

step_service() {
  step dask-service 40
  local unit=jupyter-ec2-$ID-dask-${P[role]} work
  work=$(mktemp -d /tmp/jupyter-ec2-dask.XXXXXXXX)
  # shellcheck disable=SC2064 # expand now: the directory of this run
  trap "rm -rf -- '$work'" EXIT
  local exec_start
  if [[ ${P[role]} == scheduler ]]; then
    local prefix=${P[dashboard_prefix]}
    [[ $prefix =~ ^/[A-Za-z0-9._~%/+-]*$ ]] || die "the dashboard path $prefix cannot go into a systemd unit"
    prefix=${prefix//%/%%} # systemd reads % as a specifier: a base_url such as /a%40b/ needs %%
    exec_start="$PY -m dask scheduler --host $HOST --port ${P[scheduler_port]} --dashboard-address 127.0.0.1:${P[dashboard_port]} --dashboard-prefix $prefix"
  else
    check_word "${P[scheduler_address]}"
    exec_start="$PY -m dask worker ${P[scheduler_address]} --host $HOST --name $ID --no-dashboard --local-directory $NB_HOME/.jupyter-ec2/$ID/dask"
    if [[ ${P[nthreads]} != 0 ]]; then exec_start+=" --nthreads ${P[nthreads]}"; fi
    as_user mkdir -p -- "$NB_HOME/.jupyter-ec2/$ID/dask"
  fi
  cat >"$work/unit" <<EOF
# Written by jupyter-ec2 for instance $ID: Dask's own ${P[role]}.
[Unit]
Description=Dask ${P[role]} of jupyter-ec2 instance $ID
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$NB_UID
Group=$NB_GID
WorkingDirectory=$NB_HOME
ExecStart=$exec_start
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
  install_unit "$work/unit" "/etc/systemd/system/$unit.service"
  local restart=$FILE_CHANGED
  ((FILE_CHANGED)) && systemctl daemon-reload
  if ! systemctl is-enabled --quiet -- "$unit"; then systemctl enable --quiet -- "$unit"; changed; fi
  if ((restart)) && systemctl is-active --quiet -- "$unit"; then
    echo "restarting the Dask ${P[role]}"
    systemctl restart -- "$unit"
  elif ! systemctl is-active --quiet -- "$unit"; then
    echo "starting the Dask ${P[role]}"
    systemctl start -- "$unit"
    changed
  fi
  if [[ ${P[role]} == scheduler ]]; then
    # The remote Jupyter server's kernels inherit DASK_SCHEDULER_ADDRESS: Client() connects.
    local server=${P[jupyter_service]}
    cat >"$work/dropin" <<EOF
# Written by jupyter-ec2: the Dask scheduler of this instance, for Client() in the kernels.
[Service]
Environment=DASK_SCHEDULER_ADDRESS=tcp://$HOST:${P[scheduler_port]}
EOF
    install_unit "$work/dropin" "/etc/systemd/system/$server.service.d/jupyter-ec2-dask.conf"
    if ((FILE_CHANGED)); then
      systemctl daemon-reload
      if systemctl is-active --quiet -- "$server"; then
        echo "restarting the Jupyter server so that its kernels know the scheduler"
        systemctl restart -- "$server"
      fi
    fi
  fi
  UNIT=$unit
  step_done
}

step_ready() {
  step dask-ready 70
  local timeout=${P[ready_timeout]%.*}
  if [[ ${P[role]} == scheduler ]]; then
    python3 -c "$WAIT_PORT_PY" "$HOST" "${P[scheduler_port]}" "$timeout" ||
      { journalctl -u "$UNIT" -n 30 --no-pager 2>/dev/null || true; exit 1; }
    python3 -c "$WAIT_PORT_PY" 127.0.0.1 "${P[dashboard_port]}" "$timeout" || exit 1
    if [[ -n ${P[jupyter_port]} && ${P[jupyter_port]} != 0 ]]; then
      python3 -c "$WAIT_PORT_PY" 127.0.0.1 "${P[jupyter_port]}" "$timeout" || exit 1
    fi
    echo "::result scheduler tcp://$HOST:${P[scheduler_port]}"
  else
    # Registered: the worker says so in its log once the scheduler accepted it.
    local since deadline=$((SECONDS + timeout))
    since=$(systemctl show -p ActiveEnterTimestamp --value -- "$UNIT")
    until journalctl -u "$UNIT" --since "$since" --no-pager -o cat 2>/dev/null | grep -q "Registered to"; do
      if ((SECONDS > deadline)); then
        journalctl -u "$UNIT" -n 30 --no-pager 2>/dev/null || true
        die "the Dask worker did not register with ${P[scheduler_address]} in $timeout s"
      fi
      sleep 0.3
    done
    echo "registered with ${P[scheduler_address]}"
  fi
  step_done
}

main() {
  local uploaded=$1 params
  params=$(mktemp /tmp/jupyter-ec2-dask-params.XXXXXXXX)
  cat -- "$uploaded" >"$params"
  rm -f -- "$uploaded"
  load_params "$params"
  rm -f -- "$params"
  ID=${P[instance_id]}
  NB_USER=${P[notebook_user]}
  HOST=${P[host]}
  [[ $ID =~ ^i-[0-9a-f]{8,17}$ ]] || die "bad instance id"
  [[ $NB_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "bad user name"
  [[ ${P[role]} == scheduler || ${P[role]} == worker ]] || die "bad role"
  [[ $HOST =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "bad private address $HOST"
  [[ $(id -u) == 0 ]] || die "dask.sh must run as root (the login user needs passwordless sudo)"
  [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null ||
    die "Dask workers need systemd on the instance"
  NB_UID=$(id -u -- "$NB_USER") || die "the notebook user $NB_USER does not exist: provision first"
  NB_GID=$(id -g -- "$NB_USER")
  NB_HOME=$(getent passwd "$NB_USER" | cut -d: -f6)
  case ${P[environment_kind]} in
    existing) PY=${P[python]} ;;
    pip) PY=$NB_HOME/.jupyter-ec2/$ID/venv/bin/python ;;
    conda) PY=$NB_HOME/.jupyter-ec2/$ID/conda/bin/python ;;
    *) die "unknown environment kind" ;;
  esac
  [[ -x $PY ]] || die "the environment's interpreter $PY is missing: provision first"
  check_word "$PY"
  check_word "$NB_HOME"
  exec </dev/null
  step_install
  step_service
  step_ready
  echo "::end"
}

[[ $# == 1 && $1 != -* ]] || die "usage: dask.sh PARAMS.json"
exec 2>&1
main "$1"

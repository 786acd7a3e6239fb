#!/bin/bash
# Builds the Debian 12 root of the container-kind instance hosts (jupyter_ec2.testing.containers).
#
#   build-root.sh OUT_DIR
#
# OUT_DIR/root   a cloud-style Debian 12 root (cloud-init with NoCloud, login user `admin` with
#                passwordless sudo, stock python3 without pip/ensurepip/venv, no baked host keys,
#                apt's daily job holding the dpkg lock for ~20 s after first boot), used read-only
#                as the lower layer of each instance's disk.
# OUT_DIR/apt    a flat apt repository of what setup.sh may install (python3-venv, python3-pip and
#                the dependencies the root lacks), served to the containers by the harness.
# Everything comes from Debian's registry (the mirror of /etc/apt/sources.list.d/debian.sources).
# The Makefile reruns this when a recipe file changes (its stamp is their hash).
set -euo pipefail
OUT=${1:?usage: build-root.sh OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
[[ $(id -u) == 0 ]] || { echo "build-root.sh must run as root (debootstrap, chroot)" >&2; exit 1; }

MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
INCLUDE=systemd-sysv,udev,dbus,cloud-init,openssh-server,sudo,python3,python3-cffi-backend,ifupdown,iproute2,procps,ca-certificates,netbase

TMP="$OUT.tmp.$$"
trap 'rm -rf -- "$TMP"' EXIT
rm -rf -- "$TMP" && mkdir -p "$TMP"
ROOT=$TMP/root

echo "debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT" "$MIRROR" >"$TMP/debootstrap.log" 2>&1 ||
  { tail -30 "$TMP/debootstrap.log" >&2; exit 1; }

# -- the packages setup.sh may need, resolved against this very root ---------------------------
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOT/etc/apt/sources.list"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" apt-get update -qq
chroot "$ROOT" apt-get clean
DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -qq --download-only --no-install-recommends \
  python3-venv python3-pip >/dev/null
mkdir -p "$TMP/apt"
mv "$ROOT"/var/cache/apt/archives/*.deb "$TMP/apt/"
(
  cd "$TMP/apt"
  dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null
  gzip -9kn Packages
  {
    printf 'Origin: jupyter-ec2-sim\nLabel: jupyter-ec2-sim\nSuite: local\nCodename: local\n'
    printf 'Date: %s\nSHA256:\n' "$(date -Ru)"
    for f in Packages Packages.gz; do
      printf ' %s %s %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c%s "$f")" "$f"
    done
  } >Release
)
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/*
: >"$ROOT/etc/resolv.conf"
# The harness writes the address of its own mirrors per instance (sources.list.d, pip.conf).
: >"$ROOT/etc/apt/sources.list"

# -- cloud-init ---------------------------------------------------------------------------------
install -m 0644 "$HERE/99-jupyter-ec2-sim.cfg" "$ROOT/etc/cloud/cloud.cfg.d/99-jupyter-ec2-sim.cfg"
chroot "$ROOT" systemctl enable cloud-init-local.service cloud-init.service cloud-config.service \
  cloud-final.service >/dev/null 2>&1
[[ -e $ROOT/etc/cloud/cloud.cfg.dpkg-new ]] && { echo "cloud-init is not configured in the root" >&2; exit 1; }

# -- apt's daily job, as on a fresh Ubuntu: holds the dpkg lock for a while after first boot -------
install -m 0755 "$HERE/apt-daily-sim" "$ROOT/usr/local/sbin/apt-daily-sim"
install -m 0644 "$HERE/apt-daily-sim.service" "$ROOT/etc/systemd/system/apt-daily-sim.service"
chroot "$ROOT" systemctl enable apt-daily-sim.service >/dev/null 2>&1

# -- a clean image: no baked host keys, no machine id, no logs ----------------------------------
rm -f "$ROOT"/etc/ssh/ssh_host_*
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
rm -rf "$ROOT"/var/lib/cloud/* "$ROOT"/var/log/*.log "$ROOT"/var/log/journal/*
# The container's console is read-only: no getty on it.
chroot "$ROOT" systemctl mask console-getty.service getty@.service serial-getty@.service >/dev/null 2>&1 || true

# Stock python3: no pip, no ensurepip (python3-venv), as on Debian's and Ubuntu's cloud images.
if chroot "$ROOT" python3 -c 'import ensurepip' 2>/dev/null || chroot "$ROOT" python3 -m pip --version >/dev/null 2>&1; then
  echo "the root's python3 has pip or ensurepip" >&2; exit 1
fi

chmod 755 "$TMP"
rm -rf -- "$OUT.old"
[[ -e $OUT ]] && mv -- "$OUT" "$OUT.old"
mv -- "$TMP" "$OUT"
trap - EXIT
rm -rf -- "$OUT.old"
echo "built $OUT ($(du -sh "$OUT/root" | cut -f1) root, $(ls "$OUT/apt"/*.deb | wc -l) packages in the local apt repository)"

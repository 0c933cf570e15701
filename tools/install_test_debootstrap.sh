#!/bin/sh
# The one-command installer in a real Debian 12 root made by debootstrap, run inside it with
# chroot (systemd cannot boot here, so nothing is started: the units are verified with
# systemd-analyze inside the root). Usage: install_test_debootstrap.sh BUNDLE_DIR CACHE_TGZ
set -eu
BUNDLE=$(realpath "$1"); CACHE=$2
ROOT=$(mktemp -d /var/tmp/edgegw-deb.XXXXXX)
trap 'umount "$ROOT/proc" 2>/dev/null || true; rm -rf "$ROOT"' EXIT
mkdir -p "$(dirname "$CACHE")"
INCLUDE=python3,python3-venv,systemd,systemd-sysv,passwd
if [ ! -f "$CACHE" ]; then
  debootstrap --variant=minbase --include=$INCLUDE --make-tarball="$CACHE" bookworm "$ROOT.tmp"
  rm -rf "$ROOT.tmp"
fi
debootstrap --variant=minbase --include=$INCLUDE --unpack-tarball="$(realpath "$CACHE")" bookworm "$ROOT"
mkdir -p "$ROOT/tmp/bundle" && cp -r "$BUNDLE"/. "$ROOT/tmp/bundle/"
mount -t proc proc "$ROOT/proc"
find "$ROOT" -xdev -printf '%P %m %U %G\n' | sort > "$ROOT.before"
chroot "$ROOT" python3 /tmp/bundle/install.py --no-start
chroot "$ROOT" python3 /tmp/bundle/install.py --no-start | grep -q "nothing to change"
chroot "$ROOT" id edgegw | grep -q dialout
chroot "$ROOT" systemd-analyze verify /etc/systemd/system/edgegw.service
chroot "$ROOT" /opt/edgegw/slots/current/bin/edgegw check -c /etc/edgegw/gateway.yaml
chroot "$ROOT" python3 /tmp/bundle/install.py --uninstall
find "$ROOT" -xdev -printf '%P %m %U %G\n' | sort > "$ROOT.after"
# the account tools' backups (passwd- ...) are expected leftovers of any userdel; run/ is
# the runtime tmpfs (systemd-analyze verify writes there), not installed files
if diff "$ROOT.before" "$ROOT.after" | grep -v -E '^[<>] etc/(passwd|group|shadow|gshadow)- |^[<>] etc/\.pwd\.lock|^[<>] run/|^---|^[0-9]' ; then
  echo "install-test-debootstrap: uninstall left files behind (above)"; exit 1
fi
rm -f "$ROOT.before" "$ROOT.after"
echo "install-test-debootstrap: OK (install, idempotent re-run, verify, check, uninstall)"

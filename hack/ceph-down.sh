#!/usr/bin/env bash
# Stops the cluster started by hack/ceph-up.sh: its daemons by pid file only
# (SIGTERM, SIGKILL after 10 s; with --wipe SIGKILL at once), and with --wipe
# removes the state directory.
#
# Usage: hack/ceph-down.sh [--wipe]     (CEPH_DIR as for ceph-up.sh)
set -u
CEPH_DIR=${CEPH_DIR:-/var/tmp/csi-rbdj-ceph}
CONF=$CEPH_DIR/ceph.conf
wipe=0
case "${1:-}" in
  --wipe) wipe=1 ;;
  "") ;;
  *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
esac

running() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }

exec 9>"$CEPH_DIR.lock"
flock -w 60 9 || echo "ceph-down: $CEPH_DIR.lock still held after 60 s; going on" >&2
rm -f "$CEPH_DIR/ready"
for p in "$CEPH_DIR"/run/osd.*.pid "$CEPH_DIR"/run/mon.*.pid; do
  [ -s "$p" ] || continue
  pid=$(cat "$p")
  # only a live process that is one of ours (its command line names our conf)
  if running "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF"; then
    if [ "$wipe" = 1 ]; then kill -9 "$pid"; else kill "$pid"; fi
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then kill -9 "$pid"; fi
    for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
    echo "stopped $(basename "$p" .pid) (pid $pid)"
  fi
  rm -f "$p"
done
if [ "$wipe" = 1 ]; then
  rm -rf "$CEPH_DIR"
  echo "wiped $CEPH_DIR"
fi
exit 0

#!/usr/bin/env bash
# Stops what hack/dr-up.sh started (rbd-mirror daemons, then both clusters),
# by pid file only: SIGTERM, SIGKILL after 10 s. Idempotent.
#   dr-down.sh          stop everything, keep the state
#   dr-down.sh --wipe   stop everything and remove the work dir's state
# Env: DR_DIR work dir (default /var/tmp/csi-rbdj-dr).
set -u
PM=${DR_DIR:-/var/tmp/csi-rbdj-dr}
running() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
stop() {  # pidfile
  local p=$1 pid
  [ -s "$p" ] || return 0
  pid=$(cat "$p")
  if running "$pid"; then
    kill "$pid"
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -9 "$pid"
    echo "stopped $p (pid $pid)"
  fi
  rm -f "$p"
}
stop "$PM/mirror/rbd-mirror.pid"
stop "$PM/mirror/rbd-mirror-a.pid"
for c in site-a site-b; do
  for p in "$PM/$c"/run/osd.*.pid "$PM/$c"/run/mgr.*.pid "$PM/$c"/run/mon.*.pid; do
    [ -e "$p" ] && stop "$p"
  done
done
if [ "${1:-}" = --wipe ]; then
  rm -rf "$PM/site-a" "$PM/site-b" "$PM/conf" "$PM/mirror" "$PM"/*.sh && echo "wiped $PM"
fi
exit 0

#!/usr/bin/env bash
# Journal-mode rbd mirroring between site-a and site-b in BOTH directions
# (auth none, no mgr), from the rbd-mirror recipe:
#  - pool "rbd" in image mirror mode on both sites (site names set explicitly),
#    each site the other's rx-tx peer;
#  - one rbd-mirror daemon per site, each pulling the images that are primary
#    on the other site: site-b's (pid mirror/rbd-mirror.pid: the tests stop
#    and start this one) replicates site-a -> site-b; site-a's (pid
#    mirror/rbd-mirror-a.pid) replicates site-b -> site-a, which failback
#    needs (a demoted, resynced site-a copies site-b's primary).
# Idempotent: starts only the daemons that are not running.
# Env: MIRROR_DIR (required), RBD_MIRROR_ARGS extra daemon args,
#      RBD_MIRROR_DEBUG debug_rbd_mirror level (default 10).
set -euo pipefail
PM=${MIRROR_DIR:?MIRROR_DIR must name the DR work dir}
. "$PM/env.sh"
mkdir -p "$PM/mirror"
log() { echo "[mirror-setup $(date +%T.%3N)] $*" >&2; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

for s in site-a site-b; do
  cur=$(rbd --cluster $s mirror pool info rbd --format json | json 'd["mode"]')
  [ "$cur" = image ] || rbd --cluster $s mirror pool enable rbd image --site-name $s
done
# peers, only when the pool has none yet (each site's peer is the other)
for pair in site-a:site-b site-b:site-a; do
  s=${pair%%:*} peer=${pair#*:}
  if [ "$(rbd --cluster "$s" mirror pool info rbd --format json | json 'len(d.get("peers",[]))')" = 0 ]; then
    rbd --cluster "$s" mirror pool peer add rbd "client.admin@$peer" --direction rx-tx >/dev/null
  fi
done

running() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
start() {  # site pidfile id
  local site=$1 pidf=$2 id=$3
  if [ -s "$pidf" ] && running "$(cat "$pidf")"; then
    log "rbd-mirror for $site already running pid $(cat "$pidf")"; return 0
  fi
  # -f: foreground (a background job here), logs to --log-file; setsid so it
  # outlives the caller (a test that restarts it).
  (cd "$PM/mirror" && exec setsid rbd-mirror -f --cluster "$site" -n "client.rbd-mirror.$id" \
    --log-file "$PM/mirror/rbd-mirror.$id.log" \
    --debug-rbd-mirror "${RBD_MIRROR_DEBUG:-10}" --debug-journaler 5 \
    --admin-socket "$PM/mirror/rbd-mirror.$id.asok" \
    ${RBD_MIRROR_ARGS:-} >"$PM/mirror/rbd-mirror.$id.out" 2>&1 </dev/null) &
  echo $! > "$pidf"
}
start site-b "$PM/mirror/rbd-mirror.pid" b
start site-a "$PM/mirror/rbd-mirror-a.pid" a
sleep 2
for p in rbd-mirror.pid:b rbd-mirror-a.pid:a; do
  pidf=$PM/mirror/${p%%:*} id=${p#*:}
  running "$(cat "$pidf")" || { log "rbd-mirror $id died"; tail -20 "$PM/mirror/rbd-mirror.$id.out" "$PM/mirror/rbd-mirror.$id.log" >&2; exit 1; }
done
log "rbd-mirror running: site-b pid $(cat "$PM/mirror/rbd-mirror.pid"), site-a pid $(cat "$PM/mirror/rbd-mirror-a.pid")"

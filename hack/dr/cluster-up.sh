#!/usr/bin/env bash
# Minimal single-node Ceph (Debian 16.2.x Pacific) without systemd.
# One mon (a), one osd (0), optional mgr (x); everything on 127.0.0.1,
# all state under $CEPH_DIR. Auth disabled. Idempotent: if the cluster in
# $CEPH_DIR is already up it is reused, otherwise it is wiped and recreated.
# Prints the path of ceph.conf on stdout (last line); progress goes to stderr.
#
# Env knobs:
#   CEPH_DIR        state dir               (default /tmp/ceph-dev/cluster)
#   CEPH_OBJSTORE   memstore | bluestore    (default memstore)
#   CEPH_MON_PORT   msgr2 port of the mon   (default 3300; v1 = port+1)
#   CEPH_MGR        1 = also start ceph-mgr if installed (default 0)
#   CEPH_FRESH      1 = always wipe and recreate (default 0)
#   CEPH_EXTRA_CONF extra "key = value" lines appended to [global]
#   CEPH_RBD_POOL   pool to create + "rbd pool init" (default rbd; "" = none)
#   CEPH_CLUSTER    cluster name: conf is $CEPH_DIR/$CEPH_CLUSTER.conf and
#                   daemons get --cluster NAME (default ceph)
# (from the rbd-mirror recipe; used by hack/dr-up.sh)
set -euo pipefail

CEPH_DIR=${CEPH_DIR:?CEPH_DIR must name the state dir}
CLUSTER=${CEPH_CLUSTER:-ceph}
OBJSTORE=${CEPH_OBJSTORE:-memstore}
MON_PORT=${CEPH_MON_PORT:-3300}
MON_PORT1=$((MON_PORT + 1))
WANT_MGR=${CEPH_MGR:-0}
RBD_POOL=${CEPH_RBD_POOL-rbd}
CONF=$CEPH_DIR/$CLUSTER.conf
export CEPH_CONF=$CONF
log() { echo "[cluster-up $CLUSTER $(date +%T.%3N)] $*" >&2; }

# a pid counts as running unless gone or a zombie (this VM's init reaps
# orphans only every ~1.5 s, and kill -0 succeeds on zombies)
running() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
alive() { [ -s "$1" ] && running "$(cat "$1")"; }

# ---- reuse a running cluster ------------------------------------------------
if [ "${CEPH_FRESH:-0}" != 1 ] && [ -f "$CONF" ] \
   && alive "$CEPH_DIR/run/mon.a.pid" && alive "$CEPH_DIR/run/osd.0.pid" \
   && timeout 10 ceph osd dump 2>/dev/null | grep -q '^osd.0 up *in'; then
  log "cluster already running"
  echo "$CONF"; exit 0
fi

# ---- stop leftovers (by pid file only) and wipe -----------------------------
if [ -d "$CEPH_DIR/run" ]; then        # state is wiped anyway: SIGKILL is fine
  for p in "$CEPH_DIR"/run/*.pid; do
    [ -s "$p" ] || continue
    pid=$(cat "$p"); kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
  done
fi
log "stopped old daemons"
rm -rf "$CEPH_DIR"
mkdir -p "$CEPH_DIR"/{run,log,mon.a,osd.0,mgr.x}

FSID=$(cat /proc/sys/kernel/random/uuid)
cat > "$CONF" <<EOF
[global]
fsid = $FSID
mon_host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_PORT1]
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
auth_supported = none
run_dir = $CEPH_DIR/run
pid_file = $CEPH_DIR/run/\$name.pid
admin_socket = $CEPH_DIR/run/\$name.asok
log_file = $CEPH_DIR/log/\$name.log
mon_cluster_log_file = $CEPH_DIR/log/cluster.log
crash_dir = $CEPH_DIR/crash
keyring = /dev/null
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_mgr_mkfs_grace = 86400
debug_ms = 0
# mon batches map updates every 1 s by default; 0.1 s halves bring-up time
paxos_propose_interval = 0.1
${CEPH_EXTRA_CONF:-}
[client]
# several rbd CLI processes / rbd-mirror contexts at once: unique sockets
admin_socket = $CEPH_DIR/run/\$name.\$pid.asok
[mon]
mon_data = $CEPH_DIR/mon.\$id
[osd]
osd_data = $CEPH_DIR/osd.\$id
osd_objectstore = $OBJSTORE
memstore_device_bytes = 8589934592
memstore_page_set = true
bluestore_block_create = true
bluestore_block_size = 10737418240
osd_memory_target = 1073741824
bluestore_fsck_on_mount = false
osd_class_dir = /usr/lib/x86_64-linux-gnu/rados-classes
osd_class_load_list = *
osd_class_default_list = *
[mgr]
mgr_data = $CEPH_DIR/mgr.\$id
EOF

# ---- mon --------------------------------------------------------------------
log "mkfs mon.a (fsid $FSID)"
# explicit monmap naming the mon "a": otherwise mkfs names it "noname-a" and the
# mon binds public_addr with the *default* ports 3300/6789 (EADDRINUSE clash)
monmaptool --create --fsid "$FSID" \
  --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_PORT1]" "$CEPH_DIR/monmap" >/dev/null
ceph-mon --cluster "$CLUSTER" --mkfs -i a -c "$CONF" --monmap "$CEPH_DIR/monmap" >"$CEPH_DIR/log/mon-mkfs.out" 2>&1
# daemonizes (parent returns once the child is up), writes run/mon.a.pid
ceph-mon --cluster "$CLUSTER" -i a -c "$CONF" 2>>"$CEPH_DIR/log/mon-start.out" \
  || { tail -5 "$CEPH_DIR/log/mon.a.log" >&2; exit 1; }
for _ in $(seq 100); do timeout 5 ceph mon stat >/dev/null 2>&1 && break; sleep 0.2; done
log "mon up"

# ---- mgr (optional) ---------------------------------------------------------
if [ "$WANT_MGR" = 1 ] && command -v ceph-mgr >/dev/null; then
  ceph-mgr --cluster "$CLUSTER" -i x -c "$CONF" 2>>"$CEPH_DIR/log/mgr-start.out"
  log "mgr started"
fi

# ---- osd --------------------------------------------------------------------
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_ID=$(ceph osd new "$OSD_UUID")      # -> 0
log "mkfs osd.$OSD_ID ($OBJSTORE)"
ceph-osd --cluster "$CLUSTER" -i "$OSD_ID" -c "$CONF" --mkfs --osd-uuid "$OSD_UUID" >"$CEPH_DIR/log/osd-mkfs.out" 2>&1
# daemonizes; adds itself to the CRUSH map (host=$(hostname)) on start
ceph-osd --cluster "$CLUSTER" -i "$OSD_ID" -c "$CONF" 2>>"$CEPH_DIR/log/osd-start.out" \
  || { tail -5 "$CEPH_DIR/log/osd.$OSD_ID.log" >&2; exit 1; }
for _ in $(seq 300); do
  ceph osd dump 2>/dev/null | grep -q "^osd.$OSD_ID up *in" && break; sleep 0.2
done
ceph osd dump | grep -q "^osd.$OSD_ID up *in" || { log "osd did not come up"; exit 1; }
log "osd.$OSD_ID up+in"

# ---- rbd pool ---------------------------------------------------------------
if [ -n "$RBD_POOL" ]; then
  ceph osd pool create "$RBD_POOL" 8 8 >/dev/null 2>&1
  rbd pool init "$RBD_POOL"
  log "pool $RBD_POOL created (size 1) and rbd-initialised"
fi
echo "$CONF"

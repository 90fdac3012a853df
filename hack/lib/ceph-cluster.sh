# Sourced by hack/ceph-up.sh and hack/dr/cluster-up.sh (hack/dr-up.sh copies
# it next to the latter): what bringing up a one-mon (a), one-OSD (0)
# cluster on 127.0.0.1 does the same way whatever its auth and object store.
# The caller sets CEPH_DIR, CONF (and exports CEPH_CONF=$CONF), MON_PORT and
# MON_PORT1, and defines log().

# A pid counts as running unless it is gone or a zombie (init may reap
# orphans slowly, and kill -0 succeeds on zombies).
running() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
alive() { [ -s "$1" ] && running "$(cat "$1")"; }

# cluster_running: the mon and the OSD of $CEPH_DIR run and osd.0 is up+in.
cluster_running() {
  alive "$CEPH_DIR/run/mon.a.pid" && alive "$CEPH_DIR/run/osd.0.pid" \
    && timeout 10 ceph osd dump 2>/dev/null | grep -q '^osd.0 up *in'
}

# stop_leftovers SIGKILLs the daemons of $CEPH_DIR/run/*.pid (the state is
# wiped next anyway), only a process that is one of ours: its command line
# names $CONF.
stop_leftovers() {
  local p pid
  [ -d "$CEPH_DIR/run" ] || return 0
  for p in "$CEPH_DIR"/run/*.pid; do
    [ -s "$p" ] || continue
    pid=$(cat "$p")
    if running "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF"; then
      kill -9 "$pid" 2>/dev/null || true
      for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
    fi
  done
  log "stopped old daemons"
}

# conf_global FSID AUTH prints the [global] lines of the node's addresses,
# the auth required everywhere (cephx or none) and the state directory's
# layout.
conf_global() {
  cat <<CONF
fsid = $1
mon_host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_PORT1]
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = $2
auth_service_required = $2
auth_client_required = $2
run_dir = $CEPH_DIR/run
pid_file = $CEPH_DIR/run/\$name.pid
log_file = $CEPH_DIR/log/\$name.log
mon_cluster_log_file = $CEPH_DIR/log/cluster.log
crash_dir = $CEPH_DIR/crash
CONF
}

# conf_single_osd prints the [global] lines that let one OSD hold every
# pool (size 1, no autoscaler, no warnings about it) and speed up bring-up.
conf_single_osd() {
  cat <<'CONF'
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
# the mon batches map updates every 1 s by default; 0.1 s halves bring-up
paxos_propose_interval = 0.1
CONF
}

# make_monmap FSID writes $CEPH_DIR/monmap naming the mon "a": otherwise
# mkfs names it "noname-a" and the mon binds public_addr with the default
# ports 3300/6789.
make_monmap() {
  monmaptool --create --fsid "$1" \
    --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_PORT1]" "$CEPH_DIR/monmap" >/dev/null
}

# wait_mon waits up to 20 s for the mon to answer.
wait_mon() {
  for _ in $(seq 100); do timeout 5 ceph mon stat >/dev/null 2>&1 && return 0; sleep 0.2; done
  timeout 5 ceph mon stat >/dev/null 2>&1
}

# wait_osd ID waits up to 60 s for osd.ID to be up and in.
wait_osd() {
  for _ in $(seq 300); do
    ceph osd dump 2>/dev/null | grep -q "^osd.$1 up *in" && return 0; sleep 0.2
  done
  ceph osd dump | grep -q "^osd.$1 up *in"
}

# create_rbd_pool POOL creates POOL (8 PGs) and initialises it for rbd.
create_rbd_pool() {
  ceph osd pool create "$1" 8 8 >/dev/null 2>&1
  rbd pool init "$1"
  log "pool $1 created (size 1) and rbd-initialised"
}

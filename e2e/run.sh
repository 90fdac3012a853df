#!/usr/bin/env bash
# The end-to-end test: csi-rbdj installed with its Helm chart on a real single-node
# Kubernetes (v1.33.13: etcd, kube-apiserver, controller-manager, scheduler, containerd,
# kubelet; e2e/cluster.sh), then seven checks through the Kubernetes API:
#
#   1. StorageClass -> PVC Bound -> an RBD image with the journaling feature
#   2. a Filesystem pod and a Block pod write and verify; with the fuse-holder the node
#      plugin is SIGKILLed and comes back, then `helm upgrade` rolls it to another image
#      tag: 0 I/O errors, no container restart, the same mounts and loop devices, the
#      holder pod untouched, the data verifies; then the fallback (holder killed too):
#      what the pod saw; the data is intact and usable
#   3. a StatefulSet with 2 replicas: each replica's data survives pod re-creation
#   4. PVC deletion removes the image and its journal
#   5. a Block-mode PVC consumed as a raw device
#   6. online expansion while pods write (XFS and Block): the PVCs grow, the pods see it
#   7. VolumeSnapshot of a PVC a pod is using -> restore PVC and PVC-to-PVC clone hold
#      the data (external-snapshotter: csi-snapshotter sidecar, snapshot-controller, CRDs)
#
# Usage (root): e2e/run.sh   (make e2e)
# Environment:
#   E2E_BACKEND  local | ceph | auto (default): ceph when the built binary serves
#                `--backend ceph` (built with the ceph tags), local otherwise
#   E2E_DIR      work directory (default /tmp/csi-rbdj-e2e; wiped at start)
#   E2E_KEEP=1   leave the cluster running (e2e/cluster.sh down stops it)
#   CSI_RBDJ_CACHE  tool and image cache (default ~/.cache/csi-rbdj)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH=/usr/local/go/bin:$PATH
export E2E_DIR=${E2E_DIR:-/tmp/csi-rbdj-e2e}
CACHE=${CSI_RBDJ_CACHE:-$HOME/.cache/csi-rbdj}
BACKEND=${E2E_BACKEND:-auto}
NS=csi-rbdj
RELEASE=rbdj
SC=rbdj
CEPH_WAS_UP=""
T0=$(date +%s.%N)

log() { echo "[e2e $(date +%T.%3N)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (containerd, kubelet, loop devices, mounts)"

# ---- build -----------------------------------------------------------------
"$ROOT/e2e/install-deps.sh"
"$ROOT/hack/install-deps.sh" >/dev/null
TOOLS=$("$ROOT/e2e/build-tools.sh" | tail -n1)
export TOOLS
KUBECTL="$TOOLS/kubectl"
HELM="$TOOLS/helm"
export KUBECONFIG=$E2E_DIR/admin.kubeconfig
export HELM_CACHE_HOME=$CACHE/helm/cache HELM_CONFIG_HOME=$CACHE/helm/config HELM_DATA_HOME=$CACHE/helm/data

GOTAGS=""
if [ -f /usr/include/rados/librados.h ] && [ -f /usr/include/rbd/librbd.h ]; then GOTAGS="ceph,pacific"; fi
log "building csi-rbdj${GOTAGS:+ (tags: $GOTAGS)}"
make -s build GOTAGS="$GOTAGS"
BIN=$ROOT/bin/csi-rbdj
export CSI_RBDJ_BIN=$BIN
GOFLAGS=${GOFLAGS:-} go build -o "$ROOT/bin/rbdj-inspect" ./e2e/cmd/rbdj-inspect
INSPECT=$ROOT/bin/rbdj-inspect

if [ "$BACKEND" = auto ]; then
  # `csi-rbdj version` names the backends the binary carries. (Not `producer | grep -q`:
  # under pipefail a grep that exits early fails the producer, and the run silently
  # took the local backend on a loaded machine.)
  bver=$("$BIN" version)
  if [[ $bver == *"backends: "*ceph* ]]; then
    BACKEND=ceph
  else
    BACKEND=local
  fi
fi
log "backend: $BACKEND"

# ---- cluster ---------------------------------------------------------------
SNAPSHOT_CONTROLLER_PID=""
teardown() {
  local rc=$?
  set +e
  if [ -n "$SNAPSHOT_CONTROLLER_PID" ]; then kill "$SNAPSHOT_CONTROLLER_PID" 2>/dev/null; wait "$SNAPSHOT_CONTROLLER_PID" 2>/dev/null; fi
  if [ -n "${E2E_KEEP:-}" ]; then
    log "E2E_KEEP set: cluster left running (KUBECONFIG=$KUBECONFIG; e2e/cluster.sh down stops it)"
    return $rc
  fi
  log "teardown"
  if [ -f "$KUBECONFIG" ] && "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
    local p
    for p in $("$KUBECTL" -n "$NS" get pods -o name 2>/dev/null); do
      "$KUBECTL" -n "$NS" logs "$p" --all-containers --previous > "$E2E_DIR/logs/${p#pod/}.previous.log" 2>/dev/null
      "$KUBECTL" -n "$NS" logs "$p" --all-containers > "$E2E_DIR/logs/${p#pod/}.log" 2>/dev/null
    done
    "$KUBECTL" delete pod,statefulset --all -n e2e --wait=true --timeout=120s >/dev/null 2>&1
    "$KUBECTL" delete pvc --all -n e2e --wait=true --timeout=120s >/dev/null 2>&1
    "$HELM" uninstall "$RELEASE" -n "$NS" --wait --timeout 120s >/dev/null 2>&1
  fi
  "$KUBECTL" -n "$NS" logs -l app.kubernetes.io/component=node --tail=-1 >> "$E2E_DIR/logs/node-plugin-at-uninstall.log" 2>/dev/null
  "$ROOT/e2e/cluster.sh" down
  # The loop device of the node plugin killed in check 2 can outlive it: the plugin opened
  # its FUSE file through its container's mount namespace, which died with it, so the
  # restarted plugin cannot find the device by its backing path (it shows as "/disk") and
  # leaves it attached. Detach the devices this run's plugins attached that still hang on
  # such a dead file.
  local dev back
  for dev in $(cat "$E2E_DIR"/logs/*node*.log 2>/dev/null | grep '"fuseloop: attached"' | grep -oE 'device="/dev/loop[0-9]+"' | grep -oE '/dev/loop[0-9]+' | sort -u); do
    back=$(losetup -n -O BACK-FILE "$dev" 2>/dev/null) || continue
    if [ "$back" = /disk ] || [[ $back == "$E2E_DIR"/* ]]; then
      losetup -d "$dev" 2>/dev/null && log "detached $dev (backing file $back) left attached by the killed node plugin"
    fi
  done
  losetup -n -O NAME,BACK-FILE > "$E2E_DIR/logs/losetup-after.txt" 2>/dev/null
  log "logs in $E2E_DIR/logs"
  if [ "$BACKEND" = ceph ] && [ -z "$CEPH_WAS_UP" ]; then "$ROOT/hack/ceph-down.sh" >/dev/null 2>&1; fi
  log "teardown done ($(elapsed "$T0")s in all)"
  return $rc
}
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }

# A previous run's leftovers (E2E_KEEP or a killed run): stop them first.
if [ -d "$E2E_DIR" ]; then "$ROOT/e2e/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$E2E_DIR"; fi
mkdir -p "$E2E_DIR/images" "$E2E_DIR/logs"
losetup -n -O NAME,BACK-FILE > "$E2E_DIR/logs/losetup-before.txt" 2>/dev/null || true
trap teardown EXIT
trap 'exit 130' INT TERM

log "images"
"$ROOT/hack/build-image.sh" "$BIN" localhost/csi-rbdj:e2e "$CACHE/images/csi-rbdj-e2e.tar"
# Check 2 upgrades the release to this tag: the same sources built with another version
# string (`csi-rbdj version` in the new pod proves it runs the new build).
UPGRADE_TAG=e2e-upgrade
t=$(date +%s.%N)
go build ${GOTAGS:+-tags "$GOTAGS"} -ldflags "-X main.version=$UPGRADE_TAG" -o "$ROOT/bin/csi-rbdj-$UPGRADE_TAG" ./cmd/csi-rbdj
"$ROOT/hack/build-image.sh" "$ROOT/bin/csi-rbdj-$UPGRADE_TAG" "localhost/csi-rbdj:$UPGRADE_TAG" "$CACHE/images/csi-rbdj-$UPGRADE_TAG.tar"
log "upgrade image localhost/csi-rbdj:$UPGRADE_TAG built in $(elapsed "$t")s"
CGO_ENABLED=0 go build -trimpath -o "$CACHE/images/pause" ./e2e/cmd/pause
"$ROOT/e2e/mkimage.sh" "$CACHE/images/pause" localhost/pause:e2e "$CACHE/images/pause.tar" /pause
"$ROOT/e2e/mkimage.sh" "$TOOLS/csi-provisioner" localhost/csi-provisioner:v6.3.0 "$CACHE/images/csi-provisioner.tar" /csi-provisioner
"$ROOT/e2e/mkimage.sh" "$TOOLS/csi-resizer" localhost/csi-resizer:v1.14.0 "$CACHE/images/csi-resizer.tar" /csi-resizer
"$ROOT/e2e/mkimage.sh" "$TOOLS/csi-snapshotter" localhost/csi-snapshotter:v8.4.0 "$CACHE/images/csi-snapshotter.tar" /csi-snapshotter
ln -sf "$CACHE/images/csi-rbdj-e2e.tar" "$CACHE/images/csi-rbdj-$UPGRADE_TAG.tar" "$CACHE/images/pause.tar" "$CACHE/images/csi-provisioner.tar" "$CACHE/images/csi-resizer.tar" \
  "$CACHE/images/csi-snapshotter.tar" "$E2E_DIR/images/"

CEPH_CONF=""
if [ "$BACKEND" = ceph ]; then
  # the project's test cluster (hack/ceph-up.sh); stopped at the end only if this run started it
  conf=${CEPH_DIR:-/var/tmp/csi-rbdj-ceph}/ceph.conf
  if [ -s "$conf" ] && CEPH_CONF=$conf timeout 10 ceph -s >/dev/null 2>&1; then CEPH_WAS_UP=1; fi
  CEPH_CONF=$("$ROOT/hack/ceph-up.sh" | tail -n1)
  export CEPH_CONF
fi

t=$(date +%s.%N)
"$ROOT/e2e/cluster.sh" up
log "cluster up in $(elapsed "$t")s"
# Snapshots: the CRDs, and the snapshot-controller as a host process with the admin
# kubeconfig (it belongs to the cluster, not to the driver's chart).
"$KUBECTL" apply -f "$TOOLS/snapshot-crds/" >/dev/null
"$TOOLS/snapshot-controller" --kubeconfig="$KUBECONFIG" --leader-election=false --v=3 > "$E2E_DIR/logs/snapshot-controller.log" 2>&1 &
SNAPSHOT_CONTROLLER_PID=$!

# ---- install ----------------------------------------------------------------
VALUES=$E2E_DIR/values.yaml
cat > "$VALUES" <<X
backend: $BACKEND
kubeletDir: $E2E_DIR/kubelet/root
image: {repository: localhost/csi-rbdj, tag: e2e, pullPolicy: Never}
apiServer: {host: 127.0.0.1, port: "6443"}
controller:
  hostNetwork: true
  logLevel: 4
  provisioner:
    image: {repository: localhost/csi-provisioner, tag: v6.3.0, pullPolicy: Never}
    timeout: 60s
    leaderElection: true
    logLevel: 3
  resizer:
    enabled: true
    image: {repository: localhost/csi-resizer, tag: v1.14.0, pullPolicy: Never}
    timeout: 60s
    leaderElection: true
    logLevel: 3
  snapshotter:
    enabled: true
    image: {repository: localhost/csi-snapshotter, tag: v8.4.0, pullPolicy: Never}
    timeout: 60s
    leaderElection: true
    logLevel: 3
node:
  hostNetwork: true
  logLevel: 4
  stateDir: $E2E_DIR/node
  terminationGracePeriodSeconds: 30
# Both plugins share the host network here: keep their metrics on loopback.
metrics:
  node: {port: 9810, host: 127.0.0.1}
  controller: {port: 9811, host: 127.0.0.1}
storageClass:
  create: true
  name: $SC
  pool: rbd
  journalOrder: 24
  journalSplayWidth: 4
  ackPolicy: writeback
  fsType: ext4
  reclaimPolicy: Delete
  volumeBindingMode: Immediate
X
if [ "$BACKEND" = local ]; then
  cat >> "$VALUES" <<X
local: {dir: $E2E_DIR/local, nodeName: localhost, noSync: false}
X
else
  MON=$(awk -F' *= *' '$1 ~ /mon[ _]host/ {print $2; exit}' "$CEPH_CONF")
  KEY=$(cat "$(dirname "$CEPH_CONF")/client.admin.key")
  cat >> "$VALUES" <<X
clusterID: e2e
ceph:
  clusters: [{clusterID: e2e, monitors: ["$MON"]}]
  secret: {create: true, name: csi-rbdj-ceph, userID: admin, userKey: "$KEY"}
X
fi
t=$(date +%s.%N)
"$HELM" lint --strict "$ROOT/charts/csi-rbdj" -f "$VALUES" >/dev/null
"$HELM" upgrade --install "$RELEASE" "$ROOT/charts/csi-rbdj" -n "$NS" --create-namespace -f "$VALUES" --wait --timeout 3m >/dev/null ||
  { "$KUBECTL" -n "$NS" get pods -o wide >&2; "$KUBECTL" -n "$NS" describe pods >&2; die "helm install failed"; }
# helm --wait does not wait for a DaemonSet with updateStrategy OnDelete (the fuse-holder)
"$KUBECTL" -n "$NS" wait pod -l app.kubernetes.io/component=fuse-holder --for=condition=Ready --timeout=120s >/dev/null ||
  { "$KUBECTL" -n "$NS" describe pods -l app.kubernetes.io/component=fuse-holder >&2; die "the fuse-holder is not ready"; }
wait_registered() {
  local i
  for i in $(seq 1 60); do
    "$KUBECTL" get csinode localhost -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw rbdj.csi-rbdj.dev && return 0
    sleep 1
  done
  return 1
}
wait_registered || die "the node plugin did not register with the kubelet (CSINode)"
log "chart installed, node plugin registered with the kubelet in $(elapsed "$t")s"
"$KUBECTL" create namespace e2e >/dev/null
"$KUBECTL" -n e2e create configmap e2e-scripts --from-file="$ROOT/e2e/pods/" >/dev/null

# ---- helpers ------------------------------------------------------------------
K() { "$KUBECTL" -n e2e "$@"; }
node_pod() { "$KUBECTL" -n "$NS" get pod -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.name}'; }
pv_of() { K get pvc "$1" -o jsonpath='{.spec.volumeName}'; }
handle_of() { "$KUBECTL" get pv "$1" -o jsonpath='{.spec.csi.volumeHandle}'; }
# rbdj1/<backend>/<cluster>/<pool>/<image>
image_of() { echo "${1##*/}"; }
pool_of() { local h=${1%/*}; echo "${h##*/}"; }

pvc() { # name size [volumeMode [storageClass [dataSource]]]
  K apply -f - >/dev/null <<X
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ${4:-$SC}
  volumeMode: ${3:-Filesystem}
  resources: {requests: {storage: $2}}${5:+
  dataSource: $5}
X
}

# apply_pod NAME CONTAINERS VOLUMES [SPEC...]: applies pod NAME on the host network;
# CONTAINERS and VOLUMES are the YAML of its lists, each SPEC (e.g. "restartPolicy:
# Never") a further line of its spec.
apply_pod() {
  local spec="" l
  for l in "${@:4}"; do spec+="  $l"$'\n'; done
  K apply -f - >/dev/null <<X
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  hostNetwork: true
${spec}  containers:
$2
  volumes:
$3
X
}

# pod NAME CLAIM fs|block SCRIPT [SPEC...]: applies a pod with one container, "app", on
# the pods' image, that runs `bash -c SCRIPT` with CLAIM mounted at /data (fs) or as the
# device /dev/xvda (block); each SPEC is a line of its spec.
pod() {
  local script=${4//\'/\'\'} data # a YAML single-quoted string doubles its quotes
  if [ "$3" = block ]; then
    data="volumeDevices: [{name: data, devicePath: /dev/xvda}]"
  else
    data="volumeMounts: [{name: data, mountPath: /data}]"
  fi
  apply_pod "$1" "    - name: app
      image: $POD_IMAGE
      imagePullPolicy: Never
      command: [bash, -c, '$script']
      $data" "    - {name: data, persistentVolumeClaim: {claimName: $2}}" "${@:5}"
}

# inspect_image POOL IMAGE: JSON (local) or `rbd info` text (ceph), with journaling shown.
inspect_image() {
  if [ "$BACKEND" = local ]; then
    "$INSPECT" --dir "$E2E_DIR/local" --pool "$1" image "$2"
  else
    rbd info "$1/$2" && rbd journal info --pool "$1" --image "$2"
  fi
}
# leftovers POOL IMAGE ID: objects of the image or its journal still in the pool.
leftovers() {
  if [ "$BACKEND" = local ]; then
    "$INSPECT" --dir "$E2E_DIR/local" --pool "$1" objects "$2" "$3"
  else
    rados -p "$1" ls | grep -e "$2" -e "$3" || true
  fi
}
image_id() {
  if [ "$BACKEND" = local ]; then
    inspect_image "$1" "$2" | sed -n 's/^  "id": "\(.*\)",$/\1/p'
  else
    rbd info "$1/$2" | sed -n 's/^\s*id: //p'
  fi
}

RESULTS=()
PASSED=0 FAILED=0
check() { # number title function
  local n=$1 title=$2 fn=$3 t rc
  log "=== check $n: $title"
  t=$(date +%s.%N)
  set +e
  (set -e; "$fn")
  rc=$?
  set -e
  local dt
  dt=$(elapsed "$t")
  if [ $rc = 0 ]; then
    RESULTS+=("$(printf '%-2s %-66s PASS %7ss' "$n" "$title" "$dt")")
    PASSED=$((PASSED + 1))
  else
    RESULTS+=("$(printf '%-2s %-66s FAIL %7ss' "$n" "$title" "$dt")")
    FAILED=$((FAILED + 1))
  fi
  log "=== check $n: $([ $rc = 0 ] && echo PASS || echo FAIL) in ${dt}s"
}

# The pods' image is csi-rbdj's own (Debian: bash, coreutils, util-linux).
POD_IMAGE=localhost/csi-rbdj:e2e

# ---- check 1 ------------------------------------------------------------------
check1() {
  pvc data-fs 1Gi
  K wait pvc/data-fs --for=jsonpath='{.status.phase}'=Bound --timeout=90s >/dev/null
  local pv h
  pv=$(pv_of data-fs) h=$(handle_of "$pv")
  log "PVC data-fs Bound to $pv, volume $h"
  "$KUBECTL" get pv "$pv" -o jsonpath='{.spec.csi.driver} {.spec.capacity.storage} {.spec.csi.volumeAttributes}{"\n"}' >&2
  local info
  info=$(inspect_image "$(pool_of "$h")" "$(image_of "$h")")
  echo "$info" | sed 's/^/    /' >&2
  grep -q journaling <<< "$info" || { log "image has no journaling feature"; return 1; }
  if [ "$BACKEND" = local ]; then
    grep -q '"journalHeader": "journal\.' <<< "$info" || { log "no journal header object"; return 1; }
    grep -q '"journalOrder": 24' <<< "$info" && grep -q '"journalSplayWidth": 4' <<< "$info"
  fi
}

# script_pod NAME PVC CONTAINERS: applies pod NAME (apply_pod) with the PVC as volume
# "data" and the e2e-scripts ConfigMap (e2e/pods/) as volume "scripts"; CONTAINERS is
# the YAML of its containers list.
script_pod() {
  apply_pod "$1" "$3" "    - {name: data, persistentVolumeClaim: {claimName: $2}}
    - {name: scripts, configMap: {name: e2e-scripts}}" "terminationGracePeriodSeconds: 2"
}

# ---- check 2 ------------------------------------------------------------------
# Two containers run e2e/pods/watch.sh and log each change of what they see:
#   app  the default mountPropagation (None), with a liveness probe that reads the volume
#        (O_DIRECT): the kubelet restarts it when the volume fails, as the README advises;
#   h2c  mountPropagation HostToContainer and no probe: does the re-served mount reach a
#        running container?
watch_pod() { # name pvc
  script_pod "$1" "$2" "$(cat <<X
    - name: app
      image: $POD_IMAGE
      imagePullPolicy: Never
      command: [bash, /scripts/watch.sh]
      env: [{name: CONTAINER, value: app}]
      livenessProbe:
        exec: {command: [dd, if=/data/payload, of=/dev/null, bs=4k, count=1, iflag=direct, status=none]}
        periodSeconds: 1
        failureThreshold: 2
        timeoutSeconds: 5
      volumeMounts: [{name: data, mountPath: /data}, {name: scripts, mountPath: /scripts}]
    - name: h2c
      image: $POD_IMAGE
      imagePullPolicy: Never
      command: [bash, /scripts/watch.sh]
      env: [{name: CONTAINER, value: h2c}]
      volumeMounts: [{name: data, mountPath: /data, mountPropagation: HostToContainer}, {name: scripts, mountPath: /scripts}]
X
)"
}
holder_pod() { "$KUBECTL" -n "$NS" get pod -l app.kubernetes.io/component=fuse-holder -o jsonpath='{.items[0].metadata.name}'; }
task_pid() { # pod container (in $NS): the pid of the container's task
  local cid pid
  cid=$("$KUBECTL" -n "$NS" get pod "$1" -o jsonpath="{.status.containerStatuses[?(@.name==\"$2\")].containerID}")
  cid=${cid#containerd://}
  pid=$(ctr --address "$E2E_DIR/containerd/containerd.sock" -n k8s.io tasks ls | awk -v c="$cid" '$1 == c {print $2}')
  [ -n "$pid" ] || { log "no task for container $2 of pod $1 ($cid)"; return 1; }
  echo "$pid"
}
# check2_holder: with the fuse-holder, a SIGKILL of the node plugin and a `helm upgrade` to
# another image tag are pauses. Three writers keep going through both: the watcher
# (Filesystem: app with its liveness probe, h2c without) and two writer pods without any
# probe (e2e/pods/writer.sh: hfs on a Filesystem PVC, hblock on a Block PVC; each writes,
# fsyncs and reads back 16 KiB, 20 ms apart). After each phase: no error line, no container
# restart, the same mounts and loop devices, every volume adopted; at the end the writers'
# data verifies.
writer_pod() { # name pvc fs|block
  local mount
  if [ "$3" = fs ]; then
    mount="volumeMounts: [{name: data, mountPath: /data}, {name: scripts, mountPath: /scripts}]"
  else
    mount="volumeDevices: [{name: data, devicePath: /dev/xvda}]
      volumeMounts: [{name: scripts, mountPath: /scripts}]"
  fi
  script_pod "$1" "$2" "$(cat <<X
    - name: w
      image: $POD_IMAGE
      imagePullPolicy: Never
      command: [bash, /scripts/writer.sh, $3, $([ "$3" = fs ] && echo /data || echo /dev/xvda)]
      $mount
X
)"
}
# The host's mounts of the check's volumes (mount id @ device) and their loop devices
# (name, major:minor, diskseq: a re-attached loop device gets a new diskseq).
vmounts() {
  grep -E "$(pv_of data-fs)|$(pv_of data-hblock)|$(pv_of data-hfs)" /proc/self/mountinfo | awk '{print $1 "@" $3}' | sort | tr '\n' ' '
  local d
  for d in $(cat "$E2E_DIR"/node/volumes/*.json | grep -oE '"device": *"/dev/loop[0-9]+"' | grep -oE 'loop[0-9]+' | sort); do
    echo -n "$d=$(cat "/sys/block/$d/dev"):$(cat "/sys/block/$d/diskseq") "
  done
}
# writers_ok LABEL: the pods' logs show no error and no container was restarted (the
# watcher's restart counts before the kills are $app0 and $h2c0; hfs and hblock start at 0).
writers_ok() {
  local al hl bl fl bad=0
  al=$(K logs watcher -c app) hl=$(K logs watcher -c h2c) bl=$(K logs hblock) fl=$(K logs hfs)
  log "$1: what the pods logged (watcher: changes of what it sees; hfs, hblock: errors, operations over 0.5 s, status):"
  sed 's/^/    watcher app: /' <<< "$al" >&2
  sed 's/^/    watcher h2c: /' <<< "$hl" >&2
  { grep -E 'ERR|SLOW' <<< "$fl" | tail -n 8 | sed 's/^/    hfs: /' >&2; } || true
  { grep 'writes ok' <<< "$fl" | tail -n 1 | sed 's/^/    hfs: /' >&2; } || true
  { grep -E 'ERR|SLOW' <<< "$bl" | tail -n 8 | sed 's/^/    hblock: /' >&2; } || true
  { grep 'writes ok' <<< "$bl" | tail -n 1 | sed 's/^/    hblock: /' >&2; } || true
  if grep -q ERR <<< "$al$hl"; then log "the watcher (Filesystem) saw I/O errors"; bad=1; fi
  if grep -q ERR <<< "$fl"; then log "hfs (Filesystem) saw $(grep -c ERR <<< "$fl") I/O errors"; bad=1; fi
  if grep -q ERR <<< "$bl"; then log "hblock (Block) saw $(grep -c ERR <<< "$bl") I/O errors"; bad=1; fi
  local a h r f
  a=$(restarts_of e2e watcher app) h=$(restarts_of e2e watcher h2c) r=$(restarts_of e2e hblock w) f=$(restarts_of e2e hfs w)
  if [ "$a" != "$app0" ] || [ "$h" != "$h2c0" ] || [ "$r" != 0 ] || [ "$f" != 0 ]; then
    log "a pod container was restarted (watcher app $app0 -> $a, h2c $h2c0 -> $h, hblock $r, hfs $f)"
    bad=1
  fi
  return $bad
}
# adopted NODE_POD: the node plugin adopted all three volumes from the holder.
adopted() {
  local nl
  nl=$("$KUBECTL" -n "$NS" logs "$1" -c csi-rbdj)
  { grep -E 'Volume adopted|Volume re-served|cannot adopt|Holder unavailable|fuseloop: adopted' <<< "$nl" | sed 's/^/    node plugin: /' >&2; } || true
  [ "$(grep -c 'Volume adopted after restart' <<< "$nl")" = 3 ] || { log "the node plugin did not adopt the three volumes"; return 1; }
}
handover_metrics() {
  local hs
  hs=$(scrape 9810 | grep -E '^csi_rbdj_volume_handover_(seconds|resent_requests)\{' || true)
  sed 's/^/    metrics: /' <<< "$hs" >&2
  [ "$(grep -c '^csi_rbdj_volume_handover_seconds{' <<< "$hs")" = 3 ] || { log "the node plugin's metrics do not report the three handovers"; return 1; }
}
# upgrade_timeline OLD_LOG NEW_POD: from the two plugins' klog timestamps, where the
# upgrade's pause went (diagnostics only).
upgrade_timeline() {
  local nl t0 t1 t2 t3
  kts() { awk '/^[IWE][0-9][0-9][0-9][0-9] / {split($2, a, ":"); printf "%.3f\n", a[1] * 3600 + a[2] * 60 + a[3]}'; }
  nl=$("$KUBECTL" -n "$NS" logs "$2" -c csi-rbdj)
  t0=$(grep -m1 '"Shutting down"' "$1" | kts)
  t1=$(grep '"Volume handed off' "$1" | tail -n 1 | kts)
  t2=$(head -n 1 <<< "$nl" | kts)
  t3=$(grep '"Volume adopted after restart' <<< "$nl" | tail -n 1 | kts)
  [ -n "$t0" ] && [ -n "$t1" ] && [ -n "$t2" ] && [ -n "$t3" ] || { log "upgrade timeline: log lines missing (old plugin's log: $1)"; return 1; }
  { grep '"Volume handed off' "$1" | sed 's/^/    old node plugin: /' >&2; } || true
  log "upgrade timeline (plugin logs): SIGTERM ('Shutting down') -> all volumes handed off +$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')s -> new plugin's first log line +$(awk -v a="$t0" -v b="$t2" 'BEGIN {printf "%.2f", b - a}')s -> all volumes adopted +$(awk -v a="$t0" -v b="$t3" 'BEGIN {printf "%.2f", b - a}')s"
}
check2_holder() {
  pvc data-hblock 64Mi Block
  pvc data-hfs 64Mi
  K wait pvc/data-hblock pvc/data-hfs --for=jsonpath='{.status.phase}'=Bound --timeout=90s >/dev/null
  writer_pod hblock data-hblock block
  writer_pod hfs data-hfs fs
  K wait pod/hblock pod/hfs --for=condition=Ready --timeout=120s >/dev/null
  sleep 2
  local np pid t i back="" app0 h2c0 pr0 loops0 loops1
  np=$(node_pod)
  pr0=$(restarts_of "$NS" "$np" csi-rbdj) app0=$(restarts_of e2e watcher app) h2c0=$(restarts_of e2e watcher h2c)
  loops0=$(vmounts)

  # -- kill -9 --
  pid=$(task_pid "$np" csi-rbdj) || return 1
  log "with the holder: SIGKILL the node plugin (pid $pid); the pods keep writing"
  t=$(date +%s.%N)
  kill -9 "$pid"
  back=$(plugin_restarted "$np" "$pr0" "$t") || return 1
  log "node plugin restarted by the kubelet and ready ${back}s after the kill"
  sleep 5
  local bad=0
  adopted "$np" || bad=1
  writers_ok "after kill -9" || bad=1
  loops1=$(vmounts)
  [ -n "$loops0" ] && [ "$loops0" = "$loops1" ] || { log "the volumes' mounts or loop devices changed: [$loops0] -> [$loops1]"; bad=1; }
  [ $bad = 0 ] || return 1
  log "after kill -9: 0 I/O errors in the three pods, restartCount unchanged, same mounts and loop devices [$loops1] (phase: $(elapsed "$t")s)"
  handover_metrics || return 1

  # -- helm upgrade to another image tag --
  # The node plugin's DaemonSet rolls (RollingUpdate): its pod is deleted (SIGTERM: a
  # planned stop that leaves the connections with the holder) and a new pod on the new
  # image adopts them. The holder's DaemonSet is OnDelete: its pod stays, on the old image.
  local hp hp_uid hp_r np_uid nnp img ver dsimg hl
  # keep the old node pod's logs (teardown collects only the pods that still exist)
  "$KUBECTL" -n "$NS" logs "$np" -c csi-rbdj > "$E2E_DIR/logs/$np.before-upgrade.log" 2>/dev/null || true
  "$KUBECTL" -n "$NS" logs "$np" -c csi-rbdj --previous > "$E2E_DIR/logs/$np.before-upgrade.previous.log" 2>/dev/null || true
  hp=$(holder_pod)
  hp_uid=$("$KUBECTL" -n "$NS" get pod "$hp" -o jsonpath='{.metadata.uid}') hp_r=$(restarts_of "$NS" "$hp" fuse-holder)
  np_uid=$("$KUBECTL" -n "$NS" get pod "$np" -o jsonpath='{.metadata.uid}')
  log "helm upgrade $RELEASE to image tag $UPGRADE_TAG (node plugin pod $np on $("$KUBECTL" -n "$NS" get pod "$np" -o jsonpath='{.spec.containers[0].image}'))"
  # the old plugin's log through its planned stop (diagnostics: the upgrade's timeline)
  local ulog=$E2E_DIR/logs/$np.upgrade.log follow
  "$KUBECTL" -n "$NS" logs -f "$np" -c csi-rbdj --since=1s > "$ulog" 2>&1 &
  follow=$!
  t=$(date +%s.%N)
  "$HELM" upgrade "$RELEASE" "$ROOT/charts/csi-rbdj" -n "$NS" -f "$VALUES" --set "image.tag=$UPGRADE_TAG" --wait --timeout 3m >/dev/null ||
    { kill "$follow" 2>/dev/null; "$KUBECTL" -n "$NS" get pods -o wide >&2; return 1; }
  local up=""
  for i in $(seq 1 240); do
    nnp=$(node_pod)
    if [ -n "$nnp" ] && [ "$("$KUBECTL" -n "$NS" get pod "$nnp" -o jsonpath='{.metadata.uid}')" != "$np_uid" ] &&
      [ "$(ready_of "$NS" "$nnp" csi-rbdj)" = true ]; then
      up=$(elapsed "$t")
      break
    fi
    sleep 0.25
  done
  [ -n "$up" ] || { log "no new node plugin pod ready 60 s after helm upgrade"; "$KUBECTL" -n "$NS" get pods -o wide >&2; return 1; }
  img=$("$KUBECTL" -n "$NS" get pod "$nnp" -o jsonpath='{.status.containerStatuses[?(@.name=="csi-rbdj")].image}')
  ver=$("$KUBECTL" -n "$NS" exec "$nnp" -c csi-rbdj -- csi-rbdj version)
  log "new node plugin pod $nnp ready ${up}s after helm upgrade started: image $img, '$ver'"
  [ "$img" = "localhost/csi-rbdj:$UPGRADE_TAG" ] || { log "the new node plugin pod runs $img"; return 1; }
  grep -q "^csi-rbdj $UPGRADE_TAG " <<< "$ver" || { log "the new node plugin is not the new build"; return 1; }
  wait_registered || { log "the new node plugin did not register with the kubelet"; return 1; }
  kill "$follow" 2>/dev/null || true # its stream ended with the old container
  wait "$follow" 2>/dev/null || true
  sleep 5
  upgrade_timeline "$ulog" "$nnp" || true
  bad=0
  adopted "$nnp" || bad=1
  writers_ok "after helm upgrade" || bad=1
  loops1=$(vmounts)
  [ "$loops0" = "$loops1" ] || { log "the volumes' mounts or loop devices changed: [$loops0] -> [$loops1]"; bad=1; }
  dsimg=$("$KUBECTL" -n "$NS" get daemonset -l app.kubernetes.io/component=fuse-holder -o jsonpath='{.items[0].spec.template.spec.containers[0].image}')
  hl="$(holder_pod) uid $("$KUBECTL" -n "$NS" get pod "$(holder_pod)" -o jsonpath='{.metadata.uid}') restarts $(restarts_of "$NS" "$(holder_pod)" fuse-holder) image $("$KUBECTL" -n "$NS" get pod "$(holder_pod)" -o jsonpath='{.spec.containers[0].image}')"
  log "fuse-holder: $hl (its DaemonSet's template: $dsimg, updateStrategy OnDelete)"
  [ "$hl" = "$hp uid $hp_uid restarts $hp_r image localhost/csi-rbdj:e2e" ] || { log "the fuse-holder pod was replaced or restarted (was $hp uid $hp_uid restarts $hp_r)"; bad=1; }
  [ "$dsimg" = "localhost/csi-rbdj:$UPGRADE_TAG" ] || { log "the holder's DaemonSet template was not upgraded"; bad=1; }
  [ $bad = 0 ] || return 1
  log "after helm upgrade: 0 I/O errors in the three pods, restartCount unchanged, same mounts and loop devices, the holder pod untouched (phase: $(elapsed "$t")s)"
  handover_metrics || return 1

  # the writers' data: the last acknowledged content of every file and block
  local p
  for p in hfs hblock; do
    K exec "$p" -- bash -c 'touch /tmp/stop; for i in $(seq 1 100); do [ -e /tmp/stopped ] && exit 0; sleep 0.1; done; exit 1' || { log "$p did not stop"; return 1; }
    log "$p: $(K logs "$p" | tail -n 1)"
  done
  local v
  v=$(K exec hfs -- bash /scripts/writer.sh verify fs /data 2>&1) || { log "hfs: data check failed: $v"; return 1; }
  log "hfs: $v"
  v=$(K exec hblock -- bash /scripts/writer.sh verify block /dev/xvda 2>&1) || { log "hblock: data check failed: $v"; return 1; }
  log "hblock: $v"
  K delete pod hblock hfs --wait=true --timeout=120s >/dev/null
  K delete pvc data-hblock data-hfs --wait=true --timeout=120s >/dev/null
}
# plugin_restarted POD RESTARTS T0: waits (60 s) until the node plugin's container in POD
# has restarted more than RESTARTS times and is ready; prints the seconds since T0.
plugin_restarted() {
  local i
  for i in $(seq 1 240); do
    if [ "$(restarts_of "$NS" "$1" csi-rbdj)" -gt "$2" ] && [ "$(ready_of "$NS" "$1" csi-rbdj)" = true ]; then
      elapsed "$3"
      return 0
    fi
    sleep 0.25
  done
  log "node plugin not back after 60 s"
  return 1
}
restarts_of() { # namespace pod container
  "$KUBECTL" -n "$1" get pod "$2" -o jsonpath="{.status.containerStatuses[?(@.name==\"$3\")].restartCount}"
}
ready_of() {
  "$KUBECTL" -n "$1" get pod "$2" -o jsonpath="{.status.containerStatuses[?(@.name==\"$3\")].ready}"
}
check2() {
  # the watchers need the payload before they start: write it from a first pod
  pod seed data-fs fs "dd if=/dev/urandom of=/data/payload bs=1M count=32 conv=fsync status=none && cd /data && sha256sum payload > payload.sha256 && sync && cat payload.sha256" \
    "restartPolicy: Never"
  K wait pod/seed --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null
  log "pod seed wrote 32 MiB (fsynced) and its checksum: $(K logs seed)"
  K delete pod seed --wait=true --timeout=120s >/dev/null
  watch_pod watcher data-fs
  K wait pod/watcher --for=condition=Ready --timeout=120s >/dev/null
  sleep 2

  local np cid pid t plugin_restarts app_restarts i back="" usable=""
  check2_holder || return 1
  np=$(node_pod)
  plugin_restarts=$(restarts_of "$NS" "$np" csi-rbdj)
  app_restarts=$(restarts_of e2e watcher app)
  cid=$("$KUBECTL" -n "$NS" get pod "$np" -o jsonpath='{.status.containerStatuses[0].containerID}')
  cid=${cid#containerd://}
  pid=$(ctr --address "$E2E_DIR/containerd/containerd.sock" -n k8s.io tasks ls | awk -v c="$cid" '$1 == c {print $2}')
  [ -n "$pid" ] || { log "no task for the node plugin container $cid"; return 1; }
  # The fallback: the holder dies too (its container is restarted empty), so the next
  # plugin has no connection to adopt and re-serves on a new loop device.
  local hpid
  hpid=$(task_pid "$(holder_pod)" fuse-holder) || return 1
  log "fallback: SIGKILL the fuse-holder (pid $hpid), then the node plugin"
  kill -9 "$hpid"
  log "SIGKILL the node plugin: pod $np, container ${cid:0:12}, pid $pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-60)...)"
  t=$(date +%s.%N)
  kill -9 "$pid"
  back=$(plugin_restarted "$np" "$plugin_restarts" "$t") || return 1
  log "node plugin restarted by the kubelet and ready ${back}s after the kill"
  # diagnostics only: the lines may not be logged yet
  { "$KUBECTL" -n "$NS" logs "$np" -c csi-rbdj | grep -E 'Journal replayed|Volume re-served|Registered with the kubelet' | sed 's/^/    node plugin: /' >&2; } || true
  # the app container: its liveness probe fails on the dead mount, the kubelet restarts it
  for i in $(seq 1 240); do
    if [ "$(restarts_of e2e watcher app)" -gt "$app_restarts" ] && [ "$(ready_of e2e watcher app)" = true ] &&
      K exec watcher -c app -- dd if=/data/payload of=/dev/null bs=1M count=1 iflag=direct status=none 2>/dev/null; then
      usable=$(elapsed "$t")
      break
    fi
    sleep 0.25
  done
  sleep 2
  log "what the pod saw — container 'app' (mountPropagation None) before the kubelet restarted it:"
  K logs watcher -c app --previous | sed 's/^/    app (before restart): /' >&2
  log "container 'app' after its restart:"
  K logs watcher -c app | sed 's/^/    app (after restart):  /' >&2
  log "container 'h2c' (mountPropagation HostToContainer, no liveness probe, never restarted):"
  K logs watcher -c h2c | sed 's/^/    h2c: /' >&2
  [ -n "$usable" ] || { log "the app container could not read its volume 60 s after the kill"; return 1; }
  log "volume usable again in the restarted app container ${usable}s after the kill"
  # in the restarted container: the data is intact, new writes work
  K exec watcher -c app -- bash -c 'cd /data && sha256sum -c payload.sha256 && dd if=/dev/urandom of=/data/after-restart bs=1M count=4 conv=fsync status=none && sha256sum after-restart > after-restart.sha256 && sync && echo "wrote after-restart (4 MiB, fsynced)"' 2>&1 | sed 's/^/    app: /' >&2
  if K exec watcher -c h2c -- dd if=/data/payload of=/dev/null bs=1M count=1 iflag=direct status=none 2>/dev/null; then
    log "h2c: the re-served volume reached the running container"
  else
    log "h2c: still the dead mount (the re-served mount does not propagate over the container's bind of the old one)"
  fi
  # a new pod sees everything written before the crash and after the restart
  K delete pod watcher --wait=true --timeout=120s >/dev/null
  pod verify data-fs fs "cd /data && sha256sum -c payload.sha256 after-restart.sha256" "restartPolicy: Never"
  K wait pod/verify --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null ||
    { K logs verify >&2; return 1; }
  K logs verify | sed 's/^/    new pod: /' >&2
  K delete pod verify --wait=true --timeout=120s >/dev/null
}

# ---- check 3 ------------------------------------------------------------------
# sts_ready: waits (180 s) until StatefulSet web is rolled out. A replica created
# together with its claim can be found unschedulable while the claim is still
# unbound ("unbound immediate PersistentVolumeClaims"), and the scheduler may
# take up to 5 minutes to retry it (seen once: 3 min). Such a pod whose claim
# is Bound by now is deleted; the StatefulSet re-creates it and it schedules.
sts_ready() {
  local i p
  for i in $(seq 1 36); do
    K rollout status statefulset/web --timeout=5s >/dev/null 2>&1 && return 0
    for p in web-0 web-1; do
      if [ "$(K get pod "$p" -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}' 2>/dev/null)" = Unschedulable ] &&
        [ "$(K get pvc "data-$p" -o jsonpath='{.status.phase}' 2>/dev/null)" = Bound ]; then
        log "$p unschedulable although data-$p is Bound: re-creating it"
        K delete pod "$p" --wait=false >/dev/null
      fi
    done
  done
  log "StatefulSet web not ready after 180 s"
  K get pods -o wide >&2
  return 1
}
check3() {
  K apply -f - >/dev/null <<X
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: $POD_IMAGE
          imagePullPolicy: Never
          env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
          command: [bash, -c, 'if [ ! -f /data/id ]; then echo "\$POD_NAME \$(date +%s%N) \$RANDOM" > /data/id; head -c 8M /dev/urandom > /data/blob; cd /data && sha256sum blob > blob.sha256; sync; fi; exec sleep infinity']
          readinessProbe: {exec: {command: [test, -f, /data/blob.sha256]}, periodSeconds: 1}
          volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: $SC
        resources: {requests: {storage: 256Mi}}
X
  sts_ready || return 1
  local p before after
  declare -A ids
  for p in web-0 web-1; do
    ids[$p]=$(K exec "$p" -- bash -c 'cat /data/id; cat /data/blob.sha256')
    log "$p: $(echo "${ids[$p]}" | tr '\n' ' ')"
  done
  [ "${ids[web-0]}" != "${ids[web-1]}" ] || { log "replicas share data"; return 1; }
  # Not `delete --wait`: it follows the pods by name, and the StatefulSet
  # re-creates them under the same names; it once waited here for 8 minutes
  # after both had been re-created. Wait for the old pods' UIDs to go.
  local old_uids uids i
  old_uids=$(K get pod web-0 web-1 -o jsonpath='{.items[*].metadata.uid}')
  K delete pod web-0 web-1 --wait=false >/dev/null
  for i in $(seq 1 120); do
    uids=$(K get pod web-0 web-1 -o jsonpath='{.items[*].metadata.uid}' 2>/dev/null || true)
    grep -qFf <(tr ' ' '\n' <<<"$old_uids") <(tr ' ' '\n' <<<"$uids") || break
    [ "$i" -lt 120 ] || { log "web-0 and web-1 not deleted after 120 s"; K get pods -o wide >&2; return 1; }
    sleep 1
  done
  log "deleted web-0 and web-1; waiting for the StatefulSet to re-create them"
  sts_ready || return 1
  K wait pod/web-0 pod/web-1 --for=condition=Ready --timeout=120s >/dev/null
  for p in web-0 web-1; do
    after=$(K exec "$p" -- bash -c 'cat /data/id; cat /data/blob.sha256; cd /data && sha256sum -c --quiet blob.sha256')
    if [ "$after" != "${ids[$p]}" ]; then
      log "$p after re-creation: $(echo "$after" | tr '\n' ' ') (was $(echo "${ids[$p]}" | tr '\n' ' '))"
      return 1
    fi
    log "$p re-created (uid $(K get pod "$p" -o jsonpath='{.metadata.uid}' | cut -c1-8)): same id and blob checksum verified"
  done
}

# ---- check 5 ------------------------------------------------------------------
block_pod() { # name script
  pod "$1" data-block block "$2" "restartPolicy: Never"
  K wait "pod/$1" --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null || { K logs "$1" >&2; return 1; }
  K logs "$1"
  K delete pod "$1" --wait=true --timeout=120s >/dev/null
}
check5() {
  pvc data-block 128Mi Block
  K wait pvc/data-block --for=jsonpath='{.status.phase}'=Bound --timeout=90s >/dev/null
  local w r
  w=$(block_pod block-writer 'set -e; ls -l /dev/xvda; echo size $(blockdev --getsize64 /dev/xvda); head -c 4M /dev/urandom > /tmp/p; dd if=/tmp/p of=/dev/xvda bs=1M seek=100 oflag=direct conv=fsync status=none; echo wrote $(sha256sum < /tmp/p | cut -c1-64); echo read $(dd if=/dev/xvda bs=1M skip=100 count=4 iflag=direct status=none | sha256sum | cut -c1-64)')
  echo "$w" | sed 's/^/    block-writer: /' >&2
  grep -q '^size 134217728$' <<< "$w" || { log "device size is not 128 MiB"; return 1; }
  local ws rs
  ws=$(sed -n 's/^wrote //p' <<< "$w") rs=$(sed -n 's/^read //p' <<< "$w")
  [ -n "$ws" ] && [ "$ws" = "$rs" ] || { log "read-back differs"; return 1; }
  r=$(block_pod block-reader 'set -e; echo read $(dd if=/dev/xvda bs=1M skip=100 count=4 iflag=direct status=none | sha256sum | cut -c1-64)')
  echo "$r" | sed 's/^/    block-reader: /' >&2
  [ "$(sed -n 's/^read //p' <<< "$r")" = "$ws" ] || { log "a new pod reads other data"; return 1; }
}

# ---- check 6 ------------------------------------------------------------------
# Online expansion while pods write, for a Filesystem and a Block PVC at once. The
# filesystem is XFS: growing a mounted ext4 needs CAP_SYS_RESOURCE, which the machines
# this runs on may not grant even to privileged containers (README). One pod writes and
# fsyncs a file every 0.2 s while its PVC grows from 512Mi to 1Gi; another keeps writing
# to its raw device while that PVC grows from 256Mi to 1Gi. The external-resizer has the
# controller grow each image (the node serving it performs the resize as lock owner),
# then the kubelet has the node grow the loop device (and the filesystem). Neither
# container is restarted.
check6() {
  local params
  params=$("$KUBECTL" get storageclass "$SC" -o go-template='{{range $k, $v := .parameters}}{{printf "  %s: %q\n" $k $v}}{{end}}' |
    sed 's|^  csi.storage.k8s.io/fstype: .*|  csi.storage.k8s.io/fstype: "xfs"|')
  "$KUBECTL" apply -f - >/dev/null <<X
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $SC-xfs}
provisioner: rbdj.csi-rbdj.dev
allowVolumeExpansion: true
parameters:
$params
X
  pvc data-grow 512Mi Filesystem "$SC-xfs"
  pvc data-grow-block 256Mi Block
  pod grower data-grow fs 'i=0; while true; do f=/data/f$i; head -c 65536 /dev/urandom > $f.tmp && dd if=$f.tmp of=$f bs=64k conv=fsync status=none && (cd /data && sha256sum f$i >> sums) && rm $f.tmp && sync /data/sums; i=$((i+1)); sleep 0.2; done' \
    "terminationGracePeriodSeconds: 2"
  pod grower-block data-grow-block block 'i=0; while [ ! -e /tmp/stop ]; do head -c 65536 /dev/urandom > /tmp/b && dd if=/tmp/b of=/dev/xvda bs=64k seek=$((i % 2048)) oflag=direct conv=fsync status=none && echo "$((i % 2048)) $(sha256sum < /tmp/b | cut -c1-64)" >> /tmp/sums; i=$((i+1)); sleep 0.2; done; touch /tmp/stopped; exec sleep infinity' \
    "terminationGracePeriodSeconds: 2"
  K wait pod/grower pod/grower-block --for=condition=Ready --timeout=120s >/dev/null
  sleep 2
  local before after bbefore bafter t cap bcap i pv bpv
  before=$(K exec grower -- df -B1 --output=size /data | tail -1 | tr -d ' ')
  bbefore=$(K exec grower-block -- blockdev --getsize64 /dev/xvda)
  log "the pods write; df in the filesystem pod: $before bytes; the block pod's device: $bbefore bytes"
  t=$(date +%s.%N)
  K patch pvc data-grow --type merge -p '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}' >/dev/null
  K patch pvc data-grow-block --type merge -p '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}' >/dev/null
  cap="" bcap=""
  for i in $(seq 1 360); do
    cap=$(K get pvc data-grow -o jsonpath='{.status.capacity.storage}')
    bcap=$(K get pvc data-grow-block -o jsonpath='{.status.capacity.storage}')
    [ "$cap" = 1Gi ] && [ "$bcap" = 1Gi ] && break
    sleep 0.5
  done
  pv=$(pv_of data-grow) bpv=$(pv_of data-grow-block)
  log "PVC status capacity $cap (Filesystem) and $bcap (Block) after $(elapsed "$t")s (the kubelet expands on the node at its next sync of the pod)"
  local c
  for c in data-grow data-grow-block; do
    K get events --field-selector involvedObject.name=$c -o custom-columns=REASON:.reason,MESSAGE:.message --no-headers 2>/dev/null |
      grep -v -e Provisioning -e ExternalProvisioning | sed "s/^/    $c event: /" >&2
  done
  [ "$cap" = 1Gi ] && [ "$bcap" = 1Gi ] || { log "the PVCs did not both reach 1Gi"; return 1; }
  after=$(K exec grower -- df -B1 --output=size /data | tail -1 | tr -d ' ')
  bafter=$(K exec grower-block -- blockdev --getsize64 /dev/xvda)
  log "in the running pods after the expansion: df $after bytes (was $before), device $bafter bytes (was $bbefore)"
  [ "$after" -gt $((before + 400 * 1024 * 1024)) ] || { log "the filesystem pod does not see the new size"; return 1; }
  [ "$bafter" = 1073741824 ] || { log "the block pod does not see the new size"; return 1; }
  [ "$(restarts_of e2e grower app)" = 0 ] && [ "$(restarts_of e2e grower-block app)" = 0 ] || { log "a writer's container was restarted"; return 1; }
  # The new space is usable, and everything the pods wrote is intact.
  K exec grower -- bash -c 'dd if=/dev/zero of=/data/big bs=1M count=544 conv=fsync status=none && echo "wrote a 544 MiB file (more than the 512Mi volume held)"; cd /data && n=$(wc -l < sums) && sha256sum -c --quiet sums && echo "$n files written during the expansion verified"' 2>&1 | sed 's/^/    grower: /' >&2
  K exec grower -- bash -c 'cd /data && sha256sum -c --quiet sums && [ "$(stat -c %s big)" = 570425344 ]' >/dev/null 2>&1 || { log "filesystem data check failed"; return 1; }
  K exec grower-block -- bash -c 'touch /tmp/stop; for i in $(seq 1 50); do [ -e /tmp/stopped ] && exit 0; sleep 0.1; done; exit 1' || { log "the block writer did not stop"; return 1; }
  K exec grower-block -- bash -c 'set -e; head -c 1M /dev/urandom > /tmp/n; dd if=/tmp/n of=/dev/xvda bs=1M seek=1000 oflag=direct conv=fsync status=none; [ "$(dd if=/dev/xvda bs=1M skip=1000 count=1 iflag=direct status=none | sha256sum)" = "$(sha256sum < /tmp/n)" ] && echo "wrote and read back 1 MiB at 1000 MiB, past the old end"; tac /tmp/sums | sort -n -s -k1,1 -u | while read -r b s; do [ "$(dd if=/dev/xvda bs=64k skip=$b count=1 iflag=direct status=none | sha256sum | cut -c1-64)" = "$s" ] || { echo "block $b differs"; exit 1; }; done; echo "$(wc -l < /tmp/sums) writes during the expansion, the last of each block verified"' 2>&1 | sed 's/^/    grower-block: /' >&2
  K exec grower-block -- bash -c 'tac /tmp/sums | sort -n -s -k1,1 -u | while read -r b s; do [ "$(dd if=/dev/xvda bs=64k skip=$b count=1 iflag=direct status=none | sha256sum | cut -c1-64)" = "$s" ] || exit 1; done' >/dev/null 2>&1 || { log "block data check failed"; return 1; }
  K delete pod grower grower-block --wait=true --timeout=120s >/dev/null
  K delete pvc data-grow data-grow-block --wait=true --timeout=120s >/dev/null
  "$KUBECTL" wait "pv/$pv" "pv/$bpv" --for=delete --timeout=120s >/dev/null 2>&1 || { log "PVs $pv $bpv not deleted"; return 1; }
  "$KUBECTL" delete storageclass "$SC-xfs" >/dev/null
}

# ---- check 7 ------------------------------------------------------------------
# metric NAME FILTER...: the value of the first series of NAME whose labels contain
# every FILTER (fixed strings such as 'op="write"'), from the scrape in $1.
metric() {
  local scrape=$1 name=$2 line
  shift 2
  line=$(grep -F "$name{" <<< "$scrape" || true)
  local f
  for f in "$@"; do line=$(grep -F -- "$f" <<< "$line" || true); done
  head -1 <<< "$line" | awk '{print $NF}'
}
scrape() { curl -sf --max-time 5 "http://127.0.0.1:$1/metrics"; }
check7() {
  pvc data-metrics 256Mi
  pod metered data-metrics fs 'i=0; while [ ! -e /data/stop ]; do head -c 65536 /dev/urandom > /data/f$((i % 50)) && sync /data/f$((i % 50)); i=$((i+1)); sleep 0.05; done; sync; touch /tmp/stopped; exec sleep infinity' \
    "terminationGracePeriodSeconds: 2"
  K wait pod/metered --for=condition=Ready --timeout=120s >/dev/null
  local h s1 s2 w1 w2 b2 acks appends state lag i
  h=$(handle_of "$(pv_of data-metrics)")
  sleep 2
  s1=$(scrape 9810) || { log "no metrics on the node plugin's 127.0.0.1:9810"; return 1; }
  sleep 3
  s2=$(scrape 9810) || { log "no metrics on the node plugin's 127.0.0.1:9810"; return 1; }
  w1=$(metric "$s1" csi_rbdj_volume_requests_total "volume_id=\"$h\"" 'op="write"')
  w2=$(metric "$s2" csi_rbdj_volume_requests_total "volume_id=\"$h\"" 'op="write"')
  b2=$(metric "$s2" csi_rbdj_volume_request_bytes_total "volume_id=\"$h\"" 'op="write"')
  acks=$(metric "$s2" csi_rbdj_volume_ack_duration_seconds_count "volume_id=\"$h\"" 'op="write"')
  appends=$(metric "$s2" csi_rbdj_volume_journal_append_duration_seconds_count "volume_id=\"$h\"")
  state=$(metric "$s2" csi_rbdj_volume_state "volume_id=\"$h\"" 'state="serving"')
  log "node metrics of $h while the pod writes: writes ${w1:-none} -> ${w2:-none} (${b2:-?} bytes), acknowledged ${acks:-none}, journal appends ${appends:-none}, serving ${state:-none}"
  [ -n "$w1" ] && [ -n "$w2" ] && awk -v a="$w1" -v b="$w2" 'BEGIN {exit !(b > a)}' || { log "the write counter did not move"; return 1; }
  awk -v a="${acks:-0}" -v b="${appends:-0}" 'BEGIN {exit !(a > 0 && b > 0)}' || { log "the latency histograms did not move"; return 1; }
  [ "$state" = 1 ] || { log "the volume is not reported serving"; return 1; }
  K exec metered -- bash -c 'touch /data/stop; for i in $(seq 1 100); do [ -e /tmp/stopped ] && exit 0; sleep 0.1; done; exit 1' || { log "the writer did not stop"; return 1; }
  lag=""
  for i in $(seq 1 40); do
    s2=$(scrape 9810) || true
    lag=$(metric "$s2" csi_rbdj_volume_journal_lag_entries "volume_id=\"$h\"" 'own="true"')
    [ "$lag" = 0 ] && break
    sleep 0.25
  done
  log "own journal lag after the writer synced and stopped: ${lag:-none} entries ($(metric "$s2" csi_rbdj_volume_journal_lag_bytes "volume_id=\"$h\"" 'own="true"') bytes)"
  [ "$lag" = 0 ] || { log "the journal lag did not return to 0"; return 1; }
  local calls creates
  calls=$(metric "$s2" csi_rbdj_csi_calls_total 'method="NodeStageVolume"' 'code="OK"')
  creates=$(metric "$(scrape 9811)" csi_rbdj_csi_calls_total 'method="CreateVolume"' 'code="OK"')
  log "CSI calls: NodeStageVolume OK ${calls:-none} (node), CreateVolume OK ${creates:-none} (controller)"
  awk -v a="${calls:-0}" -v b="${creates:-0}" 'BEGIN {exit !(a >= 1 && b >= 1)}' || { log "CSI call counters missing"; return 1; }
  K delete pod metered --wait=true --timeout=120s >/dev/null
  K delete pvc data-metrics --wait=true --timeout=120s >/dev/null
  for i in $(seq 1 60); do # the kubelet unstages shortly after the pod is gone
    s2=$(scrape 9810) || true
    grep -qF "volume_id=\"$h\"" <<< "$s2" || break
    sleep 0.5
  done
  if grep -qF "volume_id=\"$h\"" <<< "$s2"; then log "series of the unstaged volume remain"; return 1; fi
  log "after unstaging, no series of $h remain"
}

# ---- check 4 ------------------------------------------------------------------
check4() {
  local claims=(data-fs data-web-0 data-web-1 data-block) c pv h
  declare -A pvs handles idsof
  for c in "${claims[@]}"; do
    pv=$(pv_of "$c") h=$(handle_of "$pv")
    pvs[$c]=$pv handles[$c]=$h
    idsof[$c]=$(image_id "$(pool_of "$h")" "$(image_of "$h")")
    [ -n "${idsof[$c]}" ] || { log "$c: image $(image_of "$h") not found before deletion"; return 1; }
  done
  K delete statefulset web --wait=true --timeout=120s >/dev/null
  K delete pod --all --wait=true --timeout=120s >/dev/null
  K delete pvc "${claims[@]}" --wait=true --timeout=120s >/dev/null
  for c in "${claims[@]}"; do
    "$KUBECTL" wait "pv/${pvs[$c]}" --for=delete --timeout=120s >/dev/null 2>&1 || true
    if "$KUBECTL" get pv "${pvs[$c]}" >/dev/null 2>&1; then log "PV ${pvs[$c]} of $c not deleted"; return 1; fi
    h=${handles[$c]}
    local left
    left=$(leftovers "$(pool_of "$h")" "$(image_of "$h")" "${idsof[$c]}")
    if [ -n "$left" ]; then
      log "$c: objects left of image $(image_of "$h") (id ${idsof[$c]}): $(echo "$left" | tr '\n' ' ')"
      return 1
    fi
    log "$c: PV ${pvs[$c]} deleted; no object of image $(image_of "$h") or of journal.${idsof[$c]} is left"
  done
}

# ---- check 8 ------------------------------------------------------------------
# fs_pod NAME CLAIM SCRIPT: a pod that runs SCRIPT with CLAIM at /data; its log is
# printed once SCRIPT has printed "done" (the pod keeps running: delete it).
fs_pod() {
  pod "$1" "$2" fs "$3; echo done; sleep 3600" "restartPolicy: Never" "terminationGracePeriodSeconds: 1"
  local i
  for i in $(seq 1 120); do
    if K logs "$1" 2>/dev/null | grep -q '^done$'; then K logs "$1"; return 0; fi
    sleep 1
  done
  K describe pod "$1" >&2; K logs "$1" >&2 || true
  return 1
}
check8() {
  local params=""
  if [ "$BACKEND" = ceph ]; then
    params="parameters: {csi.storage.k8s.io/snapshotter-secret-name: csi-rbdj-ceph, csi.storage.k8s.io/snapshotter-secret-namespace: $NS}"
  fi
  "$KUBECTL" apply -f - >/dev/null <<X
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: rbdj}
driver: rbdj.csi-rbdj.dev
deletionPolicy: Delete
$params
X
  pvc snap-src 256Mi
  K wait pvc/snap-src --for=jsonpath='{.status.phase}'=Bound --timeout=90s >/dev/null
  # The writer keeps the volume mounted (served by the node): the snapshot and the clone
  # are made by the node, the image's lock owner.
  local w sum
  w=$(fs_pod snap-writer snap-src 'set -e; head -c 8M /dev/urandom > /data/f; sync /data/f; echo sum $(sha256sum < /data/f | cut -c1-64)')
  sum=$(sed -n 's/^sum //p' <<< "$w")
  [ -n "$sum" ] || { log "writer: $w"; return 1; }
  log "writer wrote /data/f (sha256 ${sum:0:16}...) and keeps the volume mounted"
  K apply -f - >/dev/null <<X
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap-1}
spec:
  volumeSnapshotClassName: rbdj
  source: {persistentVolumeClaimName: snap-src}
X
  K wait volumesnapshot/snap-1 --for=jsonpath='{.status.readyToUse}'=true --timeout=120s >/dev/null ||
    { K describe volumesnapshot snap-1 >&2; return 1; }
  log "VolumeSnapshot snap-1 ready: $(K get volumesnapshot snap-1 -o jsonpath='{.status.boundVolumeSnapshotContentName} {.status.restoreSize}')"
  pvc snap-restore 256Mi Filesystem "$SC" "{apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap-1}"
  pvc snap-clone 256Mi Filesystem "$SC" "{kind: PersistentVolumeClaim, name: snap-src}"
  local c r
  for c in snap-restore snap-clone; do
    K wait "pvc/$c" --for=jsonpath='{.status.phase}'=Bound --timeout=120s >/dev/null || { K describe pvc "$c" >&2; return 1; }
    r=$(fs_pod "reader-$c" "$c" 'echo sum $(sha256sum < /data/f | cut -c1-64)')
    [ "$(sed -n 's/^sum //p' <<< "$r")" = "$sum" ] || { log "$c reads: $r"; return 1; }
    log "$c ($(handle_of "$(pv_of "$c")")) holds /data/f"
  done
  # Snapshots first (a volume with snapshots is not deleted), then the claims; their PVs
  # go once DeleteVolume succeeded.
  local pvs=() pv
  for c in snap-restore snap-clone snap-src; do pvs+=("$(pv_of "$c")"); done
  K delete pod snap-writer reader-snap-restore reader-snap-clone --wait=true --timeout=120s >/dev/null
  K delete volumesnapshot snap-1 --wait=true --timeout=120s >/dev/null
  K delete pvc snap-restore snap-clone snap-src --wait=true --timeout=120s >/dev/null
  "$KUBECTL" delete volumesnapshotclass rbdj >/dev/null
  for pv in "${pvs[@]}"; do
    "$KUBECTL" wait "pv/$pv" --for=delete --timeout=120s >/dev/null 2>&1 || true
    if "$KUBECTL" get pv "$pv" >/dev/null 2>&1; then log "PV $pv not deleted"; "$KUBECTL" describe pv "$pv" >&2; return 1; fi
  done
  log "snapshot, restored and cloned volumes deleted"
}

check 1 "StorageClass -> PVC Bound -> RBD image with the journaling feature" check1
check 2 "pods write; plugin SIGKILLed, helm-upgraded, fallback; data intact" check2
check 3 "StatefulSet (2 replicas): data survives pod deletion and re-creation" check3
check 5 "Block-mode PVC consumed as a raw device" check5
check 6 "online expansion while pods write: xfs and Block PVCs grow" check6
check 7 "metrics: write counters and histograms move, journal lag returns to 0" check7
check 8 "VolumeSnapshot of a PVC in use -> restore and clone hold its data" check8
check 4 "PVC deletion removes the image and its journal" check4

echo
echo "e2e results (backend $BACKEND, kubernetes v1.33.13, $(date -u +%FT%TZ)):"
printf '  %s\n' "${RESULTS[@]}"
echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]

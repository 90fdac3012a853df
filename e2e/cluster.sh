#!/usr/bin/env bash
# A single-node Kubernetes for the e2e, everything on 127.0.0.1 and under $E2E_DIR:
# etcd (Debian's etcd-server), kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd (Debian) and a kubelet (node "localhost"). No pod network: pods use hostNetwork.
#
#   e2e/cluster.sh up      start (idempotent: a running cluster is reused)
#   e2e/cluster.sh down    stop everything it started (by pid file), unmount, restore the
#                          sysctls and iptables chains the kubelet changed
#
# Binaries: e2e/build-tools.sh (kube v1.33.13, cached outside the repository).
# Images to import at start: every *.tar in $E2E_DIR/images.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_DIR=${E2E_DIR:-/tmp/csi-rbdj-e2e}
TOOLS=${TOOLS:-${CSI_RBDJ_CACHE:-$HOME/.cache/csi-rbdj}/k8s/bin}
P=$E2E_DIR/pki L=$E2E_DIR/logs R=$E2E_DIR/run
export KUBECONFIG=$E2E_DIR/admin.kubeconfig
KUBECTL="$TOOLS/kubectl"
CTR=(ctr --address "$E2E_DIR/containerd/containerd.sock" -n k8s.io)
PAUSE_IMAGE=localhost/pause:e2e

log() { echo "[cluster $(date +%T.%3N)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A pid counts as running unless it is gone or a zombie.
running() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
alive() { [ -s "$R/$1.pid" ] && running "$(cat "$R/$1.pid")"; }

wait_for() { # name command [seconds]
  local i
  for i in $(seq 1 "${3:-60}"); do
    if eval "$2" >/dev/null 2>&1; then log "$1 ready (${i}s)"; return 0; fi
    sleep 1
  done
  log "$1 NOT ready after ${3:-60}s"
  return 1
}

start() { # name logfile command...
  local name=$1
  shift
  if alive "$name"; then return 0; fi
  setsid "$@" > "$L/$name.log" 2>&1 < /dev/null &
  echo $! > "$R/$name.pid"
}

stop() { # name: SIGTERM, then SIGKILL after 10 s
  local pid i
  [ -s "$R/$1.pid" ] || return 0
  pid=$(cat "$R/$1.pid")
  if running "$pid"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 20); do running "$pid" || break; sleep 0.5; done
    if running "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    log "stopped $1 ($pid)"
  fi
  rm -f "$R/$1.pid"
}

gen_certs() {
  [ -f "$P/admin.crt" ] && return 0
  mkdir -p "$P"
  (
    cd "$P"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=csi-rbdj-e2e-ca" 2>/dev/null
    cat > apiserver.ext <<X
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
X
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    client() { # name CN [O]
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$1.ext"
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2${3:+/O=$3}" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
    }
    client controller-manager system:kube-controller-manager
    client scheduler system:kube-scheduler
    client kubelet system:node:localhost system:nodes
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    client admin kubernetes-admin system:masters
  )
  local n
  for n in admin controller-manager scheduler kubelet; do
    cat > "$E2E_DIR/$n.kubeconfig" <<X
apiVersion: v1
kind: Config
clusters:
- cluster: {certificate-authority: $P/ca.crt, server: "https://127.0.0.1:6443"}
  name: e2e
users:
- name: $n
  user: {client-certificate: $P/$n.crt, client-key: $P/$n.key}
contexts:
- context: {cluster: e2e, user: $n}
  name: e2e
current-context: e2e
X
  done
}

write_configs() {
  mkdir -p "$E2E_DIR/containerd" "$E2E_DIR/kubelet/manifests" "$E2E_DIR/cni/net.d"
  cat > "$E2E_DIR/containerd/config.toml" <<X
version = 2
root = "$E2E_DIR/containerd/root"
state = "$E2E_DIR/containerd/state"
[grpc]
  address = "$E2E_DIR/containerd/containerd.sock"
[ttrpc]
  address = "$E2E_DIR/containerd/containerd.sock.ttrpc"
[debug]
  address = "$E2E_DIR/containerd/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # no CAP_SYS_RESOURCE here: a negative oom_score_adj (pause: -998) makes runc init fail
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$E2E_DIR/cni/net.d"
X
  # No pod network: every e2e pod uses hostNetwork. containerd reports the network
  # ready once a CNI config loads (plugins run only for non-hostNetwork pods, which
  # then fail plainly: this plugin type does not exist).
  cat > "$E2E_DIR/cni/net.d/10-hostnetwork-only.conflist" <<X
{"cniVersion": "0.4.0", "name": "e2e-hostnetwork-only", "plugins": [{"type": "e2e-hostnetwork-only"}]}
X
  cat > "$E2E_DIR/kubelet/config.yaml" <<X
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$E2E_DIR/containerd/containerd.sock
failSwapOn: false
failCgroupV1: false
staticPodPath: $E2E_DIR/kubelet/manifests
podLogsDir: $E2E_DIR/kubelet/podlogs
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
clusterDNS: [10.0.0.10]
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
registerNode: true
X
}

up() {
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
    [ -x "$TOOLS/$b" ] || die "$TOOLS/$b missing: run e2e/build-tools.sh"
  done
  for b in etcd etcdctl containerd ctr runc openssl; do
    command -v "$b" >/dev/null || die "$b missing: run e2e/install-deps.sh"
  done
  mkdir -p "$E2E_DIR" "$L" "$R"
  # Bidirectional and HostToContainer mount propagation need a shared mount under
  # the kubelet's directory and the node plugin's state: make $E2E_DIR one
  # (undone by down; / stays as it is).
  if ! mountpoint -q "$E2E_DIR"; then
    mount --bind "$E2E_DIR" "$E2E_DIR"
  fi
  mount --make-rshared "$E2E_DIR"
  gen_certs
  write_configs

  # etcd 3.4, fresh data each run
  if ! alive etcd; then
    rm -rf "$E2E_DIR/etcd-data"
    start etcd etcd --name e2e --data-dir "$E2E_DIR/etcd-data" --unsafe-no-fsync \
      --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
      --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
      --initial-cluster e2e=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
      --quota-backend-bytes 1073741824
  fi
  wait_for etcd "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health"

  start kube-apiserver "$TOOLS/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=Node,RBAC --allow-privileged=true \
    --enable-admission-plugins=NodeRestriction \
    --endpoint-reconciler-type=none --profiling=false \
    --kubelet-preferred-address-types=Hostname --kubelet-client-certificate="$P/admin.crt" --kubelet-client-key="$P/admin.key" \
    --v=1
  wait_for kube-apiserver "$KUBECTL get --raw /readyz" 90

  start kube-controller-manager "$TOOLS/kube-controller-manager" --kubeconfig="$E2E_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$E2E_DIR/controller-manager.kubeconfig" --authorization-kubeconfig="$E2E_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" --v=1
  start kube-scheduler "$TOOLS/kube-scheduler" --kubeconfig="$E2E_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$E2E_DIR/scheduler.kubeconfig" --authorization-kubeconfig="$E2E_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --v=1
  wait_for "default serviceaccount" "$KUBECTL -n default get sa default" 90

  start containerd containerd --config "$E2E_DIR/containerd/config.toml"
  wait_for containerd "${CTR[*]} version"
  local t
  for t in "$E2E_DIR"/images/*.tar; do
    [ -f "$t" ] || continue
    "${CTR[@]}" images import --all-platforms "$t" >/dev/null
    log "imported $(basename "$t")"
  done

  # The kubelet rewrites these VM-wide sysctls (and adds KUBE-* iptables chains):
  # record them once, down restores them.
  [ -s "$E2E_DIR/sysctl.orig" ] || sysctl vm.overcommit_memory vm.panic_on_oom kernel.panic \
    kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes | tr -d ' ' > "$E2E_DIR/sysctl.orig"
  start kubelet "$TOOLS/kubelet" --config="$E2E_DIR/kubelet/config.yaml" --kubeconfig="$E2E_DIR/kubelet.kubeconfig" \
    --root-dir="$E2E_DIR/kubelet/root" --cert-dir="$E2E_DIR/kubelet/pki" --hostname-override=localhost --v=2
  wait_for "node localhost" "$KUBECTL get node localhost" 90
  wait_for "node localhost Ready" "$KUBECTL wait --for=condition=Ready node/localhost --timeout=1s" 90
}

down() {
  if alive kubelet && [ -f "$KUBECONFIG" ]; then
    "$KUBECTL" delete pods --all -A --grace-period=5 --wait=true --timeout=90s >/dev/null 2>&1 || true
  fi
  stop kubelet
  stop kube-scheduler
  if alive containerd; then
    local t c
    for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    sleep 1
    for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # containerd's shims of this containerd only (their command line names its socket)
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $E2E_DIR/containerd/containerd.sock" || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  # What a node plugin left staged (it was stopped with the kubelet's pods): unmount,
  # detach its loop devices. Its journals keep every acknowledged write.
  if [ -d "$E2E_DIR/node/volumes" ] && [ -x "${CSI_RBDJ_BIN:-}" ]; then
    "$CSI_RBDJ_BIN" node-cleanup --state-dir "$E2E_DIR/node" >> "$L/node-cleanup.log" 2>&1 || true
  fi
  # Loop devices still backed by files under $E2E_DIR (FUSE files of a killed plugin).
  local dev
  for dev in $(losetup -n -O NAME,BACK-FILE 2>/dev/null | awk -v d="$E2E_DIR/" 'index($2, d) == 1 {print $1}'); do
    losetup -d "$dev" 2>/dev/null || true
  done
  # Every mount under $E2E_DIR (kubelet volumes, tmpfs secrets, overlays, FUSE), deepest first,
  # then $E2E_DIR's own bind mount.
  local m
  for m in $(awk -v d="$E2E_DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if mountpoint -q "$E2E_DIR"; then umount "$E2E_DIR" 2>/dev/null || umount -l "$E2E_DIR" || true; fi
  # Undo the kubelet's host changes: sysctls, iptables chains, cgroups.
  if [ -s "$E2E_DIR/sysctl.orig" ]; then
    sysctl -q -p "$E2E_DIR/sysctl.orig" && rm -f "$E2E_DIR/sysctl.orig"
  fi
  local ipt tb ch
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    "$ipt" -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
    "$ipt" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
    for tb in filter nat mangle; do
      for ch in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT KUBE-PROXY-CANARY; do
        "$ipt" -t "$tb" -F "$ch" 2>/dev/null || true
        "$ipt" -t "$tb" -X "$ch" 2>/dev/null || true
      done
    done
  done
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/k8s.io; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

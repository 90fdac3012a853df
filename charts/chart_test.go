package charts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

const (
	chartDir    = "csi-rbdj"
	kubeVersion = "1.33.13"
)

// helmBinary finds helm: $HELM, then the e2e's tool cache, then PATH. Without
// one the tests skip, unless CSI_RBDJ_REQUIRE_HELM is set (make test sets it).
func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	cache := os.Getenv("CSI_RBDJ_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "csi-rbdj")
		}
	}
	if h := filepath.Join(cache, "k8s", "bin", "helm"); cache != "" {
		if _, err := os.Stat(h); err == nil {
			return h
		}
	}
	if h, err := exec.LookPath("helm"); err == nil {
		return h
	}
	if os.Getenv("CSI_RBDJ_REQUIRE_HELM") != "" {
		t.Fatal("helm not found (build it with e2e/build-tools.sh helm, or set HELM)")
	}
	t.Skip("helm not found (e2e/build-tools.sh helm builds it)")
	return ""
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBinary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// Keep helm's own files out of $HOME.
	tmp := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+tmp, "HELM_CONFIG_HOME="+tmp, "HELM_DATA_HOME="+tmp)
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// decoder decodes the API types the chart renders, strictly: unknown and
// duplicate fields are errors, and so is any kind not registered here.
func decoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme, storagev1.AddToScheme,
		monitoringv1.AddToScheme, // the ServiceMonitor (metrics.serviceMonitor)
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// render runs helm template and decodes every document strictly.
func render(t *testing.T, args ...string) []runtime.Object {
	t.Helper()
	dec := decoder(t)
	var objs []runtime.Object
	for _, doc := range renderYAML(t, args...) {
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decode %v: %v\n%s", gvk, err, doc)
		}
		objs = append(objs, obj)
	}
	return objs
}

// renderYAML runs helm template and returns its documents that are more
// than comments.
func renderYAML(t *testing.T, args ...string) [][]byte {
	t.Helper()
	out, err := helm(t, append([]string{"template", "rbdj", chartDir, "--namespace", "csi-rbdj",
		"--kube-version", kubeVersion}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(doc) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			b.Write(line)
		}
	}
	return b.Bytes()
}

// find returns the objects of type T.
func find[T runtime.Object](objs []runtime.Object) []T {
	var r []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			r = append(r, v)
		}
	}
	return r
}

func one[T runtime.Object](t *testing.T, objs []runtime.Object) T {
	t.Helper()
	r := find[T](objs)
	if len(r) != 1 {
		var zero T
		t.Fatalf("%T: %d objects, want 1", zero, len(r))
	}
	return r[0]
}

func kinds(objs []runtime.Object) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, fmt.Sprintf("%T", o))
	}
	slices.Sort(ks)
	return ks
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// wantArgs fails the test for each of want that container c (named what)
// lacks in its args.
func wantArgs(t *testing.T, what string, c corev1.Container, want ...string) {
	t.Helper()
	for _, a := range want {
		if !slices.Contains(c.Args, a) {
			t.Errorf("%s args %v lack %s", what, c.Args, a)
		}
	}
}

func TestLint(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"-f", "testdata/all-options.yaml"},
		{"-f", "testdata/local.yaml"},
	} {
		out, err := helm(t, append([]string{"lint", "--strict", chartDir, "--kube-version", kubeVersion}, args...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.Contains(out, "0 chart(s) failed") {
			t.Fatalf("helm lint %v:\n%s", args, out)
		}
	}
}

func TestTemplateDefaults(t *testing.T) {
	objs := render(t)
	want := []string{
		"*v1.ClusterRole", "*v1.ClusterRoleBinding", "*v1.ConfigMap", "*v1.CSIDriver",
		"*v1.DaemonSet", "*v1.DaemonSet", "*v1.Deployment", "*v1.Role", "*v1.RoleBinding", // node plugin, fuse-holder
		"*v1.ServiceAccount", "*v1.ServiceAccount",
		"*v1.ClusterRole", "*v1.ClusterRoleBinding", // the resizer's
		"*v1.ClusterRole", "*v1.ClusterRoleBinding", // the node plugin's events
	}
	slices.Sort(want)
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Fatalf("objects %v, want %v", got, want)
	}

	d := one[*storagev1.CSIDriver](t, objs)
	if d.Name != "rbdj.csi-rbdj.dev" || d.Spec.AttachRequired == nil || *d.Spec.AttachRequired ||
		d.Spec.PodInfoOnMount == nil || !*d.Spec.PodInfoOnMount ||
		!slices.Equal(d.Spec.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) ||
		d.Spec.FSGroupPolicy == nil || *d.Spec.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("CSIDriver spec %+v", d.Spec)
	}

	dep := one[*appsv1.Deployment](t, objs)
	if n := len(dep.Spec.Template.Spec.Containers); n != 3 {
		t.Errorf("controller has %d containers, want csi-rbdj + csi-provisioner + csi-resizer (no attacher)", n)
	}
	prov := container(t, dep.Spec.Template.Spec, "csi-provisioner")
	if prov.Image != "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0" {
		t.Errorf("provisioner image %s", prov.Image)
	}
	rs := container(t, dep.Spec.Template.Spec, "csi-resizer")
	if rs.Image != "registry.k8s.io/sig-storage/csi-resizer:v1.14.0" {
		t.Errorf("resizer image %s", rs.Image)
	}
	wantArgs(t, "resizer", rs, "--csi-address=/csi/csi.sock", "--timeout=60s", "--handle-volume-inuse-error=false",
		"--leader-election=true", "--leader-election-namespace=csi-rbdj")
	ctl := container(t, dep.Spec.Template.Spec, "csi-rbdj")
	wantArgs(t, "controller", ctl, "--mode=controller", "--backend=ceph")

	ds := nodeDaemonSet(t, objs)
	node := container(t, ds.Spec.Template.Spec, "csi-rbdj")
	if node.SecurityContext == nil || node.SecurityContext.Privileged == nil || !*node.SecurityContext.Privileged {
		t.Error("node plugin is not privileged")
	}
	// Online ext4 growth (resize2fs on a mounted filesystem) needs CAP_SYS_RESOURCE.
	if c := node.SecurityContext.Capabilities; c == nil || !slices.Contains(c.Add, "SYS_RESOURCE") {
		t.Errorf("node plugin capabilities %+v lack SYS_RESOURCE", c)
	}
	wantArgs(t, "node", node, "--mode=node", "--kubelet-registration-dir=/var/lib/kubelet/plugins_registry",
		"--endpoint=unix:///var/lib/kubelet/plugins/rbdj.csi-rbdj.dev/csi.sock", "--state-dir=/var/lib/csi-rbdj/node")
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range node.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for path, prop := range map[string]corev1.MountPropagationMode{
		"/var/lib/kubelet": corev1.MountPropagationBidirectional, "/var/lib/csi-rbdj/node": corev1.MountPropagationBidirectional,
		"/dev": "", "/sys": "",
	} {
		m, ok := mounts[path]
		if !ok {
			t.Errorf("node plugin does not mount %s", path)
			continue
		}
		if got := ptrValue(m.MountPropagation); got != prop {
			t.Errorf("%s: propagation %q, want %q", path, got, prop)
		}
	}
	for _, sa := range find[*corev1.ServiceAccount](objs) {
		if strings.HasSuffix(sa.Name, "-node") && (sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken) {
			t.Error("node ServiceAccount mounts a token")
		}
	}
	checkNodeEvents(t, objs, true)
	checkLeastPrivilege(t, objs)
}

// checkNodeEvents: with node.events.enabled the node pod mounts a token and
// its ServiceAccount may create and patch events, nothing else; without,
// no token and no rule.
func checkNodeEvents(t *testing.T, objs []runtime.Object, enabled bool) {
	t.Helper()
	spec := nodeDaemonSet(t, objs).Spec.Template.Spec
	if got := ptrValue(spec.AutomountServiceAccountToken); got != enabled {
		t.Errorf("node pod mounts a token: %v, want %v", got, enabled)
	}
	if args := container(t, spec, "csi-rbdj").Args; !slices.Contains(args, fmt.Sprintf("--kubernetes-events=%v", enabled)) {
		t.Errorf("node args %v lack --kubernetes-events=%v", args, enabled)
	}
	var roles []string
	for _, b := range find[*rbacv1.ClusterRoleBinding](objs) {
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && strings.HasSuffix(s.Name, "-node") {
				roles = append(roles, b.RoleRef.Name)
			}
		}
	}
	for _, b := range find[*rbacv1.RoleBinding](objs) {
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && strings.HasSuffix(s.Name, "-node") {
				t.Errorf("node ServiceAccount bound to Role %s", b.RoleRef.Name)
			}
		}
	}
	if !enabled {
		if len(roles) > 0 {
			t.Errorf("node ServiceAccount bound to %v with events disabled", roles)
		}
		return
	}
	if len(roles) != 1 {
		t.Fatalf("node ServiceAccount bound to %v, want one ClusterRole", roles)
	}
	for _, r := range find[*rbacv1.ClusterRole](objs) {
		if r.Name != roles[0] {
			continue
		}
		if len(r.Rules) != 1 || !slices.Equal(r.Rules[0].APIGroups, []string{""}) || !slices.Equal(r.Rules[0].Resources, []string{"events"}) ||
			!slices.Equal(r.Rules[0].Verbs, []string{"create", "patch"}) {
			t.Errorf("node ClusterRole %s rules %+v: want events create, patch only", r.Name, r.Rules)
		}
		return
	}
	t.Errorf("node ClusterRole %s not rendered", roles[0])
}

func TestTemplateNodeEventsDisabled(t *testing.T) {
	checkNodeEvents(t, render(t, "--set", "node.events.enabled=false"), false)
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// checkLeastPrivilege: the provisioner's and resizer's rules are exactly the
// ones they need.
func checkLeastPrivilege(t *testing.T, objs []runtime.Object) {
	t.Helper()
	allowed := map[string]bool{
		"/persistentvolumes": true, "/persistentvolumeclaims": true, "storage.k8s.io/storageclasses": true,
		"/events": true, "storage.k8s.io/csinodes": true, "/nodes": true,
		"coordination.k8s.io/leases": true, "/secrets": true,
		"/persistentvolumeclaims/status": true, // the resizer
		// the csi-addons sidecar (csiAddons.enabled)
		"csiaddons.openshift.io/csiaddonsnodes": true, "/pods": true, "apps/replicasets": true, "apps/deployments/finalizers": true,
		// the snapshotter, and the provisioner's restores
		"snapshot.storage.k8s.io/volumesnapshots": true, "snapshot.storage.k8s.io/volumesnapshotcontents": true,
		"snapshot.storage.k8s.io/volumesnapshotclasses": true, "snapshot.storage.k8s.io/volumesnapshotcontents/status": true,
	}
	var rules []rbacv1.PolicyRule
	for _, r := range find[*rbacv1.ClusterRole](objs) {
		rules = append(rules, r.Rules...)
	}
	for _, r := range find[*rbacv1.Role](objs) {
		rules = append(rules, r.Rules...)
	}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				if !allowed[g+"/"+res] {
					t.Errorf("RBAC grants %s/%s %v", g, res, r.Verbs)
				}
				if res == "secrets" && (len(r.ResourceNames) == 0 || !slices.Equal(r.Verbs, []string{"get"})) {
					t.Errorf("secrets rule %+v: want get on named secrets only", r)
				}
				if res == "persistentvolumeclaims/status" && !slices.Equal(r.Verbs, []string{"patch"}) {
					t.Errorf("persistentvolumeclaims/status rule %+v: want patch only", r)
				}
				if strings.HasPrefix(res, "volumesnapshot") && slices.Contains(r.Verbs, "delete") {
					t.Errorf("%s rule %+v: the snapshotter deletes no API objects", res, r)
				}
				if res == "nodes" && slices.ContainsFunc(r.Verbs, func(v string) bool { return v != "get" && v != "list" && v != "watch" }) {
					t.Errorf("nodes rule %+v: want read only", r)
				}
			}
		}
	}
}

func TestTemplateAllOptions(t *testing.T) {
	objs := render(t, "-f", "testdata/all-options.yaml")
	sc := one[*storagev1.StorageClass](t, objs)
	wantParams := map[string]string{
		"pool": "kube", "clusterID": "dr", "journalOrder": "22", "journalSplayWidth": "8",
		"ackPolicy": "journaled", "csi.storage.k8s.io/fstype": "xfs",
		"imageFeatures": "layering,exclusive-lock,journaling,deep-flatten", "objectOrder": "23",
		"mirroring": "journal", "journalMaxConcurrentObjectSets": "16",
		"csi.storage.k8s.io/provisioner-secret-name":            "rbdj-ceph-creds",
		"csi.storage.k8s.io/provisioner-secret-namespace":       "csi-rbdj",
		"csi.storage.k8s.io/node-stage-secret-name":             "rbdj-ceph-creds",
		"csi.storage.k8s.io/node-stage-secret-namespace":        "csi-rbdj",
		"csi.storage.k8s.io/controller-expand-secret-name":      "rbdj-ceph-creds",
		"csi.storage.k8s.io/controller-expand-secret-namespace": "csi-rbdj",
	}
	if !maps.Equal(sc.Parameters, wantParams) {
		t.Errorf("StorageClass parameters %v, want %v", sc.Parameters, wantParams)
	}
	if sc.Provisioner != "rbdj.example.com" || ptrValue(sc.ReclaimPolicy) != corev1.PersistentVolumeReclaimRetain ||
		ptrValue(sc.VolumeBindingMode) != storagev1.VolumeBindingWaitForFirstConsumer ||
		ptrValue(sc.AllowVolumeExpansion) || !slices.Equal(sc.MountOptions, []string{"noatime", "discard"}) ||
		sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" {
		t.Errorf("StorageClass %+v", sc)
	}
	secret := one[*corev1.Secret](t, objs)
	if secret.Name != "rbdj-ceph-creds" || secret.StringData["userID"] != "kubernetes" || secret.StringData["userKey"] == "" {
		t.Errorf("Secret %s %v", secret.Name, secret.StringData)
	}
	cm := one[*corev1.ConfigMap](t, objs)
	if want := `[{"clusterID":"prod-1","monitors":["10.1.0.1:6789","[v2:10.1.0.2:3300,v1:10.1.0.2:6789]"]},{"clusterID":"dr","monitors":["10.2.0.1:6789"],"pools":["kube"]}]`; cm.Data["config.json"] != want {
		t.Errorf("config.json = %s, want %s", cm.Data["config.json"], want)
	}
	ds := nodeDaemonSet(t, objs)
	node := container(t, ds.Spec.Template.Spec, "csi-rbdj")
	wantArgs(t, "node", node, "--kubelet-registration-dir=/var/lib/k0s/kubelet/plugins_registry",
		"--endpoint=unix:///var/lib/k0s/kubelet/plugins/rbdj.example.com/csi.sock",
		"--journal-commit-age=2s", "--ceph-op-timeout=1m", "--ceph-config=/etc/csi-rbdj/config/config.json", "--ceph-credentials-dir=/etc/csi-rbdj/credentials", "--request-timeout=2m", "--max-volumes-per-node=64", "-v=4")
	dep := one[*appsv1.Deployment](t, objs)
	prov := container(t, dep.Spec.Template.Spec, "csi-provisioner")
	if !slices.Contains(prov.Args, "--worker-threads=20") || !slices.Contains(prov.Args, "--timeout=2m30s") ||
		!slices.Contains(prov.Env, corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: "127.0.0.1"}) {
		t.Errorf("provisioner args %v env %v", prov.Args, prov.Env)
	}
	rs := container(t, dep.Spec.Template.Spec, "csi-resizer")
	if rs.Image != "registry.example.com/sig-storage/csi-resizer:v1.14.0" || rs.ImagePullPolicy != corev1.PullAlways ||
		!slices.Contains(rs.Args, "--workers=20") || !slices.Contains(rs.Args, "--timeout=3m") ||
		!slices.Contains(rs.Args, "--leader-election=false") || !slices.Contains(rs.Args, "--v=4") ||
		slices.ContainsFunc(rs.Args, func(a string) bool { return strings.HasPrefix(a, "--leader-election-namespace") }) ||
		!slices.Contains(rs.Env, corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: "127.0.0.1"}) ||
		rs.Resources.Requests.Memory().String() != "32Mi" {
		t.Errorf("resizer %s %s args %v env %v resources %v", rs.Image, rs.ImagePullPolicy, rs.Args, rs.Env, rs.Resources)
	}
	checkLeastPrivilege(t, objs)
}

// TestTemplateCSIAddons: csiAddons.enabled serves the csi-addons socket
// next to the CSI one and runs the csi-addons sidecar on it; off by
// default.
func TestTemplateCSIAddons(t *testing.T) {
	dep := one[*appsv1.Deployment](t, render(t))
	for _, c := range dep.Spec.Template.Spec.Containers {
		if c.Name == "csi-addons" || slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--csi-addons-endpoint") }) {
			t.Errorf("csi-addons rendered by default (container %s %v)", c.Name, c.Args)
		}
	}
	objs := render(t, "-f", "testdata/all-options.yaml")
	dep = one[*appsv1.Deployment](t, objs)
	ctrl := container(t, dep.Spec.Template.Spec, "csi-rbdj")
	wantArgs(t, "controller", ctrl, "--csi-addons-endpoint=unix:///csi/csi-addons.sock")
	sc := container(t, dep.Spec.Template.Spec, "csi-addons")
	wantArgs(t, "sidecar", sc, "--csi-addons-address=unix:///csi/csi-addons.sock", "--controller-port=9171", "--pod=$(POD_NAME)",
		"--namespace=$(POD_NAMESPACE)", "--pod-uid=$(POD_UID)", "--node-id=$(NODE_ID)", "--v=5", "--enable-auth=false")
	if sc.Image != "registry.example.com/csiaddons/k8s-sidecar:v0.12.0" || len(sc.Ports) != 1 || sc.Ports[0].ContainerPort != 9171 ||
		len(sc.VolumeMounts) != 1 || sc.VolumeMounts[0].MountPath != "/csi" {
		t.Errorf("sidecar %s ports %v mounts %v", sc.Image, sc.Ports, sc.VolumeMounts)
	}
	var env []string
	for _, e := range sc.Env {
		env = append(env, e.Name)
	}
	for _, e := range []string{"NODE_ID", "POD_NAME", "POD_NAMESPACE", "POD_UID", "KUBERNETES_SERVICE_HOST"} {
		if !slices.Contains(env, e) {
			t.Errorf("sidecar env %v lacks %s", env, e)
		}
	}
	var found bool
	for _, r := range find[*rbacv1.Role](objs) {
		found = found || strings.HasSuffix(r.Name, "-csi-addons")
	}
	if !found {
		t.Error("no Role for the csi-addons sidecar")
	}
}

func TestTemplateLocal(t *testing.T) {
	objs := render(t, "-f", "testdata/local.yaml")
	if n := len(find[*corev1.Secret](objs)) + len(find[*corev1.ConfigMap](objs)); n != 0 {
		t.Errorf("local backend renders %d Ceph config objects", n)
	}
	sc := one[*storagev1.StorageClass](t, objs)
	for k := range sc.Parameters {
		if k == "clusterID" || strings.Contains(k, "secret") {
			t.Errorf("local StorageClass has parameter %s (the driver refuses unknown parameters)", k)
		}
	}
	dep := one[*appsv1.Deployment](t, objs)
	ds := nodeDaemonSet(t, objs)
	for _, spec := range []corev1.PodSpec{dep.Spec.Template.Spec, ds.Spec.Template.Spec} {
		a := spec.Affinity
		if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			t.Fatal("local backend pod not pinned to local.nodeName")
		}
		term := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0]
		if term.Key != "kubernetes.io/hostname" || !slices.Equal(term.Values, []string{"localhost"}) {
			t.Errorf("affinity %+v", term)
		}
		c := container(t, spec, "csi-rbdj")
		wantArgs(t, "csi-rbdj", c, "--backend=local", "--local-dir=/tmp/csi-rbdj-e2e/local")
	}
	role := one[*rbacv1.Role](t, objs)
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Resources, []string{"leases"}) {
		t.Errorf("local Role rules %+v: want leases only (no secrets)", role.Rules)
	}
	if !ptrValue(sc.AllowVolumeExpansion) {
		t.Error("local StorageClass does not allow volume expansion")
	}
}

// TestTemplateNoResizer: without the external-resizer nothing of it is
// rendered, and the StorageClass does not offer expansion (PVCs would wait
// for a resizer forever).
func TestTemplateNoResizer(t *testing.T) {
	objs := render(t, "--set", "controller.resizer.enabled=false", "--set", "storageClass.create=true")
	dep := one[*appsv1.Deployment](t, objs)
	for _, c := range dep.Spec.Template.Spec.Containers {
		if c.Name == "csi-resizer" {
			t.Error("resizer container rendered while disabled")
		}
	}
	for _, r := range find[*rbacv1.ClusterRole](objs) {
		if strings.HasSuffix(r.Name, "-resizer") {
			t.Errorf("resizer ClusterRole %s rendered while disabled", r.Name)
		}
	}
	sc := one[*storagev1.StorageClass](t, objs)
	if ptrValue(sc.AllowVolumeExpansion) {
		t.Error("StorageClass allows expansion without a resizer")
	}
	for k := range sc.Parameters {
		if strings.Contains(k, "controller-expand") {
			t.Errorf("StorageClass has %s without a resizer", k)
		}
	}
	checkLeastPrivilege(t, objs)
}

// The schema is strict: unknown keys and bad values fail before rendering.
func TestSchemaRejects(t *testing.T) {
	for _, set := range []string{
		"bogus=1",
		"storageClass.bogus=1",
		"node.stateDir=relative/path",
		"backend=rados",
		"storageClass.fsType=btrfs",
		"storageClass.journalOrder=30",
		"storageClass.ackPolicy=never",
		"storageClass.mirroring=snapshot",
		"storageClass.journalMaxConcurrentObjectSets=-1",
		"controller.provisioner.timeout=soon",
		"controller.resizer.timeout=soon",
		"controller.resizer.bogus=1",
		"storageClass.allowVolumeExpansion=maybe",
	} {
		if _, err := helm(t, "template", "rbdj", chartDir, "--set", set); err == nil {
			t.Errorf("--set %s accepted", set)
		}
	}
	// Required values.
	for _, args := range [][]string{
		{"--set", "backend=local"},           // no local.nodeName
		{"--set", "ceph.secret.create=true"}, // no userKey
	} {
		if _, err := helm(t, append([]string{"template", "rbdj", chartDir}, args...)...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestTemplateSnapshotter: with controller.snapshotter.enabled the
// csi-snapshotter sidecar runs next to the provisioner with its own
// ClusterRole (least privilege), and the provisioner may read
// VolumeSnapshots (restores); disabled (the default) nothing of it exists.
func TestTemplateSnapshotter(t *testing.T) {
	objs := render(t, "--set", "controller.snapshotter.enabled=true", "--set", "controller.snapshotter.extraArgs[0]=--worker-threads=4")
	dep := one[*appsv1.Deployment](t, objs)
	ss := container(t, dep.Spec.Template.Spec, "csi-snapshotter")
	if ss.Image != "registry.k8s.io/sig-storage/csi-snapshotter:v8.2.0" {
		t.Errorf("snapshotter image %s", ss.Image)
	}
	wantArgs(t, "snapshotter", ss, "--csi-address=/csi/csi.sock", "--timeout=60s", "--leader-election=true",
		"--leader-election-namespace=csi-rbdj", "--worker-threads=4")
	roles := map[string]bool{}
	for _, r := range find[*rbacv1.ClusterRole](objs) {
		roles[r.Name] = true
		if strings.HasSuffix(r.Name, "-provisioner") && !slices.ContainsFunc(r.Rules, func(p rbacv1.PolicyRule) bool {
			return slices.Contains(p.Resources, "volumesnapshots")
		}) {
			t.Error("the provisioner may not read VolumeSnapshots (restores)")
		}
	}
	if !roles["rbdj-csi-rbdj-snapshotter"] {
		t.Errorf("no snapshotter ClusterRole in %v", roles)
	}
	checkLeastPrivilege(t, objs)

	for _, c := range one[*appsv1.Deployment](t, render(t)).Spec.Template.Spec.Containers {
		if c.Name == "csi-snapshotter" {
			t.Error("snapshotter rendered by default")
		}
	}
}

// daemonSet returns the DaemonSet whose name ends in suffix.
func daemonSet(t *testing.T, objs []runtime.Object, suffix string) *appsv1.DaemonSet {
	t.Helper()
	var r []*appsv1.DaemonSet
	for _, ds := range find[*appsv1.DaemonSet](objs) {
		if strings.HasSuffix(ds.Name, suffix) {
			r = append(r, ds)
		}
	}
	if len(r) != 1 {
		t.Fatalf("%d DaemonSets named *%s, want 1", len(r), suffix)
	}
	return r[0]
}

// nodeDaemonSet returns the node plugin's DaemonSet.
func nodeDaemonSet(t *testing.T, objs []runtime.Object) *appsv1.DaemonSet {
	t.Helper()
	return daemonSet(t, objs, "-node")
}

// TestTemplateFuseHolder: the holder is its own DaemonSet, never rolled by
// an upgrade (OnDelete), unprivileged, sharing only its socket directory
// with the node plugin, which is pointed at the socket; disabled, neither
// is rendered.
func TestTemplateFuseHolder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		enabled bool
		sock    string
	}{
		{"default", nil, true, "/run/csi-rbdj-holder/holder.sock"},
		{"all-options", []string{"-f", "testdata/all-options.yaml"}, true, "/run/rbdj-holder/holder.sock"},
		{"disabled", []string{"--set", "node.fuseHolder.enabled=false"}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.args...)
			node := container(t, nodeDaemonSet(t, objs).Spec.Template.Spec, "csi-rbdj")
			hasArg := slices.ContainsFunc(node.Args, func(a string) bool { return strings.HasPrefix(a, "--fuse-holder-socket=") })
			if !tc.enabled {
				if n := len(find[*appsv1.DaemonSet](objs)); n != 1 || hasArg {
					t.Errorf("holder disabled: %d DaemonSets, plugin args %v", n, node.Args)
				}
				return
			}
			wantArgs(t, "plugin", node, "--fuse-holder-socket="+tc.sock)
			ds := daemonSet(t, objs, "-fuse-holder")
			if ds.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType {
				t.Errorf("holder update strategy %v, want OnDelete (a helm upgrade must not replace it)", ds.Spec.UpdateStrategy.Type)
			}
			spec := ds.Spec.Template.Spec
			h := container(t, spec, "fuse-holder")
			if !slices.Equal(h.Args[:2], []string{"fuse-holder", "--socket=" + tc.sock}) {
				t.Errorf("holder args %v", h.Args)
			}
			if sc := h.SecurityContext; sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("holder security context %+v: want unprivileged, all capabilities dropped", sc)
			}
			dir := filepath.Dir(tc.sock)
			if len(spec.Volumes) != 1 || spec.Volumes[0].HostPath == nil || spec.Volumes[0].HostPath.Path != dir ||
				len(h.VolumeMounts) != 1 || h.VolumeMounts[0].MountPath != dir {
				t.Errorf("holder volumes %+v mounts %+v: want only the socket directory %s", spec.Volumes, h.VolumeMounts, dir)
			}
			if !slices.ContainsFunc(node.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == dir }) {
				t.Errorf("plugin does not mount the holder's socket directory %s", dir)
			}
			if ptrValue(spec.AutomountServiceAccountToken) {
				t.Error("holder mounts a service account token")
			}
		})
	}
}

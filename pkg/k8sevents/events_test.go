package k8sevents

import (
	"context"
	"errors"
	"testing"
	"time"

	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestRecorder is a unit test of the recorder's logic against client-go's
// fake clientset (no API server): with the RBAC allowed (the
// SelfSubjectAccessReview answers allowed) an event lands on the
// PersistentVolume, in namespace default, with reason, type, message and
// source; without it New returns ErrForbidden and records nothing.
func TestRecorder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allowed map[string]bool // verb -> allowed
		err     error
	}{
		{"allowed", map[string]bool{"create": true, "patch": true}, nil},
		{"no create", map[string]bool{"patch": true}, ErrForbidden},
		{"no patch", map[string]bool{"create": true}, ErrForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cs := fake.NewClientset()
			var asked []string
			cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				r := a.(k8stesting.CreateAction).GetObject().(*authv1.SelfSubjectAccessReview).DeepCopy()
				ra := r.Spec.ResourceAttributes
				asked = append(asked, ra.Verb+" "+ra.Resource+" in "+ra.Namespace)
				r.Status.Allowed = tc.allowed[ra.Verb] && ra.Resource == "events" && ra.Namespace == metav1.NamespaceDefault
				return true, r, nil
			})
			rec, err := New(ctx, cs, "csi-rbdj-node", "node-1")
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("New: %v, want %v (asked %v)", err, tc.err, asked)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v (asked %v)", err, asked)
			}
			defer rec.Shutdown()
			rec.PersistentVolumeEvent("pvc-1234", corev1.EventTypeWarning, "ReplicatorDisconnected", "rbd-mirror fell behind")
			var evs []corev1.Event
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				l, err := cs.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if evs = l.Items; len(evs) > 0 {
					break
				}
			}
			if len(evs) != 1 {
				t.Fatalf("events in namespace default: %d, want 1", len(evs))
			}
			e := evs[0]
			if e.InvolvedObject.Kind != "PersistentVolume" || e.InvolvedObject.Name != "pvc-1234" || e.Type != corev1.EventTypeWarning ||
				e.Reason != "ReplicatorDisconnected" || e.Message != "rbd-mirror fell behind" || e.Source.Component != "csi-rbdj-node" || e.Source.Host != "node-1" {
				t.Fatalf("event %+v", e)
			}
		})
	}
}

// TestNewInClusterOutsideAPod: outside a pod there is no recorder, with
// ErrNotInCluster (the node plugin then only logs).
func TestNewInClusterOutsideAPod(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if _, err := NewInCluster(context.Background(), "csi-rbdj-node", "node-1"); !errors.Is(err, ErrNotInCluster) {
		t.Fatalf("NewInCluster outside a pod: %v, want ErrNotInCluster", err)
	}
}

// Package k8sevents records Kubernetes events about volumes for the node
// plugin, which otherwise has no Kubernetes client: the kubelet passes it
// everything it needs in CSI calls. Events are optional: outside a
// cluster, or without the RBAC to create events, the plugin only logs
// (New says why and returns nil).
//
// An event about a volume is recorded on its PersistentVolume, whose name
// the node knows from the volume context (volume.CtxPVName, which
// CreateVolume copies from the external-provisioner's
// --extra-create-metadata parameters). PersistentVolumes are
// cluster-scoped, so their events go to the "default" namespace, as
// client-go records them.
package k8sevents

import (
	"context"
	"errors"
	"fmt"
	"time"

	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// ErrNotInCluster: the process does not run in a pod with a service
// account token (rest.InClusterConfig failed).
var ErrNotInCluster = errors.New("not running in a Kubernetes pod with a service account token")

// ErrForbidden: the service account may not create events.
var ErrForbidden = errors.New("the service account may not create events")

// Recorder records events on PersistentVolumes. Its methods do not block
// (client-go's broadcaster sends in the background): they may be called
// with locks held, e.g. from a journal's commit path.
type Recorder struct {
	rec         record.EventRecorder
	broadcaster record.EventBroadcaster
}

// accessTimeout bounds New's check of the RBAC.
const accessTimeout = 10 * time.Second

// NewInCluster is New with the in-cluster configuration. Outside a pod it
// returns ErrNotInCluster.
func NewInCluster(ctx context.Context, component, node string) (*Recorder, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotInCluster, err)
	}
	cfg.UserAgent = component
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return New(ctx, cs, component, node)
}

// New returns a recorder that sends events through cs as component on
// host node, after checking (SelfSubjectAccessReview) that it may create
// events in the namespace of PersistentVolumes' events: ErrForbidden if
// not. Stop it with Shutdown.
func New(ctx context.Context, cs kubernetes.Interface, component, node string) (*Recorder, error) {
	actx, cancel := context.WithTimeout(ctx, accessTimeout)
	defer cancel()
	for _, verb := range []string{"create", "patch"} {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(actx, &authv1.SelfSubjectAccessReview{Spec: authv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authv1.ResourceAttributes{Namespace: metav1.NamespaceDefault, Verb: verb, Resource: "events"}}}, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("check whether the service account may %s events: %w", verb, err)
		}
		if !r.Status.Allowed {
			return nil, fmt.Errorf("%w (%s in namespace %s: %s)", ErrForbidden, verb, metav1.NamespaceDefault, r.Status.Reason)
		}
	}
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	return &Recorder{rec: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: node}), broadcaster: b}, nil
}

// PersistentVolumeEvent records an event (corev1.EventTypeNormal or
// EventTypeWarning) on PersistentVolume pv.
func (r *Recorder) PersistentVolumeEvent(pv, eventType, reason, message string) {
	r.rec.Event(pvRef(pv), eventType, reason, message)
}

// Shutdown stops the recorder; events not sent yet may be lost.
func (r *Recorder) Shutdown() { r.broadcaster.Shutdown() }

// pvRef is what the event names as its object. UID unknown: the name
// identifies a PersistentVolume (kubectl describe pv finds its events by
// name and kind).
func pvRef(name string) runtime.Object {
	return &corev1.ObjectReference{Kind: "PersistentVolume", APIVersion: "v1", Name: name, UID: types.UID("")}
}

// Log is how a caller reports why there is no recorder.
func Log(logger klog.Logger, err error) {
	switch {
	case errors.Is(err, ErrNotInCluster):
		logger.Info("Kubernetes events are off (not running in a pod with a service account token): volume conditions are only logged", "reason", err.Error())
	case errors.Is(err, ErrForbidden):
		logger.Info("Kubernetes events are off (the service account may not create events: chart value node.events.enabled): volume conditions are only logged", "reason", err.Error())
	default:
		logger.Error(err, "Kubernetes events are off: volume conditions are only logged")
	}
}

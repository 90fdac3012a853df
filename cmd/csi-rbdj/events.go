package main

import (
	"context"

	"github.com/csi-rbdj/csi-rbdj/pkg/k8sevents"
	"github.com/csi-rbdj/csi-rbdj/pkg/nodeserver"
	"k8s.io/klog/v2"
)

// nodeEvents is the node plugin's Kubernetes event recorder: in a pod whose
// service account may create events (chart value node.events.enabled),
// client-go with the in-cluster configuration; otherwise none (nil), and
// the conditions are only logged. The returned function stops it.
func nodeEvents(ctx context.Context, c serveConfig) (nodeserver.EventRecorder, func()) {
	logger := klog.FromContext(ctx)
	if !c.kubernetesEvents {
		logger.Info("Kubernetes events are off (--kubernetes-events=false): volume conditions are only logged")
		return nil, func() {}
	}
	rec, err := k8sevents.NewInCluster(ctx, "csi-rbdj-node", c.nodeID)
	if err != nil {
		k8sevents.Log(logger, err)
		return nil, func() {}
	}
	logger.Info("Recording Kubernetes events on PersistentVolumes", "component", "csi-rbdj-node")
	return rec, rec.Shutdown
}

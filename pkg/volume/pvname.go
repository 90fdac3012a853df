package volume

// CtxPVName is the name of the volume's PersistentVolume. The
// external-provisioner passes it to CreateVolume as a parameter (with
// --extra-create-metadata, which the chart sets); CreateVolume echoes it
// in the volume context (WithPVName), which becomes the PV's
// volumeAttributes, so that the node plugin can record Kubernetes events
// on the PV (a static PV may set it by hand). Nothing else depends on it.
const CtxPVName = ignoredParamPrefix + "pv/name"

// WithPVName adds CtxPVName from CreateVolume's parameters to a volume
// context, if the parameters carry it.
func WithPVName(vc, params map[string]string) map[string]string {
	if pv := params[CtxPVName]; pv != "" {
		if vc == nil {
			vc = map[string]string{}
		}
		vc[CtxPVName] = pv
	}
	return vc
}

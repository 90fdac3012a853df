// Package charts holds the Helm chart (csi-rbdj/) and its tests: `helm lint`, and
// every object `helm template` renders, decoded strictly into its Kubernetes API type.
package charts

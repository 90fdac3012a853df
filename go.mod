module github.com/csi-rbdj/csi-rbdj

go 1.26

require (
	github.com/go-logr/logr v1.4.1 // indirect
	github.com/hanwen/go-fuse/v2 v2.12.1 // indirect
	golang.org/x/sys v0.38.0 // indirect
	k8s.io/klog/v2 v2.130.1 // indirect
)

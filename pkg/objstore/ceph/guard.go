//go:build ceph && !pacific

package ceph

// go-ceph v0.34.0 links against Ceph 16 (Debian 12) only with the build tag
// `pacific`: build with -tags ceph,pacific.
var _ = this_package_needs_the_build_tags_ceph_and_pacific

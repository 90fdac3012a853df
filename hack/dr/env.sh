# Sourced by the DR scripts. One CEPH_CONF for every client with $cluster
# left literal: librados expands it per connection, so `rbd --cluster site-a`
# reads conf/site-a.conf and an rbd-mirror daemon finds its peer's conf the
# same way (the rbd-mirror recipe). No /etc/ceph needed.
PM=${MIRROR_DIR:?MIRROR_DIR must name the DR work dir}
export CEPH_CONF="$PM/conf/\$cluster.conf"

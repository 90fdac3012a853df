# csi-rbdj container image: one binary serving the controller and the node plugin.
# hack/build-image.sh assembles the same runtime image as an OCI archive without a
# container engine (from the built binary and the same Debian 12 packages).
#
#   docker build -t csi-rbdj:dev .
#   docker build --build-arg GOTAGS= -t csi-rbdj:dev-local .   # without Ceph support

# ---- build ---------------------------------------------------------------------
FROM golang:1.26-bookworm AS build
# The Ceph backend: go-ceph (tag pacific) links against Debian 12's Ceph 16 libraries.
ARG GOTAGS=ceph,pacific
ARG VERSION=dev
RUN apt-get update \
 && apt-get install -y --no-install-recommends librados-dev libradospp-dev librbd-dev g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath ${GOTAGS:+-tags "$GOTAGS"} \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/csi-rbdj ./cmd/csi-rbdj

# ---- runtime -------------------------------------------------------------------
FROM debian:12-slim
# librados2/librbd1: the Ceph client libraries; e2fsprogs/xfsprogs: mkfs and fsck;
# util-linux/mount: mount, umount, blkid, blockdev; fuse3: FUSE (the journaled device
# is a loop device over an in-process FUSE file).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      librados2 librbd1 e2fsprogs xfsprogs util-linux mount fuse3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY --from=build /out/csi-rbdj /usr/local/bin/csi-rbdj
ENTRYPOINT ["/usr/local/bin/csi-rbdj"]

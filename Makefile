# csi-rbdj — see README.md. Every target is idempotent.
SHELL := /bin/bash
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
# Packages that need Ceph's C libraries are behind the `ceph` build tag
# (with `pacific` for go-ceph); everything else builds and tests without them.
# Build tags of the Ceph backend: `ceph` selects this project's Ceph code,
# `pacific` makes go-ceph link against Debian 12's Ceph 16 libraries.
CEPHTAGS ?= ceph,pacific
# Build tags of bin/csi-rbdj: the Ceph backend whenever its C headers and a
# C++ compiler are installed (hack/install-deps.sh ceph: librados-dev,
# libradospp-dev, librbd-dev, g++), otherwise none: a pure-Go binary with
# the local backend only (`make demo` on a machine without Ceph). Evaluated
# when the binary is built. Force one with `make build GOTAGS=` or
# `make build GOTAGS=ceph,pacific`.
CEPH_DEV = $(shell test -f /usr/include/rados/librados.h && test -f /usr/include/rados/librados.hpp && test -f /usr/include/rbd/librbd.h && command -v g++ >/dev/null && echo yes)
GOTAGS ?= $(if $(CEPH_DEV),$(CEPHTAGS))
# Packages with Ceph-only tests (files behind the `ceph` build tag).
CEPHPKGS = $(shell grep -rlE --include='*_test.go' '^//go:build.*\bceph\b' pkg cmd 2>/dev/null | xargs -rn1 dirname | sort -u | sed 's|^|./|')
# A package that runs past this is hung: fail it inside CI's budget rather than
# after 30 minutes. The slowest, pkg/blockdev with the Ceph tags, took 6-14 min on
# a loaded 2-core machine (restart, snapshot, clone and metadata-mode crash tests).
TESTFLAGS ?= -count=1 -timeout 20m
FUZZTIME ?= 30s

.PHONY: all build demo test e2e helm deps vet vet-ceph unit unit-noceph unit-ceph test-ceph ceph-up ceph-down fuzz bench bench-go clean csi-sanity dr-drill dr-up dr-down

all: build

build:
	$(GO) build $(if $(GOTAGS),-tags '$(GOTAGS)') -o bin/csi-rbdj ./cmd/csi-rbdj
	@echo "bin/csi-rbdj: $(if $(GOTAGS),with Ceph support (tags $(GOTAGS)),without Ceph support (no GOTAGS: the Ceph headers are missing, hack/install-deps.sh ceph installs them))"

## demo: the driver's main job end to end on the embedded local backend
## (as root: loop devices, FUSE and mounts; installs e2fsprogs etc. first).
demo: deps build
	./bin/csi-rbdj demo

## test: install what the tests need (Ceph included), start the single-node
## Ceph test cluster, then run the whole suite: vet (plain and with the Ceph
## tags), the unit tests, the Ceph tests against the cluster, the two-site
## disaster-recovery drill (make dr-drill: ~7.5 min), and the end-to-end
## test on a real Kubernetes (make e2e: ~5 min with the Kubernetes binaries cached
## in ~/.cache/csi-rbdj/k8s, ~18 min more on a machine that has to build them).
## The unit tests of the packages with Ceph tests run once, in unit-ceph (their
## build with the Ceph tags has every test the plain one has).
test: deps ceph-up vet vet-ceph unit-noceph unit-ceph dr-drill e2e

## test-ceph: only the Ceph side (cluster, vet and tests with the Ceph tags).
test-ceph: deps ceph-up vet-ceph unit-ceph

## ceph-up / ceph-down: the single-node Ceph cluster of the tests
## (hack/ceph-up.sh; state in /var/tmp/csi-rbdj-ceph unless CEPH_DIR is set).
ceph-up:
	./hack/ceph-up.sh >/dev/null

ceph-down:
	./hack/ceph-down.sh --wipe

deps:
	./hack/install-deps.sh

## dr-drill: the disaster-recovery drill (hack/dr-drill.sh): two single-node
## clusters (mon ports 4100, 4200) and rbd-mirror both ways on this machine,
## the two-site tests (pkg/driver TestDR*: failover after SIGKILL of site-a's
## node plugin, failback, never-synced replica, laggy replicator, csi-addons),
## then everything torn down, also on failure (~5 min). Log: _output/dr-drill.log.
dr-drill: deps
	./hack/dr-drill.sh

## dr-up / dr-down: only the two-site setup (CSI_RBDJ_DR_DIR=/var/tmp/csi-rbdj-dr
## go test -tags ceph,pacific -run TestDR ./pkg/driver/ then runs the tests against it).
dr-up:
	./hack/dr-up.sh

dr-down:
	./hack/dr-down.sh --wipe

# vet, vet-ceph: go vet, gofmt, then staticcheck and logcheck (hack/lint.sh;
# the tools are built once into ~/.cache/csi-rbdj/tools).
vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	./hack/lint.sh

vet-ceph:
	$(GO) vet -tags '$(CEPHTAGS)' ./...
	./hack/lint.sh $(CEPHTAGS)

# CSI_RBDJ_REQUIRE_HELM=1: the chart tests (charts/) fail instead of skipping without helm.
unit: helm
	CSI_RBDJ_REQUIRE_HELM=1 $(GO) test $(TESTFLAGS) ./...

# unit-noceph: the unit tests of the packages without Ceph tests (unit-ceph runs the others).
# The list is made in the recipe: make 4.3's $(shell) does not see the PATH exported above.
MODULE = github.com/csi-rbdj/csi-rbdj
unit-noceph: helm
	pkgs=$$($(GO) list ./... | sed 's|^$(MODULE)|.|' | grep -vxF -f <(printf '%s\n' $(CEPHPKGS))) && \
		test -n "$$pkgs" && CSI_RBDJ_REQUIRE_HELM=1 $(GO) test $(TESTFLAGS) $$pkgs

## helm: helm v3.22.0 built from its Go module into ~/.cache/csi-rbdj/k8s/bin (the chart tests use it).
helm:
	./e2e/build-tools.sh helm >/dev/null

## e2e: the Helm chart on a real single-node Kubernetes v1.33.13 (as root): builds or reuses
## the Kubernetes binaries (~/.cache/csi-rbdj/k8s), the image, starts etcd, the control
## plane, containerd and a kubelet, installs the chart and runs the six checks, then tears
## everything down. E2E_BACKEND=local|ceph|auto (default auto: ceph when the binary has it).
e2e: deps
	./e2e/run.sh

# CSI_RBDJ_REQUIRE_CEPH=1: a test that finds no cluster fails instead of skipping.
unit-ceph:
	CSI_RBDJ_REQUIRE_CEPH=1 $(GO) test $(TESTFLAGS) -tags '$(CEPHTAGS)' $(CEPHPKGS)

## fuzz: run every fuzz target for FUZZTIME.
fuzz:
	./hack/fuzz.sh $(FUZZTIME)

## bench: the block paths side by side in one run (our device on local and
## Ceph with each ack policy, librbd with and without journaling, a plain loop
## device), one process serving 1, 10 and 50 volumes, and the replay race
## against librbd; each figure the median of 3 runs, with CPU seconds per GB
## of the serving process and the OSD, and the targets of issues 15 and 18
## (met/missed). The Ceph rows run on the bench's own cluster (BENCH_CEPH_DIR,
## mon port BENCH_CEPH_PORT), started fresh for each round and wiped at the end,
## also on failure; the shared test cluster (make ceph-up) is never touched.
## Prints Markdown and writes JSON and a PNG chart to _output/bench/ (~25 min).
## BENCH_FLAGS picks rows, jobs, runtime and runs for quick runs, e.g.
## BENCH_FLAGS='-only ceph -jobs QD16 -runtime 2s -repeat 1 -many ""'.
BENCH_FLAGS ?=
BENCH_CEPH_DIR ?= /var/tmp/csi-rbdj-bench-ceph
BENCH_CEPH_PORT ?= 13400
bench: deps
	mkdir -p _output/bench
	$(GO) build -tags '$(CEPHTAGS)' -o bin/blockdev-bench ./hack/bench/blockdev
	rc=0; ./bin/blockdev-bench -ceph-dir '$(BENCH_CEPH_DIR)' -ceph-port '$(BENCH_CEPH_PORT)' \
		-json _output/bench/bench.json -md _output/bench/bench.md -png _output/bench/bench.png \
		-log _output/bench/bench.log $(BENCH_FLAGS) || rc=$$?; \
	if [ "$$(realpath -m '$(BENCH_CEPH_DIR)')" != /var/tmp/csi-rbdj-ceph ]; then \
		CEPH_DIR='$(BENCH_CEPH_DIR)' ./hack/ceph-down.sh --wipe >/dev/null; fi; exit $$rc

## bench-handover: the pause a pod sees when the node plugin is SIGKILLed or stopped
## (SIGTERM) and a successor adopts its FUSE connections from the fuse-holder (issue 13):
## longest and p99 write latency (4K O_DIRECT + fdatasync at a steady rate) across 10
## restarts of each kind, against a baseline, on local and Ceph, and where the time goes.
## Markdown and JSON in _output/bench/handover.{md,json}. HANDOVER_BENCH_FLAGS passes
## options (e.g. -restarts 20 -rate 200 -v).
HANDOVER_BENCH_FLAGS ?=
.PHONY: bench-handover
bench-handover: deps ceph-up
	mkdir -p _output/bench
	$(GO) build -tags '$(CEPHTAGS)' -o bin/handover-bench ./hack/bench/handover
	./bin/handover-bench -ceph-conf "$$(./hack/ceph-up.sh)" -json _output/bench/handover.json \
		-md _output/bench/handover.md $(HANDOVER_BENCH_FLAGS)

## bench-go: the Go micro-benchmarks (journal, object store, device).
bench-go:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./pkg/journal ./pkg/objstore/local ./pkg/blockdev

## csi-sanity: the standalone csi-sanity command against `csi-rbdj serve --mode all`
## (also run by `make test` through cmd/csi-rbdj's TestStandaloneCSISanity).
csi-sanity: build
	./hack/csi-sanity.sh ./bin/csi-rbdj

clean:
	rm -rf bin

# csi-rbdj — see README.md. Every target is idempotent.
SHELL := /bin/bash
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
# Packages that need Ceph's C libraries are behind the `ceph` build tag
# (with `pacific` for go-ceph); everything else builds and tests without them.
GOTAGS ?=
TESTFLAGS ?= -count=1 -timeout 30m
FUZZTIME ?= 30s

.PHONY: all build demo test deps vet unit fuzz bench clean csi-sanity

all: build

build:
	$(GO) build $(if $(GOTAGS),-tags '$(GOTAGS)') -o bin/csi-rbdj ./cmd/csi-rbdj

## demo: the driver's main job end to end on the embedded local backend
## (as root: loop devices, FUSE and mounts; installs e2fsprogs etc. first).
demo: deps build
	./bin/csi-rbdj demo

## test: install what the tests need, then run the whole suite.
test: deps vet unit

deps:
	./hack/install-deps.sh

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

unit:
	$(GO) test $(TESTFLAGS) ./...

## fuzz: run every fuzz target for FUZZTIME.
fuzz:
	./hack/fuzz.sh $(FUZZTIME)

## bench: journal and object-store benchmarks on the local backend.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./pkg/journal ./pkg/objstore/local

## csi-sanity: the standalone csi-sanity command against `csi-rbdj serve --mode all`
## (also run by `make test` through cmd/csi-rbdj's TestStandaloneCSISanity).
csi-sanity: build
	./hack/csi-sanity.sh ./bin/csi-rbdj

clean:
	rm -rf bin

# Shoal's make targets. `make test` is the test command CI runs.
GO        ?= go
BIN       := bin
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
PROTO_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTO_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
STATICCHECK       := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build screenshots test test-deps bench-deps test-go test-short proto proto-tools proto-check lint bench demo demo-autoscale clean images chaos chaos-short fuzz fuzz-short

all: build

build:
	$(GO) build -o $(BIN)/shoal ./cmd/shoal
	CGO_ENABLED=0 $(GO) build -o $(BIN)/shoal-supervise ./cmd/shoal-supervise
	CGO_ENABLED=0 $(GO) build -o $(BIN)/hello ./cmd/hello

# The test command (CI runs it through .ci/run): the Go suite with the race
# detector, short fuzz runs and a short seeded chaos pass (needs root).
test: test-go fuzz-short chaos-short

# The Debian packages the tests use (promtool, chromium for the dashboard's
# browser test, ...), installed when missing.
test-deps:
	bash scripts/test-deps.sh

# The Go suite alone: vet and every package's tests with the race detector;
# as root the mesh runs on nftables, so its tests run once more on the
# user-space proxy.
test-go: test-deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	@if [ "$$(id -u)" = 0 ]; then echo "== the mesh tests on the user-space datapath"; \
		SHOAL_TEST_MESH_DATAPATH=userspace $(GO) test -race -count=1 -run 'Mesh|ServiceDiscovery' ./tests; fi

# wrk for the mesh benchmark's rows (Debian's package; only as root, else
# the bench notes that they were skipped).
# The bench runs what the tests run (runc, nft, docker-registry), and wrk.
bench-deps: test-deps
	@[ "$$(id -u)" != 0 ] || command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

# The dashboard's browser test alone; it rewrites the screenshots in
# docs/images that the README shows.
screenshots: test-deps
	SHOAL_SCREENSHOT_DIR=$(CURDIR)/docs/images $(GO) test -count=1 -run TestDashboardBrowser -v ./cmd/shoal

test-short:
	$(GO) test -count=1 -short ./...

# Regenerate proto/*.pb.go offline: Debian's protoc plus the pinned plugins.
proto-tools:
	@command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(GOBIN_DIR) $(GO) install $(PROTO_GEN_GO)
	GOBIN=$(GOBIN_DIR) $(GO) install $(PROTO_GEN_GO_GRPC)

proto: proto-tools
	cd proto && PATH=$(GOBIN_DIR):$$PATH protoc -I . \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		*.proto

# proto-check fails when the committed generated code is stale.
proto-check: proto
	git diff --exit-code -- proto/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# The fault-injection suite (cmd/shoal-chaos; needs root: it makes network
# namespaces and iptables rules, and removes them). SEED picks the schedule.
SEED ?= 1
chaos:
	$(GO) test -count=1 -tags faultinject -run 'SlowLogStore' ./raftstore
	$(GO) run ./cmd/shoal-chaos -seed $(SEED) -rounds 100

# The short seeded pass CI runs: each fault kind once.
chaos-short:
	$(GO) test -count=1 -tags faultinject -run 'SlowLogStore' ./raftstore
	$(GO) run ./cmd/shoal-chaos -seed $(SEED) -rounds 12

# Fuzzing: every Fuzz target for FUZZTIME each (crashers land in the
# package's testdata/fuzz/ and stay as regression tests).
fuzz:
	GO=$(GO) FUZZTIME=10s scripts/fuzz.sh

fuzz-short:
	GO=$(GO) FUZZTIME=3s scripts/fuzz.sh

bench: bench-deps
	$(GO) run ./cmd/shoal-bench

bench-quick: bench-deps
	$(GO) run ./cmd/shoal-bench --quick

# The local tour: 3 managers and 3 workers on loopback, a replicated
# service, the leader killed, the service scaled through a survivor.
# DEMO_RUNTIME=docker runs the same tour with containers (images built first).
demo: build
	@if [ "$(DEMO_RUNTIME)" = docker ]; then $(MAKE) --no-print-directory images; fi
	$(GO) run ./cmd/shoal-demo -bin $(BIN)

# Autoscaling on CPU: hello under a built-in load loop goes from 2 to
# several replicas and back down after, in about two minutes.
demo-autoscale: build
	BIN=$(BIN) scripts/demo-autoscale.sh

# The sample images shoal/hello:v1, :v2 and :unhealthy, built offline into
# the local Docker Engine (FROM scratch) and saved as tarballs in
# bin/images/hello-TAG.tar (for `shoal image load` on nodes without an
# Engine), then pushed to the local registry at REGISTRY (default
# 127.0.0.1:5000) when one runs (scripts/registry.sh).
images:
	GO=$(GO) scripts/images.sh
	scripts/push-images.sh

clean:
	rm -rf $(BIN)

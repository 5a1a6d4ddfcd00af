# Quire — build, run and test. Every target installs what it needs itself.
#   make run     build and run a single node on the embedded default config
#   make test    vet + the whole test suite (race detector on)
#   make race    the whole test suite under -race, without the vet step
#   make fuzz    run every Fuzz* target for FUZZTIME (default 30s each)
#   make bench   run every benchmark (BENCHTIME, default 1s)
#   make lint    gofmt, go vet, staticcheck
#   make generate  regenerate protobuf code (Debian protoc + pinned go tool plugins)
#   make soak    the journal fault tests for SOAK_DURATION (default 30m): real bookie
#                processes killed, stopped and cut off under load, history checked
#   make bench-journal  journal-bench at the journal issue's target settings
#   make bench-mqtt     Quire vs Mosquitto vs mochi-mqtt, same run (benchmarks/mqtt)
#   make images  Docker images quire:local and quire-minio:local, FROM scratch
#   make test-compose  MinIO + a three-node cluster in docker-compose, end to end

GO        ?= go
BIN       := bin
CACHE     := $(CURDIR)/.cache
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -X github.com/quiremq/quire/internal/version.Version=$(VERSION) -X github.com/quiremq/quire/internal/version.Commit=$(COMMIT)
TESTFLAGS ?=
FUZZTIME  ?= 30s
BENCHTIME ?= 1s
SOAK_DURATION ?= 30m
STATICCHECK_VERSION := v0.8.2


.PHONY: all deps build run test race fuzz bench lint clean generate check-generate images test-compose s3-servers bench-journal bench-mqtt soak

all: build

deps:
	$(GO) mod download

build: deps
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

run: build
	./$(BIN)/quire start

test: deps check-generate s3-servers
	tools/install-deb.sh mosquitto_pub mosquitto-clients
	$(GO) vet ./...
	$(GO) test -race -timeout 20m $(TESTFLAGS) ./...

race: deps s3-servers
	tools/install-deb.sh mosquitto_pub mosquitto-clients
	$(GO) test -race -timeout 30m $(TESTFLAGS) ./...

fuzz: deps
	FUZZTIME=$(FUZZTIME) ./fuzz/run.sh

bench: deps s3-servers
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m ./...

$(CACHE)/bin/staticcheck:
	GOBIN=$(CACHE)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: deps $(CACHE)/bin/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(CACHE)/bin/staticcheck ./...

generate: deps
	tools/genproto.sh

check-generate: deps
	tools/genproto.sh --check

s3-servers:
	tools/install-s3-servers.sh

# journal-bench at the targets of the journal issues: E=3 Qw=2 Qa=2, 1 KiB
# entries, with the raw disk ceiling; then catch-up reads. JSON lines last.
bench-journal: build
	./$(BIN)/journal-bench --bookies 3 --ensemble 3 --write-quorum 2 --ack-quorum 2 --entry-size 1024 \
		--writers 4 --ledgers 4 --inflight 256 --duration 20s --raw-disk --json
	./$(BIN)/journal-bench --mode catchup --duration 10s --json

soak: deps
	QUIRE_SOAK=1 QUIRE_SOAK_DURATION=$(SOAK_DURATION) $(GO) test -count=1 -timeout 0 -v -run 'TestFaults|TestKillOneOfFour' ./journal/faulttest/

bench-mqtt: build
	benchmarks/mqtt/run.sh

# Quire's image from static binaries built here; MinIO's from the binary
# tools/install-s3-servers.sh builds (no registry can be reached).
images: s3-servers
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(CACHE)/image/ ./cmd/quire ./cmd/quirectl
	docker build -q -t quire:local -f deploy/Dockerfile $(CACHE)/image
	mkdir -p $(CACHE)/minio-image && cp $(CACHE)/bin/minio $(CACHE)/minio-image/
	docker build -q -t quire-minio:local -f deploy/Dockerfile.minio $(CACHE)/minio-image

# The same test also runs in `make test`.
test-compose: deps s3-servers
	$(GO) test -count=1 -run TestCompose -v -timeout 15m ./deploy/

clean:
	rm -rf $(BIN) $(CACHE)

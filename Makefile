# cabin: the two commands are `make demo` and `make test` (see README.md).
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/cabinvm/cabin/internal/version.Version=$(VERSION)
BIN := bin

.PHONY: demo test build setup check generate bench clean install man kernel

# Sets the host up, builds, starts cabind and a VM, and runs commands in it.
demo: setup build
	./scripts/demo.sh

# The whole test suite, including integration tests that boot real VMs.
# Never from the test cache: the integration tests build and run binaries,
# which the cache cannot see change. Then every fuzz target, for a bounded
# time each (scripts/fuzz.sh; FUZZTIME=seconds per target).
test: setup build check
	go test -count=1 -timeout 20m ./...
	./scripts/fuzz.sh

setup:
	./scripts/setup.sh

# cabin's minimal guest kernel, from Debian's linux-source-6.1 and
# scripts/kernel/cabin.config (about 15 minutes on 2 idle cores, once: cached
# by its inputs). cabind boots it from then on (its --kernel auto).
kernel:
	./scripts/kernel/build.sh

build:
	CGO_ENABLED=0 go build -trimpath -tags grpcnotrace -ldflags "-s -w $(LDFLAGS)" -o $(BIN)/cabin-agent ./cmd/cabin-agent
	CGO_ENABLED=1 go build -trimpath -tags "netgo osusergo seccomp" -ldflags "-s -w $(LDFLAGS) -extldflags -static" -o $(BIN)/cabin-runtime ./cmd/cabin-runtime
	go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/cabind ./cmd/cabind
	go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/cabin ./cmd/cabin
	go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/cabin-bench ./cmd/cabin-bench
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(BIN)/cabin-netperf ./cmd/cabin-bench/netperf

# Formatting, vet, go.mod tidy, and generated code up to date.
check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	@go mod tidy -diff >/dev/null || { echo "go.mod or go.sum is not tidy: run go mod tidy"; go mod tidy -diff; exit 1; }
	go run ./tools/protogen -check

# Regenerates api/**/*.pb.go with the generator versions pinned in go.mod.
generate:
	go run ./tools/protogen

# Boot, RPC, memory and network benchmarks against their baselines, as a table.
bench: setup build
	$(BIN)/cabin-bench

# Installs the binaries, cabind's systemd unit and (when there is none)
# its config file. PREFIX, DESTDIR (a staging root), UNITDIR and CONFDIR
# may be set.
PREFIX ?= /usr/local
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/cabin
install:
	@for f in cabind cabin cabin-agent cabin-runtime; do test -x $(BIN)/$$f || { echo "$(BIN)/$$f missing: run make build first"; exit 1; }; done
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR) $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0755 $(BIN)/cabind $(BIN)/cabin $(BIN)/cabin-agent $(BIN)/cabin-runtime $(DESTDIR)$(PREFIX)/bin/
	$(BIN)/cabin __man $(DESTDIR)$(PREFIX)/share/man/man1
	sed 's|@BINDIR@|$(PREFIX)/bin|g' dist/cabind.service.in > $(DESTDIR)$(UNITDIR)/cabind.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/cabind.service
	test -e $(DESTDIR)$(CONFDIR)/cabind.toml || install -m 0644 dist/cabind.toml $(DESTDIR)$(CONFDIR)/cabind.toml
	@echo "installed; start it with: systemctl daemon-reload && systemctl enable --now cabind"

# cabin's man pages, from its command tree, into man/.
man: build
	$(BIN)/cabin __man man

clean:
	rm -rf $(BIN) man

# baton — see README.md. `make demo` runs the demo, `make test` every test.
SHELL := /bin/bash
PREFIX ?= /usr/local
CARGO ?= cargo

.PHONY: build release deps test test-rust test-provisioning demo install bench bench-ship clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Installs the real components tests and demo use (Java, Clojure, Jetty, nginx, …) from Debian.
deps:
	@if [ "$$(id -u)" = 0 ]; then scripts/setup-deps; else sudo scripts/setup-deps; fi

test: deps test-rust test-provisioning

test-rust:
	$(CARGO) test --all-targets

test-provisioning: build
	tests/provisioning/run-all

demo: deps release
	scripts/demo

install: release
	install -D -m 0755 target/release/baton $(DESTDIR)$(PREFIX)/bin/baton

bench: deps release
	benches/run
	benches/ship

# baton ship vs Capistrano to 1, 4 and 16 sshd test hosts (about 5 minutes); benches/SHIP-RESULTS.md.
bench-ship: deps release
	benches/ship

clean:
	$(CARGO) clean

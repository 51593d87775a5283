# baton — see README.md. `make demo` runs the demo, `make test` every test.
SHELL := /bin/bash
PREFIX ?= /usr/local
CARGO ?= cargo

.PHONY: build release order deps test test-rust test-provisioning demo install uninstall bench bench-deploy bench-ship clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Rewrites link/hot-order.txt from traced runs of the release binary (valgrind), then
# relinks with it: run after changing the stop, respawn or readiness paths, and commit it.
order: release
	scripts/hot-order
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

# baton is two files: the front `baton` (src/front.rs) runs `baton-core` from beside itself.
# The core goes first, so the front is never in place without it. The man page and
# completions come from the binary itself (its clap definition).
BIN = $(DESTDIR)$(PREFIX)/bin
SHARE = $(DESTDIR)$(PREFIX)/share
EXTRAS = $(SHARE)/man/man1/baton.1 $(SHARE)/bash-completion/completions/baton \
	$(SHARE)/zsh/site-functions/_baton $(SHARE)/fish/vendor_completions.d/baton.fish
install: release
	install -D -m 0755 target/release/baton-core $(BIN)/baton-core
	install -D -m 0755 target/release/baton $(BIN)/baton
	install -d $(SHARE)/man/man1 $(SHARE)/bash-completion/completions \
		$(SHARE)/zsh/site-functions $(SHARE)/fish/vendor_completions.d
	target/release/baton man >$(SHARE)/man/man1/baton.1
	target/release/baton completions bash >$(SHARE)/bash-completion/completions/baton
	target/release/baton completions zsh >$(SHARE)/zsh/site-functions/_baton
	target/release/baton completions fish >$(SHARE)/fish/vendor_completions.d/baton.fish
	chmod 0644 $(EXTRAS)

# The front first, so no `baton` is left that cannot run its core.
uninstall:
	rm -f $(BIN)/baton $(BIN)/baton-core $(EXTRAS)

# benches/run (supervisor figures, bounded by its BUDGET), then the deploy switches, then ship.
bench: deps release
	benches/run
	$(BENCH_DEPLOY)
	$(BENCH_SHIP)

# Failed requests during v1 -> v2 -> v1 switches through nginx, baton deploy/rollback
# included, and during a config change (restart vs handoff) and a reexec
# (benches/deploy-baselines; ~8 min at DURATION=20, hard limit 15 min).
BENCH_DEPLOY = timeout 900 benches/deploy-baselines
bench-deploy: deps release
	$(BENCH_DEPLOY)

# baton ship vs Capistrano to 1, 4 and 16 sshd test hosts (~5 min, hard limit 15 min);
# writes benches/SHIP-RESULTS.md.
BENCH_SHIP = timeout 900 benches/ship
bench-ship: deps release
	$(BENCH_SHIP)

clean:
	$(CARGO) clean

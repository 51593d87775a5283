# Shared by the provisioning tests (bash). Each check prints "ok - ..." or
# "not ok - ..." (run-all counts them); waits poll a condition until a deadline.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# baton is two files: the front, and the core it runs from beside itself (its path and -core).
BATON=${BATON:-$ROOT/target/debug/baton}
BATON_CORE=$BATON-core
PASSED=0
FAILED=0
SKIPPED=0

ok() { PASSED=$((PASSED + 1)); echo "ok - $*"; }
not_ok() { FAILED=$((FAILED + 1)); echo "not ok - $*"; }
skip() { SKIPPED=$((SKIPPED + 1)); echo "skip - $*"; }

# check DESC CMD...: passes when CMD succeeds.
check() {
	local desc=$1
	shift
	if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}

# expect_code DESC WANT CMD...: runs CMD, passes when it exits WANT; output goes to $LAST_OUT.
expect_code() {
	local desc=$1 want=$2
	shift 2
	LAST_OUT=$("$@" 2>&1)
	LAST_CODE=$?
	if [ "$LAST_CODE" -eq "$want" ]; then
		ok "$desc (exit $want)"
	else
		not_ok "$desc: want exit $want, got $LAST_CODE"
		printf '%s\n' "$LAST_OUT" | sed 's/^/#   /'
	fi
}

# wait_until SECONDS CMD...: polls CMD every 0.1 s until it succeeds or the deadline passes.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
not_listening() { ! listening "$1"; }

# finish: the summary line run-all reads, and the exit code.
finish() {
	if [ "$SKIPPED" -gt 0 ]; then
		echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
	else
		echo "$PASSED passed, $FAILED failed"
	fi
	[ "$FAILED" -eq 0 ]
}

need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		skip "$1: needs root"
		finish
		exit 0
	fi
}

need_baton() {
	local f
	for f in "$BATON" "$BATON_CORE"; do
		if [ ! -x "$f" ]; then
			not_ok "$1: no baton binary at $f (run cargo build)"
			finish
			exit 1
		fi
	done
}

# quiet CMD...: CMD with its output discarded (for check/expect_code arguments).
quiet() { "$@" >/dev/null 2>&1; }

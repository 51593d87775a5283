#!/usr/bin/env python3
"""benches/report.py — sampling and the report for benches/run (see benches/README.md).

  report.py sample RESDIR SECONDS N TOOL...   memory + context switches, N windows
  report.py membreak RESDIR PID               where the baton supervisor's memory goes
  report.py report RESDIR TOOL...             the Markdown report on stdout
"""
import os
import statistics
import sys
import time

NAMES = {"baton": "baton", "runit": "runit", "s6": "s6", "daemontools": "daemontools",
         "supervisord": "supervisord", "ssd": "start-stop-daemon"}


# ---------------------------------------------------------------- sampling
def smaps_rollup(pid):
    v = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[-1] == "kB":
                v[k] = int(parts[0])
    return v


def ctx(pid):
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
    return n


def sample(res, seconds, n, tools):
    pids = {t: [int(p) for p in open(f"{res}/pids.{t}").read().split()] for t in tools}
    for t in tools:
        names = []
        for p in pids[t]:
            with open(f"/proc/{p}/comm") as f:
                names.append(f"{f.read().strip()}:{p}")
        with open(f"{res}/procs.{t}", "w") as f:
            f.write(" ".join(names) + "\n")
    for _ in range(n):
        for t in tools:
            rss = pss = uss = 0
            for p in pids[t]:
                v = smaps_rollup(p)
                rss += v["Rss"]
                pss += v["Pss"]
                uss += v["Private_Clean"] + v["Private_Dirty"]
            with open(f"{res}/mem.{t}", "a") as f:
                f.write(f"{rss} {pss} {uss}\n")
        c0 = {t: sum(ctx(p) for p in pids[t]) for t in tools}
        t0 = time.monotonic()
        time.sleep(seconds)
        dt = time.monotonic() - t0
        for t in tools:
            c1 = sum(ctx(p) for p in pids[t])
            with open(f"{res}/wake.{t}", "a") as f:
                f.write(f"{c1 - c0[t]} {dt:.3f}\n")


def membreak(res, pid):
    """RSS and USS of the baton supervisor by mapping."""
    groups = {}
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and ":" not in head[0]:
                path = head[5] if len(head) > 5 else ""
                perms = head[1]
                if path.startswith("/"):
                    name = os.path.basename(path) + (" text" if "x" in perms else " data")
                elif path:
                    name = path
                else:
                    name = "anonymous (heap arenas, bss)"
                cur = groups.setdefault(name, [0, 0])
            elif head[0] == "Rss:" and cur is not None:
                cur[0] += int(head[1])
            elif head[0] in ("Private_Clean:", "Private_Dirty:") and cur is not None:
                cur[1] += int(head[1])
    with open(f"{res}/membreak.baton", "w") as f:
        for name, (rss, uss) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
            if rss:
                f.write(f"{rss} {uss} {name}\n")


# What limits baton on each figure, as profiled (benches/README.md, "Profiling").
# Printed next to a figure only when this run misses its goal.
WHY = {
    "memory": "a PIE's relocated pointers (56 KB), libc's and ld.so's data (~70 KB), the heap (28 KB) and "
              "the stack (28 KB) of the supervisor; of its code only the two pages that run after the shed "
              "(table below; benches/PROFILE-memory.md)",
    "wakeups": "something in the loop arms a timer while idle (strace -p the supervisor)",
    "respawn": "between the exit and clone3(CLONE_VM|CLONE_VFORK|CLONE_CLEAR_SIGHAND|CLONE_INTO_CGROUP) the "
               "supervisor only reads the exit (waitid WNOWAIT) and decides (cgroup, pipes made ahead; the reap, "
               "baton.log and state.json come after the spawn); clone3 itself lasts until the child has exec'd, "
               "and after 1.5 s of sleep both wakes pay for every page they touch, the supervisor's shed code "
               "included (see benches/PROFILE-respawn.md)",
    "ready_notify": "READY=1 goes to the supervisor, which renames the staged PID file into place and answers "
                    "the waiting `start` through a pipe: two processes wake in turn after the sleep where "
                    "start-stop-daemon, which receives READY=1 itself, wakes one; together they touch 11 "
                    "pages (the supervisor 9 to its answer, `start` 2 to its exit; start-stop-daemon 19), "
                    "but each wake also pays the kernel's switch to a process idle for 1.5 s "
                    "(benches/PROFILE-ready.md)",
    "ready_log": "the supervisor reads the line, renames the staged PID file into place and answers the "
                 "waiting `start`: two processes wake in turn after the sleep (benches/PROFILE-ready.md)",
    "ready_tcp": "the probe reconnects every 5 ms doubling to 20 ms: readiness is seen at the next attempt",
    "ready_http": "the probe retries every 5 ms doubling to 20 ms: readiness is seen at the next attempt",
    "stop": "`baton stop` is two images in one process: the static front sends the request, waits for the "
            "supervisor's first reply and execs `baton-core`, a dynamically linked PIE whose start-up (ld.so "
            "relocating libc and its own data) and reading of the replies touch about 200 pages, 54 of them its "
            "own, while it waits for the supervisor's exit; after the kill the supervisor reaps, swaps "
            "state.json in, removes its PID file, cgroup and socket and exits before `stop` returns; after 1.5 s "
            "of sleep every page touched pays the cost above (benches/PROFILE-stop.md, tenth round)",
    "kill": "the stop timeout is enforced by the supervisor's timer, then SIGKILL and reaping",
    "orphans": "a grandchild escaped the process group and the subreaper sweep",
    "log": "the bytes are copied twice (by the service into its pipe, by baton's splice from its relay pipe "
           "into the file) where the service writing its file copies once: the two copies overlap only "
           "while two CPUs are free, so a loaded machine takes the ratio toward 50% (benches/PROFILE-log.md)",
    "log_ts": "every line is read, stamped and written: the service copies into its pipe, baton reads a pipeful, "
              "copies it with the prefixes into a block and its writing thread copies that into the file, 36% more "
              "bytes than the service wrote; on a machine whose two CPUs are busy these copies take turns "
              "(benches/PROFILE-log.md)",
    "gone": "two processes wake where start-stop-daemon is one: `baton`'s static front (no ld.so, no libc: "
            "8 pages present from its exec to its request, its stack 3 of them; start-stop-daemon touches 180 to "
            "its kill, 29 of them its own) sends the request, then the supervisor wakes and signals (11 pages "
            "up to the SIGTERM); the core starts only after the supervisor's first reply. Only root's stop "
            "with the supervisor's stop card matching the config takes the front's path: otherwise (not root, "
            "a config changed since the start) the core makes the whole stop, reading the config in full: 265 "
            "pages before its request; "
            "after 1.5 s of sleep every page touched pays the cost above (benches/PROFILE-stop.md, tenth round)",
}


# ---------------------------------------------------------------- report helpers
def lines(path):
    try:
        with open(path) as f:
            return [l.split() for l in f if l.strip()]
    except OSError:
        return []


def ns_of(epochrealtime):
    """bash $EPOCHREALTIME ("SEC.USEC") to integer ns."""
    s, _, us = epochrealtime.partition(".")
    return int(s) * 1_000_000_000 + int((us + "000000")[:6]) * 1000


def stats(v):
    return (statistics.median(v), min(v), max(v)) if v else None


def fnum(x, unit=""):
    if x is None:
        return "–"
    if float(x).is_integer() and abs(x) < 1000:
        return f"{x:.0f}{unit}"
    a = abs(x)
    s = f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}"
    return s + unit


def cell(v, unit=""):
    st = stats(v)
    if not st:
        return "–"
    med, lo, hi = st
    if lo == hi:
        return f"{fnum(med, unit)}"
    return f"{fnum(med, unit)} ({fnum(lo)}–{fnum(hi)})"


def fratio(x):
    return f"{x:.2g}×" if x < 0.1 else f"{x:.2f}×"


class Row:
    def __init__(self, label, unit, better="low", key=""):
        self.label, self.unit, self.better, self.key = label, unit, better, key
        self.v = {}          # tool -> list of numbers
        self.note = {}       # tool -> text appended to the cell
        self.text = {}       # tool -> text instead of numbers
        self.exclude = set() # tools not comparable (not a probe, not waiting, ...)
        self.goal = "–"
        self.met = None      # True / False / None
        self.why = ""
        self.ratio_goal = None  # issue 14: baton ÷ best peer must not exceed this (below it for throughput)

    def check_ratio(self, tools):
        """Adds the ratio goal to `goal` and `met` (a figure with no comparable peer passes it)."""
        if self.ratio_goal is None or self.med("baton") is None:
            return
        rg = f"≤ {self.ratio_goal:.1f}× best peer"
        self.goal = rg if self.goal == "–" else f"{self.goal}; {rg}"
        bp = self.best_peer(tools)
        if bp is None or bp[0] <= 0:
            return
        ok = self.med("baton") / bp[0] <= self.ratio_goal
        self.met = ok if self.met is None else (self.met and ok)

    def med(self, t):
        s = stats(self.v.get(t, []))
        return s[0] if s else None

    def best_peer(self, tools):
        cands = [(self.med(t), t) for t in tools if t != "baton" and t not in self.exclude
                 and self.med(t) is not None]
        if not cands:
            return None
        return (min if self.better == "low" else max)(cands)

    def cell(self, t):
        if t in self.text:
            return self.text[t]
        c = cell(self.v.get(t, []))
        if t in self.note:
            c = (c + " " if c != "–" else "") + self.note[t]
        return c


def strace_c(path):
    """strace -c summary -> (rows [(syscall, calls, seconds)], n) where n is the 'respawns N' line if any."""
    rows, n = [], None
    for x in lines(path):
        if x[0] == "respawns" and len(x) == 2:
            n = int(x[1])
        elif len(x) in (5, 6) and x[0].replace(".", "").isdigit() and x[-1] != "total":
            rows.append((x[-1], int(x[3]), float(x[1])))
    return rows, n


def perf_x(path):
    v, n = {}, None
    for l in (open(path).read().splitlines() if os.path.exists(path) else []):
        f = l.split(",")
        if f[0] == "respawns" or l.startswith("respawns "):
            n = int(l.split()[-1])
        elif len(f) > 2 and f[0] and f[0][0].isdigit():
            v[f[2]] = float(f[0])
    return v, n


def profile(res, P):
    out = []
    pv, pn = perf_x(f"{res}/profile.respawn.perf")
    rows, sn = strace_c(f"{res}/profile.respawn.strace")
    if pn and pv:
        out.append(f"- per respawn (perf stat over {pn} respawns of a service living 50 ms): "
                   f"{pv.get('task-clock', 0) / pn:.2f} ms of supervisor CPU, "
                   f"{pv.get('minor-faults', 0) / pn:.0f} minor page faults")
    if rows and sn:
        tot = sum(r[2] for r in rows) or 1
        top = sorted(rows, key=lambda r: -r[2])[:10]
        out.append(f"- system calls per respawn (strace -c over {sn} respawns; share of time in system calls): " + ", ".join(
            f"{name} ×{calls / sn:.1f}" + (f" ({sec / tot * 100:.0f}%)" if tot > 1e-4 else "") for name, calls, sec in top))
    sv, _ = perf_x(f"{res}/profile.stop.perf")
    if sv:
        out.append(f"- per stop, supervisor: {sv.get('task-clock', 0):.2f} ms CPU, {sv.get('minor-faults', 0):.0f} minor page faults")
    for fn, who in (("profile.stop.strace", "supervisor"), ("profile.stopcli.strace", "`baton stop` client")):
        rows, _ = strace_c(f"{res}/{fn}")
        if rows:
            every = sorted(rows, key=lambda r: (-r[1], r[0]))
            out.append(f"- system calls per stop, {who} ({sum(r[1] for r in rows)} in all): " + ", ".join(
                f"{name} ×{calls}" for name, calls, _ in every))
    if out:
        P("### Profile of baton (this run)")
        P("")
        for l in out:
            P(l)
        P("")


def gone_row(res, tools):
    """Prompt stop: from the stop command's start until the service has its SIGTERM and dies of it.

    The service stamps "term" in its handler and re-raises the signal at once, so the stamp
    is the moment it goes (exit takes microseconds). `svc -d` qualifies too: it does not
    wait, but the service is gone just as soon.
    """
    r = Row("prompt stop: stop command starts → service gets SIGTERM and is gone, ms", "ms", key="gone")
    for t in tools:
        data = [x for x in lines(f"{res}/stop.{t}") if len(x) >= 4]
        v = [(int(x[3]) - ns_of(x[0])) / 1e6 for x in data if x[3] != "none"]
        if v:
            r.v[t] = v
            missing = len(data) - len(v)
            if missing:
                r.note[t] = f"{missing} without a stamp"
        else:
            r.text[t] = "–"
    r.goal = "–"
    r.ratio_goal = 1.0
    return r


def report(res, tools):
    facts = {}
    for l in open(f"{res}/facts"):
        k, _, v = l.rstrip("\n").partition("=")
        facts[k] = v
    peers = [t for t in tools if t != "baton"]
    rows = []

    # memory
    mem = {t: lines(f"{res}/mem.{t}") for t in tools}
    mb = lambda kb: kb * 1024 / 1e6
    for i, (label, goal) in enumerate((("RSS", 3.0), ("PSS", None), ("USS", 0.5))):
        r = Row(f"supervisor memory: {label}, MB", "MB", key="memory")
        for t in tools:
            if mem[t]:
                r.v[t] = [mb(int(x[i])) for x in mem[t]]
            else:
                r.text[t] = "no resident process" if t == "ssd" else "–"
        if goal is not None and r.v.get("baton"):
            r.goal = f"≤ {goal:g} MB"
            r.met = r.med("baton") <= goal
        if label == "USS":
            r.ratio_goal = 1.0
        rows.append(r)
    mem_rows = rows[:]

    # idle wakeups
    window = float(facts["settings"].split("WINDOW=")[1].split("s")[0])
    r = Row(f"idle wakeups in {window:.0f} s", "", key="wakeups")
    for t in tools:
        w = lines(f"{res}/wake.{t}")
        if w:
            r.v[t] = [sum(int(x[0]) for x in w)]
            if len(w) > 1:
                r.note[t] = "(" + "+".join(x[0] for x in w) + ")"
        else:
            r.text[t] = "no resident process" if t == "ssd" else "–"
    r.goal = "0"
    if r.v.get("baton"):
        r.met = r.v["baton"][0] == 0
    rows.append(r)
    wake_row = r

    # respawn
    resp_rows = {}
    for life, lab in (("1500", "1.5 s"), ("100", "0.1 s")):
        r = Row(f"respawn, service lived {lab}: exit → next main(), ms", "ms", key="respawn")
        for t in tools:
            v = []
            for fn in sorted(os.listdir(res)):
                if fn.startswith(f"respawn.{life}.{t}."):
                    ev = sorted((int(x[1]), x[0]) for x in lines(f"{res}/{fn}") if len(x) >= 2)
                    for k, (ts, e) in enumerate(ev):
                        if e == "exit":
                            nxt = [u for u, f in ev[k + 1:] if f == "main"]
                            if nxt:
                                v.append((nxt[0] - ts) / 1e6)
            if v:
                r.v[t] = v
            else:
                r.text[t] = "does not respawn" if t == "ssd" else "–"
        r.goal = "≤ 3 ms"
        if r.v.get("baton"):
            r.met = r.med("baton") <= 3.0
        r.ratio_goal = 1.0
        rows.append(r)
        resp_rows[life] = r

    # readiness
    how = {"notify": "notify", "log": "log", "tcp": "tcp", "http": "http"}
    ready_rows = {}
    for kind in ("notify", "log", "tcp", "http"):
        r = Row(f"readiness, {how[kind]} probe: `start` returns − ready, ms", "ms", key=f"ready_{kind}")
        for t in tools:
            data = lines(f"{res}/ready.{t}.{kind}")
            if not data:
                continue
            v, early, failed = [], 0, 0
            for t0, t1, rd, ok in data:
                if rd == "none":
                    failed += 1
                    continue
                lag = (ns_of(t1) - int(rd)) / 1e6
                v.append(lag)
                early += lag < 0
                failed += ok != "1"
            r.v[t] = v
            notes = []
            if early:
                notes.append(f"**{early}/{len(data)} before ready**")
                r.exclude.add(t)
            if failed:
                notes.append(f"{failed} failed")
            if notes:
                r.note[t] = "; ".join(notes)
        for t in tools:
            if t not in r.v:
                r.text[t] = "n/a" if t != "baton" else "–"
        goal = 2.0 if kind in ("notify", "log") else 10.0
        r.goal = f"≤ {goal:g} ms, never before ready"
        if r.v.get("baton"):
            r.met = r.med("baton") <= goal and "baton" not in r.exclude
        if kind == "notify":
            r.ratio_goal = 1.0
        rows.append(r)
        ready_rows[kind] = r

    # stop latency
    for pre, label, goal in (("stop", "stop, service exits on SIGTERM: wall time, ms", 5.0),
                             ("kill", "stop, service ignores SIGTERM (2 s timeout): wall time, ms", 2010.0)):
        r = Row(label, "ms", key=pre)
        left_any = {}
        for t in tools:
            data = lines(f"{res}/{pre}.{t}")
            if not data:
                r.text[t] = "–"
                continue
            r.v[t] = [(ns_of(x[1]) - ns_of(x[0])) / 1e6 for x in data]
            left = [int(x[2]) for x in data]
            left_any[t] = max(left)
            if t == "daemontools":  # svc -d only sends the signal
                r.exclude.add(t)
                r.text[t] = ("n/a: `svc -d` does not wait" if pre == "stop" else
                             f"n/a: `svc -d` does not wait; service still running in {sum(1 for x in left if x)}/{len(left)}")
                continue
            if max(left):
                r.exclude.add(t)
                r.note[t] = (r.note.get(t, "") + f" **service still running at return in {sum(1 for x in left if x)}/{len(left)}**").strip()
        if pre == "stop":
            r.goal = "≤ 5 ms"
        else:
            r.goal = "≤ 2 s + 10 ms, no process left"
        if r.v.get("baton"):
            r.met = r.med("baton") <= goal and left_any.get("baton", 1) == 0
        rows.append(r)
        if pre == "stop":
            rows.append(gone_row(res, tools))

    # orphans
    r = Row("orphans: grandchildren alive after stop (of 2), worst round", "", key="orphans")
    for t in tools:
        v = [int(x[0]) for x in lines(f"{res}/orphans.{t}")]
        if v:
            r.v[t] = [max(v)]
        else:
            r.text[t] = "–"
    r.goal = "0"
    if r.v.get("baton"):
        r.met = r.v["baton"][0] == 0
    rows.append(r)

    # log throughput
    methods = {"baton": "baton", "svlogd": "runit", "s6-log": "s6"}
    ts = [int(facts["log_bytes"]) / ((int(x[1]) - int(x[0])) / 1e9) / 1e6
          for x in lines(f"{res}/log.baton-ts") if int(x[1]) > 0]
    ts_lost = max((int(x[3]) - int(x[2]) for x in lines(f"{res}/log.baton-ts")), default=0)
    r = Row(f"log throughput, {int(facts['log_bytes']) / 2**20:.0f} MiB of 100-byte lines, timestamps off "
            "(as the peers' loggers run): MB/s (lines lost)", "MB/s", better="high", key="log")
    direct = None
    lost = {}
    for m in ("baton", "svlogd", "s6-log", "direct"):
        data = lines(f"{res}/log.{m}")
        if not data:
            continue
        v, lo = [], 0
        for main, end, got, want, rc in data:
            if int(end) > 0:
                v.append(int(facts["log_bytes"]) / ((int(end) - int(main)) / 1e9) / 1e6)
            lo = max(lo, int(want) - int(got))
        if m == "direct":
            direct = v
            continue
        t = methods[m]
        r.v[t] = v
        lost[t] = lo
        r.note[t] = f"({lo} lost)" if m == "baton" else f"[{m}] ({lo} lost)"
    for t in tools:
        if t not in r.v:
            r.text[t] = "–"
    r.goal = "≥ 60% of self-write, 0 lost"
    if r.v.get("baton") and direct:
        r.met = r.med("baton") >= 0.6 * statistics.median(direct) and lost.get("baton", 1) == 0
        r.note["baton"] += f"; {r.med('baton') / statistics.median(direct) * 100:.0f}% of self-write"
    rows.append(r)
    # baton's default, stamped lines: no peer logger here runs with its timestamps, so the
    # measure is the service writing its own file (the same bytes, unstamped).
    r = Row(f"log throughput, same lines, baton's default `[log] timestamps = true` (each stored as "
            "`TIME [PID] TEXT`): MB/s of the service's bytes (lines lost)", "MB/s", better="high", key="log_ts")
    if ts:
        r.v["baton"] = ts
        r.note["baton"] = f"({ts_lost} lost)"
        for t in tools:
            if t != "baton":
                r.text[t] = "–"
        r.goal = "≥ 60% of self-write, 0 lost"
        if direct:
            r.met = statistics.median(ts) >= 0.6 * statistics.median(direct) and ts_lost == 0
            r.note["baton"] += f"; {statistics.median(ts) / statistics.median(direct) * 100:.0f}% of self-write"
    rows.append(r)

    for r in rows:
        r.check_ratio(tools)

    # A part left out (FIGURES=...) leaves its rows empty: show only what was measured.
    rows = [r for r in rows if any(r.v.values())]

    # ------------------------------------------------------------ render
    out = []
    P = out.append
    P("# baton benchmark results")
    P("")
    P("Written by `benches/run` (method: [benches/README.md](README.md)). Overwritten on every run.")
    P("")
    P(f"- date: {facts['date']}; the run took {facts['duration']} s")
    P(f"- machine: {facts['machine']}")
    P(f"- load: {facts['load']}")
    cold = facts.get("cold_pages", "").split()
    if len(cold) == 4:
        idle = facts.get("stop_idle", "?")
        P(f"- memory left alone: a page touched again after {idle} s of sleep costs {cold[1]} µs at the start, "
          f"{cold[3]} µs at the end ({cold[0]} and {cold[2]} µs touched again at once; `svc coldpages`). "
          "Every latency figure below follows such a wait, and each page its processes touch pays it")
    P(f"- settings: {facts['settings']}")
    P("- versions: " + ", ".join(f"{NAMES[t]} {facts.get('version.' + t, '?')}" for t in tools))
    P("")
    P("Cells: median (min–max) over all runs. \"baton ÷ best\" compares medians with the best peer "
      "that does the same job (below 1 = baton smaller/faster; above 1 for throughput = faster).")
    P("")
    hdr = ["figure"] + [NAMES[t] for t in tools] + ["baton ÷ best peer", "goal", "baton"]
    P("| " + " | ".join(hdr) + " |")
    P("|" + "---|" * len(hdr))
    for r in rows:
        bp = r.best_peer(tools)
        b = r.med("baton")
        if bp is None or b is None:
            ratio = "–"
        elif bp[0] == 0:
            ratio = "= (0)" if b == 0 else f"∞ (vs {NAMES[bp[1]]})"
        else:
            ratio = f"{fratio(b / bp[0])} (vs {NAMES[bp[1]]})"
        verdict = "–" if r.met is None else ("MET" if r.met else "**MISSED**: " + WHY.get(r.key, "see the profile below"))
        P("| " + " | ".join([r.label] + [r.cell(t) for t in tools] + [ratio, r.goal, verdict]) + " |")
    if direct:
        P("")
        P(f"For scale: the service writing the file itself (self-write) reaches {cell(direct, ' MB/s')}; the two "
          "log throughput rows give baton's share of that, timestamps off and on.")
    P("")

    # per-peer ratios
    if peers:
        P("baton ÷ each peer (medians; below 1 = baton smaller/faster, except throughput):")
        P("")
        P("| figure | " + " | ".join(NAMES[p] for p in peers) + " |")
        P("|---|" + "---|" * len(peers))
        for r in rows:
            b = r.med("baton")
            cells = []
            for p in peers:
                m = r.med(p)
                if b is None or m is None or p in r.text:
                    cells.append("–")
                elif m == 0:
                    cells.append("=" if b == 0 else "∞")
                else:
                    cells.append(fratio(b / m) + (" ¹" if p in r.exclude else ""))
            P("| " + r.label + " | " + " | ".join(cells) + " |")
        P("")
        P("¹ not comparable: the peer returned before the service was ready, did not wait, or left the service running.")
        P("")

    missed = [r for r in rows if r.met is False]
    trailing = []
    for r in rows:
        bp, b = r.best_peer(tools), r.med("baton")
        if r.met and bp and b is not None and bp[0] > 0:
            worse = b / bp[0] > 1.1 if r.better == "low" else b / bp[0] < 0.9
            if worse:
                trailing.append((r, bp))
    P("## Goals")
    P("")
    if not missed:
        P("baton meets every goal in this run.")
    else:
        P(f"baton misses {len(missed)} goal(s) in this run: " + "; ".join(r.label for r in missed) + ".")
    if trailing:
        P("")
        P("Goal met, but behind the best peer by more than 10%: " + "; ".join(
            f"{r.label} ({fnum(r.med('baton'))} vs {NAMES[bp[1]]} {fnum(bp[0])})" for r, bp in trailing) + ".")
    P("")
    brk = lines(f"{res}/membreak.baton")
    if brk:
        P("Where the baton supervisor's memory goes (kB, from /proc/PID/smaps):")
        P("")
        P("| mapping | RSS | USS |")
        P("|---|---|---|")
        for x in brk[:8]:
            P(f"| {' '.join(x[2:])} | {x[0]} | {x[1]} |")
        P("")
    if missed:
        P("The reason next to a missed figure is what profiling baton found (benches/README.md, \"Profiling\"); "
          "the profile below is from this run.")
        P("")
    profile(res, P)

    # how each tool was driven
    P("## How each tool was driven")
    P("")
    procs = {t: open(f"{res}/procs.{t}").read().strip() for t in tools if os.path.exists(f"{res}/procs.{t}")}
    if procs:
        P("- memory and wakeups count these processes: " + "; ".join(f"{NAMES[t]}: {procs[t]}" for t in procs))
    P(f"- respawn: baton `policy = \"always\"`, `backoff = {facts.get('backoff', '?')}` (its minimum); runit `runsv`; s6 `s6-supervise` with "
      "`notification-fd` (the service notifies at once); daemontools `supervise`; supervisord `autorestart=true`, "
      "`startsecs=0`. start-stop-daemon does not supervise.")
    P("- readiness: baton `start` with `[ready] notify` / `log` / `tcp` / `http`; s6 `s6-svc -wU -u` with "
      "`notification-fd`; start-stop-daemon `--start --background --notify-await`; runit `sv -w 20 start` with a "
      "`./check` that connects to the port (sv re-runs it in a poll loop); supervisord `supervisorctl start` "
      "(RUNNING after `startsecs=1`, not a probe). daemontools has no readiness notion.")
    P(f"- stop: the service idles {facts.get('stop_idle', '?')} s first; baton `stop` (returns when the service and its supervisor are gone); runit `sv -w 20 down` "
      "(ignoring SIGTERM: `sv -w 2 force-stop`); s6 `s6-svc -wD -d` (with `timeout-kill` 2000); "
      "start-stop-daemon `--stop --retry TERM/5/KILL/5` (`TERM/2/KILL/5`); supervisord `supervisorctl stop` "
      "(`stopwaitsecs=2`); daemontools `svc -d`, which does not wait. \"Gone\": the service stamps the "
      "moment SIGTERM arrives in its handler, then dies of the signal at once; measured from the moment "
      "the stop command starts.")
    P("- orphans: the same stop commands; survivors counted " + "after a pause for stragglers.")
    P("- log: baton `[log] max_size = \"100GB\"` (no rotation); `svc | svlogd DIR` with `s0` (no rotation); "
      "`svc | s6-log n100 s268435455 DIR` (s6-log caps files at 256 MiB, so it rotates); the service writing "
      "the file itself. Time from the service's main() until every byte is in the files; lines counted with wc -l.")
    P("")
    errs = lines(f"{res}/errors")
    if errs:
        P("Notes from the run: " + "; ".join(" ".join(e) for e in errs))
        P("")

    # raw samples
    P("<details><summary>Raw samples</summary>")
    P("")
    for r in rows:
        for t in tools:
            v = r.v.get(t)
            if v and len(v) > 1 and t not in r.text:
                P(f"- {r.label}, {NAMES[t]}: " + " ".join(fnum(x) for x in v))
    P("")
    P("</details>")
    print("\n".join(out))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "sample":
        sample(args[0], float(args[1]), int(args[2]), args[3:])
    elif cmd == "membreak":
        membreak(args[0], args[1])
    elif cmd == "report":
        report(args[0], args[1:])
    else:
        sys.exit(f"unknown command {cmd}")

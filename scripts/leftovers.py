"""What a traced run under valgrind leaves behind, ended: shared by scripts/hot-order,
scripts/wake-pages and scripts/stop-pages.

A run that dies before its `baton stop` (a supervisor that never went quiet, a start that
failed, ^C) would leave its supervisor under valgrind and the bench's service running, and
a crash-looping one respawns for ever once the service's binary is gone with the work
directory (seen: two such supervisors at 45% of a CPU each, for 35 minutes, through a
bench run). Everything the run started names its work directory on its command line.
"""

import os
import signal


def end(work):
    """SIGKILLs every process whose command line names `work` (a fresh mkdtemp path)."""
    needle = os.fsencode(os.path.realpath(work))
    spared = ancestry()  # the script and whatever ran it (`--keep DIR` names the path too)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spared:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass  # gone meanwhile


def ancestry():
    """This process and its ancestors' PIDs."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids

"""The reaper: kills a job's whole process tree when the launcher dies, even by SIGKILL.

Workers get SIGKILL from the kernel when the launcher dies (PR_SET_PDEATHSIG), but their own
children (data loaders, compilers, a shell's grandchildren) are re-parented to PID 1 and live on.
The launcher therefore starts this small process first, in a session of its own (so a terminal's
Ctrl-C or hang-up does not reach it), and writes each child's PID to it through a pipe. The reaper
records the child's session and, once a second, every descendant it can see. When the pipe closes
(the launcher exited, however it died) it SIGKILLs every recorded process still alive and every
process left in the children's sessions, then exits.

    python -m launcher.watchdog   # stdin: one "PID" per line from the launcher
"""
import os
import select
import signal
import subprocess
import sys
import time
from typing import Dict, Set

import psutil

SCAN_S = 1.0


class Reaper:
    """Remembers the launcher's children, their sessions and descendants; kills them on `reap`."""

    def __init__(self):
        self.known: Dict[int, float] = {}  # pid -> create time (guards against PID reuse)
        self.sessions: Set[int] = set()

    def add(self, pid: int) -> None:
        """A new child of the launcher (its PID is also its session id: start_new_session)."""
        self.sessions.add(pid)
        try:
            self.known.setdefault(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            pass
        self.scan()

    def scan(self) -> None:
        """Record every live descendant of the known processes (one sweep of the process table)."""
        for pid, created in self._sweep().items():
            self.known.setdefault(pid, created)

    def _sweep(self) -> Dict[int, float]:
        """The live known processes (same create time: not a reused PID), those in the children's
        sessions, and all their descendants."""
        children: Dict[int, list] = {}
        found: Dict[int, float] = {}
        for proc in psutil.process_iter(["ppid", "create_time"]):
            children.setdefault(proc.info["ppid"], []).append(proc)
            try:
                if self.known.get(proc.pid) == proc.info["create_time"] or os.getsid(proc.pid) in self.sessions:
                    found[proc.pid] = proc.info["create_time"]
            except OSError:
                pass
        todo = list(found)
        while todo:
            for proc in children.get(todo.pop(), []):
                if proc.pid not in found and proc.info["create_time"] is not None:
                    found[proc.pid] = proc.info["create_time"]
                    todo.append(proc.pid)
        found.pop(os.getpid(), None)
        return found

    def reap(self) -> None:
        """SIGKILL what is left of the job: the sweep's processes, a grandchild that called setsid() a
        moment ago included (two passes: a dying process may fork)."""
        for _ in range(2):
            targets = self._sweep()
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if not targets:
                break
            time.sleep(0.05)


def main() -> int:
    """Read PIDs from stdin until it closes, then reap."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end stops the reaper
    reaper, partial, fd = Reaper(), b"", sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], SCAN_S)
        if ready:
            data = os.read(fd, 4096)
            if not data:
                break
            *lines, partial = (partial + data).split(b"\n")
            for line in lines:
                if line.strip().isdigit():
                    reaper.add(int(line))
        reaper.scan()
    reaper.reap()
    return 0


class Watchdog:
    """The launcher's end of the pipe to the reaper process (starting it)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "launcher.watchdog"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, close_fds=True)

    def watch(self, pid: int) -> None:
        """Tell the reaper about a new child."""
        try:
            self.proc.stdin.write(f"{pid}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def close(self, wait: float = 5.0) -> None:
        """Normal end: the reaper cleans up whatever is left, and exits."""
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()


if __name__ == "__main__":
    sys.exit(main())

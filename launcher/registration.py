"""Has each local worker reached the scheduler? Read from the sockets, not from MindSpore's log.

A MindSpore worker opens TCP connections to the scheduler (MS_SCHED_HOST:MS_SCHED_PORT) in
`init()` and keeps them for the life of the job. The launcher's backstop asks the kernel (through
psutil) whether each local worker, or a process it started, holds such a connection: that works
whatever GLOG_v, GLOG_logtostderr or the log directory say, and costs one look per worker until
every worker has been seen once.

A worker may also run without MindSpore's cluster (mindrun's trainer does, for a one-host CPU job in store mode:
trainer/parallel/context.py): it then says so by creating the file MINDRUN_NO_CLUSTER_MARK names
(`declare_no_cluster`), and the backstop counts it as arrived.
"""
import os
import socket
from pathlib import Path
from typing import Iterable, List, Mapping, Set

import psutil

from launcher.discovery import local_addresses


NO_CLUSTER_MARK = "MINDRUN_NO_CLUSTER_MARK"  # the file a worker creates when it will not join the cluster


def no_cluster_mark(log: Path) -> Path:
    """Where a worker whose log is `log` says it runs without MindSpore's cluster."""
    return log.with_name(log.name + ".no-cluster")


def declare_no_cluster(env: Mapping[str, str] = os.environ) -> None:
    """In a worker: tell the launcher this process will not join MindSpore's cluster, so that its registration
    backstop does not end the job for it (nothing outside `mindrun launch`)."""
    path = env.get(NO_CLUSTER_MARK)
    if path:
        Path(path).touch()


class ConnectionWatch:
    """Which of a node's worker processes have connected to the scheduler at (host, port)."""

    def __init__(self, host: str, port: int):
        self.port = port
        self.hosts = self._aliases(host)
        self.seen: Set[int] = set()  # worker keys seen connected (sticky)
        self.unreadable = False  # the kernel would not show us a worker's sockets

    @staticmethod
    def _aliases(host: str) -> Set[str]:
        hosts = {host}
        try:
            hosts.update(info[4][0] for info in socket.getaddrinfo(host, None))
        except socket.gaierror:
            pass
        local = local_addresses()
        if hosts & local or any(h.startswith("127.") for h in hosts):
            hosts |= local | {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # a local scheduler is reached on any
        return hosts

    def _connected(self, pid: int) -> bool:
        try:
            root = psutil.Process(pid)
            tree = [root] + root.children(recursive=True)
        except psutil.Error:
            return False
        for proc in tree:
            try:
                conns = proc.net_connections("tcp")
            except psutil.AccessDenied:
                self.unreadable = True
                continue
            except psutil.Error:
                continue
            if any(c.raddr and c.raddr.port == self.port and c.raddr.ip in self.hosts
                   and c.status == psutil.CONN_ESTABLISHED for c in conns):
                return True
        return False

    def update(self, workers: Iterable) -> None:
        """Look at each not-yet-seen worker (objects with `.key`, `.popen.pid` and `.log`): connected, or declared
        to run without the cluster."""
        for worker in workers:
            if worker.key in self.seen or worker.popen.poll() is not None:
                continue
            log = getattr(worker, "log", None)
            if (log is not None and no_cluster_mark(Path(log)).exists()) or self._connected(worker.popen.pid):
                self.seen.add(worker.key)

    def missing(self, workers: Iterable) -> List[int]:
        """Keys of the workers not seen connected yet."""
        return [w.key for w in workers if w.key not in self.seen]


def describe_missing(missing: List[str], total: int, host: str, port: int, timeout: int,
                     server: str = "the scheduler") -> str:
    """The backstop's message: which local workers never reached the scheduler (or rank 0's store), and what
    to do."""
    return (f"{len(missing)} of this node's {total} workers ({', '.join(missing)}) had not connected to "
            f"{server} at {host}:{port} within --cluster_time_out {timeout} s (they hang before MindSpore's "
            f"init(), or cannot reach that address). Check their logs, or raise --cluster_time_out "
            f"(-1 waits forever)")


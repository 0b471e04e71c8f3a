"""Data-parallel sums through shared memory, for ranks on one CPU host.

MindSpore's CPU collectives send through their TCP RPC layer: one `AllReduce` of `small`'s flat gradient
(9.5 M float32) between two pinned workers takes about 200 ms, 12-21 % of the step (bench/README.md,
bench.dp_efficiency). Ranks on one host can sum through memory instead: each rank copies its buffer into
its slot of a shared segment, and after a barrier rank r sums the r-th chunk of every slot into the result
region (a reduce-scatter), and after a second barrier every rank reads the whole result (an all-gather).
The barriers are one byte each way over a Unix socket to the group's first rank.

`ops.Custom(..., func_type="pyfunc")` puts that Python code into the compiled step where the `AllReduce`
was. The function is registered under a fixed id (not `id(func)`, a per-process address), so that a step
compiled by one run and loaded from the compile cache by the next calls the same function.

The group is formed when the step is built (`join`): the first rank listens on an abstract Unix socket
named after the job (its master endpoint and restart count, so a restart or a second job on the host
never meets the first), the others connect, the first rank creates the segment (reserving its pages: a
/dev/shm too small is an error every member gets, and `auto` falls back to AllReduce), the others attach
and say so, and the first rank then unlinks the segment's name (the mapping lives as long as the processes). A rank that
dies closes its socket: the others' next barrier fails with an error naming it, not a hang.
"""
import hashlib
import mmap
import os
import socket
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

JOIN_TIMEOUT_S = 60.0
_FN_IDS = {"grads": 0x6D696E6472756E01, "losses": 0x6D696E6472756E02}  # fixed pyfunc ids ("mindrun" + n)
_ACTIVE: Dict[str, "SharedSum"] = {}  # what each fixed id sums in this process
_JOINED: Dict[str, int] = {}  # groups of each kind this process formed (members form them in the same order)


class SharedSumError(RuntimeError):
    """A shared-memory group could not form, or a member left it."""


class SharedMemoryTooSmall(SharedSumError):
    """The host's shared memory cannot hold the segment (every member of the group gets this, with the sizes)."""


def _free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def job_token() -> Optional[str]:
    """What names this job's segments and sockets on the host: the cluster's master endpoint (every rank of a
    job has the same, and no two running jobs do) and the restart count; None outside `mindrun launch` (then
    the sums stay MindSpore collectives)."""
    if "MINDRUN_LOCAL_WORLD_SIZE" not in os.environ:
        return None
    master = os.environ.get("MINDRUN_STORE") or (
        f"{os.environ.get('MS_SCHED_HOST', '')}:{os.environ.get('MS_SCHED_PORT', '')}")
    if master == ":":
        return None
    restart = os.environ.get("MINDRUN_RESTART_COUNT", "0")
    return hashlib.sha1(f"{os.getuid()}-{master}-{restart}".encode()).hexdigest()[:16]


def one_host(world_size: int) -> bool:
    """Whether every rank of the job runs on this host (the launcher's local world size is the world)."""
    return int(os.environ.get("MINDRUN_LOCAL_WORLD_SIZE", "0")) == world_size


class SharedSum:
    """Element-wise sum of equal-shaped arrays over `size` processes of one host, through shared memory."""

    def __init__(self, name: str, index: int, size: int, count: int, dtype, timeout: float = JOIN_TIMEOUT_S):
        self.name, self.index, self.size = name, index, size
        self.count, self.dtype = int(count), np.dtype(dtype)
        self.sum_dtype = np.dtype(np.float32) if self.dtype == np.float16 else self.dtype
        slot = self.count * self.dtype.itemsize
        total = slot * size + self.count * self.sum_dtype.itemsize
        self._peers: List[socket.socket] = []
        self._leader: Optional[socket.socket] = None
        path = f"/dev/shm/mindrun-{name}"
        if index == 0:
            self._segment = self._lead(path, total, timeout)
        else:
            self._connect(timeout)
            verdict = _read_exact(self._leader, 1, "the group's first rank")
            if verdict != b"y":
                why = _read_all(self._leader) or "the group's first rank could not create the segment"
                self.close()
                raise SharedMemoryTooSmall(why)
            self._segment = self._attach(path, total)
            self._leader.sendall(b"a")  # attached: the first rank may unlink the name
            self._leader.settimeout(None)  # a sum waits as long as the slowest member's step takes
        buf = np.frombuffer(self._segment, np.uint8)
        self.slots = [buf[i * slot:(i + 1) * slot].view(self.dtype) for i in range(size)]
        self.result = buf[size * slot:].view(self.sum_dtype)
        bounds = np.linspace(0, self.count, size + 1).astype(np.int64)
        self.chunk = slice(int(bounds[index]), int(bounds[index + 1]))

    # -- forming the group ---------------------------------------------------------------------
    @staticmethod
    def _create(path: str, nbytes: int) -> mmap.mmap:
        """The segment, its pages reserved now: a tmpfs too small for it (a container's 64 MiB /dev/shm) is an
        error here rather than a SIGBUS at the first write."""
        if os.path.exists(path):  # left by a killed job that had this master port: no running job has it
            os.unlink(path)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return mmap.mmap(fd, nbytes)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)

    @staticmethod
    def _attach(path: str, nbytes: int) -> mmap.mmap:
        fd = os.open(path, os.O_RDWR)
        try:
            return mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)

    def _address(self) -> str:
        return "\0mindrun-" + self.name  # abstract namespace: no file, gone with the process

    def _lead(self, path: str, nbytes: int, timeout: float) -> mmap.mmap:
        """The first rank: every member connected, then the segment created (or every member told why not),
        then every member's word that it has mapped it, then its name unlinked."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peers: Dict[int, socket.socket] = {}
        try:
            server.bind(self._address())
            server.listen(self.size)
            server.settimeout(timeout)
            try:
                while len(peers) < self.size - 1:
                    conn, _ = server.accept()
                    conn.settimeout(timeout)
                    peers[int.from_bytes(_read_exact(conn, 4, "a joining rank"), "little")] = conn
            except socket.timeout:
                missing = sorted(set(range(1, self.size)) - set(peers))
                raise SharedSumError(f"shared-memory sum {self.name!r}: members {missing} did not join within "
                                     f"{timeout:.0f} s") from None
            self._peers = [peers[i] for i in sorted(peers)]
            try:
                segment = self._create(path, nbytes)
            except OSError as e:
                free = _free_bytes(os.path.dirname(path))
                why = (f"{os.path.dirname(path)} has {free / 2**20:.0f} MiB free, the sums need {nbytes / 2**20:.0f} "
                       f"MiB ({e.strerror})")
                for conn in self._peers:
                    conn.sendall(b"n" + why.encode())
                self.close()
                raise SharedMemoryTooSmall(why) from None
            try:
                for conn in self._peers:
                    conn.sendall(b"y")
                for i, conn in enumerate(self._peers, 1):
                    _read_exact(conn, 1, f"group member {i}")
            except socket.timeout:
                raise SharedSumError(f"shared-memory sum {self.name!r}: a member did not map the segment within "
                                     f"{timeout:.0f} s") from None
            for conn in self._peers:
                conn.settimeout(None)
            return segment
        finally:
            server.close()
            if os.path.exists(path):
                os.unlink(path)  # every member has it mapped, or the group failed

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self._address())
                break
            except (FileNotFoundError, ConnectionRefusedError):
                conn.close()
                if time.monotonic() > deadline:
                    raise SharedSumError(f"shared-memory sum {self.name!r}: rank {self.index} found no group "
                                         f"leader within {timeout:.0f} s") from None
                time.sleep(0.01)
        conn.sendall(self.index.to_bytes(4, "little"))
        conn.settimeout(timeout)
        self._leader = conn

    # -- summing ---------------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.index == 0:
            for i, peer in enumerate(self._peers, 1):
                _read_exact(peer, 1, f"group member {i}")
            for peer in self._peers:
                peer.sendall(b"b")
        else:
            self._leader.sendall(b"b")
            _read_exact(self._leader, 1, "the group's first rank")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The sum over the group of every member's `x` (all call together, same shape and dtype)."""
        flat = x.reshape(-1)
        if flat.size != self.count:
            raise SharedSumError(f"shared-memory sum {self.name!r}: got {flat.size} elements, sized for {self.count}")
        self.slots[self.index][:] = flat
        self._barrier()  # every slot written (and every reader of the last result done)
        part = self.result[self.chunk]
        np.add(self.slots[0][self.chunk], self.slots[1][self.chunk], out=part, dtype=self.sum_dtype)
        for other in self.slots[2:]:
            np.add(part, other[self.chunk], out=part, dtype=self.sum_dtype)
        self._barrier()  # every chunk summed
        return self.result.astype(x.dtype, copy=self.sum_dtype != x.dtype).reshape(x.shape)

    def close(self) -> None:
        """Leave the group (the others' next barrier fails)."""
        for conn in self._peers + ([self._leader] if self._leader else []):
            conn.close()
        self._peers, self._leader = [], None


def _read_exact(conn: socket.socket, n: int, who: str) -> bytes:
    data = b""
    while len(data) < n:
        got = conn.recv(n - len(data))
        if not got:
            raise SharedSumError(f"shared-memory sum: {who} left the group (its process ended or failed; "
                                 f"see that rank's log)")
        data += got
    return data


def _read_all(conn: socket.socket) -> str:
    """What the peer sent until it closed (the first rank's reason for refusing)."""
    chunks = []
    while True:
        got = conn.recv(4096)
        if not got:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(got)


def _sum_grads(x):
    return _ACTIVE["grads"](x)


def _sum_losses(x):
    return _ACTIVE["losses"](x)


_FUNCS = {"grads": _sum_grads, "losses": _sum_losses}


def summing_op(kind: str, group: SharedSum):
    """A graph-mode op that returns `group`'s sum of its input (`kind`: "grads" or "losses"; one group of
    each kind is active in a process, the last built)."""
    from mindspore import ops
    from mindspore.ops.operations._pyfunc_registry import add_pyfunc

    previous = _ACTIVE.get(kind)
    if previous is not None and previous is not group:
        previous.close()
    _ACTIVE[kind] = group
    op = ops.Custom(_FUNCS[kind], out_shape=lambda x: x, out_dtype=lambda x: x, func_type="pyfunc")
    add_pyfunc(_FN_IDS[kind], _FUNCS[kind])
    op.add_prim_attr("fn_id", _FN_IDS[kind])
    return op


def join(kind: str, ranks: Sequence[int], rank: int, count: int, dtype, tag: str = "") -> SharedSum:
    """Form (every member calls this together) the shared-memory group of `ranks` for sums of `count`
    elements of `dtype`; `tag` tells groups of one job apart (e.g. the data-parallel group's name)."""
    token = job_token()
    if token is None:
        raise SharedSumError("shared-memory sums need `mindrun launch` (MINDRUN_LOCAL_WORLD_SIZE and the master "
                             "endpoint are not set)")
    serial = _JOINED.get(kind, 0)
    _JOINED[kind] = serial + 1
    members = hashlib.sha1(f"{tag}:{','.join(map(str, ranks))}".encode()).hexdigest()[:12]  # a socket name is <108 B
    name = f"{token}-{kind}{serial}-{members}"
    return SharedSum(name, list(ranks).index(rank), len(ranks), count, dtype)

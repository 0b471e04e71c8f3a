"""Data-parallel sums through shared memory, for ranks on one CPU host.

MindSpore's CPU collectives send through their TCP RPC layer: one `AllReduce` of `small`'s flat gradient
(9.5 M float32) between two pinned workers takes about 200 ms, 12-21 % of the step (bench/README.md,
bench.dp_efficiency). Ranks on one host can sum through memory instead: each rank copies its buffer into
its slot of a shared segment, and after a barrier rank r sums the r-th chunk of every slot into the result
region (a reduce-scatter), and after a second barrier every rank reads the whole result (an all-gather).
The barriers are one byte each way over a Unix socket to the group's first rank (trainer/parallel/local_group.py).

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
from typing import Dict, Optional, Sequence

import numpy as np

from trainer.parallel.local_group import JOIN_TIMEOUT_S, LocalGroup, LocalGroupError

_FN_IDS = {"grads": 0x6D696E6472756E01, "losses": 0x6D696E6472756E02}  # fixed pyfunc ids ("mindrun" + n)
_ACTIVE: Dict[str, "SharedSum"] = {}  # what each fixed id sums in this process
_JOINED: Dict[str, int] = {}  # groups of each kind this process formed (members form them in the same order)


class SharedSumError(LocalGroupError):
    """A shared-memory group could not form, or a member left it."""


class SharedMemoryTooSmall(SharedSumError):
    """The host's shared memory cannot hold the segment (every member of the group gets this, with the sizes)."""


def _free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def shared_memory_free() -> int:
    """Bytes free in /dev/shm (0 where there is none)."""
    try:
        return _free_bytes("/dev/shm")
    except OSError:
        return 0


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


def unavailable(backend: str, world_size: int) -> Optional[str]:
    """Why a job's sums cannot go through shared memory (None: they can): the CPU only, every rank on this host,
    started by `mindrun launch` (which names the job's segments and sockets)."""
    if backend != "CPU":
        return f"the backend is {backend}, not CPU"
    if not one_host(world_size):
        return "the job's ranks are not all on this host (MINDRUN_LOCAL_WORLD_SIZE)"
    if job_token() is None:
        return "the job was not started by `mindrun launch`"  # (MINDRUN_LOCAL_WORLD_SIZE, master endpoint)
    return None


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    """What a sum of `dtype` is computed and kept in: float16 in float32 (a float16 sum of ~1e4 keeps only units)."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


class SharedSum:
    """Element-wise sum of equal-shaped arrays over `size` processes of one host, through shared memory."""

    def __init__(self, name: str, index: int, size: int, count: int, dtype, timeout: float = JOIN_TIMEOUT_S):
        self.name, self.index, self.size = name, index, size
        self.count, self.dtype = int(count), np.dtype(dtype)
        self.sum_dtype = _sum_dtype(self.dtype)
        slot = self.count * self.dtype.itemsize
        total = segment_bytes(self.count, size, self.dtype)
        path = f"/dev/shm/mindrun-{name}"
        try:
            self.group = LocalGroup(name, index, size, timeout, label=f"shared-memory sum {name!r}")
        except LocalGroupError as e:
            raise SharedSumError(str(e)) from None
        try:
            self._segment = self._lead(path, total) if index == 0 else self._follow(path, total)
        except LocalGroupError as e:
            self.group.close()
            raise e if isinstance(e, SharedSumError) else SharedSumError(str(e)) from None
        self.group.settimeout(None)  # a sum waits as long as the slowest member's step takes
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

    def _lead(self, path: str, nbytes: int) -> mmap.mmap:
        """The first rank, every member connected: the segment created (or every member told why not), then every
        member's word that it has mapped it, then its name unlinked."""
        try:
            try:
                segment = self._create(path, nbytes)
            except OSError as e:
                free = _free_bytes(os.path.dirname(path))
                why = (f"{os.path.dirname(path)} has {free / 2**20:.0f} MiB free, the sums need {nbytes / 2**20:.0f} "
                       f"MiB ({e.strerror})")
                self.group.broadcast(b"n" + why.encode())
                raise SharedMemoryTooSmall(why) from None
            self.group.broadcast(b"y")
            self.group.acknowledge()  # every member has mapped it
            return segment
        finally:
            if os.path.exists(path):
                os.unlink(path)  # every member has it mapped, or the group failed

    def _follow(self, path: str, nbytes: int) -> mmap.mmap:
        verdict = self.group.broadcast()
        if verdict != b"y":
            raise SharedMemoryTooSmall(verdict[1:].decode(errors="replace")
                                       or "the group's first rank could not create the segment")
        segment = self._attach(path, nbytes)
        self.group.acknowledge()  # mapped: the first rank may unlink the name
        return segment

    # -- summing ---------------------------------------------------------------------------------
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

    def _barrier(self) -> None:
        try:
            self.group.barrier()
        except LocalGroupError as e:
            raise SharedSumError(str(e)) from None

    def close(self) -> None:
        """Leave the group (the others' next barrier fails)."""
        self.group.close()


def segment_bytes(count: int, size: int, dtype) -> int:
    """Bytes of the shared segment that sums `count` elements of `dtype` over `size` members: a slot each and
    the result (float16 summed in float32)."""
    dtype = np.dtype(dtype)
    return int(count) * (dtype.itemsize * size + _sum_dtype(dtype).itemsize)


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

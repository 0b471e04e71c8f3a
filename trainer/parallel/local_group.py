"""A group of processes on one host, joined by Unix sockets to its first member (a star), for host-side sums.

The first member listens on an abstract Unix socket (no file; gone with the process) named after the group; the
others connect, retrying until it listens, and say their index. After that every exchange is a few bytes each
way through the first member: a barrier, a broadcast of the first member's word, or an element-wise sum of small
arrays (each member sends its array, the first member adds them in index order and sends the sum back).

A member whose process ends closes its socket: the others' next exchange fails with a LocalGroupError naming
it instead of hanging. Used by the shared-memory gradient sums (trainer/parallel/shared_sum.py: the barriers
around the segment) and by a one-host CPU job that runs without MindSpore's cluster (trainer/parallel/context.py:
the run clock, validation's sums and the checkpoint agreements).
"""
import socket
import struct
import time
from typing import Dict, List, Optional

import numpy as np

JOIN_TIMEOUT_S = 60.0
_LENGTH = struct.Struct("<Q")


class LocalGroupError(RuntimeError):
    """The group could not form, a member left it, or the members disagreed on an exchange."""


class LocalGroup:
    """`size` processes of this host; this one is member `index` (0: the one the others connect to).

    Every member constructs it together; `timeout` bounds the forming only (an exchange waits as long as the
    slowest member takes to reach it). `label` names the group in errors."""

    def __init__(self, name: str, index: int, size: int, timeout: float = JOIN_TIMEOUT_S, label: str = ""):
        if not 0 <= index < size:
            raise LocalGroupError(f"{label or name}: member index {index} is outside a group of {size}")
        self.name, self.index, self.size = name, index, size
        self.label = label or f"local group {name!r}"
        self.peers: List[socket.socket] = []  # the first member's sockets to members 1.., in index order
        self.leader: Optional[socket.socket] = None  # another member's socket to the first
        if size > 1:
            self._lead(timeout) if index == 0 else self._connect(timeout)

    # -- forming ---------------------------------------------------------------------------------
    def _address(self) -> str:
        return "\0mindrun-" + self.name

    def _lead(self, timeout: float) -> None:
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
                    peers[int.from_bytes(self._read(conn, 4, "a joining rank"), "little")] = conn
            except socket.timeout:
                for conn in peers.values():
                    conn.close()
                missing = sorted(set(range(1, self.size)) - set(peers))
                raise LocalGroupError(f"{self.label}: members {missing} did not join within {timeout:.0f} s") from None
        finally:
            server.close()
        self.peers = [peers[i] for i in sorted(peers)]

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
                    raise LocalGroupError(f"{self.label}: rank {self.index} found no group leader within "
                                          f"{timeout:.0f} s") from None
                time.sleep(0.01)
        conn.sendall(self.index.to_bytes(4, "little"))
        conn.settimeout(timeout)
        self.leader = conn

    def settimeout(self, seconds: Optional[float]) -> None:
        """How long an exchange may wait for another member (None: as long as it takes)."""
        for conn in self.peers + ([self.leader] if self.leader else []):
            conn.settimeout(seconds)

    # -- exchanges -------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Return once every member has called it."""
        if self.index == 0:
            for i, peer in enumerate(self.peers, 1):
                self._read(peer, 1, f"group member {i}")
            for i, peer in enumerate(self.peers, 1):
                self._send(peer, b"b", f"group member {i}")
        elif self.leader is not None:
            self._send(self.leader, b"b", "the group's first rank")
            self._read(self.leader, 1, "the group's first rank")

    def acknowledge(self) -> None:
        """Members: one byte to the first member. The first member: wait for every member's (a half barrier:
        the first member learns that everyone has done something, e.g. mapped a segment)."""
        if self.index == 0:
            for i, peer in enumerate(self.peers, 1):
                self._read(peer, 1, f"group member {i}")
        elif self.leader is not None:
            self._send(self.leader, b"a", "the group's first rank")

    def broadcast(self, data: bytes = b"") -> bytes:
        """The first member's `data` on every member (the others' argument is ignored)."""
        if self.index == 0:
            for i, peer in enumerate(self.peers, 1):
                self._send(peer, _LENGTH.pack(len(data)) + data, f"group member {i}")
            return data
        if self.leader is None:
            return data
        return self._message(self.leader, "the group's first rank")

    def sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over the members of each one's `array` (same shape and dtype on every member), added
        in member order in the array's dtype; every member gets it."""
        array = np.ascontiguousarray(array)
        if self.size == 1:
            return array.copy()
        header = f"{array.dtype.str}{list(array.shape)}".encode()
        if self.index != 0:
            self._send(self.leader, _LENGTH.pack(len(header)) + header + _LENGTH.pack(array.nbytes) + array.tobytes(),
                       "the group's first rank")
            status = self._read(self.leader, 1, "the group's first rank")
            reply = self._message(self.leader, "the group's first rank")
            if status != b"s":
                raise LocalGroupError(reply.decode(errors="replace"))
            return np.frombuffer(reply, array.dtype).reshape(array.shape).copy()
        total, problem = array.copy(), None
        for i, peer in enumerate(self.peers, 1):  # read every member's array, even after a mismatch
            theirs_header = self._message(peer, f"group member {i}")
            data = self._message(peer, f"group member {i}")
            if theirs_header != header:
                problem = problem or (f"{self.label}: member {i} summed {theirs_header.decode(errors='replace')}, "
                                      f"member 0 {header.decode()}: the ranks are not at the same point of the run")
            elif problem is None:
                total += np.frombuffer(data, array.dtype).reshape(array.shape)
        reply = (b"e", problem.encode()) if problem else (b"s", total.tobytes())
        for i, peer in enumerate(self.peers, 1):
            self._send(peer, reply[0] + _LENGTH.pack(len(reply[1])) + reply[1], f"group member {i}")
        if problem:
            raise LocalGroupError(problem)
        return total

    def close(self) -> None:
        """Leave the group (the others' next exchange fails)."""
        for conn in self.peers + ([self.leader] if self.leader else []):
            conn.close()
        self.peers, self.leader = [], None

    # -- sending and reading -----------------------------------------------------------------------
    def _broken(self) -> None:
        """A member is gone: leave too, so that every other member's next read fails at once, not at its exit."""
        if self.peers or self.leader:
            self.close()

    def _send(self, conn: socket.socket, data: bytes, who: str) -> None:
        try:
            conn.sendall(data)
        except OSError:  # a broken pipe or a reset: the other end has closed
            self._broken()
            raise LocalGroupError(f"{self.label}: {who} left the group (its process ended or failed; see that "
                                  f"rank's log)") from None

    def _message(self, conn: socket.socket, who: str) -> bytes:
        (length,) = _LENGTH.unpack(self._read(conn, _LENGTH.size, who))
        return self._read(conn, length, who)

    def _read(self, conn: socket.socket, n: int, who: str) -> bytes:
        chunks, got = [], 0
        while got < n:
            try:
                chunk = conn.recv(min(n - got, 1 << 20))
            except socket.timeout:
                self._broken()
                raise LocalGroupError(f"{self.label}: {who} did not answer in time") from None
            if not chunk:
                self._broken()
                raise LocalGroupError(f"{self.label}: {who} left the group (its process ended or failed; see that "
                                      f"rank's log)")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

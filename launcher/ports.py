"""Is a TCP port free to bind, and which one is."""
import errno
import socket
from typing import Optional

from launcher.errors import LaunchError


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_is_free(host: str, port: int) -> bool:
    """True if a listening socket could bind `host:port` right now (SO_REUSEADDR, as servers do)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if exc.errno == errno.EADDRNOTAVAIL:  # not an address of this machine: nothing to check here
                return True
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free on `host` (it can be taken again before it is used)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _holder(port: int) -> Optional[str]:
    """Which process listens on `port`, when psutil can tell."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3])})"
    except Exception:  # psutil missing or not allowed to look: the message simply says less
        return None
    return None


def check_master_port(host: str, port: int) -> None:
    """Raise LaunchError naming the port (and its holder) if the scheduler could not bind it."""
    if not port_is_free(host, port):
        holder = _holder(port)
        by = f" by {holder}" if holder else ""
        raise LaunchError(
            f"master port {port} on {host} is already in use{by}. Stop that process, choose another "
            f"port with --master_port N, or pass --master_port 0 to pick a free one (single node only). "
            f"A leftover MS_SCHED_PORT in the environment of an earlier job is a common cause.")

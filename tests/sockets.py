"""Which addresses a process tree listens on, read from /proc (no psutil: it is not a dependency).

Ray's gcs_server, raylet and agents are descendants of the process that started them, so the
tree rooted at a `fedloom simulate` (or `flwr run`) process covers everything it opened. A socket
counts as listening when it is a TCP socket in LISTEN or a UDP socket bound without a peer.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


@dataclass(frozen=True)
class Listener:
    """One listening socket: who holds it and where it listens."""

    proto: str  # tcp, tcp6, udp, udp6
    address: str
    port: int
    pid: int
    command: str

    @property
    def loopback(self) -> bool:
        """127.0.0.0/8, ::1, or 127.x seen through an IPv6 socket (::ffff:127.0.0.1, as gRPC binds it)."""
        ip = ipaddress.ip_address(self.address)
        mapped = getattr(ip, "ipv4_mapped", None)
        return (mapped or ip).is_loopback

    def __str__(self) -> str:
        return f"{self.proto} {self.address}:{self.port} pid {self.pid} {self.command}"


def descendants(root: int) -> list[int]:
    """`root` and every process below it (children of children...), read from /proc/*/stat."""
    parent_of: dict[int, int] = {}
    for d in _PROC.iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent_of[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        kids = [pid for pid, ppid in parent_of.items() if ppid in frontier and pid not in tree]
        tree.update(kids)
        frontier = kids
    return sorted(tree)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in (_PROC / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # the process ended, or is not ours to read
        pass
    return inodes


def _decode(hex_addr: str) -> tuple[str, int]:
    """/proc/net's `0100007F:1F90` → ('127.0.0.1', 8080); IPv6 is four little-endian words."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(packed)), int(port, 16)


def _bound_sockets(pid: int) -> dict[str, tuple[str, str, int]]:
    """inode → (proto, address, port) of the listening sockets in `pid`'s network namespace."""
    found = {}
    kinds = (("tcp", _TCP_LISTEN), ("tcp6", _TCP_LISTEN), ("udp", _UDP_UNCONNECTED), ("udp6", _UDP_UNCONNECTED))
    for proto, state in kinds:
        try:
            lines = (_PROC / str(pid) / "net" / proto).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == state:
                found[f[9]] = (proto, *_decode(f[1]))
    return found


def _command(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def listeners(root: int) -> list[Listener]:
    """Every listening socket held by `root` or one of its descendants, now."""
    pids = descendants(root)
    bound = _bound_sockets(root) if pids else {}
    out = []
    for pid in pids:
        for inode in _socket_inodes(pid):
            if inode in bound:
                proto, addr, port = bound[inode]
                out.append(Listener(proto, addr, port, pid, _command(pid)))
    return out


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (a detached server has left the tree that started it)."""
    pids = []
    for d in _PROC.iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def watch(roots: Callable[[], Iterable[int]], running: Callable[[], bool], interval: float = 0.3) -> list[Listener]:
    """Sample the listeners of every tree under `roots()` until `running()` is false, so that
    components which start late (workers, agents) or live briefly are seen too."""
    seen: dict[tuple[str, str, int, int], Listener] = {}
    while running():
        for root in set(roots()):
            for s in listeners(root):
                seen.setdefault((s.proto, s.address, s.port, s.pid), s)
        time.sleep(interval)
    return list(seen.values())


def listening_commands(found: Iterable[Listener]) -> str:
    """All command lines that held a listener, for asserting which components were seen."""
    return " | ".join(sorted({s.command for s in found}))


def not_loopback(found: Iterable[Listener]) -> list[Listener]:
    return [s for s in found if not s.loopback]


def assert_loopback_only(seen: list[Listener], log: Path, components: Iterable[str]) -> None:
    """Every socket the run's process tree listened on was on loopback, and the named components were seen."""
    commands = listening_commands(seen)
    for name in components:  # not vacuous: Ray really ran and was seen listening
        assert name in commands, f"{name} never seen listening; log tail:\n{log.read_text(errors='replace')[-3000:]}"
    exposed = not_loopback(seen)
    assert not exposed, "listening beyond loopback:\n" + "\n".join(map(str, exposed))

"""The guard's side of the warm ClientApp (participant.warm): where the member's warm process
listens, and handing it one task. Kept apart so the guard never imports the warm process's module
(which imports the guard to run it in each forked child)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import tempfile
from pathlib import Path

SOCKET_ENV = "FEDLOOM_WARM_SOCKET"


def socket_path(state_dir: Path) -> Path:
    """Where the warm process listens: in the state directory, or a private temporary directory
    when that path is too long for a unix socket (108 bytes on Linux)."""
    where = state_dir / "warm"
    if len(str(where / "clientapp.sock")) > 100:
        where = Path(tempfile.mkdtemp(prefix="fedloom-warm-"))
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o700)
    return where / "clientapp.sock"


def delegate(argv: list[str]) -> int | None:
    """Run the ClientApp in the warm process: its exit status, or None when there is no warm
    process to ask (the caller then runs cold)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        socket.send_fds(sock, [json.dumps(argv).encode()], [0, 1, 2])
        sock.shutdown(socket.SHUT_WR)
        child = _read_int(sock)
    except OSError:
        sock.close()
        return None
    if child is None:
        sock.close()
        return None

    def forward(signum: int, _frame: object) -> None:  # Ctrl-C / SIGTERM reach the ClientApp
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = _read_int(sock)
    sock.close()
    return 1 if status is None else status


def _read_int(sock: socket.socket) -> int | None:
    data = b""
    while len(data) < 8:
        chunk = sock.recv(8 - len(data))
        if not chunk:
            return None
        data += chunk
    return struct.unpack("!q", data)[0]

"""A warm ClientApp: one long-lived process per member imports Flower, torch and fedloom once, and
each message's ClientApp runs in a fork of it instead of a fresh interpreter.

Flower 1.41 starts a new `flwr-clientapp` process for every message (SuperExec's subprocess
executor; its warm executor pools exist only on Kubernetes and for agent, model and connector
tasks, not ClientApps), and that process spends most of a trip importing flwr, torch and the app.
`fedloom participant start` runs `python -m participant.warm SOCKET` beside the SuperNode. The app
guard, which SuperExec starts as `flwr-clientapp`, hands its argument list and its stdin, stdout
and stderr to this process over a unix socket and waits; this process forks a child that runs
exactly what the guard would have run in its own process (`participant.guard.run`: the bundle
check installed first, then Flower's own `flwr_clientapp()`), and reports the child's exit status
back. So:

  - every message still gets a process of its own (nothing but imported modules carries over from
    one message to the next: the child is forked from a process that never ran a task);
  - the app guard's guarantee holds: the bundle's hash is checked in the child before Flower
    installs or loads the bundle, against the app hash in the kit of THIS process's environment
    (`FEDLOOM_KIT` as `fedloom participant start` set it); from the socket this process takes only
    the argument list, never environment variables;
  - only the member's own user can reach the socket (its directory is 0700). If the warm process
    is not there, the guard runs the ClientApp itself, cold, as before.

This process is single-threaded (a selector over the socket and one pidfd per running child), so a
fork never copies a lock held by another Python thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
from pathlib import Path

log = logging.getLogger("fedloom.warm")
MAX_ARGS_BYTES = 65536
PRELOAD = (
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supernode.cli.flwr_clientapp",
    "participant.guard",
    "participant.client_app",  # torch, numpy, tasks, protocol: the app Flower loads by this name
)


# ------------------------------------------------------------------------------ the warm process
def _run_child(argv: list[str], fds: list[int]) -> None:
    """In the forked child: take the guard's stdio, run the guarded ClientApp, exit with its code."""
    for i, fd in enumerate(fds[:3]):
        os.dup2(fd, i)
    for fd in fds:
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 1
    try:
        from participant.guard import run

        sys.argv = ["flwr-clientapp", *argv]
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        logging.getLogger("fedloom.guard").exception("the ClientApp failed")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _accept(server: socket.socket, sel: selectors.BaseSelector) -> None:
    conn, _ = server.accept()
    try:
        # the directory's 0700 mode is the gate; the peer's uid is checked as well, so a socket
        # path someone else made reachable still serves only this member's own user
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():
            raise ValueError(f"a connection from uid {uid}, not this member's")
        conn.settimeout(5.0)  # a request is one small message: a silent peer cannot hold the loop
        msg, fds, _flags, _addr = socket.recv_fds(conn, MAX_ARGS_BYTES, 3)
        conn.settimeout(None)
        argv = json.loads(msg)
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or len(fds) != 3:
            raise ValueError("not an argument list with three file descriptors")
    except (OSError, ValueError) as exc:
        log.warning("refused a request: %s", exc)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        for key in list(sel.get_map().values()):  # the other children's pidfds and connections
            if key.data is not None:
                os.close(key.fd)
                key.data[1].close()
        sel.close()
        server.close()
        conn.close()
        _run_child(argv, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(struct.pack("!q", pid))
    sel.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, conn))


def _reap(key: selectors.SelectorKey, sel: selectors.BaseSelector) -> None:
    pid, conn = key.data
    sel.unregister(key.fileobj)
    os.close(key.fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):  # the guard may be gone (stopped); the child is reaped all the same
        conn.sendall(struct.pack("!q", code if code >= 0 else 128 - code))
    conn.close()


WARM_UP_STEPS = 2  # the optimizer's first step and one with its state: every kernel a round runs


def warm_up(kit: Path, data: str, device: str) -> float:
    """Two local training steps on the member's own data, here, before any child is forked: torch's
    first-call set-up (kernels, autograd, allocator) is then inherited by every ClientApp, which
    otherwise paid it on each message (digits: 2.0 s -> 0.08 s an epoch). Steps on the model
    itself, not a round's training: that also made the parameter vector and the update, and this
    process's peak was the member's highest (7.6 x 4d above a bare interpreter at d = 10^7, in
    `fedloom bench memory`). Nothing leaves this process; on a GPU nothing is done (a CUDA
    context does not survive a fork). Seconds spent."""
    import time

    from fedloom.kits import load_member_kit

    from .device import resolve_device
    from .local_data import from_path
    from .trainer import LocalTrainer, train_config

    t0 = time.perf_counter()
    where = resolve_device(device)
    if where.type != "cpu":
        return 0.0
    import torch

    member = load_member_kit(kit)
    threads = torch.get_num_threads()
    # on one thread: an OpenMP pool started here would be copied into every fork without its
    # threads, and a child's first parallel op would hang (seen: a digits epoch on 2 threads)
    torch.set_num_threads(1)
    try:
        trainer = LocalTrainer(member.plan, from_path(member.plan.task.ref, data), where)
        cfg = train_config(member.plan, member.plan.train_seed(0, member.member.id), steps=WARM_UP_STEPS)
        trainer.task.train(trainer.model, trainer.data.train, cfg, where)
        del trainer
    finally:
        torch.set_num_threads(threads)  # the children's own setting; their pool starts in them
    return time.perf_counter() - t0


def serve(path: Path, data: str | None = None, device: str = "cpu") -> None:
    """Preload (and warm up on the member's data when given), listen on `path` (0600, in a 0700
    directory) and fork one child per request."""
    import importlib

    import fedloom  # noqa: F401  (telemetry off before flwr loads)

    for name in PRELOAD:
        importlib.import_module(name)
    kit = os.environ.get("FEDLOOM_KIT")
    if data and kit:
        try:
            log.info("warmed up: one local training pass in %.1f s", warm_up(Path(kit), data, device))
        except Exception as exc:  # a warm-up is an optimisation: the ClientApp reports real errors
            log.warning("no warm-up (%s: %s); each ClientApp sets torch up itself", type(exc).__name__, exc)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ, None)
    log.info("warm ClientApp ready on %s", path)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    parent = os.getppid()  # the member's service: when it is gone (killed), so is this process
    try:
        while not stopping and os.getppid() == parent:
            for key, _ in sel.select(timeout=1.0):
                if key.data is None:
                    _accept(server, sel)
                else:
                    _reap(key, sel)
    finally:
        path.unlink(missing_ok=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s fedloom-warm %(levelname)s %(message)s")
    log.setLevel(logging.INFO)  # our own lines; not the libraries' import chatter
    if len(sys.argv) not in (2, 4):
        raise SystemExit("usage: python -m participant.warm SOCKET [DATA DEVICE]")
    with contextlib.suppress(KeyboardInterrupt):
        serve(Path(sys.argv[1]), *sys.argv[2:4])


if __name__ == "__main__":
    main()

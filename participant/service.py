"""`fedloom participant start`: run this member's Flower SuperNode, guarded.

The SuperNode dials the coordinator's public address over TLS (trusting only the federation's
CA), authenticates with the member's node key, and runs every task through fedloom's app guard
(`participant.guard`, first on the SuperNode's PATH as `flwr-clientapp`), which refuses any app
bundle whose hash differs from the one in this member's kit before any of its code runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from fedloom.errors import UserError
from fedloom.kits import load_member_kit
from fedloom.processes import flower_env, flower_exit_code, free_port, spawn, stop

from .device import resolve_device
from .guard import KIT_ENV
from .local_data import from_path
from .supernode import FLOWER_HEARTBEAT, HEARTBEAT_ENV, HEARTBEAT_RANGE
from .warm_client import SOCKET_ENV, socket_path

log = logging.getLogger("fedloom.participant")
NOT_REGISTERED = 305  # Flower's exit code for a node whose key the SuperLink does not know
# A node that refused the server's certificate this many times in a row stops (exit 2) instead of
# retrying forever: a kit trusting another CA, or a server that is not the coordinator, stays so.
# More than one, so a single odd failure (e.g. a proxy restarting) does not end the service.
TLS_REFUSALS_BEFORE_GIVING_UP = 3
# How often Flower's SuperExec asks the SuperNode for a task to launch (Flower's default: 1 s).
# The call stays on this machine (the SuperNode's local Runtime API).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL = "0.1"
GUARD_SCRIPT = """#!/bin/sh
# fedloom's app guard, installed as the `flwr-clientapp` this member's SuperNode launches.
exec "{python}" -m participant.guard "$@"
"""


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} not found: {path} (is this a kit made by `fedloom provision`?)")
    return path


def _flower_failure(log_file: Path, since: int = 0) -> tuple[int | None, str]:
    """Flower prints its exit code ("Exit Code: 305") and the reason, then exits 1: read both,
    from what was written after byte `since` (this run's output, not an earlier run's)."""
    try:
        with log_file.open("rb") as f:
            f.seek(max(since, log_file.stat().st_size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None, ""
    code, after = flower_exit_code(tail)
    reason = next((line.strip() for line in after if "SSL" in line or "activate" in line), "")
    return code, reason


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _why_stopped(log_file: Path, since: int, returncode: int | None) -> tuple[str, bool]:
    """Why the SuperNode stopped, in words, and whether it was because it refused the server's
    TLS certificate (a foreign CA or a wrong name: not something a retry can change)."""
    code, reason = _flower_failure(log_file, since)
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return "the coordinator's TLS certificate is not signed by this kit's CA: " + reason, True
    if code == NOT_REGISTERED:
        return "this node's key is not registered with the coordinator (yet)", False
    return (f"Flower exit code {code}" if code else f"exit code {returncode}"), False


def install_guard(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "flwr-clientapp"
    script.write_text(GUARD_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    return bin_dir


def supernode_command(kit_dir: Path, data: Path, device: str, state_dir: Path, superlink: str, port: int) -> list[str]:
    node_config = f'kit="{kit_dir}" data-path="{data}" device="{device}" state-dir="{state_dir}"'
    return [
        sys.executable,
        "-m",
        "participant.supernode",  # Flower's flower-supernode with shorter waits between pulls
        "--superlink",
        superlink,
        "--root-certificates",
        str(kit_dir / "ca.crt"),
        "--auth-supernode-private-key",
        str(kit_dir / "node.key"),
        "--port",
        str(port),
        "--isolation",
        "subprocess",
        "--node-config",
        node_config,
    ]


def _warn_about_scale(task_name: str, local, data_path: Path) -> None:
    """Data scaled unlike the task expects (0..255 pixels for a 0..1 task) is allowed, but said."""
    import tasks
    from tasks.base import range_warning

    task = tasks.get_task(task_name)
    for split, ds in (("training data", local.train), ("test data", local.test)):
        warning = range_warning(task, ds, f"{data_path} ({split})")
        if warning:
            log.warning("%s", warning)


def _check_base(task_ref: str, base: str | None) -> None:
    """A language-model task's base: this member's own copy (``base``) must hash to the plan's pin. Checked
    here, before the node connects, and again wherever the model is built (the node inherits the path)."""
    import tasks
    from tasks.hflm_base import BASE_ENV

    if base:
        os.environ[BASE_ENV] = str(Path(base).expanduser().resolve())
    task = tasks.get_task(task_ref)
    source = getattr(task, "source", None)
    if callable(source):
        try:
            source()
        except ValueError as exc:
            raise UserError(str(exc)) from None
    elif base:
        raise UserError(f"--base is for language-model tasks; the plan's task {task.name!r} has no base model")


def start(
    kit: str,
    data: str,
    device: str = "auto",
    state_dir: str | None = None,
    superlink: str | None = None,
    base: str | None = None,
    heartbeat: float = FLOWER_HEARTBEAT,
) -> int:
    low, high = HEARTBEAT_RANGE
    if not low <= heartbeat <= high:
        raise UserError(f"--heartbeat {heartbeat:g}: Flower's SuperLink accepts {low:g} to {high:g} seconds")
    kit_dir = Path(kit).resolve()
    member = load_member_kit(kit_dir)
    for name, what in (
        ("ca.crt", "the federation's CA certificate"),
        ("node.key", "the node key"),
        ("federation.json", "the federation file"),
    ):
        _need(kit_dir / name, what)
    if not member.plan.app_hash:
        raise UserError(f"the plan in {kit_dir} names no app hash: this kit was not made by `fedloom provision`")
    _check_base(member.plan.task.ref, base)
    data_path = Path(data).resolve()
    if not data_path.exists():
        raise UserError(f"data not found: {data_path}")
    try:
        local = from_path(member.plan.task.ref, str(data_path))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    _warn_about_scale(member.plan.task.ref, local, data_path)
    resolve_device(device)  # a bad or unavailable device is a user error now, not a failed round later
    address = superlink or json.loads((kit_dir / "federation.json").read_text())["address"]
    state = Path(state_dir).resolve() if state_dir else kit_dir / "state"
    state.mkdir(parents=True, exist_ok=True)
    guard_bin = install_guard(state / "bin")
    sock = socket_path(state)
    env = flower_env({KIT_ENV: str(kit_dir), SOCKET_ENV: str(sock), SUPEREXEC_POLL_ENV: SUPEREXEC_POLL}, guard_bin)
    if heartbeat != FLOWER_HEARTBEAT:  # Flower's own interval needs nothing changed
        env[HEARTBEAT_ENV] = f"{heartbeat:g}"
    cmd = supernode_command(kit_dir, data_path, device, state, address, free_port())
    warm = spawn([sys.executable, "-m", "participant.warm", str(sock), str(data_path), device], env, state / "warm.log")
    log.info(
        "member %s: %d training and %d test examples; connecting to %s",
        member.member.name,
        len(local.train),
        len(local.test),
        address,
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return _run_supernode(cmd, env, state, address, lambda: stopping, warm.pid)
    finally:
        stop(warm)


def _run_supernode(cmd: list[str], env: dict[str, str], state: Path, address: str, stopping, warm_pid: int) -> int:
    """Keep the SuperNode running until `stopping()`: restart it when it stops, give up on TLS refusals."""
    backoff = 2.0
    tls_refusals = 0
    while not stopping():
        log_start = _size(state / "supernode.log")
        proc = spawn(cmd, env, state / "supernode.log")
        info = {"pid": os.getpid(), "supernode_pid": proc.pid, "warm_pid": warm_pid}
        (state / "service.json").write_text(json.dumps(info) + "\n")
        started = time.monotonic()
        try:
            while not stopping() and proc.poll() is None:
                time.sleep(0.5)
        finally:
            stop(proc)
        if stopping():
            break
        # The coordinator may not be up yet, or not have registered this node's key yet (Flower
        # exits 305), or it restarted: a member's node keeps trying, as a service should. A server
        # whose certificate this kit's CA did not sign is different: retrying cannot fix it.
        why, refused_tls = _why_stopped(state / "supernode.log", log_start, proc.returncode)
        tls_refusals = tls_refusals + 1 if refused_tls else 0
        if tls_refusals >= TLS_REFUSALS_BEFORE_GIVING_UP:
            raise UserError(
                f"{why} ({tls_refusals} attempts in a row; see {state / 'supernode.log'}). "
                f"Check that {address} is this federation's coordinator and that this kit is current; "
                "not retrying"
            )
        backoff = 2.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
        log.warning(
            "the SuperNode stopped (%s); starting it again in %.0f s (see %s)", why, backoff, state / "supernode.log"
        )
        deadline = time.monotonic() + backoff
        while not stopping() and time.monotonic() < deadline:
            time.sleep(0.2)
    return 0

"""Small helpers to supervise the Flower processes fedloom starts (ports, environment, shutdown)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

FLOWER_EXIT_CODE = re.compile(r"Exit Code: (\d+)")


def flower_exit_code(log_text: str, context_lines: int = 4) -> tuple[int | None, list[str]]:
    """Flower's own exit code in its log ("Exit Code: 700") and the lines logged after it.

    Flower's processes log their real status this way and then exit 1, and `flwr run` exits 0 even
    when the run it streamed failed: the log line is the only trustworthy status. None when the log
    holds no error exit (Flower prints the line only for codes >= 100)."""
    codes = FLOWER_EXIT_CODE.findall(log_text)
    if not codes:
        return None, []
    after = log_text[log_text.rindex(f"Exit Code: {codes[-1]}") :].splitlines()[1 : 1 + context_lines]
    return int(codes[-1]), after


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def flower_env(extra: dict[str, str] | None = None, path_first: Path | None = None) -> dict[str, str]:
    """The environment for Flower's processes: our venv's bin on PATH (they start each other by
    bare name), no telemetry, no runtime dependency installation (members run only what they
    installed)."""
    env = dict(os.environ)
    bins = [str(Path(sys.executable).parent)]
    if path_first is not None:
        bins.insert(0, str(path_first))
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    env.update(
        FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1"
    )
    env.update(extra or {})
    return env


def spawn(cmd: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen:
    """Start a process in its own process group, its output to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = log_file.open("ab")
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_for_tls(host: str, port: int, ca_file: Path, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until a TLS server at host:port answers with a certificate from our CA."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before {host}:{port} came up")
        try:
            with socket.create_connection((host, port), timeout=2) as raw, ctx.wrap_socket(raw, server_hostname=host):
                return
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answered TLS on {host}:{port} within {timeout:.0f} s") from None
            time.sleep(0.3)

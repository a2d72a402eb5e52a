"""Round latency in deployment (issue 16): the SuperNode's pull waits, the warm ClientApp process,
the coordinator's run watch, and `fedloom bench deployment` (its analysis on recorded timestamps,
and a real smoke run, marked slow)."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from console.bench import deployment
from fedloom import triplog
from participant import supernode, warm_client

# ---------------------------------------------------------------------------- the SuperNode's waits


def test_flower_supernode_loop_still_sleeps_where_the_wrapper_expects():
    """The wrapper swaps the `time` of Flower's SuperNode loop and wraps two of its functions: if a
    Flower upgrade changes them, this fails instead of the wrapper silently doing nothing."""
    import flwr.supernode.start_client_internal as sci

    source = inspect.getsource(sci)
    assert f"time.sleep({supernode.FLOWER_PULL_SLEEP:g})" in source
    assert f"time.sleep({supernode.FLOWER_LOCAL_SLEEP:g})" in source
    assert callable(sci._pull_and_store_message) and callable(sci._push_messages)


def test_pull_clock_is_fast_while_busy_and_falls_back_to_flowers_interval_when_idle(monkeypatch):
    clock = supernode.PullClock(fast=0.2, idle=3.0, busy_window=30.0)
    now = [1000.0]
    monkeypatch.setattr(supernode.time, "monotonic", lambda: now[0])
    assert clock.pull_wait() == 3.0  # nothing seen yet: idle
    clock.message_seen()
    now[0] += 5
    assert clock.pull_wait() == 0.2
    now[0] += 40  # 45 s quiet: backing off, not yet at Flower's interval
    assert 0.2 < clock.pull_wait() < 3.0
    now[0] += 300
    assert clock.pull_wait() == 3.0


def test_pull_clock_maps_only_flowers_two_waits(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(supernode.time, "sleep", slept.append)
    clock = supernode.PullClock(fast=0.2)
    clock.message_seen()
    clock.sleep(3)
    clock.sleep(0.5)
    clock.sleep(1.25)
    assert slept == [0.2, supernode.LOCAL_POLL, 1.25]
    assert clock.time() == pytest.approx(time.time(), abs=5)  # anything else is the real module's


def test_heartbeat_interval_is_what_flowers_supernode_declares_and_keeps(monkeypatch):
    """`--heartbeat` reaches the two places Flower 1.41's SuperNode reads the interval: what it
    declares to the SuperLink (activation and every beat) and how long its beat thread waits."""
    import flwr.supercore.heartbeat as beat
    import flwr.supernode.fleet_http_connection as conn

    source = inspect.getsource(conn)
    assert source.count("heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL") == 2  # activation and each beat
    assert "HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT" in inspect.getsource(beat.HeartbeatSender._run)
    for module in (conn, beat):
        assert module.HEARTBEAT_DEFAULT_INTERVAL == supernode.FLOWER_HEARTBEAT
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)  # restored after
    supernode.set_heartbeat(12)
    assert conn.HEARTBEAT_DEFAULT_INTERVAL == beat.HEARTBEAT_DEFAULT_INTERVAL == 12
    for bad in (9.5, 1801):
        with pytest.raises(ValueError, match="outside what Flower accepts"):
            supernode.set_heartbeat(bad)
    assert conn.HEARTBEAT_DEFAULT_INTERVAL == 12


@pytest.mark.parametrize("seconds", ["5", "3600"])
def test_participant_start_refuses_a_heartbeat_flower_would_refuse_in_one_line(tmp_path, seconds):
    from typer.testing import CliRunner

    from console.cli import app

    args = ["participant", "start", "--kit", str(tmp_path), "--data", str(tmp_path), "--heartbeat", seconds]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"--heartbeat {seconds}: Flower's SuperLink accepts 10 to 1800 seconds" in result.output
    assert "Traceback" not in result.output


def test_wrapped_supernode_notes_received_and_sent(tmp_path, monkeypatch):
    import types

    log = tmp_path / "trips.jsonl"
    monkeypatch.setenv(triplog.ENV, str(log))
    fake = types.ModuleType("fake_sci")
    fake.time = time
    fake._pull_and_store_message = lambda receive, **kw: 7 if receive() else None
    fake._push_messages = lambda **kw: None
    clock = supernode.PullClock()
    supernode.install(fake, clock)
    assert fake.time is clock
    fake._pull_and_store_message(receive=lambda: None)  # an empty pull: nothing noted, still idle
    assert not log.exists() and clock.pull_wait() == supernode.FLOWER_PULL_SLEEP
    fake._pull_and_store_message(receive=lambda: ("message", "tree"))
    fake._push_messages()
    assert [e["event"] for e in triplog.read(log)] == ["pulled", "received", "sent"]
    assert clock.pull_wait() == supernode.PULL_FAST


# ---------------------------------------------------------------------------- the warm ClientApp


@pytest.fixture
def warm_process(tmp_path):
    """A real warm process (preloads Flower, torch and fedloom), with NO kit in its environment."""
    sock = warm_client.socket_path(tmp_path / "state")
    env = {k: v for k, v in os.environ.items() if k not in ("FEDLOOM_KIT", warm_client.SOCKET_ENV)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "participant.warm", str(sock)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "warm.log").open("wb"),
    )
    deadline = time.time() + 180
    while not sock.exists():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "warm.log").read_text()
        time.sleep(0.2)
    yield sock
    proc.terminate()
    proc.wait(30)


def _guard(sock: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`flwr-clientapp` as SuperExec starts it: the guard, with the warm socket in its environment."""
    e = {k: v for k, v in os.environ.items() if k != "FEDLOOM_KIT"}
    e.update({warm_client.SOCKET_ENV: str(sock)}, **env)
    args = ["--flwrclientappio-api-address", "127.0.0.1:9", "--token", "x", "--insecure"]
    return subprocess.run(
        [sys.executable, "-m", "participant.guard", *args], env=e, capture_output=True, text=True, timeout=120
    )


def test_warm_child_runs_the_guard_with_the_warm_process_kit_not_the_callers(warm_process, tmp_path):
    """The caller names a kit in ITS environment; the forked child checks against the warm
    process's own environment (no kit there: everything refused, exit 3), and its output reaches
    the caller's stderr: the child ran the guard, with the caller's stdio."""
    proc = _guard(warm_process, tmp_path, FEDLOOM_KIT=str(tmp_path / "some-kit"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "FEDLOOM_KIT is not set: refusing to run any app" in proc.stderr


def test_guard_runs_cold_when_no_warm_process_listens(tmp_path):
    proc = _guard(tmp_path / "nobody.sock", tmp_path)
    assert proc.returncode == 3 and "FEDLOOM_KIT is not set" in proc.stderr


def test_warm_socket_is_private(warm_process):
    assert warm_process.parent.stat().st_mode & 0o077 == 0
    assert warm_process.stat().st_mode & 0o077 == 0


@pytest.mark.skipif(os.getuid() != 0, reason="only root can knock as another uid (CI runs as root, so CI runs it)")
def test_warm_process_refuses_another_users_connection(warm_process, tmp_path):
    """Past the 0700 directory (opened up here on purpose), the warm process still checks the
    peer's uid: another user's request gets no child (the connection closes with no pid)."""
    opened = [d for d in warm_process.parents if str(d).startswith(tempfile.gettempdir() + "/")]
    modes = {d: d.stat().st_mode & 0o777 for d in opened}
    for d in opened:  # pytest's temporary tree is private to its user too
        d.chmod(0o755)
    warm_process.chmod(0o777)
    probe = (
        "import json, os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "try:\n    socket.send_fds(s, [json.dumps([]).encode()], [0, 1, 2]); s.shutdown(socket.SHUT_WR)\n"
        "    print(len(s.recv(8)))\n"
        "except (BrokenPipeError, ConnectionResetError):  # refused before or while we sent\n    print(0)\n"
    )
    try:
        cmd = [sys.executable, "-c", probe, str(warm_process)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        for d, mode in modes.items():
            d.chmod(mode)
    assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stdout + proc.stderr
    assert "a connection from uid 65534" in (tmp_path / "warm.log").read_text()


def test_warm_process_warms_up_on_the_members_data_and_its_children_train_fast(tmp_path):
    """The warm process trains once on its member's data before it forks: a child forked after
    that trains without torch's first-call set-up, which a fresh process pays (seconds), and on
    torch's default threads without hanging (a pool made before the fork would hang it)."""
    from deployment import Federation

    fed = Federation(tmp_path, ["ana"])
    plan = 'rounds = 1\n[plan.task]\nname = "digits"\n[plan.secure]\nenabled = false'
    fed.provision(plan, "require_secure_aggregation = false")
    kit, data = fed.kits / "ana", tmp_path / "data" / "participant-0.npz"
    probe = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "import torch\n"
        "from participant import warm\n"
        "torch.set_num_threads(2)\n"  # a member's default on 2 cores: the children must not hang
        "args = Path(sys.argv[1]), sys.argv[2], 'cpu'\n"
        "print(f'{warm.warm_up(*args):.3f}', flush=True)\n"  # the warm process's own pass: cold
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print(f'{warm.warm_up(*args):.3f}', flush=True)\n"  # a ClientApp forked after it
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    cmd = [sys.executable, "-c", probe, str(kit), str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # a hung child: TimeoutExpired
    assert proc.returncode == 0, proc.stderr[-2000:]
    cold, in_child = map(float, proc.stdout.split())
    assert in_child < cold / 3, (cold, in_child)


# ---------------------------------------------------------------------------- the coordinator's run watch


def test_coordinator_service_no_longer_spawns_flwr_ls():
    from coordinator import service

    source = inspect.getsource(service)
    assert '"ls"' not in source and "RunWatch" in source


# ---------------------------------------------------------------------------- bench analysis


def _events(*rows: tuple[float, str]) -> list[dict]:
    return [{"t": t, "pid": 1, "event": e} for t, e in rows]


def test_bench_attributes_a_trip_to_its_steps():
    coordinator = _events((100.0, "push"), (104.0, "reply"), (110.0, "push"), (113.0, "reply"))
    member = _events(
        (100.5, "pulled"),
        (100.6, "received"),
        (100.7, "clientapp_start"),
        (101.5, "app_loaded"),
        (101.5, "handler_start"),
        (101.6, "train_start"),
        (102.6, "train_end"),
        (103.0, "handler_end"),
        (103.5, "sent"),
        (110.0, "clientapp_start"),  # no "pulled" (older log): the ClientApp started before the download ended
        (110.2, "received"),
        (110.5, "app_loaded"),
        (110.5, "handler_start"),
        (111.0, "handler_end"),
        (112.0, "sent"),
    )
    trips = deployment.split_trips(coordinator)
    assert [t["seconds"] for t in trips] == [4.0, 3.0]
    steps = deployment.member_steps(trips, [member])
    first, second = steps
    assert first == pytest.approx(
        {
            "pull_wait": 0.5,
            "launch": 0.2,
            "start_imports": 0.8,
            "handler": 1.5,
            "train": 1.0,
            "reply": 0.5,
            "collect": 0.5,
        }
    )
    assert "train" not in second and second["collect"] == pytest.approx(1.0)
    assert second["pull_wait"] == pytest.approx(0.0) and second["start_imports"] == pytest.approx(0.5)


def test_bench_row_has_the_documented_keys():
    raw = {
        "metrics": [{"round": 1, "wall_seconds": 9.0}, {"round": 2, "wall_seconds": 4.0}],
        "trips": [{"push": 0.0, "end": 2.0, "seconds": 2.0, "replies": 3}],
        "steps": [{"pull_wait": 0.1, "handler": 1.0}],
        "idle_cpu_per_min": 1.2,
        "round_cpu_per_min": 20.0,
    }
    row = deployment.summarize(raw, "plain")
    assert row["plain_round_seconds"] == 4.0 and row["plain_first_round_seconds"] == 9.0
    assert row["plain_trip_seconds"] == 2.0 and row["plain_pull_wait_seconds"] == 0.1
    assert row["plain_launch_seconds"] is None


def test_tree_cpu_counts_a_child_process():
    """A child that has burnt 0.3 s of CPU shows in its own tree and in its parent's. It spins to
    0.4 s: /proc counts whole clock ticks, so a child stopped at exactly 0.3 s may read 0.29 forever."""
    spin = "import time\nwhile time.process_time() < 0.4: pass\ntime.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        deadline = time.time() + 120  # a loaded machine gives the child a small share of a core
        while deployment.tree_cpu(child.pid) < 0.3:
            assert time.time() < deadline and child.poll() is None
            time.sleep(0.2)
        assert deployment.tree_cpu(os.getpid()) >= deployment.tree_cpu(child.pid) >= 0.3
    finally:
        child.kill()
        child.wait(30)


# ---------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_bench_deployment_quick_runs_a_real_round(tmp_path):
    out = tmp_path / "deployment.json"
    proc = subprocess.run(
        [sys.executable, "-m", "console.cli", "bench", "deployment", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["plain_rounds_done"] == 1
    for key in ("plain_round_seconds", "trip_seconds", "plain_pull_wait_seconds", "plain_handler_seconds"):
        assert row[key] is not None and row[key] > 0, key
    assert row["plain_idle_cpu_s_per_min"] is not None


def test_waiting_for_members_backs_off_to_one_call_every_two_seconds():
    """An idle coordinator waiting for members asks the SuperLink for node ids at most every 2 s
    once nothing changes (it asked twice a second: most of the SuperLink's idle CPU); a node that
    arrives brings the fast poll back."""
    from coordinator.transport import wait_for_nodes

    calls: list[float] = []

    class Grid:
        def get_node_ids(self) -> list[int]:
            calls.append(time.monotonic())
            return [1] if len(calls) >= 5 else []

    assert wait_for_nodes(Grid(), wanted=2, timeout=10.0, minimum=1) == [1]  # gives up on the 2nd
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) <= 11, gaps  # 0.5 s polls: 21 calls
    assert gaps[0] <= 0.55 and gaps[3] > 1.0  # backing off while nobody comes
    assert gaps[4] <= 0.55  # node 1 arrived: fast again
    assert max(gaps) <= 2.1 and any(g >= 1.9 for g in gaps)  # never slower than 2 s

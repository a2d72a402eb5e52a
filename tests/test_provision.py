"""`fedloom provision`: kits, keys, certificates, the app hash, and its refusals."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from console.cli import app
from fedloom import kits, tls
from fedloom.appbundle import app_bundle_hash, build_app_bundle, stage_app_bundle
from fedloom.errors import UserError
from fedloom.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ("morocco", "peru", "vietnam")
FEDERATION = """
[federation]
name = "tapestry-test"
address = "coord.example.org:9092"
sans = ["coord.example.org", "10.0.0.7", "::1"]
[[members]]
name = "morocco"
country = "MA"
[[members]]
name = "peru"
country = "PE"
[[members]]
name = "vietnam"
[plan]
rounds = 4
[plan.task]
name = "digits"
[plan.secure]
min_cohort = 3
[policy]
min_cohort = 3
max_rounds = 10
"""
PRIVATE = {
    "ca": {"ca.key"},
    "coordinator": {"server.key", "ledger.key"},
    **{m: {"identity.pem", "node.key"} for m in MEMBERS},
}
PUBLIC = {
    "ca": {"ca.crt"},
    "coordinator": {
        "ca.crt",
        "server.crt",
        "ledger.pub",
        "roster.json",
        "plan.json",
        "federation.json",
        *(f"nodes/{m}.pub" for m in MEMBERS),
    },
    **{
        m: {
            "ca.crt",
            "member.json",
            "roster.json",
            "plan.json",
            "policy.toml",
            "ledger.pub",
            "federation.json",
            "node.pub",
        }
        for m in MEMBERS
    },
}

runner = CliRunner()


def provision_cli(*args: str):
    return runner.invoke(app, ["provision", *args])


def write_federation(directory: Path, text: str = FEDERATION) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "federation.toml"
    path.write_text(text)
    return path


def snapshot_app(dest: Path) -> Path:
    """A frozen copy of the app: the working tree may change while a test runs (and so would its hash)."""
    ignore = shutil.ignore_patterns(
        ".venv",
        ".git",
        "__pycache__",
        ".hypothesis",
        ".pytest_cache",
        ".ruff_cache",
        "runs",
        "kits",
        "*.egg-info",
        "build",
    )
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def kits_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("provision")
    result = provision_cli(str(write_federation(tmp)), "--out", str(tmp / "kits"), "--app", str(ROOT))
    assert result.exit_code == 0, result.output
    assert "app hash" in result.output and "offline" in result.output
    return tmp / "kits"


# ---------------------------------------------------------------------------- layout and secrecy
def test_layout_and_file_modes(kits_dir):
    assert {p.name for p in kits_dir.iterdir()} == set(PRIVATE)
    for kit, private in PRIVATE.items():
        d = kits_dir / kit
        assert set(files_of(d)) == private | PUBLIC[kit], kit
        assert d.stat().st_mode & 0o777 == 0o700, f"{d} must be private to its owner"
        for name in private:
            assert (d / name).stat().st_mode & 0o777 == 0o600, f"{d / name} must be 0600"
        for name in PUBLIC[kit]:
            assert (d / name).stat().st_mode & 0o022 == 0, f"{d / name} is writable by others"


def test_member_kits_hold_no_foreign_private_material(kits_dir):
    private = {
        f"{kit}/{name}": (kits_dir / kit / name).read_bytes() for kit, names in PRIVATE.items() for name in names
    }
    # the raw secret bytes too, not only their PEM text
    raw = {}
    for where, data in private.items():
        key = (
            load_ssh_private_key(data, None)
            if data.startswith(b"-----BEGIN OPENSSH")
            else load_pem_private_key(data, None)
        )
        if isinstance(key, ec.EllipticCurvePrivateKey):
            raw[where] = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
        else:
            raw[where] = key.private_bytes_raw()
    for kit in ("coordinator", *MEMBERS):
        own = {f"{kit}/{name}" for name in PRIVATE[kit]}
        for name, data in files_of(kits_dir / kit).items():
            if f"{kit}/{name}" not in own:
                assert b"PRIVATE KEY" not in data, f"{kit}/{name} holds a private key"
            for where, secret in private.items():
                if where not in own:
                    assert secret not in data and raw[where] not in data and raw[where].hex().encode() not in data, (
                        f"{kit}/{name} holds {where}"
                    )


def test_certificates_chain_to_the_ca(kits_dir):
    ca_pem = (kits_dir / "ca" / "ca.crt").read_bytes()
    for kit in ("coordinator", *MEMBERS):
        assert (kits_dir / kit / "ca.crt").read_bytes() == ca_pem
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= dt.timedelta(days=3650)
    ca.verify_directly_issued_by(ca)

    server_pem = (kits_dir / "coordinator" / "server.crt").read_bytes()
    server = x509.load_pem_x509_certificate(server_pem)
    server.verify_directly_issued_by(ca)  # raises InvalidSignature otherwise
    tls.verify_issued_by(server_pem, ca_pem)
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "::1", "127.0.0.1"]
    key = load_pem_private_key((kits_dir / "coordinator" / "server.key").read_bytes(), None)
    assert key.public_key() == server.public_key()

    other = tls.create_ca("someone-else")
    with pytest.raises(UserError, match=r"not issued by|bad signature"):
        tls.verify_issued_by(server_pem, other.cert_pem)


def test_node_keys_are_what_flower_accepts(kits_dir, tmp_path):
    import argparse

    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    for m in MEMBERS:
        d = kits_dir / m
        assert (d / "node.key").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        key = load_ssh_private_key((d / "node.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
        line = (d / "node.pub").read_text()
        assert line.startswith("ecdsa-sha2-nistp384 ") and line.endswith(f" {m}@tapestry-test\n")
        assert load_ssh_public_key(line.encode()) == key.public_key()
        assert (kits_dir / "coordinator" / "nodes" / f"{m}.pub").read_text() == line
        # Flower's own loaders: `flwr supernode register <pub>` and `flower-supernode --auth-supernode-private-key`
        assert try_load_public_key(d / "node.pub") == public_key_to_bytes(key.public_key())
        pair = _try_setup_client_authentication(
            argparse.Namespace(auth_supernode_private_key=str(d / "node.key"), auth_supernode_public_key=None)
        )
        assert pair is not None and pair[1] == key.public_key()
        if shutil.which("ssh-keygen"):  # OpenSSH itself reads it like a key from `ssh-keygen -t ecdsa -b 384`
            copy = tmp_path / f"{m}.key"
            copy.write_bytes((d / "node.key").read_bytes())
            copy.chmod(0o600)
            out = subprocess.run(["ssh-keygen", "-y", "-f", str(copy)], capture_output=True, text=True, check=True)
            assert out.stdout.split()[:2] == line.split()[:2]


def test_kits_load(kits_dir, tmp_path):
    coord = kits.load_coordinator_kit(kits_dir / "coordinator")
    assert coord.federation == kits.FederationInfo("tapestry-test", "coord.example.org:9092")
    assert sorted(coord.node_keys) == sorted(MEMBERS) and len(coord.roster) == 3
    assert coord.plan.participants == 3 and coord.plan.rounds == 4 and coord.plan.federation == "tapestry-test"
    assert len(coord.plan.app_hash) == 64 and int(coord.plan.app_hash, 16) >= 0
    ledger_pub = bytes.fromhex((kits_dir / "coordinator" / "ledger.pub").read_text().strip())
    assert kits.ed25519_public_bytes(coord.ledger_key) == ledger_pub
    for i, m in enumerate(MEMBERS, start=1):
        kit = kits.load_member_kit(kits_dir / m)
        assert kit.member.name == m and kit.member.id == i and kit.plan == coord.plan and kit.roster == coord.roster
        assert kit.deployable and kit.federation == coord.federation and kit.ledger_public == ledger_pub
        assert kit.ca_cert == kits_dir / m / "ca.crt" and kit.node_key == kits_dir / m / "node.key"
    assert kits.load_member_kit(kits_dir / "morocco").member.country == "MA"
    policy = (kits_dir / "peru" / "policy.toml").read_text()
    assert "min_cohort = 3" in policy and "max_rounds = 10" in policy and "require_secure_aggregation = true" in policy
    # simulation kits (no TLS, no node key) still load
    kits.provision_members(Plan(participants=3), tmp_path / "sim")
    sim = kits.load_member_kit(tmp_path / "sim" / "member-1")
    assert not sim.deployable and sim.federation is None and sim.node_key is None


def _tls_server(cert: Path, key: Path) -> tuple[socket.socket, threading.Thread]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread


def _handshake(port: int, ca: Path, name: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))  # with a cafile: only that CA, not the system store
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as conn,
    ):
        return conn.recv(5)


def test_tls_material_works(kits_dir, tmp_path):
    coord = kits_dir / "coordinator"
    sock, _ = _tls_server(coord / "server.crt", coord / "server.key")
    port = sock.getsockname()[1]
    try:
        for name in ("coord.example.org", "localhost", "127.0.0.1", "10.0.0.7"):
            assert _handshake(port, kits_dir / "peru" / "ca.crt", name) == b"hello"
        wrong = tmp_path / "wrong-ca.crt"
        wrong.write_bytes(tls.create_ca("tapestry-test").cert_pem)  # same name, different key
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, wrong, "coord.example.org")
        with pytest.raises(ssl.SSLCertVerificationError):  # a name the certificate does not carry
            _handshake(port, kits_dir / "peru" / "ca.crt", "evil.example.org")
    finally:
        sock.close()


# ---------------------------------------------------------------------------- re-running
def test_rerun_without_force_fails_and_changes_nothing(kits_dir):
    before = {kit: files_of(kits_dir / kit) for kit in PRIVATE}
    fed = kits_dir.parent / "federation.toml"
    result = provision_cli(str(fed), "--out", str(kits_dir), "--app", str(ROOT))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ca.key exists" in lines[0] and "--force" in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert {kit: files_of(kits_dir / kit) for kit in PRIVATE} == before


def test_force_makes_new_keys(tmp_path):
    fed = write_federation(tmp_path)
    out = tmp_path / "kits"
    assert provision_cli(str(fed), "--out", str(out), "--app", str(ROOT)).exit_code == 0
    before = {kit: files_of(out / kit) for kit in PRIVATE}
    # drop a member: its node key must no longer be registrable at the coordinator
    write_federation(
        tmp_path, FEDERATION.replace('[[members]]\nname = "vietnam"\n', "").replace("min_cohort = 3", "min_cohort = 2")
    )
    result = provision_cli(str(fed), "--out", str(out), "--app", str(ROOT), "--force")
    assert result.exit_code == 0, result.output
    for kit, names in PRIVATE.items():
        for name in names:
            if kit != "vietnam":
                assert (out / kit / name).read_bytes() != before[kit][name], f"{kit}/{name} was not replaced"
                assert (out / kit / name).stat().st_mode & 0o777 == 0o600
    assert (out / "ca" / "ca.crt").read_bytes() != before["ca"]["ca.crt"]
    assert sorted(p.stem for p in (out / "coordinator" / "nodes").glob("*.pub")) == ["morocco", "peru"]
    said = " ".join(result.output.split())  # rich wraps long paths at the console width
    assert "vietnam is not a kit of this federation" in said
    assert kits.load_coordinator_kit(out / "coordinator").plan.participants == 2
    assert kits.load_member_kit(out / "peru").roster == kits.load_coordinator_kit(out / "coordinator").roster


# ---------------------------------------------------------------------------- bad federation files
BASE_FED = FEDERATION.split("[plan]")[0]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t + "\n[extra]\nx = 1\n", "unknown key 'extra' in [top level]"),
        (
            lambda t: t.replace('name = "tapestry-test"', 'name = "tapestry-test"\nport = 1'),
            "unknown key 'port' in [federation]",
        ),
        (lambda t: t.replace('country = "PE"', 'country = "PE"\nemail = "x@y"'), "unknown key 'email' in [members[1]]"),
        (lambda t: t + "[plan]\nroundz = 3\n", "unknown key 'roundz' in [plan]"),
        (lambda t: t + "[plan.training]\nepoch = 3\n", "unknown key 'epoch' in [plan.training]"),
        (lambda t: t + "[plan]\nparticipants = 3\n", "[plan] must not set 'participants'"),
        (lambda t: t + '[plan]\napp_hash = "00"\n', "[plan] must not set 'app_hash'"),
        (lambda t: t + "[policy]\nmin_cohort = 5\n", "policy.min_cohort = 5 but the federation has 3 members"),
        (lambda t: t + "[policy]\nmin_cohrt = 5\n", "unknown key 'min_cohrt'"),
        (lambda t: t.replace('name = "peru"', 'name = "morocco"'), "duplicate member name 'morocco'"),
        (lambda t: t.split("[[members]]")[0], "no members"),
        (lambda t: t.replace('name = "peru"', 'name = "Peru Lima"'), "members[1].name must be"),
        (lambda t: t.replace('name = "peru"', 'name = "../etc"'), "members[1].name must be"),
        (lambda t: t.replace('name = "peru"', 'name = "coordinator"'), "'coordinator' is reserved"),
        (lambda t: t.replace('country = "PE"', 'country = "Peru"'), "members[1].country must be"),
        (lambda t: t.replace("coord.example.org:9092", "coord.example.org"), "federation.address must be host:port"),
        (
            lambda t: t.replace("coord.example.org:9092", "https://coord.example.org:9092"),
            "federation.address must be host:port",
        ),
        (lambda t: t.replace("coord.example.org:9092", "coord.example.org:0"), "port must be in 1..65535"),
        (lambda t: t.replace("coord.example.org:9092", "coord.example.org:99999"), "port must be in 1..65535"),
        (lambda t: t.replace("coord.example.org:9092", "bad_host!:9092"), "federation.address must be host:port"),
        (lambda t: t.replace("coord.example.org:9092", "[coord]:9092"), "federation.address must be host:port"),
        (
            lambda t: t.replace("coord.example.org:9092", "other.example.org:9092"),
            "federation.sans must include 'other.example.org'",
        ),
        (lambda t: t.replace('"10.0.0.7"', '"*.example.org"'), "invalid certificate name '*.example.org'"),
        (lambda t: t.replace('address = "coord.example.org:9092"\n', ""), "federation.address is missing"),
        (lambda t: t.replace('name = "tapestry-test"', "name = tapestry-test"), "invalid TOML"),
        (lambda t: '[[members]]\nname = "a"\n', "missing [federation]"),
    ],
)
def test_bad_federation_files_are_one_line_errors(tmp_path, edit, needle):
    fed = write_federation(tmp_path, edit(BASE_FED))
    out = tmp_path / "kits"
    result = provision_cli(str(fed), "--out", str(out), "--app", str(ROOT))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists(), "a refused federation file must write nothing"


def test_missing_file_and_bad_app_dir(tmp_path):
    result = provision_cli(str(tmp_path / "nope.toml"), "--out", str(tmp_path / "kits"))
    assert result.exit_code == 2 and "federation file not found" in result.stderr
    result = provision_cli(str(write_federation(tmp_path)), "--out", str(tmp_path / "kits"), "--app", str(tmp_path))
    assert result.exit_code == 2 and "has no pyproject.toml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "kits").exists()


def test_one_line_error_from_the_installed_command(tmp_path):
    """The same as a user sees it: a real process, its stderr one line, exit code 2."""
    fed = write_federation(tmp_path, BASE_FED.replace('name = "peru"', 'name = "morocco"'))
    exe = Path(sys.executable).parent / "fedloom"
    proc = subprocess.run(
        [str(exe), "provision", str(fed), "--out", str(tmp_path / "kits")],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="40"),
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "duplicate member name 'morocco'" in proc.stderr


# ---------------------------------------------------------------------------- the app hash
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec")  # flwr 1.41's own build_fab_from_disk
def test_app_hash_is_flowers_fab_hash_and_deterministic(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    app_dir = snapshot_app(tmp_path / "app")
    # directories Flower always drops, which appbundle does not even walk: must not change anything
    for junk in (".venv/lib/site.py", ".flwr/apps/x.py", "fedloom/__pycache__/x.py", "__pycache__/y.py"):
        (app_dir / junk).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / junk).write_text("x = 1\n")
    first, second = app_bundle_hash(app_dir), app_bundle_hash(app_dir)
    assert first == second and len(first) == 64
    assert build_app_bundle(app_dir) == build_fab_from_disk(app_dir)  # Flower's own `flwr run` build, byte for byte
    assert first == hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()
    # the directory's name and location do not count, the bundled files' bytes do
    moved = shutil.copytree(app_dir, tmp_path / "elsewhere" / "renamed")
    assert app_bundle_hash(moved) == first
    with (moved / "fedloom" / "errors.py").open("a") as f:
        f.write("# one more line\n")
    assert app_bundle_hash(moved) != first
    # pyproject.toml counts as parsed (Flower re-serializes it): a comment changes nothing, a value does
    pyproject = app_dir / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# a comment\n")
    assert app_bundle_hash(app_dir) == first


def test_a_staged_app_is_the_bundles_files_only_and_flower_builds_the_same_bytes_from_it(tmp_path, monkeypatch):
    """The coordinator service runs `flwr run` on a staged copy (Flower's walk of the app directory goes
    through its virtualenv too): the copy holds only what the bundle holds, and Flower's own build of it
    is byte for byte the app's bundle; a copy that would bundle differently is refused."""
    from flwr.cli.build import build_fab_from_disk

    app_dir = snapshot_app(tmp_path / "app")
    (app_dir / ".venv" / "lib").mkdir(parents=True)
    (app_dir / ".venv" / "lib" / "site.py").write_text("x = 1\n")
    (app_dir / "notes.txt").write_text("not in any bundle\n")
    staged = tmp_path / "staged"
    assert stage_app_bundle(app_dir, staged) == app_bundle_hash(app_dir)
    assert build_fab_from_disk(staged) == build_app_bundle(app_dir)
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "pyproject.toml" in files and "fedloom/appbundle.py" in files
    assert not any(f.startswith(".venv") or f == "notes.txt" or f.startswith(".info") for f in files)
    before = build_app_bundle(app_dir)
    with (app_dir / "fedloom" / "errors.py").open("a") as f:  # the app changes between its build and the copy
        f.write("# one more line\n")
    monkeypatch.setattr(
        "fedloom.appbundle.build_app_bundle", lambda d: before if Path(d) == app_dir else build_app_bundle(d)
    )
    with pytest.raises(RuntimeError, match="staged copy"):
        stage_app_bundle(app_dir, tmp_path / "staged-again")


@pytest.mark.slow
def test_app_hash_equals_what_flwr_run_submits(tmp_path):
    """SLOW (~20 s), end to end with real Flower processes: provision, start a SuperLink with the kit's TLS
    certificate and node auth, register the members' node keys, connect a SuperNode with a member's node key,
    `flwr run` the app, and compare the FAB hash the SuperLink stored with the plan's app_hash."""
    app_dir = snapshot_app(tmp_path / "app")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fed = write_federation(
        tmp_path,
        BASE_FED.replace("coord.example.org:9092", f"127.0.0.1:{port}").replace(
            '"coord.example.org", "10.0.0.7", "::1"', '"127.0.0.1"'
        ),
    )
    out = tmp_path / "kits"
    result = provision_cli(str(fed), "--out", str(out), "--app", str(app_dir))
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "coordinator" / "plan.json").read_text())
    assert plan["app_hash"] == app_bundle_hash(app_dir)

    k, home = out / "coordinator", tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{k / "ca.crt"}"\n'
    )
    bin_dir = Path(sys.executable).parent
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: str) -> None:
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=(tmp_path / log).open("wb"), stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def flwr(*args: str) -> dict:
        proc = subprocess.run(
            [str(bin_dir / "flwr"), *args, "--format", "json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return json.loads(proc.stdout)

    try:
        start(
            [
                str(bin_dir / "flower-superlink"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ssl-ca-certfile",
                str(k / "ca.crt"),
                "--ssl-certfile",
                str(k / "server.crt"),
                "--ssl-keyfile",
                str(k / "server.key"),
                "--enable-supernode-auth",
                "--database",
                str(tmp_path / "superlink.db"),
                "--disable-runtime-dependency-installation",
            ],
            "superlink.log",
        )
        deadline = time.time() + 60
        while True:  # up when a TLS handshake with the consortium CA succeeds
            try:
                ctx = ssl.create_default_context(cafile=str(out / "morocco" / "ca.crt"))
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
                ):
                    break
            except OSError:
                assert time.time() < deadline and procs[0].poll() is None, (tmp_path / "superlink.log").read_text()
                time.sleep(0.3)
        for m in MEMBERS:  # `flwr supernode register` accepts the public keys the coordinator kit holds
            assert flwr("supernode", "register", str(k / "nodes" / f"{m}.pub"), "fed")["success"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            node_port = s.getsockname()[1]
        start(
            [
                str(bin_dir / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{port}",
                "--root-certificates",
                str(out / "peru" / "ca.crt"),
                "--auth-supernode-private-key",
                str(out / "peru" / "node.key"),
                "--port",
                str(node_port),
            ],
            "supernode.log",
        )

        run = flwr("run", str(app_dir), "fed", "--run-config", 'scenario="default"')
        assert run["success"] and plan["app_hash"].startswith(run["fab-hash"])
        stored = {r["run-id"]: r["fab-hash"] for r in flwr("ls", "fed")["runs"]}
        assert stored[run["run-id"]] == plan["app_hash"]  # the SuperLink's Run.fab_hash, full length

        deadline = time.time() + 30  # the SuperNode authenticated with peru's node key over TLS
        while not any(n["status"] == "online" for n in flwr("supernode", "list", "fed")["nodes"]):
            assert time.time() < deadline, (tmp_path / "supernode.log").read_text()[-3000:]
            time.sleep(1)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

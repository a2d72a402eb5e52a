"""Dockerfile and docker-compose.yml: valid (hadolint, the Compose JSON schema) and consistent with the
example federation (same members; each service mounts only its own kit, read-only)."""

from __future__ import annotations

import fnmatch
import io
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE, DOCKERFILE = ROOT / "docker-compose.yml", ROOT / "Dockerfile"
MEMBERS = [m["name"] for m in tomllib.loads((ROOT / "examples" / "federation.toml").read_text())["members"]]


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} is not installed: the dev extra provides it (pip install -e '.[dev]')")
    return path


def check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("hadolint"), str(path)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_spec(tmp_path):
    proc = check_compose(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the validator bites: a misspelled key fails
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("depends_on:", "depend_on:", 1))
    assert check_compose(broken).returncode != 0


def test_dockerfile_passes_hadolint(tmp_path):
    proc = hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = DOCKERFILE.read_text()
    assert "hadolint ignore" not in text or "# why:" in text  # an inline ignore only with its reason
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("USER 10001:10001", "USER root"))
    assert hadolint(broken).returncode != 0


def test_dockerfile_runs_unprivileged_and_bakes_in_no_keys():
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    user = [ln for ln in lines if ln.startswith("USER ")][-1]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    # CPU torch alone and first (pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
    assert "ARG TORCH_VERSION=2.13.0" in lines and "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in lines
    torch = next(i for i, ln in enumerate(lines) if '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in ln)
    project = next(i for i, ln in enumerate(lines) if ln.startswith("RUN pip install --no-cache-dir /app"))
    assert torch < project
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in ("kits", ".venv", ".git", "**/*.key", "**/*.pem", "data", "state"):
        assert pattern in ignored, f".dockerignore must exclude {pattern}"


def _participants(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if "participant" in svc.get("command", [])}


def _kit_mounts(svc: dict) -> list[dict]:
    return [v for v in svc.get("volumes", []) if isinstance(v, dict) and v.get("source") == "kits"]


def test_compose_participants_are_the_example_members(compose):
    parts = _participants(compose)
    assert sorted(parts) == sorted(MEMBERS)
    for name, svc in parts.items():
        cmd = svc["command"]
        assert cmd[:3] == ["fedloom", "participant", "start"]
        flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
        assert flags["--kit"] == f"/kits/{name}" and flags["--data"] == f"/data/{name}"
        assert flags["--device"] == "auto"
        assert svc["depends_on"]["provision"] == {"condition": "service_completed_successfully"}
    guard = "\n".join(compose["services"]["provision"]["command"])
    for name in MEMBERS:
        assert f" {name}" in guard  # the kits provisioning waits for


def test_each_service_mounts_only_its_own_kit_read_only(compose):
    services = compose["services"]
    provision = services["provision"]
    assert "kits:/kits" in provision["volumes"]  # the only service that sees every kit
    assert any(
        v.endswith("/config/federation.toml:ro") and "examples/federation.toml" in v
        for v in provision["volumes"]
        if isinstance(v, str)
    )
    assert "provision" in provision["command"][-1] and "--app /app" in provision["command"][-1]
    for name, svc in services.items():
        if name == "provision":
            continue
        assert not any(isinstance(v, str) and v.startswith("kits:") for v in svc.get("volumes", [])), name
        mounts = _kit_mounts(svc)
        own = "coordinator" if name == "coordinator" else name
        assert mounts == [
            {
                "type": "volume",
                "source": "kits",
                "target": f"/kits/{own}",
                "read_only": True,
                "volume": {"subpath": own},
            }
        ], name
        data = [v for v in svc["volumes"] if isinstance(v, str) and ":/data/" in v]
        if name != "coordinator":
            assert data == [f"./data/{name}:/data/{name}:ro"]
        assert svc["networks"] == ["federation"]


def test_compose_coordinator_command(compose):
    coord = compose["services"]["coordinator"]
    assert coord["command"] == [
        "fedloom",
        "coordinator",
        "start",
        "--kit",
        "/kits/coordinator",
        "--state-dir",
        "/state",
        "--bind",
        "0.0.0.0:9092",
    ]
    assert coord["depends_on"]["provision"] == {"condition": "service_completed_successfully"}
    assert "federation" in compose["networks"] and "kits" in compose["volumes"]


def _docker_ignores(path: str, pattern: str) -> bool:
    """Roughly Docker's .dockerignore matching (a pattern excludes a path or any directory above it);
    fnmatch's '*' also crosses '/', so this errs on the side of reporting a conflict."""
    parts = path.split("/")
    if pattern.startswith("**/"):
        return any(
            fnmatch.fnmatchcase("/".join(parts[j:i]), pattern[3:]) for i in range(1, len(parts) + 1) for j in range(i)
        )
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern.lstrip("/")) for i in range(1, len(parts) + 1))


def test_dockerignore_keeps_everything_the_app_bundle_holds():
    """The image's /app must hold every file of the FAB, or the hash provisioned in the image would
    not be the hash of the checkout (and `fedloom coordinator start` would refuse its own app)."""
    from fedloom.appbundle import build_app_bundle

    names = zipfile.ZipFile(io.BytesIO(build_app_bundle(ROOT))).namelist()
    sources = [n for n in names if n != ".info/CONTENT"] + [".gitignore"]  # .gitignore filters the bundle
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    clashes = [(n, p) for n in sources for p in patterns if _docker_ignores(n, p)]
    assert not clashes, clashes

"""Member kits: what a member needs to take part, and nothing more.

A kit is a directory:
    member.json    this member's id, name and country
    identity.pem   its Ed25519 identity key (PKCS#8, mode 0600): signs its protocol messages
    roster.json    every member's public signing key: what it verifies others against
    plan.json      the plan it agreed to (its hash is checked on every message)
Deployment kits (`fedloom provision`) add TLS and node-auth material; simulations provision a
throwaway federation the same way, so the same code path loads keys in both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedloom.errors import UserError
from fedloom.plan import Plan
from protocol.crypto import SessionContext, ed25519_public_bytes
from protocol.roster import Member, Roster

MEMBER_FILE, IDENTITY_FILE, ROSTER_FILE, PLAN_FILE = "member.json", "identity.pem", "roster.json", "plan.json"


@dataclass(frozen=True)
class MemberKit:
    member: Member
    identity: Ed25519PrivateKey
    roster: Roster
    plan: Plan

    @property
    def context(self) -> SessionContext:
        return session_context(self.plan)


def session_context(plan: Plan) -> SessionContext:
    return SessionContext(plan.federation, plan.digest())


def roster_to_json(roster: Roster) -> str:
    members = [{"id": m.id, "name": m.name, "country": m.country, "signing_key": m.signing_key.hex()} for m in roster]
    return json.dumps({"members": members}, indent=2) + "\n"


def roster_from_json(text: str) -> Roster:
    try:
        data = json.loads(text)
        return Roster.of(
            Member(int(m["id"]), str(m["name"]), bytes.fromhex(m["signing_key"]), str(m.get("country", "")))
            for m in data["members"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"invalid roster: {exc}") from exc


def write_private(path: Path, data: bytes, force: bool = False) -> None:
    """Create a private file (0600); refuse to overwrite one unless forced."""
    if path.exists() and not force:
        raise UserError(f"{path} exists; refusing to overwrite a private key (use --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def identity_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write_member_kit(directory: Path, member: Member, identity: Ed25519PrivateKey, roster: Roster, plan: Plan,
                     force: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_private(directory / IDENTITY_FILE, identity_pem(identity), force)
    (directory / MEMBER_FILE).write_text(json.dumps({"id": member.id, "name": member.name, "country": member.country}) + "\n")
    (directory / ROSTER_FILE).write_text(roster_to_json(roster))
    (directory / PLAN_FILE).write_text(plan.canonical_json() + "\n")


def load_member_kit(directory: str | Path) -> MemberKit:
    d = Path(directory)
    try:
        info = json.loads((d / MEMBER_FILE).read_text())
        key = serialization.load_pem_private_key((d / IDENTITY_FILE).read_bytes(), password=None)
        roster = roster_from_json((d / ROSTER_FILE).read_text())
        plan = Plan.from_json((d / PLAN_FILE).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"kit {d} is incomplete: {exc.filename} is missing") from exc
    except (ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"kit {d} is damaged: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"kit {d}: {IDENTITY_FILE} is not an Ed25519 key")
    member = roster.get(int(info["id"]))
    if member.signing_key != ed25519_public_bytes(key):
        raise UserError(f"kit {d}: the identity key does not match member {member.name} in the roster")
    return MemberKit(member, key, roster, plan)


def member_names(n: int) -> list[str]:
    return [f"member-{i}" for i in range(1, n + 1)]


def provision_members(plan: Plan, out: Path, names: list[str] | None = None, countries: list[str] | None = None,
                      force: bool = False) -> Roster:
    """Fresh identity keys for `plan.participants` members; one kit each under out/<name>/."""
    names = names or member_names(plan.participants)
    countries = countries or [""] * len(names)
    keys = [Ed25519PrivateKey.generate() for _ in names]
    roster = Roster.of(
        Member(i + 1, name, ed25519_public_bytes(k), country)
        for i, (name, k, country) in enumerate(zip(names, keys, countries, strict=True))
    )
    for m, k in zip(roster, keys, strict=True):
        write_member_kit(out / m.name, m, k, roster, plan, force)
    (out / ROSTER_FILE).write_text(roster_to_json(roster))
    (out / PLAN_FILE).write_text(plan.canonical_json() + "\n")
    return roster

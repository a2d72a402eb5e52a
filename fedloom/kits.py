"""Member kits: what a member needs to take part, and nothing more.

A kit is a directory:
    member.json    this member's id, name and country
    identity.pem   its Ed25519 identity key (PKCS#8, mode 0600): signs its protocol messages
    roster.json    every member's public signing key: what it verifies others against
    plan.json      the plan it agreed to (its hash is checked on every message)
Deployment kits (`fedloom provision`, see fedloom.provision) add:
    ca.crt           the consortium CA: the only root the member trusts for the coordinator's TLS
    node.key         its SuperNode's node-auth key (EC P-384, OpenSSH format, mode 0600); node.pub
    ledger.pub       the coordinator's ledger key (hex Ed25519), to check the round ledger against
    federation.json  {"name", "address"}: the federation and the address its node dials
    policy.toml      its own policy (fedloom.policy), which the member may tighten
Simulations provision a throwaway federation with `provision_members` (no TLS, no node keys) and
`load_member_kit` loads both kinds. The coordinator's kit (`load_coordinator_kit`) holds the
server certificate and key, the ledger key, roster, plan, and every member's node-auth public key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedloom.errors import UserError
from fedloom.plan import Plan
from fedloom.session import session_context
from protocol.crypto import SessionContext, ed25519_public_bytes
from protocol.roster import Member, Roster

MEMBER_FILE, IDENTITY_FILE, ROSTER_FILE, PLAN_FILE = "member.json", "identity.pem", "roster.json", "plan.json"
CA_CERT_FILE, CA_KEY_FILE = "ca.crt", "ca.key"
SERVER_CERT_FILE, SERVER_KEY_FILE = "server.crt", "server.key"
NODE_KEY_FILE, NODE_PUB_FILE, NODES_DIR = "node.key", "node.pub", "nodes"
LEDGER_KEY_FILE, LEDGER_PUB_FILE = "ledger.key", "ledger.pub"
FEDERATION_FILE, POLICY_FILE = "federation.json", "policy.toml"
NODE_KEY_CURVE = ec.SECP384R1  # what `ssh-keygen -t ecdsa -b 384` makes; Flower accepts any NIST curve


@dataclass(frozen=True)
class FederationInfo:
    name: str
    address: str  # host:port the members' nodes dial

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "address": self.address}, indent=2) + "\n"


@dataclass(frozen=True)
class MemberKit:
    member: Member
    identity: Ed25519PrivateKey
    roster: Roster
    plan: Plan
    # deployment kits only (None in simulation kits)
    directory: Path | None = None
    federation: FederationInfo | None = None
    ca_cert: Path | None = None
    node_key: Path | None = None
    ledger_public: bytes | None = None  # 32 raw bytes (Ed25519)

    @property
    def deployable(self) -> bool:
        """Has what a real node needs: the CA, a node key, the federation's address and the ledger key."""
        return None not in (self.federation, self.ca_cert, self.node_key, self.ledger_public)

    @property
    def context(self) -> SessionContext:
        return session_context(self.plan)


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
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_member_kit(
    directory: Path, member: Member, identity: Ed25519PrivateKey, roster: Roster, plan: Plan, force: bool = False
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_private(directory / IDENTITY_FILE, identity_pem(identity), force)
    info = {"id": member.id, "name": member.name, "country": member.country}
    (directory / MEMBER_FILE).write_text(json.dumps(info) + "\n")
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
    # deployment material: each piece optional, so simulation kits (none of it) load too
    federation = load_federation_info(d / FEDERATION_FILE) if (d / FEDERATION_FILE).exists() else None
    ca = d / CA_CERT_FILE if (d / CA_CERT_FILE).is_file() else None
    node = None
    if (d / NODE_KEY_FILE).exists():
        node_key = load_node_key(d / NODE_KEY_FILE)
        if (d / NODE_PUB_FILE).exists() and load_node_public_key(d / NODE_PUB_FILE) != node_key.public_key():
            raise UserError(f"kit {d}: {NODE_PUB_FILE} is not the public half of {NODE_KEY_FILE}")
        node = d / NODE_KEY_FILE
    ledger = load_ledger_public(d / LEDGER_PUB_FILE) if (d / LEDGER_PUB_FILE).exists() else None
    if federation is not None and federation.name != plan.federation:
        raise UserError(
            f"kit {d}: {FEDERATION_FILE} names federation {federation.name!r} but the plan is for {plan.federation!r}"
        )
    return MemberKit(member, key, roster, plan, d, federation, ca, node, ledger)


def member_names(n: int) -> list[str]:
    return [f"member-{i}" for i in range(1, n + 1)]


def new_identities(names: list[str], countries: list[str] | None = None) -> tuple[Roster, list[Ed25519PrivateKey]]:
    """Fresh Ed25519 identity keys; member ids 1..n in the order of `names`. Keys in roster order."""
    countries = countries or [""] * len(names)
    keys = [Ed25519PrivateKey.generate() for _ in names]
    roster = Roster.of(
        Member(i + 1, name, ed25519_public_bytes(k), country)
        for i, (name, k, country) in enumerate(zip(names, keys, countries, strict=True))
    )
    return roster, keys


def provision_members(
    plan: Plan, out: Path, names: list[str] | None = None, countries: list[str] | None = None, force: bool = False
) -> Roster:
    """Fresh identity keys for `plan.participants` members; one kit each under out/<name>/."""
    names = names or member_names(plan.participants)
    roster, keys = new_identities(names, countries)
    for m, k in zip(roster, keys, strict=True):
        write_member_kit(out / m.name, m, k, roster, plan, force)
    (out / ROSTER_FILE).write_text(roster_to_json(roster))
    (out / PLAN_FILE).write_text(plan.canonical_json() + "\n")
    return roster


# ---------------------------------------------------------------------------- deployment material
def load_federation_info(path: Path) -> FederationInfo:
    try:
        data = json.loads(path.read_text())
        return FederationInfo(str(data["name"]), str(data["address"]))
    except FileNotFoundError as exc:
        raise UserError(f"{path} is missing") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged: {exc!r}") from exc


def new_node_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(NODE_KEY_CURVE())


def node_key_openssh(key: ec.EllipticCurvePrivateKey) -> bytes:
    """'-----BEGIN OPENSSH PRIVATE KEY-----' (unencrypted): what `flower-supernode --auth-supernode-private-key`
    loads (cryptography's load_ssh_private_key: PEM/PKCS8 keys are refused there)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def node_public_openssh(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, comment: str = "") -> bytes:
    """'ecdsa-sha2-nistp384 AAAA... comment\n': what `flwr supernode register` loads."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    line = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + (b" " + comment.encode() if comment else b"") + b"\n"


def load_node_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise UserError(f"{path} is missing") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(f"{path} is not an unencrypted OpenSSH private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, NODE_KEY_CURVE):
        raise UserError(f"{path}: a node key must be EC P-384 (ecdsa-sha2-nistp384)")
    return key


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_ssh_public_key(path.read_bytes().strip())
    except FileNotFoundError as exc:
        raise UserError(f"{path} is missing") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(f"{path} is not an OpenSSH public key line: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NODE_KEY_CURVE):
        raise UserError(f"{path}: a node public key must be EC P-384 (ecdsa-sha2-nistp384)")
    return key


def ledger_key_pem(key: Ed25519PrivateKey) -> bytes:
    return identity_pem(key)


def ledger_public_hex(key: Ed25519PrivateKey) -> str:
    return ed25519_public_bytes(key).hex() + "\n"


def load_ledger_public(path: Path) -> bytes:
    try:
        raw = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError as exc:
        raise UserError(f"{path} is missing") from exc
    except ValueError as exc:
        raise UserError(f"{path} is not hex: {exc}") from exc
    if len(raw) != 32:
        raise UserError(f"{path}: a ledger public key is 32 bytes (64 hex digits), got {len(raw)}")
    return raw


def load_ledger_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise UserError(f"{path} is missing") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(f"{path} is damaged: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class CoordinatorKit:
    directory: Path
    federation: FederationInfo
    plan: Plan
    roster: Roster
    ledger_key: Ed25519PrivateKey
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: dict[str, bytes] = field(default_factory=dict)  # member name -> OpenSSH public key line


def load_coordinator_kit(directory: str | Path) -> CoordinatorKit:
    """The coordinator's kit: checks it is complete and consistent (no key is trusted that the roster lacks)."""
    d = Path(directory)
    for name in (
        CA_CERT_FILE,
        SERVER_CERT_FILE,
        SERVER_KEY_FILE,
        LEDGER_KEY_FILE,
        ROSTER_FILE,
        PLAN_FILE,
        FEDERATION_FILE,
    ):
        if not (d / name).is_file():
            raise UserError(
                f"coordinator kit {d} is incomplete: {d / name} is missing "
                "(is it a coordinator kit made by `fedloom provision`?)"
            )
    try:
        roster = roster_from_json((d / ROSTER_FILE).read_text())
        plan = Plan.from_json((d / PLAN_FILE).read_text())
    except (ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"coordinator kit {d} is damaged: {exc}") from exc
    federation = load_federation_info(d / FEDERATION_FILE)
    ledger_key = load_ledger_key(d / LEDGER_KEY_FILE)
    if (d / LEDGER_PUB_FILE).exists() and load_ledger_public(d / LEDGER_PUB_FILE) != ed25519_public_bytes(ledger_key):
        raise UserError(f"coordinator kit {d}: {LEDGER_PUB_FILE} is not the public half of {LEDGER_KEY_FILE}")
    if federation.name != plan.federation:
        raise UserError(
            f"coordinator kit {d}: {FEDERATION_FILE} names {federation.name!r}, the plan {plan.federation!r}"
        )
    names = {m.name for m in roster}
    node_keys: dict[str, bytes] = {}
    for pub in sorted((d / NODES_DIR).glob("*.pub")):
        if pub.stem not in names:
            raise UserError(f"coordinator kit {d}: {pub} is not the node key of a roster member")
        load_node_public_key(pub)
        node_keys[pub.stem] = pub.read_bytes()
    return CoordinatorKit(
        d, federation, plan, roster, ledger_key, d / CA_CERT_FILE, d / SERVER_CERT_FILE, d / SERVER_KEY_FILE, node_keys
    )

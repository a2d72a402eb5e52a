"""`fedloom provision`: a federation file in, one kit per party out.

federation.toml (strict: unknown keys are errors; see examples/federation.toml):

    [federation]
    name = "tapestry-demo"              # letters, digits, '.', '_', '-'
    address = "coordinator:9092"        # host:port the members' nodes dial ([v6]:port for IPv6)
    sans = ["coordinator"]              # names in the coordinator's certificate (DNS names, IPs);
                                        # default [host of address]; must include that host;
                                        # localhost and 127.0.0.1 are always added (loopback use)
    [[members]]                         # one or more
    name = "morocco"                    # lowercase letters, digits, '-', '_'; unique
    country = "MA"                      # optional ISO 3166 alpha-2
    [plan]                              # the plan's keys as in a scenario (rounds, seed, stage_timeout,
    rounds = 20                         # [plan.task], [plan.training], [plan.strategy], [plan.secure]);
                                        # federation, participants and app_hash are filled in here
    [policy]                            # each member's starting policy.toml (fedloom.policy)
    min_cohort = 3

Kits written under OUT (private keys 0600, kit directories 0700; see fedloom.kits for the files):

    ca/           ca.crt, ca.key                   the consortium CA: its key belongs offline
    coordinator/  ca.crt, server.crt, server.key, ledger.key, ledger.pub, roster.json, plan.json,
                  federation.json, nodes/<member>.pub
    <member>/     ca.crt, member.json, identity.pem, roster.json, plan.json, policy.toml,
                  ledger.pub, federation.json, node.key, node.pub

Every key is generated in memory first and nothing is written until every check has passed, so a
refused run (an existing private key without --force, a bad file) leaves the old kits intact.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedloom import kits, tls
from fedloom.errors import UserError
from fedloom.plan import Plan, dataclass_from_table
from fedloom.policy import Policy

TOP_KEYS = ("federation", "members", "plan", "policy")
FEDERATION_KEYS = ("address", "name", "sans")
MEMBER_KEYS = ("country", "name")
RESERVED_NAMES = ("ca", "coordinator", "nodes", "state")
_FEDERATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MEMBER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class MemberSpec:
    name: str
    country: str = ""


@dataclass(frozen=True)
class FederationSpec:
    name: str
    address: str
    host: str
    port: int
    sans: tuple[str, ...]
    members: tuple[MemberSpec, ...]
    plan: Plan  # app_hash "" until provisioning fills it in
    policy: Policy
    source: str = "<string>"


@dataclass(frozen=True)
class ProvisionResult:
    out: Path
    spec: FederationSpec
    plan: Plan
    ca_dir: Path
    coordinator_dir: Path
    member_dirs: dict[str, Path]
    stale: tuple[Path, ...]  # directories under OUT that belong to no party of this federation

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / kits.CA_KEY_FILE


# ---------------------------------------------------------------------------- parsing
def load_federation(path: str | Path) -> FederationSpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"federation file not found: {p}")
    return parse_federation(p.read_bytes(), str(p))


def parse_federation(raw: bytes, source: str = "<string>") -> FederationSpec:
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"invalid TOML in {source}: {exc}") from exc
    try:
        return _parse(data, source)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from exc


def _known(table: Any, known: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UserError(f"[{where}] must be a table")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in [{where}]; known keys: {', '.join(known)}")
    return table


def _parse(data: dict[str, Any], source: str) -> FederationSpec:
    _known(data, TOP_KEYS, "top level")
    if "federation" not in data:
        raise UserError("missing [federation] table (name, address, sans)")
    fed = _known(data["federation"], FEDERATION_KEYS, "federation")
    name = fed.get("name")
    if not isinstance(name, str) or not _FEDERATION_NAME.match(name):
        raise UserError(f"federation.name must be 1-64 letters, digits, '.', '_' or '-' (got {name!r})")
    if "address" not in fed:
        raise UserError("federation.address is missing: the host:port the members' nodes dial")
    host, port = parse_address(fed["address"])
    sans = _sans(fed.get("sans", [host]), host)
    members = _members(data.get("members"))
    plan = _plan(data.get("plan", {}), name, len(members))
    policy = _policy(data.get("policy", {}), plan, len(members))
    return FederationSpec(name, fed["address"], host, port, sans, members, plan, policy, source)


def parse_address(address: Any) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port); anything else is a UserError naming it."""
    bad = UserError(
        f"federation.address must be host:port, e.g. coordinator.example.org:9092 or "
        f"[2001:db8::1]:9092 (got {address!r})"
    )
    if not isinstance(address, str) or "://" in address or "/" in address:
        raise bad
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})", address) or re.fullmatch(r"([^:\s\[\]]+):(\d{1,5})", address)
    if not m:
        raise bad
    host, port = m.group(1), int(m.group(2))
    if not 1 <= port <= 65535:
        raise UserError(f"federation.address: port must be in 1..65535 (got {port})")
    try:
        name = tls.parse_san(host)
    except UserError as exc:
        raise bad from exc
    if address.startswith("[") and not isinstance(getattr(name, "value", None), ipaddress.IPv6Address):
        raise bad
    return host, port


def _same_name(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a.rstrip(".").lower() == b.rstrip(".").lower()


def _sans(sans: Any, host: str) -> tuple[str, ...]:
    if not isinstance(sans, list) or not sans or not all(isinstance(s, str) for s in sans):
        raise UserError("federation.sans must be a non-empty list of DNS names and IP addresses")
    for s in sans:
        tls.parse_san(s)  # raises naming the bad entry
    if len({str(tls.parse_san(s).value) for s in sans}) != len(sans):
        raise UserError("federation.sans lists a name twice")
    if not any(_same_name(s, host) for s in sans):
        raise UserError(
            f"federation.sans must include {host!r}, the host in federation.address: members dial it "
            "and check it against the coordinator's certificate"
        )
    return tuple(sans)


def _members(entries: Any) -> tuple[MemberSpec, ...]:
    if entries is None or entries == []:
        raise UserError("no members: add at least one [[members]] table with a name")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError("members must be an array of tables: [[members]]")
    out: list[MemberSpec] = []
    for i, e in enumerate(entries):
        _known(e, MEMBER_KEYS, f"members[{i}]")
        name, country = e.get("name"), e.get("country", "")
        if not isinstance(name, str) or not _MEMBER_NAME.match(name):
            raise UserError(
                f"members[{i}].name must be 1-32 lowercase letters, digits, '-' or '_', starting with a "
                f"letter or digit (it names the member's kit directory); got {name!r}"
            )
        if name in RESERVED_NAMES:
            raise UserError(f"members[{i}].name {name!r} is reserved (kit directories {', '.join(RESERVED_NAMES)})")
        if not isinstance(country, str) or (country and not _COUNTRY.match(country)):
            raise UserError(f'members[{i}].country must be an ISO 3166 two-letter code like "MA" (got {country!r})')
        if any(m.name == name for m in out):
            raise UserError(f"duplicate member name {name!r}: member names must be unique")
        out.append(MemberSpec(name, country))
    return tuple(out)


def _plan(table: Any, federation: str, participants: int) -> Plan:
    if not isinstance(table, dict):
        raise UserError("[plan] must be a table")
    for key, why in (
        ("federation", "it is federation.name"),
        ("participants", "it is the number of [[members]]"),
        ("app_hash", "provisioning computes it from --app"),
    ):
        if key in table:
            raise UserError(f"[plan] must not set {key!r}: {why}")
    defaults = Plan()
    for key, value in table.items():  # nested tables first, so errors name [plan.task] etc.
        if hasattr(getattr(defaults, key, None), "__dataclass_fields__"):
            dataclass_from_table(type(getattr(defaults, key)), value, f"plan.{key}")
    return Plan.from_dict({**table, "federation": federation, "participants": participants})


def _policy(table: Any, plan: Plan, members: int) -> Policy:
    if not isinstance(table, dict):
        raise UserError("[policy] must be a table")
    base = {"require_secure_aggregation": plan.secure.enabled, "min_cohort": plan.secure.min_cohort}
    policy = Policy.from_dict({**base, **table}, "policy")
    if policy.require_secure_aggregation and not plan.secure.enabled:
        raise UserError(
            "policy.require_secure_aggregation = true but plan.secure.enabled = false: every member "
            "would refuse every round"
        )
    if plan.secure.enabled and policy.min_cohort > members:
        raise UserError(
            f"policy.min_cohort = {policy.min_cohort} but the federation has {members} members: every "
            "member would refuse every round"
        )
    if policy.allowed_tasks and plan.task.name not in policy.allowed_tasks:
        raise UserError(
            f"policy.allowed_tasks {list(policy.allowed_tasks)} does not include the plan's task {plan.task.name!r}"
        )
    return policy


# ---------------------------------------------------------------------------- writing
LOOPBACK_SANS = ("localhost", "127.0.0.1")  # the coordinator reaches its own SuperLink over loopback


def certificate_sans(spec: FederationSpec) -> list[str]:
    """`federation.sans` plus the loopback names (added when missing): the coordinator service runs its
    SuperLink on 127.0.0.1 with this same certificate and its own tools check it there."""
    names = list(spec.sans)
    return names + [n for n in LOOPBACK_SANS if not any(_same_name(n, s) for s in names)]


def private_paths(spec: FederationSpec, out: Path) -> list[Path]:
    paths = [
        out / "ca" / kits.CA_KEY_FILE,
        out / "coordinator" / kits.SERVER_KEY_FILE,
        out / "coordinator" / kits.LEDGER_KEY_FILE,
    ]
    for m in spec.members:
        paths += [out / m.name / kits.IDENTITY_FILE, out / m.name / kits.NODE_KEY_FILE]
    return paths


def provision(
    spec: FederationSpec, out: str | Path, app_dir: str | Path = ".", force: bool = False, app_hash: str | None = None
) -> ProvisionResult:
    """Write every kit of `spec` under `out`. `app_hash` (tests) skips building the app bundle."""
    from fedloom.appbundle import app_bundle_hash

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not force:  # before any work: a refused run must leave the old kits as they were
        for path in private_paths(spec, out):
            if path.exists():
                raise UserError(f"{path} exists; refusing to overwrite a private key (use --force)")
    plan = replace(spec.plan, app_hash=app_hash if app_hash is not None else app_bundle_hash(app_dir))
    plan.validate()

    # everything in memory first
    ca = tls.create_ca(spec.name)
    server = tls.issue_server_cert(ca, spec.name, certificate_sans(spec))
    ledger = Ed25519PrivateKey.generate()
    roster, identities = kits.new_identities([m.name for m in spec.members], [m.country for m in spec.members])
    nodes = {m.name: kits.new_node_key() for m in spec.members}
    node_pubs = {name: kits.node_public_openssh(k, f"{name}@{spec.name}") for name, k in nodes.items()}
    federation = kits.FederationInfo(spec.name, spec.address).to_json()
    ledger_pub = kits.ledger_public_hex(ledger)

    ca_dir, coord = out / "ca", out / "coordinator"
    _kit_dir(ca_dir)
    kits.write_private(ca_dir / kits.CA_KEY_FILE, ca.key_pem, force)
    (ca_dir / kits.CA_CERT_FILE).write_bytes(ca.cert_pem)

    _kit_dir(coord)
    kits.write_private(coord / kits.SERVER_KEY_FILE, server.key_pem, force)
    kits.write_private(coord / kits.LEDGER_KEY_FILE, kits.ledger_key_pem(ledger), force)
    (coord / kits.CA_CERT_FILE).write_bytes(ca.cert_pem)
    (coord / kits.SERVER_CERT_FILE).write_bytes(server.cert_pem)
    (coord / kits.LEDGER_PUB_FILE).write_text(ledger_pub)
    (coord / kits.ROSTER_FILE).write_text(kits.roster_to_json(roster))
    (coord / kits.PLAN_FILE).write_text(plan.canonical_json() + "\n")
    (coord / kits.FEDERATION_FILE).write_text(federation)
    nodes_dir = coord / kits.NODES_DIR
    nodes_dir.mkdir(exist_ok=True)
    for old in nodes_dir.glob("*.pub"):  # only this federation's nodes may register
        if old.stem not in nodes:
            old.unlink()
    for name, pub in node_pubs.items():
        (nodes_dir / f"{name}.pub").write_bytes(pub)

    member_dirs: dict[str, Path] = {}
    for member, identity in zip(roster, identities, strict=True):
        d = out / member.name
        _kit_dir(d)
        kits.write_member_kit(d, member, identity, roster, plan, force)
        kits.write_private(d / kits.NODE_KEY_FILE, kits.node_key_openssh(nodes[member.name]), force)
        (d / kits.NODE_PUB_FILE).write_bytes(node_pubs[member.name])
        (d / kits.CA_CERT_FILE).write_bytes(ca.cert_pem)
        (d / kits.LEDGER_PUB_FILE).write_text(ledger_pub)
        (d / kits.FEDERATION_FILE).write_text(federation)
        (d / kits.POLICY_FILE).write_text(spec.policy.to_toml())
        member_dirs[member.name] = d

    parties = {"ca", "coordinator", *member_dirs}
    stale = tuple(sorted(p for p in out.iterdir() if p.is_dir() and p.name not in parties))
    return ProvisionResult(out, spec, plan, ca_dir, coord, member_dirs, stale)


def _kit_dir(path: Path) -> None:
    """A kit directory only its owner can list (it holds private keys)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)

"""The federation roster: who the members are and which keys speak for them.

Each participant verifies everything against its OWN copy of the roster (from its kit), never
against one the coordinator sends, so a coordinator cannot add or impersonate members.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .codec import Reader, Writer
from .crypto import sha256, verify_signature
from .errors import ProtocolError, Rule


@dataclass(frozen=True)
class Member:
    id: int  # 1..2^32-1; also the member's Shamir x-coordinate
    name: str
    signing_key: bytes  # Ed25519 public key, 32 bytes
    country: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.id < 1 << 32:
            raise ValueError(f"member id {self.id} must be in 1..2^32-1")
        if len(self.signing_key) != 32:
            raise ValueError(f"member {self.name}: signing key must be 32 bytes")


@dataclass(frozen=True)
class Roster:
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        ids = [m.id for m in self.members]
        names = [m.name for m in self.members]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError("member ids and names must be unique")
        # id -> member, so lookups (one per signature checked) are O(1), not O(members)
        object.__setattr__(self, "_by_id", {m.id: m for m in self.members})

    @classmethod
    def of(cls, members: Iterable[Member]) -> Roster:
        return cls(tuple(sorted(members, key=lambda m: m.id)))

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __contains__(self, member_id: object) -> bool:
        try:
            return member_id in self._by_id  # type: ignore[attr-defined]
        except TypeError:  # unhashable: equal to no id
            return False

    def get(self, member_id: int) -> Member:
        try:
            return self._by_id[member_id]  # type: ignore[attr-defined]
        except (KeyError, TypeError):
            msg = f"member {member_id} is not in the roster"
            raise ProtocolError(Rule.UNKNOWN_MEMBER, msg) from None

    def by_name(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def verify(self, member_id: int, signature: bytes, message: bytes) -> bool:
        return verify_signature(self.get(member_id).signing_key, signature, message)

    def encode(self) -> bytes:
        w = Writer().u32(len(self.members))
        for m in self.members:
            w.u32(m.id).text(m.name).fixed(m.signing_key, 32).text(m.country)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Roster:
        r = Reader(data, "roster")
        try:
            members = [Member(r.u32(), r.text(), r.fixed(32), r.text()) for _ in range(r.count(1 << 16))]
            r.finish()
            return cls.of(members)
        except ValueError as exc:
            raise ProtocolError(Rule.ENCODING, f"roster: {exc}") from exc

    def digest(self) -> bytes:
        return sha256(b"fedloom/roster/v1", self.encode())

"""Protocol messages: frozen dataclasses with a versioned, length-checked byte encoding.

Frame: b"FLSA" | version (u8) | type (u8) | fields. Lists and byte strings carry a u32 length and
have upper bounds; fixed-size fields are checked; trailing bytes are an error. `decode()` of
untrusted bytes raises nothing but `ProtocolError(Rule.ENCODING | Rule.VERSION)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from .codec import Reader, Writer
from .crypto import KEY_BYTES, NONCE_BYTES, SIGNATURE_BYTES
from .errors import ProtocolError, Rule
from .shamir import ELEMENT_BYTES

MAGIC = b"FLSA"
VERSION = 2  # 2: model-bound mask requests, signed mask attestations, held-share lists
SESSION_BYTES = 32
DIGEST_BYTES = 32
MAX_MEMBERS = 1 << 16
SHARE_PLAINTEXT_BYTES = 2 * (ELEMENT_BYTES + SIGNATURE_BYTES)
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + 16  # AES-GCM tag

M = TypeVar("M", bound="Message")
_REGISTRY: dict[int, type[Message]] = {}


class Message(ABC):
    """Base of all protocol messages; subclasses define TYPE, _write and _read.

    A subclass that lacks either hook is refused when it is defined, before it can enter the
    decoder's registry: a message type the decoder knows but cannot read would be a trap.
    """

    TYPE: ClassVar[int]
    round: int

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        missing = [hook for hook in ("_write", "_read") if getattr(getattr(cls, hook), "__isabstractmethod__", False)]
        if missing:
            raise TypeError(f"message {cls.__name__} does not define {', '.join(missing)}")
        if cls.TYPE in _REGISTRY:
            raise TypeError(f"duplicate message type {cls.TYPE}")
        _REGISTRY[cls.TYPE] = cls

    @abstractmethod
    def _write(self, w: Writer) -> None:
        """Write this message's fields after the frame header."""

    @classmethod
    @abstractmethod
    def _read(cls: type[M], r: Reader) -> M:
        """Read this message's fields after the frame header (the reader checks lengths and bounds)."""

    def encode(self) -> bytes:
        w = Writer().fixed(MAGIC, 4).u8(VERSION).u8(self.TYPE)
        self._write(w)
        return w.getvalue()

    @classmethod
    def decode(cls: type[M], data: bytes | memoryview) -> M:
        msg = decode(data)
        if not isinstance(msg, cls):
            raise ProtocolError(Rule.ENCODING, f"expected {cls.__name__}, got {type(msg).__name__}")
        return msg


def decode(data: bytes | memoryview) -> Message:
    """Decode any protocol message from untrusted bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(Rule.ENCODING, "message must be bytes")
    r = Reader(data)
    if r.fixed(4) != MAGIC:
        raise ProtocolError(Rule.ENCODING, "not a fedloom secure-aggregation message")
    version = r.u8()
    if version != VERSION:
        raise ProtocolError(Rule.VERSION, f"protocol version {version}, this node speaks {VERSION}")
    kind = _REGISTRY.get(r.u8())
    if kind is None:
        raise ProtocolError(Rule.ENCODING, "unknown message type")
    try:
        msg = kind._read(r)
    except (ValueError, TypeError) as exc:  # e.g. a field rejected by a dataclass check
        raise ProtocolError(Rule.ENCODING, f"{kind.__name__}: {exc}") from exc
    r.finish()
    return msg


def _members(r: Reader) -> tuple[int, ...]:
    return r.ints(MAX_MEMBERS)


# ====================================================================== coordinator -> participant
@dataclass(frozen=True)
class AdvertiseRequest(Message):
    """Stage 0: advertise fresh per-round keys for `round`."""

    TYPE: ClassVar[int] = 1
    round: int

    def _write(self, w: Writer) -> None:
        w.u64(self.round)

    @classmethod
    def _read(cls, r: Reader) -> AdvertiseRequest:
        return cls(r.u64())


@dataclass(frozen=True)
class KeyBundle(Message):
    """A member's per-round public keys, signed with its long-term identity key."""

    TYPE: ClassVar[int] = 2
    round: int
    member: int
    encryption_key: bytes  # X25519 public, for share encryption
    masking_key: bytes  # X25519 public, for pairwise masks
    signature: bytes

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(self.member).fixed(self.encryption_key, KEY_BYTES)
        w.fixed(self.masking_key, KEY_BYTES).fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> KeyBundle:
        return cls(r.u64(), r.u32(), r.fixed(KEY_BYTES), r.fixed(KEY_BYTES), r.fixed(SIGNATURE_BYTES))


@dataclass(frozen=True)
class BundleSet(Message):
    """Stage 1: every bundle the coordinator collected for `round`."""

    TYPE: ClassVar[int] = 3
    round: int
    bundles: tuple[KeyBundle, ...]

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(len(self.bundles))
        for b in self.bundles:
            b._write(w)

    @classmethod
    def _read(cls, r: Reader) -> BundleSet:
        rnd = r.u64()
        return cls(rnd, tuple(KeyBundle._read(r) for _ in range(r.count(MAX_MEMBERS))))


@dataclass(frozen=True)
class EncryptedShare:
    """One dealer's shares for one holder, AEAD-encrypted under their directional pairwise key.

    `key_digest` commits the dealer to that key (a hash of it), so a holder who complains can
    reveal the key and the coordinator can check the complaint without learning anything else.
    `signature` is the dealer's over the whole item: a holder complains (reveals the key, which
    also opens the genuine item) only about an item the dealer provably sent, never about one
    the coordinator altered on the way.
    """

    dealer: int
    holder: int
    key_digest: bytes
    nonce: bytes
    ciphertext: bytes
    signature: bytes

    def write(self, w: Writer) -> None:
        w.u32(self.dealer).u32(self.holder).fixed(self.key_digest, 32).fixed(self.nonce, NONCE_BYTES)
        w.fixed(self.ciphertext, SHARE_CIPHERTEXT_BYTES).fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def read(cls, r: Reader) -> EncryptedShare:
        return cls(
            r.u32(),
            r.u32(),
            r.fixed(32),
            r.fixed(NONCE_BYTES),
            r.fixed(SHARE_CIPHERTEXT_BYTES),
            r.fixed(SIGNATURE_BYTES),
        )

    def encode(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.getvalue()


@dataclass(frozen=True)
class ShareBundle(Message):
    """A dealer's encrypted shares for its neighbours and its commitment to its self-mask seed."""

    TYPE: ClassVar[int] = 4
    round: int
    member: int
    session: bytes
    commitment: bytes  # SHA-256 commitment to the self-mask seed, checked after reconstruction
    shares: tuple[EncryptedShare, ...]
    signature: bytes  # over (round, session, member, commitment, digest of every share item)

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(self.member).fixed(self.session, SESSION_BYTES)
        w.fixed(self.commitment, 32).u32(len(self.shares))
        for s in self.shares:
            s.write(w)
        w.fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> ShareBundle:
        rnd, member, session, commitment = r.u64(), r.u32(), r.fixed(SESSION_BYTES), r.fixed(32)
        shares = tuple(EncryptedShare.read(r) for _ in range(r.count(MAX_MEMBERS)))
        return cls(rnd, member, session, commitment, shares, r.fixed(SIGNATURE_BYTES))


@dataclass(frozen=True)
class ShareDelivery(Message):
    """Stage 2 request: the shares this holder's neighbours dealt it."""

    TYPE: ClassVar[int] = 5
    round: int
    session: bytes
    shares: tuple[EncryptedShare, ...]

    def _write(self, w: Writer) -> None:
        w.u64(self.round).fixed(self.session, SESSION_BYTES).u32(len(self.shares))
        for s in self.shares:
            s.write(w)

    @classmethod
    def _read(cls, r: Reader) -> ShareDelivery:
        rnd, session = r.u64(), r.fixed(SESSION_BYTES)
        return cls(rnd, session, tuple(EncryptedShare.read(r) for _ in range(r.count(MAX_MEMBERS))))


@dataclass(frozen=True)
class Complaint:
    """A holder's claim that a dealer's share to it is bad, with the key that proves it."""

    dealer: int
    key: bytes  # the directional share key; checkable against the dealer's signed key_digest

    def write(self, w: Writer) -> None:
        w.u32(self.dealer).fixed(self.key, 32)

    @classmethod
    def read(cls, r: Reader) -> Complaint:
        return cls(r.u32(), r.fixed(32))


@dataclass(frozen=True)
class ShareReceipt(Message):
    """Stage 2 reply: complaints about shares that provably failed, and the dealers whose shares
    this holder now holds (so the coordinator can see, before anyone masks, whose secrets could be
    reconstructed, and leave out a dealer that could not be)."""

    TYPE: ClassVar[int] = 6
    round: int
    member: int
    session: bytes
    complaints: tuple[Complaint, ...]
    held: tuple[int, ...] = ()

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(self.member).fixed(self.session, SESSION_BYTES).u32(len(self.complaints))
        for c in self.complaints:
            c.write(w)
        w.ints(self.held)

    @classmethod
    def _read(cls, r: Reader) -> ShareReceipt:
        rnd, member, session = r.u64(), r.u32(), r.fixed(SESSION_BYTES)
        complaints = tuple(Complaint.read(r) for _ in range(r.count(MAX_MEMBERS)))
        return cls(rnd, member, session, complaints, _members(r))


@dataclass(frozen=True)
class MaskRequest(Message):
    """Stage 3 request: the final set of dealers (C1) every member masks with, the training round
    and the digest of the model members train on (both bound into everything signed after), and
    (when the plan uses public weights) the weight assigned to each member, aligned with `shared`."""

    TYPE: ClassVar[int] = 7
    round: int
    session: bytes
    shared: tuple[int, ...]
    weights: tuple[int, ...] = ()  # empty: each member's weight stays private, inside its masked vector
    training_round: int = 0
    model_digest: bytes = bytes(DIGEST_BYTES)

    def _write(self, w: Writer) -> None:
        w.u64(self.round).fixed(self.session, SESSION_BYTES).ints(self.shared).ints(self.weights)
        w.u64(self.training_round).fixed(self.model_digest, DIGEST_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> MaskRequest:
        return cls(r.u64(), r.fixed(SESSION_BYTES), _members(r), _members(r), r.u64(), r.fixed(DIGEST_BYTES))


@dataclass(frozen=True)
class MaskAttestation:
    """A member's signature, made when it masked, over (round, session, C1, weights, training round,
    model digest, min_cohort): proof of the view its masked input was built under."""

    member: int
    min_cohort: int
    signature: bytes

    def write(self, w: Writer) -> None:
        w.u32(self.member).u32(self.min_cohort).fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def read(cls, r: Reader) -> MaskAttestation:
        return cls(r.u32(), r.u32(), r.fixed(SIGNATURE_BYTES))


@dataclass(frozen=True)
class MaskedInput(Message):
    """Stage 3 reply: the masked, quantized, weighted input, and the member's attestation of what
    it masked under (C1, weights, training round, model, its own minimum cohort): holders release
    this member's self-mask shares only for a survivor set that matches it."""

    TYPE: ClassVar[int] = 8
    round: int
    member: int
    session: bytes
    vector: np.ndarray  # ring dtype (uint32 or uint64), length d + 1
    attestation: MaskAttestation | None = None

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(self.member).fixed(self.session, SESSION_BYTES)
        att = self.attestation or MaskAttestation(self.member, 0, bytes(SIGNATURE_BYTES))
        att.write(w)
        little = np.ascontiguousarray(self.vector, dtype=self.vector.dtype.newbyteorder("<"))
        w.u8(self.vector.dtype.itemsize * 8).var(little.data)

    @classmethod
    def _read(cls, r: Reader) -> MaskedInput:
        rnd, member, session = r.u64(), r.u32(), r.fixed(SESSION_BYTES)
        att = MaskAttestation.read(r)
        bits = r.u8()
        if bits not in (32, 64):
            raise ProtocolError(Rule.ENCODING, f"masked vector ring of {bits} bits")
        raw = r.var_view()
        if len(raw) % (bits // 8) or not raw:
            raise ProtocolError(Rule.ENCODING, "masked vector length is not whole elements")
        return cls(rnd, member, session, np.frombuffer(raw, dtype=f"<u{bits // 8}"), att)

    def __eq__(self, other: object) -> bool:  # ndarray fields need an explicit comparison
        return (
            isinstance(other, MaskedInput)
            and (self.round, self.member, self.session, self.attestation)
            == (other.round, other.member, other.session, other.attestation)
            and np.array_equal(self.vector, other.vector)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class SurvivorRequest(Message):
    """Stage 4 request: sign this view of who shared (C1) and who sent a masked input (C2)."""

    TYPE: ClassVar[int] = 9
    round: int
    session: bytes
    shared: tuple[int, ...]
    survivors: tuple[int, ...]

    def _write(self, w: Writer) -> None:
        w.u64(self.round).fixed(self.session, SESSION_BYTES).ints(self.shared).ints(self.survivors)

    @classmethod
    def _read(cls, r: Reader) -> SurvivorRequest:
        return cls(r.u64(), r.fixed(SESSION_BYTES), _members(r), _members(r))


@dataclass(frozen=True)
class SurvivorSignature(Message):
    """Stage 4 reply: a member's signature on (round, session, C1, C2)."""

    TYPE: ClassVar[int] = 10
    round: int
    member: int
    session: bytes
    signature: bytes

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(self.member).fixed(self.session, SESSION_BYTES)
        w.fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> SurvivorSignature:
        return cls(r.u64(), r.u32(), r.fixed(SESSION_BYTES), r.fixed(SIGNATURE_BYTES))


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Stage 5 request: survivors (self-mask shares wanted), dropped (key shares wanted), proof:
    T signatures on the survivor set, and every survivor's own mask attestation."""

    TYPE: ClassVar[int] = 11
    round: int
    session: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[SurvivorSignature, ...]
    attestations: tuple[MaskAttestation, ...] = ()

    def _write(self, w: Writer) -> None:
        w.u64(self.round).fixed(self.session, SESSION_BYTES).ints(self.survivors).ints(self.dropped)
        w.u32(len(self.signatures))
        for s in self.signatures:
            s._write(w)
        w.u32(len(self.attestations))
        for a in self.attestations:
            a.write(w)

    @classmethod
    def _read(cls, r: Reader) -> UnmaskRequest:
        rnd, session, survivors, dropped = r.u64(), r.fixed(SESSION_BYTES), _members(r), _members(r)
        sigs = tuple(SurvivorSignature._read(r) for _ in range(r.count(MAX_MEMBERS)))
        atts = tuple(MaskAttestation.read(r) for _ in range(r.count(MAX_MEMBERS)))
        return cls(rnd, session, survivors, dropped, sigs, atts)


@dataclass(frozen=True)
class RevealedShare:
    """A share released at unmasking, with the dealer's signature proving it is authentic."""

    dealer: int
    value: bytes  # field element, ELEMENT_BYTES
    signature: bytes  # the dealer's signature over (round, session, kind, dealer, holder, value)

    def write(self, w: Writer) -> None:
        w.u32(self.dealer).fixed(self.value, ELEMENT_BYTES).fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def read(cls, r: Reader) -> RevealedShare:
        return cls(r.u32(), r.fixed(ELEMENT_BYTES), r.fixed(SIGNATURE_BYTES))


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Stage 5 reply: self-mask shares of survivors and key shares of dropped members."""

    TYPE: ClassVar[int] = 12
    round: int
    member: int
    session: bytes
    seed_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(self.member).fixed(self.session, SESSION_BYTES)
        for group in (self.seed_shares, self.key_shares):
            w.u32(len(group))
            for s in group:
                s.write(w)

    @classmethod
    def _read(cls, r: Reader) -> UnmaskResponse:
        rnd, member, session = r.u64(), r.u32(), r.fixed(SESSION_BYTES)
        seed = tuple(RevealedShare.read(r) for _ in range(r.count(MAX_MEMBERS)))
        key = tuple(RevealedShare.read(r) for _ in range(r.count(MAX_MEMBERS)))
        return cls(rnd, member, session, seed, key)


@dataclass(frozen=True)
class Refusal(Message):
    """A participant's refusal: which rule the request broke (or which local policy forbade it)."""

    TYPE: ClassVar[int] = 13
    round: int
    member: int
    rule: str
    detail: str

    def _write(self, w: Writer) -> None:
        w.u64(self.round).u32(self.member).text(self.rule).text(self.detail[:1000])

    @classmethod
    def _read(cls, r: Reader) -> Refusal:
        return cls(r.u64(), r.u32(), r.text(), r.text(4096))

"""Checks both roles apply to a set of key bundles, against their own roster."""

from __future__ import annotations

from collections.abc import Iterable

from . import keys
from .crypto import SessionContext, x25519_key_is_usable
from .errors import ProtocolError, Rule
from .messages import KeyBundle
from .roster import Roster


def verify_bundle(bundle: KeyBundle, round_: int, roster: Roster, ctx: SessionContext) -> None:
    """Raise unless `bundle` is for this round, from a roster member, signed by it, with sound keys."""
    if bundle.round != round_:
        raise ProtocolError(Rule.WRONG_ROUND, f"bundle of member {bundle.member} is for round {bundle.round}")
    if bundle.member not in roster:
        raise ProtocolError(Rule.UNKNOWN_MEMBER, f"member {bundle.member} is not in the roster", (bundle.member,))
    if not roster.verify(bundle.member, bundle.signature, keys.bundle_transcript(ctx, bundle)):
        raise ProtocolError(Rule.BAD_SIGNATURE, f"bundle of member {bundle.member} is not signed by it")
    if not (x25519_key_is_usable(bundle.encryption_key) and x25519_key_is_usable(bundle.masking_key)):
        raise ProtocolError(Rule.BAD_KEY, f"member {bundle.member} advertised a low-order key", (bundle.member,))


def verify_bundles(
    bundles: Iterable[KeyBundle], round_: int, roster: Roster, ctx: SessionContext
) -> dict[int, KeyBundle]:
    """All bundles verified, by member id; any bad or duplicate bundle rejects the whole set."""
    out: dict[int, KeyBundle] = {}
    for b in bundles:
        if b.member in out:
            raise ProtocolError(Rule.DUPLICATE_MEMBER, f"member {b.member} has two bundles")
        verify_bundle(b, round_, roster, ctx)
        out[b.member] = b
    return out

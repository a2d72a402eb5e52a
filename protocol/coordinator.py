"""The coordinator's state machine for one round: collect, route, sum, unmask.

The coordinator is trusted for liveness only. It verifies what it can (signatures, sets, sizes)
so that one faulty or malicious participant is excluded instead of crashing the round: every
`add_*` either accepts the message or raises `ProtocolError` naming the rule and the culprit,
and the caller treats that sender as dropped. Masked inputs are folded into one accumulator as
they arrive, so memory is O(d) whatever the number of members.

Stages (each `close`-type call moves to the next; anything else is out of order):
    BUNDLES --bundle_set()--> SHARES --deliveries()--> RECEIPTS --mask_request()--> MASKED
    --survivor_request()--> SIGNATURES --unmask_request()--> UNMASK --finish()--> DONE
    (or ABORTED on any failure that leaves too few members)

Complaints about bad shares are judged, not trusted: the holder reveals the directional share
key, which must match the key digest the dealer signed. Garbage under the right key convicts the
dealer; a valid share convicts the complainer; a key that does not match the digest convicts
one of the two without saying which, so both are left out of the round. Convicted members are
excluded from C1 before anyone masks, so the round goes on without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from . import graph, keys, shamir
from .crypto import SessionContext, aead_open, x25519_exchange, x25519_from_bytes, x25519_public_bytes
from .errors import ProtocolError, Rule
from .masking import apply_masks
from .messages import (
    AdvertiseRequest,
    BundleSet,
    EncryptedShare,
    KeyBundle,
    MaskedInput,
    MaskRequest,
    RevealedShare,
    ShareBundle,
    ShareDelivery,
    ShareReceipt,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from .params import ProtocolParams
from .participant import parse_share_plaintext, shares_signed_by_dealer
from .quantize import dequantize
from .roster import Roster
from .verify import verify_bundle


class Stage(IntEnum):
    BUNDLES = 1
    SHARES = 2
    RECEIPTS = 3
    MASKED = 4
    SIGNATURES = 5
    UNMASK = 6
    DONE = 7
    ABORTED = 8


@dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum of the survivors' ring vectors, and who was in it."""

    round: int
    total: np.ndarray  # ring dtype, length d + 1 (last element: sum of weights)
    survivors: tuple[int, ...]  # C2: members whose inputs are in the sum
    dropped: tuple[int, ...]  # C1 \ C2: shared, then dropped before masking
    not_shared: tuple[int, ...]  # C0 \ C1: advertised keys, then dropped
    complaints: dict[int, tuple[int, ...]]  # holder -> dealers it complained about
    faults: dict[int, str]  # member -> rule it broke (its message was rejected or it was convicted)

    def weighted_sum(self, params: ProtocolParams) -> tuple[np.ndarray, int]:
        """(sum of w_i x_i as float64, sum of w_i)."""
        return dequantize(self.total, params)


@dataclass
class _Collected:
    bundles: dict[int, KeyBundle] = field(default_factory=dict)
    share_bundles: dict[int, ShareBundle] = field(default_factory=dict)
    receipts: set[int] = field(default_factory=set)
    masked: set[int] = field(default_factory=set)
    complaints: dict[int, tuple[int, ...]] = field(default_factory=dict)
    convicted: set[int] = field(default_factory=set)
    signatures: dict[int, SurvivorSignature] = field(default_factory=dict)
    seed_shares: dict[int, dict[int, int]] = field(default_factory=dict)  # dealer -> holder -> y
    key_shares: dict[int, dict[int, int]] = field(default_factory=dict)
    responded: set[int] = field(default_factory=set)


class CoordinatorRound:
    """One round of secure aggregation as seen by the coordinator."""

    def __init__(
        self,
        round_: int,
        roster: Roster,
        context: SessionContext,
        params: ProtocolParams,
        *,
        workers: int = 1,
    ) -> None:
        self.round = round_
        self.roster = roster
        self.context = context
        self.params = params
        self.workers = workers
        self.stage = Stage.BUNDLES
        self.aborted_at = Stage.BUNDLES  # the stage an abort interrupted
        self.faults: dict[int, str] = {}
        self.abort_reason: ProtocolError | None = None
        self._c = _Collected()
        self.session = b""
        self.neighbours: dict[int, frozenset[int]] = {}
        self.shared: tuple[int, ...] = ()
        self.weights: tuple[int, ...] = ()  # public weights, aligned with `shared` (empty: private)
        self.survivors: tuple[int, ...] = ()
        self.dropped: tuple[int, ...] = ()
        self._acc: np.ndarray | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def cohort(self) -> tuple[int, ...]:
        return tuple(sorted(self._c.bundles))

    def _expect(self, stage: Stage, what: str) -> None:
        if self.stage is not stage:
            raise ProtocolError(Rule.OUT_OF_ORDER, f"{what} in stage {self.stage.name}")

    def _reject(self, member: int, err: ProtocolError) -> ProtocolError:
        self.faults.setdefault(member, err.rule.value)
        return err

    def _check_sender(
        self, member: int, round_: int, session: bytes | None, pool: tuple[int, ...] | set[int], seen
    ) -> None:
        if round_ != self.round:
            raise self._reject(member, ProtocolError(Rule.WRONG_ROUND, f"message for round {round_}"))
        if member not in pool:
            raise self._reject(member, ProtocolError(Rule.NOT_A_PARTICIPANT, f"member {member} is not expected here"))
        if member in seen:
            raise self._reject(member, ProtocolError(Rule.REPLAY, f"member {member} answered twice"))
        if session is not None and session != self.session:
            raise self._reject(member, ProtocolError(Rule.WRONG_SESSION, "message for another session"))

    def abort(self, err: ProtocolError) -> ProtocolError:
        """Give up on the round: nothing more is released, the accumulator is dropped."""
        if self.stage is not Stage.ABORTED:
            self.aborted_at = self.stage
        self.stage = Stage.ABORTED
        self.abort_reason = err
        self._acc = None
        return err

    def dropouts(self) -> dict[int, str]:
        """Members that went silent, by the stage they did not answer (as far as this round got)."""
        c = self._c
        stages = [
            ("share", set(c.bundles), set(c.share_bundles)),
            ("receive", set(c.share_bundles), c.receipts),
            ("mask", set(self.shared), c.masked),
            ("sign", set(self.survivors), set(c.signatures)),
            ("unmask", set(c.signatures), c.responded),
        ]
        # a stage's collection is over once the round moved past it, or an abort closed it
        aborted = self.stage is Stage.ABORTED
        at = self.aborted_at if aborted else self.stage

        def over(stage: Stage) -> bool:
            return at >= stage if aborted else at > stage

        reached = {
            "share": over(Stage.SHARES),
            "receive": over(Stage.RECEIPTS),
            "mask": over(Stage.MASKED),
            "sign": over(Stage.SIGNATURES),
            "unmask": over(Stage.UNMASK),
        }
        out: dict[int, str] = {}
        for stage, asked, answered in stages:
            if reached[stage]:
                for m in sorted(asked - answered - c.convicted - set(self.faults)):
                    out.setdefault(m, stage)
        return out

    # ------------------------------------------------------------------ stage 0/1
    def advertise_request(self) -> AdvertiseRequest:
        return AdvertiseRequest(self.round)

    def add_bundle(self, bundle: KeyBundle) -> None:
        self._expect(Stage.BUNDLES, "a key bundle")
        if bundle.member in self._c.bundles:
            raise self._reject(bundle.member, ProtocolError(Rule.DUPLICATE_MEMBER, "second bundle"))
        try:
            verify_bundle(bundle, self.round, self.roster, self.context)
        except ProtocolError as err:
            raise self._reject(bundle.member, err) from None
        self._c.bundles[bundle.member] = bundle

    def bundle_set(self) -> BundleSet:
        self._expect(Stage.BUNDLES, "closing key advertisement")
        n0 = len(self._c.bundles)
        if n0 < self.params.min_cohort:
            raise self.abort(ProtocolError(Rule.COHORT_TOO_SMALL, f"{n0} bundles, {self.params.min_cohort} needed"))
        if n0 > self.params.max_members:
            raise self.abort(ProtocolError(Rule.PARAMETERS, f"{n0} members exceed max_members"))
        bundles = tuple(self._c.bundles[m] for m in self.cohort)
        self.session = keys.session_id(self.context, self.round, bundles)
        self.neighbours = graph.neighbours(self.cohort, self.params.degree(n0), self.session)
        self.stage = Stage.SHARES
        return BundleSet(self.round, bundles)

    # ------------------------------------------------------------------ stage 1 replies
    def add_shares(self, sb: ShareBundle) -> None:
        self._expect(Stage.SHARES, "a share bundle")
        self._check_sender(sb.member, sb.round, sb.session, set(self._c.bundles), self._c.share_bundles)
        holders = tuple(s.holder for s in sb.shares)
        expected = tuple(sorted(self.neighbours[sb.member]))
        if holders != expected or any(s.dealer != sb.member for s in sb.shares):
            raise self._reject(sb.member, ProtocolError(Rule.NEIGHBOURS, "shares not addressed to its neighbours"))
        if not all(
            keys.item_signed_by_dealer(self.context, self.roster, self.round, self.session, s) for s in sb.shares
        ):
            raise self._reject(sb.member, ProtocolError(Rule.BAD_SIGNATURE, "share item not signed by its dealer"))
        statement = keys.share_bundle_transcript(
            self.context, self.round, self.session, sb.member, sb.commitment, sb.shares
        )
        if not self.roster.verify(sb.member, sb.signature, statement):
            raise self._reject(sb.member, ProtocolError(Rule.BAD_SIGNATURE, "share bundle not signed by its dealer"))
        self._c.share_bundles[sb.member] = sb

    def deliveries(self) -> dict[int, ShareDelivery]:
        """Close sharing: each dealer, as a holder, gets the shares its neighbours dealt it."""
        self._expect(Stage.SHARES, "closing share collection")
        dealers = set(self._c.share_bundles)
        need = max(self.params.min_cohort, self.params.consistency_threshold(len(self._c.bundles)))
        if len(dealers) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(dealers)} members shared, {need} needed"))
        inbox: dict[int, list[EncryptedShare]] = {m: [] for m in sorted(dealers)}
        for sb in self._c.share_bundles.values():
            for item in sb.shares:
                if item.holder in inbox:
                    inbox[item.holder].append(item)
        self.stage = Stage.RECEIPTS
        return {m: ShareDelivery(self.round, self.session, tuple(items)) for m, items in inbox.items()}

    # ------------------------------------------------------------------ stage 2 replies
    def add_receipt(self, receipt: ShareReceipt) -> None:
        """Record that a holder has its shares; judge each complaint it makes."""
        self._expect(Stage.RECEIPTS, "a share receipt")
        holder = receipt.member
        self._check_sender(holder, receipt.round, receipt.session, set(self._c.share_bundles), self._c.receipts)
        self._c.receipts.add(holder)
        if receipt.complaints:
            self._c.complaints[holder] = tuple(c.dealer for c in receipt.complaints)
        for c in receipt.complaints:
            for guilty, why in self._judge(holder, c.dealer, c.key):
                self._c.convicted.add(guilty)
                self.faults.setdefault(guilty, why)

    def _judge(self, holder: int, dealer: int, key: bytes) -> list[tuple[int, str]]:
        ctx, r, sess = self.context, self.round, self.session
        sb = self._c.share_bundles.get(dealer)
        item = next((it for it in sb.shares if it.holder == holder), None) if sb else None
        if item is None:
            return [(holder, "complaint about a share that was never dealt")]
        if keys.share_key_digest(ctx, r, sess, dealer, holder, key) != item.key_digest:
            reason = "complaint with a key that does not match the dealer's digest"
            return [(holder, reason), (dealer, reason)]
        ad = keys.share_associated_data(ctx, r, sess, dealer, holder)
        pt = aead_open(key, item.nonce, item.ciphertext, ad)
        held = parse_share_plaintext(pt) if pt is not None else None
        if held is None or not shares_signed_by_dealer(ctx, self.roster, r, sess, dealer, holder, held):
            return [(dealer, Rule.BAD_SHARE.value)]
        return [(holder, "false complaint about a valid share")]

    def ready(self) -> set[int]:
        """Members that would make up C1 now: receipts in, not convicted."""
        return self._c.receipts - self._c.convicted

    def mask_request(self, exclude: Iterable[int] = (), weights: Mapping[int, int] | None = None) -> MaskRequest:
        """Close receipts: C1 = dealers who confirmed receipt, were not convicted and are not
        excluded (e.g. by a contribution policy); with public `weights`, each gets its weight."""
        self._expect(Stage.RECEIPTS, "closing receipt collection")
        self.shared = tuple(sorted(self._c.receipts - self._c.convicted - set(exclude)))
        need = max(self.params.min_cohort, self.params.consistency_threshold(len(self._c.bundles)))
        if len(self.shared) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(self.shared)} members ready to mask, {need} needed"))
        if weights is not None:
            missing = [m for m in self.shared if m not in weights]
            if missing or any(not 1 <= weights[m] <= self.params.max_weight for m in self.shared):
                raise self.abort(ProtocolError(Rule.WEIGHTS, f"no valid public weight for members {missing}"))
            self.weights = tuple(int(weights[m]) for m in self.shared)
        self._acc = np.zeros(self.params.masked_length, dtype=self.params.dtype)
        self.stage = Stage.MASKED
        return MaskRequest(self.round, self.session, self.shared, self.weights)

    # ------------------------------------------------------------------ stage 3 replies
    def add_masked(self, mi: MaskedInput) -> None:
        self._expect(Stage.MASKED, "a masked input")
        self._check_sender(mi.member, mi.round, mi.session, set(self.shared), self._c.masked)
        v = mi.vector
        if v.dtype != self.params.dtype or v.shape != (self.params.masked_length,):
            raise self._reject(mi.member, ProtocolError(Rule.INPUT_LENGTH, "masked vector has the wrong shape"))
        assert self._acc is not None
        np.add(self._acc, v, out=self._acc)
        self._c.masked.add(mi.member)

    def survivor_request(self) -> SurvivorRequest:
        self._expect(Stage.MASKED, "closing masked-input collection")
        self.survivors = tuple(sorted(self._c.masked))
        self.dropped = tuple(m for m in self.shared if m not in self._c.masked)
        need = max(self.params.min_cohort, self.params.consistency_threshold(len(self._c.bundles)))
        if len(self.survivors) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(self.survivors)} masked inputs, {need} needed"))
        if self.weights:  # members would refuse to sign a sum one of them dominates: stop here
            table = dict(zip(self.shared, self.weights, strict=True))
            total = sum(table[m] for m in self.survivors)
            top = max(self.survivors, key=lambda m: table[m])
            if table[top] > self.params.max_share * total:
                raise self.abort(ProtocolError(Rule.WEIGHT_CAPTURE, f"member {top} would dominate the sum", (top,)))
        self.stage = Stage.SIGNATURES
        return SurvivorRequest(self.round, self.session, self.shared, self.survivors)

    # ------------------------------------------------------------------ stage 4 replies
    def add_signature(self, sig: SurvivorSignature) -> None:
        self._expect(Stage.SIGNATURES, "a survivor signature")
        self._check_sender(sig.member, sig.round, sig.session, set(self.survivors), self._c.signatures)
        statement = keys.survivors_transcript(
            self.context, self.round, self.session, self.shared, self.survivors, self.weights
        )
        if not self.roster.verify(sig.member, sig.signature, statement):
            raise self._reject(sig.member, ProtocolError(Rule.BAD_SIGNATURE, "survivor signature invalid"))
        self._c.signatures[sig.member] = sig

    def unmask_request(self) -> UnmaskRequest:
        self._expect(Stage.SIGNATURES, "closing signature collection")
        need = self.params.consistency_threshold(len(self._c.bundles))
        if len(self._c.signatures) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(self._c.signatures)} signatures, {need} needed"))
        self.stage = Stage.UNMASK
        sigs = tuple(self._c.signatures[m] for m in sorted(self._c.signatures))
        return UnmaskRequest(self.round, self.session, self.survivors, self.dropped, sigs)

    # ------------------------------------------------------------------ stage 5 replies
    def add_unmask(self, resp: UnmaskResponse) -> None:
        self._expect(Stage.UNMASK, "an unmask response")
        self._check_sender(resp.member, resp.round, resp.session, set(self.survivors), self._c.responded)
        seeds = self._verified(resp.member, resp.seed_shares, keys.SEED, set(self.survivors))
        keyz = self._verified(resp.member, resp.key_shares, keys.KEY, set(self.dropped))
        self._c.responded.add(resp.member)
        for dealer, y in seeds.items():
            self._c.seed_shares.setdefault(dealer, {})[resp.member] = y
        for dealer, y in keyz.items():
            self._c.key_shares.setdefault(dealer, {})[resp.member] = y

    def _verified(self, holder: int, shares: tuple[RevealedShare, ...], kind: str, dealers: set[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in shares:
            statement = keys.share_value_transcript(
                self.context, self.round, self.session, kind, s.dealer, holder, s.value
            )
            ok = (
                s.dealer in dealers
                and s.dealer not in out
                and holder in self.neighbours.get(s.dealer, ())
                and self.roster.verify(s.dealer, s.signature, statement)
            )
            if not ok:
                raise self._reject(holder, ProtocolError(Rule.BAD_SHARE, f"member {holder} revealed an invalid share"))
            out[s.dealer] = shamir.decode_share(s.value)
        return out

    def finish(self) -> AggregateResult:
        """Reconstruct what the survivors revealed, strip every mask, return the exact sum."""
        self._expect(Stage.UNMASK, "finishing")
        try:
            return self._finish()
        except ProtocolError as err:
            if self.stage is not Stage.ABORTED:
                self.abort(err)
            raise

    def _finish(self) -> AggregateResult:
        ctx, r, sess = self.context, self.round, self.session
        plus: list[bytes] = []
        minus: list[bytes] = []
        for j in self.survivors:
            seed = self._reconstruct(j, self._c.seed_shares.get(j, {}))
            if keys.seed_commitment(ctx, r, sess, j, seed) != self._c.share_bundles[j].commitment:
                raise self.abort(ProtocolError(Rule.BAD_SHARE, f"member {j} dealt inconsistent seed shares", (j,)))
            minus.append(keys.self_mask_key(ctx, r, sess, j, seed))
        survivors = set(self.survivors)
        for j in self.dropped:
            secret = self._reconstruct(j, self._c.key_shares.get(j, {}))
            sk = x25519_from_bytes(secret)
            if x25519_public_bytes(sk) != self._c.bundles[j].masking_key:
                raise self.abort(ProtocolError(Rule.BAD_SHARE, f"member {j} dealt inconsistent key shares", (j,)))
            for k in sorted(self.neighbours[j] & survivors):
                pk = keys.pair_mask_key(ctx, r, sess, k, j, x25519_exchange(sk, self._c.bundles[k].masking_key))
                # survivor k added +PRG if k < j, else -PRG: take it back out
                (minus if k < j else plus).append(pk)
        assert self._acc is not None
        apply_masks(self._acc, plus, minus, workers=self.workers)
        total, self._acc = self._acc, None
        self.stage = Stage.DONE
        shared = set(self.shared)
        return AggregateResult(
            round=r,
            total=total,
            survivors=self.survivors,
            dropped=self.dropped,
            not_shared=tuple(m for m in self.cohort if m not in shared and m not in self._c.convicted),
            complaints=dict(self._c.complaints),
            faults=dict(self.faults),
        )

    def _reconstruct(self, dealer: int, shares: dict[int, int]) -> bytes:
        t = self.params.shamir_threshold(len(self.neighbours[dealer]))
        if len(shares) < t:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(shares)} shares of member {dealer}, {t} needed"))
        try:
            return shamir.reconstruct(shares, t)
        except ProtocolError as err:  # every share carries the dealer's signature: its fault
            blamed = ProtocolError(err.rule, f"member {dealer}: {err.detail}", (dealer,))
            raise self.abort(blamed) from None

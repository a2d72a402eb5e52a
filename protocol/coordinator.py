"""The coordinator's state machine for one round: collect, route, sum, unmask.

The coordinator is trusted for liveness only. It verifies what it can (signatures, sets, sizes)
so that one faulty or malicious participant is excluded instead of crashing the round: every
`add_*` either accepts the message or raises `ProtocolError` naming the rule and the culprit,
and the caller treats that sender as dropped. Masked inputs are folded into one accumulator as
they arrive, so memory is O(d) whatever the number of members.

Stages (`protocol.stages.Stage`; the round collects the replies of one stage at a time, each
`close`-type call moves to the next; anything else is out of order):
    ADVERTISE --bundle_set()--> SHARE --deliveries()--> RECEIVE --mask_request()--> MASK
    --survivor_request()--> SIGN --unmask_request()--> UNMASK --finish()--> done
    (or aborted, in the stage it was in, on any failure that leaves too few members)

Complaints about bad shares are judged, not trusted: the holder reveals the directional share
key, which must match the key digest the dealer signed. Garbage under the right key convicts the
dealer; a valid share convicts the complainer; a key that does not match the digest convicts the
complainer (an honest holder never complains about a share whose digest it cannot match, so one
member's word never excludes another). Convicted members are excluded from C1 before anyone
masks, and so is a dealer whose shares too few members of C1 hold to rebuild its secrets.

Before anything is released the coordinator checks what it can see: every survivor attested to
C1, T survivors signed one survivor set, every secret that will be needed is held by at least t
signers. A round that fails these checks aborts with nothing released. It can still abort after
release if signers go silent in the unmask trip itself; that releases only what the protocol
allows (seed shares of survivors, key shares of dropped members), which reveals nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import graph, keys, shamir
from .crypto import SessionContext, aead_open, x25519_exchange, x25519_from_bytes, x25519_public_bytes
from .errors import ProtocolError, Rule
from .masking import apply_masks
from .messages import (
    DIGEST_BYTES,
    AdvertiseRequest,
    BundleSet,
    EncryptedShare,
    KeyBundle,
    MaskAttestation,
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
from .quantize import dequantize, weighted_mean
from .roster import Roster
from .stages import Stage
from .verify import verify_bundle


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
    public_total: int | None = None  # sum of C1's public weights, when the plan uses public weights

    def weighted_sum(self, params: ProtocolParams) -> tuple[np.ndarray, int]:
        """(sum of w_i x_i as float64, sum of w_i)."""
        return dequantize(self.total, params, self.public_total)

    def weighted_mean(self, params: ProtocolParams) -> tuple[np.ndarray | None, int]:
        """(sum of w_i x_i / sum of w_i as float32, sum of w_i), in chunks (see quantize.weighted_mean)."""
        return weighted_mean(self.total, params, self.public_total)


@dataclass
class _Collected:
    bundles: dict[int, KeyBundle] = field(default_factory=dict)
    share_bundles: dict[int, ShareBundle] = field(default_factory=dict)
    receipts: set[int] = field(default_factory=set)
    held: dict[int, frozenset[int]] = field(default_factory=dict)  # holder -> dealers whose shares it holds
    masked: set[int] = field(default_factory=set)
    attestations: dict[int, MaskAttestation] = field(default_factory=dict)
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
        self.stage = Stage.ADVERTISE  # the stage whose replies are collected (where an abort left it)
        self.done = False  # finish() returned the sum
        self.faults: dict[int, str] = {}
        self.abort_reason: ProtocolError | None = None
        self._c = _Collected()
        self.session = b""
        self.neighbours: dict[int, frozenset[int]] = {}
        self.shared: tuple[int, ...] = ()
        self.weights: tuple[int, ...] = ()  # public weights, aligned with `shared` (empty: private)
        self.unreconstructable: tuple[int, ...] = ()  # left out of C1: too few holders of their shares
        self.training_round = 0
        self.model_digest = bytes(DIGEST_BYTES)
        self.survivors: tuple[int, ...] = ()
        self.dropped: tuple[int, ...] = ()
        self._acc: np.ndarray | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def _threshold(self) -> int:
        """T (from the roster): survivors who must sign; also the least C0, C1 and C2 can be."""
        return max(self.params.min_cohort, self.params.consistency_threshold())

    @property
    def cohort(self) -> tuple[int, ...]:
        return tuple(sorted(self._c.bundles))

    @property
    def aborted(self) -> bool:
        return self.abort_reason is not None

    def _expect(self, stage: Stage, what: str) -> None:
        if self.aborted or self.done or self.stage is not stage:
            state = " (aborted)" if self.aborted else " (done)" if self.done else ""
            raise ProtocolError(Rule.OUT_OF_ORDER, f"{what} in stage {self.stage}{state}")

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
        self.abort_reason = err
        self._acc = None
        return err

    def dropouts(self) -> dict[int, Stage]:
        """Members that went silent, by the stage they did not answer (as far as this round got)."""
        c = self._c
        stages = [
            (Stage.SHARE, set(c.bundles), set(c.share_bundles)),
            (Stage.RECEIVE, set(c.share_bundles), c.receipts),
            (Stage.MASK, set(self.shared), c.masked),
            (Stage.SIGN, set(self.survivors), set(c.signatures)),
            (Stage.UNMASK, set(c.signatures), c.responded),
        ]

        def over(stage: Stage) -> bool:
            """A stage's collection is over once the round moved past it, finished, or an abort closed it."""
            return self.done or (self.stage >= stage if self.aborted else self.stage > stage)

        out: dict[int, Stage] = {}
        for stage, asked, answered in stages:
            if over(stage):
                for m in sorted(asked - answered - c.convicted - set(self.faults)):
                    out.setdefault(m, stage)
        return out

    # ------------------------------------------------------------------ stage 0/1
    def advertise_request(self) -> AdvertiseRequest:
        return AdvertiseRequest(self.round)

    def add_bundle(self, bundle: KeyBundle) -> None:
        self._expect(Stage.ADVERTISE, "a key bundle")
        if bundle.member in self._c.bundles:
            raise self._reject(bundle.member, ProtocolError(Rule.DUPLICATE_MEMBER, "second bundle"))
        try:
            verify_bundle(bundle, self.round, self.roster, self.context)
        except ProtocolError as err:
            raise self._reject(bundle.member, err) from None
        self._c.bundles[bundle.member] = bundle

    def bundle_set(self) -> BundleSet:
        self._expect(Stage.ADVERTISE, "closing key advertisement")
        n0 = len(self._c.bundles)
        if n0 < self.params.min_cohort:
            raise self.abort(ProtocolError(Rule.COHORT_TOO_SMALL, f"{n0} bundles, {self.params.min_cohort} needed"))
        if n0 > self.params.max_members:
            raise self.abort(ProtocolError(Rule.PARAMETERS, f"{n0} members exceed max_members"))
        if n0 < self._threshold:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{n0} bundles, {self._threshold} needed"))
        bundles = tuple(self._c.bundles[m] for m in self.cohort)
        self.session = keys.session_id(self.context, self.round, bundles)
        self.neighbours = graph.neighbours(self.cohort)
        self.stage = Stage.SHARE
        return BundleSet(self.round, bundles)

    # ------------------------------------------------------------------ stage 1 replies
    def add_shares(self, sb: ShareBundle) -> None:
        self._expect(Stage.SHARE, "a share bundle")
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
        self._expect(Stage.SHARE, "closing share collection")
        dealers = set(self._c.share_bundles)
        need = self._threshold
        if len(dealers) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(dealers)} members shared, {need} needed"))
        inbox: dict[int, list[EncryptedShare]] = {m: [] for m in sorted(dealers)}
        for sb in self._c.share_bundles.values():
            for item in sb.shares:
                if item.holder in inbox:
                    inbox[item.holder].append(item)
        self.stage = Stage.RECEIVE
        return {m: ShareDelivery(self.round, self.session, tuple(items)) for m, items in inbox.items()}

    # ------------------------------------------------------------------ stage 2 replies
    def add_receipt(self, receipt: ShareReceipt) -> None:
        """Record that a holder has its shares; judge each complaint it makes."""
        self._expect(Stage.RECEIVE, "a share receipt")
        holder = receipt.member
        self._check_sender(holder, receipt.round, receipt.session, set(self._c.share_bundles), self._c.receipts)
        dealt = {d for d in self.neighbours[holder] if d in self._c.share_bundles}
        accused = [c.dealer for c in receipt.complaints]
        if len(set(accused)) != len(accused) or not set(accused) <= dealt:
            # bounded work: at most one judgment per dealer that really dealt this holder a share
            raise self._reject(holder, ProtocolError(Rule.COMPLAINTS, "complaints repeat or name non-dealers"))
        if not set(receipt.held) <= dealt or set(receipt.held) & set(accused):
            raise self._reject(holder, ProtocolError(Rule.COMPLAINTS, "held list names non-dealers"))
        self._c.receipts.add(holder)
        self._c.held[holder] = frozenset(receipt.held)
        if receipt.complaints:
            self._c.complaints[holder] = tuple(accused)
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
            # honest holders never complain about a digest they cannot match (participant rule 4)
            return [(holder, "complaint with a key that does not match the dealer's digest")]
        ad = keys.share_associated_data(ctx, r, sess, dealer, holder)
        pt = aead_open(key, item.nonce, item.ciphertext, ad)
        held = parse_share_plaintext(pt) if pt is not None else None
        if held is None or not shares_signed_by_dealer(ctx, self.roster, r, sess, dealer, holder, held):
            return [(dealer, Rule.BAD_SHARE.value)]
        return [(holder, "false complaint about a valid share")]

    def ready(self) -> set[int]:
        """Members that would make up C1 now: receipts in, not convicted."""
        return self._c.receipts - self._c.convicted

    def _reconstructable(self, members: set[int]) -> set[int]:
        """The largest subset of `members` in which every dealer's shares are held by at least t
        of the others (so its secret could be rebuilt if everyone stays)."""
        live = set(members)
        while True:
            short = {
                j
                for j in live
                if sum(j in self._c.held.get(h, ()) for h in live - {j})
                < self.params.shamir_threshold(len(self.neighbours[j]))
            }
            if not short:
                return live
            live -= short

    def mask_request(
        self,
        exclude: Iterable[int] = (),
        weights: Mapping[int, int] | None = None,
        *,
        training_round: int = 0,
        model_digest: bytes = bytes(DIGEST_BYTES),
    ) -> MaskRequest:
        """Close receipts: C1 = dealers who confirmed receipt, were not convicted, are not
        excluded (e.g. by a contribution policy) and whose shares enough of C1 hold; with public
        `weights`, each gets its weight. The model can be bound later (`bind_model`)."""
        self._expect(Stage.RECEIVE, "closing receipt collection")
        candidates = self._c.receipts - self._c.convicted - set(exclude)
        live = self._reconstructable(candidates)
        self.unreconstructable = tuple(sorted(candidates - live))
        self.shared = tuple(sorted(live))
        need = self._threshold
        if len(self.shared) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(self.shared)} members ready to mask, {need} needed"))
        if weights is not None:
            missing = [m for m in self.shared if m not in weights]
            if missing or any(not 1 <= weights[m] <= self.params.max_weight for m in self.shared):
                raise self.abort(ProtocolError(Rule.WEIGHTS, f"no valid public weight for members {missing}"))
            self.weights = tuple(int(weights[m]) for m in self.shared)
        self._acc = np.zeros(self.params.masked_length, dtype=self.params.dtype)
        self.stage = Stage.MASK
        return self.bind_model(training_round, model_digest)

    def bind_model(self, training_round: int, model_digest: bytes) -> MaskRequest:
        """The MaskRequest naming the training round and the digest of the model members will train
        on (known only once the previous round's aggregate is applied, when trips are pipelined)."""
        self._expect(Stage.MASK, "binding the model")
        if self._c.masked:
            raise ProtocolError(Rule.OUT_OF_ORDER, "the model cannot change once masked inputs arrived")
        if len(model_digest) != DIGEST_BYTES:
            raise ProtocolError(Rule.PARAMETERS, "a model digest is 32 bytes")
        self.training_round, self.model_digest = training_round, model_digest
        return MaskRequest(self.round, self.session, self.shared, self.weights, training_round, model_digest)

    # ------------------------------------------------------------------ stage 3 replies
    def add_masked(self, mi: MaskedInput) -> None:
        self._expect(Stage.MASK, "a masked input")
        self._check_sender(mi.member, mi.round, mi.session, set(self.shared), self._c.masked)
        v = mi.vector
        if v.dtype != self.params.dtype or v.shape != (self.params.masked_length,):
            raise self._reject(mi.member, ProtocolError(Rule.INPUT_LENGTH, "masked vector has the wrong shape"))
        att = mi.attestation
        valid = att is not None and att.member == mi.member
        if not valid or not self.roster.verify(mi.member, att.signature, self._attested(att)):
            raise self._reject(mi.member, ProtocolError(Rule.ATTESTATION, "mask attestation missing or invalid"))
        assert self._acc is not None
        np.add(self._acc, v, out=self._acc)
        self._c.masked.add(mi.member)
        self._c.attestations[mi.member] = att

    def _attested(self, att: MaskAttestation) -> bytes:
        return keys.mask_attestation_transcript(
            self.context,
            self.round,
            self.session,
            att.member,
            self.shared,
            self.weights,
            self.training_round,
            self.model_digest,
            att.min_cohort,
        )

    def _statement(self) -> bytes:
        return keys.survivors_transcript(
            self.context,
            self.round,
            self.session,
            self.shared,
            self.survivors,
            self.weights,
            self.training_round,
            self.model_digest,
        )

    def survivor_request(self) -> SurvivorRequest:
        self._expect(Stage.MASK, "closing masked-input collection")
        self.survivors = tuple(sorted(self._c.masked))
        self.dropped = tuple(m for m in self.shared if m not in self._c.masked)
        need = self._threshold
        if len(self.survivors) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(self.survivors)} masked inputs, {need} needed"))
        strict = [m for m in self.survivors if self._c.attestations[m].min_cohort > len(self.survivors)]
        if strict:  # their holders would refuse to release anything for this set: stop before signatures
            raise self.abort(
                ProtocolError(Rule.COHORT_TOO_SMALL, f"members {strict} accept larger sums only", tuple(strict))
            )
        if self.weights:  # members would refuse to sign a sum one of them dominates: stop here
            table = dict(zip(self.shared, self.weights, strict=True))
            total = sum(table[m] for m in self.survivors)
            top = max(self.survivors, key=lambda m: table[m])
            if table[top] > self.params.max_share * total:
                raise self.abort(ProtocolError(Rule.WEIGHT_CAPTURE, f"member {top} would dominate the sum", (top,)))
        self.stage = Stage.SIGN
        return SurvivorRequest(self.round, self.session, self.shared, self.survivors)

    # ------------------------------------------------------------------ stage 4 replies
    def add_signature(self, sig: SurvivorSignature) -> None:
        self._expect(Stage.SIGN, "a survivor signature")
        self._check_sender(sig.member, sig.round, sig.session, set(self.survivors), self._c.signatures)
        if not self.roster.verify(sig.member, sig.signature, self._statement()):
            raise self._reject(sig.member, ProtocolError(Rule.BAD_SIGNATURE, "survivor signature invalid"))
        self._c.signatures[sig.member] = sig

    def unmask_request(self) -> UnmaskRequest:
        self._expect(Stage.SIGN, "closing signature collection")
        need = self._threshold
        if len(self._c.signatures) < need:
            raise self.abort(ProtocolError(Rule.THRESHOLD, f"{len(self._c.signatures)} signatures, {need} needed"))
        signers = set(self._c.signatures)
        for j in (*self.survivors, *self.dropped):  # only signers answer: check before anything is released
            t = self.params.shamir_threshold(len(self.neighbours[j]))
            holders = sum(j in self._c.held.get(h, ()) for h in signers - {j})
            if holders < t:
                raise self.abort(
                    ProtocolError(Rule.THRESHOLD, f"member {j}'s shares are held by {holders} signers, {t} needed")
                )
        self.stage = Stage.UNMASK
        sigs = tuple(self._c.signatures[m] for m in sorted(self._c.signatures))
        atts = tuple(self._c.attestations[m] for m in self.survivors)
        return UnmaskRequest(self.round, self.session, self.survivors, self.dropped, sigs, atts)

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
            if not self.aborted:
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
        self._check_range(total)
        self.done = True
        shared = set(self.shared)
        return AggregateResult(
            public_total=sum(self.weights) if self.weights else None,
            round=r,
            total=total,
            survivors=self.survivors,
            dropped=self.dropped,
            not_shared=tuple(m for m in self.cohort if m not in shared and m not in self._c.convicted),
            complaints=dict(self._c.complaints),
            faults=dict(self.faults),
        )

    def _check_range(self, total: np.ndarray) -> None:
        """Refuse a sum no honest cohort can produce: a weight total outside what the survivors'
        weights allow, or a coordinate beyond the bound every honest input respects. (A member can
        still send any input within the bounds: input validity is out of scope.)"""
        p, n = self.params, len(self.survivors)
        signed = total.view(np.int32 if p.ring_bits == 32 else np.int64)
        weight = int(signed[-1])
        if self.weights:
            table = dict(zip(self.shared, self.weights, strict=True))
            expected = sum(table[m] for m in self.survivors)
            low = high = expected
            denominator = sum(self.weights)
            limit = sum(math.ceil(p.level * p.max_members * table[m] / denominator) for m in self.survivors)
        else:
            low, high = n, n * p.max_weight
            limit = p.level * max(weight, 0)
        body = signed[:-1]
        largest = max(int(body.max()), -int(body.min())) if body.size else 0
        if not low <= weight <= high or largest > limit:
            raise self.abort(
                ProtocolError(
                    Rule.AGGREGATE_RANGE,
                    f"round {self.round}: weight total {weight} (allowed {low}..{high}), largest coordinate "
                    f"{largest} (allowed {limit}): no honest cohort produces this sum",
                )
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

"""The participant's state machine: one `Participant` per member, one `RoundState` per round.

Rules a participant enforces, whatever the coordinator says (each refusal names its `Rule`):

1. Keys are fresh per round and advertised at most once per round; rounds only move forward
   (an old or repeated round is a replay).
2. Every key bundle is checked against this member's OWN roster; its own bundle must come back
   unaltered; the cohort must reach the minimum size.
3. Stages run in order: advertise -> share -> receive shares -> mask -> sign survivors -> unmask.
   A request for a stage already done is a replay; one for a later stage is out of order.
4. Shares received are decrypted and checked at once; a bad one becomes a complaint carrying the
   share key, which the coordinator can check against the dealer's signed key digest. A share whose
   key does not match that digest is never complained about: the complaint could not be judged,
   and an honest member must never be excluded on another member's word.
5. The set of members who shared (C1) is fixed once masking has used it, and must reach the
   consistency threshold T; the survivor set (C2) it signs must be a subset of C1 that contains
   this member and reaches T. T depends on the roster, never on the cohort shown.
6. A member masks at most once per training round (rounds only move forward, across restarts) and
   at most `max_model_uses` times per model; it masks only for the model it actually received, and
   signs what it masked under (an attestation) and, later, the survivor set, both naming the model.
7. Shares are released only after T distinct survivors signed the SAME (C1, C2) and every survivor
   whose seed is released attested to masking under that C1 and accepts that many survivors; seed
   shares only for survivors, key shares only for dropped members, never both for one peer, once.
8. Any broken rule aborts the round for this member and wipes its round secrets (fail closed).

The transition table below is the whole state machine; everything else is checking and crypto.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import graph, keys, shamir
from .codec import Reader, Writer
from .crypto import (
    NONCE_BYTES,
    Randomness,
    SessionContext,
    aead_open,
    aead_seal,
    x25519_exchange,
    x25519_from_bytes,
    x25519_from_random,
    x25519_private_bytes,
    x25519_public_bytes,
)
from .errors import ProtocolError, Rule
from .masking import apply_masks
from .messages import (
    DIGEST_BYTES,
    AdvertiseRequest,
    BundleSet,
    Complaint,
    EncryptedShare,
    KeyBundle,
    MaskAttestation,
    MaskedInput,
    MaskRequest,
    Message,
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
from .quantize import quantize
from .roster import Roster
from .stages import REQUEST_STAGE, Stage
from .verify import verify_bundles


class Phase(IntEnum):
    """Where a round is: phase k (1..5) answered the stages of index < k (`protocol.stages.Stage`).
    The value is persisted in secagg.state."""

    ADVERTISED = 1
    SHARED = 2
    RECEIVED = 3
    MASKED = 4
    SIGNED = 5
    DONE = 6
    ABORTED = 7


# (phase the round must be in, stage requested) -> phase after a successful answer
TRANSITIONS: dict[tuple[Phase, Stage], Phase] = {
    (Phase.ADVERTISED, Stage.SHARE): Phase.SHARED,
    (Phase.SHARED, Stage.RECEIVE): Phase.RECEIVED,
    (Phase.RECEIVED, Stage.MASK): Phase.MASKED,
    (Phase.MASKED, Stage.SIGN): Phase.SIGNED,
    (Phase.SIGNED, Stage.UNMASK): Phase.DONE,
}
ROUND_WINDOW = 4  # rounds kept (as tombstones at least): the newest ones advertised
STATE_VERSION = 2  # 2: contribution records (training rounds and models masked for)
MAX_MODEL_USES = 3  # default: masks per model digest (a round that aborted may be retried on its model)


@dataclass
class HeldShare:
    """A neighbour's shares for this member, with the dealer's signatures over each value."""

    seed: bytes
    seed_sig: bytes
    key: bytes
    key_sig: bytes


@dataclass
class RoundState:
    round: int
    phase: Phase
    encryption_sk: bytes = b""
    masking_sk: bytes = b""
    seed: bytes = b""
    bundle: bytes = b""  # own KeyBundle, encoded
    session: bytes = b""
    cohort: int = 0  # |C0|
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (enc pk, mask pk)
    neighbours: tuple[int, ...] = ()
    shared: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()
    held: dict[int, HeldShare] = field(default_factory=dict)
    released_seed: tuple[int, ...] = ()
    released_key: tuple[int, ...] = ()
    weights: tuple[int, ...] = ()  # public weights of C1 (aligned with `shared`), if the plan uses them
    training_round: int = 0  # what the masked input was trained for (bound into every signature)
    model_digest: bytes = bytes(DIGEST_BYTES)

    def wipe(self) -> None:
        """Drop every secret of the round (after unmasking, or on abort)."""
        self.encryption_sk = self.masking_sk = self.seed = b""
        self.held = {}
        self.peers = {}

    def write(self, w: Writer) -> None:
        w.u64(self.round).u8(self.phase).var(self.encryption_sk).var(self.masking_sk)
        w.var(self.seed).var(self.bundle).var(self.session).u32(self.cohort)
        w.u32(len(self.peers))
        for m, (e, k) in sorted(self.peers.items()):
            w.u32(m).fixed(e, 32).fixed(k, 32)
        w.ints(self.neighbours).ints(self.shared).ints(self.survivors)
        w.u32(len(self.held))
        for m, h in sorted(self.held.items()):
            w.u32(m).var(h.seed).var(h.seed_sig).var(h.key).var(h.key_sig)
        w.ints(self.released_seed).ints(self.released_key).ints(self.weights)
        w.u64(self.training_round).fixed(self.model_digest, DIGEST_BYTES)

    @classmethod
    def read(cls, r: Reader) -> RoundState:
        st = cls(r.u64(), Phase(r.u8()))
        st.encryption_sk, st.masking_sk, st.seed = r.var(), r.var(), r.var()
        st.bundle, st.session, st.cohort = r.var(), r.var(), r.u32()
        st.peers = {r.u32(): (r.fixed(32), r.fixed(32)) for _ in range(r.count())}
        st.neighbours, st.shared, st.survivors = r.ints(), r.ints(), r.ints()
        st.held = {r.u32(): HeldShare(r.var(), r.var(), r.var(), r.var()) for _ in range(r.count())}
        st.released_seed, st.released_key, st.weights = r.ints(), r.ints(), r.ints()
        st.training_round, st.model_digest = r.u64(), r.fixed(DIGEST_BYTES)
        return st


def _sorted_unique(members: tuple[int, ...], what: str) -> tuple[int, ...]:
    if len(set(members)) != len(members):
        raise ProtocolError(Rule.DUPLICATE_MEMBER, f"{what} lists a member twice")
    return tuple(sorted(members))


class Participant:
    """One member's side of the protocol across rounds. Feed requests, get replies."""

    def __init__(
        self,
        member: int,
        identity: Ed25519PrivateKey,
        roster: Roster,
        context: SessionContext,
        params: ProtocolParams,
        *,
        min_cohort: int = 0,
        max_model_uses: int = MAX_MODEL_USES,
        randomness: Randomness = os.urandom,
        state: bytes | None = None,
    ) -> None:
        roster.get(member)  # raises if this member is not in its own roster
        self.member = member
        self._identity = identity
        self.roster = roster
        self.context = context
        self.params = params
        self.min_cohort = max(params.min_cohort, min_cohort)
        if max_model_uses < 1:
            raise ValueError("max_model_uses must be at least 1")
        self.max_model_uses = max_model_uses
        self._random = randomness
        self.latest = 0  # newest round advertised
        self.masked_round = 0  # newest training round this member masked an input for
        self.model_uses: dict[bytes, int] = {}  # model digest -> masked inputs made on it
        self.clipped = 0  # coordinates clipped in the last masked input (a tuning hint)
        self.rounds: dict[int, RoundState] = {}
        if state is not None:
            self._load(state)

    # ------------------------------------------------------------------ persistence
    def save(self) -> bytes:
        """Serialize all round state (contains secrets: keep it on this member's machine)."""
        w = Writer().u8(STATE_VERSION).u64(self.latest).u64(self.masked_round).u32(len(self.model_uses))
        for digest, uses in sorted(self.model_uses.items()):
            w.fixed(digest, DIGEST_BYTES).u32(uses)
        w.u32(len(self.rounds))
        for _, st in sorted(self.rounds.items()):
            st.write(w)
        return w.getvalue()

    def _load(self, data: bytes) -> None:
        r = Reader(data, "participant state")
        version = r.u8()
        if version != STATE_VERSION:
            raise ProtocolError(Rule.VERSION, f"participant state version {version}, expected {STATE_VERSION}")
        self.latest, self.masked_round = r.u64(), r.u64()
        self.model_uses = {r.fixed(DIGEST_BYTES): r.u32() for _ in range(r.count())}
        self.rounds = {}
        for _ in range(r.count()):
            st = RoundState.read(r)
            self.rounds[st.round] = st
        r.finish()

    # ------------------------------------------------------------------ dispatch
    def handle(
        self, msg: Message, x: np.ndarray | None = None, weight: int = 1, model_digest: bytes | None = None
    ) -> Message:
        """Answer one coordinator request (x, weight and the received model's digest only for a
        MaskRequest)."""
        if isinstance(msg, AdvertiseRequest):
            return self.advertise(msg)
        if isinstance(msg, BundleSet):
            return self.share(msg)
        if isinstance(msg, ShareDelivery):
            return self.receive(msg)
        if isinstance(msg, MaskRequest):
            if x is None or model_digest is None:
                raise ValueError("masking needs the local input vector and the received model's digest")
            return self.mask(msg, x, weight, model_digest)
        if isinstance(msg, SurvivorRequest):
            return self.sign_survivors(msg)
        if isinstance(msg, UnmaskRequest):
            return self.unmask(msg)
        raise ProtocolError(Rule.OUT_OF_ORDER, f"a participant does not accept {type(msg).__name__}")

    def _enter(self, msg: Message) -> RoundState:
        """Apply rules 1 and 3: the round must be live and in the phase this request needs."""
        st = self.rounds.get(msg.round)
        if st is None:
            if msg.round <= self.latest:
                raise ProtocolError(Rule.REPLAY, f"round {msg.round} is over or was never joined")
            raise ProtocolError(Rule.OUT_OF_ORDER, f"round {msg.round} was never advertised")
        if st.phase is Phase.ABORTED:
            raise ProtocolError(Rule.OUT_OF_ORDER, f"round {msg.round} was aborted by this member")
        stage = REQUEST_STAGE[type(msg)]
        if (st.phase, stage) not in TRANSITIONS:
            rule = Rule.REPLAY if stage.index < st.phase else Rule.OUT_OF_ORDER  # phase k answered stages < k
            err = ProtocolError(rule, f"{type(msg).__name__} in phase {st.phase.name}")
            if st.phase is not Phase.DONE:  # rule 7 (a finished round has no secrets left)
                st.phase = Phase.ABORTED
                st.wipe()
            raise err
        return st

    def _run(self, msg: Message, step, *args):
        st = self._enter(msg)
        try:
            reply = step(st, msg, *args)
        except ProtocolError:
            st.phase = Phase.ABORTED
            st.wipe()
            raise
        st.phase = TRANSITIONS[(st.phase, REQUEST_STAGE[type(msg)])]
        return reply

    # ------------------------------------------------------------------ stage 0
    def advertise(self, req: AdvertiseRequest) -> KeyBundle:
        if req.round <= self.latest:
            st = self.rounds.get(req.round)
            if st is not None and st.phase < Phase.DONE:  # rule 7: a live round fails closed
                st.phase = Phase.ABORTED
                st.wipe()
            raise ProtocolError(Rule.REPLAY, f"keys for round {req.round} were already advertised")
        enc = x25519_from_random(self._random)
        msk = x25519_from_random(self._random)
        unsigned = KeyBundle(req.round, self.member, x25519_public_bytes(enc), x25519_public_bytes(msk), bytes(64))
        sig = self._identity.sign(keys.bundle_transcript(self.context, unsigned))
        bundle = KeyBundle(unsigned.round, self.member, unsigned.encryption_key, unsigned.masking_key, sig)
        st = RoundState(req.round, Phase.ADVERTISED, x25519_private_bytes(enc), x25519_private_bytes(msk))
        st.bundle = bundle.encode()
        self.latest = req.round
        self.rounds[req.round] = st
        # Pipelining keeps one older round in progress at most; a newer round supersedes the rest.
        # (Round numbers need not be consecutive: a coordinator may skip numbers, never reuse them.)
        unfinished = sorted(r for r, old in self.rounds.items() if r != req.round and old.phase < Phase.DONE)
        for r in unfinished[:-1]:
            self.rounds[r].phase = Phase.ABORTED
            self.rounds[r].wipe()
        for old in sorted(self.rounds)[:-ROUND_WINDOW]:
            del self.rounds[old]
        return bundle

    # ------------------------------------------------------------------ stage 1
    def share(self, bundles: BundleSet) -> ShareBundle:
        return self._run(bundles, self._share)

    def _share(self, st: RoundState, bset: BundleSet) -> ShareBundle:
        ctx, p = self.context, self.params
        own = KeyBundle.decode(st.bundle)
        verified = verify_bundles(bset.bundles, bset.round, self.roster, ctx)
        mine = verified.get(self.member)
        if mine is None:
            raise ProtocolError(Rule.NOT_A_PARTICIPANT, "this member's bundle is not in the set")
        if mine != own:
            raise ProtocolError(Rule.OWN_BUNDLE_ALTERED, "the set carries altered keys for this member")
        n0 = len(verified)
        if n0 < self.min_cohort:
            raise ProtocolError(Rule.COHORT_TOO_SMALL, f"{n0} members, this member requires {self.min_cohort}")
        if n0 > p.max_members:
            raise ProtocolError(Rule.PARAMETERS, f"{n0} members exceed the plan's max_members")
        if n0 < p.consistency_threshold():
            raise ProtocolError(Rule.THRESHOLD, f"{n0} members, the plan needs {p.consistency_threshold()} to finish")
        threshold = p.shamir_threshold(n0 - 1)
        if threshold > n0 - 1:  # colluders could hold t shares: a cohort too small for the collusion bound
            raise ProtocolError(Rule.THRESHOLD, f"{n0 - 1} holders cannot carry a threshold of {threshold}")
        st.session = keys.session_id(ctx, st.round, verified.values())
        st.cohort = n0
        st.peers = {m: (b.encryption_key, b.masking_key) for m, b in verified.items()}
        st.neighbours = tuple(sorted(graph.neighbours_of(self.member, sorted(verified))))
        st.seed = self._random(shamir.SECRET_BYTES)
        seed_shares = shamir.split(st.seed, st.neighbours, threshold, self._random)
        key_shares = shamir.split(st.masking_sk, st.neighbours, threshold, self._random)
        enc_sk = x25519_from_bytes(st.encryption_sk)
        items = []
        for holder in st.neighbours:
            sv = shamir.encode_share(seed_shares[holder])
            kv = shamir.encode_share(key_shares[holder])
            plaintext = b"".join(
                (
                    sv,
                    self._sign_value(st, keys.SEED, holder, sv),
                    kv,
                    self._sign_value(st, keys.KEY, holder, kv),
                )
            )
            dh = x25519_exchange(enc_sk, st.peers[holder][0])
            k = keys.share_encryption_key(ctx, st.round, st.session, self.member, holder, dh)
            digest = keys.share_key_digest(ctx, st.round, st.session, self.member, holder, k)
            nonce = self._random(NONCE_BYTES)
            ad = keys.share_associated_data(ctx, st.round, st.session, self.member, holder)
            ct = aead_seal(k, nonce, plaintext, ad)
            item_sig = self._identity.sign(
                keys.share_item_transcript(ctx, st.round, st.session, self.member, holder, digest, nonce, ct)
            )
            items.append(EncryptedShare(self.member, holder, digest, nonce, ct, item_sig))
        commitment = keys.seed_commitment(ctx, st.round, st.session, self.member, st.seed)
        sig = self._identity.sign(
            keys.share_bundle_transcript(ctx, st.round, st.session, self.member, commitment, items)
        )
        return ShareBundle(st.round, self.member, st.session, commitment, tuple(items), sig)

    def _sign_value(self, st: RoundState, kind: str, holder: int, value: bytes) -> bytes:
        return self._identity.sign(
            keys.share_value_transcript(self.context, st.round, st.session, kind, self.member, holder, value)
        )

    # ------------------------------------------------------------------ stage 2
    def receive(self, delivery: ShareDelivery) -> ShareReceipt:
        return self._run(delivery, self._receive)

    def _receive(self, st: RoundState, dl: ShareDelivery) -> ShareReceipt:
        """Decrypt and verify the shares addressed to this member; complain about bad ones."""
        ctx = self.context
        self._check_session(st, dl.session)
        enc_sk = x25519_from_bytes(st.encryption_sk)
        nbrs = set(st.neighbours)
        complaints: list[Complaint] = []
        unusable: set[int] = set()
        for it in dl.shares:
            if it.holder != self.member or it.dealer not in nbrs or it.dealer in st.held:
                continue  # not ours, not a neighbour, or a duplicate: ignore
            if it.dealer in unusable or any(c.dealer == it.dealer for c in complaints):
                continue
            if not keys.item_signed_by_dealer(ctx, self.roster, st.round, st.session, it):
                continue  # not as the dealer sent it: never reveal a key for it (it opens the real one)
            dh = x25519_exchange(enc_sk, st.peers[it.dealer][0])
            k = keys.share_encryption_key(ctx, st.round, st.session, it.dealer, self.member, dh)
            ad = keys.share_associated_data(ctx, st.round, st.session, it.dealer, self.member)
            if it.key_digest != keys.share_key_digest(ctx, st.round, st.session, it.dealer, self.member, k):
                # the dealer signed a digest of another key: a complaint could not be judged (the
                # coordinator cannot tell who lies), so this dealer's shares are simply not held
                unusable.add(it.dealer)
                continue
            pt = aead_open(k, it.nonce, it.ciphertext, ad)
            held = parse_share_plaintext(pt) if pt is not None else None
            if held is None or not self._dealer_signed(st, it.dealer, held):
                complaints.append(Complaint(it.dealer, k))
                continue
            st.held[it.dealer] = held
        st.encryption_sk = b""  # every share this round will bring has arrived: wipe
        return ShareReceipt(st.round, self.member, st.session, tuple(complaints), tuple(sorted(st.held)))

    def _dealer_signed(self, st: RoundState, dealer: int, h: HeldShare) -> bool:
        return shares_signed_by_dealer(self.context, self.roster, st.round, st.session, dealer, self.member, h)

    # ------------------------------------------------------------------ stage 3
    def mask(self, request: MaskRequest, x: np.ndarray, weight: int, model_digest: bytes) -> MaskedInput:
        """Mask `x`, trained on the model whose digest is `model_digest` (computed by the caller
        from the model it received, never taken from the request)."""
        return self._run(request, self._mask, x, weight, model_digest)

    def check_contribution(self, training_round: int, model_digest: bytes) -> None:
        """Rule 6, before any training: refuse a training round already masked for, or a model
        used up. Two sums over the same training round and model, with cohorts differing by one
        member, would hand the coordinator that member's update."""
        if training_round <= self.masked_round:
            raise ProtocolError(
                Rule.REPEAT_CONTRIBUTION,
                f"training round {training_round}: this member already masked an input for round {self.masked_round}",
            )
        uses = self.model_uses.get(model_digest, 0)
        if uses >= self.max_model_uses:
            limit = self.max_model_uses
            raise ProtocolError(Rule.REPEAT_CONTRIBUTION, f"model trained on {uses} times already (limit {limit})")

    def _mask(
        self, st: RoundState, req: MaskRequest, x: np.ndarray, weight: int, model_digest: bytes
    ) -> MaskedInput:
        ctx = self.context
        self._check_session(st, req.session)
        shared = _sorted_unique(req.shared, "the shared set")
        if not set(shared) <= set(st.peers):
            raise ProtocolError(Rule.SET_NOT_SUBSET, "the shared set names members outside the cohort")
        if self.member not in shared:
            raise ProtocolError(Rule.NOT_A_PARTICIPANT, "the coordinator says this member did not share")
        if len(shared) < self.min_cohort:
            raise ProtocolError(Rule.COHORT_TOO_SMALL, f"{len(shared)} members shared, {self.min_cohort} required")
        need = self.params.consistency_threshold()
        if len(shared) < need:
            raise ProtocolError(Rule.THRESHOLD, f"{len(shared)} members to mask with, {need} needed")
        if req.model_digest != model_digest:
            raise ProtocolError(Rule.MODEL_MISMATCH, "the request names another model than the one received")
        self.check_contribution(req.training_round, model_digest)
        fraction = None
        if req.weights:
            table = self._weight_table(req)
            if table[self.member] != weight:
                raise ProtocolError(Rule.INPUT_WEIGHT, f"assigned weight {table[self.member]}, given {weight}")
            st.weights = tuple(table[m] for m in shared)
            fraction = weight / sum(st.weights)
        quantized = quantize(x, weight, self.params, self._random, fraction)  # input rules checked here
        # from here on the input may end up in a sum: count the contribution before it leaves
        self.masked_round = req.training_round
        self.model_uses[model_digest] = self.model_uses.get(model_digest, 0) + 1
        st.training_round, st.model_digest = req.training_round, model_digest
        st.shared = shared
        live = set(shared)
        mask_sk = x25519_from_bytes(st.masking_sk)
        plus = [keys.self_mask_key(ctx, st.round, st.session, self.member, st.seed)]
        minus = []
        for j in st.neighbours:
            if j in live:
                dh = x25519_exchange(mask_sk, st.peers[j][1])
                k = keys.pair_mask_key(ctx, st.round, st.session, self.member, j, dh)
                (plus if self.member < j else minus).append(k)
        vector = quantized.vector
        apply_masks(vector, plus, minus)
        st.seed = st.masking_sk = b""  # no longer needed: wipe now
        st.peers = {}
        self.clipped = quantized.clipped
        statement = keys.mask_attestation_transcript(
            ctx, st.round, st.session, self.member, shared, st.weights, st.training_round, model_digest, self.min_cohort
        )
        attestation = MaskAttestation(self.member, self.min_cohort, self._identity.sign(statement))
        return MaskedInput(st.round, self.member, st.session, vector, attestation)

    def _weight_table(self, req: MaskRequest) -> dict[int, int]:
        """Public weights: one per member of C1, each in 1..max_weight. (Exclusion is by leaving
        C1, never by a zero weight: a zero would shrink the real cohort behind members' backs.)"""
        if len(req.weights) != len(req.shared):
            raise ProtocolError(Rule.WEIGHTS, "the weight table does not match the shared set")
        table = dict(zip(req.shared, req.weights, strict=True))
        if any(not 1 <= w <= self.params.max_weight for w in table.values()):
            raise ProtocolError(Rule.WEIGHTS, f"public weights must be in 1..{self.params.max_weight}")
        return table

    def _check_capture(self, st: RoundState, survivors: tuple[int, ...]) -> None:
        """Anti-capture: with public weights, no survivor may dominate the sum (a sum where one
        weight dwarfs the others is that member's update)."""
        table = dict(zip(st.shared, st.weights, strict=True))
        total = sum(table[m] for m in survivors)
        top = max(survivors, key=lambda m: table[m])
        if table[top] > self.params.max_share * total:
            raise ProtocolError(
                Rule.WEIGHT_CAPTURE,
                f"member {top} would carry {table[top] / total:.0%} of the sum (plan cap {self.params.max_share:.0%})",
            )

    # ------------------------------------------------------------------ stage 4
    def sign_survivors(self, req: SurvivorRequest) -> SurvivorSignature:
        return self._run(req, self._sign_survivors)

    def _sign_survivors(self, st: RoundState, req: SurvivorRequest) -> SurvivorSignature:
        self._check_session(st, req.session)
        if _sorted_unique(req.shared, "the shared set") != st.shared:
            raise ProtocolError(Rule.INCONSISTENT_SURVIVORS, "the shared set changed after masking")
        survivors = _sorted_unique(req.survivors, "the survivor set")
        if not set(survivors) <= set(st.shared):
            raise ProtocolError(Rule.SET_NOT_SUBSET, "survivors must be members who shared")
        if self.member not in survivors:
            raise ProtocolError(Rule.NOT_A_PARTICIPANT, "this member is not listed as a survivor")
        self._check_survivor_count(st, survivors)
        st.survivors = survivors
        if st.weights:
            self._check_capture(st, survivors)
        statement = self._survivors_statement(st, survivors)
        sig = self._identity.sign(statement)
        return SurvivorSignature(st.round, self.member, st.session, sig)

    def _survivors_statement(self, st: RoundState, survivors: tuple[int, ...]) -> bytes:
        return keys.survivors_transcript(
            self.context, st.round, st.session, st.shared, survivors, st.weights, st.training_round, st.model_digest
        )

    def _check_survivor_count(self, st: RoundState, survivors: tuple[int, ...]) -> None:
        if len(survivors) < self.min_cohort:
            raise ProtocolError(Rule.COHORT_TOO_SMALL, f"{len(survivors)} survivors, {self.min_cohort} required")
        need = self.params.consistency_threshold()
        if len(survivors) < need:
            raise ProtocolError(Rule.THRESHOLD, f"{len(survivors)} survivors, {need} needed")

    # ------------------------------------------------------------------ stage 5
    def unmask(self, req: UnmaskRequest) -> UnmaskResponse:
        st = self.rounds.get(req.round)
        released_twice = st is not None and (
            set(req.survivors) & set(st.released_key) or set(req.dropped) & set(st.released_seed)
        )
        if st is not None and st.phase is Phase.DONE and released_twice:
            raise ProtocolError(Rule.BOTH_SHARES, "both shares of one peer were requested")
        return self._run(req, self._unmask)

    def _unmask(self, st: RoundState, req: UnmaskRequest) -> UnmaskResponse:
        self._check_session(st, req.session)
        overlap = set(req.survivors) & set(req.dropped)
        if overlap:
            raise ProtocolError(
                Rule.SURVIVOR_DROPPED_OVERLAP,
                f"members {sorted(overlap)} listed as survivor and dropped",
                culprits=(),
            )
        if _sorted_unique(req.survivors, "the survivor set") != st.survivors:
            raise ProtocolError(Rule.INCONSISTENT_SURVIVORS, "survivor set differs from the one signed")
        dropped = _sorted_unique(req.dropped, "the dropped set")
        if not set(dropped) <= set(st.shared) - set(st.survivors):
            raise ProtocolError(Rule.SET_NOT_SUBSET, "dropped members must have shared and not survived")
        statement = self._survivors_statement(st, st.survivors)
        survivors = set(st.survivors)
        signers = {
            s.member
            for s in req.signatures
            if s.member in survivors
            and s.round == st.round
            and s.session == st.session
            and self.roster.verify(s.member, s.signature, statement)
        }
        need = self.params.consistency_threshold()
        if len(signers) < need:
            raise ProtocolError(
                Rule.INCONSISTENT_SURVIVORS, f"{len(signers)} valid signatures on this survivor set, {need} needed"
            )
        self._check_attestations(st, req)
        nbrs = set(st.neighbours)
        seed_out = [
            _reveal(j, st.held[j].seed, st.held[j].seed_sig) for j in st.survivors if j in nbrs and j in st.held
        ]
        key_out = [_reveal(j, st.held[j].key, st.held[j].key_sig) for j in dropped if j in nbrs and j in st.held]
        st.released_seed = tuple(s.dealer for s in seed_out)
        st.released_key = tuple(s.dealer for s in key_out)
        st.wipe()
        return UnmaskResponse(st.round, self.member, st.session, tuple(seed_out), tuple(key_out))

    def _check_attestations(self, st: RoundState, req: UnmaskRequest) -> None:
        """Rule 7: every survivor attested, when it masked, to this C1, these weights, this training
        round and model, and accepts a sum of this many members. Without it, a survivor shown its
        own C1 (say, itself and two colluders) would have its seed released on others' word."""
        by_member: dict[int, MaskAttestation] = {}
        for a in req.attestations:
            if a.member in by_member:
                raise ProtocolError(Rule.ATTESTATION, f"two attestations for member {a.member}")
            by_member[a.member] = a
        for j in st.survivors:
            a = by_member.get(j)
            if a is None:
                raise ProtocolError(Rule.ATTESTATION, f"survivor {j} has no mask attestation")
            statement = keys.mask_attestation_transcript(
                self.context, st.round, st.session, j, st.shared, st.weights, st.training_round, st.model_digest,
                a.min_cohort,
            )
            if not self.roster.verify(j, a.signature, statement):
                raise ProtocolError(Rule.ATTESTATION, f"survivor {j} did not mask under this view of the round")
            if len(st.survivors) < a.min_cohort:
                count = len(st.survivors)
                raise ProtocolError(Rule.COHORT_TOO_SMALL, f"survivor {j} accepts sums of {a.min_cohort}+, not {count}")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_session(st: RoundState, session: bytes) -> None:
        if session != st.session:
            raise ProtocolError(Rule.WRONG_SESSION, "request belongs to another session of this round")


def _reveal(dealer: int, value: bytes, sig: bytes) -> RevealedShare:
    return RevealedShare(dealer, value, sig)


def parse_share_plaintext(pt: bytes) -> HeldShare | None:
    e, s = shamir.ELEMENT_BYTES, 64
    if len(pt) != 2 * (e + s):
        return None
    held = HeldShare(pt[:e], pt[e : e + s], pt[e + s : 2 * e + s], pt[2 * e + s :])
    if max(int.from_bytes(v, "little") for v in (held.seed, held.key)) >= shamir.PRIME:
        return None  # not field elements: a bad share now, not a rejected unmask response later
    return held


def shares_signed_by_dealer(
    ctx: SessionContext, roster: Roster, round_: int, session: bytes, dealer: int, holder: int, h: HeldShare
) -> bool:
    """Both share values carry the dealer's signature for this holder (checked by both roles)."""

    def ok(kind: str, value: bytes, sig: bytes) -> bool:
        msg = keys.share_value_transcript(ctx, round_, session, kind, dealer, holder, value)
        return roster.verify(dealer, sig, msg)

    return ok(keys.SEED, h.seed, h.seed_sig) and ok(keys.KEY, h.key, h.key_sig)

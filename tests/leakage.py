"""A leakage oracle for secure-aggregation runs, and a malicious coordinator to feed it.

THE ORACLE (`Knowledge`, `Knowledge.verdict`). After any run, it is told everything a coordinator
and a declared set of colluding members hold: the colluders' own round secrets and the shares
dealt to them, every share any honest member released, every masked input received (with the view
it was masked under: session, partners, training round, model), and any unmasked sums. It decides,
per honest member, whether that member's input is ISOLATED:

(a) per round: the adversary can rebuild the member's self-mask seed b_j (colluder-held plus
    released seed shares >= t, or j colludes) and strip every pairwise mask j actually added (for
    each partner k: s_j or s_k rebuildable, or k colludes), so j's masked input unmasks alone;
(b) in general (which contains (a)): every masked input is a row over unknowns: the inputs (one
    unknown per member, training round and model, or per member with `link_all_rounds`), each
    self mask not rebuildable and each pairwise mask nobody can compute (+ for the smaller id, -
    for the larger, one unknown per round, session and pair). Colluders' inputs are known rows,
    unmasked sums are rows with no masks. A member is isolated iff its input's unit vector lies
    in the row span (exact Gaussian elimination over the rationals): some combination of what the
    adversary holds cancels every unknown mask and every other input.
Masks are uniform over the ring, so a combination that leaves any unknown mask in reveals nothing;
rational rank is the standard model for that (quantization noise is ignored: worst case).

THE HARNESS (`Attack`): a coordinator written from scratch (not `CoordinatorRound`, which an
adversary need not run) that drives the real `Participant` objects of a `LocalFederation` stage
by stage, with any per-member request it likes, signs as its colluders, and records what it gets
into a `Knowledge`. `Attack.recover(j)` runs the real reconstruction (Shamir, key agreement, mask
expansion) from that knowledge and returns j's input when the oracle says it can.

API-dependent calls are the module-level functions under "compat", so one test file can be
replayed against an older protocol by rebinding them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from protocol import keys, shamir
from protocol.crypto import x25519_exchange, x25519_from_bytes
from protocol.errors import ProtocolError
from protocol.local import LocalFederation
from protocol.masking import apply_masks
from protocol.messages import (
    AdvertiseRequest,
    BundleSet,
    KeyBundle,
    MaskedInput,
    MaskRequest,
    ShareBundle,
    ShareDelivery,
    ShareReceipt,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from protocol.participant import Participant

# ============================================================================= the oracle
Col = tuple  # an unknown: ("x", input id) | ("b", round, member) | ("p", round, session, lo, hi)


@dataclass(frozen=True)
class MaskedView:
    """One masked input the adversary received, and what its member masked it under."""

    session: bytes
    partners: frozenset[int]  # members it added pairwise masks with
    training_round: int
    model: bytes


@dataclass
class Verdict:
    isolated: dict[int, str]  # honest member -> why its input is isolated
    per_round: set[tuple[int, int]]  # (round, member): rule (a), the masked input unmasks alone
    honest: frozenset[int]

    @property
    def nothing_isolated(self) -> bool:
        return not self.isolated and not self.per_round


@dataclass
class Knowledge:
    """Everything a coordinator and its colluders hold after one or more rounds."""

    colluders: frozenset[int] = frozenset()
    masked: dict[tuple[int, int], MaskedView] = field(default_factory=dict)  # (round, member)
    thresholds: dict[tuple[int, int], int] = field(default_factory=dict)  # (round, dealer) -> t
    seed_shares: dict[tuple[int, int], dict[int, int | None]] = field(default_factory=dict)  # -> holder -> y
    key_shares: dict[tuple[int, int], dict[int, int | None]] = field(default_factory=dict)
    secrets: dict[tuple[int, int], tuple[bytes, bytes]] = field(default_factory=dict)  # colluders': (seed, s_sk)
    sums: list[dict[tuple[int, int, bytes], Fraction]] = field(default_factory=list)
    members: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.colluders = frozenset(self.colluders)

    # -- what the adversary learns ------------------------------------------------------------
    def dealt(self, round_: int, dealer: int, threshold: int) -> None:
        self.thresholds[(round_, dealer)] = threshold
        self.members.add(dealer)

    def masked_input(
        self, round_: int, member: int, session: bytes, partners: Iterable[int], training_round: int, model: bytes
    ) -> None:
        self.masked[(round_, member)] = MaskedView(session, frozenset(partners) - {member}, training_round, model)
        self.members.add(member)

    def share(self, round_: int, kind: str, dealer: int, holder: int, value: int | None = None) -> None:
        """One share of `dealer`'s seed (kind keys.SEED) or masking key (keys.KEY) held by `holder`."""
        book = self.seed_shares if kind == keys.SEED else self.key_shares
        book.setdefault((round_, dealer), {})[holder] = value

    def released(self, round_: int, resp: UnmaskResponse) -> None:
        for s in resp.seed_shares:
            self.share(round_, keys.SEED, s.dealer, resp.member, shamir.decode_share(s.value))
        for s in resp.key_shares:
            self.share(round_, keys.KEY, s.dealer, resp.member, shamir.decode_share(s.value))

    def unmasked_sum(self, coefficients: Mapping[int, int | Fraction], training_round: int, model: bytes) -> None:
        """A sum the adversary holds in the clear: sum of c_m * input of m for (training round, model)."""
        self.sums.append({(m, training_round, model): Fraction(c) for m, c in coefficients.items()})
        self.members.update(coefficients)

    # -- what it can rebuild --------------------------------------------------------------------
    def _rebuildable(self, book: dict, round_: int, member: int) -> bool:
        if member in self.colluders:
            return True
        t = self.thresholds.get((round_, member))
        return t is not None and len(book.get((round_, member), {})) >= t

    def seed_known(self, round_: int, member: int) -> bool:
        return self._rebuildable(self.seed_shares, round_, member)

    def key_known(self, round_: int, member: int) -> bool:
        return self._rebuildable(self.key_shares, round_, member)

    # -- the decision ---------------------------------------------------------------------------
    def _input(self, member: int, training_round: int, model: bytes, link_all: bool) -> Hashable:
        return ("x", member) if link_all else ("x", member, training_round, model)

    def rows(self, link_all_rounds: bool = False) -> list[dict[Col, Fraction]]:
        rows: list[dict[Col, Fraction]] = []
        inputs: set[Hashable] = set()
        for (r, j), v in sorted(self.masked.items(), key=lambda kv: kv[0]):
            x = self._input(j, v.training_round, v.model, link_all_rounds)
            inputs.add(x)
            row: dict[Col, Fraction] = {x: Fraction(1)}
            if not self.seed_known(r, j):
                row[("b", r, j)] = Fraction(1)
            for k in v.partners:
                if self.key_known(r, j) or self.key_known(r, k):
                    continue  # the adversary computes this pairwise mask and subtracts it
                lo, hi = min(j, k), max(j, k)
                row[("p", r, v.session, lo, hi)] = Fraction(1 if j < k else -1)
            rows.append(row)
        for s in self.sums:
            row = {}
            for (m, tr, model), c in s.items():
                x = self._input(m, tr, model, link_all_rounds)
                inputs.add(x)
                row[x] = row.get(x, Fraction(0)) + c
            rows.append({k: c for k, c in row.items() if c})
        for x in inputs:  # colluders' own inputs are known
            if x[1] in self.colluders:
                rows.append({x: Fraction(1)})
        return rows

    def verdict(self, link_all_rounds: bool = False) -> Verdict:
        honest = frozenset(self.members - self.colluders)
        per_round = set()
        for (r, j), v in self.masked.items():
            if j in honest and self.seed_known(r, j) and all(
                self.key_known(r, j) or self.key_known(r, k) for k in v.partners
            ):
                per_round.add((r, j))
        basis = Span()
        rows = self.rows(link_all_rounds)
        for row in rows:
            basis.add(row)
        isolated: dict[int, str] = {}
        for x in sorted({c for row in rows for c in row if c[0] == "x"}, key=repr):
            if x[1] in honest and basis.contains({x: Fraction(1)}):
                isolated.setdefault(x[1], f"input {x[1:]} is a combination of what the adversary holds")
        for r, j in sorted(per_round):
            isolated.setdefault(j, f"round {r}: its masked input unmasks alone")
        return Verdict(isolated, per_round, honest)


class Span:
    """An echelon basis over the rationals, rows as sparse dicts (incremental, insertion order)."""

    def __init__(self) -> None:
        self.basis: list[tuple[Col, dict[Col, Fraction]]] = []

    def _reduce(self, row: Mapping[Col, Fraction]) -> dict[Col, Fraction]:
        v = {k: Fraction(c) for k, c in row.items() if c}
        for pivot, b in self.basis:  # each basis row is zero on the pivots before its own
            c = v.get(pivot)
            if c:
                for k, bc in b.items():
                    nv = v.get(k, Fraction(0)) - c * bc
                    if nv:
                        v[k] = nv
                    else:
                        v.pop(k, None)
        return v

    def add(self, row: Mapping[Col, Fraction]) -> bool:
        v = self._reduce(row)
        if not v:
            return False
        pivot = min(v, key=repr)
        c = v[pivot]
        self.basis.append((pivot, {k: x / c for k, x in v.items()}))
        return True

    def contains(self, row: Mapping[Col, Fraction]) -> bool:
        return not self._reduce(row)


# ============================================================================= compat
# Everything below that depends on the protocol's API goes through these (rebind to replay a test
# against another version of protocol/).
def model_digest(training_round: int, tag: bytes = b"") -> bytes:
    return hashlib.sha256(b"leakage-test-model" + tag + training_round.to_bytes(8, "little")).digest()


def make_mask_request(
    r: int, session: bytes, shared: Iterable[int], weights: Iterable[int], training_round: int, digest: bytes
) -> MaskRequest:
    return MaskRequest(r, session, tuple(shared), tuple(weights), training_round, digest)


def do_mask(p: Participant, req: MaskRequest, x: np.ndarray, weight: int, digest: bytes) -> MaskedInput:
    return p.mask(req, x, weight, digest)


def survivors_statement(ctx, r, session, shared, survivors, weights, training_round, digest) -> bytes:
    return keys.survivors_transcript(ctx, r, session, tuple(shared), tuple(survivors), tuple(weights), training_round,
                                     digest)


def make_unmask_request(r, session, survivors, dropped, signatures, attestations) -> UnmaskRequest:
    return UnmaskRequest(r, session, tuple(survivors), tuple(dropped), tuple(signatures), tuple(attestations))


def attestation_of(mi: MaskedInput):
    return mi.attestation


def coordinator_mask_request(coord, weights, training_round: int, digest: bytes) -> MaskRequest:
    return coord.mask_request(weights=weights, training_round=training_round, model_digest=digest)


# ============================================================================= the harness
LEVEL16 = (1 << 15) - 1


def exact_input(member: int, training_round: int, d: int, level: int = LEVEL16) -> np.ndarray:
    """A member's update for a training round: integers (exact under clip = L), the same every time
    the member trains for that round (a deterministic trainer on the same model)."""
    rng = np.random.default_rng([member, training_round])
    return rng.integers(-level, level + 1, d).astype(np.float64)


class Attack:
    """A malicious coordinator (with `colluders`, whose keys and round state it holds) driving the
    real participants of `fed` through one round. Every refusal is recorded, never raised."""

    def __init__(
        self,
        fed: LocalFederation,
        colluders: Iterable[int] = (),
        *,
        round_: int | None = None,
        knowledge: Knowledge | None = None,
        participants: Mapping[int, Participant] | None = None,
        inputs: Callable[[int, int], np.ndarray] | None = None,
    ) -> None:
        self.fed, self.params, self.ctx = fed, fed.params, fed.context
        self.parts = dict(fed.participants if participants is None else participants)
        self.r = max(p.latest for p in self.parts.values()) + 1 if round_ is None else round_
        self.colluders = frozenset(colluders)
        self.know = knowledge if knowledge is not None else Knowledge(self.colluders)
        d, level = self.params.vector_length, self.params.level
        self.inputs = inputs or (lambda m, tr: exact_input(m, tr, d, level))
        self.refusals: dict[tuple[str, int], ProtocolError] = {}
        self.bundles: dict[int, KeyBundle] = {}
        self.share_bundles: dict[int, ShareBundle] = {}
        self.sessions: dict[int, bytes] = {}
        self.receipts: dict[int, ShareReceipt] = {}
        self.mreqs: dict[int, MaskRequest] = {}
        self.masked: dict[int, MaskedInput] = {}
        self.signatures: dict[int, SurvivorSignature] = {}
        self.responses: dict[int, UnmaskResponse] = {}

    def ask(self, stage: str, m: int, call: Callable[[], object]):
        try:
            return call()
        except ProtocolError as err:
            self.refusals[(stage, m)] = err
            return None

    def refused(self, stage: str) -> dict[int, ProtocolError]:
        return {m: e for (s, m), e in self.refusals.items() if s == stage}

    # -- stages ---------------------------------------------------------------------------------
    def advertise(self, members: Iterable[int] | None = None) -> BundleSet:
        """Keys from `members`; the bundle set holds them all (an adversary may leave any out)."""
        req = AdvertiseRequest(self.r)
        for m in sorted(self.parts) if members is None else members:
            b = self.ask("advertise", m, lambda m=m: self.parts[m].advertise(req))
            if b is not None:
                self.bundles[m] = b
        self.bset = BundleSet(self.r, tuple(self.bundles[m] for m in sorted(self.bundles)))
        self.session = keys.session_id(self.ctx, self.r, self.bset.bundles)
        return self.bset

    def share(self, members: Iterable[int] | None = None) -> None:
        for m in sorted(self.bundles) if members is None else members:
            sb = self.ask("share", m, lambda m=m: self.parts[m].share(self.bset))
            if sb is not None:
                self.share_bundles[m] = sb
                st = self.parts[m].rounds[self.r]
                self.sessions[m] = st.session
                self.know.dealt(self.r, m, self.params.shamir_threshold(len(st.neighbours)))

    def deliveries(self) -> dict[int, ShareDelivery]:
        inbox: dict[int, list] = {m: [] for m in self.share_bundles}
        for sb in self.share_bundles.values():
            for it in sb.shares:
                if it.holder in inbox:
                    inbox[it.holder].append(it)
        return {m: ShareDelivery(self.r, self.session, tuple(items)) for m, items in inbox.items()}

    def receive(
        self, members: Iterable[int] | None = None, edit: Callable[[int, ShareDelivery], ShareDelivery] | None = None
    ) -> None:
        """Deliver shares; the colluders' loot (shares dealt to them, their own secrets) is recorded."""
        dl = self.deliveries()
        for m in sorted(dl) if members is None else members:
            delivery = edit(m, dl[m]) if edit else dl[m]
            st = self.parts[m].rounds[self.r]
            if m in self.colluders:
                self.know.secrets[(self.r, m)] = (st.seed, st.masking_sk)
            rc = self.ask("receive", m, lambda m=m, delivery=delivery: self.parts[m].receive(delivery))
            if rc is not None:
                self.receipts[m] = rc
            if m in self.colluders:
                for dealer, h in st.held.items():
                    self.know.share(self.r, keys.SEED, dealer, m, shamir.decode_share(h.seed))
                    self.know.share(self.r, keys.KEY, dealer, m, shamir.decode_share(h.key))

    def request(
        self, shared: Iterable[int], weights: Iterable[int] = (), training_round: int | None = None,
        digest: bytes | None = None,
    ) -> MaskRequest:
        tr = self.r if training_round is None else training_round
        return make_mask_request(self.r, self.session, sorted(shared), weights, tr,
                                 model_digest(tr) if digest is None else digest)

    def mask(
        self,
        views: Mapping[int, MaskRequest] | MaskRequest | None = None,
        *,
        weights: Mapping[int, int] | None = None,
        received: Mapping[int, bytes] | None = None,
    ) -> None:
        """Each member masks under its view (one request for all, or one per member); `received`:
        the digest of the model each member really received (default: the one its request names)."""
        if views is None:
            views = self.request(sorted(self.receipts))
        if isinstance(views, MaskRequest):
            views = {m: views for m in views.shared}
        for m, req in sorted(views.items()):
            self.mreqs[m] = req
            x = self.inputs(m, req.training_round)
            w = (weights or {}).get(m, 1)
            got = (received or {}).get(m, req.model_digest)
            mi = self.ask("mask", m, lambda m=m, req=req, x=x, w=w, got=got: do_mask(self.parts[m], req, x, w, got))
            if mi is not None:
                self.masked[m] = mi
                st = self.parts[m].rounds[self.r]
                self.know.masked_input(self.r, m, st.session, st.shared, req.training_round, req.model_digest)

    def sign_as(self, m: int, req: SurvivorRequest, view: MaskRequest) -> SurvivorSignature:
        """A colluder's signature on any survivor set (the coordinator holds its identity key)."""
        statement = survivors_statement(
            self.ctx, self.r, self.session, req.shared, req.survivors, view.weights, view.training_round,
            view.model_digest,
        )
        return SurvivorSignature(self.r, m, self.session, self.fed.identities[m].sign(statement))

    def sign(self, requests: Mapping[int, SurvivorRequest] | SurvivorRequest) -> None:
        if isinstance(requests, SurvivorRequest):
            requests = {m: requests for m in requests.survivors}
        for m, req in sorted(requests.items()):
            sig = self.ask("sign", m, lambda m=m, req=req: self.parts[m].sign_survivors(req))
            if sig is not None:
                self.signatures[m] = sig

    def unmask_request(
        self, survivors: Iterable[int], dropped: Iterable[int] = (), signers: Iterable[int] | None = None
    ) -> UnmaskRequest:
        """Survivors, dropped, every signature it has (or those of `signers`), every attestation."""
        survivors = tuple(sorted(survivors))
        sigs = [s for m, s in sorted(self.signatures.items()) if signers is None or m in set(signers)]
        atts = [attestation_of(self.masked[m]) for m in survivors if m in self.masked]
        return make_unmask_request(self.r, self.session, survivors, sorted(dropped), sigs,
                                   [a for a in atts if a is not None])

    def unmask(self, requests: Mapping[int, UnmaskRequest] | UnmaskRequest, members: Iterable[int] | None = None):
        if isinstance(requests, UnmaskRequest):
            who = requests.survivors if members is None else members
            requests = {m: requests for m in who}
        for m, req in sorted(requests.items()):
            resp = self.ask("unmask", m, lambda m=m, req=req: self.parts[m].unmask(req))
            if resp is not None:
                self.responses[m] = resp
                self.know.released(self.r, resp)

    def run_honest_views(self, members: Iterable[int] | None = None) -> None:
        """advertise .. mask, every member shown the same view (the usual start of an attack)."""
        self.advertise(members)
        self.share()
        self.receive()
        self.mask()

    # -- what the adversary makes of it ----------------------------------------------------------
    def released_dealers(self, kind: str) -> set[int]:
        out = set()
        for resp in self.responses.values():
            out.update(s.dealer for s in (resp.seed_shares if kind == keys.SEED else resp.key_shares))
        return out

    def _secret(self, kind: str, j: int) -> bytes | None:
        if (self.r, j) in self.know.secrets:
            seed, sk = self.know.secrets[(self.r, j)]
            return seed if kind == keys.SEED else sk
        book = self.know.seed_shares if kind == keys.SEED else self.know.key_shares
        shares = {h: y for h, y in book.get((self.r, j), {}).items() if y is not None}
        t = self.know.thresholds.get((self.r, j))
        if t is None or len(shares) < t:
            return None
        return shamir.reconstruct(dict(sorted(shares.items())[:t]), t)

    def recover(self, j: int) -> np.ndarray | None:
        """The adversary's real attack on j's masked input: rebuild b_j, every pairwise key j used,
        strip them all. j's quantized input vector (weight slot dropped), or None if it cannot."""
        if j not in self.masked:
            return None
        seed = self._secret(keys.SEED, j)
        if seed is None:
            return None
        ctx, r, sess = self.ctx, self.r, self.sessions[j]
        y = np.array(self.masked[j].vector, dtype=self.params.dtype)
        plus, minus = [], [keys.self_mask_key(ctx, r, sess, j, seed)]
        for k in sorted(set(self.mreqs[j].shared) - {j}):
            sk_j, sk_k = self._secret(keys.KEY, j), self._secret(keys.KEY, k)
            if sk_j is not None:
                dh = x25519_exchange(x25519_from_bytes(sk_j), self.bundles[k].masking_key)
            elif sk_k is not None:
                dh = x25519_exchange(x25519_from_bytes(sk_k), self.bundles[j].masking_key)
            else:
                return None
            (minus if j < k else plus).append(keys.pair_mask_key(ctx, r, sess, j, k, dh))
        apply_masks(y, plus, minus)
        signed = y[:-1].view(np.int32 if self.params.ring_bits == 32 else np.int64)
        return signed.astype(np.float64)

    def aggregate(self, survivors: Iterable[int]) -> np.ndarray | None:
        """What the adversary unmasks for a survivor set: sum of their masked inputs minus every self
        mask and every pairwise mask with a partner outside the set (None if some mask is unknown)."""
        survivors = sorted(survivors)
        if any(j not in self.masked for j in survivors):
            return None
        ctx, r = self.ctx, self.r
        acc = np.zeros(self.params.masked_length, dtype=self.params.dtype)
        plus, minus = [], []
        for j in survivors:
            np.add(acc, self.masked[j].vector, out=acc)
            seed = self._secret(keys.SEED, j)
            if seed is None:
                return None
            sess = self.sessions[j]
            minus.append(keys.self_mask_key(ctx, r, sess, j, seed))
            for k in sorted(set(self.mreqs[j].shared) - set(survivors)):
                sk_j, sk_k = self._secret(keys.KEY, j), self._secret(keys.KEY, k)
                if sk_j is not None:
                    dh = x25519_exchange(x25519_from_bytes(sk_j), self.bundles[k].masking_key)
                elif sk_k is not None:
                    dh = x25519_exchange(x25519_from_bytes(sk_k), self.bundles[j].masking_key)
                else:
                    return None
                (minus if j < k else plus).append(keys.pair_mask_key(ctx, r, sess, j, k, dh))
        apply_masks(acc, plus, minus)
        return acc

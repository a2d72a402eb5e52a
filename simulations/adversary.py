"""A misbehaving coordinator (or, for `garbage-shares`, participant) played through the real run.

The adversary sits at the adapter boundary (`RunHooks`): in its attack round only, it rewrites
protocol messages the real coordinator sends (`tamper`), sees every message that comes back
(`observe`) and sends requests of its own (`inject`). It holds the roster's PUBLIC keys and keys
it made itself, never an honest member's identity key: it is the coordinator, nothing more.

After the attack it tries what the attack was for. From every share it got (each checked against
its dealer's signature, as the honest coordinator checks them) it reconstructs the target's
self-mask seed and masking key, strips the target's masked input, and compares the result with
the target's true update, which only the harness knows (the file the simulated participant
writes for verification). `succeeded` means the target's update came out, to within two
quantization steps per coordinate.

Kinds (simulations.scenario.ADVERSARIES), all acting in round R on member T (the target):
    substitute-keys         the BundleSet carries keys of the adversary's for T (T's signature kept)
    fake-member             the BundleSet carries a bundle of member n+1, signed by the adversary
    overlap                 the UnmaskRequest lists T as survivor AND dropped
    double-request          after the honest unmask, a second request moves T to the dropped
    inconsistent-survivors  half the survivors are told C2, the rest C2 - T; each half is then
                            sent an UnmaskRequest proven by its own half's signatures
    replay                  round R-1's UnmaskRequest stands in for round R's
    garbage-shares          the coordinator is honest; T deals garbage shares under valid
                            signatures (a simulated participant told so by `sim-garbage-dealer`).
                            Succeeded = the round did not end with the exact sum of the others.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedloom.records import SIM_GARBAGE_DEALER, training_round
from protocol import graph, keys, shamir
from protocol.crypto import (
    SessionContext,
    x25519_exchange,
    x25519_from_bytes,
    x25519_from_random,
    x25519_public_bytes,
)
from protocol.errors import ProtocolError
from protocol.masking import apply_masks
from protocol.messages import (
    BundleSet,
    KeyBundle,
    MaskAttestation,
    MaskedInput,
    MaskRequest,
    Message,
    Refusal,
    RevealedShare,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from protocol.params import ProtocolParams
from protocol.quantize import dequantize
from protocol.roster import Roster
from protocol.stages import Stage

Shares = dict[int, int]  # holder -> share value


# ============================================================================ what it can compute
@dataclass(frozen=True)
class RoundView:
    """The public record of one round as a coordinator holds it: enough to try unmasking a member."""

    context: SessionContext
    params: ProtocolParams
    round: int
    bundles: Mapping[int, KeyBundle]  # the honest BundleSet's bundles, by member
    shared: tuple[int, ...]  # C1, as sent in the MaskRequest

    @cached_property
    def session(self) -> bytes:
        return keys.session_id(self.context, self.round, self.bundles.values())

    @cached_property
    def neighbours(self) -> dict[int, frozenset[int]]:
        return graph.neighbours(sorted(self.bundles))

    @property
    def threshold(self) -> int:
        """Shares of one dealer that reconstruct its secrets (every member has `degree` holders)."""
        return self.params.shamir_threshold(self.params.degree(len(self.bundles)))


def checked_share(view: RoundView, roster: Roster, kind: str, holder: int, s: RevealedShare) -> int | None:
    """A revealed share's value if its dealer signed it for this holder, this round and session."""
    if holder not in view.neighbours.get(s.dealer, ()):
        return None
    statement = keys.share_value_transcript(view.context, view.round, view.session, kind, s.dealer, holder, s.value)
    if not roster.verify(s.dealer, s.signature, statement):
        return None
    try:
        return shamir.decode_share(s.value)
    except ProtocolError:
        return None


def revealed_shares(
    view: RoundView, roster: Roster, dealer: int, responses: Iterable[UnmaskResponse]
) -> tuple[Shares, Shares]:
    """(seed shares, key shares) of `dealer` that the responses revealed, forgeries left out."""
    seed: Shares = {}
    key: Shares = {}
    for resp in responses:
        if resp.round != view.round or resp.session != view.session:
            continue
        for kind, group, out in ((keys.SEED, resp.seed_shares, seed), (keys.KEY, resp.key_shares, key)):
            for s in group:
                y = checked_share(view, roster, kind, resp.member, s) if s.dealer == dealer else None
                if y is not None:
                    out[resp.member] = y
    return seed, key


def recover_input(
    view: RoundView, target: int, masked: np.ndarray | None, seed_shares: Shares, key_shares: Shares
) -> np.ndarray | None:
    """The attack's goal: rebuild the target's seed and masking key from >= t shares of each,
    strip its self mask and every pairwise mask, and read its (clipped, quantized) input."""
    if masked is None or target not in view.bundles:
        return None
    t = view.threshold
    if len(seed_shares) < t or len(key_shares) < t:
        return None
    try:
        seed = shamir.reconstruct(seed_shares, t)
        sk = x25519_from_bytes(shamir.reconstruct(key_shares, t))
    except (ProtocolError, ValueError):
        return None
    if x25519_public_bytes(sk) != view.bundles[target].masking_key:
        return None  # not the key it advertised: the shares were not what the attack needed
    ctx, r, sess = view.context, view.round, view.session
    plus: list[bytes] = []
    minus = [keys.self_mask_key(ctx, r, sess, target, seed)]
    for k in sorted(view.neighbours[target] & set(view.shared)):
        dh = x25519_exchange(sk, view.bundles[k].masking_key)
        # the target added +PRG(pair key) when it had the smaller id: take it back out
        (minus if target < k else plus).append(keys.pair_mask_key(ctx, r, sess, target, k, dh))
    y = np.array(masked, dtype=view.params.dtype)  # a writable copy
    apply_masks(y, plus, minus)
    total, weight = dequantize(y, dataclasses.replace(view.params, vector_length=y.size - 1))
    return total / weight if weight > 0 else None


def max_error(recovered: np.ndarray, true_update: np.ndarray, params: ProtocolParams) -> float:
    """max |recovered - true| per coordinate, against the update as the quantizer saw it (clipped)."""
    if recovered.shape != true_update.shape:
        return float("inf")
    expected = np.clip(true_update.astype(np.float64), -params.clip, params.clip)
    return float(np.max(np.abs(recovered - expected)))


# ============================================================================ the adversary
class Adversary:
    """One attack, in one round, on one target; `report()` says what it got."""

    def __init__(
        self,
        kind: str,
        round_: int,
        target: int,
        roster: Roster,
        context: SessionContext,
        params: ProtocolParams,
        verify_dir: Path,
    ) -> None:
        self.kind, self.round, self.target = kind, round_, target
        self.roster, self.context, self.params = roster, context, params
        self.verify_dir = Path(verify_dir)
        self.extra_config = {SIM_GARBAGE_DEALER: f"{round_}:{target}"} if kind == "garbage-shares" else {}
        self._signer = Ed25519PrivateKey.generate()  # the adversary's own keys, nobody else's
        enc, msk = (x25519_public_bytes(x25519_from_random(os.urandom)) for _ in range(2))
        self._keys = (enc, msk)
        self._bset: BundleSet | None = None  # round R's honest messages, as the coordinator built them
        self._shared: tuple[int, ...] = ()
        self._ureq: UnmaskRequest | None = None
        self._sreq: SurvivorRequest | None = None
        self._previous: UnmaskRequest | None = None  # round R-1's, for the replay
        self._masked: np.ndarray | None = None
        self._attestations: dict[int, MaskAttestation] = {}  # every survivor's, as the coordinator holds them
        self._signatures: dict[int, SurvivorSignature] = {}
        self._responses: list[UnmaskResponse] = []
        self._refusals: list[dict[str, Any]] = []
        self._acting = False
        self._outcome: dict[str, Any] = {"completed": False}
        self._report: dict[str, Any] | None = None

    @classmethod
    def for_scenario(cls, scenario: Any, roster: Roster, verify_dir: Path) -> Adversary:
        from fedloom.errors import UserError
        from fedloom.session import protocol_params, session_context

        spec = scenario.adversary
        if spec["kind"] == "replay" and spec["round"] < 2:
            raise UserError("adversary.kind = 'replay' needs a round to replay: adversary.round must be 2 or more")
        params = protocol_params(scenario.plan, 1, len(roster))  # d is read off the masked input later
        return cls(
            spec["kind"], spec["round"], spec["target"], roster, session_context(scenario.plan), params, verify_dir
        )

    # ------------------------------------------------------------------ hooks
    def tamper(self, round_: int, stage: Stage, member: int, msg: Message) -> Message | None:
        """Rewrite what the coordinator sends (round R only); remember the honest originals."""
        self._remember(round_, stage, msg)
        attack = _TAMPER.get((self.kind, stage))
        if round_ != self.round or attack is None:
            return msg
        self._acting = True
        return attack(self, member, msg)

    def observe(self, node: int, msg: Message) -> None:
        """Keep what the attack round brings back: refusals, the target's masked input, signatures, shares."""
        rnd = training_round(msg.round)
        if isinstance(msg, Refusal):
            if rnd == self.round or (self._acting and rnd == self.round - 1):
                entry = {"member": msg.member, "rule": msg.rule}
                if entry not in self._refusals:
                    self._refusals.append(entry)
            return
        if rnd != self.round:
            return
        if isinstance(msg, MaskedInput):
            if msg.attestation is not None:
                self._attestations.setdefault(msg.member, msg.attestation)
            if msg.member == self.target:
                self._masked = np.array(msg.vector)
        elif isinstance(msg, SurvivorSignature):
            self._signatures.setdefault(msg.member, msg)
        elif isinstance(msg, UnmaskResponse):
            self._responses.append(msg)

    def inject(self, round_: int, after: Stage) -> dict[int, list[Message]] | None:
        """Requests of the adversary's own, in a trip after the Stage.SIGN or Stage.UNMASK trip of round R."""
        attack = _INJECT.get((self.kind, after))
        if round_ != self.round or attack is None:
            return None
        self._acting = True
        return attack(self)

    def after_round(self, round_: int, proto: Any, agg: Any, result: Any) -> None:
        """Round R completed: note how (before the harness deletes the true updates), then judge."""
        if round_ != self.round:
            return
        self._outcome = {
            "completed": True,
            "survivors": tuple(agg.survivors),
            "faults": dict(proto.faults),
            "exactness": result.exactness,
        }
        self._report = self._judge()

    def report(self) -> dict[str, Any]:
        """What the attack achieved (computed once, when round R ended or at the end of the run)."""
        if self._report is None:
            self._report = self._judge()
        return self._report

    # ------------------------------------------------------------------ bookkeeping
    def _remember(self, round_: int, stage: Stage, msg: Message) -> None:
        if round_ == self.round - 1 and isinstance(msg, UnmaskRequest):
            self._previous = msg
        if round_ != self.round:
            return
        if isinstance(msg, BundleSet):
            self._bset = msg
        elif isinstance(msg, MaskRequest):
            self._shared = msg.shared
        elif isinstance(msg, SurvivorRequest):
            self._sreq = msg
        elif isinstance(msg, UnmaskRequest):
            self._ureq = msg

    def view(self) -> RoundView | None:
        if self._bset is None:
            return None
        bundles = {b.member: b for b in self._bset.bundles}
        return RoundView(self.context, self.params, self._bset.round, bundles, self._shared)

    def _true_update(self) -> np.ndarray | None:
        path = self.verify_dir / f"r{self.round}-m{self.target}.npz"
        if not path.exists():
            return None
        with np.load(path) as f:
            return f["update"].astype(np.float64)

    def _judge(self) -> dict[str, Any]:
        view = self.view()
        seed, key = revealed_shares(view, self.roster, self.target, self._responses) if view else ({}, {})
        recovered = recover_input(view, self.target, self._masked, seed, key) if view else None
        truth = self._true_update()
        error = max_error(recovered, truth, self.params) if recovered is not None and truth is not None else None
        faults = self._outcome.get("faults", {})
        if self.kind == "garbage-shares":
            succeeded = self._sum_disrupted()
        else:
            succeeded = error is not None and error <= 2 * self.params.step
        threshold = view.threshold if view else self.params.shamir_threshold(self.params.degree(len(self.roster)))
        return {
            "kind": self.kind,
            "round": self.round,
            "target": self.target,
            "succeeded": bool(succeeded),
            "refusals": sorted(self._refusals, key=lambda e: (e["rule"], e["member"])),
            "shares_obtained": {"seed": len(seed), "key": len(key), "threshold": threshold},
            "round_completed": bool(self._outcome["completed"]),
            "recovered": recovered is not None,
            "max_error": error,
            "convicted": sorted(m for m, rule in faults.items() if rule == "shares.invalid"),
        }

    def _sum_disrupted(self) -> bool:
        """A malicious dealer wins unless round R ended with the exact sum of members other than it."""
        o = self._outcome
        exact = o.get("exactness") is not None and o["exactness"] <= self.params.step
        return not (o["completed"] and self.target not in o["survivors"] and exact)

    # ------------------------------------------------------------------ the attacks
    def _substitute_keys(self, member: int, bset: BundleSet) -> BundleSet:
        """T's bundle with the adversary's keys; it cannot sign as T, so T's signature stays."""
        enc, msk = self._keys

        def swap(b: KeyBundle) -> KeyBundle:
            return KeyBundle(b.round, b.member, enc, msk, b.signature) if b.member == self.target else b

        return BundleSet(bset.round, tuple(swap(b) for b in bset.bundles))

    def _fake_member(self, member: int, bset: BundleSet) -> BundleSet:
        """A bundle for a member the roster does not list, signed with the adversary's key."""
        fake = max(m.id for m in self.roster) + 1
        unsigned = KeyBundle(bset.round, fake, *self._keys, bytes(64))
        signature = self._signer.sign(keys.bundle_transcript(self.context, unsigned))
        return BundleSet(bset.round, (*bset.bundles, dataclasses.replace(unsigned, signature=signature)))

    def _overlap(self, member: int, req: UnmaskRequest) -> UnmaskRequest:
        """T's seed shares (a survivor) and its key shares (dropped) in one request."""
        return dataclasses.replace(req, dropped=tuple(sorted({*req.dropped, self.target})))

    def _replay(self, member: int, req: UnmaskRequest) -> UnmaskRequest:
        return self._previous or req

    def _split_views(self, member: int, req: SurvivorRequest) -> SurvivorRequest:
        """Half A (with T) is told C2; half B is told C2 - T."""
        _, half_b = self._halves(req.survivors)
        if member in half_b:
            return dataclasses.replace(req, survivors=tuple(m for m in req.survivors if m != self.target))
        return req

    def _halves(self, survivors: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        others = [m for m in survivors if m != self.target]
        half_a = (self.target, *others[: (len(survivors) - 1) // 2])
        return half_a, tuple(m for m in others if m not in half_a)

    def _unmask_each_half(self) -> dict[int, list[Message]]:
        """Each half gets an UnmaskRequest for its own view, proven by its own half's signatures."""
        req = self._sreq
        if req is None:
            return {}
        out: dict[int, list[Message]] = {}
        for half in self._halves(req.survivors):
            view = req.survivors if self.target in half else tuple(m for m in req.survivors if m != self.target)
            dropped = tuple(m for m in req.shared if m not in view)
            sigs = tuple(self._signatures[m] for m in half if m in self._signatures)
            atts = tuple(self._attestations[m] for m in view if m in self._attestations)
            ureq = UnmaskRequest(req.round, req.session, view, dropped, sigs, atts)
            out.update({m: [ureq] for m in half})
        return out

    def _ask_again(self) -> dict[int, list[Message]]:
        """After the honest unmask: T moved from the survivors to the dropped, same signatures."""
        req = self._ureq
        if req is None:
            return {}
        again = UnmaskRequest(
            req.round,
            req.session,
            tuple(m for m in req.survivors if m != self.target),
            tuple(sorted({*req.dropped, self.target})),
            req.signatures,
            tuple(a for a in req.attestations if a.member != self.target),
        )
        return {m: [again] for m in req.survivors}


_TAMPER = {
    ("substitute-keys", Stage.SHARE): Adversary._substitute_keys,
    ("fake-member", Stage.SHARE): Adversary._fake_member,
    ("overlap", Stage.UNMASK): Adversary._overlap,
    ("replay", Stage.UNMASK): Adversary._replay,
    ("inconsistent-survivors", Stage.SIGN): Adversary._split_views,
}
_INJECT = {
    ("inconsistent-survivors", Stage.SIGN): Adversary._unmask_each_half,
    ("double-request", Stage.UNMASK): Adversary._ask_again,
}

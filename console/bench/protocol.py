"""Benchmark of one secure-aggregation round: client, server, mask path, coordinator memory.

    fedloom bench protocol                 # all 12 cases, 3 repeats (10+ minutes)
    fedloom bench protocol --quick         # 5 cases, about 2-3 minutes
    fedloom bench protocol --cases "10,1000000,0;100,10000000,0.1" --repeats 5 --json out.jsonl

What is measured, per case (n members, d parameters, dropout fraction):

* client: ONE participant's compute for the round (advertise + share + receive + mask + sign +
  unmask; the mask stage, quantization included, also on its own). The protocol still runs for
  real for all n members, so the coordinator gets n valid messages; only one member is timed.
* server: the coordinator's compute (every add_*, every closing call and finish()), and finish()
  alone (Shamir reconstruction + mask removal). Messages are handed over as objects, as in
  `local.run_round`: encoding and decoding are not counted.
* dropouts happen AFTER sharing and BEFORE masking: the costly case, where the pairwise masks of
  every dropped member must be reconstructed and removed. The graph is complete, so which members
  drop does not matter, only how many: the survivors must reach T and each secret keep its Shamir
  threshold of surviving holders. The pattern is drawn once per case (seeded).
* coordinator memory: tracemalloc around each coordinator call (numpy buffers are traced), in a
  separate warm-up round that is not timed (tracing slows allocation). The peak counts what the
  coordinator itself allocates; the masked vector being added is the participant's (one message).
* machine bounds, in the same run: AES-128-CTR keystream into a preallocated 256 KiB buffer, and
  in-place uint32 add from memory (at the start, and again after each case); `apply_masks` on a
  warm 10^7-element uint32 accumulator with 8 keys after each case, reported as a fraction of the
  keystream bound measured beside it (the host is shared: conditions drift during a run).

Harness shortcuts (documented, and never applied to what is timed): members that are not timed
share the verification results of pure functions (Ed25519 verification, the X25519 low-order
probe, `verify_bundles` of the same bundle set), so a large round does not verify n^2 signatures
per member; their replies are byte-identical to an uncached run. Everyone uses the same float32
input vector (quantization dither still differs per member). Randomness is `seeded_randomness`
(tests and benchmarks only).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol import participant as participant_mod
from protocol import roster as roster_mod
from protocol import verify as verify_mod
from protocol.coordinator import AggregateResult
from protocol.local import make_federation, stand_in_model_digest
from protocol.masking import CHUNK_BYTES, apply_masks
from protocol.messages import MaskRequest
from protocol.params import ProtocolParams
from protocol.participant import Participant

DEFAULT_THRESHOLD = 2 / 3
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    dropout: float

    @property
    def name(self) -> str:
        e = round(math.log10(self.d))
        dd = f"1e{e}" if 10**e == self.d else str(self.d)
        return f"n{self.n}-d{dd}-p{round(self.dropout * 100)}"

    @property
    def dropped_count(self) -> int:
        return round(self.dropout * self.n)


# the graph is complete (n - 1 holders per dealer, O(n^2) shares and O(n t^2) reconstruction):
# the largest roster row is 200 members until the 1000-member cost is measured again
FULL_SIZES = ((10, 10**6), (100, 10**6), (100, 10**7), (200, 10**5))
DROPOUTS = (0.0, 0.1, 0.3)
FULL_CASES = tuple(Case(n, d, p) for n, d in FULL_SIZES for p in DROPOUTS)
QUICK_CASES = (
    Case(10, 10**6, 0.0),
    Case(10, 10**6, 0.1),
    Case(100, 10**6, 0.0),
    Case(100, 10**6, 0.1),
    Case(100, 10**7, 0.1),
)


def parse_cases(text: str) -> list[Case]:
    """ "n,d,dropout;n,d,dropout" (d may be written 1e6)."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        n, d, p = (s.strip() for s in part.split(","))
        out.append(Case(int(n), int(float(d)), float(p)))
    if not out:
        raise ValueError("no cases given")
    return out


def _as_case(c: Case | Sequence[float]) -> Case:
    if isinstance(c, Case):
        return c
    n, d, p = c
    return Case(int(n), int(d), float(p))


# ---------------------------------------------------------------------------- machine bounds
def _timed_best(fn: Callable[[], object], repeats: int) -> list[float]:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def keystream_rates(elements: int = 10**7, repeats: int = 5) -> list[float]:
    """AES-128-CTR keystream into a preallocated 256 KiB buffer: uint32 elements/s, one per repeat."""
    key = hashlib_key(b"bounds")
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(CHUNK_BYTES)
    buf = bytearray(CHUNK_BYTES + 16)
    chunks = max(1, elements * 4 // CHUNK_BYTES)

    def keystream() -> None:
        for _ in range(chunks):
            enc.update_into(zeros, buf)

    keystream()
    return [chunks * CHUNK_BYTES / 4 / t for t in _timed_best(keystream, repeats)]


def add_rates(elements: int = 10**7, repeats: int = 5) -> list[float]:
    """In-place uint32 add (`acc += src`) of `elements`: elements/s, one per repeat."""
    acc = np.ones(elements, dtype=np.uint32)
    src = np.full(elements, 3, dtype=np.uint32)
    np.add(acc, src, out=acc)  # warm: page faults out of the way
    return [elements / t for t in _timed_best(lambda: np.add(acc, src, out=acc), repeats)]


def machine_bounds(elements: int = 10**7, repeats: int = 5) -> dict[str, float]:
    """Keystream and add rates on this machine (medians of `repeats`), single thread."""
    ks = statistics.median(keystream_rates(elements, repeats))
    return {
        "keystream_bytes_per_second": 4 * ks,
        "keystream_elements_per_second": ks,
        "add_elements_per_second": statistics.median(add_rates(elements, repeats)),
    }


def mask_microbench(elements: int = 10**7, keys: int = 8, repeats: int = 5) -> dict[str, float]:
    """`apply_masks` (one thread) on a warm uint32 accumulator: elements/s over all keys."""
    acc = np.ones(elements, dtype=np.uint32)
    acc += 1  # touch every page
    half = keys // 2
    ks = [hashlib_key(b"mask%d" % i) for i in range(keys)]
    apply_masks(acc, ks[:half], ks[half:])
    ts = _timed_best(lambda: apply_masks(acc, ks[:half], ks[half:]), repeats)
    rates = sorted(elements * keys / t for t in ts)
    return {
        "mask_elements_per_second": statistics.median(rates),
        "mask_elements_per_second_min": rates[0],
        "mask_elements_per_second_max": rates[-1],
    }


def hashlib_key(label: bytes) -> bytes:
    return hashlib.sha256(b"fedloom/bench" + label).digest()[:16]


# ---------------------------------------------------------------------------- dropout patterns
def _position_neighbours(n: int, k: int) -> list[list[int]]:
    """Neighbours by position: complete for k >= n - 1 (the protocol's graph), else a ring lattice."""
    if k >= n - 1:
        return [[q for q in range(n) if q != p] for p in range(n)]
    half = k // 2
    return [sorted({(p + o) % n for o in range(-half, half + 1) if o}) for p in range(n)]


def dropout_pattern(n: int, k: int, threshold: int, count: int, seed: str) -> list[int] | None:
    """`count` positions (never position 0) whose dropping leaves every member (dropped or not)
    with at least `threshold` surviving neighbours; None if the greedy draw cannot reach it."""
    if count == 0:
        return []
    nbrs = _position_neighbours(n, k)
    alive = [len(x) for x in nbrs]
    candidates = list(range(1, n))
    random.Random(seed).shuffle(candidates)
    chosen: list[int] = []
    for p in candidates:
        if alive[p] >= threshold and all(alive[q] > threshold for q in nbrs[p]):
            chosen.append(p)
            for q in nbrs[p]:
                alive[q] -= 1
            if len(chosen) == count:
                return sorted(chosen)
    return None


def choose_threshold(case: Case) -> tuple[float, list[int], int, str]:
    """(threshold_fraction, dropout positions, degree, note): the default 2/3 when it tolerates
    the case's dropouts, else 0.5 (recorded, never silent)."""
    n, count = case.n, case.dropped_count
    for tf in (DEFAULT_THRESHOLD, FALLBACK_THRESHOLD):
        params = _params(case, tf)
        k = params.degree(n)
        t = params.shamir_threshold(min(k, n - 1))
        if n - count < max(params.min_cohort, params.consistency_threshold()):
            continue
        pattern = dropout_pattern(n, k, t, count, f"{case.n}-{case.d}-{case.dropout}")
        if pattern is not None:
            note = (
                ""
                if tf == DEFAULT_THRESHOLD
                else (
                    f"threshold_fraction 2/3 (t={_params(case, DEFAULT_THRESHOLD).shamir_threshold(k)} "
                    f"of {k} neighbours) cannot survive {count} dropouts; using 0.5 (t={t})"
                )
            )
            return tf, pattern, k, note
    raise ValueError(f"{case.name}: no threshold_fraction in [0.5, 2/3] survives the dropouts")


def _params(case: Case, threshold_fraction: float) -> ProtocolParams:
    return ProtocolParams.for_federation(case.d, case.n, threshold_fraction=threshold_fraction)


# ---------------------------------------------------------------------------- harness shortcuts
class _SharedVerification:
    """Memoizes pure verification functions for the members that are not timed.

    While `active` is False (the timed member, the coordinator) the original functions run.
    """

    def __init__(self) -> None:
        self.active = False
        self._sigs: dict[tuple[bytes, bytes, bytes], bool] = {}
        self._probes: dict[bytes, bool] = {}
        self._sets: dict[tuple[int, int, int, int], tuple[object, dict]] = {}
        self._orig: tuple[Any, Any, Any] | None = None

    def __enter__(self) -> _SharedVerification:
        self._orig = (
            roster_mod.verify_signature,
            verify_mod.x25519_key_is_usable,
            participant_mod.verify_bundles,
        )
        orig_sig, orig_probe, orig_set = self._orig

        def verify_signature(pk: bytes, sig: bytes, msg: bytes) -> bool:
            if not self.active:
                return orig_sig(pk, sig, msg)
            key = (pk, sig, msg)
            hit = self._sigs.get(key)
            if hit is None:
                hit = self._sigs[key] = orig_sig(pk, sig, msg)
            return hit

        def key_is_usable(pk: bytes) -> bool:
            if not self.active:
                return orig_probe(pk)
            hit = self._probes.get(pk)
            if hit is None:
                hit = self._probes[pk] = orig_probe(pk)
            return hit

        def verify_bundles(bundles, round_, roster, ctx):
            if not self.active:
                return orig_set(bundles, round_, roster, ctx)
            key = (id(bundles), round_, id(roster), id(ctx))
            hit = self._sets.get(key)
            if hit is None or hit[0] is not bundles:
                hit = self._sets[key] = (bundles, orig_set(bundles, round_, roster, ctx))
            return hit[1]

        roster_mod.verify_signature = verify_signature
        verify_mod.x25519_key_is_usable = key_is_usable
        participant_mod.verify_bundles = verify_bundles
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._orig is not None
        (roster_mod.verify_signature, verify_mod.x25519_key_is_usable, participant_mod.verify_bundles) = self._orig
        self._sigs.clear()
        self._probes.clear()
        self._sets.clear()

    @contextmanager
    def on(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


class _Meter:
    """Times the coordinator's calls; optionally accounts their memory with tracemalloc.

    With `memory`, tracing runs only inside coordinator calls. Each call's traced peak is added to
    what earlier calls left allocated (frees of older blocks are not subtracted: conservative).
    """

    def __init__(self, memory: bool) -> None:
        self.memory = memory
        self.seconds: dict[str, float] = {}
        self.live = 0
        self.peak = 0

    def __call__(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.memory:
            tracemalloc.start()
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            dt = time.perf_counter() - t0
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt
            if self.memory:
                cur, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                self.peak = max(self.peak, self.live + peak)
                self.live += cur


# ---------------------------------------------------------------------------- one round
class _BenchMembers:
    """The member side of one benchmark round: the timed member's clock and bytes, the others untimed.

    Members that are not timed answer with the shared verification cache on (module doc).
    """

    def __init__(self, parts: dict[int, Participant], me: int, count_bytes: bool) -> None:
        self.parts = parts
        self.me = me
        self.count_bytes = count_bytes
        self.client: dict[str, float] = {}
        self.up = 0
        self.down = 0

    def members(self, ids: Iterable[int]) -> list[int]:
        """`ids` with the timed member first, so its work never runs behind the others' warm caches."""
        ids = list(ids)
        return [self.me] + [m for m in ids if m != self.me] if self.me in ids else ids

    def reply(self, m: int, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Member `m`'s reply to a request: timed (and its bytes counted) for the timed member only."""
        if m == self.me:
            return self._timed(stage, fn, *args)
        with _SHARED.on():
            return fn(*args)

    def _timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Time one call of the timed member; its request and reply are encoded outside the timing."""
        if self.count_bytes:
            self.down += len(args[0].encode())
        t0 = time.perf_counter()
        reply = fn(*args)
        self.client[stage] = self.client.get(stage, 0.0) + time.perf_counter() - t0
        if self.count_bytes:
            self.up += len(reply.encode())
        return reply

    def masked(self, m: int, mreq: MaskRequest, x: np.ndarray, model: bytes) -> Any:
        """Member `m`'s masked input; the timed member's mask stage is timed on its own (request encoded after)."""
        if m != self.me:
            with _SHARED.on():
                return self.parts[m].mask(mreq, x, 1, model)
        t0 = time.perf_counter()
        mi = self.parts[m].mask(mreq, x, 1, model)
        self.client["mask"] = time.perf_counter() - t0
        if self.count_bytes:
            self.down += len(mreq.encode())
            self.up += len(mi.encode())
        return mi


def _run_round(
    case: Case,
    params: ProtocolParams,
    pattern: list[int],
    x: np.ndarray,
    *,
    workers: int,
    seed: int,
    memory: bool,
    count_bytes: bool,
) -> dict[str, Any]:
    fed = make_federation(case.n, params, seed=seed, federation_id=f"bench-{case.name}")
    parts = fed.participants
    me = min(parts)  # the timed member (never dropped)
    coord = fed.coordinator(1, workers=workers)
    server = _Meter(memory)
    who = _BenchMembers(parts, me, count_bytes)

    gc.collect()
    # stage 0: keys
    req = server("advertise", coord.advertise_request)
    for m in who.members(parts):
        server("advertise", coord.add_bundle, who.reply(m, "advertise", parts[m].advertise, req))
    bset = server("share", coord.bundle_set)
    # stage 1: shares
    for m in who.members(coord.cohort):
        server("share", coord.add_shares, who.reply(m, "share", parts[m].share, bset))
    deliveries = server("receive", coord.deliveries)
    for m in who.members(deliveries):
        server("receive", coord.add_receipt, who.reply(m, "receive", parts[m].receive, deliveries[m]))
    del deliveries, bset

    dropped = _dropped_members(case, pattern, list(coord.cohort), me)

    # stage 3: masked inputs, streamed into the coordinator one at a time (memory stays O(d))
    state_bytes = server.live  # what the coordinator holds before the accumulator exists
    model = stand_in_model_digest(1)  # training round 1 (no model is trained here)
    mreq = server("mask", lambda: coord.mask_request(training_round=1, model_digest=model))
    for m in who.members(mreq.shared):
        if m not in dropped:
            server("mask", coord.add_masked, who.masked(m, mreq, x, model))
    sreq = server("sign", coord.survivor_request)
    for m in who.members(sreq.survivors):
        server("sign", coord.add_signature, who.reply(m, "sign", parts[m].sign_survivors, sreq))
    ureq = server("unmask_collect", coord.unmask_request)
    for m in who.members(ureq.survivors):
        server("unmask_collect", coord.add_unmask, who.reply(m, "unmask", parts[m].unmask, ureq))
    survivors = set(ureq.survivors)
    keys_removed = len(survivors) + sum(len(coord.neighbours[j] & survivors) for j in dropped)
    result = server("finish", coord.finish)
    ns = _check_aggregate(case, params, result, dropped, x)
    del result

    out: dict[str, Any] = {
        "client": who.client,
        "server": server.seconds,
        "degree": min(params.degree(case.n), case.n - 1),
        "survivors": ns,
        "server_mask_keys": keys_removed,
    }
    if memory:
        out["coordinator_peak_bytes"] = server.peak
        out["coordinator_state_bytes"] = state_bytes
    if count_bytes:
        out["bytes_up"], out["bytes_down"] = who.up, who.down
    return out


def _dropped_members(case: Case, pattern: list[int], order: list[int], me: int) -> set[int]:
    """Who drops after sharing, before masking: the pattern rotated onto the timed member, who never drops.

    The graph is complete, so positions in the cohort are interchangeable.
    """
    at = order.index(me)
    dropped = {order[(at + p) % case.n] for p in pattern}
    assert me not in dropped and len(dropped) == case.dropped_count
    return dropped


def _check_aggregate(
    case: Case, params: ProtocolParams, result: AggregateResult, dropped: set[int], x: np.ndarray
) -> int:
    """A benchmark of a wrong sum is worthless: |sum - n_s * x| < n_s quantization steps, weights sum to n_s.

    Returns n_s, the number of survivors.
    """
    total, weight = result.weighted_sum(params)
    ns = len(result.survivors)
    if weight != ns or set(result.dropped) != dropped:
        raise AssertionError(f"{case.name}: wrong survivors or weights in the aggregate")
    err = float(np.max(np.abs(total - ns * x.astype(np.float64))))
    if err > ns * params.step * (1 + 1e-9):
        raise AssertionError(f"{case.name}: aggregate off by {err}")
    return ns


_SHARED = _SharedVerification()


# ---------------------------------------------------------------------------- cases
def _stats(prefix: str, values: list[float]) -> dict[str, float]:
    return {
        prefix: statistics.median(values),
        f"{prefix}_min": min(values),
        f"{prefix}_max": max(values),
    }


def run_case(
    case: Case,
    repeats: int = 3,
    *,
    workers: int = 1,
    memory: bool = True,
) -> dict[str, Any]:
    """One case: an untimed warm-up round (memory, bytes), then `repeats` timed rounds."""
    tf, pattern, degree, note = choose_threshold(case)
    params = _params(case, tf)
    x = np.random.default_rng(case.d).uniform(-0.5, 0.5, case.d).astype(np.float32)
    with _SHARED:
        warm = _run_round(case, params, pattern, x, workers=workers, seed=1_000_000, memory=memory, count_bytes=True)
        runs = [
            _run_round(case, params, pattern, x, workers=workers, seed=r, memory=False, count_bytes=False)
            for r in range(repeats)
        ]
    micro = mask_microbench()
    local = machine_bounds(repeats=3)  # the bound again, right beside the mask run (noisy hosts)
    client = [sum(r["client"].values()) for r in runs]
    server = [sum(r["server"].values()) for r in runs]
    row: dict[str, Any] = {
        "case": case.name,
        "n": case.n,
        "d": case.d,
        "dropout": case.dropout,
        "dropped": case.dropped_count,
        "survivors": warm["survivors"],
        "degree": degree,
        "threshold_fraction": round(tf, 6),
        "shamir_threshold": params.shamir_threshold(degree),
        "ring_bits": params.ring_bits,
        "workers": workers,
        "repeats": repeats,
    }
    if note:
        row["threshold_note"] = note
    row |= _stats("client_seconds", client)
    row |= _stats("client_mask_seconds", [r["client"]["mask"] for r in runs])
    row["client_stage_seconds"] = {s: statistics.median(r["client"][s] for r in runs) for s in runs[0]["client"]}
    row |= _stats("server_seconds", server)
    row |= _stats("server_unmask_seconds", [r["server"]["finish"] for r in runs])
    row["server_stage_seconds"] = {s: statistics.median(r["server"][s] for r in runs) for s in runs[0]["server"]}
    row["server_mask_keys"] = warm["server_mask_keys"]
    row["server_unmask_elements_per_second"] = (
        warm["server_mask_keys"] * params.masked_length / row["server_unmask_seconds"]
    )
    row["client_mask_keys"] = degree + 1  # its self mask + one per neighbour (all shared)
    row |= micro
    row["keystream_elements_per_second"] = local["keystream_elements_per_second"]
    row["add_elements_per_second"] = local["add_elements_per_second"]
    row["mask_fraction_of_keystream_bound"] = micro["mask_elements_per_second"] / local["keystream_elements_per_second"]
    if memory:
        row["coordinator_peak_bytes"] = warm["coordinator_peak_bytes"]
        row["coordinator_peak_over_4d"] = warm["coordinator_peak_bytes"] / (4 * case.d)
        row["coordinator_state_bytes"] = warm["coordinator_state_bytes"]  # O(n k): keys, shares
    row["bytes_up"], row["bytes_down"] = warm["bytes_up"], warm["bytes_down"]
    return row


def run_cases(
    cases: Iterable[Case | Sequence[float]],
    repeats: int = 3,
    *,
    workers: int = 1,
    memory: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every case; one dict per case (see the module docstring for what each key means)."""
    bounds = machine_bounds()
    rows = []
    for c in cases:
        row = run_case(_as_case(c), repeats, workers=workers, memory=memory)
        row["bounds"] = bounds
        rows.append(row)
        if progress:
            progress(row)
    return rows


# ---------------------------------------------------------------------------- output
def _table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="fedloom secure aggregation, one round (median of repeats; min-max below)")
    for col in (
        "case",
        "n",
        "d",
        "dropout",
        "degree",
        "client s",
        "client mask s",
        "server s",
        "unmask s",
        "peak MB",
        "mask G elem/s",
    ):
        t.add_column(col, justify="left" if col == "case" else "right")

    def span(r: dict[str, Any], k: str) -> str:
        return f"{r[k]:.4f}\n[dim]{r[k + '_min']:.4f}-{r[k + '_max']:.4f}[/dim]"

    for r in rows:
        deg = str(r["degree"]) + ("" if r["threshold_fraction"] > 0.6 else " (t=0.5)")
        peak = r.get("coordinator_peak_bytes")
        t.add_row(
            r["case"],
            str(r["n"]),
            f"{r['d']:.0e}",
            f"{r['dropout']:.0%}",
            deg,
            span(r, "client_seconds"),
            span(r, "client_mask_seconds"),
            span(r, "server_seconds"),
            span(r, "server_unmask_seconds"),
            "-" if peak is None else f"{peak / 1e6:.1f}",
            f"{r['mask_elements_per_second'] / 1e9:.2f}",
        )
    return t


def _bound_lines(bounds: dict[str, float], workers: int) -> list[str]:
    return [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, numpy {np.__version__}; coordinator workers: "
        f"{workers}",
        f"bound: AES-128-CTR keystream into a preallocated 256 KiB buffer: "
        f"{bounds['keystream_bytes_per_second'] / 1e9:.2f} GB/s = "
        f"{bounds['keystream_elements_per_second'] / 1e9:.2f} G uint32/s",
        f"bound: in-place uint32 add from memory (10^7): {bounds['add_elements_per_second'] / 1e9:.2f} G elem/s",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench protocol", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 smaller cases (about 2-3 minutes)")
    ap.add_argument("--cases", help='"n,d,dropout;..." (overrides --quick)')
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per case (default 3)")
    ap.add_argument("--workers", type=int, default=1, help="coordinator threads for unmasking")
    ap.add_argument("--json", metavar="PATH", help="write one JSON object per case per line ('-': stdout)")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.workers < 1:
        ap.error("--repeats and --workers must be at least 1")
    cases = parse_cases(a.cases) if a.cases else list(QUICK_CASES if a.quick else FULL_CASES)

    from rich.console import Console

    con = Console(stderr=a.json == "-", width=None if sys.stdout.isatty() else 160)
    bounds_printed = False
    sink = sys.stdout if a.json == "-" else (open(a.json, "w") if a.json else None)  # noqa: SIM115

    def progress(row: dict[str, Any]) -> None:
        nonlocal bounds_printed
        if not bounds_printed:
            for line in _bound_lines(row["bounds"], a.workers):
                con.print(line)
            bounds_printed = True
        con.print(
            f"[dim]{row['case']}: client {row['client_seconds']:.4f} s, server "
            f"{row['server_seconds']:.3f} s (unmask {row['server_unmask_seconds']:.3f} s)[/dim]"
        )
        if sink:
            sink.write(json.dumps(row, sort_keys=True) + "\n")
            sink.flush()

    try:
        rows = run_cases(cases, a.repeats, workers=a.workers, memory=not a.no_memory, progress=progress)
    finally:
        if sink and sink is not sys.stdout:
            sink.close()
    b = rows[0]["bounds"]
    con.print(
        f"mask path (apply_masks, 10^7 uint32, 8 keys, 1 thread), median over cases: "
        f"{statistics.median(r['mask_elements_per_second'] for r in rows) / 1e9:.2f} G elem/s = "
        f"{statistics.median(r['mask_fraction_of_keystream_bound'] for r in rows):.0%} of the "
        f"keystream bound measured beside it (run start: "
        f"{b['keystream_elements_per_second'] / 1e9:.2f} G elem/s)"
    )
    for r in rows:
        if "threshold_note" in r:
            con.print(f"[yellow]{r['case']}: {r['threshold_note']}[/yellow]")
    con.print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the secure-aggregation primitives, each beside this machine's bound.

    fedloom bench primitives               # full: d = 10^6 and 10^7, Shamir n = 30/100/300
    fedloom bench primitives --quick       # smaller, fewer repeats (about 20 s)
    fedloom bench primitives --repeats 9 --json prim.json

One thread throughout. Every figure is the median of `--repeats` runs, with min and max.

* bounds, measured in the same run right before the throughput rows that use them: AES-128-CTR
  keystream into a preallocated 256 KiB buffer (`update_into`, 10^7 uint32 elements), in-place
  uint32 add from memory (10^7) and in cache (2^16); "keystream+add" is the two done one after the
  other, 1 / (1/keystream + 1/add-in-cache): what a mask path that adds each keystream chunk while
  it is still in cache can reach on one core.
* mask expansion + accumulation: `protocol.masking.apply_masks` on a warm uint32 accumulator of d
  elements with 8 keys (4 added, 4 subtracted): elements x keys per second.
* quantization: `protocol.quantize.quantize` of d float32 (clip, scale, AES-CTR dither, floor,
  into the ring): elements per second (each element needs 4 bytes of dither keystream).
* X25519 keygen (fresh key + public bytes) and exchange (fedloom's wrapper, which parses the peer
  key each time), Ed25519 sign and verify (fedloom's `verify_signature`, which parses the public key
  each time), over a ~200-byte transcript: microseconds per operation.
* Flower 1.41 SecAgg+ on the same d = 10^6: its client mask path (`pseudo_rand_gen`, numpy
  RandomState, plus `parameters_addition`/`subtraction` and the final `parameters_mod`, 8 keys) and
  its quantizer, beside fedloom's rows (`fedloom_speedup` = fedloom's rate over Flower's).
* Shamir over GF(2^521 - 1) (`protocol.shamir`): split a 32-byte secret among n holders with
  t = n/2, and reconstruct it from t shares: milliseconds per operation.

`reference` is the figure measured on this machine in 2026-11 (shared/notes/limits.md; its Shamir
row is a 256-bit prime, fedloom's field is 521 bits).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from console.bench import common
from console.bench.protocol import add_rates, hashlib_key, keystream_rates

SHAMIR_SIZES = (30, 100, 300)
OPS_PER_RUN = 300  # crypto ops timed per run


def _rate_row(
    key: str,
    name: str,
    size: str,
    rates: list[float],
    unit_scale: float,
    unit: str,
    bound: tuple[str, float] | None = None,
    reference: str = "",
    **extra: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "primitive": name, "size": size, "unit": unit, "higher_is_better": True}
    row |= common.stats("value", [r / unit_scale for r in rates])
    row["samples"] = len(rates)
    if bound is not None:
        row["bound_name"], bv = bound
        row["bound_value"] = bv / unit_scale
        row["fraction_of_bound"] = row["value"] / row["bound_value"]
    row["reference"] = reference
    return row | extra


def _cost_row(key: str, name: str, size: str, seconds: list[float], unit: str, reference: str = "") -> dict[str, Any]:
    scale = {"us": 1e6, "ms": 1e3}[unit]
    row: dict[str, Any] = {"key": key, "primitive": name, "size": size, "unit": unit, "higher_is_better": False}
    row |= common.stats("value", [s * scale for s in seconds])
    row["samples"] = len(seconds)
    row["reference"] = reference
    return row


def bounds(repeats: int) -> dict[str, float]:
    ks = statistics.median(keystream_rates(10**7, repeats))
    add_mem = statistics.median(add_rates(10**7, repeats))
    add_cache = statistics.median(add_rates(1 << 16, max(repeats, 50)))
    return {
        "keystream_elements_per_second": ks,
        "add_memory_elements_per_second": add_mem,
        "add_cache_elements_per_second": add_cache,
        "keystream_plus_add_elements_per_second": 1 / (1 / ks + 1 / add_cache),
    }


def bound_rows(repeats: int) -> list[dict[str, Any]]:
    ks = keystream_rates(10**7, repeats)
    mem = add_rates(10**7, repeats)
    cache = add_rates(1 << 16, max(repeats, 50))
    both = [1 / (1 / a + 1 / b) for a, b in zip(ks, cache, strict=False)]
    g = 1e9
    return [
        _rate_row(
            "bound_keystream",
            "bound: AES-128-CTR keystream into a preallocated 256 KiB buffer",
            "1e7 uint32",
            ks,
            g,
            "G elem/s",
            reference="8.2 GB/s in cache = 2.05 G uint32/s",
        ),
        _rate_row(
            "bound_add_memory", "bound: in-place uint32 add from memory", "1e7", mem, g, "G elem/s", reference="1.8 G/s"
        ),
        _rate_row(
            "bound_add_cache", "bound: in-place uint32 add in cache", "2^16", cache, g, "G elem/s", reference="3.3 G/s"
        ),
        _rate_row(
            "bound_keystream_plus_add",
            "bound: keystream then add in cache, 1/(1/ks + 1/add)",
            "-",
            both,
            g,
            "G elem/s",
            reference="best full mask path ~1.5 G/s",
        ),
    ]


def mask_row(d: int, repeats: int, keys: int = 8) -> dict[str, Any]:
    from protocol.masking import apply_masks

    b = bounds(3)
    acc = np.ones(d, dtype=np.uint32)
    acc += 1
    half = keys // 2
    ks = [hashlib_key(b"mask%d" % i) for i in range(keys)]
    apply_masks(acc, ks[:half], ks[half:])
    times = common.timed(lambda: apply_masks(acc, ks[:half], ks[half:]), repeats)
    rates = [d * keys / t for t in times]
    row = _rate_row(
        "mask",
        f"mask expansion + accumulation (apply_masks, {keys} keys, 1 thread)",
        f"d={common.fmt_d(d)}",
        rates,
        1e9,
        "G elem/s",
        bound=("keystream", b["keystream_elements_per_second"]),
        reference="fedloom README: ~1.7 G/s; limits.md best path ~1.5 G/s",
    )
    row["fraction_of_keystream_plus_add"] = row["value"] * 1e9 / b["keystream_plus_add_elements_per_second"]
    row["bounds"] = b
    return row


def quantize_row(d: int, repeats: int) -> dict[str, Any]:
    from protocol.params import ProtocolParams
    from protocol.quantize import quantize

    b = bounds(3)
    params = ProtocolParams.for_federation(d, 100, clip=1.0)
    x = np.random.default_rng(d).uniform(-0.5, 0.5, d).astype(np.float32)
    quantize(x, 1, params, os.urandom)
    times = common.timed(lambda: quantize(x, 7, params, os.urandom), repeats)
    row = _rate_row(
        "quantize",
        "quantization (quantize: clip, scale, AES-CTR dither, floor, weight)",
        f"d={common.fmt_d(d)}",
        [d / t for t in times],
        1e9,
        "G elem/s",
        bound=("keystream", b["keystream_elements_per_second"]),
        reference="stochastic rounding ~3.9 ms per 1e6 = 0.26 G/s",
        ms_per_million=statistics.median(times) / d * 1e9,
    )
    row["bounds"] = b
    return row


def flower_rows(d: int, repeats: int, keys: int = 8) -> list[dict[str, Any]]:
    """Flower 1.41 SecAgg+'s client mask path and quantizer on the same d (its own functions)."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import quantize as flwr_quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    b = bounds(3)
    seeds = [hashlib_key(b"flwr%d" % i) * 2 for i in range(keys)]  # 32-byte keys, as its shared keys
    shape = [(d,)]
    start = [np.ones(d, dtype=np.int64)]

    def masks() -> None:
        acc = start
        for i, seed in enumerate(seeds):  # what _collect_masked_vectors does per neighbour
            m = pseudo_rand_gen(seed, 1 << 32, shape)
            acc = parameters_addition(acc, m) if i % 2 else parameters_subtraction(acc, m)
        parameters_mod(acc, 1 << 32)

    x = [np.random.default_rng(d).uniform(-0.5, 0.5, d).astype(np.float32)]
    masks()
    mask_t = common.timed(masks, repeats)
    flwr_quantize(x, 8.0, 1 << 22)
    quant_t = common.timed(lambda: flwr_quantize(x, 8.0, 1 << 22), repeats)
    rows = [
        _rate_row(
            "flower_mask",
            f"Flower 1.41 SecAgg+ mask path (pseudo_rand_gen + add/sub, {keys} keys, mod 2^32)",
            f"d={common.fmt_d(d)}",
            [d * keys / t for t in mask_t],
            1e9,
            "G elem/s",
            bound=("keystream", b["keystream_elements_per_second"]),
            reference="limits.md: ~18x slower than the best mask path",
        ),
        _rate_row(
            "flower_quantize",
            "Flower 1.41 SecAgg+ quantize (clip 8, range 2^22, stochastic)",
            f"d={common.fmt_d(d)}",
            [d / t for t in quant_t],
            1e9,
            "G elem/s",
            bound=("keystream", b["keystream_elements_per_second"]),
            reference="limits.md: 5-7x slower than fedloom's",
        ),
    ]
    for r in rows:
        r["bounds"] = b
    return rows


def _per_op(fn: Callable[[int], None], ops: int, repeats: int) -> list[float]:
    fn(min(ops, 10))  # warm
    return [t / ops for t in common.timed(lambda: fn(ops), repeats)]


def crypto_rows(repeats: int, ops: int = OPS_PER_RUN) -> list[dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from protocol import crypto

    peers = [crypto.x25519_public_bytes(X25519PrivateKey.generate()) for _ in range(16)]
    mine = X25519PrivateKey.generate()
    ident = Ed25519PrivateKey.generate()
    pk = crypto.ed25519_public_bytes(ident)
    msgs = [os.urandom(200) for _ in range(16)]
    sigs = [ident.sign(m) for m in msgs]

    def keygen(k: int) -> None:
        for _ in range(k):
            crypto.x25519_public_bytes(crypto.x25519_from_random(os.urandom))

    def exchange(k: int) -> None:
        for i in range(k):
            crypto.x25519_exchange(mine, peers[i & 15])

    def sign(k: int) -> None:
        for i in range(k):
            ident.sign(msgs[i & 15])

    def verify(k: int) -> None:
        for i in range(k):
            if not crypto.verify_signature(pk, sigs[i & 15], msgs[i & 15]):
                raise AssertionError("signature did not verify")

    return [
        _cost_row(
            "x25519_keygen", "X25519 keygen (+ public bytes)", "1 op", _per_op(keygen, ops, repeats), "us", "38 us"
        ),
        _cost_row(
            "x25519_exchange",
            "X25519 exchange (fedloom wrapper)",
            "1 op",
            _per_op(exchange, ops, repeats),
            "us",
            "36 us",
        ),
        _cost_row(
            "ed25519_sign", "Ed25519 sign (200-byte transcript)", "1 op", _per_op(sign, ops, repeats), "us", "34 us"
        ),
        _cost_row(
            "ed25519_verify",
            "Ed25519 verify (fedloom verify_signature)",
            "1 op",
            _per_op(verify, ops, repeats),
            "us",
            "111 us",
        ),
    ]


SHAMIR_REFERENCE = {30: "0.1 ms (256-bit prime)", 100: "0.8 ms (256-bit prime)", 300: "6.9 ms (256-bit prime)"}


def shamir_rows(sizes: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    from protocol import shamir

    rows = []
    for n in sizes:
        t = n // 2
        holders = list(range(1, n + 1))
        secret = os.urandom(32)
        ops = max(1, 3000 // n)
        shares = shamir.split(secret, holders, t, os.urandom)
        part = dict(list(shares.items())[:t])
        if shamir.reconstruct(part, t) != secret:
            raise AssertionError("Shamir reconstruction failed")

        def split(k: int, secret: bytes = secret, holders: list[int] = holders, t: int = t) -> None:
            for _ in range(k):
                shamir.split(secret, holders, t, os.urandom)

        def rec(k: int, part: dict[int, int] = part, t: int = t) -> None:
            for _ in range(k):
                shamir.reconstruct(part, t)

        rows.append(
            _cost_row(
                "shamir_split",
                f"Shamir split (t = n/2 = {t})",
                f"n={n}",
                _per_op(split, ops, repeats),
                "ms",
                SHAMIR_REFERENCE.get(n, ""),
            )
        )
        rows.append(
            _cost_row(
                "shamir_reconstruct",
                f"Shamir reconstruct from t = {t} shares",
                f"n={n}",
                _per_op(rec, ops, repeats),
                "ms",
            )
        )
    return rows


def run(
    quick: bool = False, repeats: int | None = None, progress: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    repeats = repeats or (3 if quick else 7)
    sizes = (10**6,) if quick else (10**6, 10**7)
    rows: list[dict[str, Any]] = []

    def add(new: list[dict[str, Any]]) -> None:
        rows.extend(new)
        if progress:
            for r in new:
                progress(r)

    add(bound_rows(repeats))
    for d in sizes:
        add([mask_row(d, repeats)])
    for d in sizes:
        add([quantize_row(d, repeats)])
    add(flower_rows(10**6, repeats))
    ours = {r["key"]: r for r in rows if r["size"] == "d=1e6"}
    for key, theirs in (("mask", "flower_mask"), ("quantize", "flower_quantize")):
        if key in ours and theirs in ours:  # measured minutes apart in this run: a same-run ratio
            ours[theirs]["fedloom_speedup"] = ours[key]["value"] / ours[theirs]["value"]
    add(crypto_rows(repeats, ops=100 if quick else OPS_PER_RUN))
    add(shamir_rows(SHAMIR_SIZES[:2] if quick else SHAMIR_SIZES, repeats))
    return rows


def table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="fedloom primitives, one thread (median of runs; min-max below)")
    for col in ("primitive", "size", "value", "unit", "bound (same run)", "of bound", "reference (2026-11)"):
        t.add_column(col, justify="left" if col in ("primitive", "reference (2026-11)") else "right")
    for r in rows:
        fmt = "{:.3f}" if r["unit"] in ("G elem/s", "ms") else "{:.1f}"
        bound = "-" if "bound_value" not in r else f"{r['bound_name']} {r['bound_value']:.2f}"
        frac = "-" if "fraction_of_bound" not in r else f"{r['fraction_of_bound']:.0%}"
        if "fedloom_speedup" in r:
            frac += f"\n[dim]fedloom {r['fedloom_speedup']:.1f}x faster[/dim]"
        if "fraction_of_keystream_plus_add" in r:
            frac += f"\n[dim]{r['fraction_of_keystream_plus_add']:.0%} of ks+add[/dim]"
        t.add_row(r["primitive"], r["size"], common.span(r, "value", fmt), r["unit"], bound, frac, r["reference"])
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench primitives", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="d = 10^6 only, Shamir n = 30/100, 3 repeats")
    ap.add_argument("--repeats", type=int, help="runs per figure (default 7, quick 3)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as one JSON document ('-': stdout)")
    a = ap.parse_args(argv)
    if a.repeats is not None and a.repeats < 1:
        ap.error("--repeats must be at least 1")
    con = common.console(a.json == "-")
    rows = run(
        a.quick,
        a.repeats,
        progress=lambda r: con.print(f"[dim]{r['primitive']} {r['size']}: {r['value']:.3f} {r['unit']}[/dim]"),
    )
    doc = common.document("primitives", rows, argv)
    for line in common.header_lines(doc):
        con.print(line)
    con.print(table(rows))
    common.write_json(a.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

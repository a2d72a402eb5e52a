"""What secure aggregation costs on the wire: bytes a participant uploads and downloads per round.

    fedloom bench communication            # all settings, plus measured cross-checks
    fedloom bench communication --quick    # the same settings, a smaller measured cross-check
    fedloom bench communication --json comm.json

How the figures are made (exact, nothing extrapolated): for a setting (n members, d parameters,
graph degree k, dropped members) the messages ONE surviving participant sends and receives in a
round are built with the protocol's own dataclasses (`protocol.messages`), with dummy bytes of the
right fixed sizes, and `len(msg.encode())` is summed:

  up:   KeyBundle, ShareBundle (k encrypted share items), ShareReceipt (no complaints),
        MaskedInput (d + 1 ring elements), SurvivorSignature, UnmaskResponse (k released shares:
        one per neighbour in C1, seed or key share; both kinds have the same size)
  down: AdvertiseRequest, BundleSet (n bundles), ShareDelivery (k items), MaskRequest (n ids),
        SurvivorRequest (n + n_s ids), UnmaskRequest (n_s + n_d ids, n_s survivor signatures)

The encodings have no variable parts other than these counts, so the sums are exact for every
member and every dropout pattern with the same counts. The model each member downloads (4d bytes
of float32) is the same with and without secure aggregation and is not counted, nor is Flower's
record framing around the protocol bytes. Cross-check: the same sums next to the bytes counted
from the messages of a real round (`console.bench.protocol`, the timed member).

Expansion: the secure traffic over what a member would send in the clear — the float32 update
(4d bytes, what fedloom's plaintext mode uploads) and the 16-bit quantized update (2d bytes, the
baseline of Bonawitz et al. 2017, whose 1.73x (2^10 users, 2^20 elements) and 1.98x (2^14 users,
2^24 elements) count everything a user sends and receives). Our masked vector lives in a 32-bit
ring (the sum of n weighted 16-bit inputs must fit), so up/16-bit is at least 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from console.bench import common

BONAWITZ = {(1 << 10, 1 << 20): 1.73, (1 << 14, 1 << 24): 1.98}

# (n, d, dropout, graph): the protocol benchmark's sizes, the rounds benchmark's (30, 10^6), and
# the two settings Bonawitz et al. 2017 report. The graph is always complete (protocol/SECURITY.md).
SETTINGS: tuple[tuple[int, int, float, str], ...] = (
    (10, 10**6, 0.0, "complete"),
    (30, 10**6, 0.0, "complete"),
    (100, 10**6, 0.0, "complete"),
    (100, 10**7, 0.0, "complete"),
    (100, 10**7, 0.3, "complete"),
    (1000, 10**5, 0.0, "complete"),
    (1 << 10, 1 << 20, 0.0, "complete"),
    (1 << 14, 1 << 24, 0.0, "complete"),
)
MEASURED_FULL = ((10, 10**5, 0.3), (100, 10**5, 0.1))
MEASURED_QUICK = ((10, 10**4, 0.2),)


def degree_for(n: int, d: int, graph: str = "complete") -> tuple[int, int]:
    """(degree k, ring bits) for n members: the graph is complete, k = n - 1."""
    from protocol.params import ProtocolParams

    params = ProtocolParams.for_federation(d, n)
    return params.degree(n), params.ring_bits


def message_sizes(n: int, d: int, degree: int, dropped: int = 0, ring_bits: int = 32) -> dict[str, dict[str, int]]:
    """Encoded bytes of every message one surviving participant sends ('up') and receives ('down')."""
    from protocol import messages as m
    from protocol.crypto import KEY_BYTES, NONCE_BYTES, SIGNATURE_BYTES
    from protocol.shamir import ELEMENT_BYTES

    if not 0 <= dropped < n or not 1 <= degree <= n - 1:
        raise ValueError("need 0 <= dropped < n and 1 <= degree <= n - 1")
    r, me = 1 << 4, 1
    s = n - dropped
    session, key, sig = bytes(m.SESSION_BYTES), bytes(KEY_BYTES), bytes(SIGNATURE_BYTES)
    bundle = m.KeyBundle(r, me, key, key, sig)
    item = m.EncryptedShare(me, 2, bytes(32), bytes(NONCE_BYTES), bytes(m.SHARE_CIPHERTEXT_BYTES), sig)
    items = (item,) * degree
    revealed = m.RevealedShare(2, bytes(ELEMENT_BYTES), sig)
    signature = m.SurvivorSignature(r, me, session, sig)
    everyone = tuple(range(1, n + 1))
    survivors, gone = everyone[:s], everyone[s:]
    vector = np.zeros(d + 1, dtype=np.uint32 if ring_bits == 32 else np.uint64)
    up = {
        "KeyBundle": m.KeyBundle(r, me, key, key, sig),
        "ShareBundle": m.ShareBundle(r, me, session, bytes(32), items, sig),
        "ShareReceipt": m.ShareReceipt(r, me, session, (), tuple(range(2, degree + 2))),
        "MaskedInput": m.MaskedInput(r, me, session, vector, m.MaskAttestation(me, 3, sig)),
        "SurvivorSignature": signature,
        "UnmaskResponse": m.UnmaskResponse(r, me, session, (revealed,) * degree, ()),
    }
    down = {
        "AdvertiseRequest": m.AdvertiseRequest(r),
        "BundleSet": m.BundleSet(r, (bundle,) * n),
        "ShareDelivery": m.ShareDelivery(r, session, items),
        "MaskRequest": m.MaskRequest(r, session, everyone, (), 1, bytes(m.DIGEST_BYTES)),
        "SurvivorRequest": m.SurvivorRequest(r, session, everyone, survivors),
        "UnmaskRequest": m.UnmaskRequest(
            r, session, survivors, gone, (signature,) * s, tuple(m.MaskAttestation(j, 3, sig) for j in survivors)
        ),
    }
    out = {"up": {k: len(v.encode()) for k, v in up.items()}, "down": {k: len(v.encode()) for k, v in down.items()}}
    del vector, up
    return out


def setting_row(n: int, d: int, dropout: float = 0.0, graph: str = "complete") -> dict[str, Any]:
    k, ring = degree_for(n, d, graph)
    dropped = round(dropout * n)
    sizes = message_sizes(n, d, k, dropped, ring)
    up, down = sum(sizes["up"].values()), sum(sizes["down"].values())
    f32, q16 = 4 * d, 2 * d
    row: dict[str, Any] = {
        "n": n,
        "d": d,
        "dropout": dropout,
        "dropped": dropped,
        "graph": graph,
        "degree": k,
        "ring_bits": ring,
        "bytes_up": up,
        "bytes_down": down,
        "bytes_total": up + down,
        "messages": sizes,
        "plain_float32_bytes": f32,
        "quantized_16bit_bytes": q16,
        "expansion_up_over_float32": up / f32,
        "expansion_total_over_float32": (up + down) / f32,
        "expansion_up_over_16bit": up / q16,
        "expansion_total_over_16bit": (up + down) / q16,
        "protocol_overhead_bytes": up + down - sizes["up"]["MaskedInput"],
    }
    ref = BONAWITZ.get((n, d))
    if ref is not None:
        row["bonawitz_2017_expansion"] = ref
    return row


def measured_row(n: int, d: int, dropout: float) -> dict[str, Any]:
    """Bytes counted from a real round's messages (the protocol bench's timed member) beside our sums."""
    from console.bench import protocol as pb

    case = pb.Case(n, d, dropout)
    tf, pattern, degree, _ = pb.choose_threshold(case)
    params = pb._params(case, tf)
    x = np.random.default_rng(d).uniform(-0.5, 0.5, d).astype(np.float32)
    with pb._SHARED:
        got = pb._run_round(case, params, pattern, x, workers=1, seed=7, memory=False, count_bytes=True)
    row = setting_row(n, d, dropout)
    if row["degree"] != degree:
        raise AssertionError(f"degree {row['degree']} != {degree} of the real round")
    row["graph"] = "measured"
    row["measured_bytes_up"], row["measured_bytes_down"] = got["bytes_up"], got["bytes_down"]
    row["matches"] = (got["bytes_up"], got["bytes_down"]) == (row["bytes_up"], row["bytes_down"])
    return row


def run(quick: bool = False, progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    rows = []
    for n, d, p in MEASURED_QUICK if quick else MEASURED_FULL:
        rows.append(measured_row(n, d, p))
        if progress:
            progress(rows[-1])
    for n, d, p, g in SETTINGS:
        rows.append(setting_row(n, d, p, g))
        if progress:
            progress(rows[-1])
    return rows


def _mb(b: int) -> str:
    return f"{b / 1e6:.3f}" if b < 1e8 else f"{b / 1e6:.1f}"


def table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="bytes per participant per round (protocol messages; the model download is not counted)")
    cols = (
        "n",
        "d",
        "drop",
        "graph (k)",
        "up MB",
        "down MB",
        "overhead MB",
        "up/f32",
        "(up+down)/f32",
        "up/16b",
        "(up+down)/16b",
        "Bonawitz",
    )
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        up = _mb(r["bytes_up"])
        down = _mb(r["bytes_down"])
        if "measured_bytes_up" in r:
            ok = "[green]=[/green]" if r["matches"] else "[red]!=[/red]"
            up += f"\n[dim]{ok} measured {_mb(r['measured_bytes_up'])}[/dim]"
            down += f"\n[dim]{ok} measured {_mb(r['measured_bytes_down'])}[/dim]"
        n = r["n"]
        nn = f"2^{int(math.log2(n))}" if n & (n - 1) == 0 and n > 2 else str(n)
        d = r["d"]
        dd = f"2^{int(math.log2(d))}" if d & (d - 1) == 0 else common.fmt_d(d)
        t.add_row(
            nn,
            dd,
            f"{r['dropout']:.0%}",
            f"{r['graph']} ({r['degree']})",
            up,
            down,
            _mb(r["protocol_overhead_bytes"]),
            f"{r['expansion_up_over_float32']:.3f}",
            f"{r['expansion_total_over_float32']:.3f}",
            f"{r['expansion_up_over_16bit']:.3f}",
            f"{r['expansion_total_over_16bit']:.3f}",
            f"{r['bonawitz_2017_expansion']:.2f}" if "bonawitz_2017_expansion" in r else "",
        )
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedloom bench communication", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller measured cross-check")
    ap.add_argument("--json", metavar="PATH", help="write the rows as one JSON document ('-': stdout)")
    a = ap.parse_args(argv)
    con = common.console(a.json == "-")
    rows = run(a.quick)
    doc = common.document("communication", rows, argv)
    for line in common.header_lines(doc)[:1]:
        con.print(line)
    con.print(table(rows))
    bad = [r for r in rows if r.get("matches") is False]
    for r in bad:
        con.print(f"[red]n={r['n']} d={r['d']}: computed sizes differ from the measured round[/red]")
    common.write_json(a.json, doc)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A repeated request gets the same reply: the member keeps the exact bytes of its last answer.

Flower's SuperLink answers "Node Unavailable" for a node that missed its heartbeats, even when
the node already holds the message and is working on it; the coordinator then sends the message
again once the node is back (`coordinator.transport.exchange`). Answering the repeat afresh is
not an option: the protocol refuses a stage already done (a replay), and rightly so, since
masking a second, different update under the same pairwise masks would hand the coordinator the
difference of the two. Sending the very same bytes again tells the coordinator nothing new.

Only the last answer is kept (the coordinator repeats only the trip it is waiting on), in the
member's state directory, readable by the member alone. Simulated nodes keep none: nothing in
the Simulation Engine misses a heartbeat.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedloom.files import atomic_write

log = logging.getLogger("fedloom.participant")
REPLY_FILE = "last-reply.npz"


def request_digest(kind: str, round_: int, protocol_messages: list[bytes]) -> str:
    """What identifies a request: its kind, its training round and its protocol payload. Protocol
    messages carry their protocol round and are signed, so two distinct requests never match."""
    h = hashlib.sha256()
    h.update(f"{kind}\0{round_}\0{len(protocol_messages)}\0".encode())
    for raw in protocol_messages:
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()


@dataclass
class KeptReply:
    digest: str
    replies: list[bytes]
    info: dict = field(default_factory=dict)  # what the masked input carried (participant.secure.Masked), or {}
    fit: dict = field(default_factory=dict)  # the training metrics the reply carried


def load(state_dir: Path, digest: str) -> KeptReply | None:
    """The kept reply if it answers the request with this digest, else None. An unreadable file
    counts as none: answering afresh is always safe (the protocol refuses a stage done twice)."""
    path = state_dir / REPLY_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["digest"]) != digest:
                return None
            meta = json.loads(str(z["meta"]))
            replies = [z[f"reply-{i}"].tobytes() for i in range(int(meta["count"]))]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the kept reply %s: unreadable (%s)", path, exc)
        return None
    return KeptReply(digest, replies, meta["info"], meta["fit"])


def _plain(value: object) -> object:
    """numpy and torch scalars as Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot keep a {type(value).__name__} in a reply record")


def save(state_dir: Path, kept: KeptReply) -> None:
    """Replace the kept reply atomically (a crash leaves the old one or the new one)."""
    meta = {"count": len(kept.replies), "info": kept.info, "fit": kept.fit}
    arrays = {f"reply-{i}": np.frombuffer(raw, dtype=np.uint8) for i, raw in enumerate(kept.replies)}

    def write(tmp: str) -> None:  # straight into the file: an in-memory archive would be two more copies of 4d
        with open(tmp, "wb") as f:
            np.savez(f, digest=np.array(kept.digest), meta=np.array(json.dumps(meta, default=_plain)), **arrays)

    atomic_write(state_dir / REPLY_FILE, write, mode=0o600)

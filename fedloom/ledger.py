"""The round ledger: what the coordinator did in each round, append-only, hash-chained, signed.

A ledger is a UTF-8 file of JSON objects, one per line, each line ending in "\\n":

    {"index":0,"kind":"genesis","time":"2025-01-01T00:00:00.000Z","prev":"000…0",<payload>,"hash":"…","signature":"…"}

* `index` counts from 0; `kind` is "genesis" (line 1, only there), "round" or "resume";
  `time` is UTC ISO-8601; `prev` is the previous entry's `hash` (64 zeros for the genesis).
* The payload keys follow, sorted (required keys per kind in `REQUIRED`; extra keys are allowed and covered
  by the hash, for forward compatibility).
* `hash` = hex SHA-256 of the canonical JSON of the entry without `hash` and `signature`:
  `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` encoded as UTF-8.
* `signature` = hex Ed25519 signature by the coordinator's ledger key over `DOMAIN + bytes.fromhex(hash)`.
* A line is exactly `encode_entry(entry)`: header keys, sorted payload keys, `hash`, `signature`, compact JSON,
  lowercase hex. Verification re-encodes every line and compares bytes, so *any* edit — even one that parses to
  the same values (`1e-05` → `1E-05`, `\\u001f` → `\\u001F`, hex case) — is caught.

The coordinator writes with `LedgerWriter`; anyone checks with `verify` (against the key from their own kit, or
else against the genesis's `ledger_key`: "self-certified", which proves integrity but not authorship); a member
keeps its own copy of the entries it was sent with `LedgerCopy`, which refuses forks and bad signatures, and a
sender's head older than its own newest entry (a truncated ledger). `signed_models` reads the current model's hash
out of a verified history (a genesis may pin the initial one as `initial_model_hash`); `compare` tells whether a
ledger is a cut-off or forked version of another copy, which no single file can show.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedloom.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

DOMAIN = b"fedloom/ledger/v1\n"
GENESIS_PREV = "0" * 64
KINDS = ("genesis", "round", "resume")
HEADER = ("index", "kind", "time", "prev")
TRAILER = ("hash", "signature")
FILE_MODE = 0o644

_HEX = re.compile(r"[0-9a-f]*")


class LedgerError(Exception):
    """A ledger is broken, forked, or cannot be written; the message says which entry and what."""


class LedgerTruncated(LedgerError):
    """The sender's newest signed entry is older than one this copy holds: its ledger was cut back (rolled back)."""


class LedgerGap(LedgerError):
    """A member's copy was sent entries past its end: not evidence of anything, ask for the missing ones."""

    def __init__(self, message: str, next_index: int) -> None:
        super().__init__(message)
        self.next_index = next_index


class _Bad(Exception):
    """One entry is wrong: the message, without a line number."""


# ------------------------------------------------------------------ payload rules


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_hex(v: object, nbytes: int) -> bool:
    return isinstance(v, str) and len(v) == 2 * nbytes and _HEX.fullmatch(v) is not None


def _is_id(v: object) -> bool:
    return _is_int(v) or isinstance(v, str)


def _is_ids(v: object) -> bool:
    return isinstance(v, list) and all(_is_id(x) for x in v)


def _is_records(*fields: tuple[str, Any]):
    def check(v: object) -> bool:
        return isinstance(v, list) and all(
            isinstance(x, dict) and all(k in x and ok(x[k]) for k, ok in fields) for x in v
        )

    return check


def _is_metrics(v: object) -> bool:
    return isinstance(v, dict) and all(
        x is None or (isinstance(x, int | float) and not isinstance(x, bool)) for x in v.values()
    )


_STR = (lambda v: isinstance(v, str), "a string")
_NAME = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_HASH = (lambda v: _is_hex(v, 32), "64 lowercase hex digits")
_COUNT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")

# kind -> (key, check, what it must be); the payload may hold more keys than these
REQUIRED: dict[str, tuple[tuple[str, Any, str], ...]] = {
    "genesis": (("federation", *_NAME), ("plan_hash", *_HASH), ("roster_hash", *_HASH), ("ledger_key", *_HASH)),
    "round": (
        ("round", *_COUNT),
        ("plan_hash", *_HASH),
        ("asked", _is_ids, "a list of member ids"),
        ("aggregated", _is_ids, "a list of member ids"),
        (
            "dropped",
            _is_records(("member", lambda v: v is None or _is_id(v)), ("stage", _STR[0])),
            'a list of {"member", "stage"}',
        ),
        (
            "refusals",
            _is_records(("member", _is_id), ("round", _is_int), ("rule", _STR[0]), ("reason", _STR[0])),
            'a list of {"member", "round", "rule", "reason"}',
        ),
        ("skipped", lambda v: v is None or isinstance(v, str), "null or a string"),
        ("model_hash", lambda v: v is None or _is_hex(v, 32), "null or 64 lowercase hex digits"),
        ("metrics", _is_metrics, "an object of numbers (or null)"),
    ),
    "resume": (("from_round", *_COUNT), ("reason", *_STR)),
}


def _check_payload(entry: dict[str, Any]) -> None:
    kind = entry["kind"]
    for key, ok, what in REQUIRED[kind]:
        if key not in entry:
            raise _Bad(f"{kind} entry has no '{key}'")
        if not ok(entry[key]):
            raise _Bad(f"{kind} entry: '{key}' must be {what}")
    if kind == "round" and entry["model_hash"] is None and entry["skipped"] is None:
        raise _Bad("round entry: 'model_hash' is null but the round was not skipped")
    if kind == "genesis" and "initial_model_hash" in entry and not _is_hex(entry["initial_model_hash"], 32):
        raise _Bad("genesis entry: 'initial_model_hash' must be 64 lowercase hex digits")


# ------------------------------------------------------------------ encoding


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def canonical_bytes(entry: dict[str, Any]) -> bytes:
    """What `hash` covers: the entry without `hash` and `signature`, canonical JSON, UTF-8."""
    return _dumps({k: v for k, v in entry.items() if k not in TRAILER}).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def encode_entry(entry: dict[str, Any]) -> str:
    """The one line (without "\\n") an entry is stored as: header, sorted payload, hash, signature."""
    payload = sorted(k for k in entry if k not in HEADER and k not in TRAILER)
    keys = [k for k in HEADER if k in entry] + payload + [k for k in TRAILER if k in entry]
    return "{" + ",".join(f"{_dumps(k)}:{_dumps(entry[k])}" for k in keys) + "}"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return bytes(key)
    raise LedgerError("a ledger public key is 32 raw bytes (Ed25519)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_entry(raw: bytes | str) -> dict[str, Any]:
    """Parse one line and check its form and its own hash (not its signature, not its place in the chain)."""
    text = _line_text(raw)
    obj = _json_object(text)
    _check_header(obj)
    if encode_entry(obj) != text:
        raise _Bad("not in canonical form (the line was edited)")
    if entry_hash(obj) != obj["hash"]:
        raise _Bad("hash does not match the entry's contents")
    return obj


def _line_text(raw: bytes | str) -> str:
    """A line as text: bytes must be UTF-8 and the line not empty, before JSON ever sees it."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("not valid UTF-8") from None
    else:
        text = raw
    if not text:
        raise _Bad("empty line")
    return text


def _json_object(text: str) -> dict[str, Any]:
    """Strict JSON (no duplicate keys, no NaN/Infinity) that is an object: one reading per line, whoever parses it."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _Bad("not a JSON object")
    return obj


def _check_header(obj: dict[str, Any]) -> None:
    """The fields every entry has, each of its type, so later checks can index them without guarding."""
    for key in HEADER + TRAILER:
        if key not in obj:
            raise _Bad(f"no '{key}' field")
    if not _is_int(obj["index"]) or obj["index"] < 0:
        raise _Bad("'index' must be an integer >= 0")
    if obj["kind"] not in KINDS:
        raise _Bad(f"unknown kind {obj['kind']!r} (expected one of {', '.join(KINDS)})")
    if not _is_hex(obj["prev"], 32) or not _is_hex(obj["hash"], 32):
        raise _Bad("'prev' and 'hash' must be 64 lowercase hex digits")
    if not _is_hex(obj["signature"], 64):
        raise _Bad("'signature' must be 128 lowercase hex digits")
    if not _is_utc_time(obj["time"]):
        raise _Bad("'time' must be a UTC ISO-8601 time")


def _is_utc_time(v: object) -> bool:
    """An ISO-8601 string with a zero UTC offset: a time without an offset, or another zone, is refused."""
    try:
        when = datetime.fromisoformat(v) if isinstance(v, str) else None
    except ValueError:
        when = None
    return not (when is None or when.utcoffset() is None or when.utcoffset().total_seconds() != 0)


def _check_signature(obj: dict[str, Any], key: bytes) -> None:
    if not _signature_ok(key, bytes.fromhex(obj["signature"]), bytes.fromhex(obj["hash"])):
        raise _Bad("bad signature")


@functools.lru_cache(maxsize=4096)
def _signature_ok(key: bytes, signature: bytes, digest: bytes) -> bool:
    """Cached on all three inputs: members re-read their whole copy on every message."""
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, DOMAIN + digest)
    except (InvalidSignature, ValueError):
        return False
    return True


def _load_key(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise _Bad(f"ledger_key is not an Ed25519 public key ({exc})") from None


def _seal(index: int, kind: str, prev: str, payload: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "kind": kind, "time": _utc_now(), "prev": prev, **payload}
    entry["hash"] = entry_hash(entry)
    entry["signature"] = key.sign(DOMAIN + bytes.fromhex(entry["hash"])).hex()
    return entry


def _normalize(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON values (tuples -> lists, numpy floats -> float, NaN/inf metrics -> null), then the kind's rules."""
    if kind not in KINDS:
        raise LedgerError(f"unknown ledger entry kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not isinstance(payload, dict):
        raise LedgerError(f"{kind} payload must be a dict")
    clash = sorted(set(payload) & set(HEADER + TRAILER))
    if clash:
        raise LedgerError(f"{kind} payload may not set {', '.join(clash)}: the ledger sets those")
    payload = dict(payload)
    if isinstance(payload.get("metrics"), dict):
        payload["metrics"] = {str(k): _metric(k, v) for k, v in payload["metrics"].items()}
    try:
        payload = json.loads(_dumps(payload))
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"{kind} payload is not plain JSON: {exc}") from None
    try:
        _check_payload({"kind": kind, **payload})
    except _Bad as exc:
        raise LedgerError(str(exc)) from None
    return payload


def _metric(name: object, v: Any) -> float | int | None:
    if v is None or (_is_int(v)):
        return v
    if isinstance(v, bool):
        raise LedgerError(f"metric {name!r} is a bool, not a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise LedgerError(f"metric {name!r} is not a number: {v!r}") from None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------------ verification


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int  # entries that verified (all of them when ok; those before the first error otherwise)
    rounds: int  # "round" entries among those
    first_error: str | None  # "line N: <what broke>" (lines count from 1)
    key_source: str  # "kit": checked against the key given; "genesis": against the ledger's own (self-certified)
    last_hash: str | None = None  # hash of the last entry that verified

    @property
    def self_certified(self) -> bool:
        return self.key_source == "genesis"


@dataclass
class _Scan:
    report: VerifyReport
    hashes: list[str]
    genesis: dict[str, Any] | None
    entries: list[dict[str, Any]]


def _lines_of(source: str | os.PathLike | bytes | Iterable[str | bytes]) -> Iterator[tuple[bytes | str, bool]]:
    """(line, complete) pairs: a file's last line without "\\n" is incomplete (a partial write)."""
    if isinstance(source, str | os.PathLike):
        source = Path(source).read_bytes()
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
        if not data:
            return
        parts = data.split(b"\n")
        tail = parts.pop()  # b"" when the file ends with "\n"
        yield from ((p, True) for p in parts)
        if tail:
            yield tail, False
        return
    for line in source:
        if isinstance(line, bytes | bytearray):
            yield (bytes(line[:-1]) if line.endswith(b"\n") else bytes(line)), True
        else:
            yield (line[:-1] if line.endswith("\n") else line), True


def _scan(
    source: str | os.PathLike | bytes | Iterable[str | bytes],
    public_key: Ed25519PrivateKey | Ed25519PublicKey | bytes | None,
) -> _Scan:
    given = _public_bytes(public_key) if public_key is not None else None
    key_source = "kit" if given is not None else "genesis"
    hashes: list[str] = []
    entries: list[dict[str, Any]] = []
    rounds = 0
    genesis: dict[str, Any] | None = None
    key: bytes | None = given

    def report(error: str | None) -> _Scan:
        rep = VerifyReport(error is None, len(hashes), rounds, error, key_source, hashes[-1] if hashes else None)
        return _Scan(rep, hashes, genesis, entries)

    n = 0
    for n, (raw, complete) in enumerate(_lines_of(source), start=1):
        if not complete:
            return report(f"line {n}: truncated (no newline at the end: a partial write?)")
        try:
            obj = _parse_entry(raw)
            i = n - 1
            key = _signing_key(obj, i, given, key)
            _check_signature(obj, key)
            _check_place(obj, i, hashes)
            _check_payload(obj)
        except _Bad as exc:
            return report(f"line {n}: {exc}")
        if i == 0:
            genesis = obj
        hashes.append(obj["hash"])
        entries.append(obj)
        rounds += obj["kind"] == "round"
    if n == 0:
        return report("line 1: empty ledger (no genesis)")
    return report(None)


def _signing_key(obj: dict[str, Any], i: int, given: bytes | None, key: bytes | None) -> bytes:
    """The key entry `i` must be signed with: the genesis (only entry 0) is checked first, since it names the key."""
    if i == 0:
        own = _genesis_key(obj, given)
        if key is None:
            _load_key(own)
            key = own
    elif obj["kind"] == "genesis":
        raise _Bad("a second genesis (only line 1 may be one)")
    assert key is not None
    return key


def _genesis_key(obj: dict[str, Any], given: bytes | None) -> bytes:
    """The ledger key the first entry names: it must be a genesis, and name the verifier's key when one is given."""
    if obj["kind"] != "genesis":
        raise _Bad(f"the first entry must be the genesis, not a {obj['kind']!r} entry")
    _check_payload(obj)
    own = bytes.fromhex(obj["ledger_key"])
    if given is not None and own != given:
        raise _Bad(
            f"the genesis ledger_key {own.hex()[:16]}… is not the expected key {given.hex()[:16]}… (key substituted?)"
        )
    return own


def _check_place(obj: dict[str, Any], i: int, hashes: list[str]) -> None:
    """Entry `i` (line i + 1) links to the one before it and carries its own position: no reorder, no splice."""
    if i == 0 and obj["prev"] != GENESIS_PREV:
        raise _Bad("the genesis 'prev' must be 64 zeros")
    if i > 0 and obj["prev"] != hashes[-1]:
        raise _Bad(f"prev does not match line {i}")  # line i is entry i - 1, the one before
    if obj["index"] != i:
        raise _Bad(f"index is {obj['index']}, expected {i}")


def verify(
    path_or_lines: str | os.PathLike | bytes | Iterable[str | bytes], public_key: bytes | Ed25519PublicKey | None = None
) -> VerifyReport:
    """Check a whole ledger: a file path, its bytes, or its lines (str or bytes, "\\n" optional).

    With `public_key` (the coordinator's ledger key from the verifier's own kit) every signature is checked against
    it and the genesis must name it; without, against the genesis's `ledger_key` (key_source "genesis",
    self-certified). Never raises for a broken ledger: see `first_error`. OSError if the file cannot be read.
    """
    return _scan(path_or_lines, public_key).report


def read_verified(path: str | os.PathLike, public_key: bytes | Ed25519PublicKey) -> list[dict[str, Any]]:
    """Every entry of the ledger at `path`, checked against `public_key`; LedgerError (one line) if it is broken."""
    scan = _scan(path, public_key)
    if not scan.report.ok:
        raise LedgerError(f"{path}: {scan.report.first_error}")
    return scan.entries


def signed_models(entries: Iterable[dict[str, Any]]) -> dict[int, str | None]:
    """The model after each round as the signed history now stands: {round: model_hash}.

    Round 0 is the initial model: the genesis's `initial_model_hash` (None when the genesis names none, i.e. the
    initial model is not pinned). A `resume` entry from round f takes back the rounds >= f (a restarted
    coordinator redoes them from its checkpoint), and so does a later entry for an earlier round; a skipped round
    without a hash keeps the model before it. Why: a checkpoint, or a model a member receives, is only trusted if
    it is the model this signed history says is current, so the history must say exactly one current model.
    """
    models: dict[int, str | None] = {}
    for e in entries:
        if e["kind"] == "genesis":
            models = {0: e.get("initial_model_hash")}
        elif e["kind"] == "resume":
            models = {r: h for r, h in models.items() if r < int(e["from_round"])}
        elif e["kind"] == "round":
            r = int(e["round"])
            models = {k: h for k, h in models.items() if k < r}
            models[r] = e["model_hash"] or (models[max(models)] if models else None)
    return models


@dataclass(frozen=True)
class Comparison:
    """How one ledger relates to another copy of the same history (see `compare`)."""

    verdict: str  # "same" | "ahead" (this ledger extends the other) | "truncated" | "fork" | "broken"
    detail: str  # one line for people

    @property
    def ok(self) -> bool:
        return self.verdict in ("same", "ahead")


def compare(
    ledger: str | os.PathLike, other: str | os.PathLike, public_key: bytes | Ed25519PublicKey | None = None
) -> Comparison:
    """Check `ledger` against `other` (e.g. a member's own copy): a verified ledger can still be a cut-off or
    rewritten history, which only another copy reveals. Truncated: `other` holds signed entries past this
    ledger's end. Fork: the same index with two different entries (both signed, so the signer rewrote history).
    """
    a, b = _scan(ledger, public_key), _scan(other, public_key)
    for name, scan in ((ledger, a), (other, b)):
        if not scan.report.ok:
            return Comparison("broken", f"{name}: {scan.report.first_error}")
    for i, (x, y) in enumerate(zip(a.hashes, b.hashes, strict=False)):
        if x != y:
            return Comparison("fork", f"entry {i} differs: {x} in {ledger}, {y} in {other}")
    na, nb = len(a.hashes), len(b.hashes)
    if na < nb:
        return Comparison(
            "truncated",
            f"{ledger} ends at entry {na - 1} but {other} holds signed entries up to {nb - 1} (head {b.hashes[-1]})",
        )
    if na > nb:
        return Comparison("ahead", f"{ledger} extends {other} by {na - nb} entries")
    return Comparison("same", f"{ledger} and {other} hold the same {na} entries (head {a.hashes[-1]})")


def ledger_length(path: str | os.PathLike) -> int:
    """Complete lines (entries) in a ledger file, without checking them."""
    return Path(path).read_bytes().count(b"\n")


def entries_since(path: str | os.PathLike, index: int, limit: int | None = None) -> list[str]:
    """The coordinator's entries from `index` on (at most `limit`, the oldest first), as lines without "\\n".

    For message configs: a member passes its `LedgerCopy.next_index`, and `LedgerCopy.extend` checks what it gets.
    """
    lines = Path(path).read_bytes().split(b"\n")[:-1]  # a partial last line is never sent
    picked = lines[max(index, 0) :]
    if limit is not None:
        picked = picked[: max(limit, 0)]
    out = []
    for i, raw in enumerate(picked, start=max(index, 0)):
        try:
            text = raw.decode("utf-8")
            at = json.loads(text).get("index")
        except (ValueError, AttributeError):
            at = None
        if at != i:
            raise LedgerError(f"{path}: line {i + 1} is not entry {i}; run `fedloom ledger verify {path}`")
        out.append(text)
    return out


# ------------------------------------------------------------------ files


def _read_fd(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lock(fd: int, blocking: bool) -> None:
    if fcntl is None:  # pragma: no cover
        return
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))


def _append_durably(fd: int, data: bytes, size: int) -> None:
    """Write all of `data` at the end (O_APPEND) and fsync; on failure cut the file back to `size`."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
            os.fsync(fd)
        raise


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _open_append(path: Path, create: bool) -> int:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), FILE_MODE)
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_size == 0:
            os.fchmod(fd, FILE_MODE)
    return fd


def _create_with(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, all or nothing: a crash leaves no half-written genesis behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        _append_durably(fd, data, 0)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if the ledger appeared meanwhile: never clobber one
    except FileExistsError:
        raise LedgerError(f"{path} appeared while it was being created; open it again") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class LedgerWriter:
    """The coordinator's side: appends signed entries to its ledger. Use `LedgerWriter.open`; close when done."""

    def __init__(self, path: Path, key: Ed25519PrivateKey, fd: int, hashes: list[str], size: int) -> None:
        self.path = path
        self._key = key
        self.public_key = _public_bytes(key)
        self._fd: int | None = fd
        self._next = len(hashes)
        self._last = hashes[-1]
        self._size = size

    @classmethod
    def open(
        cls, path: str | os.PathLike, key: Ed25519PrivateKey, genesis: dict[str, Any] | None = None
    ) -> LedgerWriter:
        """Start a ledger at `path` with a genesis entry if there is none, else verify it and continue it.

        `genesis` holds federation, plan_hash and roster_hash (ledger_key is filled in from `key`). Continuing an
        existing ledger, the given genesis fields must match the ones it started with (None: accept any).
        Raises LedgerError on a broken ledger (never appends to one), another key's ledger, or a second writer.
        """
        path = Path(path)
        pub = _public_bytes(key)
        if not path.exists():
            if genesis is None:
                raise LedgerError(f"{path} does not exist and no genesis was given to start it")
            payload = dict(genesis)
            payload.setdefault("ledger_key", pub.hex())
            if payload["ledger_key"] != pub.hex():
                raise LedgerError("genesis ledger_key is not the public key of the key signing the ledger")
            entry = _seal(0, "genesis", GENESIS_PREV, _normalize("genesis", payload), key)
            _create_with(path, (encode_entry(entry) + "\n").encode("utf-8"))
        fd = _open_append(path, create=False)
        try:
            try:
                _lock(fd, blocking=False)
            except BlockingIOError:
                raise LedgerError(f"{path} is open in another ledger writer") from None
            data = _read_fd(fd)
            scan = _scan(data, pub)
            if not scan.report.ok:
                raise LedgerError(f"{path}: refusing to append to a broken ledger: {scan.report.first_error}")
            assert scan.genesis is not None
            for k, v in (genesis or {}).items():
                if scan.genesis.get(k) != v:
                    raise LedgerError(
                        f"{path} belongs to another run: its genesis has {k}={scan.genesis.get(k)!r}, not {v!r}"
                    )
            return cls(path, key, fd, scan.hashes, len(data))
        except BaseException:
            os.close(fd)
            raise

    @property
    def next_index(self) -> int:
        return self._next

    @property
    def last_hash(self) -> str:
        return self._last

    def append(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Sign and durably write one "round" or "resume" entry; returns it (with index, time, hash, signature)."""
        if self._fd is None:
            raise LedgerError(f"{self.path}: the ledger writer is closed")
        if kind == "genesis":
            raise LedgerError("a ledger has one genesis, written when it is created")
        entry = _seal(self._next, kind, self._last, _normalize(kind, payload), self._key)
        try:
            data = (encode_entry(entry) + "\n").encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LedgerError(f"{kind} payload holds text that is not valid Unicode: {exc}") from None
        if os.fstat(self._fd).st_size != self._size:
            raise LedgerError(f"{self.path} changed since it was opened; refusing to append")
        try:
            _append_durably(self._fd, data, self._size)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot append: {exc}") from exc
        self._size += len(data)
        self._next += 1
        self._last = entry["hash"]
        return entry

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class LedgerCopy:
    """A member's own copy of the ledger entries the coordinator sent it, each checked before it is kept.

    `extend` accepts only entries signed by the coordinator's key (from the member's kit) that chain onto the copy;
    an entry that contradicts one the copy already holds (same index, other hash) is a fork: evidence that the
    coordinator rewrote history, refused with LedgerError (and nothing of that batch is kept).
    """

    def __init__(self, path: str | os.PathLike, public_key: bytes | Ed25519PublicKey) -> None:
        self.path = Path(path)
        self.public_key = _public_bytes(public_key)
        self._hashes: list[str] = []
        self._size = 0
        if self.path.exists():
            self._load(self.path.read_bytes())

    def _load(self, data: bytes) -> None:
        if not data:  # created, nothing written yet
            self._hashes, self._size = [], 0
            return
        scan = _scan(data, self.public_key)
        if not scan.report.ok:
            raise LedgerError(f"{self.path}: this member's ledger copy is broken: {scan.report.first_error}")
        self._hashes, self._size = scan.hashes, len(data)

    @property
    def next_index(self) -> int:
        """The first index this copy lacks: what to ask the coordinator for."""
        return len(self._hashes)

    @property
    def last_hash(self) -> str | None:
        return self._hashes[-1] if self._hashes else None

    def entries(self) -> list[dict[str, Any]]:
        """The entries this copy holds, checked again (signatures are cached)."""
        return read_verified(self.path, self.public_key) if self.path.exists() and self.path.stat().st_size else []

    def check_head(self, line: str | bytes) -> None:
        """`line` is the sender's newest signed entry (its head): refuse it when it is behind this copy.

        An honest coordinator's ledger only grows, so a head older than the newest entry this member already holds
        means its ledger was cut back (truncated or rolled back to an earlier state): LedgerTruncated. A head with
        another hash at a held index is a fork (LedgerError); one past the copy's end is a LedgerGap.
        """
        if self._check(line, list(self._hashes)) is not None:
            return  # newer than this copy (extend keeps it)
        text = bytes(line).decode("utf-8") if isinstance(line, bytes | bytearray) else line
        index, newest = int(json.loads(text)["index"]), len(self._hashes) - 1
        if index < newest:
            raise LedgerTruncated(
                f"the coordinator's ledger ends at entry {index}, but this member holds signed entries up to "
                f"{newest} (head {self._hashes[-1][:16]}…): its ledger was truncated or rolled back"
            )

    def extend(self, lines: str | bytes | Iterable[str | bytes]) -> list[dict[str, Any]]:
        """Check and keep new entries (a list of lines, or one text of "\\n"-separated lines); returns the new ones.

        Entries the copy already holds are skipped (idempotent). Raises LedgerError for a fork, a bad signature,
        a broken or rewritten chain; LedgerGap when the entries start past the copy's end.
        """
        if isinstance(lines, str):
            lines = [x for x in lines.split("\n") if x]
        elif isinstance(lines, bytes | bytearray):
            lines = [x for x in bytes(lines).split(b"\n") if x]
        lines = list(lines)
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self._size:
            self._load(self.path.read_bytes())
        if not self._plan(lines)[0]:  # nothing new: do not even create the file
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_append(self.path, create=True)
        try:
            _lock(fd, blocking=True)  # two messages of one node handled at once: one at a time
            if os.fstat(fd).st_size != self._size:
                self._load(_read_fd(fd))
            new, hashes = self._plan(lines)
            if new:
                data = "".join(encode_entry(e) + "\n" for e in new).encode("utf-8")
                try:
                    _append_durably(fd, data, self._size)
                except OSError as exc:
                    raise LedgerError(f"{self.path}: cannot append: {exc}") from exc
                self._hashes, self._size = hashes, self._size + len(data)
            return new
        finally:
            os.close(fd)

    def _plan(self, lines: list[str | bytes]) -> tuple[list[dict[str, Any]], list[str]]:
        """Check a batch against the copy: (the entries to add, the copy's hashes after adding them)."""
        hashes = list(self._hashes)
        new: list[dict[str, Any]] = []
        for raw in lines:
            obj = self._check(raw, hashes)
            if obj is not None:
                hashes.append(obj["hash"])
                new.append(obj)
        return new, hashes

    def _check(self, raw: str | bytes, hashes: list[str]) -> dict[str, Any] | None:
        raw = bytes(raw).removesuffix(b"\n") if isinstance(raw, bytes | bytearray) else raw.removesuffix("\n")
        try:
            obj = _parse_entry(raw)
        except _Bad as exc:
            raise LedgerError(f"coordinator sent a broken ledger entry: {exc}") from None
        i = obj["index"]
        try:
            _check_signature(obj, self.public_key)
        except _Bad:
            raise LedgerError(f"ledger entry {i}: bad signature (not signed by the coordinator's ledger key)") from None
        if i < len(hashes):
            if hashes[i] != obj["hash"]:
                raise LedgerError(
                    f"ledger fork at entry {i}: the coordinator sent hash {obj['hash'][:16]}… but "
                    f"signed {hashes[i][:16]}… for it before (it rewrote history)"
                )
            return None
        if i > len(hashes):
            raise LedgerGap(f"ledger entry {i} sent, but this copy ends before entry {len(hashes)}", len(hashes))
        try:
            self._check_link(obj, i, hashes)
        except _Bad as exc:
            raise LedgerError(f"ledger entry {i}: {exc}") from None
        return obj

    def _check_link(self, obj: dict[str, Any], i: int, hashes: list[str]) -> None:
        """A new entry `i` (the copy's next one) extends the chain: a genesis under this key first, then links."""
        if i == 0:
            if obj["kind"] != "genesis":
                raise _Bad(f"entry 0 must be the genesis, not a {obj['kind']!r} entry")
            if obj["prev"] != GENESIS_PREV:
                raise _Bad("the genesis 'prev' must be 64 zeros")
            _check_payload(obj)
            if obj["ledger_key"] != self.public_key.hex():
                raise _Bad("the genesis names another ledger key")
        else:
            if obj["kind"] == "genesis":
                raise _Bad("a second genesis")
            if obj["prev"] != hashes[-1]:
                raise _Bad(f"prev does not match entry {i - 1} (the chain was rewritten)")
            _check_payload(obj)


# ------------------------------------------------------------------ key files


def write_public_key(path: str | os.PathLike, key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> None:
    """The coordinator's ledger public key as one line of hex (what kits carry as ledger.pub)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_public_bytes(key).hex() + "\n")
    os.chmod(path, FILE_MODE)


def read_public_key(path: str | os.PathLike) -> bytes:
    """A ledger public key file, hex (64 digits) or PEM (SubjectPublicKeyInfo); 32 raw bytes. UserError if bad."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"ledger key file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read ledger key {path}: {exc.strerror or exc}") from None
    text = data.strip()
    if b"PRIVATE KEY" in text:
        raise UserError(f"{path} is a private key; give the coordinator's ledger PUBLIC key (ledger.pub)")
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise UserError(f"{path} is not a valid PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise UserError(f"{path} is not an Ed25519 public key")
        return _public_bytes(key)
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UserError(f"{path} is not a ledger public key (expected 64 hex digits or a PEM public key)")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise UserError(f"{path} is not an Ed25519 public key: {exc}") from None
    return raw

"""The round ledger: append-only, hash-chained, signed; every edit is caught and pinned to its line."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from console.cli import app
from fedloom import ledger
from fedloom.errors import UserError
from fedloom.ledger import LedgerCopy, LedgerError, LedgerGap, LedgerWriter, entries_since, verify

KEY = Ed25519PrivateKey.generate()  # the coordinator's ledger key
PUB = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
MALLORY = Ed25519PrivateKey.generate()
GENESIS = {"federation": "consortium-test", "plan_hash": "11" * 32, "roster_hash": "22" * 32}
ZEROS = "0" * 64


def round_payload(r: int, **over) -> dict:
    payload = {
        "round": r,
        "plan_hash": "11" * 32,
        "asked": [1, 2, 3, 4],
        "aggregated": [1, 2, 4] if r % 2 else [1, 2, 3, 4],
        "dropped": [{"member": 3, "stage": "masked-input"}] if r % 2 else [],
        "refusals": [{"member": 4, "round": r, "rule": "plan-hash", "reason": "refusé: plan\x1fchanged"}]
        if r == 2
        else [],
        "skipped": None,
        "model_hash": hashlib.sha256(f"model {r}".encode()).hexdigest(),
        "metrics": {"train_loss": 1e-05 * r, "eval_loss": 0.5 / r, "eval_accuracy": 0.25 * r},
    }
    payload.update(over)
    return payload


def build(path: Path, key: Ed25519PrivateKey = KEY) -> Path:
    """genesis, rounds 1-3, a resume, rounds 3-4: 7 entries, 5 of them rounds."""
    with LedgerWriter.open(path, key, GENESIS) as w:
        for r in (1, 2, 3):
            w.append("round", round_payload(r))
        w.append("resume", {"from_round": 3, "reason": "coordinator restarted"})
        w.append("round", round_payload(3))
        w.append("round", round_payload(4, skipped="no participant replied", model_hash=None, aggregated=[]))
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return build(tmp_path / "ledger.jsonl")


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def entries_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in lines_of(path)]


def seal(entry: dict, key: Ed25519PrivateKey) -> dict:
    """The format as the spec states it, independently of fedloom.ledger."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    digest = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ).digest()
    return {**body, "hash": digest.hex(), "signature": key.sign(b"fedloom/ledger/v1\n" + digest).hex()}


def rechain(entries: list[dict], key: Ed25519PrivateKey) -> list[dict]:
    out: list[dict] = []
    for e in entries:
        out.append(seal({**e, "prev": out[-1]["hash"] if out else ZEROS}, key))
    return out


def dump(entries: list[dict]) -> bytes:
    return "".join(ledger.encode_entry(e) + "\n" for e in entries).encode("utf-8")


# ------------------------------------------------------------------ a good ledger


def test_good_ledger_verifies(good):
    report = verify(good, PUB)
    assert report.ok and report.first_error is None
    assert (report.entries, report.rounds, report.key_source) == (7, 5, "kit")
    own = verify(good)
    assert own.ok and own.key_source == "genesis" and own.self_certified
    assert verify(good.read_bytes(), KEY.public_key()).ok
    assert verify(good.read_text().splitlines(), PUB).ok  # lines, as a coordinator sends them
    assert oct(good.stat().st_mode & 0o777) == "0o644"


def test_file_format_matches_the_spec(good):
    entries = entries_of(good)
    assert [e["index"] for e in entries] == list(range(7))
    assert [e["kind"] for e in entries] == ["genesis", "round", "round", "round", "resume", "round", "round"]
    assert entries[0]["prev"] == ZEROS and entries[0]["ledger_key"] == PUB.hex()
    for raw, e in zip(lines_of(good), entries, strict=True):
        assert list(e)[:4] == ["index", "kind", "time", "prev"] and list(e)[-2:] == ["hash", "signature"]
        assert e["time"].endswith("Z")
        assert seal(e, KEY) == e  # hash and signature exactly as specified (Ed25519 is deterministic)
        KEY.public_key().verify(bytes.fromhex(e["signature"]), b"fedloom/ledger/v1\n" + bytes.fromhex(e["hash"]))
        assert raw.decode() == ledger.encode_entry(e)
    for a, b in itertools.pairwise(entries):
        assert b["prev"] == a["hash"]
    assert "refusé" in good.read_text(encoding="utf-8")  # UTF-8, not \u escapes


# ------------------------------------------------------------------ every edit is caught, on its line


def line_at(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def test_every_byte_flip_fails_on_its_line(good):
    data = good.read_bytes()
    for pos in range(len(data)):
        for mask in (0x01, 0x20):  # low bit; ASCII case (hex digits, e/E in floats, \u001f/\u001F)
            bad = bytearray(data)
            bad[pos] ^= mask
            report = verify(bytes(bad), PUB)
            assert not report.ok, (pos, mask, chr(data[pos]))
            assert report.first_error.startswith(f"line {line_at(data, pos)}:"), (pos, mask, report.first_error)


def field_positions(raw: bytes) -> dict[str, int]:
    text = raw.decode()
    pick = {"start": 0, "end": len(raw) - 1}
    for key in ("prev", "hash", "signature", "time", "kind", "metrics", "plan_hash", "federation", "reason"):
        at = text.find(f'"{key}":')
        if at >= 0:
            pick[key] = len(text[: at + len(key) + 5].encode())  # a few bytes into the value
    return pick


def test_any_byte_value_at_key_positions_fails(good):
    data = good.read_bytes()
    rng = random.Random(7)
    offset = 0
    for n, raw in enumerate(lines_of(good), start=1):
        spots = [*field_positions(raw).values(), len(raw)]  # len(raw): the line's newline
        for spot in spots:
            pos = offset + spot
            for value in rng.sample(range(256), 24):
                if value == data[pos]:
                    continue
                bad = bytearray(data)
                bad[pos] = value
                report = verify(bytes(bad), PUB)
                assert not report.ok and report.first_error.startswith(f"line {n}:"), (n, spot, value, report)
        offset += len(raw) + 1


def test_payload_edit_is_reported_on_its_line(good):
    lines = lines_of(good)
    lines[2] = lines[2].replace(b'"aggregated":[1,2,3,4]', b'"aggregated":[1,2,3,5]')
    report = verify(b"\n".join(lines) + b"\n", PUB)
    assert report.first_error == "line 3: hash does not match the entry's contents"
    assert (report.entries, report.rounds) == (2, 1)


def test_edit_with_recomputed_hash_is_a_bad_signature(good):
    entries = entries_of(good)
    edited = {**entries[3], "aggregated": [1]}
    edited["hash"] = ledger.entry_hash(edited)  # hash fixed, signature left
    entries[3] = edited
    assert verify(dump(entries), PUB).first_error == "line 4: bad signature"


def test_deleted_line(good):
    lines = lines_of(good)
    del lines[4]
    assert verify(b"\n".join(lines) + b"\n", PUB).first_error == "line 5: prev does not match line 4"
    assert verify(b"\n".join(lines_of(good)[1:]) + b"\n", PUB).first_error.startswith(
        "line 1: the first entry must be the genesis"
    )


def test_swapped_lines(good):
    lines = lines_of(good)
    lines[2], lines[3] = lines[3], lines[2]
    assert verify(b"\n".join(lines) + b"\n", PUB).first_error == "line 3: prev does not match line 2"


def test_duplicated_line(good):
    lines = lines_of(good)
    lines.insert(3, lines[2])
    assert verify(b"\n".join(lines) + b"\n", PUB).first_error == "line 4: prev does not match line 3"


def test_truncated_last_line(good):
    data = good.read_bytes()
    cut = data[: len(data) - 40]
    assert verify(cut, PUB).first_error == "line 7: truncated (no newline at the end: a partial write?)"
    assert verify(data[:-1], PUB).first_error.startswith("line 7: truncated")  # only the newline is missing
    last_start = data.rindex(b"\n", 0, len(data) - 1) + 1
    cut_whole = data[:last_start]  # a whole line dropped at the end: a shorter, still valid, ledger
    assert verify(cut_whole, PUB).ok and verify(cut_whole, PUB).entries == 6


def test_empty_and_blank(tmp_path, good):
    assert verify(b"", PUB).first_error == "line 1: empty ledger (no genesis)"
    lines = lines_of(good)
    lines.insert(2, b"")
    assert verify(b"\n".join(lines) + b"\n", PUB).first_error == "line 3: empty line"


def test_forged_entry_appended_with_another_key(good):
    entries = entries_of(good)
    forged = seal(
        {
            "index": 7,
            "kind": "resume",
            "time": entries[-1]["time"],
            "prev": entries[-1]["hash"],
            "from_round": 1,
            "reason": "forged",
        },
        MALLORY,
    )
    data = good.read_bytes() + dump([forged])
    assert verify(data, PUB).first_error == "line 8: bad signature"
    assert verify(data).first_error == "line 8: bad signature"  # the genesis key is the real one too


def test_entry_resigned_with_another_key(good):
    entries = entries_of(good)
    entries[2] = seal({**entries[2], "aggregated": [1, 2]}, MALLORY)
    assert verify(dump(entries), PUB).first_error == "line 3: bad signature"
    assert verify(dump(entries)).first_error == "line 3: bad signature"


def test_key_substitution_is_caught_only_with_the_kit_key(good):
    entries = entries_of(good)
    entries[0] = {
        **entries[0],
        "ledger_key": MALLORY.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex(),
    }
    entries[3] = {**entries[3], "aggregated": [1]}
    forged = dump(rechain(entries, MALLORY))  # history rewritten and re-signed end to end by another key
    own = verify(forged)
    assert own.ok and own.key_source == "genesis"  # self-consistent: self-certification cannot tell
    kit = verify(forged, PUB)
    assert not kit.ok and kit.first_error.startswith("line 1: the genesis ledger_key")
    assert "substituted" in kit.first_error
    assert not verify(good, MALLORY.public_key()).ok  # and a genuine ledger fails against a wrong key


def test_second_genesis_and_unknown_kind(good):
    entries = entries_of(good)
    second = rechain([*entries[:3], {**entries[0], "index": 3}], KEY)
    assert verify(dump(second), PUB).first_error == "line 4: a second genesis (only line 1 may be one)"
    odd = rechain([*entries[:2], {**entries[1], "kind": "audit", "index": 2}], KEY)
    assert verify(dump(odd), PUB).first_error.startswith("line 3: unknown kind 'audit'")


def test_missing_required_field_signed_by_the_coordinator_is_still_refused(good):
    entries = entries_of(good)
    stripped = {k: v for k, v in entries[1].items() if k != "model_hash"}
    bad = rechain([entries[0], stripped], KEY)
    assert verify(dump(bad), PUB).first_error == "line 2: round entry has no 'model_hash'"


def test_duplicate_keys_are_refused(good):
    raw = lines_of(good)[0].decode()
    dup = raw.replace('"federation":', '"federation":"x","federation":', 1)
    assert verify([dup], PUB).first_error.startswith("line 1: not valid JSON (duplicate key")


# ------------------------------------------------------------------ the writer


def test_writer_resumes_a_good_ledger(good):
    before = good.read_bytes()
    with LedgerWriter.open(good, KEY, GENESIS) as w:
        assert w.next_index == 7
        entry = w.append("round", round_payload(5))
    assert entry["index"] == 7 and entry["prev"] == entries_of(good)[6]["hash"]
    assert good.read_bytes().startswith(before)
    assert verify(good, PUB).entries == 8
    with LedgerWriter.open(good, KEY) as w:  # no genesis given: continue whatever is there
        w.append("resume", {"from_round": 6, "reason": "operator"})
    assert verify(good, PUB).ok and verify(good, PUB).entries == 9


def test_writer_refuses_a_corrupt_ledger(good):
    data = good.read_bytes()
    for broken, line in (
        (data[:-30], 7),
        (data.replace(b'"eval_accuracy":0.5', b'"eval_accuracy":0.9', 1), 3),
        (b"\n".join(lines_of(good)[:2] + lines_of(good)[3:]) + b"\n", 3),
    ):
        assert broken != data
        good.write_bytes(broken)
        with pytest.raises(LedgerError, match=f"refusing to append to a broken ledger: line {line}:"):
            LedgerWriter.open(good, KEY, GENESIS)
        assert good.read_bytes() == broken  # nothing written


def test_writer_refuses_another_run_or_key(good, tmp_path):
    with pytest.raises(LedgerError, match="is not the expected key"):
        LedgerWriter.open(good, MALLORY, GENESIS)
    with pytest.raises(LedgerError, match=r"belongs to another run.*plan_hash"):
        LedgerWriter.open(good, KEY, {**GENESIS, "plan_hash": "33" * 32})
    with pytest.raises(LedgerError, match="no genesis"):
        LedgerWriter.open(tmp_path / "new.jsonl", KEY)
    with pytest.raises(LedgerError, match="ledger_key"):
        LedgerWriter.open(tmp_path / "new.jsonl", KEY, {**GENESIS, "ledger_key": "44" * 32})
    assert not (tmp_path / "new.jsonl").exists()


def test_one_writer_at_a_time_and_no_edits_under_it(good):
    w = LedgerWriter.open(good, KEY)
    try:
        with pytest.raises(LedgerError, match="another ledger writer"):
            LedgerWriter.open(good, KEY)
        with good.open("ab") as f:
            f.write(b"junk\n")
        with pytest.raises(LedgerError, match="changed since it was opened"):
            w.append("round", round_payload(5))
    finally:
        w.close()
    with pytest.raises(LedgerError, match="closed"):
        w.append("round", round_payload(5))


def test_writer_validates_payloads(tmp_path):
    with LedgerWriter.open(tmp_path / "l.jsonl", KEY, GENESIS) as w:
        payload = round_payload(1)
        del payload["asked"]
        with pytest.raises(LedgerError, match="round entry has no 'asked'"):
            w.append("round", payload)
        with pytest.raises(LedgerError, match="'plan_hash' must be 64 lowercase hex"):
            w.append("round", round_payload(1, plan_hash="AB" * 32))
        with pytest.raises(LedgerError, match="not skipped"):
            w.append("round", round_payload(1, model_hash=None))
        with pytest.raises(LedgerError, match="may not set index"):
            w.append("round", {**round_payload(1), "index": 9})
        with pytest.raises(LedgerError, match="one genesis"):
            w.append("genesis", GENESIS)
        with pytest.raises(LedgerError, match="unknown ledger entry kind"):
            w.append("audit", {})
        with pytest.raises(LedgerError, match="resume entry has no 'reason'"):
            w.append("resume", {"from_round": 2})
        with pytest.raises(LedgerError, match="not plain JSON"):
            w.append("round", round_payload(1, extra=object()))
        metrics = {"train_loss": float("nan"), "eval_loss": np.float32(0.5), "eval_accuracy": float("inf"), "n": 3}
        e = w.append("round", round_payload(1, asked=(1, 2), metrics=metrics, extra={"future": True}))
        assert e["index"] == 1  # the refused appends left no trace
    stored = entries_of(tmp_path / "l.jsonl")[1]
    assert stored["metrics"] == {"train_loss": None, "eval_loss": 0.5, "eval_accuracy": None, "n": 3}
    assert stored["asked"] == [1, 2] and stored["extra"] == {"future": True}
    assert verify(tmp_path / "l.jsonl", PUB).ok


def test_new_ledger_is_0644_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        LedgerWriter.open(tmp_path / "sub" / "l.jsonl", KEY, GENESIS).close()
    finally:
        os.umask(old)
    assert oct((tmp_path / "sub" / "l.jsonl").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["l.jsonl"]  # no temporary file left


# ------------------------------------------------------------------ a member's copy


def test_copy_accepts_consecutive_entries_and_is_idempotent(good, tmp_path):
    copy = LedgerCopy(tmp_path / "member" / "ledger.jsonl", PUB)
    assert copy.next_index == 0 and copy.last_hash is None
    assert [e["index"] for e in copy.extend(entries_since(good, 0, limit=3))] == [0, 1, 2]
    assert copy.extend(entries_since(good, 0, limit=3)) == []  # already held
    assert [e["index"] for e in copy.extend(entries_since(good, 1, limit=4))] == [3, 4]  # overlap
    again = LedgerCopy(copy.path, KEY.public_key())  # reloaded from disk
    assert again.next_index == 5
    assert [e["index"] for e in again.extend("\n".join(entries_since(good, again.next_index)))] == [5, 6]
    assert copy.extend(entries_since(good, 0)) == []  # the first object notices the file grew
    assert copy.path.read_bytes() == good.read_bytes()
    assert verify(copy.path, PUB).ok and copy.last_hash == again.last_hash == verify(good).last_hash


def test_copy_refuses_a_fork(good, tmp_path):
    copy = LedgerCopy(tmp_path / "copy.jsonl", PUB)
    copy.extend(entries_since(good, 0, limit=5))
    held = copy.path.read_bytes()
    entries = entries_of(good)
    entries[3] = {**entries[3], "aggregated": [1, 2]}
    rewritten = rechain(entries, KEY)  # the coordinator rewrote round 3 and re-signed with its own key
    lines = [ledger.encode_entry(e) for e in rewritten]
    with pytest.raises(LedgerError, match="fork at entry 3"):
        copy.extend(lines[3:])
    with pytest.raises(LedgerError, match="entry 5: prev does not match entry 4"):
        copy.extend(lines[5:])  # only the new part of the rewritten history
    with pytest.raises(LedgerError, match="fork at entry 3"):
        copy.extend(entries_since(good, 5) + lines[3:4])  # a batch is all or nothing
    assert copy.path.read_bytes() == held and copy.next_index == 5


def test_copy_refuses_bad_signatures_and_broken_entries(good, tmp_path):
    copy = LedgerCopy(tmp_path / "copy.jsonl", PUB)
    copy.extend(entries_since(good, 0, limit=2))
    entries = entries_of(good)
    forged = seal({**entries[2], "aggregated": [1]}, MALLORY)
    with pytest.raises(LedgerError, match="entry 2: bad signature"):
        copy.extend([ledger.encode_entry(forged)])
    edited = entries_since(good, 2, limit=1)[0].replace('"asked":[1,2,3,4]', '"asked":[1,2,3,5]')
    with pytest.raises(LedgerError, match="hash does not match"):
        copy.extend([edited])
    with pytest.raises(LedgerError, match="bad signature"):  # a whole ledger under another key
        LedgerCopy(tmp_path / "other.jsonl", PUB).extend(entries_since(build(tmp_path / "m.jsonl", MALLORY), 0))
    assert copy.next_index == 2


def test_copy_gap_and_broken_file(good, tmp_path):
    path = tmp_path / "copy.jsonl"
    with pytest.raises(LedgerGap, match="ends before entry 0") as gap:
        LedgerCopy(path, PUB).extend(entries_since(good, 3))
    assert gap.value.next_index == 0 and not path.exists()
    LedgerCopy(path, PUB).extend(entries_since(good, 0))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(LedgerError, match="copy is broken: line 7: truncated"):
        LedgerCopy(path, PUB)


def test_entries_since(good):
    assert len(entries_since(good, 0)) == 7
    assert [json.loads(x)["index"] for x in entries_since(good, 5)] == [5, 6]
    assert entries_since(good, 7) == [] and entries_since(good, 2, limit=0) == []
    assert entries_since(good, 6)[0] == lines_of(good)[6].decode()


# ------------------------------------------------------------------ key files


def test_public_key_files(tmp_path):
    write_to = tmp_path / "ledger.pub"
    ledger.write_public_key(write_to, KEY)
    assert write_to.read_text() == PUB.hex() + "\n"
    assert ledger.read_public_key(write_to) == PUB
    pem = tmp_path / "ledger.pem"
    pem.write_bytes(
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert ledger.read_public_key(pem) == PUB
    assert Ed25519PublicKey.from_public_bytes(ledger.read_public_key(pem))
    private = tmp_path / "private.pem"
    private.write_bytes(
        KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(UserError, match="is a private key"):
        ledger.read_public_key(private)
    for text in ("nonsense\n", "ab" * 31 + "\n", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"):
        (tmp_path / "bad.pub").write_text(text)
        with pytest.raises(UserError, match=r"bad\.pub"):
            ledger.read_public_key(tmp_path / "bad.pub")
    with pytest.raises(UserError, match="not found"):
        ledger.read_public_key(tmp_path / "missing.pub")


# ------------------------------------------------------------------ the command


runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, ["ledger", "verify", *map(str, args)])


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    d = tmp_path / "kit"
    d.mkdir()
    ledger.write_public_key(d / "ledger.pub", KEY.public_key())
    return d


def test_cli_ok(good, kit):
    for args in ((good, "--kit", kit), (good, "--key", kit / "ledger.pub"), (good.parent, "--kit", kit)):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert "ok" in result.output and "BROKEN" not in result.output and "self-certified" not in result.output
    result = cli(good)
    assert result.exit_code == 0 and "self-certified" in result.output


def test_cli_broken(good, kit, tmp_path):
    lines = lines_of(good)
    del lines[5]
    good.write_bytes(b"\n".join(lines) + b"\n")
    result = cli(good, "--kit", kit)
    assert result.exit_code == 1
    assert "BROKEN" in result.output and f"{good}: line 6: prev does not match line 5" in result.output
    fine = build(tmp_path / "fine.jsonl")
    result = cli(tmp_path, "--kit", kit)  # one good, one broken
    assert result.exit_code == 1 and "ok" in result.output and "line 6: prev does not match line 5" in result.output
    entries = entries_of(fine)
    entries[2] = seal({**entries[2], "aggregated": [9]}, MALLORY)
    fine.write_bytes(dump(entries))
    result = cli(fine, "--key", kit / "ledger.pub")
    assert result.exit_code == 1 and "line 3: bad signature" in result.output


def test_cli_catches_key_substitution_with_the_kit_key(good, kit):
    entries = entries_of(good)
    entries[0] = {
        **entries[0],
        "ledger_key": MALLORY.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex(),
    }
    good.write_bytes(dump(rechain(entries, MALLORY)))
    assert cli(good).exit_code == 0  # self-certified: consistent
    result = cli(good, "--kit", kit)
    assert result.exit_code == 1 and "line 1: the genesis ledger_key" in result.output


@pytest.mark.parametrize(
    "case", ["missing ledger", "missing key", "bad key", "both", "kit without key", "missing kit", "empty dir"]
)
def test_cli_user_mistakes_exit_2(good, kit, tmp_path, case):
    (tmp_path / "garbage.pub").write_text("not a key\n")
    (tmp_path / "emptykit").mkdir()
    (tmp_path / "empty").mkdir()
    args, needle = {
        "missing ledger": ((tmp_path / "nope.jsonl",), "ledger not found"),
        "missing key": ((good, "--key", tmp_path / "nope.pub"), "ledger key file not found"),
        "bad key": ((good, "--key", tmp_path / "garbage.pub"), "is not a ledger public key"),
        "both": ((good, "--key", kit / "ledger.pub", "--kit", kit), "not both"),
        "kit without key": ((good, "--kit", tmp_path / "emptykit"), "has no ledger.pub"),
        "missing kit": ((good, "--kit", tmp_path / "nokit"), "kit directory not found"),
        "empty dir": ((tmp_path / "empty",), "no *.jsonl ledger"),
    }[case]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")


# ------------------------------------------------------------------ --against: a cut-off or forked history


def test_cli_against_a_members_copy_same_and_ahead_are_ok(good, kit, tmp_path):
    copy = tmp_path / "member-copy.jsonl"
    copy.write_bytes(good.read_bytes())
    result = cli(good, "--kit", kit, "--against", copy)
    assert result.exit_code == 0 and "same: " in result.output, result.output
    copy.write_bytes(b"".join(line + b"\n" for line in lines_of(good)[:4]))  # the member has seen less so far
    result = cli(good, "--kit", kit, "--against", copy)
    assert result.exit_code == 0 and "ahead: " in result.output, result.output


def test_cli_against_reports_a_truncated_ledger(good, kit, tmp_path):
    copy = tmp_path / "member-copy.jsonl"
    copy.write_bytes(good.read_bytes())
    head = entries_of(good)[-1]["hash"]
    good.write_bytes(b"".join(line + b"\n" for line in lines_of(good)[:5]))  # the last two entries cut off
    assert cli(good, "--kit", kit).exit_code == 0  # on its own it still verifies
    result = cli(good, "--kit", kit, "--against", copy)
    assert result.exit_code == 1 and "truncated: " in result.output, result.output
    assert "ends at entry 4" in result.output and "up to 6" in result.output and head in result.output


def test_cli_against_reports_a_fork_with_both_hashes(good, kit, tmp_path):
    copy = tmp_path / "member-copy.jsonl"
    copy.write_bytes(good.read_bytes())
    entries = entries_of(good)
    forked = [*entries[:3], {**entries[3], "aggregated": [1, 2]}, *entries[4:]]
    good.write_bytes(dump(rechain(forked, KEY)))  # rewritten from entry 3 on and signed again by the coordinator
    assert cli(good, "--kit", kit).exit_code == 0
    result = cli(good, "--kit", kit, "--against", copy)
    assert result.exit_code == 1 and "fork: entry 3 differs" in result.output, result.output
    assert entries_of(good)[3]["hash"] in result.output and entries[3]["hash"] in result.output
    shorter_fork = tmp_path / "shorter.jsonl"
    shorter_fork.write_bytes(b"".join(line + b"\n" for line in lines_of(good)[:5]))
    assert "fork: entry 3" in cli(shorter_fork, "--kit", kit, "--against", copy).output  # a fork, not a cut


def test_cli_against_a_broken_copy_or_a_directory(good, kit, tmp_path):
    copy = tmp_path / "member-copy.jsonl"
    copy.write_bytes(good.read_bytes()[:-10])
    result = cli(good, "--kit", kit, "--against", copy)
    assert result.exit_code == 1 and "broken: " in result.output and "truncated (no newline" in result.output
    result = cli(good, "--kit", kit, "--against", tmp_path)
    assert result.exit_code == 2 and result.output.startswith("error: --against")


def test_signed_models_follow_resumes_and_skips(good):
    models = ledger.signed_models(ledger.read_verified(good, PUB))
    # build(): rounds 1-3, resume from 3, round 3 again, round 4 skipped (no hash): keeps round 3's model
    assert models == {0: None, 1: round_payload(1)["model_hash"], 2: round_payload(2)["model_hash"]} | {
        3: round_payload(3)["model_hash"],
        4: round_payload(3)["model_hash"],
    }

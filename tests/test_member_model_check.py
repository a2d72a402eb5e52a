"""A member trains on, evaluates or keeps a received model only if its own verified, signed ledger copy
says it is the current model; and it refuses a coordinator whose ledger is behind its copy (cut off)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.ledger_feed import LedgerFeed
from fedloom import ledger as ledger_module
from fedloom.ledger import LedgerCopy, LedgerWriter, entries_since
from fedloom.policy import PolicyRefusal
from fedloom.records import Who
from participant.models import vector_hash


def check_received_model(copy: LedgerCopy, model: np.ndarray, after_round: int) -> None:
    from participant.ledger_check import check_received_model as check  # imported late: one failure per test

    check(copy, model, after_round)


def signed_models(entries: list[dict]) -> dict:
    return ledger_module.signed_models(entries)


KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
PLAN = "ab" * 32
MODELS = [np.random.default_rng(r).standard_normal(40).astype(np.float32) for r in range(4)]


def genesis(pinned: bool = True, plan_hash: str = PLAN) -> dict:
    g = {"federation": "t", "plan_hash": plan_hash, "roster_hash": "cd" * 32}
    return g | ({"initial_model_hash": vector_hash(MODELS[0])} if pinned else {})


def round_entry(r: int, model: np.ndarray | None, plan_hash: str = PLAN) -> dict:
    return {
        "round": r,
        "plan_hash": plan_hash,
        "asked": [1],
        "aggregated": [1] if model is not None else [],
        "dropped": [],
        "refusals": [],
        "skipped": None if model is not None else "no participant replied",
        "model_hash": vector_hash(model) if model is not None else None,
        "metrics": {},
    }


def ledger(path: Path, *steps: tuple[str, object], pinned: bool = True) -> Path:
    """("round", r) appends round r with MODELS[r]; ("skip", r) a skipped round r; ("resume", f) a resume."""
    with LedgerWriter.open(path, KEY, genesis(pinned)) as w:
        for kind, arg in steps:
            if kind == "resume":
                w.append("resume", {"from_round": arg, "reason": "coordinator restarted"})
            else:
                w.append("round", round_entry(int(arg), MODELS[int(arg)] if kind == "round" else None))
    return path


def member_copy(tmp_path: Path, coordinator: Path) -> LedgerCopy:
    copy = LedgerCopy(tmp_path / "member" / "ledger.jsonl", PUB)
    copy.extend(entries_since(coordinator, 0))
    return copy


def refusal(copy: LedgerCopy, model: np.ndarray, after_round: int) -> str:
    with pytest.raises(PolicyRefusal) as exc:
        check_received_model(copy, model, after_round)
    assert exc.value.rule == "ledger.model"
    return exc.value.detail


def test_the_signed_model_is_accepted(tmp_path):
    coordinator = tmp_path / "coordinator.jsonl"
    ledger(coordinator)
    check_received_model(member_copy(tmp_path, coordinator), MODELS[0], 0)  # round 1 gets the pinned initial model
    ledger(coordinator, ("round", 1), ("round", 2))
    copy = member_copy(tmp_path, coordinator)
    check_received_model(copy, MODELS[2], 2)  # round 3 continues from round 2's model
    assert signed_models(copy.entries()) == {r: vector_hash(MODELS[r]) for r in range(3)}


def test_a_changed_model_is_refused_naming_both_hashes(tmp_path):
    copy = member_copy(tmp_path, ledger(tmp_path / "c.jsonl", ("round", 1)))
    changed = MODELS[1].copy()
    changed[7] = np.nextafter(changed[7], np.float32(np.inf))  # one bit of one parameter
    detail = refusal(copy, changed, 1)
    assert vector_hash(changed) in detail and vector_hash(MODELS[1]) in detail
    assert vector_hash(MODELS[0]) in refusal(copy, MODELS[0], 1)  # an old model passed off as the current one
    initial = member_copy(tmp_path / "fresh", ledger(tmp_path / "g.jsonl"))
    assert vector_hash(MODELS[1]) in refusal(initial, MODELS[1], 0)  # round 1 not on the pinned initial model


def test_a_model_for_another_round_than_the_signed_history_is_refused(tmp_path):
    copy = member_copy(tmp_path, ledger(tmp_path / "c.jsonl", ("round", 1), ("round", 2)))
    assert "after round 2" in refusal(copy, MODELS[1], 1)  # rolled back without a signed resume
    assert "after round 2" in refusal(copy, MODELS[2], 3)  # claims a round the ledger does not have


def test_a_signed_resume_takes_rounds_back_and_a_skipped_round_keeps_the_model(tmp_path):
    coordinator = ledger(tmp_path / "c.jsonl", ("round", 1), ("round", 2), ("resume", 2), ("skip", 2))
    copy = member_copy(tmp_path, coordinator)
    check_received_model(copy, MODELS[1], 2)  # round 2 redone from round 1's checkpoint, then skipped
    refusal(copy, MODELS[2], 2)


def test_an_unpinned_initial_model_is_not_checked(tmp_path):
    copy = member_copy(tmp_path, ledger(tmp_path / "c.jsonl", pinned=False))
    check_received_model(copy, MODELS[3], 0)
    assert signed_models(copy.entries()) == {0: None}


# ------------------------------------------------------------------ a cut-off coordinator ledger


def test_the_feed_always_sends_the_coordinators_head(tmp_path):
    coordinator = ledger(tmp_path / "c.jsonl", ("round", 1), ("round", 2))
    feed = LedgerFeed(coordinator)
    assert len(feed.config_for(7)["ledger"].split("\n")) == 3  # a new member: everything
    feed.observe(7, Who(1, ledger_head=3))
    assert feed.config_for(7)["ledger"] == entries_since(coordinator, 2)[0]  # up to date: the head again
    feed.observe(7, Who(1, ledger_head=1))
    assert len(feed.config_for(7)["ledger"].split("\n")) == 2
    feed.observe(7, Who(1, ledger_head=9))  # a member ahead of this ledger still gets its head, and refuses it
    assert feed.config_for(7)["ledger"] == entries_since(coordinator, 2)[0]


def test_a_member_refuses_a_head_behind_its_copy(tmp_path):
    coordinator = ledger(tmp_path / "c.jsonl", ("round", 1), ("round", 2))
    copy = member_copy(tmp_path, coordinator)
    lines = entries_since(coordinator, 0)
    copy.check_head(lines[-1])  # the same head: fine
    cut = "ends at entry 1, but this member holds signed entries up to 2"
    with pytest.raises(ledger_module.LedgerTruncated, match=cut):
        copy.check_head(lines[1])  # the coordinator's ledger was cut back to round 1


# ------------------------------------------------------------------ through the member's ClientApp


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    from deployment import Federation

    fed = Federation(tmp_path_factory.mktemp("member-check"), ["ines", "jon", "kai"])
    fed.provision(
        'rounds = 3\n[plan.task]\nname = "digits"\n[plan.training]\nsteps = 2\n[plan.secure]\nenabled = false\n',
        policy_toml="require_secure_aggregation = false",
    )
    return fed


def train_message(fed, state: Path, model: np.ndarray, round_: int, ledger_lines: list[str]):
    import time

    from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

    from fedloom import records as rec
    from fedloom.kits import load_member_kit

    plan = load_member_kit(fed.kits / "ines").plan
    cfg = {"round": round_, "plan": plan.canonical_json(), "plan-hash": plan.hash, "ledger": "\n".join(ledger_lines)}
    content = RecordDict({rec.MODEL: rec.vector_record(model), rec.CONFIG: ConfigRecord(cfg)})
    meta = Metadata(1, "m", 0, 1, "", "", time.time(), 600, "train")  # as Flower delivers it to the node
    msg = Message(content, metadata=meta)
    node_config = {
        "kit": str(fed.kits / "ines"),
        "data-path": str(fed.root / "data" / "participant-0.npz"),
        "state-dir": str(state),
        "device": "cpu",
    }
    return msg, Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def coordinator_ledger(fed, path: Path, models: list[np.ndarray]) -> list[str]:
    """The coordinator's real ledger (its kit's key): genesis pinning models[0], then rounds 1.. with models[r]."""
    from coordinator.driver import model_hash
    from fedloom.kits import load_coordinator_kit

    kit = load_coordinator_kit(fed.kits / "coordinator")
    g = {"federation": kit.plan.federation, "plan_hash": kit.plan.hash, "roster_hash": kit.roster.digest().hex()}
    with LedgerWriter.open(path, kit.ledger_key, g | {"initial_model_hash": model_hash(models[0])}) as w:
        for r, m in enumerate(models[1:], start=1):
            w.append("round", round_entry(r, m, kit.plan.hash))
    return entries_since(path, 0)


def test_the_client_app_refuses_a_model_the_ledger_does_not_sign_and_keeps_nothing(federation, tmp_path):
    from coordinator.driver import initial_model
    from fedloom import records as rec
    from fedloom.kits import load_member_kit
    from participant.client_app import train

    fed = federation
    base = initial_model(load_member_kit(fed.kits / "ines").plan)
    models = [base, base + np.float32(0.01)]
    lines = coordinator_ledger(fed, tmp_path / "coordinator.jsonl", models)
    state = tmp_path / "ines"
    state.mkdir()

    tampered = models[1].copy()
    tampered[0] += np.float32(0.5)
    reply = train(*train_message(fed, state, tampered, 2, lines))
    assert rec.REFUSAL in reply.content and rec.UPDATE not in reply.content and rec.EVAL not in reply.content
    refused = reply.content[rec.REFUSAL]
    assert refused["rule"] == "ledger.model" and vector_hash(tampered) in str(refused["detail"])
    assert not (state / "models").exists()  # nothing kept
    assert len((state / "ledger.jsonl").read_text().splitlines()) == 2  # the signed entries were kept

    reply = train(*train_message(fed, state, models[1], 2, lines[-1:]))  # the signed model: trains and keeps it
    assert rec.REFUSAL not in reply.content and rec.UPDATE in reply.content
    assert (state / "models" / "base.safetensors").exists()

    reply = train(*train_message(fed, state, models[0], 1, lines[:1]))  # a ledger cut back to its genesis
    assert reply.content[rec.REFUSAL]["rule"] == "ledger.truncated"

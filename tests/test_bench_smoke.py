"""Smoke tests of the `fedloom bench` sections: each section's smallest case runs (or, for the
Simulation Engine sections, its row-building logic runs on tiny recorded runs) and yields rows
with the documented keys. The protocol section has its own tests (test_protocol_bench.py)."""

from __future__ import annotations

import json

import pytest

from console.bench import common, communication, flower, primitives, rounds, suite

# ---------------------------------------------------------------------------- primitives


def _check_figure(row: dict) -> None:
    for key in ("key", "primitive", "size", "unit", "reference", "samples"):
        assert key in row, key
    assert 0 < row["value_min"] <= row["value"] <= row["value_max"]


def test_primitives_smallest_case_reports_figures_beside_bounds():
    rows = primitives.bound_rows(1)
    rows.append(primitives.mask_row(1 << 16, repeats=1))
    rows.append(primitives.quantize_row(1 << 16, repeats=1))
    rows += primitives.flower_rows(1 << 12, repeats=1)
    rows += primitives.crypto_rows(repeats=2, ops=3)
    rows += primitives.shamir_rows((10,), repeats=1)
    for r in rows:
        _check_figure(r)
    keys = [r["key"] for r in rows]
    assert keys[:4] == ["bound_keystream", "bound_add_memory", "bound_add_cache", "bound_keystream_plus_add"]
    assert {
        "mask",
        "quantize",
        "x25519_keygen",
        "x25519_exchange",
        "ed25519_sign",
        "ed25519_verify",
        "shamir_split",
        "shamir_reconstruct",
        "flower_mask",
        "flower_quantize",
    } <= set(keys)
    mask = next(r for r in rows if r["key"] == "mask")
    assert mask["unit"] == "G elem/s" and mask["bound_name"] == "keystream"
    assert mask["fraction_of_bound"] == pytest.approx(mask["value"] / mask["bound_value"])
    assert mask["bounds"]["keystream_elements_per_second"] > 0
    assert next(r for r in rows if r["key"] == "shamir_split")["size"] == "n=10"
    primitives.table(rows)  # renders
    json.dumps(rows)


# ---------------------------------------------------------------------------- communication


def test_communication_sums_match_a_real_round_and_expansions_are_consistent():
    row = communication.measured_row(5, 1000, 0.2)
    assert row["matches"], (row["bytes_up"], row["measured_bytes_up"], row["bytes_down"], row["measured_bytes_down"])
    assert row["degree"] == 4 and row["ring_bits"] == 32 and row["dropped"] == 1
    masked = row["messages"]["up"]["MaskedInput"]
    assert 4 * 1001 + 72 < masked < 4 * 1001 + 72 + 100  # d + 1 uint32s, the 72-byte attestation, a header
    assert row["bytes_up"] == sum(row["messages"]["up"].values())
    assert row["expansion_up_over_16bit"] == pytest.approx(2 * row["expansion_up_over_float32"])
    assert row["expansion_total_over_16bit"] > row["expansion_up_over_16bit"] > 2.0


def test_communication_of_the_complete_graph_grows_per_member_as_the_protocol_says():
    small = communication.setting_row(1 << 9, 1 << 12, 0.0)
    large = communication.setting_row(1 << 10, 1 << 12, 0.0)
    assert (small["degree"], large["degree"]) == (511, 1023)
    assert "bonawitz_2017_expansion" not in large  # only the two settings of the paper carry it
    # per extra holder up: a share item (392 bytes), a released share (134), a held-list entry (4)
    assert large["bytes_up"] - small["bytes_up"] == 512 * (392 + 134 + 4)


def test_communication_main_writes_a_json_document(tmp_path):
    out = tmp_path / "comm.json"
    assert communication.main(["--quick", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["section"] == "communication" and doc["machine"]["cores"] >= 1
    bon = [r for r in doc["rows"] if "bonawitz_2017_expansion" in r]
    settings = {(r["n"], r["d"], r["graph"]) for r in bon}
    assert settings == {(1 << 10, 1 << 20, "complete"), (1 << 14, 1 << 24, "complete")}
    assert all(r["matches"] for r in doc["rows"] if "matches" in r)


# ---------------------------------------------------------------------------- rounds (logic only)


def _run(secure: bool, walls: list[float], skipped: tuple[int, ...] = (), dropped: tuple[int, ...] = ()) -> dict:
    """A recorded run as rounds.run_fedloom returns it (round 1 first)."""
    rows = []
    for i, w in enumerate(walls, start=1):
        stages = {"train_mask": w / 2, "sign": w / 4, "unmask": w / 4, "reconstruct": 0.0} if secure else {"train": w}
        if secure and i == 1:
            stages["setup"] = w - 1
        rows.append(
            {
                "round": i,
                "wall_seconds": w,
                "stage_seconds": stages,
                "skipped": "aborted" if i in skipped else None,
                "aggregated": 3,
            }
        )
    return {
        "secure": secure,
        "rounds": rows,
        "dropped_members": list(dropped),
        "total_seconds": sum(walls),
        "startup_seconds": 1.0,
        "rounds_completed": len(walls) - len(skipped),
    }


def test_rounds_row_excludes_round_one_and_pairs_ratios_by_round():
    plain = [_run(False, [9.0, 1.0, 2.0, 1.0])]
    secure = [_run(True, [20.0, 2.0, 3.0, 4.0], skipped=(4,))]
    row = rounds.pair_row(3, 10**5, plain, secure, rounds=4)
    for key in (
        "case",
        "n",
        "d",
        "task",
        "degree",
        "shamir_threshold",
        "plain_round_seconds",
        "secure_round_seconds",
        "ratio",
        "ratio_min",
        "ratio_max",
        "plain_first_round_seconds",
        "secure_first_round_seconds",
        "secure_setup_seconds",
        "secure_stage_seconds",
        "secure_stage_share",
        "secure_rounds_skipped",
    ):
        assert key in row, key
    assert row["case"] == "n3-d1e5" and row["task"] == "synthetic-1e5" and row["degree"] == 2
    assert row["plain_round_seconds"] == 1.0 and (row["plain_round_seconds_min"], row["plain_round_seconds_max"]) == (
        1.0,
        2.0,
    )
    assert row["secure_round_seconds"] == 2.5  # rounds 2 and 3; round 4 was skipped
    assert (row["ratio_min"], row["ratio_max"]) == (1.5, 2.0)  # 2/1 and 3/2, paired by round
    assert row["secure_first_round_seconds"] == 20.0 and row["secure_setup_seconds"] == 19.0
    assert row["secure_rounds_skipped"] == 1
    assert set(row["secure_stage_seconds"]) == {"train_mask", "sign", "unmask", "reconstruct"}
    rounds.table([row])
    json.dumps(row)


def test_rounds_scenario_is_a_valid_scenario_with_dropout_faults():
    from simulations.scenario import parse_scenario

    sc = parse_scenario(rounds.scenario_toml(10, 10**6, True, 3, dropout=0.3))
    assert sc.plan.task.name == "synthetic-1e6" and sc.plan.participants == 10 and sc.plan.secure.enabled
    (fault,) = sc.faults.faults
    assert fault.stage == "mask" and fault.rounds == (1, 2, 3) and len(fault.members) == 3
    plain = parse_scenario(rounds.scenario_toml(3, 10**5, False, 2))
    assert not plain.plan.secure.enabled and plain.faults.faults == ()
    with pytest.raises(ValueError):
        rounds.scenario_toml(3, 1000, True, 2)


# ---------------------------------------------------------------------------- flower (logic only)


def test_flower_parameters_match_fedloom_graph():
    assert flower.flower_params(10, 10**5) == {"num_shares": 10, "threshold": 6, "degree": 9}
    assert flower.flower_params(30, 10**6) == {"num_shares": 30, "threshold": 20, "degree": 29}
    assert flower.flower_params(100, 10**5) == {"num_shares": 100, "threshold": 66, "degree": 99}  # complete graph


def _flower_run(secs: list[float], ok: bool = True, status: str = "ok") -> dict:
    return {
        "secure": True,
        "status": status,
        "elapsed_seconds": sum(secs),
        "timeout_seconds": 60.0,
        "rounds": [{"round": i, "seconds": s, "ok": ok, "max_error": 0.0} for i, s in enumerate(secs, 1)],
        "rounds_ok": len(secs) if ok else 0,
        "log_tail": "",
        **flower.flower_params(3, 1000),
    }


def test_flower_row_has_fedloom_flower_and_the_ratio():
    fed = _run(True, [10.0, 1.0, 2.0], dropped=(2,))
    row = flower.case_row(3, 1000, 0.3, fed, _flower_run([30.0, 10.0, 30.0]), _flower_run([5.0, 2.0, 3.0]))
    for key in (
        "case",
        "n",
        "d",
        "dropout",
        "dropped",
        "degree",
        "flower_num_shares",
        "shamir_threshold",
        "fedloom_round_seconds",
        "flower_round_seconds",
        "speedup",
        "speedup_min",
        "speedup_max",
        "flower_plain_round_seconds",
        "flower_secure_over_plain",
        "fedloom_first_round_seconds",
        "flower_first_round_seconds",
        "flower_status",
        "flower_rounds_done",
        "flower_rounds_ok",
    ):
        assert key in row, key
    assert row["case"] == "n3-d1e3-p30" and row["dropped"] == 1
    assert (row["speedup_min"], row["speedup"], row["speedup_max"]) == (10.0, 12.5, 15.0)
    assert row["flower_secure_over_plain"] == 7.5  # 10/2 and 30/3
    flower.table([row])
    json.dumps(row)


def test_flower_row_marks_a_run_that_did_not_finish():
    fed = _run(True, [10.0, 1.0, 2.0])
    timed_out = _flower_run([30.0], status="timeout")
    row = flower.case_row(3, 1000, 0.0, fed, timed_out, None)
    assert row["speedup"] is None and row["flower_status"] == "timeout" and row["flower_rounds_done"] == 1
    assert "did not finish" in flower._status(row) and "30 s reached" in flower._status(row)
    failed = flower.case_row(3, 1000, 0.0, fed, _flower_run([3.0, 3.0, 3.0], ok=False), None)
    assert failed["flower_round_seconds"] is None and "did not aggregate" in flower._status(failed)


def test_flower_drop_mod_fails_only_listed_nodes_at_the_masking_stage(monkeypatch):
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, RecordDict
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    monkeypatch.setenv(flower.DROP_ENV, "1,4")

    def msg(stage: str) -> SimpleNamespace:  # only .content is read (a Message needs a running Flower task)
        return SimpleNamespace(content=RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage})}))

    def ctx(pid: int) -> SimpleNamespace:
        return SimpleNamespace(node_config={"partition-id": pid, "num-partitions": 5})

    passed = []
    nxt = lambda m, c: passed.append(c.node_config["partition-id"]) or "reply"  # noqa: E731
    assert flower._drop_mod(msg(Stage.SHARE_KEYS), ctx(1), nxt) == "reply"
    assert flower._drop_mod(msg(Stage.COLLECT_MASKED_VECTORS), ctx(2), nxt) == "reply"
    with pytest.raises(RuntimeError, match="simulated dropout"):
        flower._drop_mod(msg(Stage.COLLECT_MASKED_VECTORS), ctx(4), nxt)
    assert passed == [1, 2]


# ---------------------------------------------------------------------------- suite and CLI


def test_targets_are_read_from_the_sections_rows():
    sections = {
        "primitives": [{"key": "mask", "size": "d=1e7", "value": 1.2, "fraction_of_bound": 0.8, "bound_value": 1.5}],
        "protocol": [
            {
                "n": 100,
                "d": 10**7,
                "dropout": 0.1,
                "server_unmask_seconds": 3.0,
                "server_unmask_seconds_min": 2.9,
                "server_unmask_seconds_max": 3.1,
                "server_mask_keys": 120,
                "coordinator_peak_bytes": 81e6,
            },
            {"n": 10, "d": 10**7, "dropout": 0.0, "coordinator_peak_bytes": 80e6},
        ],
        "rounds": [
            {
                "n": 30,
                "d": 10**6,
                "ratio": 2.0,
                "ratio_min": 1.8,
                "ratio_max": 2.2,
                "secure_round_seconds": 2.0,
                "plain_round_seconds": 1.0,
            }
        ],
        "flower": [{"n": 30, "d": 10**6, "dropout": 0.0, "speedup": None, "flower_status": "timeout"}],
    }
    got = {t["target"]: t for t in suite.targets(sections)}
    assert got["mask path >= 1.0 G elem/s/core"]["met"] is True
    assert got["server unmask (100, 1e7, 10 %) <= 2.5 s"]["met"] is False
    assert got["coordinator memory independent of n"]["met"] is True
    assert got["secure/plain round <= 1.5x at (30, 1e6), simulation"]["met"] is False
    assert got["fedloom >= 10x faster than Flower SecAgg+ at (30, 1e6)"]["met"] is None
    suite.targets_table(list(got.values()))


def test_cli_bench_all_runs_a_section_and_writes_targets(tmp_path):
    from typer.testing import CliRunner

    from console.cli import app

    out = tmp_path / "all.json"
    res = CliRunner().invoke(app, ["bench", "all", "--quick", "--only", "communication", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["section"] == "all" and doc["quick"] is True and set(doc["sections"]) == {"communication"}
    assert doc["targets"] == []  # no timing section ran
    res = CliRunner().invoke(app, ["bench", "flower", "--help"])
    assert res.exit_code == 0 and "--timeout" in res.output


def test_stats_and_spans():
    assert common.stats("x", [3.0, 1.0, 2.0]) == {"x": 2.0, "x_min": 1.0, "x_max": 3.0}
    assert common.stats("x", [])["x"] is None
    assert common.span({"x": 2.0, "x_min": 1.0, "x_max": 3.0}, "x", "{:.1f}") == "2.0\n[dim]1.0-3.0[/dim]"
    assert common.fmt_d(10**6) == "1e6" and common.fmt_d(1000) == "1e3" and common.fmt_d(1234) == "1234"


# ---------------------------------------------------------------------------- profile (logic only)


def test_profile_report_splits_each_trip_into_participants_and_the_rest(tmp_path):
    import cProfile

    from console.bench import profile

    prof = cProfile.Profile()
    prof.runcall(sum, range(1000))
    prof.dump_stats(str(tmp_path / "client-1.pstats"))
    prof.dump_stats(str(tmp_path / "server.pstats"))
    (tmp_path / "server.json").write_text(json.dumps({"wall_seconds": 9.0}))
    calls = {
        "train: AdvertiseRequest + MaskRequest": [0.2, 0.2, 0.2, 0.2],
        "train: MaskRequest": [0.2, 0.2],
        "query.secagg: BundleSet + SurvivorRequest": [0.1] * 4,
        "query.secagg: SurvivorRequest": [0.1] * 2,
        "query.secagg: ShareDelivery + UnmaskRequest": [0.05] * 6,
        "query.secagg: AdvertiseRequest": [1.0] * 2,
    }
    (tmp_path / "client-1.json").write_text(json.dumps(calls))
    run = _run(True, [10.0, 1.0, 1.0])  # 3 rounds of 2 participants
    rep = profile.report(tmp_path, run, cores=2)
    trips = {t["stage"]: t for t in rep["trips"]}
    assert set(trips) == {"train_mask", "sign", "unmask", "setup"}
    assert trips["train_mask"]["client_calls_per_round"] == 2
    assert trips["train_mask"]["client_compute_seconds_per_round"] == pytest.approx(0.4)
    assert trips["train_mask"]["client_compute_per_core_seconds"] == pytest.approx(0.2)
    assert trips["sign"]["wall_seconds_per_round"] == pytest.approx(0.25)  # rounds 2 and 3 only
    assert trips["unmask"]["client_call_median_seconds"] == pytest.approx(0.05)
    assert rep["server_seconds"] == 9.0 and "server_top_self" in rep
    parts = {r["part"].strip(): r for r in rep["client_breakdown"]}
    assert "protocol: mask (quantize + masks)" in parts and parts["local training"]["calls"] == 0


# ---------------------------------------------------------------------------- memory


def test_memory_rows_are_judged_against_the_issue_targets():
    from console.bench import memory

    assert memory.parse_sizes("1e7, 1.35e8,100000000") == [10**7, 134_515_008, 10**8]
    with pytest.raises(ValueError, match="sized synthetic"):
        memory.parse_sizes("3e7")
    watch = memory.Watch(lambda: {})
    watch.procs = {
        "coordinator": {1: memory.Proc(idle=100, peak=100 + 3 * 4 * 1000, reset=True)},
        "member": {2: memory.Proc(idle=50, peak=250 + 6 * 4 * 1000)},
    }
    row = memory.judge({"d": 1000, "mode": "deployment", **watch.figures(1000, member_base=250)})
    assert row["ratio"] == pytest.approx(3.0) and row["met"]  # the deployment target is <= 3 x 4d
    assert row["member_ratio"] == pytest.approx(6.0) and not row["member_met"]
    row = memory.judge({"d": 1000, "mode": "simulation", **watch.figures(1000, member_base=250)})
    assert row["target_ratio"] == 4.0
    memory.table([row])  # renders


def test_memory_quick_run_measures_a_real_secure_simulation(tmp_path):
    from console.bench import memory

    out = tmp_path / "memory.json"
    assert memory.main(["--quick", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["d"], row["mode"], row["members"]) == (10**4, "simulation", 4)
    for key in ("coordinator_idle_rss_bytes", "coordinator_peak_rss_bytes", "member_peak_rss_bytes"):
        assert row[key] > 50 * 2**20, key  # a Python process with Flower (and torch, for a member) loaded
    assert row["coordinator_peak_rss_bytes"] >= row["coordinator_idle_rss_bytes"]
    assert row["member_base_rss_bytes"] > 0 and isinstance(row["met"], bool)

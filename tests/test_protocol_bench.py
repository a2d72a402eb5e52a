"""Smoke test of the round benchmark (fedloom bench protocol): one tiny case, every reported key present."""

from __future__ import annotations

import json

import pytest

from console.bench import protocol as bench

TIMINGS = ("client_seconds", "client_mask_seconds", "server_seconds", "server_unmask_seconds")


def test_run_cases_reports_every_key_with_positive_values():
    (row,) = bench.run_cases([(5, 1000, 0.2)], repeats=1)
    assert (row["case"], row["n"], row["d"], row["dropout"]) == ("n5-d1e3-p20", 5, 1000, 0.2)
    assert row["dropped"] == 1 and row["survivors"] == 4 and row["degree"] == 4
    assert row["threshold_fraction"] > 0.6  # the default 2/3 tolerates one dropout of five
    for key in TIMINGS:
        assert 0 < row[f"{key}_min"] <= row[key] <= row[f"{key}_max"]
    for key in (
        "mask_elements_per_second",
        "keystream_elements_per_second",
        "mask_fraction_of_keystream_bound",
        "coordinator_peak_bytes",
        "bytes_up",
        "bytes_down",
        "server_mask_keys",
    ):
        assert row[key] > 0, key
    assert set(row["client_stage_seconds"]) == {"advertise", "share", "receive", "mask", "sign", "unmask"}
    assert row["bytes_up"] > 4 * 1001  # the masked vector alone is 4 (d + 1) bytes
    json.dumps(row)  # one JSON object per case


def test_main_writes_json_lines(tmp_path):
    out = tmp_path / "bench.jsonl"
    argv = ["--cases", "4,100,0", "--repeats", "1", "--no-memory", "--json", str(out)]
    assert bench.main(argv) == 0
    (line,) = out.read_text().splitlines()
    row = json.loads(line)
    assert row["case"] == "n4-d1e2-p0" and row["client_seconds"] > 0 and row["dropped"] == 0


def test_complete_graph_at_30_percent_keeps_the_default_threshold():
    """The graph is complete (degree n - 1). At n = N = 100, c = 33: T = 67 survivors and t = 66
    of 99 holders, so 30 dropouts (70 survivors, 69 other holders each) keep the default 2/3;
    40 dropouts leave 60 < T survivors under any threshold_fraction, and the case is refused."""
    tf, pattern, degree, note = bench.choose_threshold(bench.Case(100, 10, 0.3))
    assert degree == 99 and len(pattern) == 30 and 0 not in pattern
    assert tf == bench.DEFAULT_THRESHOLD and note == ""
    with pytest.raises(ValueError):
        bench.choose_threshold(bench.Case(100, 10, 0.4))
    assert bench.parse_cases("10,1e6,0.1; 1000,100000,0") == [bench.Case(10, 10**6, 0.1), bench.Case(1000, 10**5, 0.0)]

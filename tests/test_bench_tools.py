"""Small benches read without a run: bench/stage_profile.py (whatever shape each report's
`seconds` has) and bench/sampling_cost.py's settings."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _write(d: Path, name: str, obj: dict) -> None:
    (d / f"{name}.json").write_text(json.dumps(obj))


def test_profile_reads_a_breakdown_and_a_total(tmp_path):
    import stage_profile as SP

    _write(tmp_path, "run", {"seconds": 300.0, "profile": "smoke", "stage_seconds": {"foundation": 100.0, "eval": 200.0},
                             "stage_entries": {"foundation": 1, "eval": 1}})
    _write(tmp_path, "foundation", {"seconds": {"base": 60.0, "clip": 40.0, "flag": True}, "cached": ["clip"]})
    _write(tmp_path, "eval", {"seconds": 199.5, "subject_ids": ["h000", "h001"],
                              "table": [{"method": "apprentice", "seconds_per_subject": 9.0}]})
    out = SP.profile(tmp_path, budget=250.0)
    assert list(out["stages"]) == ["eval", "foundation"]  # slowest first
    assert out["detail"]["foundation"]["seconds"] == {"base": 60.0, "clip": 40.0}  # booleans are not seconds
    assert out["detail"]["eval"]["seconds"] == {"total": 199.5}
    assert out["detail"]["eval"]["subjects"] == 2
    assert out["over_budget_seconds"] == 50.0


def test_sampling_cost_settings_parse_or_fail_in_one_line():
    import pytest
    import sampling_cost as SC

    assert SC.parse_setting("10:2.0") == (10, 2.0)
    assert SC.parse_setting("25:none") == (25, None)
    with pytest.raises(SystemExit, match="steps:demo_guidance"):
        SC.parse_setting("ten")

"""bench/kshot_pairs.py: paired K-shot differences read from an eval's subject files."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _subject(sid: str, curve: dict[int, list[float]]) -> dict:
    return {"sid": sid, "kshot": {str(k): {"identity": v} for k, v in curve.items()}}


def test_paired_differences_are_per_image_with_their_standard_error():
    import kshot_pairs as KP

    d = KP.paired([0.5, 0.7, 0.9], [0.4, 0.7, 0.6])
    assert d["mean"] == pytest.approx((0.1 + 0.0 + 0.3) / 3, abs=1e-4)
    # sample sd of (0.1, 0, 0.3) over sqrt(3)
    assert d["se"] == pytest.approx(0.152753 / 3 ** 0.5, abs=1e-4)
    assert d["images"] == 3 and d["gain"] == 2
    with pytest.raises(ValueError):
        KP.paired([0.1, 0.2], [0.1])  # slots that do not pair are an error, not a silent zip


def test_curve_pairs_pool_subjects_and_keep_each_one():
    import kshot_pairs as KP

    subjects = [_subject("h1", {0: [0.2, 0.2], 1: [0.6, 0.6], 3: [0.7, 0.5], 5: [0.7, 0.6]}),
                _subject("h2", {0: [0.1, 0.3], 1: [0.5, 0.5], 3: [0.5, 0.5], 5: [0.4, 0.5]})]
    out = KP.curve_pairs(subjects, "kshot")
    assert out["identity"]["3"] == pytest.approx((0.7 + 0.5 + 0.5 + 0.5) / 4, abs=1e-4)
    assert out["3-1"]["mean"] == pytest.approx(0.0, abs=1e-4) and out["3-1"]["images"] == 4
    assert out["3-1"]["per_subject"] == {"h1": 0.0, "h2": 0.0}
    assert out["5-3"]["per_subject"]["h1"] == pytest.approx(0.05, abs=1e-4)
    assert "2-1" not in out
    assert KP.curve_pairs(subjects, "kshot_reimagen") is None

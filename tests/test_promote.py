"""Promotion rules on a real sqlite MLflow registry: first candidate, better, worse, tie;
only evaluations on the current protocol count, and only like is compared with like."""
from __future__ import annotations

import pytest

from suti.tasks.evaluate import PROTOCOL_VERSION
from suti.tasks.promote import decide, promote

PROTO = f"p{PROTOCOL_VERSION}-test-abcd1234"


@pytest.fixture()
def registry(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/m.db")
    c = mlflow.MlflowClient()
    c.create_registered_model("suti-apprentice")
    exp = c.create_experiment("t", artifact_location=str(tmp_path / "art"))

    def add(overall, identity, proto=PROTO):
        run = c.create_run(exp)
        v = c.create_model_version("suti-apprentice", f"runs:/{run.info.run_id}/model", run.info.run_id)
        if overall is not None:  # what `suti eval` writes on the version
            for k, val in (("overall", overall), ("identity", identity)):
                c.set_model_version_tag("suti-apprentice", v.version, f"eval.{k}", str(val))
                c.set_model_version_tag("suti-apprentice", v.version, f"eval.{proto}.{k}", str(val))
            c.set_model_version_tag("suti-apprentice", v.version, "eval.protocol", proto)
        c.set_registered_model_alias("suti-apprentice", "candidate", v.version)
        return v.version

    return c, add


def test_first_candidate_becomes_champion(registry):
    c, add = registry
    v1 = add(0.3, 0.5)
    d = promote(c, 0.01)
    assert d.promoted and d.champion_after == v1 and "first" in d.reason
    assert c.get_model_version_by_alias("suti-apprentice", "champion").version == v1
    assert c.get_model_version("suti-apprentice", v1).tags["promotion.decision"] == "promoted"


def test_better_worse_tie(registry):
    c, add = registry
    v1 = add(0.30, 0.5)
    promote(c, 0.01)
    v2 = add(0.40, 0.5)  # better
    d = promote(c, 0.01)
    assert d.promoted and d.champion_after == v2
    v3 = add(0.20, 0.9)  # worse
    d = promote(c, 0.01)
    assert not d.promoted and d.champion_after == v2 and "worse" in d.reason
    assert c.get_model_version("suti-apprentice", v3).tags["promotion.decision"] == "kept-champion"
    add(0.405, 0.5)  # tie within margin, identity not better
    d = promote(c, 0.01)
    assert not d.promoted and "tie" in d.reason
    assert c.get_model_version_by_alias("suti-apprentice", "champion").version == v2
    assert v1 != v2


def test_decide_rule_table():
    assert decide((0.5, 0.5), None, 0.0)[0]
    assert decide((0.5, 0.5), (0.4, 0.5), 0.05)[0]
    assert not decide((0.42, 0.5), (0.4, 0.5), 0.05)[0]
    assert decide((0.42, 0.7), (0.4, 0.5), 0.05)[0]  # tie on overall, better identity
    assert not decide((None, None), (0.4, 0.5), 0.0)[0]


def test_no_candidate_is_a_clear_error(registry):
    c, add = registry
    with pytest.raises(FileNotFoundError, match="no 'suti-apprentice@candidate'"):
        promote(c)


def test_unevaluated_candidate_is_never_promoted(registry):
    c, add = registry
    v1 = add(None, None)  # no evaluation at all
    d = promote(c)
    assert not d.promoted and "no evaluation on the current protocol" in d.reason and "\n" not in d.reason
    with pytest.raises(Exception):
        c.get_model_version_by_alias("suti-apprentice", "champion")  # no champion was made
    v2 = add(0.9, 0.9, proto=f"p{PROTOCOL_VERSION}-val-abcd1234")  # a sweep's val score is not Table 1
    assert not promote(c).promoted
    v3 = add(0.9, 0.9, proto="p1-test-abcd1234")  # an old protocol (world v1)
    assert not promote(c).promoted
    assert c.get_model_version("suti-apprentice", v3).tags["promotion.decision"] == "kept-champion"
    assert len({v1, v2, v3}) == 3


def test_scores_compared_only_on_one_protocol(registry):
    c, add = registry
    v1 = add(0.30, 0.5)
    assert promote(c).promoted
    add(0.90, 0.9, proto=f"p{PROTOCOL_VERSION}-test-ffff0000")  # better, but on other subjects/settings
    d = promote(c)
    assert not d.promoted and "cannot be compared" in d.reason
    assert c.get_model_version_by_alias("suti-apprentice", "champion").version == v1

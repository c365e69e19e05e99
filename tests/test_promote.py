"""Promotion rules on a real sqlite MLflow registry: first candidate, better, worse, tie."""
from __future__ import annotations

import pytest

from suti.tasks.promote import decide, promote


@pytest.fixture()
def registry(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/m.db")
    c = mlflow.MlflowClient()
    c.create_registered_model("suti-apprentice")
    exp = c.create_experiment("t", artifact_location=str(tmp_path / "art"))

    def add(overall, identity):
        run = c.create_run(exp)
        v = c.create_model_version("suti-apprentice", f"runs:/{run.info.run_id}/model", run.info.run_id)
        if overall is not None:
            c.set_model_version_tag("suti-apprentice", v.version, "eval.overall", str(overall))
            c.set_model_version_tag("suti-apprentice", v.version, "eval.identity", str(identity))
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

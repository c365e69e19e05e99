"""One DAG: stage flows do not run their predecessors, they check them; `suti run --until`
and `--from` run part of the pipeline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import smoke_overrides


def test_selected_stages_and_bad_names():
    from suti.errors import UserError
    from suti.flows.stages import STAGES, selected

    assert selected(None, None) == STAGES
    assert selected("filter", None) == ("world", "foundation", "mine", "experts", "filter")
    assert selected(None, "sweep") == STAGES[STAGES.index("sweep"):]
    assert selected("experts", "experts") == ("experts",)
    with pytest.raises(UserError, match="not a stage"):
        selected("filtre", None)
    with pytest.raises(UserError, match="comes after"):
        selected("mine", "sweep")


@pytest.mark.parametrize("stage,needs", [("foundation", "world"), ("mine", "foundation"), ("experts", "mine"),
                                         ("filter", "experts"), ("sweep", "filter")])
def test_a_stage_checks_its_input_in_an_empty_workdir(stage, needs, tmp_path):
    from suti.errors import UserError
    from suti.flows.common import prepare
    from suti.flows.stages import require

    cfg, store = prepare(smoke_overrides(tmp_path / "wd"))
    with pytest.raises(UserError, match=f"run `suti {needs}` first"):
        require(needs, cfg, store, by=stage)


def test_finished_follows_the_config(smoke):
    """The shared smoke store has a world and foundation models: those stages read as finished
    for its config; another foundation recipe or renderer is not."""
    from omegaconf import OmegaConf

    from suti.flows.stages import finished

    ov, cfg, store = smoke
    assert finished("world", cfg, store) and finished("foundation", cfg, store)
    other = OmegaConf.merge(cfg, {"foundation": {"rater": {"steps": int(cfg.foundation.rater.steps) + 1}}})
    assert not finished("foundation", other, store)
    assert finished("world", other, store)


def test_stage_command_before_its_input_is_one_line_and_exit_2(tmp_path):
    suti = Path(sys.executable).with_name("suti")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([str(suti), "experts", *smoke_overrides(tmp_path / "wd")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    last = [x for x in p.stderr.splitlines() if x.strip()][-2:]
    assert any(x.startswith("suti: error: experts:") and "run `suti mine` first" in x for x in last), last
    assert not (tmp_path / "wd" / "store" / "experts").exists()  # nothing of the stage was started


def _reports(wd: Path) -> dict:
    """What the stages computed (timings, run ids and paths left out)."""
    r = {n: json.loads((wd / "reports" / f"{n}.json").read_text()) for n in ("mine", "filter", "sweep", "eval")}
    return {"mine": r["mine"]["counts"], "filter": r["filter"]["sizes"],
            "sweep": [(x["lambda"], x["size"], x.get("identity"), x.get("overall")) for x in r["sweep"]["lambdas"]],
            "eval": [{k: v for k, v in row.items() if "second" not in k} for row in r["eval"]["table"]]}


@pytest.mark.slow
def test_until_then_from_gives_the_reports_of_one_run(tmp_path):
    """`suti run --until filter` then `suti run --from sweep` = one `suti run` (smoke, two fresh
    workdirs: ~8 min here)."""
    from suti.flows.pipeline import pipeline_flow

    a, b = tmp_path / "a", tmp_path / "b"
    first = pipeline_flow(overrides=smoke_overrides(a), until="filter")
    rest = pipeline_flow(overrides=smoke_overrides(a), from_stage="sweep")
    whole = pipeline_flow(overrides=smoke_overrides(b))
    assert first["stages"] + rest["stages"] == whole["stages"] == list(whole["stage_entries"])
    assert set(whole["stage_entries"].values()) == {1}
    assert _reports(a) == _reports(b)

"""Every config group composes and validates; wrong values fail with one line."""
from __future__ import annotations

from pathlib import Path

import pytest

from suti.config import ConfigError, compose, conf_dir

GROUPS = sorted(p.name for p in Path(conf_dir()).iterdir() if p.is_dir() and not p.name.startswith("_"))


def _options(group):
    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("SUTI_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    extra = ["backbone.path=/nonexistent/sd"] if (group, option) == ("backbone", "stable-diffusion") else []
    cfg = compose([f"{group}={option}", f"workdir={tmp_path}", *extra])
    assert group in cfg or group == "profile"
    if group == "profile":
        assert cfg.profile_name == option


def test_profiles_shrink_and_grow(tmp_path):
    smoke = compose(["profile=smoke", f"workdir={tmp_path}"])
    default = compose([f"workdir={tmp_path}"])
    paper = compose(["profile=paper", f"workdir={tmp_path}"])
    assert smoke.foundation.base.steps < default.foundation.base.steps
    assert smoke.world.page_subjects < default.world.page_subjects < paper.world.page_subjects
    assert paper.expert.steps == 500 and paper.expert.lr == 1e-5 and paper.expert.guidance == 30
    assert paper.apprentice.guidance == 15 == paper.eval.guidance and paper.filter.lambda_ == 0.02


def test_file_store_uri_is_absolute(tmp_path):
    cfg = compose([f"workdir={tmp_path}"])
    assert cfg.storage.uri == f"file://{tmp_path.resolve()}/store"
    assert cfg.tracking.uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


@pytest.mark.parametrize("override,needle", [
    ("expert.steps=-1", "expert.steps must be >= 0"),
    ("backbone=nope", "unknown backbone 'nope'"),
    ("filter.lambda_=abc", "filter.lambda_ must be a number"),
    ("world.resolution=30", "multiple of 8"),
    ("expert.method=qlora", "expert.method must be full or lora"),
    ("storage.uri=ftp://x", "storage.uri must be"),
    ("nosuchkey=1", "nosuchkey"),
    ("backbone.prediction_type=v", "backbone.prediction_type must be"),
    ("foundation.base.min_snr_gamma=-1", "foundation.base.min_snr_gamma must be >= 0"),
    ("foundation.rater.shift=1.5", "foundation.rater.shift must be a whole number"),
    ("expert.compare_clusters=-2", "expert.compare_clusters must be >= 0"),
    ("sweep.steps=0", "sweep.steps must be >= 1"),
    ("pipeline.final_lambda=worst", "pipeline.final_lambda must be best, config, none or a number"),
    ("pipeline.eval_limit=0", "pipeline.eval_limit must be >= 1"),
    ("apprentice.demos_min=4", "apprentice.demos_min must be <= 3, got 4"),
    ("apprentice.source=clusters", "apprentice.source must be G or mix, got 'clusters'"),
    ("apprentice.targets_per_demo_set=3", "apprentice.targets_per_demo_set must divide apprentice.batch_size (16), got 3"),
    ("foundation.rater.precision=bf16", "foundation.rater.precision must be 32-true, bf16-mixed, auto, got 'bf16'"),
    # the typed schema (suti/schema.py): unknown keys and wrong types, named
    ("+expert.nope=1", "unknown config key 'expert.nope'"),
    ("apprentice.register=maybe", "apprentice.register must be true or false, got 'maybe'"),
    ("expert.clusters=4.5", "expert.clusters must be a whole number, got '4.5'"),
])
def test_wrong_values_are_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_error_inside_a_flow_ends_in_one_line_without_traceback(tmp_path):
    """`suti train` before `suti filter`: the flow raises inside a task; Prefect's engine would log
    the traceback, the CLI keeps only the message and exits 2."""
    import os
    import subprocess
    import sys

    suti = Path(sys.executable).with_name("suti")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([str(suti), "train", "profile=smoke", f"workdir={tmp_path / 'wd'}", "progress=false"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    last = [x for x in p.stderr.splitlines() if x.strip()][-2:]
    assert any(x.startswith("suti: error: missing artifact") and "suti filter" in x for x in last), last


@pytest.mark.parametrize("pick,sweep_steps,want", [
    ("best", 200, (0.01, True)),      # short sweep: the best lambda is trained again at full steps
    ("best", None, (0.01, False)),    # sweep at full steps: its best model is the final one
    ("config", None, (0.02, True)),   # filter.lambda_ differs from the sweep's best: trained
    ("none", 200, (None, True)),
    (0.015, 200, (0.015, True)),
])
def test_pipeline_final_apprentice_choice(pick, sweep_steps, want):
    from suti.flows.pipeline import final_choice

    cfg = compose([f"pipeline.final_lambda={'null' if pick is None else pick}",
                   f"sweep.steps={'null' if sweep_steps is None else sweep_steps}", "filter.lambda_=0.02"])
    sweep = {"best": {"lambda": 0.01, "model_version": "3", "overall": 0.1}}
    assert final_choice(cfg, sweep) == want
    assert final_choice(cfg, {"best": None})[1] is True  # nothing trained in the sweep: always train


def test_the_schema_names_every_key_the_yaml_must_give():
    """Defaults live in the YAML only: every schema field is set by the composed config (no
    `???` left but an unset `backbone.path`), and the apprentice pipeline takes its sampling
    defaults from the config instead of making them up."""
    from omegaconf import OmegaConf

    from suti.models.pipeline import Apprentice

    for profile in ("smoke", "default", "paper"):
        cfg = compose([f"profile={profile}"])
        assert OmegaConf.missing_keys(cfg) == set()
    assert compose([]).apprentice.guidance == OmegaConf.load(Path(conf_dir()) / "apprentice/default.yaml").guidance
    with pytest.raises(ValueError, match="guidance"):
        Apprentice(None, _Eval(), {"scheduler": "dpm", "steps": 2, "num_images": 1, "demos": 1})


class _Eval:
    def eval(self):
        return self

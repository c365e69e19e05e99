"""The data engine and the evaluation on the smoke profile: experts -> filter -> sweep
(nested MLflow runs) -> eval (every Table 1 row) -> promote."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def engine(smoke):
    from suti.flows.pipeline import pipeline_flow

    ov, cfg, store = smoke
    run = pipeline_flow(overrides=ov, until="filter")  # world .. filter, each stage once
    assert run["stages"] == ["world", "foundation", "mine", "experts", "filter"]
    assert run["stage_entries"] == dict.fromkeys(run["stages"], 1), run["stage_entries"]
    rep = json.loads((Path(cfg.reports_dir) / "filter.json").read_text())
    return ov, cfg, store, rep


def test_experts_outputs_and_records(engine):
    from suti.tasks.experts import finished_experts

    ov, cfg, store, _ = engine
    recs = finished_experts(store)
    assert recs
    for r in recs:
        assert {"expert_id", "samples", "seed", "scheduler", "sample_steps", "guidance", "train_seconds"} <= set(r)
        assert len(r["samples"]) == cfg.expert.prompts_per_cluster * cfg.expert.samples_per_prompt
        assert all(store.exists(s["key"]) for s in r["samples"])
    rep = json.loads((Path(cfg.reports_dir) / "experts.json").read_text())
    assert rep["trained"] + rep["reused"] + rep["failed"] == rep["experts"] and rep["failed"] == 0
    # both methods' speed (the other one timed beside on compare_clusters), and the check's figures on top
    assert set(rep["seconds_per_expert"]) == set(rep["experts_per_hour"]) == {"full", "lora"}
    assert all(v > 0 for v in rep["seconds_per_expert"].values()) and rep["compare"]["method"] == "lora"
    assert rep["gap_closed"] == rep["check"]["gap_closed"] and rep["text_score"] == rep["check"]["text_expert"]
    assert store.list("experts-compare") == ["experts-compare/lora.json"]  # the timing run's outputs are not kept



def test_experts_check_reused_while_nothing_changed(engine):
    """`suti experts` again (or `suti run` after a change downstream): its check (hundreds of
    samples) is reused while the experts, base, rater and config are unchanged."""
    from omegaconf import OmegaConf

    from suti.flows.experts import experts_flow, stored_check
    from suti.tasks.experts import expert_specs

    ov, cfg, store, _ = engine
    specs = expert_specs(store, cfg.expert.get("clusters"))
    first = stored_check(cfg, store, specs)
    assert first is not None and "gap_closed" in first
    rep = experts_flow(overrides=ov)
    assert rep["trained"] == 0 and rep["check"] == first
    changed = OmegaConf.merge(cfg, {"expert": {"check_clusters": int(cfg.expert.check_clusters) + 1}})
    assert stored_check(changed, store, specs) is None
    assert stored_check(cfg, store, specs[:-1]) is None


def test_experts_are_keyed_by_their_recipe_not_the_budget(engine):
    """A stored expert is reused only while its cluster, recipe and base hold; how many clusters
    the engine trains (or how they fan out) does not touch it; the filter reads only current ones."""
    from omegaconf import OmegaConf

    from suti.tasks.experts import base_recipe, current_experts, expert_fingerprint, expert_specs

    ov, cfg, store, rep = engine
    spec = expert_specs(store, cfg.expert.get("clusters"))[0]
    fp = lambda c, s=spec: expert_fingerprint(s, c, base_recipe(store), int(c.expert.samples_per_prompt))  # noqa: E731
    assert store.done_meta(f"experts/{spec.cluster_id}")["fingerprint"] == fp(cfg)
    assert fp(OmegaConf.merge(cfg, {"expert": {"clusters": 99, "runner": "dask", "check_clusters": 1}})) == fp(cfg)
    assert fp(OmegaConf.merge(cfg, {"expert": {"lr": 3e-4}})) != fp(cfg)
    other = spec.model_copy(update={"prompts": spec.prompts[:1]})
    assert fp(cfg, other) != fp(cfg)
    current = current_experts(cfg, store)
    assert rep["samples"] == sum(len(r["samples"]) for r in current) > 0
    assert current_experts(OmegaConf.merge(cfg, {"expert": {"steps": 7}}), store) == []  # another recipe: none current


def test_filter_sizes_non_increasing(engine):
    ov, cfg, store, rep = engine
    sizes = [s["size"] for s in rep["size_list"]]
    assert list(rep["sizes"].values()) == sizes and "none" in rep["sizes"]
    assert rep["kept_minus_dropped_overall"] == rep["kept_vs_dropped"]["overall_gain"]
    assert sizes[0] == rep["samples"] > 0
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))
    assert store.exists("filter/delta_histogram.png")


@pytest.mark.slow  # 284.7 s alone with its fixtures (8 eval flows); CI (.ci/run) runs it with the slow checks
def test_sweep_nests_runs_and_eval_promote(engine):
    import mlflow

    from suti.flows.eval import eval_flow
    from suti.flows.promote import promote_flow
    from suti.flows.sweep import sweep_flow

    ov, cfg, store, _ = engine
    sw = sweep_flow(overrides=ov)
    assert len(sw["lambdas"]) >= 4
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_registry_uri(cfg.tracking.uri)
    c = mlflow.MlflowClient()
    children = c.search_runs([c.get_run(sw["parent_run_id"]).info.experiment_id],
                             f"tags.mlflow.parentRunId = '{sw['parent_run_id']}'")
    assert len(children) == len(sw["lambdas"])
    own = {str(r["mlflow_run_id"]): "None" if r["lambda"] is None else str(float(r["lambda"])) for r in sw["lambdas"]}
    for ch in children:
        assert "G.size" in ch.data.metrics
        assert ch.data.params["lambda"] == own[ch.info.run_id]  # its own lambda, as a param
    trained = [r for r in sw["lambdas"] if r["overall"] is not None]
    assert trained and all(0 <= r["overall"] <= 1 for r in trained)
    reimagen = _check_reimagen(ov, store, c)
    ev = eval_flow(overrides=ov)
    methods = {r["method"] for r in ev["table"]}
    assert methods == {"oracle", "base", "expert", "reimagen", "apprentice", "dreamsuti"}
    assert [k["k"] for k in ev["kshot_reimagen"]] == [k["k"] for k in ev["kshot"]]
    assert ev["settings"]["reimagen"] == reimagen  # its content keys the results too
    for r in ev["table"]:
        for k in ("identity", "clip_i", "clip_t", "subject", "text", "photorealism", "overall", "seconds_per_subject",
                  "bytes_per_subject"):
            assert r[k] is not None, (r["method"], k)
    assert [k["k"] for k in ev["kshot"]] == [0, 1, 2, 3, 4] or len(ev["kshot"]) >= 4
    assert [v["level"] for v in ev["v2_levels"]] == [1, 2, 3]
    assert ev["records"] > 0 and store.exists(f"eval/{ev['eval_id']}/records.jsonl")
    app = json.loads((Path(cfg.reports_dir) / "apprentice.json").read_text())
    rows = {r["method"]: r for r in ev["table"]}
    gap = rows["oracle"]["identity"] - rows["base"]["identity"]
    assert app["gap_closed"] == pytest.approx((rows["apprentice"]["identity"] - rows["base"]["identity"]) / gap)
    assert app["expert_clip_t"] == rows["expert"]["clip_t"] and app["dreamsuti_identity"] == rows["dreamsuti"]["identity"]
    assert [k["k"] for k in app["kshot"]] == [k["k"] for k in ev["kshot"]]
    assert 0 < app["param_overhead"]["ratio"] < 1 and isinstance(app["checks"], dict)
    pr = promote_flow(overrides=ov)
    assert pr["champion_after"] is not None
    assert c.get_model_version_by_alias("suti-apprentice", "champion").version == pr["champion_after"]
    _check_protocol(cfg, store, sw, ev)
    _check_unregistered_models_get_their_own_results(ov, store, sw)
    _check_world_only_eval(ov, ev)


def _check_world_only_eval(ov, ev):
    """`eval.methods=[oracle,base,expert]` measures the world and the experts without loading an
    apprentice; the rows it shares with Table 1 are the same numbers (same slots, seeds, experts)."""
    from suti.flows.eval import eval_flow

    w = eval_flow(overrides=[*ov, "eval.methods=[oracle,base,expert]"])
    assert {r["method"] for r in w["table"]} == {"oracle", "base", "expert"} and w["model_id"] == "no-apprentice"
    full = {r["method"]: r for r in ev["table"]}
    for r in w["table"]:
        assert r["identity"] == pytest.approx(full[r["method"]]["identity"], abs=1e-6), r["method"]


def _check_reimagen(ov, store, client) -> str:
    """Re-Imagen: the apprentice's architecture on the raw mined clusters (no experts), registered
    apart; returns its content fingerprint."""
    from suti.flows.train import train_flow
    from suti.tasks.apprentice import load_apprentice
    from suti.tasks.evaluate import model_fingerprint
    from suti.tasks.experts import load_clusters

    rep = train_flow(overrides=ov, source="clusters")
    clusters = load_clusters(store)
    assert rep["source"] == "clusters" and rep["run_name"] == "reimagen"
    assert rep["rows"] == sum(len(c["images"]) for c in clusters)  # every cluster image is a target once
    assert rep["registered"]["name"] == "suti-reimagen" and rep["registered"]["alias"] == "candidate"
    v = client.get_model_version_by_alias("suti-reimagen", "candidate")
    assert v.tags["source"] == "clusters"
    return model_fingerprint(load_apprentice("models:/suti-reimagen@candidate"))


def _check_protocol(cfg, store, sw, ev):
    """World v2's yardstick: val for the sweep, test for Table 1; one prompt and seed per slot."""
    idx = store.get_json("world/heldout/index.json")["subjects"]
    split = {s["id"]: s["split"] for s in idx}
    assert sw["split"] == "val" and sw["subject_ids"] and all(split[s] == "val" for s in sw["subject_ids"])
    assert all(r["split"] == "val" for r in sw["lambdas"] if r["overall"] is not None)  # the sweep never reads test
    assert ev["split"] == "test" and ev["subject_ids"] and all(split[s] == "test" for s in ev["subject_ids"])
    assert not set(sw["subject_ids"]) & set(ev["subject_ids"])
    assert all(r["prompt_protocol"] == "shared" for r in ev["table"])
    records = [json.loads(x) for x in store.get_bytes(f"eval/{ev['eval_id']}/records.jsonl").decode().splitlines()]
    by_slot: dict = {}
    for r in records:
        by_slot.setdefault((r["subject_id"], r["slot"]), set()).add((r["prompt"], r["seed"]))
    methods = {r["method"] for r in records}
    assert methods == {"base", "expert", "reimagen", "apprentice", "dreamsuti"}
    assert by_slot and all(len(v) == 1 for v in by_slot.values())  # same prompt and seed across methods
    z = ev["zero_demos_vs_base"]
    assert z["slots"] > 0 and z["apprentice_base_trained"] == bool(cfg.apprentice.train_base)
    if not z["apprentice_base_trained"]:
        assert z["identity_max_abs_diff"] < 1e-6  # K = 0 is the base row


def _check_unregistered_models_get_their_own_results(ov, store, sw):
    """Two models without a registry version: results keyed by content, never shared."""
    from suti.flows.eval import eval_flow
    from suti.flows.sweep import sweep_overrides
    from suti.flows.common import prepare

    cfg, _ = prepare(ov)
    names = [f"sweep-lam{'none' if r['lambda'] is None else r['lambda']}" for r in sw["lambdas"] if r["overall"] is not None]
    runs = {n: store.done_meta(f"apprentice/{n}")["rows_digest"] for n in names if store.is_done(f"apprentice/{n}")}
    a, b = [n for i, n in enumerate(runs) if list(runs.values()).index(runs[n]) == i][:2]  # different rows
    ov2 = sweep_overrides(cfg, ov)
    ea, eb = eval_flow(overrides=ov2, model=a), eval_flow(overrides=ov2, model=b)
    assert ea["model_id"] != eb["model_id"] and ea["eval_id"] != eb["eval_id"]
    ra = next(r for r in ea["table"] if r["method"] == "apprentice")
    rb = next(r for r in eb["table"] if r["method"] == "apprentice")
    assert (ra["identity"], ra["clip_t"]) != (rb["identity"], rb["clip_t"])

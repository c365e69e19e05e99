"""Cluster mining and unseen prompts (`suti mine`) on the smoke world.

The smoke foundation models are barely trained, so these tests check structure and rules
(sharding, markers, reuse, no truth reads, robustness, skills, pluggable LLM parts), not
quality; the quality floors are measured on the default profile (see the README)."""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suti.config import compose
from suti.store import FileStore
from suti.tasks import mine as M
from suti.tasks import prompts as P
from suti.world import vocab as V

# the smoke CLIP squeezes every cosine into ~[0.99, 1]: fix a wide band so enough clusters are
# kept to check descriptions and prompts (the calibration is still computed and recorded)
WIDE = ["++mine.band=[-1.0,1.0]", "++mine.shard_size=4"]



def copy_world(store, dst: Path, truth: bool = False) -> Path:
    """World pages + foundation models of `store` into a fresh folder (without the truth)."""
    root = Path(store.root)
    skip = {"pretrain", "examples", "heldout"} | (set() if truth else {"truth"})
    shutil.copytree(root / "world", dst / "world", ignore=lambda d, names: [n for n in names if n in skip])
    shutil.copytree(root / "foundation", dst / "foundation")
    return dst


def config_for(ov, store_root: Path, *extra):
    from suti.flows.common import prepare

    cfg, _ = prepare([*ov, *WIDE, f"storage.uri=file://{store_root}", *extra])
    return cfg


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mined(smoke):
    from suti.flows.mine import mine_flow

    ov, cfg, store = smoke
    report = mine_flow(overrides=[*ov, *WIDE])
    return ov, cfg, store, report


def read_shards(store, manifest):
    return [json.loads(x) for k in manifest["shards"] for x in store.get_bytes(k).decode().splitlines() if x.strip()]


# ---------------------------------------------------------------- the flow on the smoke world

def test_flow_writes_complete_sharded_outputs(mined):
    ov, cfg, store, report = mined
    manifest = store.get_json("mine/manifest.json")
    assert manifest["shards"] == store.list("mine/clusters") and len(manifest["shards"]) >= 2
    rows = read_shards(store, manifest)
    assert len(rows) == manifest["clusters"] == report["counts"]["kept"] > 0
    assert all(len(store.get_bytes(k).decode().splitlines()) <= 4 for k in manifest["shards"])
    c = report["counts"]
    assert c["kept"] + sum(c["dropped"].values()) == c["candidate_clusters"] == c["pages"]  # one page per source here
    assert c["dropped"]["too_small"] > 0 and c["unreadable_images"] == 0
    for r in rows:
        assert set(r) >= {"cluster_id", "url", "images", "texts", "description", "class_word", "brand", "mean_sim"}
        assert len(r["images"]) >= 3 and len(r["texts"]) == len(r["images"])
        assert all(k.startswith("world/web/") and store.exists(k) for k in r["images"])
        assert all(r["description"] in t for t in r["texts"])
        assert r["class_word"] in {w for w, _ in V.CLASSES.values()}
    prompts = M.load_prompts(store)
    assert list(prompts) == [r["cluster_id"] for r in rows]
    assert all(len(ps) == cfg.expert.prompts_per_cluster for ps in prompts.values())
    # the done marker is the newest file of the output: written last
    files = [Path(store.root) / k for k in store.list("mine")]
    marker = Path(store.root) / "mine/_DONE.json"
    assert marker.stat().st_mtime_ns >= max(f.stat().st_mtime_ns for f in files)
    assert store.done_meta("mine")["fingerprint"] == manifest["fingerprint"] == report["fingerprint"]
    # report
    rep = json.loads((Path(cfg.reports_dir) / "mine.json").read_text())
    for key in ("counts", "band", "calibration", "purity", "recall", "brand_kept", "prompts",
                "prompts_repeated_within_cluster", "seconds"):
        assert key in rep
    assert rep["prompts_repeated_within_cluster"] == 0
    assert store.exists("mine/examples/clusters.png") and not rep["reused"]
    # the keys the checks read
    assert rep["clusters_total"] == rep["counts"]["candidate_clusters"] >= rep["clusters_kept"] == rep["counts"]["kept"] > 0
    assert set(rep["prompts_per_skill"]) == {"recontextualization", "attribute_edit", "style", "accessorization",
                                             "view_change"}


def test_band_calibration_is_recorded(mined):
    *_, report = mined
    cal = report["calibration"]
    assert report["band"] == [-1.0, 1.0] and not report["band_auto"]  # config wins ...
    for key in ("random_pairs", "pseudo_cluster_means", "near_duplicate_pairs", "auto_band"):
        assert key in cal  # ... and the unsupervised calibration is still measured and reported
    lo, hi = cal["auto_band"]
    assert lo == pytest.approx(cal["pseudo_cluster_means"]["q0.99"], abs=1e-5)
    assert lo < hi <= cal["near_duplicate_pairs"]["q0.01"]


def test_descriptions_keep_brands_and_prompts_cover_skills(mined):
    ov, cfg, store, report = mined
    clusters = M.load_clusters(store)
    # test-side truth: the brand of each subject page
    truth = {json.loads(x)["id"]: json.loads(x) for x in store.get_bytes("world/truth/subjects.jsonl").decode().splitlines()}
    labels = {f"world/{lab['key']}": lab for lab in map(json.loads, store.get_bytes("world/truth/labels.jsonl").decode().splitlines())}
    subject_clusters = [c for c in clusters if labels[c.images[0]]["kind"] == "subject"]
    assert subject_clusters
    for c in subject_clusters:
        brand = truth[labels[c.images[0]]["subject_id"]]["brand"]
        assert c.brand == brand and c.description.startswith(brand), (c.description, brand)
    assert report["brand_kept"] >= len(subject_clusters) / len(clusters) - 1e-9
    per_skill = report["prompts"]["per_skill"]
    assert set(per_skill) == set(P.SKILLS) and all(v > 0 for v in per_skill.values())
    assert report["prompts"]["compositional"] > 0
    for ps in M.load_prompts(store).values():
        assert len({p["text"] for p in ps}) == len(ps)
        for p in ps:
            assert set(p) == {"text", "skills", "context", "view", "edits", "accessories", "style"}


def mine_copy(ov, dst: Path, tmp_path: Path) -> dict:
    """`suti mine` on the store copied to `dst` (its own reports folder)."""
    from suti.flows.mine import mine_flow

    return mine_flow(overrides=[*ov, *WIDE, f"storage.uri=file://{dst}", f"reports_dir={tmp_path / 'reports'}"])


def test_rerun_reuses_and_no_stage_reads_truth(mined, tmp_path):
    from suti.flows.mine import mine_flow

    ov, cfg, store, report = mined
    # same config, same store: the finished output is reused, nothing is rewritten
    marker = Path(store.root) / "mine/_DONE.json"
    before = marker.stat().st_mtime_ns
    again = mine_flow(overrides=[*ov, *WIDE])
    assert again["reused"] and marker.stat().st_mtime_ns == before
    # a copy of the world without its truth (as a real corpus): every step runs, none reads
    # the truth (a read would fail: the files are not there), the same clusters come out
    dst = copy_world(store, tmp_path / "store")
    assert not (dst / "world" / "truth").exists()
    res = mine_copy(ov, dst, tmp_path)
    assert not res["reused"] and res["truth_check"]["skipped"] and res["purity"] is None
    copy = FileStore(dst)
    a = [(c.cluster_id, c.images, c.description, c.texts) for c in M.load_clusters(copy)]
    b = [(c.cluster_id, c.images, c.description, c.texts) for c in M.load_clusters(store)]
    assert a == b
    assert M.load_prompts(copy) == M.load_prompts(store)
    assert res["band"] == report["band"] and res["counts"] == report["counts"]


def test_corrupt_and_wrong_size_images_are_skipped(mined, tmp_path):
    from suti.models.scorers import Scorers

    ov, cfg, store, report = mined
    dst = copy_world(store, tmp_path / "store")
    pages = [json.loads(x) for x in (dst / "world/pages.jsonl").read_text().splitlines()]
    page = next(p for p in pages if len(p["images"]) >= 5)
    bad, small = page["images"][0]["key"], page["images"][1]["key"]
    (dst / "world" / bad).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (dst / "world" / small).write_bytes(png(np.zeros((8, 8, 3), np.uint8)))
    res = mine_copy(ov, dst, tmp_path)
    assert res["counts"]["unreadable_images"] == 2
    assert res["counts"]["clusters_with_unreadable_images"] == 1
    cid = M.cluster_id_for(M.source_key(page["url"]))
    kept = {c.cluster_id: c for c in M.load_clusters(FileStore(dst))}
    assert cid in kept and not {f"world/{bad}", f"world/{small}"} & set(kept[cid].images)
    assert len(kept[cid].images) == len(page["images"]) - 2
    # the scoring step names each skipped file and why
    warned: list[str] = []
    copy = FileStore(dst)
    scorers = Scorers.load(copy, cfg.backbone.clip_config, cfg.world.resolution)
    M.score_candidates(copy, scorers, M.group_by_source(M.read_pages(copy)), int(cfg.world.resolution), warned.append)
    assert f"world/{bad}" in " ".join(warned) and f"world/{small}" in " ".join(warned) and "wrong size" in " ".join(warned)


# ---------------------------------------------------------------- rules, no models

def test_grouping_key_is_host_and_path():
    pages = [
        {"page": "a", "url": "https://www.Zorvex.shop/products/bag-1?color=red", "images": [{"key": "web/a/0.png", "alt": "x"}]},
        {"page": "b", "url": "https://zorvex.shop/products/bag-1/#reviews", "images": [{"key": "web/b/0.png", "alt": "y"}]},
        {"page": "c", "url": "https://zorvex.shop/products/bag-2", "images": [{"key": "web/c/0.png"}]},
    ]
    groups = M.group_by_source(pages)
    assert [g.source for g in groups] == ["zorvex.shop/products/bag-1", "zorvex.shop/products/bag-2"]
    assert groups[0].pages == ["a", "b"] and [i.key for i in groups[0].images] == ["web/a/0.png", "web/b/0.png"]
    assert groups[0].cluster_id == M.cluster_id_for("zorvex.shop/products/bag-1") != groups[1].cluster_id


def test_brand_rule():
    alts = ["Zorvex backpack with the Eiffel Tower in the background", "buy Zorvex backpack online", "img_1234",
            "the new Zorvex backpack"]
    assert M.brand_from_alts(alts, "https://zorvex.shop/products/backpack-s1") == "Zorvex"
    # a name seen once is kept only when the URL confirms it; generic words never are
    assert M.brand_from_alts(["Kalumo mug", "img_1", "img_2"], "https://x.example/a") == ""
    assert M.brand_from_alts(["Kalumo mug", "img_1", "img_2"], "https://kalumo.shop/a") == "Kalumo"
    assert M.brand_from_alts(["Snow Blue Backpack", "Snow Blue Backpack"], "") == ""
    merged = M.RuleDescriptionMerger().merge(
        "https://zorvex.shop/p", ["Zorvex backpack - blue", "Zorvex blue backpack on top of pink fabric"],
        ["a blue backpack with red stripes", "a blue backpack with red stripes"],
        [{"cls": "backpack", "body": "blue", "accent": "red", "pattern": "stripes"},
         {"cls": "mug", "body": "pink", "accent": "red", "pattern": "stripes"}])
    assert merged.description == "Zorvex blue backpack with red stripes" and merged.class_word == "backpack"


def test_calibration_rule_on_synthetic_embeddings():
    """lo sits above what different-page pseudo-clusters reach, hi just below near-duplicates."""
    rng = np.random.default_rng(0)
    d = 16
    centres = rng.normal(size=(30, d))
    emb, owner = [], []
    for ci, c in enumerate(centres):
        for _ in range(4):
            v = c + 0.3 * rng.normal(size=d)
            emb.append(v / np.linalg.norm(v))
            owner.append(ci)
    emb = np.asarray(emb, np.float32)

    class FakeScorers:
        def image_embed(self, images):
            v = images.reshape(len(images), -1)[:, :d].astype(np.float32) - 127.5
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    images = rng.integers(0, 256, (40, 8, 8, 3)).astype(np.uint8)
    mc = M.MineConfig.from_cfg(compose(["workdir=/tmp/suti-unused"]))
    band = M.calibrate_band(emb, np.asarray(owner), [4] * 30, images, FakeScorers(), mc, seed=0)
    cal = band.calibration
    assert band.auto and band.lo == pytest.approx(cal["pseudo_cluster_means"]["q0.99"], abs=1e-5)
    dup = cal["near_duplicate_pairs"]["q0.01"]
    assert band.hi == pytest.approx(dup - mc.dup_margin * (dup - cal["random_pairs"]["q0.5"]), abs=1e-5)
    true_means = [M.mean_pairwise_cosine(emb[np.asarray(owner) == ci]) for ci in range(30)]
    assert np.mean([band.lo <= m <= band.hi for m in true_means]) > 0.9  # same-centre clusters fall in the band
    fixed = M.calibrate_band(emb, np.asarray(owner), [4] * 30, images, FakeScorers(), replace(mc, band=[0.1, 0.9]), 0)
    assert (fixed.lo, fixed.hi, fixed.auto) == (0.1, 0.9, False) and fixed.calibration["auto_band"]


def test_mine_config_is_validated():
    from omegaconf import OmegaConf

    from suti.config import ConfigError

    default = OmegaConf.to_container(compose(["workdir=/tmp/suti-unused"]).mine)
    assert M.MineConfig.from_cfg(OmegaConf.create({"mine": default})).band is None
    assert M.MineConfig.from_cfg(OmegaConf.create({"mine": {**default, "band": [0.5, 0.9]}})).band == [0.5, 0.9]
    for bad in ({"band": [0.9, 0.5]}, {"band": [0.5]}, {"shard_size": 0}, {"merger": "llm"}, {"bogus": 1}):
        with pytest.raises(ConfigError):
            M.MineConfig.from_cfg(OmegaConf.create({"mine": {**default, **bad}}))
    with pytest.raises(ConfigError, match="not set"):  # no defaults outside the YAML
        M.MineConfig.from_cfg(OmegaConf.create({"mine": {"band": None}}))


def _clusters(n: int):
    brands = ["Zorvex", "Kalumo", "Velrix", "Trizen", "Quaka"]
    return [M.MinedCluster(cluster_id=f"c{i:03d}", url="u", images=["a", "b", "c"], texts=["t"] * 3,
                           description=f"{brands[i % 5]}{i} blue backpack with red stripes", class_word="backpack",
                           brand=f"{brands[i % 5]}{i}", mean_sim=0.9,
                           attributes={"cls": "backpack", "body": "blue", "accent": "red", "pattern": "stripes"})
            for i in range(n)]


def test_template_prompts_balanced_deterministic_no_repeats():
    clusters = _clusters(40)
    a = P.write_all_prompts(clusters, 4, seed=0)
    assert a == P.write_all_prompts(clusters, 4, seed=0)  # deterministic
    stats = P.prompt_stats(a)
    assert stats["repeated_within_cluster"] == 0 and stats["prompts"] == 160
    counts = list(stats["per_skill"].values())
    assert max(counts) - min(counts) <= 2 and stats["compositional"] == 80
    p = next(p for p in a["c000"] if p["skills"] == ["recontextualization", "style"])
    assert p["text"].startswith("a ") and "Zorvex0 blue backpack with red stripes" in p["text"]
    edits = [p for ps in a.values() for p in ps if "attribute_edit" in p["skills"]]
    assert all(p["edits"] and p["edits"][0] != "blue" for p in edits)
    red = next(p for p in edits if p["edits"] == ["red"])
    assert "red " in red["text"] and "blue backpack" not in red["text"]  # the colour edit replaces the body colour
    many = P.write_all_prompts(clusters[:1], 20, seed=1)["c000"]
    assert len({p["text"] for p in many}) == 20


def test_llm_merger_and_prompt_writer_with_a_plain_callable():
    seen = []

    def complete(prompt: str) -> str:
        seen.append(prompt)
        if "product description" in prompt:
            return "Description: Zorvex striped blue backpack.\n(extra chatter)"
        return "Zorvex backpack photographed in a new way"

    llm = M.LLMDescriptionMerger(complete)
    assert isinstance(llm, M.DescriptionMerger)
    labels = [{"cls": "backpack", "body": "blue", "accent": "red", "pattern": "stripes"}] * 3
    out = llm.merge("https://zorvex.shop/p", ["Zorvex backpack"] * 3, ["a blue backpack with red stripes"] * 3, labels)
    assert out.description == "Zorvex striped blue backpack" and out.brand == "Zorvex" and out.class_word == "backpack"
    assert "Zorvex backpack" in seen[0] and "a blue backpack with red stripes" in seen[0]
    # an answer that drops the brand falls back to the rule-based description
    out = M.LLMDescriptionMerger(lambda p: "a blue backpack").merge("u", ["Zorvex backpack"] * 3, ["c"] * 3, labels)
    assert out.description == "Zorvex blue backpack with red stripes"

    writer = P.LLMPromptWriter(complete)
    assert isinstance(writer, P.PromptWriter)
    cl = _clusters(1)
    cl[0] = cl[0].model_copy(update={"brand": "Zorvex", "description": "Zorvex blue backpack with red stripes"})
    ps = writer.write(cl[0], 3, seed=0, rank=0)
    plan = P.TemplatePromptWriter().write(cl[0], 3, seed=0, rank=0)
    assert ps[0].text == "Zorvex backpack photographed in a new way"  # the LLM's phrasing ...
    assert [p.text for p in ps[1:]] == [p.text for p in plan[1:]]  # ... a repeat falls back to the template
    assert [(p.skills, p.context, p.style, p.edits) for p in ps] == [(p.skills, p.context, p.style, p.edits) for p in plan]

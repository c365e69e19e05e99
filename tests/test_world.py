"""The synthetic world: determinism, labels, held-out split, page kinds."""
from __future__ import annotations

import json

import numpy as np

from suti.store import open_store
from suti.world import vocab as V
from suti.world.corpus import WorldConfig, build_world
from suti.world.render import render
from suti.world.scene import Scene, generic_caption, make_subject

SMALL = dict(page_subjects=25, heldout_subjects=5, mixed_pages=4, duplicate_pages=3, small_pages=4,
             pretrain_subjects=20, pretrain_images=60)


def _build(tmp_path, name, **kw):
    store = open_store(f"file://{tmp_path / name}")
    return store, build_world(WorldConfig(**{**SMALL, **kw}), store)


def test_same_seed_byte_identical_different_seed_differs(tmp_path):
    s1, r1 = _build(tmp_path, "a")
    s2, r2 = _build(tmp_path, "b")
    s3, r3 = _build(tmp_path, "c", seed=1)
    assert r1["sha256"] == r2["sha256"] != r3["sha256"]
    keys = [k for k in s1.list("world/web") if k.endswith(".png")]
    assert keys and all(s1.get_bytes(k) == s2.get_bytes(k) for k in keys)
    assert r1["deterministic"] is True


def test_labels_are_complete_and_kept_apart(tmp_path):
    store, rep = _build(tmp_path, "w")
    pages = [json.loads(x) for x in store.get_bytes("world/pages.jsonl").decode().splitlines()]
    labels = [json.loads(x) for x in store.get_bytes("world/truth/labels.jsonl").decode().splitlines()]
    assert rep["pages"] == len(pages) and rep["images"] == len(labels)
    # pages carry only what the web shows: url, images, alt-texts; no subject ids
    assert set(pages[0]) == {"page", "url", "images"} and set(pages[0]["images"][0]) == {"key", "alt"}
    page_keys = {im["key"] for p in pages for im in p["images"]}
    assert page_keys == {lab["key"] for lab in labels}
    for lab in labels:
        assert lab["subject"]["cls"] in V.CLASSES and lab["context"] in V.CONTEXTS and lab["style"] in V.STYLES
    kinds = {lab["kind"] for lab in labels}
    assert kinds == {"subject", "mixed", "duplicate", "small"}
    # noise pages: mixed pages show several subjects, small pages < 3 images
    by_page = {}
    for lab in labels:
        by_page.setdefault(lab["page"], []).append(lab)
    assert any(len({x["subject_id"] for x in v}) > 1 for v in by_page.values() if v[0]["kind"] == "mixed")
    assert all(len(v) < 3 for v in by_page.values() if v[0]["kind"] == "small")


def test_heldout_never_on_pages(tmp_path):
    store, rep = _build(tmp_path, "h")
    held = {json.loads(x)["id"] for x in store.get_bytes("world/truth/heldout.jsonl").decode().splitlines()}
    labels = [json.loads(x) for x in store.get_bytes("world/truth/labels.jsonl").decode().splitlines()]
    assert held and rep["heldout_on_pages"] == 0
    assert not held & {lab["subject_id"] for lab in labels}
    idx = store.get_json("world/heldout/index.json")
    assert {s["id"] for s in idx["subjects"]} == held
    assert all(store.exists(f"world/{k}") for s in idx["subjects"] for k in s["demos"])
    assert store.exists("world/examples/factors.png") and store.exists("world/examples/pages_mixed.png")


def test_render_64px_and_factors_change_pixels():
    rng = np.random.default_rng(3)
    s = make_subject(rng, "x", "teapot")
    base = render(Scene(s, "studio", seed=1), 64)
    assert base.shape == (64, 64, 3) and base.dtype == np.uint8
    for change in (dict(context="snow"), dict(view="back"), dict(edits=("shiny",)), dict(accessories=("hat",)),
                   dict(style="sketch")):
        kw = {"context": "studio", "seed": 1, **change}
        assert not np.array_equal(render(Scene(s, **kw), 64), base), change


def test_generic_caption_has_no_brand():
    s = make_subject(np.random.default_rng(0), "x", "backpack")
    cap = generic_caption(Scene(s, "beach", view="back", accessories=("hat",), style="watercolor"))
    assert s.brand not in cap and "backpack" in cap and "on the beach" in cap and "back view" in cap


# ---------------------------------------------------------------- world v2: words name a subject only coarsely

def test_same_caption_subjects_render_differently():
    from suti.world.corpus import same_caption_subjects
    from suti.world.scene import caption_key, nearest_colour

    groups = same_caption_subjects(rows=4, per_row=4)
    assert len(groups) == 4
    for g in groups:
        assert len({caption_key(s) for s in g}) == 1  # every word of the caption is shared
        assert len({s.id for s in g}) == len(g)
        assert all(nearest_colour(s.body_rgb) == s.body and nearest_colour(s.accent_rgb) == s.accent for s in g)
        ims = [render(Scene(s, "studio", seed=1), 32).astype(int) for s in g]
        for i in range(len(ims)):
            for j in range(i + 1, len(ims)):
                # the same scene, the same words, a visibly different subject
                assert np.abs(ims[i] - ims[j]).mean() > 4.0


def test_identity_survives_views_and_styles():
    """The emblem and pattern are drawn in every view; a style does not erase the subject."""
    s = make_subject(np.random.default_rng(11), "x", "backpack")
    plain = s.__class__(**{**s.__dict__, "emblem": 0})
    for kw in (dict(view="side"), dict(view="back"), dict(view="top"), dict(style="watercolor"), dict(edits=("cube",))):
        a = render(Scene(s, "studio", seed=2, **kw), 64).astype(int)
        b = render(Scene(plain, "studio", seed=2, **kw), 64).astype(int)
        assert np.abs(a - b).sum() > 0, kw  # the emblem is there


def test_captions_use_vocabulary_words_only():
    rng = np.random.default_rng(4)
    words = set()
    for col in V.COLOURS:
        words.add(col)
    for _ in range(50):
        s = make_subject(rng, "x")
        cap = generic_caption(Scene(s, "snow", edits=("red",)))
        assert "red" in cap and s.word in cap and s.brand not in cap
        assert not any(ch.isdigit() for ch in cap)


def test_class_prompt_keeps_a_colour_edit():
    from suti.tasks.evaluate import dreambench_records

    s = make_subject(np.random.default_rng(2), "x", "backpack")
    recs = {tuple(r["edits"]): r for r in dreambench_records(s)}
    assert recs[("red",)]["class_text"] == "a red backpack"
    assert recs[("red",)]["text"].startswith("a red backpack with ")


def test_val_and_test_split_disjoint_and_cover_classes(tmp_path):
    store, rep = _build(tmp_path, "s", heldout_subjects=9, val_subjects=3)
    idx = store.get_json("world/heldout/index.json")["subjects"]
    val = [s["id"] for s in idx if s["split"] == "val"]
    test = [s["id"] for s in idx if s["split"] == "test"]
    assert len(val) == 3 and len(test) == 6 and not set(val) & set(test)
    assert rep["splits"] == {"val": 3, "test": 6}
    assert len({s["class"] for s in idx if s["split"] == "val"}) == 3
    assert store.exists("world/examples/same_caption.png")


def test_stale_world_is_rebuilt_when_the_renderer_changes(tmp_path, monkeypatch):
    from dataclasses import asdict

    from omegaconf import OmegaConf

    import suti.world.corpus as corpus
    from suti.flows.world import world_done

    store, rep = _build(tmp_path, "v")
    cfg = OmegaConf.create({"world": asdict(WorldConfig(**SMALL))})
    assert world_done(store, cfg)["sha256"] == rep["sha256"]
    assert rep["renderer_version"] == corpus.renderer_version()
    monkeypatch.setattr(corpus, "renderer_version", lambda: "v2-edited000000")
    assert world_done(store, cfg) is None  # an edited renderer never reuses the old world
    # ... and the foundation models trained on it are stale too
    from suti.tasks.foundation import recipe

    assert recipe(OmegaConf.create({"world": asdict(WorldConfig(**SMALL)), "seed": 0,
                                    "foundation": {"clip": {"steps": 1, "precision": "32-true"}}}), "clip")["world"]["renderer"] == "v2-edited000000"

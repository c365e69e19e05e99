"""delta-CLIP quality filter (Algorithm 1's last step):

    delta(y_s, C_s, p_s) = CLIP(y_s, p_s) - max_{x in C_s} CLIP(x, p_s)

keeps an expert sample only when it matches its prompt better than any of the cluster's
own images do (by more than lambda). G(lambda) = {(y_s, p_s, C_s) : delta > lambda};
lambda = None keeps every sample.

Each row also carries `identity`: the sample's mean identity-embedder cosine to its cluster's
images (how much of the subject the expert kept), which delta-CLIP does not look at."""
from __future__ import annotations

import json

import numpy as np

from suti.tasks.experts import read_image
from suti.tasks.judge import identity_scores


def delta_rows(scorers, store, resolution: int, records: list[dict]) -> list[dict]:
    """One row per sample of the given expert records (`current_experts`: the experts of the
    current mining and `expert.clusters`) with its delta and what the apprentice needs."""
    rows = []
    for rec in records:
        demos = np.stack([read_image(store, k, resolution) for k in rec["demo_keys"]])
        samples = np.stack([read_image(store, s["key"], resolution) for s in rec["samples"]])
        prompts = [s["prompt"] for s in rec["samples"]]
        t = scorers.text_embed(prompts)  # (S, D)
        ys = (scorers.image_embed(samples) * t).sum(1)  # CLIP(y_s, p_s)
        xs = (scorers.image_embed(demos) @ t.T).max(0)  # max_x CLIP(x, p_s)
        ident = identity_scores(scorers, samples, [demos] * len(samples))
        for s, y, x, i in zip(rec["samples"], ys, xs, ident):
            rows.append({"sample_key": s["key"], "cluster_id": rec["cluster_id"], "prompt": s["prompt"],
                         "prompt_record": s.get("prompt_record", {}), "delta": float(y - x),
                         "clip_sample": float(y), "clip_demo_max": float(x), "identity": float(i),
                         "demo_keys": rec["demo_keys"], "demo_texts": rec["demo_texts"]})
    return rows


def select(rows: list[dict], lam: float | None) -> list[dict]:
    """G(lambda)."""
    return list(rows) if lam is None else [r for r in rows if r["delta"] > lam]


def load_rows(store) -> list[dict]:
    """Every scored sample; only a finished filter output (its done marker) is read."""
    key = "filter/deltas.jsonl"
    if not store.is_done("filter") or not store.exists(key):
        from suti.store import StoreError

        raise StoreError(f"missing artifact: {store.url(key)} (run `suti filter` first)")
    return [json.loads(x) for x in store.get_bytes(key).decode().splitlines() if x.strip()]


def load_G(store, lam: float | None) -> list[dict]:
    """G(lambda): rows with delta > lambda (lambda None: every row)."""
    return select(load_rows(store), None if lam is None else float(lam))


def histogram_png(deltas: list[float], lam: float | None) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(deltas, bins=40, color="#4a7ab5")
    if lam is not None:
        ax.axvline(lam, color="#c0392b", linestyle="--", label=f"lambda = {lam}")
        ax.legend()
    ax.set_xlabel("delta-CLIP = CLIP(y, p) - max_x CLIP(x, p)")
    ax.set_ylabel("expert samples")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

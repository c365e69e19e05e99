"""The DAG's edges. The pipeline flow is the only place stages are chained; a stage flow
checks here that the stage it reads is finished for the current config (done markers and
fingerprints) and otherwise stops with one line naming the command that makes it.

    world -> foundation -> mine -> experts -> filter -> sweep -> apprentice -> reimagen -> eval -> promote
"""
from __future__ import annotations

from suti.errors import UserError

STAGES = ("world", "foundation", "mine", "experts", "filter", "sweep", "apprentice", "reimagen", "eval",
          "promote")
# the stage whose outputs each stage reads (the ones a finished() check exists for)
NEEDS = {"foundation": "world", "mine": "foundation", "experts": "mine", "filter": "experts", "sweep": "filter"}
WHAT = {"world": "the world", "foundation": "the foundation models", "mine": "the mined clusters",
        "experts": "the experts", "filter": "the delta-CLIP scores"}


def marker(stage: str) -> str:
    """Where a stage's completion (and the fingerprint of what it read) is kept."""
    return f"stages/{stage}"


def mark(store, stage: str, fingerprint: str, **meta) -> None:
    store.mark_done(marker(stage), {"fingerprint": fingerprint, **meta})


def marked(store, stage: str, fingerprint: str) -> dict | None:
    meta = store.done_meta(marker(stage))
    return meta if meta is not None and meta.get("fingerprint") == fingerprint else None


def experts_fingerprint(cfg, store) -> str:
    """The current mining's experts (`expert.clusters` of them), each by its own fingerprint
    (cluster content, recipe, base model)."""
    from suti.store import digest
    from suti.tasks.experts import base_recipe, expert_fingerprint, expert_specs

    base, n = base_recipe(store), int(cfg.expert.samples_per_prompt)
    return digest([(s.cluster_id, expert_fingerprint(s, cfg, base, n))
                   for s in expert_specs(store, cfg.expert.clusters)])


def filter_fingerprint(cfg, store) -> str:
    """What the filter's report depends on: the experts, the scorers, the filter config."""
    from omegaconf import OmegaConf

    from suti import keys as K
    from suti.store import digest

    return digest({"experts": experts_fingerprint(cfg, store), "resolution": int(cfg.world.resolution),
                   "scorers": {m: store.done_meta(K.foundation_done(m)) for m in ("clip", "identity", "rater")},
                   "filter": OmegaConf.to_container(cfg.filter, resolve=True), "seed": int(cfg.seed)})


def finished(stage: str, cfg, store) -> bool:
    """Are `stage`'s outputs finished for this config (and everything it read)?"""
    if stage in NEEDS and not finished(NEEDS[stage], cfg, store):
        return False
    if stage == "world":
        from suti.flows.world import world_done

        return world_done(store, cfg) is not None
    if stage == "foundation":
        from suti.flows.foundation import models_finished

        return models_finished(cfg, store)
    if stage == "mine":
        from suti.tasks import mine as M

        return M.mined_done(store, M.fingerprint(cfg, store, M.MineConfig.from_cfg(cfg))) is not None
    if stage == "experts":
        return marked(store, "experts", experts_fingerprint(cfg, store)) is not None
    if stage == "filter":
        return marked(store, "filter", filter_fingerprint(cfg, store)) is not None
    raise ValueError(f"no finished() check for stage {stage!r}")


def require(stage: str, cfg, store, by: str) -> None:
    """Stop `by` with one line when `stage` (what it reads) is not finished for this config."""
    if not finished(stage, cfg, store):
        raise UserError(f"{by}: {WHAT[stage]} for this config are not finished in {cfg.workdir}: "
                        f"run `suti {stage}` first (or `suti run --until {by}`)")


def selected(until: str | None, from_stage: str | None) -> tuple[str, ...]:
    """The stages `suti run --from A --until B` runs, in DAG order."""
    for name, v in (("--until", until), ("--from", from_stage)):
        if v is not None and v not in STAGES:
            raise UserError(f"{name} {v!r} is not a stage (choose from {', '.join(STAGES)})")
    lo = STAGES.index(from_stage) if from_stage else 0
    hi = STAGES.index(until) if until else len(STAGES) - 1
    if lo > hi:
        raise UserError(f"--from {from_stage} comes after --until {until} (stages: {' -> '.join(STAGES)})")
    return STAGES[lo:hi + 1]

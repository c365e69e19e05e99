"""Unseen prompts p_s per mined cluster: imaginary captions that ask an expert for what its
demonstrations never show (the paper's skills: re-contextualization, attribute editing,
art style, accessorization, view change), alone and two at once.

Template-based by default, from the world's vocabulary and `compose()`, so a prompt reads
"a watercolor painting of a Zorvex blue backpack with red stripes in the snow" and carries
structured fields (context, view, edits, accessories, style: vocabulary keys) that the
evaluation's auto-rater judges the text score with. An LLM can phrase the same plan through
any `complete(prompt) -> str` (`LLMPromptWriter`); the plan (and so the skill balance and
the structured fields) stays the template planner's.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel

from suti.world import vocab as V
from suti.world.scene import compose, stable_seed

RECONTEXT, EDIT, STYLE, ACCESSORY, VIEW = SKILLS = (
    "recontextualization", "attribute_edit", "style", "accessorization", "view_change")

# The skill plan, cycled over (cluster rank x prompt index): 20 slots, every single skill twice and
# every pair of skills once, single and compositional alternating, each skill in 6 slots, so the
# skills stay balanced over clusters whatever prompts_per_cluster is.
SCHEDULE: tuple[tuple[str, ...], ...] = (
    (RECONTEXT,), (RECONTEXT, STYLE), (EDIT,), (STYLE, EDIT), (STYLE,), (EDIT, ACCESSORY),
    (ACCESSORY,), (ACCESSORY, VIEW), (VIEW,), (VIEW, RECONTEXT),
    (RECONTEXT,), (RECONTEXT, EDIT), (EDIT,), (EDIT, VIEW), (STYLE,), (VIEW, STYLE),
    (ACCESSORY,), (STYLE, ACCESSORY), (VIEW,), (ACCESSORY, RECONTEXT),
)


class PromptSpec(BaseModel):
    text: str
    skills: list[str]
    context: str = "studio"  # vocabulary keys, as the world's scene labels use them
    view: str = "front"
    edits: list[str] = []
    accessories: list[str] = []
    style: str = "photo"


def subject_text(cluster, edits: tuple[str, ...] = ()) -> str:
    """The subject phrase of a cluster, with edits applied."""
    from suti.tasks.mine import subject_phrase

    attrs = getattr(cluster, "attributes", None) or {}
    if {"cls", "body", "accent", "pattern"} <= set(attrs):
        return subject_phrase(attrs, cluster.brand, edits)
    lead = [V.EDITS[e] for e in edits]  # a free-text description (e.g. an LLM's): edits lead it
    return " ".join([*lead, cluster.description])


def plan_prompt(skills: tuple[str, ...], rng: np.random.Generator, cluster=None) -> dict:
    """Draw the structured fields for one skill combination."""
    f = {"context": "studio", "view": "front", "edits": [], "accessories": [], "style": "photo"}
    for s in skills:
        if s == RECONTEXT:
            f["context"] = str(rng.choice([c for c in V.CONTEXT_KEYS if c != "studio"]))
        elif s == EDIT:
            body = (getattr(cluster, "attributes", None) or {}).get("body")
            f["edits"] = [str(rng.choice([e for e in V.EDIT_KEYS if e != body]))]  # "red" on a red mug is no edit
        elif s == STYLE:
            f["style"] = str(rng.choice([k for k in V.STYLE_KEYS if k != "photo"]))
        elif s == ACCESSORY:
            f["accessories"] = [str(rng.choice(V.ACCESSORY_KEYS))]
        elif s == VIEW:
            f["view"] = str(rng.choice([k for k in V.VIEW_KEYS if k != "front"]))
    return f


def template_text(cluster, fields: dict) -> str:
    return compose(subject_text(cluster, tuple(fields["edits"])), fields["context"], fields["view"],
                   tuple(fields["accessories"]), fields["style"])


@runtime_checkable
class PromptWriter(Protocol):
    """Writes `n` unseen prompts for one cluster; `rank` is the cluster's position (skill balance)."""

    def write(self, cluster, n: int, seed: int, rank: int) -> list[PromptSpec]: ...


class TemplatePromptWriter:
    """Skills from `SCHEDULE` (slot = rank * n + j), vocabulary picks from a per-cluster seed;
    a prompt that repeats one already written for the cluster is redrawn."""

    max_tries = 50

    def plan(self, cluster, n: int, seed: int, rank: int) -> list[tuple[tuple[str, ...], dict]]:
        rng = np.random.default_rng(stable_seed("prompts", seed, cluster.cluster_id))
        out, seen = [], set()
        for j in range(n):
            slot = rank * n + j
            # a combination whose picks are exhausted (e.g. 3 views) hands over to the next slot's
            for shift in range(len(SCHEDULE)):
                skills = SCHEDULE[(slot + shift) % len(SCHEDULE)]
                fields = next((f for f in (plan_prompt(skills, rng, cluster) for _ in range(self.max_tries))
                               if template_text(cluster, f) not in seen), None)
                if fields is not None:
                    break
            else:
                raise ValueError(f"cannot write {n} distinct prompts for {cluster.cluster_id}")
            seen.add(template_text(cluster, fields))
            out.append((skills, fields))
        return out

    def write(self, cluster, n: int, seed: int, rank: int) -> list[PromptSpec]:
        return [PromptSpec(text=template_text(cluster, f), skills=list(s), **f) for s, f in self.plan(cluster, n, seed, rank)]


LLM_PROMPT_TEMPLATE = """Write one short, imaginative text-to-image prompt about this product: {subject}.
It must show: {asks}. Keep the product's name "{name}" exactly. Answer with the prompt only.
Example of the form: {example}
Prompt:"""


class LLMPromptWriter:
    """Phrases the template planner's prompts through an LLM `complete(prompt) -> str`.
    An answer that is empty, drops the subject's name, or repeats another prompt of the
    cluster falls back to the template text."""

    def __init__(self, complete: Callable[[str], str], planner: TemplatePromptWriter | None = None):
        self.complete = complete
        self.planner = planner or TemplatePromptWriter()

    def write(self, cluster, n: int, seed: int, rank: int) -> list[PromptSpec]:
        from suti.tasks.mine.describe import _first_line

        out, seen = [], set()
        for skills, f in self.planner.plan(cluster, n, seed, rank):
            example = template_text(cluster, f)
            asks = "; ".join(_ask(s, f) for s in skills)
            name = cluster.brand or cluster.description
            text = _first_line(self.complete(LLM_PROMPT_TEMPLATE.format(subject=cluster.description, asks=asks,
                                                                        name=name, example=example)))
            if not text or name.lower() not in text.lower() or text in seen:
                text = example
            seen.add(text)
            out.append(PromptSpec(text=text, skills=list(skills), **f))
        return out


def _ask(skill: str, f: dict) -> str:
    if skill == RECONTEXT:
        return f"the place: {V.CONTEXTS[f['context']]}"
    if skill == EDIT:
        return f"the product made {', '.join(V.EDITS[e] for e in f['edits'])}"
    if skill == STYLE:
        return f"the art style: {V.STYLES[f['style']]}"
    if skill == ACCESSORY:
        return f"the product {', '.join(V.ACCESSORIES[a] for a in f['accessories'])}"
    return f"the view: {V.VIEWS[f['view']]}"


def make_writer(mc) -> PromptWriter:
    if mc.prompt_writer == "llm":
        from suti.tasks.mine import load_callable

        return LLMPromptWriter(load_callable(mc.llm_complete))
    return TemplatePromptWriter()


def write_all_prompts(clusters: list, n: int, seed: int, writer: PromptWriter | None = None) -> dict[str, list[dict]]:
    """cluster_id -> n prompt records, in cluster order (rank = position: balanced skills)."""
    writer = writer or TemplatePromptWriter()
    return {c.cluster_id: [p.model_dump() for p in writer.write(c, n, seed, rank)] for rank, c in enumerate(clusters)}


def prompt_stats(prompts: dict[str, list[dict]]) -> dict:
    """Prompt counts per skill, compositional ones, and repeats within a cluster (must be 0)."""
    per_skill = Counter(s for ps in prompts.values() for p in ps for s in p["skills"])
    return {"prompts": sum(len(ps) for ps in prompts.values()),
            "per_skill": {s: per_skill.get(s, 0) for s in SKILLS},
            "compositional": sum(1 for ps in prompts.values() for p in ps if len(p["skills"]) > 1),
            "repeated_within_cluster": sum(len(ps) - len({p["text"] for p in ps}) for ps in prompts.values())}

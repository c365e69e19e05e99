"""Subjects, scenes and the words that describe them.

A `Subject` is an identity (class, body and accent colour, pattern, shape parameters,
brand). A `Scene` puts a subject in a context, with a view, edits, accessories and a
style. Captions come in two kinds: *generic* (class-level, no brand: what a captioner
or a base text-to-image model knows) and *alt-text* (what a shop page writes, with the
brand name).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from suti.world import vocab as V


def stable_seed(*parts) -> int:
    """A 63-bit seed derived from any parts, stable across processes and Python runs."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


@dataclass(frozen=True)
class Subject:
    id: str
    cls: str  # key of vocab.CLASSES
    body: str  # colour key
    accent: str  # colour key, != body
    pattern: str  # vocab.PATTERNS
    w: float  # width scale, 0.8..1.2
    h: float  # height scale, 0.8..1.2
    variant: int  # class-specific detail variant, 0..2
    brand: str  # made-up brand name, capitalised

    @property
    def word(self) -> str:
        return V.CLASSES[self.cls][0]


@dataclass(frozen=True)
class Scene:
    subject: Subject
    context: str = "studio"
    view: str = "front"
    edits: tuple[str, ...] = ()
    accessories: tuple[str, ...] = ()
    style: str = "photo"
    seed: int = 0  # placement jitter

    def labels(self) -> dict:
        """Ground-truth labels of this scene (evaluation only)."""
        d = dataclasses.asdict(self)
        d["subject_id"] = self.subject.id
        d["edits"] = list(self.edits)
        d["accessories"] = list(self.accessories)
        return d


def brand_name(rng: np.random.Generator) -> str:
    s = rng.choice(V.BRAND_HEADS) + rng.choice(V.BRAND_MIDS) + rng.choice(V.BRAND_TAILS)
    return s.capitalize()


def make_subject(rng: np.random.Generator, sid: str, cls: str | None = None) -> Subject:
    """Draw a random identity."""
    cls = cls or str(rng.choice(V.CLASS_KEYS))
    body = str(rng.choice(V.COLOUR_KEYS))
    accent = str(rng.choice([c for c in V.COLOUR_KEYS if c != body]))
    return Subject(
        id=sid, cls=cls, body=body, accent=accent,
        pattern=str(rng.choice(V.PATTERNS)),
        w=round(float(rng.uniform(0.8, 1.2)), 3),
        h=round(float(rng.uniform(0.8, 1.2)), 3),
        variant=int(rng.integers(0, 3)),
        brand=brand_name(rng),
    )


def subject_from_dict(d: dict) -> Subject:
    return Subject(**{f.name: d[f.name] for f in dataclasses.fields(Subject)})


def scene_from_dict(d: dict) -> Scene:
    return Scene(subject=subject_from_dict(d["subject"]), context=d["context"], view=d["view"],
                 edits=tuple(d["edits"]), accessories=tuple(d["accessories"]),
                 style=d["style"], seed=int(d["seed"]))


@dataclass
class SceneMix:
    """Probabilities of each scene factor when scenes are drawn at random."""
    p_studio: float = 0.3  # chance of the neutral context
    p_view_front: float = 0.55  # chance of the front view
    p_edit: float = 0.12  # chance of one property edit
    p_accessory: float = 0.12  # chance of one accessory
    p_style: float = 0.15  # chance of a non-photo art style
    contexts: list[str] = field(default_factory=lambda: list(V.CONTEXT_KEYS))


def random_scene(rng: np.random.Generator, subject: Subject, mix: SceneMix | None = None) -> Scene:
    mix = mix or SceneMix()
    others = [c for c in mix.contexts if c != "studio"] or ["studio"]
    context = "studio" if (rng.random() < mix.p_studio and "studio" in mix.contexts) else str(rng.choice(others))
    view = "front" if rng.random() < mix.p_view_front else str(rng.choice(V.VIEW_KEYS[1:]))
    edits = (str(rng.choice(V.EDIT_KEYS)),) if rng.random() < mix.p_edit else ()
    acc = (str(rng.choice(V.ACCESSORY_KEYS)),) if rng.random() < mix.p_accessory else ()
    style = str(rng.choice(V.STYLE_KEYS[1:])) if rng.random() < mix.p_style else "photo"
    return Scene(subject, context, view, edits, acc, style, int(rng.integers(0, 2**31)))


# ---------------------------------------------------------------- words

def appearance_phrase(subject: Subject, edits: tuple[str, ...] = (), colours: bool = True) -> str:
    """'blue backpack with red stripes' (generic: no brand)."""
    body = subject.body
    words = []
    for e in edits:
        if e in ("red", "purple"):
            body = e
        else:
            words.append(V.EDITS[e])
    if colours:
        words.append(body)
    words.append(subject.word)
    s = " ".join(words)
    if colours and subject.pattern != "plain":
        s += f" with {subject.accent} {V.PATTERN_PHRASE[subject.pattern]}"
    elif colours:
        s += f" with {subject.accent} details"
    return s


def compose(subject_text: str, context: str = "studio", view: str = "front",
            accessories: tuple[str, ...] = (), style: str = "photo", article: bool = True) -> str:
    """Assemble a caption/prompt around a subject phrase, DreamBench style."""
    parts = []
    if style != "photo":
        parts.append(V.STYLES[style])
    if view != "front":
        parts.append(V.VIEWS[view])
    subj = subject_text
    if article and not subj.lower().startswith(("a ", "an ", "the ")):
        subj = ("an " if subj[:1].lower() in "aeiou" else "a ") + subj
    parts.append(subj)
    for a in accessories:
        parts.append(V.ACCESSORIES[a])
    if V.CONTEXTS[context]:
        parts.append(V.CONTEXTS[context])
    return " ".join(parts)


def generic_caption(scene: Scene, rng: np.random.Generator | None = None, drop: float = 0.0) -> str:
    """Class-level caption of a scene; with `drop` > 0 each optional part is dropped with
    that probability, so a model trained on them also follows short prompts."""
    def keep() -> bool:
        return rng is None or rng.random() >= drop

    colours = keep()
    context = scene.context if keep() else "studio"
    view = scene.view if keep() else "front"
    acc = scene.accessories if keep() else ()
    style = scene.style if keep() else "photo"
    edits = scene.edits if keep() else ()
    return compose(appearance_phrase(scene.subject, edits, colours), context, view, acc, style)


def subject_description(subject: Subject) -> str:
    """The full subject description with the brand: 'Zorvex blue backpack with red stripes'."""
    return f"{subject.brand} {appearance_phrase(subject)}"


ALT_TEMPLATES = [
    "{brand} {word}",
    "{brand} {word} - {body}",
    "the new {brand} {word}",
    "{brand} {word} {ctx}",
    "buy {brand} {word} online",
    "{brand} {body} {word}",
    "{brand}",
    "{word} by {brand}",
    "img_{n}",
]


def alt_text(scene: Scene, rng: np.random.Generator, p_brand: float = 0.92) -> str:
    """Alt-text as a shop page writes it: brand-heavy, terse, sometimes useless."""
    s = scene.subject
    tpl = str(rng.choice(ALT_TEMPLATES[:-1] if rng.random() < p_brand else ALT_TEMPLATES[-1:]))
    ctx = V.CONTEXTS[scene.context] or "studio shot"
    return tpl.format(brand=s.brand, word=s.word, body=s.body, ctx=ctx, n=int(rng.integers(1000, 9999)))

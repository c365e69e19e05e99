"""Subjects, scenes and the words that describe them.

A `Subject` is an identity (class, body and accent colour, pattern, shape parameters,
emblem, brand). World v2: the colours are continuous (`body_rgb`, `accent_rgb`; `body` and
`accent` are the nearest colour *words*, all a caption can say), the pattern has its own
geometry (period, fill, angle), every subject carries a small glyph (its `emblem`, like a
logo) and a continuous silhouette parameter (`shape`). Two subjects can share every word of
their caption and still look different: the words name a subject only coarsely. A `Scene` puts a subject in a context, with a view, edits, accessories and a
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
    body: str  # colour word nearest to body_rgb (what captions say)
    accent: str  # colour word nearest to accent_rgb, != body
    pattern: str  # vocab.PATTERNS
    w: float  # width scale, 0.8..1.2
    h: float  # height scale, 0.8..1.2
    variant: int  # class-specific detail variant, 0..2
    brand: str  # made-up brand name, capitalised
    body_rgb: tuple[int, int, int] | None = None  # the actual body colour (None: the word's colour)
    accent_rgb: tuple[int, int, int] | None = None  # the actual accent colour (None: the word's colour)
    pattern_period: float = 4.0  # pattern period in target pixels (stripe/dot/check spacing)
    pattern_fill: float = 0.4  # stripe width / dot size as a share of the period (the body colour dominates)
    pattern_angle: float = 90.0  # pattern orientation in degrees (90: horizontal stripes)
    emblem: int = 0  # 9-bit 3x3 glyph drawn in the accent colour (0: none)
    shape: float = 0.5  # continuous silhouette parameter, 0..1 (corner radius, taper, neck, ...)

    @property
    def word(self) -> str:
        return V.CLASSES[self.cls][0]

    @property
    def body_colour(self) -> tuple[int, int, int]:
        return tuple(self.body_rgb) if self.body_rgb is not None else V.COLOURS[self.body]

    @property
    def accent_colour(self) -> tuple[int, int, int]:
        return tuple(self.accent_rgb) if self.accent_rgb is not None else V.COLOURS[self.accent]


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


def _lab(rgb) -> np.ndarray:
    """sRGB (0-255) -> CIE L*a*b* (D65): distances there are close to what people see."""
    c = np.asarray(rgb, float) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


_VOCAB_LAB = {k: _lab(v) for k, v in V.COLOURS.items()}


def nearest_colour(rgb) -> str:
    """The vocabulary's colour word perceptually nearest to an RGB colour (what a caption can say)."""
    v = _lab(rgb)
    return min(V.COLOUR_KEYS, key=lambda k: float(((_VOCAB_LAB[k] - v) ** 2).sum()))


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A continuous colour: mostly saturated hues, sometimes a neutral (grey-ish) tone."""
    import colorsys

    if rng.random() < 0.2:
        h, s, v = rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.12, 0.95)
    else:
        h, s, v = rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def random_emblem(rng: np.random.Generator) -> int:
    """A 3x3 glyph with 3-6 cells set (never empty, never a full block)."""
    while True:
        g = int(rng.integers(1, 511))
        if 3 <= bin(g).count("1") <= 6:
            return g


def make_subject(rng: np.random.Generator, sid: str, cls: str | None = None) -> Subject:
    """Draw a random identity: class, continuous colours (named by their nearest words),
    pattern and its geometry, emblem, silhouette, brand."""
    cls = cls or str(rng.choice(V.CLASS_KEYS))
    body_rgb = random_colour(rng)
    body = nearest_colour(body_rgb)
    while True:  # the accent must read as another colour word and stand out on the body
        accent_rgb = random_colour(rng)
        accent = nearest_colour(accent_rgb)
        if accent != body and float(np.abs(np.subtract(accent_rgb, body_rgb)).sum()) > 150:
            break
    pattern = str(rng.choice(V.PATTERNS))
    return Subject(
        id=sid, cls=cls, body=body, accent=accent, pattern=pattern,
        w=round(float(rng.uniform(0.8, 1.2)), 3),
        h=round(float(rng.uniform(0.8, 1.2)), 3),
        variant=int(rng.integers(0, 3)),
        brand=brand_name(rng),
        body_rgb=body_rgb, accent_rgb=accent_rgb,
        pattern_period=round(float(rng.uniform(3.0, 6.0)), 3),
        pattern_fill=round(float(rng.uniform(0.2, 0.42)), 3),
        pattern_angle=round(float(rng.uniform(0.0, 180.0)), 1),
        emblem=random_emblem(rng),
        shape=round(float(rng.uniform(0.0, 1.0)), 3),
    )


def subject_from_dict(d: dict) -> Subject:
    kw = {}
    for f in dataclasses.fields(Subject):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return Subject(**kw)


def caption_key(subject: Subject) -> str:
    """Everything a caption can say about a subject's look (two subjects with the same key
    share every word of their captions)."""
    return appearance_phrase(subject)


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
    """'blue backpack with red stripes' (generic: no brand). Without `colours` only the class
    word and the edits remain; a colour edit is an edit and stays ('a red backpack')."""
    body = subject.body
    words = []
    recolour = None
    for e in edits:
        if e in ("red", "purple"):
            body = recolour = e
        else:
            words.append(V.EDITS[e])
    if colours:
        words.append(body)
    elif recolour:
        words.append(recolour)
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

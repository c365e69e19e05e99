"""Step 5: one subject description per kept cluster (rule-based or an LLM merger)."""
from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Protocol, runtime_checkable

from suti.tasks.mine.config import MineConfig, load_callable
from suti.tasks.mine.records import ImageRecord, MergedDescription, MinedCluster, ScoredCluster
from suti.tasks.mine.scoring import source_key
from suti.world import vocab as V
from suti.world.scene import Subject, appearance_phrase, compose


# ---------------------------------------------------------------- 5. descriptions

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# Words a shop's alt-text uses that are not a name: the world's whole vocabulary plus shop talk.
GENERIC_WORDS: frozenset[str] = frozenset(
    w for phrase in [*(c[0] for c in V.CLASSES.values()), *V.CLASS_KEYS, *V.COLOUR_KEYS, *V.PATTERNS,
                     *V.PATTERN_PHRASE.values(), *V.CONTEXTS.values(), *V.CONTEXT_KEYS, *V.EDITS.values(),
                     *V.ACCESSORIES.values(), *V.STYLES.values(), *V.VIEWS.values(),
                     "the a an new buy online by for sale shop store official product products photo image img picture "
                     "studio shot view of with and in on at our best top edition collection original classic gift"]
    for w in _words(phrase))
CLASS_WORDS = {v[0]: k for k, v in V.CLASSES.items()}  # "teddy bear" -> "plushie"
_CONTEXT_PHRASES = sorted((p for p in V.CONTEXTS.values() if p), key=len, reverse=True)


def brand_from_alts(alts: list[str], url: str = "") -> str:
    """The name a cluster's alt-texts keep repeating: capitalised tokens that are not generic
    vocabulary, counted once per alt-text; the URL (host + path) breaks ties and may confirm a
    name seen once. '' when nothing recurs."""
    counts: Counter = Counter()
    first: dict[str, str] = {}
    for alt in alts:
        seen = set()
        for tok in re.findall(r"[A-Za-z][A-Za-z0-9'&]*", alt or ""):
            low = tok.lower()
            if tok[0].isupper() and low not in GENERIC_WORDS and len(low) > 1 and low not in seen:
                seen.add(low)
                counts[low] += 1
                first.setdefault(low, tok)
    if not counts:
        return ""
    url_words = set(_words(source_key(url))) if url else set()
    best = max(counts, key=lambda w: (counts[w] + (0.5 if w in url_words else 0.0), -list(first).index(w)))
    if counts[best] >= 2 or best in url_words or len(alts) == 1:
        return first[best][0].upper() + first[best][1:]
    return ""


def _alt_mentions(alts: list[str], vocab: dict[str, str]) -> list[str]:
    """Vocabulary keys mentioned by alt-texts (context phrases removed first: 'pink fabric'
    is a background, not the product's colour), one vote per alt-text."""
    out = []
    for alt in alts:
        low = " " + " ".join(_words(alt)) + " "
        for phrase in _CONTEXT_PHRASES:
            low = low.replace(" " + " ".join(_words(phrase)) + " ", " ")
        hits = [key for word, key in vocab.items() if f" {word} " in low]
        if len(hits) == 1:  # an alt-text naming two classes/colours says nothing certain
            out.append(hits[0])
    return out


def _majority(votes: list[str], default: str) -> str:
    if not votes:
        return default
    c = Counter(votes)
    top = max(c.values())
    return next(v for v in votes if c[v] == top)  # ties: first seen, deterministic


def subject_phrase(attributes: dict, brand: str, edits: tuple[str, ...] = ()) -> str:
    """'Zorvex blue backpack with red stripes'; with edits ('shiny', 'red', 'cube') the
    edit words lead and a colour edit replaces the body colour: 'red Zorvex backpack with ...'."""
    subj = Subject(id="", cls=attributes["cls"], body=attributes["body"], accent=attributes["accent"],
                   pattern=attributes["pattern"], w=1.0, h=1.0, variant=0, brand=brand)
    colour = [e for e in edits if e in ("red", "purple")]
    lead = [V.EDITS[e] for e in edits if e not in ("red", "purple")] + colour
    plain = appearance_phrase(subj, colours=True)  # "blue backpack with red stripes"
    if colour:
        plain = plain[len(subj.body) + 1:]  # drop the body colour: the edit names the new one
    return " ".join([*lead, *([brand] if brand else []), plain])


@runtime_checkable
class DescriptionMerger(Protocol):
    """Merges a cluster's alt-texts and generic captions into one subject description."""

    def merge(self, url: str, alts: list[str], captions: list[str], labels: list[dict]) -> MergedDescription: ...


class RuleDescriptionMerger:
    """Brand = the capitalised non-generic name the alt-texts repeat; class, colours and pattern
    = majority votes of the captioner's per-image labels plus what alt-texts say outright
    ('Zorvex backpack - blue'). Output: 'Zorvex blue backpack with red stripes'."""

    def __init__(self, alt_weight: int = 3):
        self.alt_weight = alt_weight  # votes per alt-text naming the class/colour (the shop knows its product)

    def merge(self, url: str, alts: list[str], captions: list[str], labels: list[dict]) -> MergedDescription:
        brand = brand_from_alts(alts, url)
        w = self.alt_weight
        cls = _majority([d["cls"] for d in labels] + _alt_mentions(alts, CLASS_WORDS) * w, V.CLASS_KEYS[0])
        body = _majority([d["body"] for d in labels] + _alt_mentions(alts, {c: c for c in V.COLOUR_KEYS}) * w,
                         V.COLOUR_KEYS[0])
        accents = [d["accent"] for d in labels if d["accent"] != body]
        accent = _majority(accents, next(c for c in V.COLOUR_KEYS if c != body))
        pattern = _majority([d["pattern"] for d in labels], "plain")
        attrs = {"cls": cls, "body": body, "accent": accent, "pattern": pattern}
        return MergedDescription(description=subject_phrase(attrs, brand), brand=brand, class_word=V.CLASSES[cls][0],
                                 attributes=attrs)


LLM_MERGE_PROMPT = """You write one short product description for a text-to-image dataset.
The same product appears in several web images. Their alt-texts (written by the shop, they
name the brand) and generic captions (written by a captioner, they describe the look but
never know the brand) are below. Write ONE noun phrase that keeps the brand or name exactly
as spelled in the alt-texts and adds the class, main colour and pattern from the captions,
e.g. "Zorvex blue backpack with red stripes". Answer with the phrase only.

Page: {url}
Alt-texts:
{alts}
Captions:
{captions}
Description:"""


class LLMDescriptionMerger:
    """The same merge asked of any LLM through `complete(prompt) -> str` (no client or network
    here: pass one in). The rule-based merge supplies brand, class word and attributes and
    is the fallback when the answer is empty or drops the brand."""

    def __init__(self, complete: Callable[[str], str], fallback: DescriptionMerger | None = None):
        self.complete = complete
        self.fallback = fallback or RuleDescriptionMerger()

    def merge(self, url: str, alts: list[str], captions: list[str], labels: list[dict]) -> MergedDescription:
        base = self.fallback.merge(url, alts, captions, labels)
        prompt = LLM_MERGE_PROMPT.format(url=url, alts="\n".join(f"- {a}" for a in alts),
                                         captions="\n".join(f"- {c}" for c in captions))
        answer = _first_line(self.complete(prompt))
        if not answer or (base.brand and base.brand.lower() not in answer.lower()):
            return base
        return base.model_copy(update={"description": answer})


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip().strip('"').strip("'").strip()
        if line.lower().startswith("description:"):
            line = line.split(":", 1)[1].strip()
        if line:
            return line.rstrip(".")
    return ""


def make_merger(mc: MineConfig) -> DescriptionMerger:
    if mc.merger == "llm":
        return LLMDescriptionMerger(load_callable(mc.llm_complete))
    return RuleDescriptionMerger()


def demo_text(description: str, labels: dict) -> str:
    """The text beside one demonstration image: the description in the image's predicted
    context, view, accessories and style ('a Zorvex blue backpack ... on the beach')."""
    ctx = labels.get("context", "studio")
    return compose(description, ctx if ctx in V.CONTEXTS else "studio", labels.get("view", "front"),
                   tuple(a for a in labels.get("accessories", []) if a in V.ACCESSORIES), labels.get("style", "photo"))


def describe_cluster(s: ScoredCluster, records: list[ImageRecord], merger: DescriptionMerger) -> MinedCluster:
    """One kept cluster -> its mined record (description, per-image texts, class word, brand)."""
    by_key = {r.key: r for r in records}
    recs = [by_key[k] for k in s.images]
    m = merger.merge(s.url, s.alts, [r.caption for r in recs], [r.labels for r in recs])
    return MinedCluster(cluster_id=s.cluster_id, url=s.url, images=list(s.images),
                        texts=[demo_text(m.description, r.labels) for r in recs], description=m.description,
                        class_word=m.class_word, brand=m.brand, mean_sim=round(float(s.mean_sim), 6),
                        attributes=m.attributes)

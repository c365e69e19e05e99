"""The records mining passes between its steps (pydantic models, JSON in the store)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


# ---------------------------------------------------------------- records

class PageImage(BaseModel):
    key: str  # world-relative key, "web/<page>/<k>.png"
    alt: str = ""


class Candidate(BaseModel):
    """One candidate cluster: every (image, alt-text) pair of one source."""
    cluster_id: str
    source: str  # host + path: the grouping key
    url: str  # first URL seen for this source
    pages: list[str]
    images: list[PageImage]


class ScoredCluster(BaseModel):
    """A candidate after decoding and embedding its images."""
    cluster_id: str
    url: str
    images: list[str]  # store keys of the readable images ("world/web/p00012/0.png")
    alts: list[str]  # their alt-texts
    unreadable: int = 0  # images skipped (corrupt, undecodable, wrong size, missing)
    mean_sim: float | None = None  # mean CLIP cosine over distinct pairs (None below 2 images)


class Band(BaseModel):
    lo: float
    hi: float
    auto: bool  # True when calibrated, False when mine.band fixed it
    rule: str
    calibration: dict


class Decision(BaseModel):
    cluster_id: str
    reason: Literal["kept", "too_small", "below_band", "above_band"]
    images: int
    mean_sim: float | None = None


class ImageRecord(BaseModel):
    """What the captioner made of one readable image."""
    key: str
    cluster_id: str
    caption: str
    labels: dict


class MergedDescription(BaseModel):
    description: str  # "Zorvex blue backpack with red stripes"
    brand: str = ""  # "" when no name recurs
    class_word: str  # "backpack"
    attributes: dict = {}  # cls / body / accent / pattern keys when known (prompts edit them)


class MinedCluster(BaseModel):
    cluster_id: str
    url: str
    images: list[str]
    texts: list[str]  # one demo text per image
    description: str
    class_word: str
    brand: str
    mean_sim: float
    attributes: dict = {}

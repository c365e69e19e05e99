"""The synthetic world's vocabulary: subject classes, colours, patterns, contexts,
property edits, accessories, art styles and views.

Contexts and edits mirror DreamBench's 25 object prompts (20 re-contextualizations +
5 property edits), plus a neutral `studio` context used by product pages.
Every label space here is also the auto-rater's output space.
"""
from __future__ import annotations

# class key -> (class word used in prompts, live subject?)
CLASSES: dict[str, tuple[str, bool]] = {
    "backpack": ("backpack", False),
    "mug": ("mug", False),
    "bowl": ("bowl", False),
    "can": ("can", False),
    "candle": ("candle", False),
    "clock": ("clock", False),
    "sneaker": ("sneaker", False),
    "teapot": ("teapot", False),
    "vase": ("vase", False),
    "plushie": ("teddy bear", False),
    "robot": ("toy robot", False),
    "dog": ("dog", True),
    "cat": ("cat", True),
}
CLASS_KEYS = list(CLASSES)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (240, 215, 45),
    "green": (50, 165, 60),
    "blue": (35, 80, 210),
    "purple": (135, 50, 180),
    "pink": (245, 140, 190),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "gray": (130, 130, 130),
    "teal": (25, 155, 155),
}
COLOUR_KEYS = list(COLOURS)

PATTERNS = ["plain", "stripes", "dots", "checker"]
# how a pattern reads in a caption: "a blue backpack with red stripes"
PATTERN_PHRASE = {"plain": "", "stripes": "stripes", "dots": "dots", "checker": "checks"}

# context key -> the DreamBench-style phrase that follows the subject
CONTEXTS: dict[str, str] = {
    "studio": "",
    "jungle": "in the jungle",
    "snow": "in the snow",
    "beach": "on the beach",
    "cobblestone": "on a cobblestone street",
    "pink_fabric": "on top of pink fabric",
    "wooden_floor": "on top of a wooden floor",
    "city": "with a city in the background",
    "mountain": "with a mountain in the background",
    "blue_house": "with a blue house in the background",
    "purple_rug_forest": "on top of a purple rug in a forest",
    "wheat_field": "with a wheat field in the background",
    "autumn_tree": "with a tree and autumn leaves in the background",
    "eiffel": "with the Eiffel Tower in the background",
    "water": "floating on top of water",
    "milk": "floating in an ocean of milk",
    "sunflowers": "on top of green grass with sunflowers around it",
    "mirror": "on top of a mirror",
    "sidewalk": "on top of the sidewalk in a crowded street",
    "dirt_road": "on top of a dirt road",
    "white_rug": "on top of a white rug",
}
CONTEXT_KEYS = list(CONTEXTS)

# property edits (DreamBench's last five prompts)
EDITS: dict[str, str] = {
    "red": "red",
    "purple": "purple",
    "shiny": "shiny",
    "wet": "wet",
    "cube": "cube shaped",
}
EDIT_KEYS = list(EDITS)

ACCESSORIES: dict[str, str] = {
    "hat": "wearing a hat",
    "glasses": "wearing glasses",
    "scarf": "wearing a scarf",
}
ACCESSORY_KEYS = list(ACCESSORIES)

# style key -> caption prefix
STYLES: dict[str, str] = {
    "photo": "a photo of",
    "watercolor": "a watercolor painting of",
    "sketch": "a pencil sketch of",
    "pixel": "a pixel art drawing of",
    "popart": "a pop art poster of",
}
STYLE_KEYS = list(STYLES)

VIEWS: dict[str, str] = {
    "front": "",
    "side": "side view of",
    "back": "back view of",
    "top": "top view of",
}
VIEW_KEYS = list(VIEWS)

# Syllables for made-up brand names ("Zorvex", "Kalumo"): never generic words, so the
# base model cannot know them.
BRAND_HEADS = ["zor", "ka", "vel", "mu", "tri", "qua", "bri", "lo", "fen", "dra", "ny", "ox",
               "pel", "ru", "sil", "tho", "gli", "wex", "yo", "ju"]
BRAND_MIDS = ["", "la", "ri", "mo", "ve", "xi", "nu", "ba", "ti", "so"]
BRAND_TAILS = ["vex", "mo", "rix", "dal", "zen", "ka", "lon", "tis", "peo", "gar", "nix", "ble"]

"""Store keys that more than one module reads or writes, named once."""

FOUNDATION_MODELS = ("clip", "identity", "rater", "base")


def foundation_model(name: str) -> str:
    """Weights (and meta) of a foundation model: `foundation/<name>/model.pt`."""
    return f"foundation/{name}/model.pt"


def foundation_done(name: str) -> str:
    """The done marker of a foundation model (its recipe, seconds, loss)."""
    return f"foundation/{name}"


CLIP, IDENTITY, RATER, BASE = (foundation_model(m) for m in FOUNDATION_MODELS)

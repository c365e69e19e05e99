"""Promotion by alias: compare the `candidate` version of a registered model with the
`champion` on the evaluation's overall score (then identity), move `champion` when the
candidate is better by a margin, and record why in the versions' tags."""
from __future__ import annotations

from dataclasses import dataclass

MODEL = "suti-apprentice"


@dataclass
class Decision:
    promoted: bool
    reason: str
    candidate: str | None
    champion_before: str | None
    champion_after: str | None


def _score(client, name: str, version: str) -> tuple[float | None, float | None]:
    v = client.get_model_version(name, version)
    def num(key):
        try:
            return float(v.tags[key]) if key in v.tags else None
        except ValueError:
            return None
    return num("eval.overall"), num("eval.identity")


def decide(cand: tuple[float | None, float | None], champ: tuple[float | None, float | None] | None,
           margin: float) -> tuple[bool, str]:
    """The rule, as a pure function: (promote?, why)."""
    if champ is None:
        return True, "first candidate: no champion yet"
    (co, ci), (ho, hi) = cand, champ
    if co is None:
        return False, "candidate has no eval.overall score: run `suti eval` first"
    if ho is None:
        return True, "champion has no eval.overall score"
    if co > ho + margin:
        return True, f"candidate overall {co:.4f} beats champion {ho:.4f} by more than {margin}"
    if abs(co - ho) <= margin and ci is not None and hi is not None and ci > hi + margin:
        return True, f"overall tied within {margin} ({co:.4f} vs {ho:.4f}); candidate identity {ci:.4f} > {hi:.4f}"
    if co < ho - margin:
        return False, f"candidate overall {co:.4f} is worse than champion {ho:.4f}"
    return False, f"tie: candidate overall {co:.4f} vs champion {ho:.4f} within margin {margin}"


def promote(client, margin: float = 0.0, name: str = MODEL) -> Decision:
    """Apply the rule to the registry and read the alias back."""
    from mlflow.exceptions import MlflowException

    try:
        cand = client.get_model_version_by_alias(name, "candidate").version
    except MlflowException:
        raise FileNotFoundError(f"no '{name}@candidate' in the model registry: run `suti train` first") from None
    try:
        champ = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        champ = None
    if champ == cand:
        return Decision(False, "candidate is already the champion", cand, champ, champ)
    ok, why = decide(_score(client, name, cand), _score(client, name, champ) if champ else None, margin)
    client.set_model_version_tag(name, cand, "promotion.decision", "promoted" if ok else "kept-champion")
    client.set_model_version_tag(name, cand, "promotion.reason", why)
    if ok:
        client.set_registered_model_alias(name, "champion", cand)
        if champ:
            client.set_model_version_tag(name, champ, "promotion.replaced_by", cand)
    after = client.get_model_version_by_alias(name, "champion").version if (ok or champ) else None
    return Decision(ok, why, cand, champ, after)

"""Promotion by alias: compare the `candidate` version of a registered model with the
`champion` on the evaluation's overall score (then identity), move `champion` when the
candidate is better by a margin, and record why in the versions' tags.

Scores are keyed by the evaluation protocol that made them (`eval.<protocol>.overall`, see
`tasks.evaluate.protocol_of`): a candidate without a test-split evaluation on the current
protocol version is never promoted, and two versions are compared only on one protocol."""
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


def _tags(client, name: str, version: str) -> dict:
    return dict(client.get_model_version(name, version).tags)


def _num(tags: dict, key: str) -> float | None:
    try:
        return float(tags[key]) if key in tags else None
    except ValueError:
        return None


def current_protocol(tags: dict) -> str | None:
    """The protocol of the version's latest test-split evaluation, when it is one of this
    code's protocol version (`p<PROTOCOL_VERSION>-test-...`); else None."""
    from suti.tasks.evaluate import PROTOCOL_VERSION

    proto = tags.get("eval.protocol")
    if proto and proto.startswith(f"p{PROTOCOL_VERSION}-test-") and f"eval.{proto}.overall" in tags:
        return proto
    # the latest evaluation was another split (a sweep's val): any current test protocol
    found = sorted(k[len("eval."):-len(".overall")] for k in tags
                   if k.startswith(f"eval.p{PROTOCOL_VERSION}-test-") and k.endswith(".overall"))
    return found[-1] if found else None


def _score(tags: dict, proto: str) -> tuple[float | None, float | None]:
    return _num(tags, f"eval.{proto}.overall"), _num(tags, f"eval.{proto}.identity")


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
    ctags = _tags(client, name, cand)
    proto = current_protocol(ctags)
    if proto is None:
        why = ("candidate has no evaluation on the current protocol (test split): run `suti eval` first; "
               "champion unchanged")
        ok = False
    elif champ is None:
        ok, why = decide(_score(ctags, proto), None, margin)
    else:
        htags = _tags(client, name, champ)
        if f"eval.{proto}.overall" not in htags:
            ok, why = False, (f"champion v{champ} has no score on protocol {proto}, so the two cannot be compared: "
                              f"evaluate it with `suti eval --model models:/{name}/{champ}`; champion unchanged")
        else:
            ok, why = decide(_score(ctags, proto), _score(htags, proto), margin)
    client.set_model_version_tag(name, cand, "promotion.decision", "promoted" if ok else "kept-champion")
    client.set_model_version_tag(name, cand, "promotion.reason", why)
    if ok:
        client.set_registered_model_alias(name, "champion", cand)
        if champ:
            client.set_model_version_tag(name, champ, "promotion.replaced_by", cand)
    after = client.get_model_version_by_alias(name, "champion").version if (ok or champ) else None
    return Decision(ok, why, cand, champ, after)

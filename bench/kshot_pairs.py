"""How sure is a K-shot check? The K-shot curve of a finished eval as paired differences.

Every K of the curve renders the same slots (prompt and seed) with K = 0..5 demos, so
identity(K = a) - identity(K = b) can be read image by image: this prints JSON with the
mean paired difference, its standard error over images and the count of images that gain,
for the pairs the issue's checks compare (1-0, 3-0, 3-1, 5-3), over all subjects and per
subject, for the apprentice and (when the eval has it) the Re-Imagen row. Nothing is
recomputed: it reads the eval's `subjects/*.json` in the workdir's store.

    .venv/bin/python bench/kshot_pairs.py --workdir /tmp/w/work --eval world-val-m9bd82bb28276-1370627e8e

Without `--eval` it reads the eval of the workdir's `reports/eval.json`.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _workdir import open_workdir

PAIRS = ((1, 0), (3, 0), (3, 1), (5, 3))


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over paired images, its standard error and how many images gain."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else None
    return {"mean": round(mean, 4), "se": round(se, 4) if se is not None else None, "images": n,
            "gain": sum(x > 0 for x in d)}


def curve_pairs(subjects: list[dict], key: str) -> dict | None:
    """Paired K differences of one curve (``kshot`` or ``kshot_reimagen``), pooled and per subject."""
    have = [s for s in subjects if key in s]
    if not have:
        return None
    ks = sorted(int(k) for k in have[0][key])
    out: dict = {"identity": {str(k): round(sum(v for s in have for v in s[key][str(k)]["identity"])
                                            / sum(len(s[key][str(k)]["identity"]) for s in have), 4) for k in ks}}
    for hi, lo in PAIRS:
        if hi not in ks or lo not in ks:
            continue
        a = [v for s in have for v in s[key][str(hi)]["identity"]]
        b = [v for s in have for v in s[key][str(lo)]["identity"]]
        out[f"{hi}-{lo}"] = {**paired(a, b), "per_subject": {
            s["sid"]: paired(s[key][str(hi)]["identity"], s[key][str(lo)]["identity"])["mean"] for s in have}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir with a finished eval (curves on)")
    ap.add_argument("--eval", default=None, help="eval id under the store's eval/ (default: reports/eval.json's)")
    ap.add_argument("--profile", default="default")
    args = ap.parse_args(argv)

    cfg, store = open_workdir(args.workdir, args.profile)
    eval_id = args.eval
    if eval_id is None:
        rep = Path(cfg.reports_dir) / "eval.json"
        if not rep.exists():
            raise SystemExit(f"no {rep}: pass --eval or run `suti eval` first")
        eval_id = json.loads(rep.read_text())["eval_id"]
    keys = sorted(k for k in store.list(f"eval/{eval_id}/subjects/") if k.endswith(".json"))
    if not keys:
        raise SystemExit(f"eval {eval_id!r} has no subjects in {store.url('eval/' + eval_id)}")
    subjects = [store.get_json(k) for k in keys]
    if not any("kshot" in s for s in subjects):
        raise SystemExit(f"eval {eval_id!r} has no K-shot curve (it ran with eval.curves=false)")
    print(json.dumps({"benchmark": "kshot_pairs", "workdir": args.workdir, "eval_id": eval_id,
                      "subjects": [s["sid"] for s in subjects],
                      "apprentice": curve_pairs(subjects, "kshot"),
                      "reimagen": curve_pairs(subjects, "kshot_reimagen")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

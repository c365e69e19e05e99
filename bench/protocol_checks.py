"""The world-v2 / honest-evaluation checks, read from a finished workdir: prints JSON with
each check's measured value and whether it holds.

    .venv/bin/python bench/protocol_checks.py --workdir work

Reads `reports/foundation.json`, `reports/eval.json`, `reports/sweep.json` and the eval's
`records.jsonl` in the store (nothing is recomputed): the same-caption margin of the
identity embedder, the room between the oracle and the words-only base row, the experts'
gap closed on the test split, the shared prompt of every slot across methods, the val/test
split of the sweep and Table 1, K = 0 against the base row, and the same-caption grid.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from _workdir import open_workdir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--profile", default="default")
    args = ap.parse_args(argv)

    cfg, store = open_workdir(args.workdir, args.profile)
    reports = Path(cfg.reports_dir)

    def report(name):
        p = reports / f"{name}.json"
        if not p.exists():
            raise SystemExit(f"no {p}: run the stage that writes it first")
        return json.loads(p.read_text())

    fnd, ev = report("foundation"), report("eval")
    sweep = report("sweep") if (reports / "sweep.json").exists() else None
    rows = {r["method"]: r for r in ev["table"]}
    out: dict = {"workdir": args.workdir, "eval_id": ev["eval_id"], "subjects": ev["subject_ids"]}
    checks: dict = {}

    def check(name, value, ok):
        checks[name] = {"value": value, "holds": bool(ok)}

    scm = fnd["identity"]["same_caption_margin"]
    check("identity.same_caption_margin>=0.2", scm, scm >= 0.2)
    room = rows["oracle"]["identity"] - rows["base"]["identity"]
    check("oracle_minus_base_identity>=0.3", room, room >= 0.3)
    if "expert" in rows:
        gc = (rows["expert"]["identity"] - rows["base"]["identity"]) / room
        check("expert_gap_closed>=0.6", gc, gc >= 0.6)
    protos = sorted({r.get("prompt_protocol") for r in ev["table"]}, key=str)
    check("table_rows_prompt_protocol_shared", protos, protos == ["shared"])
    prompts = collections.defaultdict(set)
    methods = collections.defaultdict(set)
    for line in store.get_bytes(f"eval/{ev['eval_id']}/records.jsonl").decode().splitlines():
        r = json.loads(line)
        prompts[(r["subject_id"], r["slot"])].add(r["prompt"])
        methods[(r["subject_id"], r["slot"])].add(r["method"])
    differ = [k for k, v in prompts.items() if len(v) != 1]
    check("one_prompt_per_slot_across_methods", {"slots": len(prompts), "slots_with_differing_prompts": len(differ),
                                                 "methods_per_slot": max(len(v) for v in methods.values())},
          not differ and prompts)
    check("eval_split_test", ev["split"], ev["split"] == "test")
    if sweep is not None:
        check("sweep_split_val", sweep["split"], sweep["split"] == "val")
        shared = sorted(set(sweep["subject_ids"]) & set(ev["subject_ids"]))
        check("sweep_and_eval_subjects_disjoint", {"sweep": sweep["subject_ids"], "shared": shared}, not shared)
    z = ev.get("zero_demos_vs_base")
    if z and not z.get("apprentice_base_trained"):  # a trained base has its own K = 0
        check("kshot_0_equals_base_row", z["identity_max_abs_diff"], z["identity_max_abs_diff"] < 1e-6)
    check("same_caption_grid", "world/examples/same_caption.png", store.exists("world/examples/same_caption.png"))
    out["table"] = {m: {k: r[k] for k in ("identity", "clip_t", "overall")} for m, r in rows.items()}
    out["kshot"] = [{"k": k["k"], "identity": k["identity"]} for k in ev.get("kshot", [])]
    out["checks"] = checks
    out["all_hold"] = all(c["holds"] for c in checks.values())
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the time of a `suti run` goes: reads a workdir's reports (run.json and each stage's
report) and prints the stage profile as JSON, slowest first, with each stage's own
breakdown where its report has one (foundation: per model and the checks; experts: seconds
per expert and the check; sweep: per lambda; eval: per method).

    .venv/bin/python bench/stage_profile.py --workdir work
    .venv/bin/python bench/stage_profile.py --workdir work --budget 3600

Nothing is run: it reports what the last `suti run` in that workdir measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(reports: Path, name: str) -> dict | None:
    p = reports / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _numbers(d) -> dict:
    """A report's `seconds`: a breakdown {part: seconds}, or one number (eval.json's total)."""
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        return {"total": d}
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def profile(reports: Path, budget: float | None = None) -> dict:
    run = _load(reports, "run")
    if run is None:
        raise SystemExit(f"stage_profile: no {reports / 'run.json'}: run `suti run` in that workdir first")
    stages = run.get("stage_seconds", {})
    total = float(run.get("seconds") or sum(stages.values()))
    detail = {}
    f = _load(reports, "foundation")
    if f:
        detail["foundation"] = {"seconds": _numbers(f.get("seconds")), "cached": f.get("cached", []),
                                "reused": f.get("reused", [])}
    e = _load(reports, "experts")
    if e:
        detail["experts"] = {"experts": e.get("experts"), "trained": e.get("trained"), "reused": e.get("reused"),
                             "seconds_per_expert": e.get("seconds_per_expert"), "wall_seconds": e.get("wall_seconds"),
                             "check_seconds": (e.get("check") or {}).get("seconds")}
    s = _load(reports, "sweep")
    if s:
        detail["sweep"] = {"lambdas": len(s.get("lambdas", [])), "seconds": s.get("seconds"),
                           "subjects": len(s.get("subject_ids", []))}
    ev = _load(reports, "eval")
    if ev:
        detail["eval"] = {"subjects": len(ev.get("subject_ids", [])), "seconds": _numbers(ev.get("seconds")),
                          "seconds_per_method": {r["method"]: r.get("seconds_per_subject") for r in ev.get("table", [])}}
    out = {"benchmark": "stage_profile", "reports": str(reports), "profile": run.get("profile"),
           "total_seconds": round(total, 1), "total_minutes": round(total / 60, 1),
           "stages": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
           "share": {k: round(v / total, 3) for k, v in stages.items()} if total else {},
           "stage_entries": run.get("stage_entries"), "detail": detail}
    if budget:
        out["budget_seconds"] = budget
        out["over_budget_seconds"] = round(total - budget, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="work")
    ap.add_argument("--reports", default=None, help="reports folder (default WORKDIR/reports)")
    ap.add_argument("--budget", type=float, default=None, help="seconds the run should fit in (e.g. 3600)")
    args = ap.parse_args(argv)
    print(json.dumps(profile(Path(args.reports or Path(args.workdir) / "reports"), args.budget), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

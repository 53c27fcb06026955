"""``coloc report STUDY_DIR``: rebuild a study's report from what is on disk (docs/ARCHITECTURE.md, "Study")."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("report", help="rebuild the report of a study folder",
                       description="Reads STUDY_DIR (probes/, analysis/, base/, trials/<id>/result.json, "
                                   "study.json) and writes STUDY_DIR/report/report.md, results.json and the "
                                   "figures. A partial study gets the tables it can support; what is missing "
                                   "is listed under Problems.")
    p.add_argument("study_dir", metavar="STUDY_DIR", help="the study folder written by `coloc run`")
    p.set_defaults(func=_report)


def _report(args) -> int:
    from coloc_ray.ablation import layout
    from coloc_ray.errors import UserError
    from coloc_ray.report import build_report

    study = Path(args.study_dir)
    if not study.is_dir():
        raise UserError(f"study folder {study} does not exist; pass the folder `coloc run` wrote")
    if not layout.is_study_dir([p.name for p in study.iterdir() if p.is_dir()]):
        raise UserError(f"{study} has no trials/, base/ or probes/: not a study folder")
    res = build_report(study)
    print(res["headline"])
    print(f"report: {study / layout.REPORT_MD}")
    if res["problems"]:
        print(f"{len(res['problems'])} problem(s) listed in the report")
    if res.get("incomplete"):  # a report without some of the study's trials is not its report: not a success
        print(f"coloc: report incomplete: {len(res['incomplete'])} planned trial(s) without a result; "
              f"`coloc resume {study}` runs them", file=sys.stderr)
        return 1
    return 0

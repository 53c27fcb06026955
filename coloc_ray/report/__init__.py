"""The study's report, apart from its orchestration: read what the study storage holds (``results.py``), compute
the statistics (``coloc_ray.analysis``), write ``report/`` (``build.py``: report.md, results.json; ``plots.py``,
``cost.py``). It reads the storage's names from :mod:`coloc_ray.ablation.layout` and runs nothing."""

from coloc_ray.report.build import build_report, compute_results

__all__ = ["build_report", "compute_results"]

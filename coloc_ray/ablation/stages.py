"""The study's stages: the real function of each package, called by the spine and the trials with typed inputs.

=================  ===========================================================  ==========================
stage              called as                                                    returns (docs/ARCHITECTURE)
=================  ===========================================================  ==========================
sensitivity        ``run_sensitivity(model, pairs=, pooling=, sink_multiple=,     sensitivity.json
                   top_k=, num_workers=)``
rope_influence     ``run_rope_influence(model, eval_data=, factors=, layers=,    rope_influence.json
                   max_len=, num_texts=, num_workers=)``
analysis           ``run_analysis(sens, rope, top_k, out_dir, tracker=, n_perm=)``  analysis.json
finetune           ``run_finetune(cfg: FinetuneConfig, out_dir)``                  metrics.json
finetune_progress  ``progress_file(cfg: FinetuneConfig, out_dir)``                 the live progress file
evaluate           ``run_eval(cfg: EvalConfig, out_dir, tracker)``                 eval.json
report             ``build_report(study_dir)``                                     results.json
=================  ===========================================================  ==========================

``model`` is the driver's :class:`coloc_ray.models.ModelRef`. Every argument is passed by name: a stage that
lacks one fails at once (``TypeError``), nothing is dropped. The default is :func:`real_stages`; a test runs a
study on other functions of the same signatures by passing ``run_study(cfg, stages=...)`` (or the CLI's
``main(argv, stages=...)``). Module-level functions only: Tune pickles a Stages to its trial processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Stages:
    """The functions a study runs (see the module's table for how each is called)."""

    sensitivity: Callable[..., dict]
    rope_influence: Callable[..., dict]
    analysis: Callable[..., dict]
    finetune: Callable[[Any, Path], dict]
    evaluate: Callable[[Any, Path, Any], dict]
    report: Callable[[Path], dict]
    finetune_progress: Optional[Callable[[Any, Path], Optional[Path]]] = None


def real_stages() -> Stages:
    """The package functions themselves (imported here, when a study runs: the probes import torch)."""
    from coloc_ray.analysis.run import run_analysis
    from coloc_ray.evaluation.api import run_eval
    from coloc_ray.finetune.api import run_finetune
    from coloc_ray.finetune.ray_worker import progress_file
    from coloc_ray.probes.api import run_rope_influence, run_sensitivity
    from coloc_ray.report import build_report

    return Stages(sensitivity=run_sensitivity, rope_influence=run_rope_influence, analysis=run_analysis,
                  finetune=run_finetune, evaluate=run_eval, report=build_report, finetune_progress=progress_file)

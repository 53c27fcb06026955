"""The analysis stage: probe records in, ``analysis.json`` + figures + one MLflow run out.

``run_analysis`` is what the study spine and ``coloc analyze`` call. Inputs are validated before
anything is written; outputs appear all at once (``staged_output``) or not at all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from coloc_ray.errors import UserError

log = logging.getLogger(__name__)

ANALYSIS_FILE = "analysis.json"
PROFILES_PNG = "profiles.png"
RANK_PNG = "rank_scatter.png"


def load_probe(path: str | Path, kind: str) -> dict:
    """Read a probe JSON (``kind`` is "sensitivity" or "rope influence") or raise a one-line UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{kind} file {p} does not exist; pass the JSON written by `coloc probe`")
    try:
        rec = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{kind} file {p} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                        "re-run the probe") from None
    return check_probe(rec, f"{kind} file {p}")


def check_probe(rec: Any, where: str) -> dict:
    """Check a probe record has ``scores`` (finite, one per layer) matching ``num_layers``."""
    from coloc_ray.analysis.stats import as_profile

    if not isinstance(rec, Mapping) or "scores" not in rec:
        raise UserError(f"{where}: no 'scores' list; expected a sensitivity.json / rope_influence.json")
    scores = as_profile(rec["scores"], f"{where}: scores")
    n = rec.get("num_layers")
    if n is not None and n != scores.size:
        raise UserError(f"{where}: num_layers={n} but {scores.size} scores; the file is inconsistent")
    return dict(rec)


def _check_same_model(sens: Mapping, rope: Mapping) -> None:
    ms, mr = sens.get("model"), rope.get("model")
    if ms and mr and ms != mr:
        raise UserError(f"sensitivity is for model {ms!r} but rope influence is for {mr!r}; "
                        "probe the same model")


def run_analysis(sensitivity: dict, rope: dict, top_k: int | None, out_dir: str | Path,
                 tracker=None, n_perm: int = 10000, seed: int = 0) -> dict:
    """Analyze two probe records, write ``analysis.json`` and two PNGs into ``out_dir``, log to MLflow.

    Args:
        sensitivity: the ``sensitivity.json`` record (needs ``scores``).
        rope: the ``rope_influence.json`` record (needs ``scores``).
        top_k: top-set size; ``None`` takes the sensitivity record's ``top_k`` (else 10).
        out_dir: output folder (created; other files in it are left alone).
        tracker: a :class:`coloc_ray.tracking.Tracker`. Not yet started: it becomes the analysis
            run (started and ended here). Already started (the study's run): the analysis gets a
            nested child run of it. ``None`` or disabled: no tracking.
        n_perm: permutations for the permutation p.
        seed: seed of the permutation null.

    Returns:
        The ``analysis.json`` record (with ``mlflow_run_id`` of the analysis run, or None).
    """
    from coloc_ray.analysis.colocalization import analyze
    from coloc_ray.analysis.plots import plot_profiles, plot_rank_scatter
    from coloc_ray.analysis.probe_uncertainty import describe, describe_rope
    from coloc_ray.io import staged_output, write_json

    sens = check_probe(sensitivity, "sensitivity")
    rp = check_probe(rope, "rope influence")
    _check_same_model(sens, rp)
    k = int(top_k if top_k is not None else sens.get("top_k") or 10)
    interp = [i for i, flag in enumerate(rp.get("interpolated") or []) if flag]
    result = analyze(sens["scores"], rp["scores"], top_k=k, n_perm=n_perm, seed=seed, exclude=interp)
    result["model"] = sens.get("model") or rp.get("model")
    result["rope_interpolated_layers"] = interp
    emb = embedding_reference(sens)
    if emb is not None:
        result["embedding_reference"] = emb
    unc = sensitivity_uncertainty(sens, k)
    if unc is not None:
        result["sensitivity_uncertainty"] = unc
        result["interpretation"] += " " + describe(unc)
        if unc["unstable"]:
            log.warning("analysis: %s Consider more pairs before training arms on S.", describe(unc))
    runc = rope_uncertainty(rp, k)
    if runc is not None:
        result["rope_uncertainty"] = runc
        result["interpretation"] += " " + describe_rope(runc)
    run = _open_run(tracker)
    result["mlflow_run_id"] = run.run_id if run is not None else None
    out = Path(out_dir)
    try:
        with staged_output(out) as stage:
            write_json(stage / ANALYSIS_FILE, result)
            title = f"{result['model'] or 'model'}: {result['num_layers']} layers, top-{k}"
            plot_profiles(sens["scores"], rp["scores"], result["sensitive_layers"], result["rope_layers"],
                          stage / PROFILES_PNG, title=title, sens_band=band(unc), rope_interpolated=interp,
                          sens_reference=(emb or {}).get("score"), rope_band=band(runc))
            plot_rank_scatter(sens["scores"], rp["scores"], stage / RANK_PNG,
                              spearman_r=result["spearman_r"], title=title)
        if run is not None:
            _log(run, result, sens, rp, out)
    except BaseException:
        if run is not None:
            run.end("FAILED")
        raise
    if run is not None:
        run.end("FINISHED")
    log.info("analysis: %s", result["interpretation"])
    return result


def sensitivity_uncertainty(sens: Mapping, top_k: int) -> dict | None:
    """The bootstrap over pairs of a sensitivity record (None for a record without ``per_pair``)."""
    from coloc_ray.analysis.probe_uncertainty import sensitivity_bootstrap

    per_pair = sens.get("per_pair")
    if not isinstance(per_pair, Mapping) or len(per_pair) < 2:
        return None
    return sensitivity_bootstrap(per_pair, sens.get("pair_domains"), top_k)


def embedding_reference(sens: Mapping) -> dict | None:
    """``{"score": S_emb, "layers_at_or_below": [l with S_l <= S_emb]}`` from a sensitivity record's
    ``embedding`` row (None for a record without it): the layers whose S is no more than token identity."""
    emb = sens.get("embedding")
    if not isinstance(emb, Mapping) or not isinstance(emb.get("score"), (int, float)):
        return None
    s_emb = float(emb["score"])
    return {"score": s_emb, "layers_at_or_below": [i for i, v in enumerate(sens["scores"]) if v <= s_emb]}


def rope_uncertainty(rope: Mapping, top_k: int) -> dict | None:
    """The bootstrap over texts of a RoPE-influence record (None for a record without ``per_text``)."""
    from coloc_ray.analysis.probe_uncertainty import rope_bootstrap

    per_text = rope.get("per_text")
    if not isinstance(per_text, Mapping) or len(per_text.get("base") or []) < 2:
        return None
    return rope_bootstrap(per_text, len(rope["scores"]), top_k)


def band(unc: dict | None):
    """(low, high) per layer for the profile plot; None (a layer not probed) becomes NaN (no shading)."""
    if not unc:
        return None
    nan = lambda v: [float("nan") if x is None else x for x in v]  # noqa: E731
    return nan(unc["band_low"]), nan(unc["band_high"])


def _open_run(tracker):
    """The analysis's own MLflow run: ``tracker`` itself if not yet started, else a nested child run.

    A child (not the caller's run) keeps the analysis's params from colliding with the caller's
    (MLflow params are write-once) and gives the stage one run of its own either way.
    """
    if tracker is None or not tracker.enabled:
        return None
    if tracker.run_id is None:
        return tracker.start()
    return tracker.child("analysis", tags={"stage": "analysis"}).start()


_METRICS = ("spearman_r", "spearman_p", "permutation_p", "overlap", "expected_overlap", "overlap_p",
            "partial_r", "partial_p", "depth_surrogate_p", "circular_shift_p")


def _log(run, result: dict, sens: Mapping, rope: Mapping, out: Path) -> None:
    run.log_params({"stage": "analysis", "model": result["model"], "top_k": result["top_k"],
                    "num_layers": result["num_layers"], "n_perm": result["n_perm"],
                    "seed": result["seed"], "pooling": sens.get("pooling"),
                    "rope_factors": rope.get("factors"),
                    "sensitive_layers": result["sensitive_layers"],
                    "rope_layers": result["rope_layers"]})
    run.log_metrics({k: result[k] for k in _METRICS})
    run.log_series("sensitivity", sens["scores"])
    run.log_series("rope_influence", rope["scores"])
    for name in (ANALYSIS_FILE, PROFILES_PNG, RANK_PNG):
        run.log_artifact(out / name, "analysis")

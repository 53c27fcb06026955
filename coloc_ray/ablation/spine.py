"""The study spine: probes -> analysis -> layer sets -> (base eval + arms) on Ray Tune -> report.

Each stage writes its typed output into the study storage (``probes/``, ``analysis/``, ``layersets.json``,
``base/``, ``trials/<id>/``, ``report/``) and a ``.done`` marker holding the hash of the config it ran with;
a stage whose marker matches is skipped, so ``coloc resume`` is simply this function run again.
The base model is evaluated as one more Tune trial, concurrently with the arms (it needs no layer sets).

The study storage (:class:`coloc_ray.storage.Storage`) is a local path or an object-store URI. The driver
works in a local mirror (the storage itself when it is local) and uploads each stage's output; trials upload
theirs from whichever node runs them; the report is built from what the storage holds. Before any work,
:func:`coloc_ray.ablation.cluster_checks.check_cluster` makes sure every node reaches the storage, the data
and the tracking server.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from coloc_ray.ablation.layersets import build_layer_sets, plan_trials
from coloc_ray.ablation.progress import ProgressBoard
from coloc_ray.ablation.study_config import StudyConfig, model_num_layers, validate_study
from coloc_ray.ablation.trial import Stages, read_result, real_stages, trial_rel
from coloc_ray.errors import UserError
from coloc_ray.io import config_hash, read_json, staged_dir, write_json

log = logging.getLogger(__name__)

DONE = ".done"


class StudyIncomplete(RuntimeError):
    """Some trials failed after their retries; ``coloc resume STUDY_DIR`` runs just those again."""


def _stage(out: Path, h: str, what: str, fn: Callable[[Path], None]) -> bool:
    """Run ``fn(staging_dir)`` into ``out`` unless ``out/.done`` holds hash ``h``; True if it ran."""
    marker = out / DONE
    if marker.is_file() and marker.read_text().strip() == h:
        log.info("%s: output for config %s exists in %s, skipping", what, h, out)
        return False
    log.info("%s: running (config %s)", what, h)
    with staged_dir(out) as tmp:  # the stage's folder appears whole, by one rename, or not at all
        fn(tmp)
        (tmp / DONE).write_text(h)
    return True


def _parent_tracker(cfg: StudyConfig, study_dir: Path):
    """The study's MLflow parent run; a resumed study continues the same run."""
    from coloc_ray.ablation.trial import open_run
    from coloc_ray.tracking import ensure_experiment

    ensure_experiment(cfg.tracking_uri, cfg.experiment_name)  # in the driver: trials creating it would race
    rid = study_dir / "mlflow_run_id"
    old = rid.read_text().strip() if rid.is_file() else None
    tr = open_run(cfg.tracking_uri, cfg.experiment_name, cfg.name, None, {"coloc.study": cfg.name}, old)
    if tr.run_id != old:
        rid.write_text(tr.run_id)
        tr.log_params(cfg.resolved())
        from coloc_ray.io import versions

        tr.log_dict(versions(), "versions.json")
    return tr


def _mirror(store) -> Path:
    """The driver's local working copy of the study: the storage itself when local, else node scratch."""
    if store.is_local:
        return store.local_path()
    from coloc_ray.ablation.trial import scratch_root
    from coloc_ray.io import config_hash as h

    d = scratch_root() / "coloc-studies" / h(store.root)
    d.mkdir(parents=True, exist_ok=True)
    return d


DRIVER_FILES = ("study.json", "mlflow_run_id", "layersets.json", "plan.json", "probes", "analysis")


def _pull(store, mirror: Path) -> None:
    """Bring the driver's own outputs of an earlier run down from object storage (resume)."""
    if store.is_local:
        return
    for name in DRIVER_FILES:
        if store.is_file(name):
            (mirror / name).write_bytes(store.read_bytes(name))
        elif store.exists(name):
            store.download(name, mirror / name)


def _push(store, mirror: Path, name: str) -> None:
    """Upload ``mirror/name`` (a file or a stage folder, its ``.done`` last) to object storage."""
    if store.is_local:
        return
    src = mirror / name
    if src.is_dir():
        store.upload(src, name, last=[DONE])
    elif src.is_file():
        store.write_bytes(name, src.read_bytes())


def _refuse_job_tempdir(root: str) -> None:
    """A submitted study must not write into Ray's temporary job directory (Ray deletes it)."""
    from coloc_ray.storage import is_uri

    if is_uri(root) or "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    cwd = Path.cwd().resolve()
    if Path(root).resolve().is_relative_to(cwd) and "runtime_resources" in str(cwd):
        raise UserError(f"output {root} is inside Ray's temporary job directory ({cwd}), which Ray deletes: set "
                        "output_dir (or `coloc submit --out`) to a shared path every node sees or an object-store "
                        "URI such as s3://bucket/studies/<name>")


# Keys a study may change between runs into one storage: they decide how trials run, not what they compute.
# Seeds may grow (new trials); the analysis may be re-run with more permutations. Finished trials keep their
# own config hash, checked again before reuse. Every other key of the training / evaluation sections (all of
# FinetuneConfig's and EvalConfig's study keys, ``sections.py``) is in each trial's hash.
FREE_KEYS = ("resources", "max_concurrent_trials", "max_failures", "control_seeds", "train_seeds",
             "cost_per_gpu_hour", "storage_path", "output_dir", "tracking_uri", "experiment", "probes.n_perm",
             "training.log_every", "training.checkpoint_every", "training.max_failures",
             "evaluation.evalplus_workers")


def _free(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in FREE_KEYS)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def _normalised(old: dict) -> dict:
    """An earlier ``study.json`` as this version writes it (old section layouts read as today's), or as it is."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # an old layout is expected here: nothing to fix
            return StudyConfig.model_validate(old).resolved()
    except (ValueError, TypeError):  # not a study this version reads: compared key by key as it is
        return old


def _check_same_study(mirror: Path, study: dict, where: str) -> dict | None:
    """A study storage belongs to one config: refuse a different one before anything is replaced.

    Returns the earlier ``study.json`` as it was written (None when there is none): its trials' hashes were
    computed from it, possibly by an older section layout (:func:`_check_done_trials`)."""
    old_file = mirror / "study.json"
    if not old_file.is_file():
        return None
    try:
        previous = read_json(old_file)
    except ValueError:
        raise UserError(f"{where}/study.json is corrupt (not JSON); restore it or use a new output_dir") from None
    old, new = _flat(_normalised(previous)), _flat(study)
    changed = sorted(k for k in set(old) | set(new) if not _free(k) and old.get(k) != new.get(k))
    if changed:
        raise UserError(f"{where} holds a study run with another study config (differs in: {', '.join(changed)}); "
                        "its probes, layer sets and trials belong to that config: use a new output_dir, or put "
                        "the old settings back (`coloc resume` continues it as it was)")
    return previous


def resolve_paths(cfg: StudyConfig) -> StudyConfig:
    """Pin the tracking store and file paths to absolute ones: Tune trials run in their own working dirs."""
    from coloc_ray.tracking import default_tracking_uri

    uri = cfg.tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    cfg = cfg.model_copy(deep=True, update={"tracking_uri": uri})
    for key in ("pairs", "eval_data"):
        v = getattr(cfg.probes, key)
        if v is not None and Path(v).expanduser().exists():
            setattr(cfg.probes, key, str(Path(v).expanduser().resolve()))
    return cfg


def _probes_and_analysis(cfg: StudyConfig, study: dict, study_dir: Path, stages: Stages, tracker, store) -> tuple:
    """Run (or skip) the probes and the analysis; returns (sensitivity, rope, probe hash)."""
    if cfg.probes.skip:
        return None, None, "skipped"
    probe_keys = {k: v for k, v in study["probes"].items() if k != "n_perm"}  # n_perm is the analysis's
    ph = config_hash({"model": cfg.model, "probes": probe_keys, "k": cfg.layer_sets.k})

    def probes(tmp: Path) -> None:
        sens, rope = stages.sensitivity(study), stages.rope_influence(study)
        write_json(tmp / "sensitivity.json", sens)
        write_json(tmp / "rope_influence.json", rope)
        tracker.log_artifacts(tmp, "probes")
        tracker.log_series("sensitivity", sens["scores"])
        tracker.log_series("rope_influence", rope["scores"])

    if _stage(study_dir / "probes", ph, "probes", probes):
        _push(store, study_dir, "probes")
    sens, rope = read_json(study_dir / "probes/sensitivity.json"), read_json(study_dir / "probes/rope_influence.json")
    ah = config_hash({"probes": ph, "k": cfg.layer_sets.k, "n_perm": cfg.probes.n_perm})
    if _stage(study_dir / "analysis", ah, "analysis", lambda tmp: stages.analysis(sens, rope, study, tmp, tracker)):
        _push(store, study_dir, "analysis")
    return sens, rope, ph


def _layer_sets(cfg: StudyConfig, study_dir: Path, stages: Stages, sens, rope, ph: str) -> dict:
    k = cfg.layer_sets.k
    L = sens["num_layers"] if sens else model_num_layers(cfg.model)
    if L is None:  # probes skipped and the model's config not readable offline
        raise UserError(f"model {cfg.model!r}: its depth is unknown offline (no config.json in the local cache) and "
                        "probes.skip is true; run the probes, or download the model's config first")
    h = config_hash({"probes": ph, "k": k, "S": cfg.layer_sets.sensitive_layers, "seeds": cfg.control_seed_list,
                     "L": L})
    path = study_dir / "layersets.json"
    if path.is_file() and read_json(path).get("config_hash") == h:
        log.info("layer sets: %s is current, skipping", path)
        return read_json(path)
    S = cfg.layer_sets.sensitive_layers or stages.top_k_layers(sens["scores"], k)
    rope_k = stages.top_k_layers(rope["scores"], k) if rope else None
    sets = {**build_layer_sets(L, k, S, cfg.control_seed_list, rope_k),
            "S_source": "given" if cfg.layer_sets.sensitive_layers else "top-k sensitivity", "config_hash": h}
    write_json(path, sets)
    return sets


def _trial_specs(cfg: StudyConfig, study: dict, sets: dict) -> list[dict]:
    """Base + every arm trial, each with the hash of what it depends on."""
    base = {"trial_id": "base", "arm": "base", "control_seed": None, "train_seed": 0, "lora_layers": [],
            "garfa_layers": []}
    specs = [base] + [s.to_dict() for s in plan_trials(cfg.arms, sets, cfg.control_seed_list, cfg.train_seed_list)]
    sections = {key: {k: v for k, v in study[key].items() if not _free(f"{key}.{k}")}
                for key in ("training", "evaluation")}  # every field of the section models, less FREE_KEYS
    for s in specs:
        s["config_hash"] = _spec_hash(s, cfg.model, sections)
    return specs


def _spec_hash(spec: dict, model: str, sections: dict) -> str:
    """What a trial's result depends on: the model, the evaluation (and training) sections, the trial itself."""
    deps = {"model": model, "evaluation": sections["evaluation"],
            **({"training": sections["training"]} if spec["arm"] != "base" else {})}
    return config_hash({**deps, **{k: v for k, v in spec.items() if k != "config_hash"}})


def _check_done_trials(store, specs: list[dict], previous: dict | None = None) -> list[dict]:
    """Specs still to run. A finished trial from another config is an error, never silently reused.

    ``previous``: the storage's earlier ``study.json``, already found equivalent to this config (FREE_KEYS aside).
    A trial hashed from its sections as written (an older layout of the sections) is the same trial: its
    ``.done`` gets today's hash, so the next resume needs no earlier file."""
    pending = []
    for s in specs:
        rel = trial_rel(s)
        if read_result(store, rel) is None:  # absent, or truncated / not a record: run it (again)
            pending.append(s)
            continue
        got = store.read_text(f"{rel}/{DONE}").strip() if store.is_file(f"{rel}/{DONE}") else "?"
        if got != s["config_hash"] and previous and "training" in previous and "evaluation" in previous \
                and got == _spec_hash(s, previous.get("model"), previous):
            log.info("trial %s: hashed by an earlier study layout; recording today's hash", s["trial_id"])
            store.write_text(f"{rel}/{DONE}", s["config_hash"])
            got = s["config_hash"]
        if got != s["config_hash"]:
            raise UserError(f"{store.uri(rel)} holds a result from another study config (hash {got} != "
                            f"{s['config_hash']}); use a new output_dir or delete that folder")
        log.info("trial %s: result.json exists, not re-running", s["trial_id"])
    return pending


def _trial_ctx(cfg: StudyConfig, study: dict, store, parent_run_id: str | None, data_dir: str | None) -> dict:
    r = cfg.resources
    cpus = r.cpus_per_trial + r.workers_per_trial * r.cpus_per_worker
    return {"study": study, "storage": store.root, "tracking_uri": cfg.tracking_uri,
            "experiment": cfg.experiment_name, "parent_run_id": parent_run_id, "data_dir": data_dir,
            "gpus": r.gpus_per_trial + r.workers_per_trial * r.gpus_per_worker, "threads": max(1, round(cpus)),
            "start_timeout_s": r.start_timeout_s,
            "eval_resources": {"GPU": r.eval_gpus, "CPU": r.cpus_per_eval, "start_timeout_s": r.start_timeout_s}
            if r.eval_gpus > 0 else {}}


def _check_resources(cfg: StudyConfig) -> None:
    import ray

    errs = validate_study(cfg, cluster_resources=ray.cluster_resources(), stage_configs=False)
    if errs:
        raise UserError("\n".join(errs))


def run_study(cfg: StudyConfig, study_dir: str | Path | None = None, *, address: str | None = None,
              stages: Stages | None = None, echo: bool = True) -> dict:
    """Run (or resume) a whole study; returns ``{"study_dir", "trials": {id: status}, "report"}``.

    Args:
        cfg: the validated study.
        study_dir: study storage: a local path (every node must see it) or an object-store URI
            (default ``cfg.output_dir`` or ``runs/<name>``).
        address: Ray cluster to join (default: start a local Ray on 127.0.0.1).
        stages: stage functions (default :func:`real_stages`; tests inject fakes).
        echo: print the progress table as it changes.

    Raises:
        StudyIncomplete: trials still failed after their retries (``coloc resume`` retries them).
    """
    import ray

    from coloc_ray.ablation.cluster_checks import check_cluster
    from coloc_ray.raycluster import ensure_ray
    from coloc_ray.storage import Storage, is_uri

    real = stages is None
    stages = stages or real_stages()
    root = str(study_dir) if study_dir is not None else cfg.study_dir()
    root = root.rstrip("/") if is_uri(root) else str(Path(root).expanduser().resolve())
    _refuse_job_tempdir(root)
    cfg = resolve_paths(cfg)
    errs = validate_study(cfg, stage_configs=real)
    if errs:
        raise UserError("\n".join(errs))
    store = Storage(root)
    study = cfg.resolved()
    started_ray = not ray.is_initialized()
    ensure_ray(address)
    try:
        _check_resources(cfg)
        data_dir = check_cluster(cfg, store)  # every node: storage, data, tracking; nothing written before
        mirror = _mirror(store)
        _pull(store, mirror)
        previous = _check_same_study(mirror, study, store.root)
        write_json(mirror / "study.json", study)
        _push(store, mirror, "study.json")
        tracker = _parent_tracker(cfg, mirror)
        _push(store, mirror, "mlflow_run_id")
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    try:
        sens, rope, ph = _probes_and_analysis(cfg, study, mirror, stages, tracker, store)
        sets = _layer_sets(cfg, mirror, stages, sens, rope, ph)
        _push(store, mirror, "layersets.json")
        tracker.log_dict(sets, "layersets.json")
        specs = _trial_specs(cfg, study, sets)
        _write_plan(cfg, mirror, specs)
        _push(store, mirror, "plan.json")
        _run_arms(cfg, study, store, mirror, specs, stages, tracker.run_id, echo, data_dir, previous)
        report = _report(store, mirror, specs, stages, tracker)
        tracker.end("FINISHED")
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()
    return {"study_dir": store.root, "trials": {s["trial_id"]: "DONE" for s in specs}, "report": report}


def _write_plan(cfg: StudyConfig, study_dir: Path, specs: list[dict]) -> None:
    """``plan.json``: every trial with its layer sets, and which arms run once per training seed."""
    from coloc_ray.ablation.arms import ARMS

    once = [a for a in cfg.arms if not ARMS[a].uses_r and ARMS[a].trains]
    note = (f"arms {once} do not use R: they run once per training seed, not once per control seed"
            if once else "every arm uses R: one trial per (control seed, training seed)")
    write_json(study_dir / "plan.json", {"note": note, "trials": specs})
    log.info("%d trials (base eval + %d arm trials); %s", len(specs), len(specs) - 1, note)


def _run_arms(cfg: StudyConfig, study: dict, store, mirror: Path, specs: list[dict], stages: Stages,
              parent_run_id: str | None, echo: bool, data_dir: str | None, previous: dict | None = None) -> None:
    """Base eval + arm trials on Ray Tune, skipping finished ones; StudyIncomplete if any is left unfinished."""
    from coloc_ray.ablation.tune_trials import run_trials

    pending = _check_done_trials(store, specs, previous)
    board = ProgressBoard(store.root, specs, cfg.training.max_steps, cfg.max_concurrent_trials, echo=echo)
    for s in specs:
        if s not in pending:
            board.update(s["trial_id"], state="SKIPPED", phase="done")
    status = run_trials(pending, _trial_ctx(cfg, study, store, parent_run_id, data_dir), stages, board=board,
                        storage_path=cfg.storage_path or store.uri("tune"), name=f"{cfg.name}-{int(time.time())}",
                        max_concurrent=cfg.max_concurrent_trials, max_failures=cfg.max_failures,
                        pending_timeout_s=cfg.resources.start_timeout_s)
    # Judge by result.json, over every pending trial: an interrupted Tune leaves unstarted trials out of `status`.
    why = {"DONE": "stopped before it finished", None: "never started"}
    failed = {s["trial_id"]: why.get(status.get(s["trial_id"]), status.get(s["trial_id"]))
              for s in pending if read_result(store, trial_rel(s)) is None}
    if failed:
        raise StudyIncomplete(f"{len(failed)} trial(s) unfinished: "
                              + "; ".join(f"{t}: {st}" for t, st in failed.items())
                              + f". `coloc resume {store.root}` runs just those again")


def _report(store, mirror: Path, specs: list[dict], stages: Stages, tracker) -> dict:
    """Build the report from what the storage holds (downloaded into the mirror first, adapters left out)."""
    # The report depends on the trials' configs and on which run produced each result (a trial run again after
    # its result was lost gives new numbers): both go into the hash that decides whether it is current.
    runs = [(s["config_hash"], (read_result(store, trial_rel(s)) or {}).get("wall_s")) for s in specs]
    h = config_hash(sorted(runs, key=str))
    out = mirror / "report"
    if store.is_file(f"report/{DONE}") and store.read_text(f"report/{DONE}").strip() == h \
            and store.is_file("report/results.json"):
        log.info("report: current for these trials, skipping")
        return store.read_json("report/results.json")
    if not store.is_local:
        for s in specs:
            store.download(trial_rel(s), mirror / trial_rel(s), skip=["adapter"])
    result = stages.report(mirror)
    if result.get("incomplete"):  # every trial finished, yet the report lacks some: never call that done
        raise StudyIncomplete(f"the report lacks trial(s) {', '.join(result['incomplete'])}; "
                              f"`coloc resume {store.root}` runs them again")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "results.json").is_file():
        write_json(out / "results.json", result)
    (out / DONE).write_text(h)
    _push(store, mirror, "report")
    tracker.log_artifacts(out, "report")
    return result

"""The study spine: probes -> analysis -> layer sets -> (base eval + arms) on Ray Tune -> report.

Each stage writes its typed output into the study storage (``probes/``, ``analysis/``, ``layersets.json``,
``base/``, ``trials/<id>/``, ``report/``) and a ``.done`` marker holding the hash of the config it ran with;
a stage whose marker matches is skipped, so ``coloc resume`` is simply this function run again.
The base model is evaluated as one more Tune trial, concurrently with the arms (it needs no layer sets).

The study storage (:class:`coloc_ray.storage.Storage`, names in :mod:`coloc_ray.ablation.layout`) is a local
path or an object-store URI. The driver works in a local mirror (the storage itself when it is local) and
uploads each stage's output; trials upload theirs from whichever node runs them; the report is built from what
the storage holds. Before any work, :func:`coloc_ray.ablation.cluster_checks.check_cluster` makes sure every
node reaches the storage, the data and the tracking server, and the driver resolves the model once
(:func:`coloc_ray.models.resolve_model_ref`: its weights' fingerprint and shape); every stage gets that
reference, every hash uses its fingerprint, and every node checks it loads those weights.

Read top to bottom, :func:`run_study` is the pipeline; each stage is the package's own function
(:mod:`coloc_ray.ablation.stages`), called with the study's typed settings.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from coloc_ray.ablation import layout
from coloc_ray.ablation.cost import model_params
from coloc_ray.ablation.layersets import build_layer_sets, plan_trials
from coloc_ray.ablation.progress import ProgressBoard
from coloc_ray.ablation.stages import Stages
from coloc_ray.ablation.study_config import StudyConfig, validate_study
from coloc_ray.ablation.trial import TrialContext, read_result, trial_rel
from coloc_ray.errors import UserError
from coloc_ray.io import config_hash, read_json, staged_dir, write_json

if TYPE_CHECKING:
    from coloc_ray.models.ref import ModelRef

log = logging.getLogger(__name__)

DONE = layout.DONE


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
    rid = study_dir / layout.RUN_ID
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
    from coloc_ray.io import config_hash as h
    from coloc_ray.io import scratch_root

    d = scratch_root() / "coloc-studies" / h(store.root)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _pull(store, mirror: Path) -> None:
    """Bring the driver's own outputs of an earlier run down from object storage (resume)."""
    if store.is_local:
        return
    for name in layout.DRIVER_FILES:
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
    old_file = mirror / layout.STUDY
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


def _probes_and_analysis(cfg: StudyConfig, ref: ModelKey, mirror: Path, stages: Stages, tracker, store) -> tuple:
    """Run (or skip) the probes and the analysis; returns (sensitivity, rope, probe hash)."""
    if cfg.probes.skip:
        return None, None, "skipped"
    p, k = cfg.probes, cfg.layer_sets.k
    probe_keys = {key: v for key, v in cfg.resolved()["probes"].items() if key != "n_perm"}  # the analysis's
    ph = config_hash({"model": ref.key, "probes": probe_keys, "k": k})

    def probes(tmp: Path) -> None:
        sens = stages.sensitivity(ref.model, pairs=p.pairs, pooling=p.pooling, sink_multiple=p.sink_multiple,
                                  top_k=k, num_workers=p.num_workers)
        rope = stages.rope_influence(ref.model, eval_data=p.eval_data, factors=tuple(p.factors),
                                     layers=p.rope_layers, max_len=p.max_len, num_texts=p.num_texts,
                                     num_workers=p.num_workers)
        write_json(tmp / Path(layout.SENSITIVITY).name, sens)
        write_json(tmp / Path(layout.ROPE).name, rope)
        tracker.log_artifacts(tmp, layout.PROBES)
        tracker.log_series("sensitivity", sens["scores"])
        tracker.log_series("rope_influence", rope["scores"])

    if _stage(mirror / layout.PROBES, ph, "probes", probes):
        _push(store, mirror, layout.PROBES)
    sens, rope = read_json(mirror / layout.SENSITIVITY), read_json(mirror / layout.ROPE)
    ah = config_hash({"probes": ph, "k": k, "n_perm": p.n_perm})
    if _stage(mirror / layout.ANALYSIS_DIR, ah, "analysis",
              lambda tmp: stages.analysis(sens, rope, k, tmp, tracker=tracker, n_perm=p.n_perm)):
        _push(store, mirror, layout.ANALYSIS_DIR)
    return sens, rope, ph


def _layer_sets(cfg: StudyConfig, ref: ModelKey, mirror: Path, sens, rope, ph: str) -> dict:
    from coloc_ray.analysis.colocalization import top_k_layers

    k = cfg.layer_sets.k
    L = sens["num_layers"] if sens else ref.num_layers
    h = config_hash({"probes": ph, "k": k, "S": cfg.layer_sets.sensitive_layers, "seeds": cfg.control_seed_list,
                     "L": L})
    path = mirror / layout.LAYERSETS
    if path.is_file() and read_json(path).get("config_hash") == h:
        log.info("layer sets: %s is current, skipping", path)
        return read_json(path)
    S = cfg.layer_sets.sensitive_layers or top_k_layers(sens["scores"], k)
    rope_k = top_k_layers(rope["scores"], k) if rope else None
    sets = {**build_layer_sets(L, k, S, cfg.control_seed_list, rope_k),
            "S_source": "given" if cfg.layer_sets.sensitive_layers else "top-k sensitivity", "config_hash": h}
    write_json(path, sets)
    return sets


def _trial_specs(cfg: StudyConfig, ref: ModelKey, sets: dict) -> list[dict]:
    """Base + every arm trial, each with the hash of what it depends on."""
    base = {"trial_id": "base", "arm": "base", "control_seed": None, "train_seed": 0, "lora_layers": [],
            "garfa_layers": []}
    specs = [base] + [s.to_dict() for s in plan_trials(cfg.arms, sets, cfg.control_seed_list, cfg.train_seed_list)]
    study = cfg.resolved()
    sections = {key: {k: v for k, v in study[key].items() if not _free(f"{key}.{k}")}
                for key in ("training", "evaluation")}  # every field of the section models, less FREE_KEYS
    for s in specs:
        s["config_hash"] = _spec_hash(s, ref.key, sections)
    return specs


def _spec_hash(spec: dict, model: str, sections: dict) -> str:
    """What a trial's result depends on: the model's weights (or, in a study begun before weights were
    fingerprinted, its name), the evaluation (and training) sections, the trial itself."""
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


def _trial_ctx(cfg: StudyConfig, ref: ModelKey, store, parent_run_id: str | None,
               data_dir: str | None) -> TrialContext:
    r = cfg.resources
    cpus = r.cpus_per_trial + r.workers_per_trial * r.cpus_per_worker
    return TrialContext(
        study=cfg, storage=store.root, model=ref.model, parent_run_id=parent_run_id, data_dir=data_dir,
        gpus=r.gpus_per_trial + r.workers_per_trial * r.gpus_per_worker, threads=max(1, round(cpus)),
        start_timeout_s=r.start_timeout_s, model_params=model_params(cfg.model),
        eval_resources={"GPU": r.eval_gpus, "CPU": r.cpus_per_eval, "start_timeout_s": r.start_timeout_s}
        if r.eval_gpus > 0 else {})


@dataclass(frozen=True)
class ModelKey:
    """The study's model as the spine uses it: the driver's one resolution, and the key its hashes use."""

    model: ModelRef
    key: str  # the weights' fingerprint; a study begun before fingerprints existed keeps its model's name

    @property
    def num_layers(self) -> int:
        return self.model.shape.num_layers


def resolve_model(cfg: StudyConfig) -> ModelRef:
    """The study's one resolution of its model (weights fingerprint, shape), on the driver; UserError for a model
    that cannot be used (unknown, unreadable config, unsupported family, no weights)."""
    from coloc_ray.models import resolve_model_ref
    from coloc_ray.models.loading import check_model_spec

    check_model_spec(cfg.model)  # a corrupt config.json or an unsupported family, now, not on a worker
    return resolve_model_ref(cfg.model)


def _model_key(cfg: StudyConfig, ref: ModelRef, mirror: Path, where: str, resumed: bool) -> ModelKey:
    """Hold the resolved model against the study's ``model.json``: a study whose checkpoint changed under the same
    name is refused, never continued on other weights. Writes ``model.json``."""
    path = mirror / layout.MODEL
    if path.is_file():
        old = read_json(path)
        if old.get("fingerprint") != ref.fingerprint:
            raise UserError(
                f"{where}: its study ran on weights {str(old.get('fingerprint'))[:12]} of {cfg.model!r} "
                f"(revision {old.get('revision') or 'local files'}); {cfg.model!r} now has weights "
                f"{ref.fingerprint[:12]}: its probes and trials belong to the old weights. Use a new output_dir, "
                "or pin the old weights (a local copy, or the hub revision)")
        hash_key = old.get("hash_key", "fingerprint")
    else:
        hash_key = "name" if resumed else "fingerprint"
        if resumed:
            log.warning("%s began before model fingerprints: its stages stay keyed by the model's name %r (weights "
                        "now %s, recorded in %s)", where, cfg.model, ref.fingerprint[:12], layout.MODEL)
    write_json(path, {**ref.to_dict(), "hash_key": hash_key})
    log.info("model %s: weights %s, %d layers", cfg.model, ref.fingerprint[:12], ref.shape.num_layers)
    return ModelKey(ref, ref.fingerprint if hash_key == "fingerprint" else cfg.model)


def _check_resources(cfg: StudyConfig, num_layers: int) -> None:
    import ray

    errs = validate_study(cfg, cluster_resources=ray.cluster_resources(), num_layers=num_layers, stage_configs=False)
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
        stages: the stage functions (default :func:`coloc_ray.ablation.stages.real_stages`; a test passes its own).
        echo: print the progress table as it changes.

    Raises:
        StudyIncomplete: trials still failed after their retries (``coloc resume`` retries them).
    """
    import ray

    from coloc_ray.ablation.cluster_checks import check_cluster
    from coloc_ray.ablation.stages import real_stages
    from coloc_ray.raycluster import ensure_ray
    from coloc_ray.storage import Storage, is_uri

    stages = stages or real_stages()
    root = str(study_dir) if study_dir is not None else cfg.study_dir()
    root = root.rstrip("/") if is_uri(root) else str(Path(root).expanduser().resolve())
    _refuse_job_tempdir(root)
    cfg = resolve_paths(cfg)
    model = resolve_model(cfg)
    errs = validate_study(cfg, num_layers=model.shape.num_layers)
    if errs:
        raise UserError("\n".join(errs))
    store = Storage(root)
    study = cfg.resolved()
    started_ray = not ray.is_initialized()
    ensure_ray(address)
    try:
        _check_resources(cfg, model.shape.num_layers)
        data_dir = check_cluster(cfg, store)  # every node: storage, data, tracking; nothing written before
        mirror = _mirror(store)
        _pull(store, mirror)
        previous = _check_same_study(mirror, study, store.root)
        ref = _model_key(cfg, model, mirror, store.root, resumed=previous is not None)
        write_json(mirror / layout.STUDY, study)
        _push(store, mirror, layout.STUDY)
        _push(store, mirror, layout.MODEL)
        tracker = _parent_tracker(cfg, mirror)
        _push(store, mirror, layout.RUN_ID)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    try:
        sens, rope, ph = _probes_and_analysis(cfg, ref, mirror, stages, tracker, store)
        sets = _layer_sets(cfg, ref, mirror, sens, rope, ph)
        _push(store, mirror, layout.LAYERSETS)
        tracker.log_dict(sets, layout.LAYERSETS)
        specs = _trial_specs(cfg, ref, sets)
        _write_plan(cfg, mirror, specs)
        _push(store, mirror, layout.PLAN)
        ctx = _trial_ctx(cfg, ref, store, tracker.run_id, data_dir)
        _run_arms(cfg, ctx, store, specs, stages, echo, previous)
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
    write_json(study_dir / layout.PLAN, {"note": note, "trials": specs})
    log.info("%d trials (base eval + %d arm trials); %s", len(specs), len(specs) - 1, note)


def _run_arms(cfg: StudyConfig, ctx: TrialContext, store, specs: list[dict], stages: Stages, echo: bool,
              previous: dict | None = None) -> None:
    """Base eval + arm trials on Ray Tune, skipping finished ones; StudyIncomplete if any is left unfinished."""
    from coloc_ray.ablation.tune_trials import run_trials

    pending = _check_done_trials(store, specs, previous)
    board = ProgressBoard(store.root, specs, cfg.training.max_steps, cfg.max_concurrent_trials, echo=echo)
    for s in specs:
        if s not in pending:
            board.update(s["trial_id"], state="SKIPPED", phase="done")
    status = run_trials(pending, ctx, stages, board=board, storage_path=cfg.storage_path or store.uri(layout.TUNE), name=f"{cfg.name}-{int(time.time())}",
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
    out, done = mirror / layout.REPORT, f"{layout.REPORT}/{DONE}"
    if store.is_file(done) and store.read_text(done).strip() == h and store.is_file(layout.RESULTS):
        log.info("report: current for these trials, skipping")
        return store.read_json(layout.RESULTS)
    if not store.is_local:
        for s in specs:
            store.download(trial_rel(s), mirror / trial_rel(s), skip=[layout.ADAPTER])
    result = stages.report(mirror)
    if result.get("incomplete"):  # every trial finished, yet the report lacks some: never call that done
        raise StudyIncomplete(f"the report lacks trial(s) {', '.join(result['incomplete'])}; "
                              f"`coloc resume {store.root}` runs them again")
    out.mkdir(parents=True, exist_ok=True)
    if not (mirror / layout.RESULTS).is_file():
        write_json(mirror / layout.RESULTS, result)
    (out / DONE).write_text(h)
    _push(store, mirror, layout.REPORT)
    tracker.log_artifacts(out, layout.REPORT)
    return result

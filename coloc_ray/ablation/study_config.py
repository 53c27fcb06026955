"""The study file: one YAML that pins a whole ablation study (METHOD 7, 8), validated once.

``load_study(path)`` parses the YAML and the schema (pydantic, ``extra="forbid"``); the cross-field and
environment checks live in :mod:`coloc_ray.ablation.validate` so that *every* problem is reported at once.

Seeds given as a count expand deterministically: ``control_seeds: 3`` -> ``[123, 124, 125]`` (the paper's
one seed was 123), ``train_seeds: 2`` -> ``[0, 1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coloc_ray.ablation.sections import EvalSettings, TrainingSettings
from coloc_ray.errors import UserError

PAPER_CONTROL_SEED = 123  # METHOD 7: the paper drew R once, with seed 123


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeSettings(_Strict):
    """METHOD 1 and 2: how S (sensitivity) and I (RoPE influence) are measured."""

    skip: bool = Field(False, description="Do not run the probes (needs layer_sets.sensitive_layers; no analysis)")
    pairs: str | None = Field(None, description="Minimal-pairs JSONL (id, domain, correct, incorrect); "
                                                "null = the 15 pairs shipped with coloc-ray")
    pooling: str = Field("mean", description="Token pooling of block outputs (a name in probes/pooling.py: "
                                              "mean, mean-nosink, last)")
    sink_multiple: float = Field(10.0, gt=1.0, description="mean-nosink: a token whose norm exceeds this "
                                                           "multiple of the median is an attention sink")
    factors: list[float] = Field([2.0], min_length=1, description="RoPE frequency factors f (I_l averages them)")
    rope_layers: list[int] | None = Field(None, description="Probe RoPE influence on these layers only "
                                                            "(others interpolated); null = every layer")
    eval_data: str | None = Field(None, description="Held-out texts for RoPE influence; null = the default split")
    max_len: int = Field(512, ge=8, description="Truncate RoPE-influence texts to this many tokens")
    num_texts: int | None = Field(None, ge=1, description="Use only the first N held-out texts (null = all)")
    num_workers: int | None = Field(None, ge=1, description="Ray tasks for the probes (null = one per CPU/GPU)")
    n_perm: int = Field(10000, ge=100, description="Permutations for the analysis p-values")

    @field_validator("pooling")
    @classmethod
    def _known_pooling(cls, v: str) -> str:
        from coloc_ray.probes.pooling import POOLINGS  # the pooling registry (torch-free)

        if v not in POOLINGS:
            raise ValueError(f"unknown pooling; use one of {', '.join(POOLINGS)}")
        return v


class LayerSetSettings(_Strict):
    """METHOD 7: S = top-k sensitivity layers (or given); R = k layers drawn from those not in S."""

    k: int = Field(10, ge=1, description="Size of S and of every R (needs L >= 2k when an arm uses R)")
    sensitive_layers: list[int] | None = Field(
        None, description="Give S explicitly (k layers) instead of taking the top-k of the sensitivity probe")


class ResourceSettings(_Strict):
    """What one trial uses. The trial function holds cpus/gpus_per_trial for its whole life; its Ray Train
    workers hold theirs while the fine-tune runs (Ray Train gang-schedules them); its evaluation then holds
    gpus_per_eval in an actor of its own. Every wait for these is bounded by start_timeout_s."""

    cpus_per_trial: float = Field(0.5, gt=0, description="CPUs held by the trial function (Tune refuses 0)")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs held by the trial function (fractional allowed)")
    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers of the trial's fine-tune")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs per Ray Train worker (fractional allowed)")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per Ray Train worker (fractional allowed)")
    gpus_per_eval: float | None = Field(None, ge=0, description="GPUs held by the trial's evaluation (its own Ray "
                                        "actor); null = gpus_per_worker when the workers use GPUs, else 0 "
                                        "(evaluate in the trial function, on CPU)")
    cpus_per_eval: float = Field(1.0, gt=0, description="CPUs of the evaluation actor (when gpus_per_eval > 0)")
    start_timeout_s: float = Field(300.0, gt=0, description="Longest wait for a trial's workers or evaluation "
                                   "GPUs, and for a pending trial when none runs; then the trial fails")

    @property
    def eval_gpus(self) -> float:
        return self.gpus_per_eval if self.gpus_per_eval is not None else self.gpus_per_worker


class StudyConfig(_Strict):
    """A whole study: probes -> analysis -> layer sets -> base eval -> arms on Ray Tune -> report."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Study name (folder, MLflow)")
    model: str = Field(..., description="Model: alias (smollm2-135m, tiny-gqa), hub id, HF directory or .gguf")
    probes: ProbeSettings = Field(default_factory=ProbeSettings, description="Probe settings (METHOD 1, 2)")
    layer_sets: LayerSetSettings = Field(default_factory=LayerSetSettings, description="S / R rule (METHOD 7)")
    arms: list[str] = Field(["A", "B", "C", "D"], min_length=1, description="Arms by name (see arms.ARMS)")
    control_seeds: list[int] | int = Field([PAPER_CONTROL_SEED], description="Seeds drawing R: a list, or a "
                                                                          "count n = 123..123+n-1")
    train_seeds: list[int] | int = Field([0], description="Training seeds (replicates): a list, or a count n = 0..n-1")
    training: TrainingSettings = Field(default_factory=TrainingSettings,
                                       description="Fine-tune settings: FinetuneConfig's keys (sections.py)")
    evaluation: EvalSettings = Field(default_factory=EvalSettings,
                                     description="Evaluation settings: EvalConfig's keys (sections.py)")
    resources: ResourceSettings = Field(default_factory=ResourceSettings, description="Per-trial resources")
    max_concurrent_trials: int = Field(2, ge=1, description="Trials running at once on Ray Tune")
    max_failures: int = Field(1, ge=0, description="Retries of a failed trial before it counts as errored")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (null = $MLFLOW_TRACKING_URI "
                                                       "or sqlite:///<cwd>/mlruns.db)")
    experiment: str | None = Field(None, description="MLflow experiment (null = coloc-<name>)")
    storage_path: str | None = Field(None, description="Ray Tune storage (null = <output_dir>/tune)")
    output_dir: str | None = Field(None, description="Study storage: a local path every node sees, or an "
                                   "object-store URI (s3://bucket/prefix, gs://...); null = runs/<name>")
    cost_per_gpu_hour: float = Field(0.0, ge=0, description="USD per GPU-hour, for the report's cost column")

    @field_validator("control_seeds", "train_seeds")
    @classmethod
    def _count_positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a seed count must be >= 1, got {v}; give a list of seeds or a positive count")
        if isinstance(v, list) and not v:
            raise ValueError("no seeds given; give a list of seeds or a positive count")
        return v

    # -- resolved views ----------------------------------------------------------------------
    @property
    def control_seed_list(self) -> list[int]:
        v = self.control_seeds
        return list(range(PAPER_CONTROL_SEED, PAPER_CONTROL_SEED + v)) if isinstance(v, int) else list(v)

    @property
    def train_seed_list(self) -> list[int]:
        v = self.train_seeds
        return list(range(v)) if isinstance(v, int) else list(v)

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"coloc-{self.name}"

    def study_dir(self) -> str:
        """The study storage root: an absolute local path, or the URI as given."""
        from coloc_ray.storage import is_uri

        out = self.output_dir or str(Path("runs") / self.name)
        return out.rstrip("/") if is_uri(out) else str(Path(out).expanduser().resolve())

    def resolved(self) -> dict:
        """The config as run (seed counts expanded): what ``study.json`` holds."""
        d = self.model_dump(mode="json")
        d["control_seeds"], d["train_seeds"] = self.control_seed_list, self.train_seed_list
        return d


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<top>"


def schema_errors(data: Any, where: str = "study") -> list[str]:
    """Every schema problem of ``data`` (a parsed YAML mapping), one line each naming key, value and fix."""
    if not isinstance(data, dict):
        return [f"{where}: the study file must be a YAML mapping (key: value), got {type(data).__name__}"]
    try:
        StudyConfig.model_validate(data)
    except ValidationError as e:
        out = []
        for err in e.errors():
            key = _loc(err["loc"])
            if err["type"] == "extra_forbidden":
                out.append(f"{where}: unknown key {key!r}; remove it or fix its spelling "
                           f"(see `coloc validate --schema`)")
            elif err["type"] == "missing":
                out.append(f"{where}: key {key!r} is required; add it")
            else:
                out.append(f"{where}: {key} = {err.get('input')!r}: {err['msg']}")
        return out
    return []


def parse_yaml(path: str | Path) -> Any:
    """Read a YAML file; a syntax error becomes a UserError naming the line and column."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"study file {str(p)!r} does not exist; pass the path of a study YAML")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}: YAML syntax error{at}: {problem}; fix the YAML") from None


def load_study(path: str | Path) -> StudyConfig:
    """Load and schema-check a study YAML; all schema errors at once in one UserError (one per line)."""
    data = parse_yaml(path)
    errs = schema_errors(data, where=str(path))
    if errs:
        raise UserError("\n".join(errs))
    return StudyConfig.model_validate(data)


def schema_help() -> str:
    """Every key with its default and description (``coloc validate --schema``)."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                lines.append(f"{prefix}{name}:  # {f.description}")
                walk(ann, prefix + "  ")
            else:
                default = "REQUIRED" if f.is_required() else repr(f.get_default(call_default_factory=True))
                lines.append(f"{prefix}{name}: {default}  # {f.description}")

    walk(StudyConfig, "")
    return "\n".join(lines)


# -- cross-field and environment checks ----------------------------------------------------------


def model_num_layers(spec: str) -> int | None:
    """L of ``spec`` from ``models.model_shape`` (config or GGUF metadata, no weights, never the hub); None when
    a hub id's config is not in the local HF cache."""
    import logging

    from coloc_ray.models.shape import ConfigNotCached, model_shape

    try:
        return model_shape(spec, local_only=True).num_layers
    except ConfigNotCached:
        logging.getLogger(__name__).warning(
            "model %r: config not available offline; skipping the checks that need L", spec)
        return None


def _benchmark_names() -> tuple[str, ...]:
    """The evaluation registry's names (one source of truth: a registered extra benchmark validates too)."""
    from coloc_ray.evaluation.registry import BENCHMARKS

    return tuple(BENCHMARKS)


def _dupes(xs: list) -> list:
    from collections import Counter

    return sorted(x for x, n in Counter(xs).items() if n > 1)  # linear: a seed list may be long


def _layer_errors(key: str, layers: list[int], L: int | None) -> list[str]:
    out = []
    if _dupes(layers):
        out.append(f"{key} = {layers}: duplicate layers {_dupes(layers)}; list each layer once")
    if L is not None:
        bad = [x for x in layers if not 0 <= x < L]
        if bad:
            out.append(f"{key} = {layers}: layers {bad} out of range for a model with L = {L} layers; "
                       f"use 0..{L - 1}")
    return out


def validate_study(cfg: StudyConfig, cluster_resources: dict | None = None,
                   num_layers: int | None = None, stage_configs: bool = True) -> list[str]:
    """Every cross-field / environment problem of ``cfg`` at once, one line each (key, value, fix).

    Args:
        cfg: a schema-valid study.
        cluster_resources: ``{"CPU": n, "GPU": m}`` of the cluster that will run it (None: not checked).
        num_layers: L if already known; otherwise read cheaply from the model's config (no weights).
        stage_configs: also check the training / evaluation blocks against the real stages' configs
            (off when a study runs with stand-in stages).
    """
    from coloc_ray.ablation.arms import ARMS

    errs: list[str] = []
    L = num_layers
    if L is None:
        try:
            from coloc_ray.models.loading import check_model_spec

            check_model_spec(cfg.model)  # a corrupt config.json or an unsupported family, now, not on a worker
            L = model_num_layers(cfg.model)
        except UserError as e:
            errs.append(f"model = {cfg.model!r}: {e}")
    arms = [ARMS[a] for a in cfg.arms if a in ARMS]
    for a in dict.fromkeys(cfg.arms):
        if a not in ARMS:
            errs.append(f"arms: unknown arm {a!r}; valid arms: {', '.join(ARMS)}")
    if _dupes(cfg.arms):
        errs.append(f"arms = {cfg.arms}: duplicate arms {_dupes(cfg.arms)}; list each arm once")
    errs += _seed_errors(cfg)
    errs += _layer_set_errors(cfg, arms, L)
    errs += _path_errors(cfg)
    bench = _benchmark_names()
    for b in cfg.evaluation.benchmarks:
        if b not in bench:
            errs.append(f"evaluation.benchmarks: unknown benchmark {b!r}; valid: {', '.join(bench)}")
    if cluster_resources is not None:
        errs += _resource_errors(cfg, cluster_resources)
    return errs + (_stage_config_errors(cfg) if stage_configs else [])


def _stage_config_errors(cfg: StudyConfig) -> list[str]:
    """The training / evaluation blocks as the real FinetuneConfig / EvalConfig see them (``extra`` keys too)."""
    from coloc_ray.ablation.sections import eval_config_dict, finetune_config_dict

    spec = {"trial_id": "check", "arm": "A", "control_seed": None, "train_seed": 0, "lora_layers": [0],
            "garfa_layers": [0]}
    if _seed_count_errors(cfg):
        return []  # cfg.resolved() would expand the seed counts
    study, out = cfg.resolved(), []
    for key, build, mod, cls in (("training", finetune_config_dict, "coloc_ray.finetune.config", "FinetuneConfig"),
                                 ("evaluation", eval_config_dict, "coloc_ray.evaluation.config", "EvalConfig")):
        try:
            target = getattr(__import__(mod, fromlist=[cls]), cls)
        except ImportError:
            continue  # that stage is not installed here
        args = (study, spec, None) if key == "training" else (study, None, spec)
        try:
            built = target.model_validate(build(*args))
            if key == "training" and getattr(built, "strategy", "ddp") != "ddp" and built.num_workers < 2:
                out.append(f"training: strategy {built.strategy!r} with resources.workers_per_trial = "
                           f"{built.num_workers}: sharding needs at least 2 workers, every trial would fail; set "
                           "resources.workers_per_trial: 2 or use strategy ddp")
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"])
                own = StudyConfig.model_fields[key].annotation.model_fields
                where = f"{key}.{loc}" if loc.split(".")[0] in own else f"{key}.extra.{loc}"
                out.append(f"{key}: {loc} = {err.get('input')!r}: {err['msg']} (as {cls} reads it); fix {where}")
        except UserError as e:
            out.append(f"{key}: {e}")
    return out


MAX_SEEDS = 1000  # per list: each control seed is a trial per arm, each train seed multiplies that


def _seed_count_errors(cfg: StudyConfig) -> list[str]:
    out = []
    for key, v in (("control_seeds", cfg.control_seeds), ("train_seeds", cfg.train_seeds)):
        n = v if isinstance(v, int) else len(v)
        if n > MAX_SEEDS:
            out.append(f"{key}: {n} seeds, more than {MAX_SEEDS} (each one is a trial per arm); give at most "
                       f"{MAX_SEEDS}, or split the study")
    return out


def _seed_errors(cfg: StudyConfig) -> list[str]:
    out = _seed_count_errors(cfg)
    if out:
        return out  # never expand a huge count into a list
    for key, seeds in (("control_seeds", cfg.control_seed_list), ("train_seeds", cfg.train_seed_list)):
        if _dupes(seeds):
            out.append(f"{key} = {seeds}: duplicate seeds {_dupes(seeds)}; each seed must be distinct")
    return out


def _layer_set_errors(cfg: StudyConfig, arms: list, L: int | None) -> list[str]:
    ls, k, out = cfg.layer_sets, cfg.layer_sets.k, []
    uses_r = any(a.uses_r for a in arms)
    if L is not None:
        if uses_r and L < 2 * k:
            users = [a.name for a in arms if a.uses_r]
            out.append(f"layer_sets.k = {k}: arms {users} draw R from the layers not in S, which needs "
                       f"L >= 2k, but the model has L = {L}; use k <= {L // 2}")
        elif k > L:
            out.append(f"layer_sets.k = {k}: larger than the model's L = {L} layers; use k <= {L}")
    if ls.sensitive_layers is not None:
        if len(ls.sensitive_layers) != k:
            out.append(f"layer_sets.sensitive_layers = {ls.sensitive_layers}: has {len(ls.sensitive_layers)} "
                       f"layers but k = {k}; give exactly k layers or change k")
        out += _layer_errors("layer_sets.sensitive_layers", ls.sensitive_layers, L)
    if cfg.probes.rope_layers is not None:
        out += _layer_errors("probes.rope_layers", cfg.probes.rope_layers, L)
    if cfg.probes.skip:
        if ls.sensitive_layers is None:
            out.append("probes.skip = True: S then has no source; give layer_sets.sensitive_layers "
                       "or set probes.skip: false")
        if any(a.uses_rope for a in arms):
            out.append("probes.skip = True: arm 'rope_topk' needs the RoPE-influence probe; "
                       "remove the arm or set probes.skip: false")
    return out


STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")  # what pyarrow.fs resolves


def _path_errors(cfg: StudyConfig) -> list[str]:
    from coloc_ray.storage import is_uri

    out = []
    for key, v in (("output_dir", cfg.output_dir), ("storage_path", cfg.storage_path)):
        if v and is_uri(v) and v.split("://", 1)[0].lower() not in STORAGE_SCHEMES:
            out.append(f"{key} = {v!r}: unknown storage scheme; use a local path or one of "
                       + ", ".join(f"{x}://" for x in STORAGE_SCHEMES))
    for key, p in (("probes.pairs", cfg.probes.pairs), ("probes.eval_data", cfg.probes.eval_data)):
        if p is not None and not Path(p).expanduser().exists():
            out.append(f"{key} = {p!r}: no such file; give an existing path or null for the default")
    return out


def _resource_errors(cfg: StudyConfig, res: dict) -> list[str]:
    r, out = cfg.resources, []
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    gpu_ask = r.gpus_per_trial + r.workers_per_trial * r.gpus_per_worker
    cpu_ask = r.cpus_per_trial + r.workers_per_trial * r.cpus_per_worker
    if gpu_ask > 0 and gpus == 0:
        out.append(f"resources: a trial asks for {gpu_ask:g} GPUs (gpus_per_trial + workers x gpus_per_worker) "
                   "but the cluster has no GPU; set them to 0 or run on a GPU cluster")
    elif gpu_ask > gpus:
        out.append(f"resources: a trial asks for {gpu_ask:g} GPUs but the cluster has {gpus:g}; "
                   "lower workers_per_trial / gpus_per_worker")
    if cpu_ask > cpus:
        out.append(f"resources: a trial asks for {cpu_ask:g} CPUs (cpus_per_trial + workers x cpus_per_worker) "
                   f"but the cluster has {cpus:g}; lower them (fractions are allowed)")
    if r.eval_gpus > 0 and r.eval_gpus > gpus:
        out.append(f"resources: the evaluation asks for {r.eval_gpus:g} GPUs but the cluster has {gpus:g}")
    return out + _deadlock_errors(cfg, cpus, gpus)


def _deadlock_errors(cfg: StudyConfig, cpus: float, gpus: float) -> list[str]:
    """Tune holds each running trial function's own resources; its workers (then its evaluation) ask later.
    If the running trial functions alone could leave too little for one trial's workers, every trial would
    wait for the others forever. Refuse that mix up front: with what is left after ``max_concurrent_trials``
    trial functions, at least one trial can always get its workers and its evaluation, so the study progresses."""
    r = cfg.resources
    n = cfg.max_concurrent_trials
    later_cpu = max(r.workers_per_trial * r.cpus_per_worker, r.cpus_per_eval if r.eval_gpus > 0 else 0)
    later_gpu = max(r.workers_per_trial * r.gpus_per_worker, r.eval_gpus)
    out = []
    if n * r.cpus_per_trial + later_cpu > cpus + 1e-9 and cpus > 0:
        out.append(f"resources: {n} concurrent trial functions x {r.cpus_per_trial:g} CPUs + one trial's workers "
                   f"({later_cpu:g} CPUs) exceed the cluster's {cpus:g} CPUs: running trials could hold every CPU "
                   "while their workers wait; lower max_concurrent_trials or cpus_per_trial")
    if n * r.gpus_per_trial + later_gpu > gpus + 1e-9 and later_gpu > 0:
        out.append(f"resources: {n} concurrent trial functions x {r.gpus_per_trial:g} GPUs + one trial's workers or "
                   f"evaluation ({later_gpu:g} GPUs) exceed the cluster's {gpus:g} GPUs; lower max_concurrent_trials "
                   "or gpus_per_trial (the workers and the evaluation hold their own GPUs)")
    return out

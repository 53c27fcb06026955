"""The study's ``training:`` and ``evaluation:`` sections ARE the stage configs, less what the study sets per trial.

``TrainingSettings`` is built from :class:`~coloc_ray.finetune.config.FinetuneConfig`'s own fields and
``EvalSettings`` from :class:`~coloc_ray.evaluation.config.EvalConfig`'s (same types, bounds, defaults and
descriptions; ``extra="forbid"``), so a key added to a stage config is a study key at once and there is one set of
defaults. Left out are the keys the study fills in for each trial (:data:`TRIAL_KEYS`; see
:func:`finetune_config_dict` and :func:`eval_config_dict` below). The only default a study sets
differently is in :data:`STUDY_DEFAULTS`, with its reason.

The stage configs' class validators (benchmark names, ``backend: auto``) are not copied: they read the registry
and the environment, so they run where each trial builds its real config, and ``validate_study`` runs them up
front (every problem listed at once).

Old study files wrote stage keys under ``extra:``; those keys are moved into the section (one warning), and
``eval_every: null`` (the old "fine-tune default") is read as the default. Keys in ``extra`` that are not the
stage's are handed to the stage config unchanged, which refuses them: ``validate_study`` names each one.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from coloc_ray.evaluation.config import EvalConfig
from coloc_ray.finetune.config import FinetuneConfig

# What the study sets per trial (its layer sets, seed, resources, tracking and storage): not study keys.
TRIAL_KEYS: dict[str, tuple[str, ...]] = {
    "training": ("model", "model_fingerprint", "lora_layers", "garfa_layers", "seed",  # the trial
                 "num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker",    # resources.*
                 "tracking", "tracking_uri", "experiment", "run_name", "parent_run_id",  # the study's MLflow
                 "storage_path"),                                                   # <study storage>/train
    "evaluation": ("model", "model_fingerprint", "adapter",                         # the trial
                   "tracking", "tracking_uri", "experiment", "parent_run_id"),      # the study's MLflow
}

# A study's own default where it must differ from the stage's, and why (the demo and every shipped study use it).
STUDY_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "evaluation": {"seed": {
        "default": 1234,
        "description": "Evaluation seed (few-shot draws, option orders, `limit` subsets, bootstrap): one for every "
                       "arm and the base model, separate from the training seeds, so every arm is scored on the "
                       "same prompts (METHOD 8); `coloc eval` alone defaults to 0"}},
}

EXTRA = Field({}, description="Old study files held stage keys here (read, with a warning); stage keys go directly "
                              "in this section, and any other key here is refused")
LEGACY_NULL = {"training": ("eval_every",)}  # old sections allowed null for "the stage's default"
_WARNED: set[str] = set()


class _Section(BaseModel):
    """Common part of both sections: ``extra="forbid"`` and the reading of old ``extra:`` keys."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    section: ClassVar[str] = ""  # "training" / "evaluation": set on each built model

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = cls.section
        data = dict(data)
        for key in LEGACY_NULL.get(name, ()):
            if key in data and data[key] is None:
                del data[key]
        extra = data.get("extra")
        if isinstance(extra, dict):
            own = [k for k in extra if k in cls.model_fields and k != "extra"]
            if own:  # as before, a key in extra wins over the same key in the section
                data.update({k: extra[k] for k in own})
                data["extra"] = {k: v for k, v in extra.items() if k not in own}
                _warn_once(name, own)
        return data


def _warn_once(section: str, keys: list[str]) -> None:
    if section in _WARNED:
        return
    _WARNED.add(section)
    warnings.warn(f"{section}.extra holds {section} keys ({', '.join(keys)}): move them out of `extra:`, directly "
                  f"under `{section}:` (old study files are still read)", FutureWarning, stacklevel=2)


def section_model(name: str, section: str, stage: type[BaseModel], doc: str) -> type[BaseModel]:
    """The study section ``section`` (class ``name``, bound to that name in this module so that it pickles: Tune
    ships the study to its trials): every field of ``stage`` except ``TRIAL_KEYS[section]``, plus ``extra``."""
    fields: dict[str, Any] = {}
    for name, info in stage.model_fields.items():
        if name in TRIAL_KEYS[section]:
            continue
        info = copy.copy(info)
        for attr, value in STUDY_DEFAULTS.get(section, {}).get(name, {}).items():
            setattr(info, attr, value)
        fields[name] = (info.annotation, info)
    fields["extra"] = (dict[str, Any], copy.copy(EXTRA))
    model = create_model(name, __base__=_Section, __doc__=doc, __module__=__name__,
                         **fields)
    model.section = section
    return model


def stage_keys(section: str) -> list[str]:
    """The stage-config keys a study section holds (its fields less ``extra``)."""
    return [k for k in SECTIONS[section].model_fields if k != "extra"]


TrainingSettings = section_model(
    "TrainingSettings", "training", FinetuneConfig,
    "The fine-tune of every trial (METHOD 4, 6): FinetuneConfig's keys; the study fills in the model, layer sets, "
    "seed, workers, tracking and checkpoint storage per trial.")
EvalSettings = section_model(
    "EvalSettings", "evaluation", EvalConfig,
    "METHOD 8: EvalConfig's keys, for the base model and every trial's adapter; the study fills in the model, "
    "adapter and tracking.")
SECTIONS: dict[str, type[BaseModel]] = {"training": TrainingSettings, "evaluation": EvalSettings}


# -- a trial's stage configs: its section plus what the study sets per trial (TRIAL_KEYS) -----------------------
def finetune_config_dict(study: dict, spec: dict, parent_run_id: str | None,
                         model_fingerprint: str | None = None) -> dict:
    """The study's training section (FinetuneConfig's keys already) + this trial's ``sections.TRIAL_KEYS``: the
    model (and the fingerprint of the weights the driver resolved), layer sets, seed, workers and tracking.
    ``extra`` keys go last, unchanged: FinetuneConfig refuses any that is not its own."""
    t, r = dict(study["training"]), study["resources"]
    extra = t.pop("extra", {})
    d = {**t, "model": study["model"], "model_fingerprint": model_fingerprint, "lora_layers": spec["lora_layers"],
         "garfa_layers": spec["garfa_layers"], "seed": spec["train_seed"], "num_workers": r["workers_per_trial"],
         "cpus_per_worker": r["cpus_per_worker"], "use_gpu": r["gpus_per_worker"] > 0,
         "tracking_uri": study.get("tracking_uri"), "experiment": study.get("experiment") or f"coloc-{study['name']}",
         "run_name": f"{spec['trial_id']}/finetune", "parent_run_id": parent_run_id,
         "tracking": parent_run_id is not None, **extra}
    if r["gpus_per_worker"] > 0:
        d["gpus_per_worker"] = r["gpus_per_worker"]
    return d


def eval_config_dict(study: dict, adapter_dir: str | None, spec: dict, model_fingerprint: str | None = None) -> dict:
    """The trial's EvalConfig fields. The seed is the study's evaluation seed (``evaluation.seed``), the
    same for every arm and the base model, never the trial's training seed: replicates of an arm must
    differ by their training only, not by their few-shot contexts, option orders or ``limit`` items."""
    e = dict(study["evaluation"])  # EvalConfig's keys already, less sections.TRIAL_KEYS
    extra = e.pop("extra", {})
    experiment = study.get("experiment") or f"coloc-{study['name']}"
    return {**e, "model": study["model"], "model_fingerprint": model_fingerprint, "adapter": adapter_dir,
            "tracking_uri": study.get("tracking_uri"), "experiment": experiment, **extra}

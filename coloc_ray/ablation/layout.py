"""The study storage's layout: every name a study writes or reads, relative to its root, in this one module.

    study.json            the study config as run (``StudyConfig.resolved()``)
    model.json            the model the driver resolved (``models.ModelRef``: spec, fingerprint, shape)
    mlflow_run_id         the study's MLflow parent run
    probes/               sensitivity.json, rope_influence.json, .done
    analysis/             analysis.json (+ figures), .done
    layersets.json        S, R, the control sets
    plan.json             every planned trial
    progress.json         the live trial table
    base/                 the base model's trial folder (as a trial's)
    trials/<id>/          result.json (written last), .done, attempts.log, mlflow_run_id, adapter/, eval/items/
    train/<id>-finetune/  Ray Train checkpoints of each fine-tune
    tune/                 Ray Tune's experiment state
    logs/trials/<id>/     each trial's log, one file per node and process it ran in
    report/               report.md, results.json, figures, .done

The spine, the trials, the report, ``coloc status`` / ``resume`` and the job client read these names from here.
"""

from __future__ import annotations

STUDY = "study.json"
MODEL = "model.json"
RUN_ID = "mlflow_run_id"
PROBES = "probes"
SENSITIVITY = f"{PROBES}/sensitivity.json"
ROPE = f"{PROBES}/rope_influence.json"
ANALYSIS_DIR = "analysis"
ANALYSIS = f"{ANALYSIS_DIR}/analysis.json"
LAYERSETS = "layersets.json"
PLAN = "plan.json"
PROGRESS = "progress.json"
BASE = "base"
TRIALS = "trials"
TRAIN = "train"
TUNE = "tune"
LOGS = "logs"
REPORT = "report"
RESULTS = f"{REPORT}/results.json"
REPORT_MD = f"{REPORT}/report.md"

# Inside a stage's or a trial's folder
DONE = ".done"            # the hash of the config the stage ran with; a stage folder is whole when it is there
RESULT = "result.json"    # a trial's record: written last, so its presence means the trial finished
ATTEMPTS = "attempts.log"  # one line per start of a trial
ADAPTER = "adapter"
EVAL = "eval"
ITEMS = f"{EVAL}/items"

#: What the driver itself writes (pulled back from object storage on resume).
DRIVER_FILES = (STUDY, MODEL, RUN_ID, LAYERSETS, PLAN, PROBES, ANALYSIS_DIR)


def trial_dir(trial_id: str, arm: str) -> str:
    """A trial's folder: ``base`` for the base model's evaluation, else ``trials/<trial_id>``."""
    return BASE if arm == "base" else f"{TRIALS}/{trial_id}"


def trial_log(trial_id: str, name: str) -> str:
    """One of a trial's logs kept in the storage (``name``: ``<host>-<pid>.log``)."""
    return f"{LOGS}/{TRIALS}/{trial_id}/{name}"


def is_study_dir(names) -> bool:
    """A folder holding any of these is a study (what ``coloc report`` accepts)."""
    return any(n in names for n in (TRIALS, BASE, PROBES))

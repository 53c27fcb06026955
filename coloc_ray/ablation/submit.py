"""Send a study to a Ray cluster through the Ray Jobs API (the only module importing ``ray.job_submission``).

The cluster runs ``coloc run <study> --address auto`` with the project checkout as its working_dir, so the
code that runs is the code you have. Token auth (Ray 2.60): the head runs with ``RAY_AUTH_MODE=token``; we
send ``Authorization: Bearer <token>`` read from ``--token-file``, ``$RAY_AUTH_TOKEN`` or
``$RAY_AUTH_TOKEN_PATH``. The token never goes into the runtime_env (the dashboard shows it to anyone).

Secrets stay out of job metadata (docs/SECURITY.md): ``--env`` refuses names that look like credentials and
``--tracking-uri`` refuses an embedded password (the runtime_env and metadata are readable by anyone who can reach
the dashboard); credentials come from the nodes' own environment or files. The uploaded working dir leaves out
:data:`SECRET_EXCLUDES` and everything git ignores, on top of :data:`EXCLUDES`; :func:`upload_list` shows exactly
what Ray would upload (``coloc submit --dry-run``).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from coloc_ray.errors import UserError
from coloc_ray.raycluster import ensure_private_token  # noqa: F401 - part of this module's API

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# gitignore-style patterns Ray leaves out of the uploaded working_dir (it refuses > 500 MiB anyway);
# a leading "/" anchors a pattern to the checkout's top level.
EXCLUDES = [".git", ".venv", ".venv-*", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "/runs", "/mlruns",
            "/mlruns.db", "/mlartifacts", "/studies/*/", "/out", "/tmp", ".coloc_cache", "*.safetensors", "*.gguf",
            "*.bin", "*.pt", "*.pth", "*.ckpt", "*.db", "*.tar", "*.tar.gz", "*.zip"]
# Files that hold credentials are never uploaded, whatever .gitignore says ("!": source files stay).
SECRET_EXCLUDES = [".env", ".env.*", "*.env", ".envrc", ".netrc", "_netrc", ".git-credentials", ".pypirc", "*token*",
                   "!*token*.py", "*secret*", "!*secret*.py", "*credential*", "!*credential*.py", "*.pem", "*.key",
                   "*.p12", "*.pfx", "*.jks", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".ssh/", ".aws/",
                   ".gnupg/", ".kube/", ".docker/", ".coloc/", ".ray/", ".huggingface/", ".cache/"]
# --env names that look like credentials: a "_"-separated word of the name, or its ending, is one of these.
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "KEY", "APIKEY", "CREDENTIAL", "CREDENTIALS",
                "PRIVATE", "COOKIE", "SESSION")
PROJECT = Path(__file__).resolve().parents[2]
META_PREFIX = "coloc."
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_token(token_file: str | None = None) -> str | None:
    """The cluster token from ``token_file``, ``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH`` (None if none).

    A token file others can read still works, with a warning to ``chmod 600`` it."""
    path = token_file or (None if os.environ.get("RAY_AUTH_TOKEN") else os.environ.get("RAY_AUTH_TOKEN_PATH"))
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"token file {str(p)!r} does not exist; pass the cluster's token file with --token-file")
        if p.stat().st_mode & 0o077:
            import logging

            logging.getLogger(__name__).warning("token file %s is readable by other users (mode %o): chmod 600 %s",
                                                p, p.stat().st_mode & 0o777, p)
        token = p.read_text().strip()
        if not token:
            raise UserError(f"token file {str(p)!r} is empty; it must hold the cluster's auth token")
        return token
    return os.environ.get("RAY_AUTH_TOKEN", "").strip() or None


def connect(address: str, token_file: str | None = None):
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (http://host:port), with the token header.

    Raises:
        UserError: unreachable address, missing or refused token.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not urlparse(address).scheme.startswith("http"):
        raise UserError(f"--address {address!r}: give the dashboard URL, e.g. http://127.0.0.1:8265 "
                        "(kubectl port-forward / ray dashboard make it local)")
    token = read_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except ConnectionError:
        raise UserError(f"no Ray dashboard answers at {address}; start the cluster or the port-forward "
                        "(docs/CLUSTER.md), and check --address") from None
    except AuthenticationError as e:
        raise auth_error(address, e) from None


def auth_error(address: str, e: Exception) -> UserError:
    """The one-line UserError for Ray's AuthenticationError: 401 (no token sent) or 403 (wrong token)."""
    if str(e).startswith("Authentication required"):  # Ray's text for a 401
        return UserError(f"the cluster at {address} requires a token: pass --token-file or set RAY_AUTH_TOKEN_PATH")
    return UserError(f"the cluster at {address} refused the token (403): pass the token file the head was "
                     "started with (its RAY_AUTH_TOKEN_PATH)")


def _call(address: str, fn, *args, **kwargs):
    """Run one client call; auth and connection failures become UserErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as e:
        raise auth_error(address, e) from None
    except (ConnectionError, requests.exceptions.ConnectionError):  # requests' is not the builtin's subclass
        raise UserError(f"lost the Ray dashboard at {address}; is the cluster / port-forward still up?") from None


def looks_secret(name: str) -> bool:
    """True for env var names like HF_TOKEN, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, WANDB_API_KEY."""
    up = name.upper()
    return any(w in up.split("_") or up.endswith(w) for w in SECRET_WORDS)


def check_secrets(env: dict[str, str] | None, tracking_uri: str | None) -> None:
    """Refuse credentials on their way into the job's runtime_env or metadata (UserError, before any upload)."""
    bad = sorted(k for k in (env or {}) if looks_secret(k))
    if bad:
        raise UserError(
            f"--env {', '.join(bad)}: looks like a credential, and --env values go into the job's runtime_env, "
            "which anyone who can reach the Ray dashboard can read; put credentials on the cluster's nodes instead "
            "(their environment, e.g. a Kubernetes Secret, or a file they read: docs/SECURITY.md)")
    if tracking_uri and urlparse(tracking_uri).password:
        raise UserError("--tracking-uri holds a password (user:pass@host), which would be readable in the job's "
                        "metadata; drop it from the URI and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
                        "on the cluster's nodes (docs/SECURITY.md)")


def git_ignored(project: Path) -> list[str]:
    """What git ignores in ``project`` (its .gitignore files, .git/info/exclude, the global excludes file), as
    anchored patterns; [] when ``project`` is not a git checkout or git is missing."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(project), "ls-files", "--others", "--ignored", "--exclude-standard",
                              "--directory", "-z"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return ["/" + p for p in out.stdout.decode(errors="replace").split("\0") if p]


def upload_excludes(project: Path) -> list[str]:
    """Every exclude pattern of the job: build clutter, credentials, and what git ignores."""
    return list(EXCLUDES) + SECRET_EXCLUDES + git_ignored(project)


def upload_list(working_dir: Path, excludes: list[str]) -> list[str]:
    """The files Ray would upload for ``working_dir`` with ``excludes`` (Ray's own packing code, into a temp zip)."""
    import zipfile

    with tempfile.TemporaryDirectory(prefix="coloc-upload-") as d:
        z = Path(d) / "pkg.zip"
        _ray_pack(working_dir, excludes, z)
        return sorted(n for n in zipfile.ZipFile(z).namelist() if not n.endswith("/"))


def _ray_pack(working_dir: Path, excludes: list[str], zip_path: Path) -> None:
    """Zip ``working_dir`` exactly as a Ray job's working_dir is packed: Ray's default excludes (or
    ``$RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES``), every ``.gitignore`` in the tree, then ``excludes``.

    Ray has no public API that packs or lists a working_dir (``JobSubmissionClient.submit_job`` packs and
    uploads in one step), so this is the one place that uses ``ray._private`` for it; Ray is pinned in
    pyproject, and the upload_list / stage_working_dir tests fail if these names move.
    """
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _zip_files

    _zip_files(str(working_dir), ray_constants.get_runtime_env_default_excludes() + list(excludes), str(zip_path),
               include_gitignore=True)


def _study_in_project(study: Path, project: Path) -> str | None:
    try:
        return study.resolve().relative_to(project.resolve()).as_posix()
    except ValueError:
        return None


def stage_working_dir(project: Path, study: Path) -> tuple[Path, str]:
    """A temp copy of the project code with ``study`` inside it (for a study file outside the checkout).

    The copy is what Ray would upload of ``project`` (:func:`_ray_pack` with :func:`upload_excludes`, unzipped).
    """
    import zipfile

    tmp = Path(tempfile.mkdtemp(prefix="coloc-submit-"))
    _ray_pack(project, upload_excludes(project), tmp / "pkg.zip")
    with zipfile.ZipFile(tmp / "pkg.zip") as z:
        z.extractall(tmp / "project")
    (tmp / "pkg.zip").unlink()
    rel = f".coloc_submit/{study.name}"
    (tmp / "project" / rel).parent.mkdir(parents=True)
    shutil.copy2(study, tmp / "project" / rel)
    return tmp / "project", rel


def runtime_env(working_dir: Path, address: str, tracking_uri: str | None = None,
                env: dict[str, str] | None = None) -> dict:
    """The job's runtime_env: the code, the excludes, and the env vars the study needs (never the token)."""
    from coloc_ray.raycluster import LOOPBACK_ENV

    # The driver's ensure_ray() passes its own env_vars to ray.init; Ray refuses to merge a job runtime_env
    # that sets the same keys unless RAY_OVERRIDE_JOB_RUNTIME_ENV=1 (then the driver's values win, the
    # working_dir stays).
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
    if urlparse(address).hostname in LOOPBACK_HOSTS:
        env_vars.update(LOOPBACK_ENV)  # a loopback head: its drivers must bind to 127.0.0.1 too
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    check_secrets(env, tracking_uri)
    env_vars.update(env or {})
    return {"working_dir": str(working_dir), "excludes": upload_excludes(working_dir), "env_vars": env_vars}


def _cluster_storage(study: Path, dest: str | None, name: str) -> str:
    """Where a submitted study writes: storage every node sees, never Ray's temporary job directory."""
    from coloc_ray.storage import is_uri

    if dest and (is_uri(dest) or Path(dest).is_absolute()):
        return dest
    raise UserError(f"{study}: a submitted study needs storage every node sees, but {dest or 'runs/' + name!r} "
                    "would land in Ray's temporary job directory, which Ray deletes: pass --out "
                    "s3://bucket/studies/" + name + " (or an absolute path on a volume every node mounts), "
                    "or set output_dir in the study")


def submit_study(study: str | Path, address: str, *, token_file: str | None = None, tracking_uri: str | None = None,
                 out: str | None = None, env: dict[str, str] | None = None, project: Path | None = None,
                 submission_id: str | None = None, dry_run: bool = False) -> str:
    """Validate ``study`` locally, then submit ``coloc run`` for it as a Ray job; returns the job id.

    With ``dry_run`` nothing is sent: returns what would be (entrypoint, env var names, every uploaded file).

    Args:
        study: the study YAML.
        address: the dashboard URL (``http://127.0.0.1:8265``).
        token_file: the cluster's token file (else ``$RAY_AUTH_TOKEN`` / ``$RAY_AUTH_TOKEN_PATH``).
        tracking_uri: MLflow URI the job logs to (``MLFLOW_TRACKING_URI`` in the job).
        out: study directory on the cluster (default: the study's output_dir or runs/<name> in the job's dir).
        env: extra env vars for the job (e.g. ``HF_TOKEN`` is better put on the cluster itself).
        project: the checkout to ship (default: the one this package is imported from).
        submission_id: job id to use (default ``coloc-<name>-<time>-<rand>``).
        dry_run: only show what would be sent.
    """
    from coloc_ray.ablation.study_config import load_study, validate_study

    check_secrets(env, tracking_uri)
    study = Path(study)
    cfg = load_study(study)
    errs = validate_study(cfg)
    if errs:
        raise UserError("\n".join(f"{study}: {e}" for e in errs))
    project = Path(project or PROJECT)
    rel = _study_in_project(study, project)
    workdir = project
    if rel is None:  # a study file outside the checkout travels inside a staged copy of it
        workdir, rel = stage_working_dir(project, study)
    entry = ["coloc", "run", rel, "--address", "auto"] + (["--out", out] if out else [])
    study_dir = _cluster_storage(study, out or cfg.output_dir, cfg.name)
    metadata = {f"{META_PREFIX}study": cfg.name, f"{META_PREFIX}study_file": rel, f"{META_PREFIX}study_dir": study_dir,
                f"{META_PREFIX}tracking_uri": tracking_uri or ""}  # "": the cluster's own MLFLOW_TRACKING_URI
    if dry_run:
        try:
            renv = runtime_env(workdir, address, tracking_uri, env)
            files = upload_list(workdir, renv["excludes"])
        finally:
            if workdir != project:
                shutil.rmtree(workdir.parent, ignore_errors=True)
        return "\n".join([f"entrypoint: {shlex.join(entry)}", f"env vars: {', '.join(sorted(renv['env_vars']))}",
                          f"working_dir: {len(files)} files would be uploaded:"] + [f"  {f}" for f in files])
    client = connect(address, token_file)
    sid = submission_id or f"coloc-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    try:
        return _submit_with_retry(address, client, entrypoint=shlex.join(entry), submission_id=sid,
                                  metadata=metadata, runtime_env=runtime_env(workdir, address, tracking_uri, env))
    finally:
        if workdir != project:
            shutil.rmtree(workdir.parent, ignore_errors=True)


def _submit_with_retry(address: str, client, retry_s: float = 60.0, **kwargs) -> str:
    """``client.submit_job``; a freshly started head answers 500 "No available agent" for a few seconds."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return _call(address, client.submit_job, **kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"the cluster at {address} refused the job: {first}") from None
            time.sleep(2)


def job_info(address: str, job_id: str, token_file: str | None = None) -> dict:
    """Status, message, entrypoint, times and metadata of one job (UserError if the id is unknown)."""
    client = connect(address, token_file)
    try:
        info = _call(address, client.get_job_info, job_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise UserError(f"no job {job_id!r} on the cluster at {address}; `coloc status --address "
                            f"{address}` lists the jobs") from None
        raise
    return {"job_id": job_id, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "message": info.message or "", "entrypoint": info.entrypoint, "start_time": info.start_time,
            "end_time": info.end_time, "metadata": dict(info.metadata or {})}


def list_jobs(address: str, token_file: str | None = None) -> list[dict]:
    """Every job the cluster knows, newest first: id, status, study, entrypoint."""
    client = connect(address, token_file)
    jobs = _call(address, client.list_jobs)
    rows = [{"job_id": j.submission_id or j.job_id, "status": str(getattr(j.status, "value", j.status)),
             "study": (j.metadata or {}).get(f"{META_PREFIX}study", "-"), "start_time": j.start_time or 0,
             "entrypoint": j.entrypoint} for j in jobs]
    return sorted(rows, key=lambda r: r["start_time"], reverse=True)


def job_logs(address: str, job_id: str, token_file: str | None = None) -> str:
    """The job's whole log so far."""
    client = connect(address, token_file)
    job_info(address, job_id, token_file)  # a clear error for an unknown id
    return _call(address, client.get_job_logs, job_id)


def follow_logs(address: str, job_id: str, token_file: str | None = None, out=None) -> None:
    """Stream the job's log to ``out`` (stdout) until the job ends."""
    import asyncio
    import sys

    out = out or sys.stdout
    client = connect(address, token_file)
    job_info(address, job_id, token_file)

    async def pump():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    _call(address, asyncio.run, pump())


def wait_for_job(address: str, job_id: str, token_file: str | None = None, timeout_s: float | None = None,
                 poll_s: float = 2.0, on_change=None) -> str:
    """Poll until the job reaches SUCCEEDED / FAILED / STOPPED; returns that status."""
    client = connect(address, token_file)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    while True:
        status = str(getattr(st := _call(address, client.get_job_status, job_id), "value", st))
        if status != last and on_change:
            on_change(status)
        last = status
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s} s")
        time.sleep(poll_s)


def trial_table(info: dict) -> str:
    """The live trial table, from the ``progress.json`` the study keeps in its storage (never from the job's log).

    Args:
        info: :func:`job_info` of the job; its ``coloc.study_dir`` metadata names the study's storage.

    Returns:
        The table, or one line saying why there is none (not started yet, or the storage is not readable here
        and how to fix that).
    """
    from coloc_ray.ablation.layout import PROGRESS
    from coloc_ray.ablation.progress import format_table
    from coloc_ray.storage import Storage, is_uri

    study_dir = info.get("metadata", {}).get(f"{META_PREFIX}study_dir", "")
    if not study_dir:
        return "(no trial table: this job was not sent by coloc submit)"
    where = f"{study_dir.rstrip('/')}/{PROGRESS}"
    if not is_uri(study_dir) and not (Path(study_dir).is_absolute() and Path(study_dir).is_dir()):
        why = "no such directory on this machine"  # a cluster volume not mounted here, or the job's own dir
    else:
        try:
            store = Storage(study_dir)
            if not store.is_file(PROGRESS):
                return "(no trial table yet: the study has not started its trials)"
            return format_table(store.read_json(PROGRESS))
        except Exception as e:  # noqa: BLE001 - no credentials, no network, a half-written file: say which
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return (f"(no trial table: {where} is not readable here: {why}; mount that volume here or give this machine "
            "credentials for the bucket, or see the tables the job printed with `coloc logs JOB`)")

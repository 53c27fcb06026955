"""A study's storage: a local directory or an object-store URI (``s3://``, ``gs://``, ...), through ``pyarrow.fs``.

``pyarrow.fs`` is what Ray Train and Tune use for their own storage, so a URI that works for them works here, with
the same credentials (the nodes' environment or credential files: ``AWS_*`` variables, ``~/.aws``, GCP's
application-default credentials; an S3-compatible endpoint through ``AWS_ENDPOINT_URL``). Nothing here holds a
secret or passes one on.

Every node writes its outputs through a :class:`Storage`: trials work in node-local scratch and upload their
folder when done, their ``result.json`` last, so a trial folder in storage either has its result or is unfinished.
On a local filesystem a write is atomic (temp file + rename); an object store's single PUT is atomic by itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from coloc_ray.errors import UserError


def is_uri(root: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (object stores and any other pyarrow filesystem), False for a local path."""
    s = str(root)
    return "://" in s and not s.startswith("file://")


def _resolve(root: str):
    import pyarrow.fs as pafs

    if not is_uri(root):
        local = root[len("file://"):] if root.startswith("file://") else root
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    try:
        fs, base = pafs.FileSystem.from_uri(root)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"storage {root!r}: pyarrow.fs cannot open it ({str(e).splitlines()[0]}); use a local "
                        "path or a URI such as s3://bucket/prefix or gs://bucket/prefix") from None
    return fs, base.rstrip("/")


def json_default(o: Any) -> Any:
    """How the project writes what JSON lacks: pydantic models, arrays, sets (sorted), paths (``io.write_json`` too)."""
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class Storage:
    """One storage root (``root``) and paths relative to it.

    Args:
        root: a local directory (made absolute) or a URI that ``pyarrow.fs.FileSystem.from_uri`` resolves.
    """

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        self.fs, self.base = _resolve(root)
        self.is_local = not is_uri(root)
        self.root = self.base if self.is_local else root.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def __reduce__(self):  # pickles by root (Ray ships it to trials): each node opens its own filesystem
        return (Storage, (self.root,))

    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` (for ``self.fs``)."""
        rel = str(rel).strip("/")
        return f"{self.base}/{rel}" if rel else self.base

    def uri(self, rel: str = "") -> str:
        """The user-facing location of ``rel``: an absolute local path or ``scheme://.../rel``."""
        rel = str(rel).strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def local_path(self, rel: str = "") -> Path:
        """``rel`` as a local Path; only for local storage."""
        if not self.is_local:
            raise ValueError(f"{self.root} is not a local path")
        return Path(self.path(rel))

    # -- reading -------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under ``rel`` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        return sorted(Path(i.path).name for i in self.fs.get_file_info(sel))

    # -- writing -------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write ``rel`` whole: readers see the old content or the new, never a part."""
        if self.is_local:
            dest = self.local_path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)
        return self.uri(rel)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, default=json_default) + "\n").encode())

    def upload(self, local_dir: str | os.PathLike, rel: str, last: Iterable[str] = (),
               skip: Iterable[str] = ()) -> None:
        """Copy the files under ``local_dir`` to ``rel``; the names in ``last`` (relative) are written after
        every other file, so their presence means the rest is complete. Subfolders in ``skip`` stay behind."""
        src = Path(local_dir)
        last, skip = [str(x) for x in last], [str(x).strip("/") for x in skip]

        def keep(p: Path) -> bool:
            r = p.relative_to(src).as_posix()
            return p.is_file() and r not in last and not any(r == k or r.startswith(k + "/") for k in skip)

        files = sorted(p for p in src.rglob("*") if keep(p))
        for p in files + [src / x for x in last if (src / x).is_file()]:
            self._put_file(p, f"{rel.strip('/')}/{p.relative_to(src).as_posix()}")

    def _put_file(self, local: Path, rel: str) -> None:
        if self.is_local:
            self.write_bytes(rel, local.read_bytes())
            return
        with open(local, "rb") as f, self.fs.open_output_stream(self.path(rel)) as out:
            while chunk := f.read(8 << 20):
                out.write(chunk)

    def download(self, rel: str, local_dir: str | os.PathLike, skip: Iterable[str] = ()) -> list[Path]:
        """Copy everything under ``rel`` into ``local_dir`` (subfolders named in ``skip`` are left out)."""
        import pyarrow.fs as pafs

        skip = {s.strip("/") for s in skip}
        base = self.path(rel)
        sel = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        got = []
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            sub = info.path[len(base):].lstrip("/")
            if any(sub == s or sub.startswith(s + "/") for s in skip):
                continue
            dest = Path(local_dir) / sub
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as f, open(dest, "wb") as out:
                while chunk := f.read(8 << 20):
                    out.write(chunk)
            got.append(dest)
        return got

    def delete(self, rel: str) -> None:
        """Remove ``rel`` (a file or a folder); nothing if it does not exist."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

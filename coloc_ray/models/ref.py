"""A resolved ``--model``: one reference (spec, local path, hub revision, weights fingerprint, shape) that the
study resolves once on the driver and hands to every stage, so each stage on each node can check that it runs
the very weights the driver resolved.

The fingerprint is a sha256 over the canonical JSON list ``[[file name, sha256 of its bytes], ...]`` of the
weight files a load reads: the top-level ``*.safetensors`` of a directory when it has any (what
``from_pretrained`` loads; a Trainer's ``training_args.bin`` or a repo's extra ``pytorch_model.bin`` do not
count), else its top-level ``*.bin`` / ``*.gguf`` / ``*.pt`` / ``*.pth``; for a ``.gguf`` spec that one file.
The same rule over a hub repo's file list gives the same fingerprint from hub metadata as from a download.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from coloc_ray.errors import UserError
from coloc_ray.models.shape import ModelShape

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
CHUNK = 1 << 20
RESOLUTIONS: collections.Counter = collections.Counter()  # resolve_model_ref calls per spec, this process
_BLOB = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelRef:
    """``--model`` resolved once: what every stage loads and checks (picklable: Ray tasks receive it).

    Attributes:
        spec: the model as the user wrote it (shown in outputs and errors).
        kind: ``alias`` | ``dir`` | ``gguf`` | ``hub``.
        path: the local directory or ``.gguf`` file on the node that resolved it; None for a hub id known
            only from hub metadata.
        revision: the hub commit sha when known (hub ids only).
        fingerprint: hex sha256 of the weight files (module docstring).
        shape: the model's shape from its config.
    """

    spec: str
    kind: str
    path: str | None
    revision: str | None
    fingerprint: str
    shape: ModelShape

    @property
    def label(self) -> str:
        return f"{self.spec}@{self.fingerprint[:12]}"

    def __str__(self) -> str:
        return self.label

    def to_dict(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "path": self.path, "revision": self.revision,
                "fingerprint": self.fingerprint, "shape": asdict(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelRef:
        return cls(spec=d["spec"], kind=d["kind"], path=d.get("path"), revision=d.get("revision"),
                   fingerprint=d["fingerprint"], shape=ModelShape(**d["shape"]))

    def local_path(self) -> str:
        """What :func:`~coloc_ray.models.load_model` loads on THIS node: ``self.path`` when it exists here with
        the same weights, else the spec re-resolved here (nodes share no disk: an alias is built or converted
        per node). A hub id with no local copy but the same hub fingerprint gives the hub id itself
        (``load_model`` then downloads ``self.revision``).

        Raises:
            UserError: the weights on this node are not the ones the study resolved.
        """
        if self.path and Path(self.path).exists():
            try:
                if _path_fingerprint(Path(self.path)) == self.fingerprint:
                    return self.path
            except UserError:
                pass  # the path holds no weights here: re-resolve
        here = resolve_model_ref(self.spec)
        if here.fingerprint != self.fingerprint:
            raise UserError(
                f"model {self.spec!r} on this node has weights {here.fingerprint[:12]} but the study resolved "
                f"{self.fingerprint[:12]}; give every node the same files (or re-run the study to resolve "
                "the model again)")
        return here.path or self.spec


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_file() -> Path:
    from coloc_ray.io import cache_root

    return cache_root() / "fingerprints.json"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}  # absent or corrupt: start afresh (it is rewritten on the next hash)
    return data if isinstance(data, dict) else {}


def file_sha256(path: Path) -> str:
    """sha256 of one weight file: the blob name in a Hugging Face cache, else a cached streamed hash."""
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        # huggingface_hub stores each file under blobs/<etag> (file_download._hf_hub_download_to_cache_dir:
        # ``blob_path = os.path.join(storage_folder, "blobs", etag)``), and an LFS file's etag is the sha256
        # of its content (hf_hub_download: "metadata is outdated + etag is a sha256 => means it's an LFS
        # file"; REGEX_SHA256). Git files have a 40-hex sha1 etag and are hashed below.
        if target.parent.name == "blobs" and _BLOB.fullmatch(target.name):
            return target.name
    real = Path(os.path.realpath(path))
    st = real.stat()
    key = str(real)
    cache = _read_cache()
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns \
            and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = sha256_file(real)
    cache = _read_cache()  # another process may have added entries meanwhile
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    from coloc_ray.io import write_json

    write_json(_cache_file(), cache)  # temp file + rename: a reader never sees half a cache
    return digest


def select_weight_files(names: list[str]) -> list[str]:
    """The weight files a load reads, out of a directory's (or repo's) top-level file names."""
    top = [n for n in names if "/" not in n and not n.startswith(".") and n.endswith(WEIGHT_SUFFIXES)]
    safetensors = [n for n in top if n.endswith(".safetensors")]
    return sorted(safetensors or top)


def combine(hashes: dict[str, str]) -> str:
    """The fingerprint of ``{file name: sha256}``: sha256 of the sorted ``[[name, sha256], ...]`` JSON."""
    canon = json.dumps(sorted([n, h] for n, h in hashes.items()), separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def weights_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of a local model directory or ``.gguf`` file (module docstring); per-file hashes are cached.

    Raises:
        UserError: the directory holds no weight files.
    """
    return _path_fingerprint(Path(path))


def _path_fingerprint(p: Path) -> str:
    if p.is_file():
        return combine({p.name: file_sha256(p)})
    names = select_weight_files([q.name for q in p.iterdir() if q.is_file()]) if p.is_dir() else []
    if not names:
        raise UserError(f"model directory {str(p)!r} has no weight files (*.safetensors, *.bin, *.gguf, *.pt, "
                        "*.pth); point --model at a complete HF model directory or download the weights")
    return combine({n: file_sha256(p / n) for n in names})


def located(spec: str, path: str, extra: dict) -> tuple[str, str | None, str | None, str | None]:
    """``(kind, local path, revision, fingerprint)`` of ``spec`` as ``resolve_model_dir`` located it on this node
    (``path``, ``extra``); a hub id whose weights are not in the local HF cache has no local path nor fingerprint."""
    from coloc_ray.models.resolve import ALIASES

    if "gguf_file" in extra:
        local = str(Path(path, extra["gguf_file"]).resolve())
        return "gguf", local, None, weights_fingerprint(local)
    if Path(path).is_dir():
        local = str(Path(path).resolve())
        return ("alias" if spec in ALIASES else "dir"), local, None, weights_fingerprint(local)
    cached = _hub_cached(spec)
    return ("hub", *cached) if cached else ("hub", None, None, None)


def spec_fingerprint(spec: str) -> str | None:
    """The fingerprint of ``spec`` on this node without counting a resolution (cached hashes; a hub id only
    from its local HF cache, else None). What a stage checks a config's ``model_fingerprint`` against."""
    from coloc_ray.models.resolve import resolve_model_dir

    return located(spec, *resolve_model_dir(spec))[3]


def check_fingerprint(spec: str, got: str | None, want: str | None) -> None:
    """UserError unless the weights of ``spec`` here (``got``) are those the study resolved (``want``)."""
    if want is None or got == want:
        return
    have = got[:12] if got else "unknown (not in the local HF cache)"
    raise UserError(f"model {spec!r} on this node has weights {have} but the study resolved {want[:12]} "
                    "(model_fingerprint); give every node the same files, or re-run the study to resolve "
                    "the model again")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


def _hub_cached(spec: str) -> tuple[str, str, str] | None:
    """(snapshot dir, commit, fingerprint) of a hub id whose weights are in the local HF cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = try_to_load_from_cache(spec, "config.json")
    except Exception:  # noqa: BLE001 - an unusable cache only means "not cached"
        return None
    if not isinstance(cfg, str):
        return None
    snap = Path(cfg).parent
    names = select_weight_files([q.name for q in snap.iterdir() if q.is_file()])
    if not names:
        return None
    return str(snap), snap.name, combine({n: file_sha256(snap / n) for n in names})


def _hub_remote(spec: str) -> tuple[str, str]:
    """(commit sha, fingerprint) of a hub id from hub metadata, downloading no weights.

    Written against huggingface_hub 2.x ``HfApi().model_info(repo_id, files_metadata=True)`` (``.sha``;
    ``.siblings[i].rfilename`` and ``.lfs.sha256``) and tested with a stand-in of that shape only: it was
    never run against the real hub (the development machine has none).
    """
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(spec, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated: one line either way
        raise UserError(f"--model {spec!r}: not in the local HF cache and the hub cannot describe it "
                        f"({type(e).__name__}); download it first (hf download {spec})") from None
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    names = select_weight_files(list(siblings))
    if not names:
        raise UserError(f"--model {spec!r}: the hub repo holds no weight files (*.safetensors, *.bin, ...); "
                        "check the model id")
    missing = [n for n in names if not getattr(siblings[n].lfs, "sha256", None)]
    if missing:
        raise UserError(f"--model {spec!r}: the hub gives no sha256 for {missing[0]}; download it first "
                        f"(hf download {spec}) so its weights are hashed locally")
    return info.sha, combine({n: siblings[n].lfs.sha256 for n in names})


def resolve_model_ref(spec: str, *, local_only: bool = False) -> ModelRef:
    """Resolve ``--model`` once into a :class:`ModelRef` (counts in :data:`RESOLUTIONS`).

    Args:
        spec: alias, local HF directory, ``.gguf`` file or hub id ``org/name``.
        local_only: never reach the hub (a hub id must be in the local HF cache, weights included).

    Raises:
        UserError: an unknown spec, a directory without weights, a hub id neither cached nor describable.
    """
    from coloc_ray.models.resolve import resolve_model_dir
    from coloc_ray.models.shape import model_shape

    RESOLUTIONS[spec] += 1
    shape = model_shape(spec, local_only=local_only)
    kind, local, revision, fp = located(spec, *resolve_model_dir(spec))
    if fp is None:  # a hub id whose weights are not in the local HF cache
        if local_only or _hub_offline():
            raise UserError(f"--model {spec!r}: its weights are not in the local HF cache and the hub is off "
                            f"(HF_HUB_OFFLINE or local_only); download them first (hf download {spec})")
        revision, fp = _hub_remote(spec)
    return ModelRef(spec=spec, kind=kind, path=local, revision=revision, fingerprint=fp, shape=shape)

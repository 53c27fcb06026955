"""GPQA arrives as the authors' password-protected zip: extract it at run time into the cache, never the repo.

The authors ask that GPQA questions never appear in plain text online, so the CSVs live only under
``coloc_ray.io.cache_root()/gpqa`` (outside the repository, never committed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from coloc_ray.errors import UserError
from coloc_ray.io import cache_root, shared_data_dir

# Published by the authors in their README (github.com/idavidrein/gpqa) so that the zip can be opened.
GPQA_PASSWORD = b"deserted-untie-orchid"
GPQA_SUBSETS = ("main", "diamond", "extended", "experts")


def gpqa_csv(subset: str = "main") -> Path:
    """Path of ``gpqa_<subset>.csv``, extracting the zip into the cache on first use (atomically).

    Raises:
        UserError: the zip is missing, or the subset is unknown.
    """
    if subset not in GPQA_SUBSETS:
        raise UserError(f"GPQA subset {subset!r} is unknown; use one of {', '.join(GPQA_SUBSETS)}")
    out = cache_root() / "gpqa"
    target = out / f"gpqa_{subset}.csv"
    if target.is_file():
        return target
    zpath = shared_data_dir() / "gpqa" / "dataset.zip"
    if not zpath.is_file():
        raise UserError(f"GPQA data file {zpath} is missing: restore it or point $COLOC_DATA at the data folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".gpqa."))
    try:
        with zipfile.ZipFile(zpath) as z:
            for info in z.infolist():
                name = Path(info.filename).name
                if name.endswith(".csv"):  # skip .DS_Store and folders
                    (tmp / name).write_bytes(z.read(info, pwd=GPQA_PASSWORD))
        try:
            os.replace(tmp, out)
        except OSError:  # another process extracted it meanwhile (a non-empty dir cannot be replaced)
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

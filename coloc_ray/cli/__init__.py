"""The ``coloc`` command. Each stage registers its own subcommands from its own module.

A :class:`~coloc_ray.errors.UserError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

# Subcommand modules, in --help order. Each defines register(subparsers).
COMMAND_MODULES = [
    "coloc_ray.cli.models_cmd",   # coloc models prepare|info
    "coloc_ray.cli.probe",        # coloc probe sensitivity|rope
    "coloc_ray.cli.analyze",      # coloc analyze
    "coloc_ray.cli.finetune",     # coloc finetune
    "coloc_ray.cli.evaluate",     # coloc eval
    "coloc_ray.cli.study",        # coloc validate|run|resume
    "coloc_ray.cli.report_cmd",   # coloc report
    "coloc_ray.cli.jobs",         # coloc submit|status|logs
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coloc", description="Sensitivity / RoPE-influence co-localization studies on GQA models, on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging; for run / resume also library progress bars and Ray worker output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not built in this checkout
                continue
            raise
        mod.register(sub)
    return parser


class _ExitParser(argparse.ArgumentParser):
    pass


def main(argv: list[str] | None = None, *, stages=None) -> int:
    """The ``coloc`` command. ``stages``: the study's stage functions for ``run`` / ``resume`` (default the real
    ones, :func:`coloc_ray.ablation.stages.real_stages`; a test passes its own)."""
    from coloc_ray.errors import UserError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.stages = stages
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"coloc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coloc: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in _STORAGE_ERRNOS:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"coloc: error: {os.strerror(e.errno).lower()}{where}: free space or choose another output "
              "directory; the partial output was not kept", file=sys.stderr)
        return 2
    return int(rc or 0)


# A full disk, a quota, a read-only mount: the user's to fix, not a bug to show a traceback for.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def entry() -> None:  # pragma: no cover
    sys.exit(main())

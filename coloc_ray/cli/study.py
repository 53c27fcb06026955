"""``coloc validate|run|resume``: the ablation study as a service."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub) -> None:
    v = sub.add_parser("validate", help="check a study file (schema, layer sets, resources) without running it")
    v.add_argument("study", nargs="?", help="study YAML")
    v.add_argument("--address", default=None, help="also check resources against this Ray cluster")
    v.add_argument("--local", action="store_true", help="also check resources against this machine")
    v.add_argument("--schema", action="store_true", help="print every study key with its default and meaning")
    v.set_defaults(func=_validate)
    r = sub.add_parser("run", help="run a study: probes -> analysis -> layer sets -> arms on Ray Tune -> report")
    r.add_argument("study", help="study YAML")
    r.add_argument("--out", default=None, help="study directory (default: output_dir or runs/<name>)")
    r.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray on 127.0.0.1)")
    _verbose_flag(r)
    r.set_defaults(func=_run)
    s = sub.add_parser("resume", help="finish an interrupted study; finished trials are never run again")
    s.add_argument("study_dir", help="the study directory (holds study.json)")
    s.add_argument("--address", default=None, help="Ray cluster address")
    _verbose_flag(s)
    s.set_defaults(func=_resume)


def _verbose_flag(p) -> None:
    # SUPPRESS: `coloc -v run` (the global flag) must not be reset to False by this subcommand's default.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show library progress bars, Ray worker output and known-harmless warnings on the "
                        "console (default: only the trial table and stage / trial events; the rest goes to "
                        "<study dir>/logs/ and each trial's trial.log)")


def _console(cfg, study_dir, verbose: bool):
    """The quiet (or verbose) console, with its log files in ``<study dir>/logs`` (local) or local scratch."""
    import tempfile
    from pathlib import Path

    from coloc_ray.ablation.console import setup_console
    from coloc_ray.ablation.layout import LOGS

    sd = str(study_dir or cfg.study_dir())
    logs = Path(tempfile.gettempdir()) / f"coloc-{cfg.name}-logs" if "://" in sd else Path(sd) / LOGS
    return setup_console(verbose, logs)


def _local_resources() -> dict:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _cluster_resources(address: str) -> dict:
    import ray

    from coloc_ray.raycluster import ensure_ray

    ensure_ray(address)
    try:
        return dict(ray.cluster_resources())
    finally:
        ray.shutdown()


def _validate(args) -> int:
    from coloc_ray.ablation.study_config import load_study, schema_help, validate_study
    from coloc_ray.errors import UserError

    if args.schema:
        print(schema_help())
        return 0
    if not args.study:
        raise UserError("coloc validate: give a study YAML (or --schema)")
    check_text_file(args.study, "study file")
    cfg = load_study(args.study)
    res = _cluster_resources(args.address) if args.address else (_local_resources() if args.local else None)
    errs = validate_study(cfg, cluster_resources=res) + _out_errors(cfg.output_dir, "output_dir")
    if errs:
        for e in errs:
            print(f"{args.study}: {e}", file=sys.stderr)
        return 2
    print(f"{args.study}: OK ({cfg.name}: model {cfg.model}, arms {', '.join(cfg.arms)}, "
          f"control seeds {cfg.control_seed_list}, train seeds {cfg.train_seed_list})")
    return 0


def _run(args) -> int:
    from coloc_ray.ablation.study_config import load_study
    from coloc_ray.errors import UserError

    check_text_file(args.study, "study file")
    cfg = load_study(args.study)
    errs = _out_errors(args.out, "--out") or _out_errors(cfg.output_dir, "output_dir")
    if errs:
        raise UserError(errs[0])
    with _console(cfg, args.out, getattr(args, "verbose", False)):
        return _finish(cfg, args.out, args.address, args.stages)


def _finish(cfg, study_dir, address, stages) -> int:
    from coloc_ray.ablation.spine import StudyIncomplete, run_study

    try:
        out = run_study(cfg, study_dir, address=address, stages=stages)
    except StudyIncomplete as e:
        print(f"coloc: study {cfg.name} incomplete: {e}", file=sys.stderr)
        return 1
    print(f"study {cfg.name}: {len(out['trials'])} trials done; results in {out['study_dir']}")
    return 0


def _resume(args) -> int:
    from pathlib import Path

    from coloc_ray.ablation.layout import STUDY
    from coloc_ray.ablation.study_config import StudyConfig
    from coloc_ray.errors import UserError
    from coloc_ray.io import read_json
    from coloc_ray.storage import Storage, is_uri

    if is_uri(args.study_dir):  # a study in object storage: read its record from there
        store = Storage(args.study_dir)
        if not store.is_file(STUDY):
            raise UserError(f"{args.study_dir}: no study.json there; pass the storage `coloc run` wrote to")
        p, load = f"{store.uri(STUDY)}", lambda: store.read_json(STUDY)
    else:
        p = Path(args.study_dir) / STUDY
        if not p.is_file():
            raise UserError(f"{args.study_dir}: no study.json here; pass the directory `coloc run` created")
        check_text_file(p, "study record")
        load = lambda: read_json(p)  # noqa: E731
    try:
        cfg = StudyConfig.model_validate(load())
    except (ValueError, TypeError) as e:  # JSONDecodeError, pydantic's ValidationError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if hasattr(e, "errors"):  # pydantic: name the first bad key
            err = e.errors()[0]
            first = f"{'.'.join(map(str, err['loc'])) or 'top level'}: {err['msg']}"
        raise UserError(f"{p} is corrupt ({type(e).__name__}: {first}); restore it, or start the study again "
                        "with `coloc run <study.yaml> --out <a new dir>`") from None
    with _console(cfg, args.study_dir, getattr(args, "verbose", False)):
        return _finish(cfg, args.study_dir, args.address, args.stages)


def _out_errors(out: str | None, key: str) -> list[str]:
    """A local study directory that is a file or cannot be written (a URI is checked by the run itself)."""
    from coloc_ray.errors import UserError

    if not out or "://" in out:
        return []
    from coloc_ray.cli.evaluate import _check_out

    try:
        _check_out(out, key)
    except UserError as e:
        return [str(e)]
    return []


def check_text_file(path, what: str) -> None:
    """A YAML / JSON input must be readable UTF-8 text: one line naming the file otherwise (not a traceback)."""
    from pathlib import Path

    from coloc_ray.errors import UserError

    p = Path(path)
    if not p.is_file():
        return  # the loader names a missing file in its own words
    try:
        p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {str(p)!r} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                        "save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{what} {str(p)!r} cannot be read ({e.strerror})") from None

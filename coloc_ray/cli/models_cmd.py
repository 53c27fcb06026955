"""``coloc models prepare|info``: convert / inspect models."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="prepare (convert/cache) or inspect a model")
    msub = p.add_subparsers(dest="models_cmd", metavar="ACTION")
    msub.required = True
    prep = msub.add_parser("prepare", help="resolve a model once (GGUF -> safetensors cache, tiny models)")
    prep.add_argument("model", help="alias, hub id, HF directory or .gguf file")
    prep.set_defaults(func=_prepare)
    info = msub.add_parser("info", help="print the model's shape facts as JSON")
    info.add_argument("model")
    info.set_defaults(func=_info)


def _prepare(args) -> int:
    from coloc_ray.models import resolve_model_dir

    path, extra = resolve_model_dir(args.model)
    print(path)
    return 0


def _info(args) -> int:
    from coloc_ray.models import load_model

    lm = load_model(args.model)
    print(json.dumps({**lm.info.to_dict(), "path": lm.path}, indent=2))
    return 0

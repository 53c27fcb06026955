"""``coloc probe sensitivity|rope``: run a layer probe, write its JSON, log it to MLflow.

Every user mistake is a UserError (one line, exit 2) raised before the model is loaded; the JSON goes
through :func:`coloc_ray.io.staged_output`, so a failed run leaves nothing partial in ``--out``.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _common(p) -> None:
    p.add_argument("--model", required=True, help="alias (smollm2-135m, tiny-gqa), HF directory, .gguf or hub id")
    p.add_argument("--num-workers", type=int, default=None,
                   help="Ray tasks (default: one per CPU, or per GPU); 0 runs in this process without Ray")
    p.add_argument("--address", default=None, help="an existing Ray cluster (host:port, ray://..., auto)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store/server (default: sqlite mlruns.db in cwd)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--out", required=True, help="output directory")


def register(sub) -> None:
    from coloc_ray.probes.pooling import POOLINGS  # the registry (torch-free)

    p = sub.add_parser("probe", help="layer probes: correctness sensitivity, RoPE influence")
    psub = p.add_subparsers(dest="probe_cmd", metavar="PROBE")
    psub.required = True
    s = psub.add_parser("sensitivity", help="METHOD 1: 1 - cos of block outputs over minimal pairs")
    s.add_argument("--pairs", default=None, help="JSONL of {id, domain, correct, incorrect} (default: the shipped 15)")
    s.add_argument("--pooling", default="mean", help=f"{' | '.join(POOLINGS)} (default mean)")
    s.add_argument("--sink-multiple", type=float, default=10.0,
                   help="mean-nosink drops tokens whose norm exceeds this multiple of the median (default 10)")
    s.add_argument("--top-k", type=int, default=None, help="how many top layers to list (default min(10, L))")
    _common(s)
    s.set_defaults(func=_sensitivity)
    r = psub.add_parser("rope", help="METHOD 2: loss change when one layer's RoPE frequencies are scaled")
    r.add_argument("--eval-data", default=None, help="JSONL with a 'text' per line (default: held-out mix slice)")
    r.add_argument("--factor", nargs="+", action="extend", default=None, metavar="F",
                   help="RoPE factors (default 2.0); layer l uses inv_freq * F**(-2i/d)")
    r.add_argument("--layers", default=None, help="comma-separated layers to probe, e.g. 0,5,10 (default all)")
    r.add_argument("--naive", action="store_true", help="full forward per layer (slower, same numbers)")
    r.add_argument("--max-len", type=int, default=512, help="truncate texts to this many tokens (default 512)")
    r.add_argument("--num-texts", type=int, default=None, help="use the first N eval texts (default 16 built-in)")
    _common(r)
    r.set_defaults(func=_rope)


def _parse_floats(vals, flag: str) -> list[float]:
    from coloc_ray.errors import UserError

    try:
        return [float(v) for v in vals]
    except ValueError:
        raise UserError(f"{flag} {' '.join(vals)}: give numbers, e.g. {flag} 2.0 4.0") from None


def _parse_layers(text: str | None) -> list[int] | None:
    from coloc_ray.errors import UserError

    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--layers {text!r}: give comma-separated layer indices, e.g. --layers 0,5,10") from None


def _check_out(out: str) -> Path:
    """``--out`` must be a directory we can create or write, checked before any work."""
    from coloc_ray.cli.evaluate import _check_out as check_writable_dir

    check_writable_dir(out)
    return Path(out)


def _track_and_write(args, result: dict, name: str, series: dict[str, list], params: dict,
                     metrics: dict | None = None) -> Path:
    """One MLflow run: params (config, versions), per-layer series (step = layer), the JSON as artifact."""
    from coloc_ray.io import staged_output, versions, write_json
    from coloc_ray.tracking import Tracker

    out = _check_out(args.out)
    tracker = Tracker(args.tracking_uri, run_name=f"probe-{name}", tags={"stage": "probe", "probe": name},
                      enabled=not args.no_tracking)
    with tracker:
        tracker.log_params({"model": result["model"], "probe": name, "config": params, "versions": versions()})
        for key, values in series.items():
            tracker.log_series(key, values)
        tracker.log_metrics(metrics or {})
        if tracker.run_id:
            result = {**result, "mlflow_run_id": tracker.run_id}
        fname = "sensitivity.json" if name == "sensitivity" else "rope_influence.json"
        with staged_output(out) as stage:
            write_json(stage / fname, result)
        tracker.log_artifact(out / fname)
    log.info("wrote %s", out / fname)
    return out / fname


def _sensitivity(args) -> int:
    # Every check runs before torch/transformers are imported: a user mistake answers in a second.
    from coloc_ray.models.loading import check_model_spec
    from coloc_ray.probes.checks import check_num_workers, check_pooling, check_top_k, model_ref
    from coloc_ray.probes.pairs import load_pairs

    _check_out(args.out)
    check_model_spec(args.model)
    pairs = load_pairs(args.pairs)
    check_pooling(args.pooling, args.sink_multiple)
    check_num_workers(args.num_workers)
    check_top_k(args.top_k, model_ref(args.model)[1])

    from coloc_ray.probes.api import run_sensitivity

    res = run_sensitivity(args.model, pairs=pairs, pooling=args.pooling, sink_multiple=args.sink_multiple,
                          top_k=args.top_k, num_workers=args.num_workers, address=args.address)
    series = {"sensitivity": res["scores"], **{f"sensitivity.{d}": v for d, v in res["per_domain"].items()}}
    params = {k: getattr(args, k) for k in ("pairs", "pooling", "sink_multiple", "top_k", "num_workers", "address")}
    _track_and_write(args, res, "sensitivity", series, params)
    print(f"top-{res['top_k']} sensitive layers: {res['top_layers']}")
    return 0


def _rope(args) -> int:
    from coloc_ray.models.loading import check_model_spec
    from coloc_ray.probes.checks import check_num_workers, check_rope_args, model_ref
    from coloc_ray.probes.evaltexts import resolve_eval_texts

    _check_out(args.out)
    check_model_spec(args.model)
    factors = _parse_floats(args.factor or ["2.0"], "--factor")
    layers = _parse_layers(args.layers)
    check_num_workers(args.num_workers)
    texts = resolve_eval_texts(args.eval_data, args.num_texts)
    check_rope_args(factors, layers, model_ref(args.model)[1], args.max_len)

    from coloc_ray.probes.api import run_rope_influence
    from coloc_ray.probes.rope_influence import factor_key

    res = run_rope_influence(args.model, eval_data=texts, factors=factors, layers=layers, naive=args.naive,
                             max_len=args.max_len, num_workers=args.num_workers, address=args.address)
    res["eval_data"] = args.eval_data or "default: seeded 2 % held-out slice of CodeAlpaca 2k + GSM8K train"
    series = {"rope_influence": res["scores"],
              **{f"rope_loss.f{factor_key(f)}": res["losses"][factor_key(f)] for f in res["factors"]}}
    params = {"eval_data": res["eval_data"], "factors": res["factors"], "layers": res["layers"],
              "naive": args.naive, "max_len": args.max_len, "num_texts": res["num_texts"],
              "num_workers": args.num_workers, "address": args.address}
    _track_and_write(args, res, "rope", series, params, {"rope_base_loss": res["base_loss"]})
    top = max(range(len(res["scores"])), key=lambda i: (res["scores"][i], -i))
    print(f"base loss {res['base_loss']:.4f}; most RoPE-influential layer: {top}")
    return 0

"""Benchmark: RoPE-influence probe, CACHED tail recompute vs NAIVE full forwards, in one run.

Both modes probe every layer of the model on the same eval texts in the same process, so the ratio
cached/naive is what matters (target <= 0.6; floor ~ (L+1)/2L plus the head's share). CPU time of the
process is reported beside wall time: on a shared machine wall time moves with the neighbours' load,
CPU time of a single-threaded run much less.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_rope_probe.py --model smollm2-135m --num-texts 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--num-texts", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--factor", type=float, default=2.0)
    args = ap.parse_args()

    import torch

    from coloc_ray.models import load_model
    from coloc_ray.probes.evaltexts import default_eval_texts
    from coloc_ray.probes.rope_influence import rope_layer_losses

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    texts = default_eval_texts(args.num_texts)
    layers = list(range(lm.info.num_layers))
    kw = dict(factors=[args.factor], layers=layers, max_len=args.max_len, batch_size=args.num_texts)
    cached, cw, cc = _timed(lambda: rope_layer_losses(lm.model, lm.tokenizer, texts, naive=False, **kw))
    print(f"cached: wall {cw:.1f} s, cpu {cc:.1f} s", flush=True)  # partial result if the run is cut short
    naive, nw, nc = _timed(lambda: rope_layer_losses(lm.model, lm.tokenizer, texts, naive=True, **kw))
    print(f"naive: wall {nw:.1f} s, cpu {nc:.1f} s", flush=True)
    f = args.factor
    rel = max(abs(cached["losses"][f][l] - naive["losses"][f][l]) / abs(naive["losses"][f][l]) for l in layers)
    L = len(layers)
    print(json.dumps({
        "model": args.model, "num_layers": L, "num_texts": len(texts), "max_len": args.max_len,
        "tokens_scored": cached["num_tokens"], "threads": args.threads,
        "cached_wall_s": round(cw, 2), "naive_wall_s": round(nw, 2), "cached_cpu_s": round(cc, 2),
        "naive_cpu_s": round(nc, 2), "ratio_wall": round(cw / nw, 3), "ratio_cpu": round(cc / nc, 3),
        "floor_(L+1)/2L": round((L + 1) / (2 * L), 3), "max_rel_loss_diff": rel,
    }, indent=2))


if __name__ == "__main__":
    main()

"""Time HumanEval+ generation on the HF path: batched vs unbatched greedy decoding, tokens/s.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_humaneval_gen.py --model smollm2-135m --problems 8 \
        --max-new-tokens 128 --batch-size 8

Both arms generate the same prompts (EvalPlus's chat prompt) with the same budget in the same process; the
ratio batched/unbatched is the number to read (absolute tokens/s depend on the shared CPU's load).
"""

from __future__ import annotations

import argparse
import json
import time


def _count_new_tokens(tok, outs: list[str]) -> int:
    return sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)


def main() -> None:
    import torch

    from coloc_ray.evaluation import data
    from coloc_ray.evaluation import humanevalplus as hp
    from coloc_ray.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    tasks = data.load_humanevalplus()[: args.problems]
    style = hp.resolve_style(lm.tokenizer)
    prompts = [hp.build_prompt(t["prompt"], lm.tokenizer, style) for t in tasks]
    stop = hp.stop_strings(style)
    hp.generate_hf(lm.model, lm.tokenizer, prompts[:1], 4, 1, stop)  # warm-up
    rows = {}
    for name, bs in (("unbatched", 1), ("batched", args.batch_size)):
        t = time.perf_counter()
        outs = hp.generate_hf(lm.model, lm.tokenizer, prompts, args.max_new_tokens, bs, stop)
        dt = time.perf_counter() - t
        n = _count_new_tokens(lm.tokenizer, outs)
        rows[name] = {"batch_size": bs, "seconds": round(dt, 2), "new_tokens": n, "tokens_per_s": round(n / dt, 1),
                      "outputs_equal_to_unbatched": None}
        rows[name]["_outs"] = outs
    rows["batched"]["outputs_equal_to_unbatched"] = rows["batched"]["_outs"] == rows["unbatched"]["_outs"]
    for r in rows.values():
        r.pop("_outs")
    speedup = rows["batched"]["tokens_per_s"] / rows["unbatched"]["tokens_per_s"]
    rows["speedup_batched_over_unbatched"] = round(speedup, 2)
    print(json.dumps({"model": args.model, "problems": args.problems, "style": style,
                      "max_new_tokens": args.max_new_tokens, **rows}, indent=2))


if __name__ == "__main__":
    main()

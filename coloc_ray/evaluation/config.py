"""``EvalConfig``: everything one ``coloc eval`` run needs, validated once (pydantic, extra=forbid)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from coloc_ray.errors import UserError
from coloc_ray.evaluation.registry import benchmark_names

#: The shipped benchmarks in registry order (the default); the registry is the source (registry.py).
ALL_BENCHMARKS = benchmark_names()


class EvalConfig(BaseModel):
    """One evaluation of a model (optionally with an LS-LoRA + GARFA adapter) on METHOD 8's benchmarks."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="--model: alias, hub id, HF directory or .gguf file")
    model_fingerprint: Optional[str] = Field(
        None, description="the weights fingerprint the study resolved (models.ref); the stage refuses other weights")
    adapter: Optional[str] = Field(None, description="A `coloc finetune` output dir (LoRA and/or GARFA)")
    benchmarks: list[str] = Field(default_factory=benchmark_names,
                                  description="Registry names, run in this order")
    limit: Optional[int] = Field(None, ge=1, description="About N items per benchmark (not per stratum), "
                                 "spread across subjects/domains/types/languages; null = full sets")
    source: Literal["offline", "hub"] = Field("offline", description="offline = the project's task YAMLs over "
                                              "the shared data; hub = lm-eval's standard tasks (needs a hub)")
    backend: Literal["hf", "vllm", "auto"] = Field(
        "hf", description="Generation (MATH, MGSM, HumanEval+): HF generate, or one vLLM engine (GARFA plugin + "
        "LoRA) built once for the evaluation; auto = vllm where vLLM is importable or its venv is found "
        "($COLOC_VLLM_PYTHON or .venv-vllm), else hf (the resolved value is what eval_config.json records)")
    loglik_backend: Literal["hf", "vllm"] = Field(
        "vllm", description="With backend vllm: where log-likelihood benchmarks (MMLU, GPQA, ARC) run; the "
        "engine used 1.9-2.4x fewer CPU-seconds than HF for the same choices (docs/BENCHMARKS.md)")
    quant: Literal["match", "none", "4bit"] = Field(
        "match", description="Base precision: match = as the adapter was trained (its metrics.json quant), "
        "none = full precision, 4bit = NF4; a mismatch is recorded in eval_config.json run.precision")
    max_model_len: int = Field(4096, ge=64, description="vLLM engine context (prompt + generation), tokens")
    engine_args: dict = Field(default_factory=dict, description="Extra vllm.LLM arguments (e.g. "
                              "gpu_memory_utilization, tensor_parallel_size); override coloc's own")
    batch_size: int = Field(8, ge=1, description="lm-eval and generation batch size")
    seed: int = Field(0, description="Seeds --limit sampling, few-shot sampling and the bootstrap")
    max_new_tokens: int = Field(512, ge=1, description="Generation budget (MATH, MGSM, HumanEval+)")
    max_length: Optional[int] = Field(None, ge=16, description="lm-eval context length (null = the model's)")
    prompt_style: Literal["auto", "chat", "completion"] = Field(
        "auto", description="HumanEval+ prompt: auto = chat if the tokenizer has a chat template (EvalPlus's rule)")
    n_bootstrap: int = Field(10000, ge=100, description="Bootstrap resamples for the 95 % CIs")
    evalplus_workers: int = Field(2, ge=1, description="Processes of EvalPlus's sandboxed executor")
    guard: bool = Field(True, description="With an adapter: fail if LoRA or GARFA leave the logits unchanged")
    tracking: bool = Field(True, description="Log to MLflow")
    tracking_uri: Optional[str] = Field(None, description="MLflow URI (null = $MLFLOW_TRACKING_URI or ./mlruns.db)")
    experiment: str = Field("coloc-ray", description="MLflow experiment")
    parent_run_id: Optional[str] = Field(None, description="Nest the run under this MLflow run (default: the "
                                         "adapter's mlflow_run_id when it recorded one)")

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _known(cls, v):
        from coloc_ray.evaluation.registry import get_benchmarks

        return [b.name for b in get_benchmarks(v)]  # UserError listing the valid names

    @field_validator("backend")
    @classmethod
    def _vllm_present(cls, v):
        if v == "auto":
            return "vllm" if vllm_available() else "hf"
        if v == "vllm":
            import importlib.util

            if importlib.util.find_spec("coloc_ray.evaluation.vllm_backend") is None:
                raise UserError("--backend vllm: coloc_ray.evaluation.vllm_backend is not in this install; "
                                "use --backend hf")
        return v


def vllm_available() -> bool:
    """vLLM can serve this evaluation: importable here, or its venv found (``scripts/setup.sh vllm``)."""
    import importlib.util

    if importlib.util.find_spec("coloc_ray.evaluation.vllm_backend") is None:
        return False
    from coloc_ray.evaluation.vllm_backend import vllm_python

    return importlib.util.find_spec("vllm") is not None or vllm_python() is not None

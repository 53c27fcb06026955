"""One vLLM engine per evaluation, kept alive in its own process and serving every benchmark.

``coloc eval --backend vllm`` builds the engine once (base model + the GARFA plugin through ``hf_overrides`` +
the PEFT adapter through ``enable_lora``) and sends it, over the child's stdin/stdout, token ids to generate
from (MATH, MGSM, HumanEval+), (context, continuation) pairs to score (log-likelihood benchmarks, when they
run on the engine) and the guard's probe. Token ids, not strings, cross the boundary: the caller tokenizes
with the same HF tokenizer and rules as the HF path, so both paths see the same inputs token for token.

The child is ``<python> -m coloc_ray.evaluation.engine``, with the python that can import vLLM: this one (the
GPU image) or the vllm venv (``vllm_backend.vllm_python``). Its first line on stdin is the engine spec, then
one JSON request per line; each answer is one JSON line on the child's original stdout (vLLM's own logging is
moved to stderr, which goes to a log file whose tail is shown if the child dies).
"""

from __future__ import annotations

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


class Engine:
    """Client of one engine process. ``start()`` returns at once; ``ready()`` waits for the load.

    Args:
        spec: ``{"model_dir", "adapter_dir", "dtype", "max_model_len", "seed", "quantization", "engine_args"}``
            (see :func:`engine_args`); ``adapter_dir`` may be None (the base model).
    """

    def __init__(self, spec: dict):
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.info: dict | None = None
        self._log = None
        self.cpu_s = 0.0  # CPU seconds the engine's process tree spent serving requests (cost accounting)

    def start(self) -> "Engine":
        from coloc_ray.evaluation.vllm_backend import vllm_python

        py = Path(sys.executable) if importlib.util.find_spec("vllm") is not None else vllm_python()
        if py is None:
            raise UserError("--backend vllm: vllm is not importable here and no vllm venv was found "
                            f"(looked for $COLOC_VLLM_PYTHON and {REPO / '.venv-vllm/bin/python'}); "
                            "run `scripts/setup.sh vllm` or use --backend hf")
        self._log = tempfile.NamedTemporaryFile(prefix="coloc-engine-", suffix=".log", delete=False)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM-CPU's default would take far more
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(py), "-m", "coloc_ray.evaluation.engine"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, text=True)
        self._send(self.spec)
        return self

    def ready(self) -> dict:
        """Wait for the engine; returns its info (engine args, versions, load seconds). UserError/RuntimeError."""
        if self.info is None:
            self.info = self._recv()
        return self.info

    def call(self, op: str, **req) -> dict:
        self.ready()
        self._send({"op": op, **req})
        msg = self._recv()
        self.cpu_s += msg.get("cpu_s") or 0.0
        return msg

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self._send({"op": "close"})
                self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait()
        finally:
            self.proc = None
            if self._log is not None:
                self._log.close()
                os.unlink(self._log.name)
                self._log = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, obj: dict) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:  # the child died: its log says why
            self.proc.wait()
            text = Path(self._log.name).read_text(errors="replace")
            if "coloc: error: " in text:
                raise UserError(text.rsplit("coloc: error: ", 1)[1].strip().splitlines()[0])
            raise RuntimeError(f"vLLM engine process failed (rc {self.proc.returncode}):\n{text[-4000:]}")
        msg = json.loads(line)
        if "error" in msg:
            if msg.get("user"):
                raise UserError(msg["error"])
            raise RuntimeError(f"{msg['error']}\n--- engine log (tail) ---\n"
                               f"{Path(self._log.name).read_text(errors='replace')[-6000:]}")
        return msg


def check_garfa_file(model_dir: str, adapter_dir: str | None) -> dict | None:
    """GARFA's scalers as read from the adapter, checked against the model's depth, KV heads and head size.

    Runs before the engine starts, so a mismatch is one clear line instead of an engine-process traceback.
    Returns ``{"layers", "alpha"}`` (None without GARFA files).
    """
    if not adapter_dir or not (Path(adapter_dir) / "garfa.json").is_file():
        return None
    from coloc_ray.garfa import read_garfa
    from coloc_ray.models.shape import model_shape

    meta, rho = read_garfa(Path(adapter_dir))
    shape = model_shape(model_dir)
    want = {"num_layers": shape.num_layers, "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim}
    for key, val in want.items():
        if int(meta[key]) != int(val):
            raise UserError(f"--adapter {adapter_dir}: garfa.json has {key}={meta[key]} but the model "
                            f"{model_dir} has {key}={val}; evaluate the model the adapter was trained on")
    layers = [int(x) for x in meta["layers"]]
    if any(not 0 <= x < want["num_layers"] for x in layers) or tuple(rho.shape) != (len(layers), want["num_kv_heads"]):
        raise UserError(f"--adapter {adapter_dir}: garfa layers {layers} / rho {tuple(rho.shape)} do not fit a "
                        f"model of {want['num_layers']} layers and {want['num_kv_heads']} KV heads")
    return {"layers": layers, "alpha": meta.get("alpha")}


ENGINE_MIN_DIFF = 1e-3  # max |delta log p| on the probe below this: the engine ignores the LoRA adapter


def check_engine_adapter(engine: Engine, tokenizer, hf_model=None) -> dict:
    """Before scoring: the engine's output with the adapter must differ from the base's.

    On the guard's probe text the engine's per-token log-probabilities with and without the LoRA request
    must differ (vLLM has had silent no-op LoRA bugs). With the HF model (LoRA + GARFA applied, the trained
    model as the HF path runs it) the engine must also be nearer to it than to the HF base (adapter off,
    rho = 0): that covers GARFA, which the engine cannot switch off. UserError otherwise.
    """
    from coloc_ray.evaluation.guard import PROBE_TEXT

    ids = tokenizer(PROBE_TEXT)["input_ids"]
    res = engine.call("probe", ids=ids)
    out = {"engine_lora_max_abs_logprob_diff": None, "engine_vs_hf_adapted": None, "engine_vs_hf_base": None}
    if "without_lora" in res:
        d = max(abs(a - b) for a, b in zip(res["with"], res["without_lora"]))
        out["engine_lora_max_abs_logprob_diff"] = d
        if d < ENGINE_MIN_DIFF:
            raise UserError(f"--backend vllm: the engine's output with the LoRA adapter equals the base's (max "
                            f"|diff log p| = {d:.2e} on the probe): vLLM did not apply it; use --backend hf")
    if hf_model is not None:
        adapted, base = _hf_logprobs(hf_model, ids)
        out["engine_vs_hf_adapted"] = max(abs(a - b) for a, b in zip(res["with"], adapted))
        out["engine_vs_hf_base"] = max(abs(a - b) for a, b in zip(res["with"], base))
        if out["engine_vs_hf_base"] > 0 and out["engine_vs_hf_adapted"] >= out["engine_vs_hf_base"]:
            raise UserError(f"--backend vllm: the engine is no nearer to the adapted model (max |diff log p| "
                            f"{out['engine_vs_hf_adapted']:.2e}) than to the base ({out['engine_vs_hf_base']:.2e}): "
                            "the adapter is not applied in vLLM; use --backend hf")
    return out


def _hf_logprobs(model, ids: list[int]) -> tuple[list[float], list[float]]:
    """Per-token log p of ``ids`` under the HF model as loaded, and with its LoRA and GARFA switched off."""
    import contextlib

    import torch

    from coloc_ray.evaluation.guard import _garfa_off, has_garfa, has_lora

    def lp():
        x = torch.tensor([ids], device=next(model.parameters()).device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits.float()[0, :-1]
        return logits.log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0].tolist()

    adapted = lp()
    with contextlib.ExitStack() as stack:
        if has_lora(model):
            stack.enter_context(model.disable_adapter())
        if has_garfa(model):
            stack.enter_context(_garfa_off(model))
        base = lp()
    return adapted, base


# ---- the engine process (runs where vLLM imports) -------------------------------------------------------


def engine_args(spec: dict) -> dict:
    """``vllm.LLM(**kwargs)`` for a spec: GARFA and LoRA as in ``vllm_backend.engine_kwargs``, plus precision."""
    from coloc_ray.evaluation.vllm_backend import engine_kwargs

    kw = engine_kwargs(spec)
    if spec.get("quantization"):
        kw["quantization"] = spec["quantization"]
    kw.update(spec.get("engine_args") or {})
    return kw


def _build(spec: dict):
    from vllm import LLM

    kw = engine_args(spec)
    t = time.perf_counter()
    llm = LLM(**kw)
    return llm, kw, time.perf_counter() - t


def _lora(spec: dict, want: bool):
    if not (want and spec.get("adapter_dir") and (Path(spec["adapter_dir"]) / "adapter_config.json").is_file()):
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest("adapter", 1, spec["adapter_dir"])


def _generate(llm, spec: dict, req: dict) -> dict:
    """Greedy continuations of token-id prompts; token ids back (the caller decodes as its HF path does)."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=int(req["max_tokens"]), stop=req.get("stop") or None)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]]
    outs = llm.generate(prompts, params, lora_request=_lora(spec, req.get("lora", True)), use_tqdm=False)
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outs]}


def _prompt_logprobs(llm, spec: dict, seqs: list[list[int]], lora: bool) -> list[list[tuple[float, bool]]]:
    """Per sequence, per position 1.. : (log p of the actual token, whether it was the argmax)."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False)
    prompts, request = [TokensPrompt(prompt_token_ids=s) for s in seqs], _lora(spec, lora)
    if request is not None and not _cuda():
        # vLLM-CPU 0.32 fails prompt_logprobs for several LoRA sequences in one batch (worker: "einsum():
        # subscript b has size 3 ... does not broadcast with previously seen size 401"); one at a time works.
        outs = [o for p in prompts for o in llm.generate([p], params, lora_request=request, use_tqdm=False)]
    else:
        outs = llm.generate(prompts, params, lora_request=request, use_tqdm=False)
    res = []
    for seq, o in zip(seqs, outs):
        row = []
        for tok, d in zip(seq[1:], o.prompt_logprobs[1:]):
            lp = d[tok]
            row.append((float(lp.logprob), lp.rank == 1))
        res.append(row)
    return res


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _loglikelihood(llm, spec: dict, req: dict) -> dict:
    """(sum log p(continuation | context), greedy) per [context ids, continuation ids] pair."""
    pairs = req["pairs"]
    rows = _prompt_logprobs(llm, spec, [c + x for c, x in pairs], req.get("lora", True))
    out = []
    for (ctx, cont), row in zip(pairs, rows):
        tail = row[len(ctx) - 1:]
        out.append([sum(lp for lp, _ in tail), all(g for _, g in tail)])
    return {"results": out}


def _probe(llm, spec: dict, req: dict) -> dict:
    """Log p of each probe token, with and without the LoRA adapter (the adapter-applies check)."""
    res = {"with": [lp for lp, _ in _prompt_logprobs(llm, spec, [req["ids"]], True)[0]]}
    if _lora(spec, True) is not None:
        res["without_lora"] = [lp for lp, _ in _prompt_logprobs(llm, spec, [req["ids"]], False)[0]]
    return res


OPS = {"generate": _generate, "loglikelihood": _loglikelihood, "probe": _probe}


def _versions() -> dict:
    import torch
    import transformers
    import vllm

    return {"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}


def serve() -> int:
    """The child's loop: spec line, engine, then requests until ``close`` or end of input."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM (and its worker processes) print to fd 1: keep that off the protocol stream
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    spec = json.loads(sys.stdin.readline())
    try:
        llm, kw, load_s = _build(spec)
    except UserError as e:
        send({"error": str(e), "user": True})
        return 2
    send({"engine_args": {k: v for k, v in kw.items() if k != "model"}, "load_s": round(load_s, 2),
          "versions": _versions()})
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        if op == "close":
            break
        t, cpu = time.perf_counter(), _tree_cpu_s()
        try:
            res = OPS[op](llm, spec, req)
        except Exception as e:  # noqa: BLE001 - reported to the caller, which raises it there
            send({"error": f"engine {op}: {type(e).__name__}: {e}"})
            continue
        send({**res, "wall_s": time.perf_counter() - t, "cpu_s": _tree_cpu_s() - cpu})
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
    return 0


def _tree_cpu_s() -> float:
    from coloc_ray.evaluation.vllm_backend import _tree_cpu_s

    return _tree_cpu_s()


if __name__ == "__main__":  # vLLM spawns its engine process: the guard keeps it from re-running this
    sys.exit(serve())

#!/usr/bin/env bash
# The GPU suite, one command for a lent H100/H200 (< 10 min; torch + transformers + PEFT, nothing else needed):
#   bench/gpu_suite.sh [--out FILE]     LoRA+GARFA vs plain PEFT LoRA step tokens/s on a random Llama-3.1-8B,
#                                      GARFA's overhead, peak memory, the RoPE probe on the GPU -> JSON
#   bench/gpu_suite.sh --dry [--out F]  the same code on CPU at tiny shapes (tests/bench runs it: it cannot rot)
# What is not installed there (bitsandbytes, vLLM) is recorded as skipped, with the reason, in the JSON.
# Python: $PYTHON, else this checkout's .venv, else python3. Exit 1 if a section failed (its error is in the JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The whole suite is bounded: a hung kernel must not eat the lent machine's time.
exec timeout "${GPU_SUITE_TIMEOUT:-540}" "$PY" bench/gpu_suite.py "$@"

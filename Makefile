# The two commands of the README. Both do all set-up themselves on a fresh machine.
.PHONY: setup demo test test-fast

setup:
	bash scripts/setup.sh vllm

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/coloc run studies/demo_smollm2.yaml

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -m pytest tests -q --durations=25

test-fast: 
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -m pytest tests -q -m "not slow"

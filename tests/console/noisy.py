"""The fake study stages of tests/ablation, made as noisy as the real libraries are inside a trial.

Each fine-tune and evaluation prints what the real stack prints: a tqdm progress bar (with ``disable=False``,
as lm-eval passes it), bitsandbytes' harmless "gemm_4bit_forward" warning, ``git``'s "fatal: not a git
repository" from a subprocess (lm-eval asks git for a hash), a logged traceback, and one warning a user must
act on. Module-level functions: Tune pickles them by value to its workers.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import warnings

from coloc_ray.ablation.stages import Stages
from tests.ablation import fakes

ACTIONABLE = "noisy-fake: the cache dir is nearly full, free some space"
HARMLESS_BNB = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
                "Please make sure you already `pip install kernels`")


def make_noise(what: str) -> None:
    from tqdm import tqdm

    for _ in tqdm(range(20), desc=f"{what} items", disable=False, mininterval=0, file=sys.stderr):
        pass
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(HARMLESS_BNB)
    with tempfile.TemporaryDirectory() as d:  # not a git checkout: git complains on fd 2, as under lm-eval
        subprocess.run(["sh", "-c", "git rev-parse HEAD || echo 'fatal: not a git repository' >&2"], cwd=d,
                       stdout=subprocess.DEVNULL)
    try:
        raise ValueError(f"{what}: an exception a library catches and logs")
    except ValueError:
        logging.getLogger("some.library").info("handled", exc_info=True)
    print(f"{what}: plain chatter on stdout", flush=True)
    warnings.warn(ACTIONABLE, UserWarning, stacklevel=1)


def finetune(cfg, out):
    make_noise("finetune")
    return fakes.finetune(cfg, out)


def evaluate(cfg, out, tracker):
    make_noise("evaluate")
    return fakes.evaluate(cfg, out, tracker)


def stages() -> Stages:
    import dataclasses

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(fakes)
    return dataclasses.replace(fakes.stages(), finetune=finetune, evaluate=evaluate)


if __name__ == "__main__":  # ``python -m tests.console.noisy <coloc args>``: coloc on these stages
    from coloc_ray.cli import main

    sys.exit(main(sys.argv[1:], stages=stages()))

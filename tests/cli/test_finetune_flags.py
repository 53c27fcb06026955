"""``coloc finetune``'s flags are FinetuneConfig's fields (``cli/model_flags.py``), and every old flag still works."""

from __future__ import annotations

import argparse

from coloc_ray.cli import build_parser
from coloc_ray.cli.finetune import build_config
from coloc_ray.finetune.config import DataConfig, FinetuneConfig

# The flags `coloc finetune` had when they were mapped by hand, with the key and a value for each.
OLD_FLAGS = {
    "--model": ("model", "tiny-gqa"), "--steps": ("max_steps", "7"), "--num-workers": ("num_workers", "2"),
    "--cpus-per-worker": ("cpus_per_worker", "0.5"), "--quant": ("quant", "none"), "--strategy": ("strategy", "fsdp"),
    "--seed": ("seed", "3"), "--max-len": ("max_len", "64"), "--batch-size": ("batch_size", "2"),
    "--grad-accum": ("grad_accum", "3"), "--lr": ("lr", "0.001"), "--checkpoint-every": ("checkpoint_every", "5"),
    "--eval-every": ("eval_every", "6"), "--max-failures": ("max_failures", "0"),
    "--tracking-uri": ("tracking_uri", "sqlite:///x.db"), "--experiment": ("experiment", "e"),
    "--parent-run-id": ("parent_run_id", "p"), "--run-name": ("run_name", "r"),
}


def _parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["finetune"]


def _cfg(*flags: str) -> FinetuneConfig:
    return build_config(build_parser().parse_args(["finetune", *flags, "--out", "o"]))


def test_every_finetune_config_field_is_a_flag():
    options = {s for a in _parser()._actions for s in a.option_strings}
    fields = (set(FinetuneConfig.model_fields) - {"data"}) | set(DataConfig.model_fields)
    missing = sorted(f for f in fields if "--" + f.replace("_", "-") not in options)
    assert not missing, f"FinetuneConfig fields without a `coloc finetune` flag: {missing}"
    helps = {a.dest: a.help for a in _parser()._actions}
    assert helps["garfa_weight_decay"].startswith(FinetuneConfig.model_fields["garfa_weight_decay"].description[:40])


def test_old_flags_reach_the_same_keys():
    flags = [x for flag, (_, v) in OLD_FLAGS.items() for x in (flag, v)]
    cfg = _cfg(*flags, "--lora-layers", "0, 1", "--garfa-layers", "", "--use-gpu", "--no-tracking",
               "--max-records", "9")
    want = FinetuneConfig(**{k: v for k, v in OLD_FLAGS.values()}, lora_layers=[0, 1], garfa_layers=[],
                          use_gpu=True, tracking=False, data={"max_records": 9})
    assert cfg == want


def test_absent_flags_keep_the_model_defaults_and_yaml_values(tmp_path):
    assert _cfg("--model", "tiny-gqa", "--lora-layers", "1", "--garfa-layers", "2") == FinetuneConfig(
        model="tiny-gqa", lora_layers=[1], garfa_layers=[2])
    y = tmp_path / "ft.yaml"
    y.write_text("model: tiny-gqa\nlora_layers: [0]\ngarfa_layers: [1]\ndata: {source: offline, max_records: 4}\n"
                 "garfa_weight_decay: 0.0\n")
    cfg = _cfg("--config", str(y), "--datasets", "a,b", "--heldout-fraction", "0.1")
    assert (cfg.data.max_records, cfg.data.datasets, cfg.garfa_weight_decay, cfg.heldout_fraction) == (
        4, ["a", "b"], 0.0, 0.1)

"""``coloc finetune``: user mistakes exit 2 with one line, before any work (nothing written)."""

from __future__ import annotations

import pytest

from coloc_ray.cli import main


@pytest.mark.parametrize("extra, message", [
    (["--lora-layers", "0,99", "--garfa-layers", ""], "lora_layers=[0, 99]: layer(s) [99] out of range"),
    (["--lora-layers", "a,b", "--garfa-layers", "1"], "--lora-layers 'a,b': expected comma-separated"),
    (["--lora-layers", "", "--garfa-layers", ""], "both empty"),
    (["--lora-layers", "1,1", "--garfa-layers", "2"], "duplicate layer(s) [1]"),
    (["--lora-layers", "1", "--garfa-layers", "2", "--strategy", "zero3", "--num-workers", "2", "--quant", "4bit"],
     "ZeRO-3 cannot shard bitsandbytes 4-bit"),
    (["--lora-layers", "1", "--garfa-layers", "2", "--steps", "0"], "max_steps"),
    (["--garfa-layers", "2"], "--lora-layers is required"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = main(["finetune", "--model", "tiny-gqa", "--out", str(out), "--no-tracking", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("coloc: error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def test_yaml_errors_name_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "ft.yaml"
    bad.write_text("finetune:\n  model: tiny-gqa\n  lora_layers: [0]\n  garfa_layers: []\n  lora_rank: 8\n")
    assert main(["finetune", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "lora_rank" in err
    assert main(["finetune", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_flags_override_yaml(tmp_path):
    import argparse

    from coloc_ray.cli.finetune import build_config, register

    cfg_file = tmp_path / "ft.yaml"
    cfg_file.write_text("model: tiny-gqa\nlora_layers: [0]\ngarfa_layers: [1]\nmax_steps: 50\nlr: 1.0e-3\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--config", str(cfg_file), "--steps", "7", "--lora-layers", "",
                              "--max-records", "9", "--out", "x"])
    cfg = build_config(args)
    assert (cfg.max_steps, cfg.lr, cfg.lora_layers, cfg.garfa_layers) == (7, 1e-3, [], [1])
    assert cfg.data.max_records == 9


def test_real_console_script_exit_code():
    from tests.conftest import run_cli

    r = run_cli("finetune", "--model", "tiny-gqa", "--lora-layers", "9", "--garfa-layers", "",
                "--out", "/nonexistent/x")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("coloc: error: lora_layers=[9]")

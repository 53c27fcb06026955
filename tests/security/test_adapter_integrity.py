"""An incomplete or damaged adapter directory is refused with one line, never scored as a different arm.

Before: without garfa.json an adapter was scored as LoRA-only, without adapter_config.json as GARFA-only (exit 0).
"""

from __future__ import annotations

import json
import os

import pytest

from coloc_ray.errors import UserError
from coloc_ray.finetune.adapter import load_adapted
from coloc_ray.models import load_model
from tests.conftest import run_cli
from tests.evaluation.conftest import make_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A whole `coloc finetune` output dir: LoRA on [1, 2], GARFA on [0, 3], and its config.json."""
    d = make_adapter(tmp_path_factory.mktemp("adapter") / "a", lora="random", garfa="random")
    (d / "config.json").write_text(json.dumps({"model": "tiny-gqa", "lora_layers": [1, 2], "garfa_layers": [0, 3]}))
    return d


@pytest.fixture()
def copy(adapter_dir, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(adapter_dir, dst)
    return dst


def _load(path):
    return load_adapted(load_model("tiny-gqa").model, path)


def test_whole_adapter_loads_both_parts(adapter_dir):
    from coloc_ray.evaluation.guard import has_garfa, has_lora

    m = _load(adapter_dir)
    assert has_lora(m) and has_garfa(m)


@pytest.mark.parametrize("drop, part", [(["garfa.json"], "GARFA"), (["garfa.json", "garfa.safetensors"], "GARFA"),
                                        (["garfa.safetensors"], "GARFA"), (["adapter_config.json"], "LoRA"),
                                        (["adapter_model.safetensors"], "LoRA")])
def test_a_part_named_in_config_but_missing_is_refused(copy, drop, part):
    for f in drop:
        (copy / f).unlink()
    with pytest.raises(UserError, match=f"incomplete: its config.json names {part} layers"):
        _load(copy)


def test_without_config_a_half_part_is_still_refused(copy):
    (copy / "config.json").unlink()
    (copy / "garfa.json").unlink()
    with pytest.raises(UserError, match="garfa.safetensors without garfa.json"):
        _load(copy)


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_damaged_lora_weights_are_one_line(copy, damage):
    f = copy / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        _load(copy)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, content", [("model_info.json", b'{"model_type": "llama", "num_la'),
                                           ("model_info.json", b"[1, 2]"),
                                           ("model_info.json", b"\xff\xfe\x00garbage"),
                                           ("adapter_config.json", b"{not json"),
                                           ("config.json", b"\x80\x81")])
def test_corrupt_json_files_are_one_line(copy, name, content):
    (copy / name).write_bytes(content)
    with pytest.raises(UserError, match=name.replace(".", r"\.")) as e:
        _load(copy)
    assert "\n" not in str(e.value)


def test_mixed_up_directory_is_refused(copy):
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "garfa_layers": [0, 1]}))
    with pytest.raises(UserError, match="mixes two runs"):
        _load(copy)


def test_cli_eval_refuses_incomplete_adapter_before_work(copy, tmp_path):
    (copy / "garfa.json").unlink()
    out = tmp_path / "eval_out"
    r = run_cli("eval", "--model", "tiny-gqa", "--adapter", str(copy), "--benchmarks", "arc_challenge", "--limit", "2",
                "--no-tracking", "--out", str(out), timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("coloc: error:")]
    assert len(err) == 1 and "incomplete" in err[0] and "Traceback" not in r.stderr
    assert not out.exists()

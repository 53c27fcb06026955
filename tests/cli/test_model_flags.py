"""Flags derived from a pydantic model (``coloc_ray.cli.model_flags``), and ``coloc eval`` built on them."""

from __future__ import annotations

import argparse
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, ConfigDict, Field

from coloc_ray.cli import build_parser
from coloc_ray.cli.evaluate import NOT_FLAGS, eval_config
from coloc_ray.cli.model_flags import add_model_flags, build_model
from coloc_ray.errors import UserError
from coloc_ray.evaluation.config import EvalConfig


def _eval_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["eval"]


def _eval_cfg(*flags: str) -> EvalConfig:
    return eval_config(build_parser().parse_args(["eval", "--model", "tiny-gqa", *flags, "--out", "o"]))


def test_every_eval_config_field_is_a_flag():
    options = {s for a in _eval_parser()._actions for s in a.option_strings}
    fields = set(EvalConfig.model_fields) - set(NOT_FLAGS)
    assert fields == set(EvalConfig.model_fields)  # nothing excluded today
    missing = [f for f in fields if "--" + f.replace("_", "-") not in options]
    assert not missing, f"EvalConfig fields without a `coloc eval` flag: {missing}"
    # the help of each flag is the field's description (argparse escapes nothing else)
    helps = {a.dest: a.help for a in _eval_parser()._actions}
    assert helps["max_model_len"].startswith(EvalConfig.model_fields["max_model_len"].description)


def test_new_flags_reach_the_config():
    cfg = _eval_cfg("--loglik-backend", "hf", "--quant", "none", "--max-model-len", "2048")
    assert (cfg.loglik_backend, cfg.quant, cfg.max_model_len) == ("hf", "none", 2048)


def test_absent_flags_keep_the_model_defaults():
    cfg = _eval_cfg()
    assert cfg.model_dump() == EvalConfig(model="tiny-gqa").model_dump()


def test_existing_flags_keep_their_behaviour():
    cfg = _eval_cfg("--adapter", "ad", "--benchmarks", "gpqa, humanevalplus", "--limit", "3", "--source", "offline",
                    "--backend", "hf", "--batch-size", "4", "--max-new-tokens", "4", "--prompt-style", "chat",
                    "--seed", "7", "--no-guard", "--no-tracking", "--tracking-uri", "sqlite:///x.db",
                    "--parent-run-id", "abc")
    assert cfg.adapter == "ad" and cfg.benchmarks == ["gpqa", "humanevalplus"] and cfg.limit == 3
    assert (cfg.batch_size, cfg.max_new_tokens, cfg.prompt_style, cfg.seed) == (4, 4, "chat", 7)
    assert cfg.guard is False and cfg.tracking is False
    assert (cfg.tracking_uri, cfg.parent_run_id) == ("sqlite:///x.db", "abc")
    assert _eval_cfg("--guard").guard is True
    assert _eval_cfg("--engine-args", '{"gpu_memory_utilization": 0.5}').engine_args == {
        "gpu_memory_utilization": 0.5}


@pytest.mark.parametrize("flags, needle", [
    (["--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1 (got 0)"),
    (["--max-model-len", "32"], "--max-model-len: "),
    (["--engine-args", "{bad"], "--engine-args '{bad': not valid JSON"),
    (["--engine-args", "[1]"], "expected a JSON object"),
    (["--benchmarks", "mmlu,nope"], "unknown benchmark(s) 'nope'"),
])
def test_bad_values_are_one_line_naming_the_flag(flags, needle):
    with pytest.raises(UserError) as e:
        _eval_cfg(*flags)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_argparse_refuses_a_value_outside_the_literal(capsys):
    with pytest.raises(SystemExit):
        _eval_cfg("--quant", "8bit")
    assert "invalid choice: '8bit'" in capsys.readouterr().err


class _Toy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="required")
    layers: list[int] = Field(default_factory=lambda: [1, 2], description="layer ids")
    rate: Optional[float] = Field(None, description="a rate of 5 %")
    mode: Literal["a", "b"] = Field("a", description="the mode")
    on: bool = Field(False, description="switch")
    meta: dict = Field(default_factory=dict, description="extra")
    secret: object = Field(None, description="not a flag")


def _toy(*argv: str) -> _Toy:
    p = argparse.ArgumentParser()
    add_model_flags(p, _Toy, exclude=["secret"])
    p.format_help()  # the '%' in a description must not break --help
    return build_model(_Toy, p.parse_args(list(argv)), exclude=["secret"])


def test_generic_types_round_trip():
    t = _toy("--name", "x", "--layers", "3,4,5", "--rate", "0.5", "--mode", "b", "--on", "--meta", '{"k": [1]}')
    assert t == _Toy(name="x", layers=[3, 4, 5], rate=0.5, mode="b", on=True, meta={"k": [1]})
    assert _toy("--name", "x", "--layers", "") == _Toy(name="x", layers=[])
    assert _toy("--name", "x", "--no-on") == _Toy(name="x")
    with pytest.raises(UserError, match=r"--layers '1,x': expected comma-separated int"):
        _toy("--name", "x", "--layers", "1,x")
    with pytest.raises(SystemExit):
        _toy()  # --name is required: the field has no default


def test_a_type_without_a_flag_form_must_be_excluded():
    with pytest.raises(TypeError, match="'secret'.*exclusion list"):
        add_model_flags(argparse.ArgumentParser(), _Toy)

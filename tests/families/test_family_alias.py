"""A family alias: a model type whose HF modules are an existing family's (a renamed fork) is one
``register_family_alias`` line, and then loads, probes, gets LS-LoRA, GARFA and an FSDP wrap class like that
family; unregistered, it is one line listing the supported families."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from coloc_ray.errors import UserError
from coloc_ray.models import families, load_model
from coloc_ray.models.tiny import TINY_SHAPES


class ToyLlamaConfig(LlamaConfig):
    model_type = "toyllama"


class ToyLlamaForCausalLM(LlamaForCausalLM):
    config_class = ToyLlamaConfig


AutoConfig.register("toyllama", ToyLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(ToyLlamaConfig, ToyLlamaForCausalLM, exist_ok=True)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """tiny-gqa's weights saved as a ``toyllama`` model."""
    ref = load_model("tiny-gqa", device="cpu")
    skip = {"model_type", "architectures", "transformers_version", "_name_or_path"}
    cfg = ToyLlamaConfig(**{k: v for k, v in ref.model.config.to_dict().items() if k not in skip})
    toy = ToyLlamaForCausalLM(cfg)
    toy.load_state_dict(ref.model.state_dict())
    out = tmp_path_factory.mktemp("toyllama")
    toy.save_pretrained(out)
    ref.tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture()
def registered():
    fam = families.register_family_alias("toyllama", "llama")
    yield fam
    families.FAMILIES.pop("toyllama", None)


def test_unregistered_is_one_line_listing_the_families(toy_dir):
    with pytest.raises(UserError) as e:
        load_model(toy_dir, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "'toyllama'" in msg and all(f in msg for f in ("llama", "qwen3", "phi3"))


def test_alias_entry_is_the_family_entry(registered):
    assert registered.like == "llama" and registered.model_type == "toyllama"
    assert {k: v for k, v in vars(registered).items() if k not in ("model_type", "like")} == {
        k: v for k, v in vars(families.FAMILIES["llama"]).items() if k not in ("model_type", "like")}
    with pytest.raises(UserError, match="unknown family 'lama'; supported families: gemma2"):
        families.register_family_alias("x", "lama")


def test_alias_runs_like_its_family(registered, toy_dir):
    from coloc_ray.finetune.lora import lora_config
    from coloc_ray.finetune.strategies import fsdp_wrap_classes
    from coloc_ray.garfa import apply_garfa
    from coloc_ray.probes.pairs import load_pairs
    from coloc_ray.probes.sensitivity import probe_pairs

    toy, ref = load_model(toy_dir, device="cpu"), load_model("tiny-gqa", device="cpu")
    assert toy.info.model_type == "toyllama" and toy.info.num_layers == ref.info.num_layers
    assert fsdp_wrap_classes(toy.model) == {type(ref.model.model.layers[0])}
    assert lora_config([1], model_type="toyllama") == lora_config([1], model_type="llama")
    pairs = load_pairs()[:2]
    assert probe_pairs(toy.model, toy.tokenizer, pairs) == probe_pairs(ref.model, ref.tokenizer, pairs)
    ids = torch.randint(0, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    outs = []
    for lm in (toy, ref):
        sc = apply_garfa(lm.model, [1, 2])
        with torch.no_grad():
            sc.rho.copy_(torch.linspace(-0.8, 0.8, sc.rho.numel()).view_as(sc.rho))
            outs.append(lm.model(ids).logits)
    plain = load_model("tiny-gqa", device="cpu").model(ids).logits
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[1], plain, atol=1e-4)  # GARFA changed the model (the comparison is not vacuous)


@pytest.mark.parametrize("alias", list(TINY_SHAPES))
def test_fsdp_wraps_each_familys_decoder_layer_from_no_split_modules(alias):
    from peft import get_peft_model

    from coloc_ray.finetune.lora import lora_config
    from coloc_ray.finetune.strategies import fsdp_wrap_classes

    lm = load_model(alias, device="cpu")
    assert fsdp_wrap_classes(lm.model) == {type(lm.model.model.layers[0])}
    peft = get_peft_model(lm.model, lora_config([0], dropout=0.0, model_type=lm.info.model_type))  # FSDP's input
    assert fsdp_wrap_classes(peft) == {type(lm.model.model.layers[0])}


def test_model_without_no_split_modules_is_one_line_naming_the_fix():
    from coloc_ray.finetune.strategies import fsdp_wrap_classes

    model = load_model("tiny-gqa", device="cpu").model
    model._no_split_modules = None
    with pytest.raises(UserError) as e:
        fsdp_wrap_classes(model)
    msg = str(e.value)
    assert "\n" not in msg and "'llama'" in msg and "_no_split_modules" in msg and "strategy ddp or zero3" in msg

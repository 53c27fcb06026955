"""LS-LoRA + GARFA fine-tuning on Ray Train (METHOD 4-6).

``config`` (FinetuneConfig) -> ``lora`` (PEFT placement + GARFA) -> ``data`` (chat records, assistant-only
labels) -> ``loop`` (the plain training loop; ``state`` its checkpoints) -> ``ray_worker`` (the only Ray
Train module) -> ``api.run_finetune`` -> ``adapter`` (save / ``load_adapted``). ``bare.run_bare`` runs the
same loop without Ray. Imports are lazy: this package pulls in neither torch nor Ray.

>>> from coloc_ray.finetune import FinetuneConfig, run_finetune
>>> run_finetune(FinetuneConfig(model="tiny-gqa", lora_layers=[0, 2], garfa_layers=[1], max_steps=10), "out/")
"""


def __getattr__(name):
    if name in ("FinetuneConfig", "DataConfig"):
        from coloc_ray.finetune import config

        return getattr(config, name)
    if name == "run_finetune":
        from coloc_ray.finetune.api import run_finetune

        return run_finetune
    if name == "load_adapted":
        from coloc_ray.finetune.adapter import load_adapted

        return load_adapted
    raise AttributeError(name)


__all__ = ["DataConfig", "FinetuneConfig", "load_adapted", "run_finetune"]

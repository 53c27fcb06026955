"""``FinetuneConfig``: every knob of one LS-LoRA + GARFA run, validated once (METHOD 4-6).

Defaults are METHOD's (r 16, alpha 32, dropout 0.05, lr 2e-4, GARFA lr 5x, wd 0.01, 3 % warm-up, batch 4 x
accumulation 4, 3,000 steps, max_len 1,024, 2 % held out). Checks that need the model's depth L live in
:meth:`FinetuneConfig.check_layers`, called once the model is known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coloc_ray.errors import UserError


class DataConfig(BaseModel):
    """Which training records to use (METHOD 6)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["offline", "hub"] = Field(
        "offline", description="offline: the stand-ins under the shared data dir; hub: the METHOD 6 hub datasets")
    datasets: Optional[list[str]] = Field(
        None, description="dataset names from coloc_ray.finetune.data.DATASETS; default: all of the chosen source")
    max_records: Optional[int] = Field(
        None, ge=1, description="cap on records per dataset (after a seeded shuffle); None = all")


class FinetuneConfig(BaseModel):
    """One fine-tuning run: LoRA on layer set X, GARFA on layer set Y, trained on Ray Train."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(..., description="--model: alias (smollm2-135m, tiny-gqa), HF dir, .gguf or hub id")
    model_fingerprint: Optional[str] = Field(
        None, description="the weights fingerprint the study resolved (models.ref); the stage refuses other weights")
    lora_layers: list[int] = Field(..., description="layer set X for LoRA (0-based); empty = no LoRA")
    garfa_layers: list[int] = Field(..., description="layer set Y for GARFA (0-based); empty = no GARFA")
    lora_r: int = Field(16, ge=1, description="LoRA rank r")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    lr: float = Field(2e-4, gt=0, description="peak learning rate of the LoRA group (eta)")
    garfa_lr_ratio: float = Field(5.0, gt=0, description="GARFA learning rate = ratio x lr")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay of the LoRA group")
    garfa_weight_decay: float = Field(
        0.01, ge=0, description="AdamW weight decay of rho (METHOD 6: 0.01, as the LoRA group). Decay pulls rho "
                                "toward 0, i.e. every alpha toward 1 (the model's own frequencies); 0 leaves "
                                "rho undecayed")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up as a fraction of max_steps")
    batch_size: int = Field(4, ge=1, description="sequences per micro-batch per worker")
    grad_accum: int = Field(4, ge=1, description="micro-batches per optimizer step")
    max_steps: int = Field(3000, ge=1, description="optimizer steps")
    max_len: int = Field(1024, ge=8, description="tokens per sequence (longer records are truncated)")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip")
    heldout_fraction: float = Field(0.02, gt=0, lt=1, description="seeded held-out split for the eval loss")
    eval_max_records: Optional[int] = Field(
        None, ge=1, description="cap on held-out records per evaluation (None = the whole split)")
    quant: Literal["auto", "4bit", "none"] = Field(
        "auto", description="base weights: 4bit NF4 (QLoRA), none, or auto (4bit iff CUDA)")
    strategy: Literal["ddp", "fsdp", "zero3"] = Field("ddp", description="data-parallel strategy on Ray Train")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks)")
    use_gpu: bool = Field(False, description="one GPU share per worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker (fractional inside a Tune trial)")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker when use_gpu")
    checkpoint_every: int = Field(100, ge=1, description="optimizer steps between checkpoints")
    eval_every: int = Field(200, ge=1, description="optimizer steps between held-out evaluations")
    log_every: int = Field(10, ge=1, description="optimizer steps between progress lines")
    max_failures: int = Field(1, ge=-1, description="worker-group restarts from the last checkpoint (-1: no limit)")
    seed: int = Field(0, description="seed of the data split, data order, LoRA init and dropout")
    data: DataConfig = Field(default_factory=DataConfig, description="training data")
    storage_path: Optional[str] = Field(
        None, description="where Ray Train keeps checkpoints (default <out>/.train; shared storage on a cluster)")
    tracking: bool = Field(True, description="log to MLflow")
    tracking_uri: Optional[str] = Field(None, description="MLflow tracking URI (default sqlite:///<cwd>/mlruns.db)")
    experiment: str = Field("coloc-ray", description="MLflow experiment name")
    run_name: Optional[str] = Field(None, description="MLflow / Ray Train run name (default: derived)")
    parent_run_id: Optional[str] = Field(None, description="MLflow run to nest this run under")

    def check_layers(self, num_layers: int) -> None:
        """Check both layer sets against the model depth ``num_layers`` (raises UserError naming the key)."""
        if not self.lora_layers and not self.garfa_layers:
            raise UserError("lora_layers and garfa_layers are both empty: nothing to train; give at least one "
                            "layer set (e.g. --lora-layers 0,1)")
        for key in ("lora_layers", "garfa_layers"):
            layers = getattr(self, key)
            if len(layers) > num_layers:
                raise UserError(f"{key} has {len(layers)} layers but model {self.model!r} has only "
                                f"{num_layers}; give at most {num_layers}")
            if len(set(layers)) != len(layers):
                dup = sorted({x for x in layers if layers.count(x) > 1})
                raise UserError(f"{key}={layers}: duplicate layer(s) {dup}; list each layer once")
            bad = [x for x in layers if not 0 <= x < num_layers]
            if bad:
                raise UserError(f"{key}={layers}: layer(s) {bad} out of range for model {self.model!r} "
                                f"(L={num_layers}); use indices 0..{num_layers - 1}")
        if self.strategy != "ddp" and self.num_workers < 2:
            raise UserError(f"strategy={self.strategy!r} with num_workers={self.num_workers}: sharding needs "
                            "at least 2 workers; use --num-workers 2 or strategy ddp")


def parse_config(data: dict, where: str = "config") -> FinetuneConfig:
    """Validate a dict into a FinetuneConfig; a pydantic error becomes one UserError line naming the key."""
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        got_s = "" if err["type"] == "missing" else f" (got {got!r})"
        raise UserError(f"{where}: {key}: {err['msg']}{got_s}; see `coloc finetune --help` "
                        f"or FinetuneConfig for valid values") from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping (the ``finetune:`` section if the file has one)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {str(p)!r}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {str(p)!r}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {str(p)!r}: expected a mapping of FinetuneConfig keys")
    return data.get("finetune", data)

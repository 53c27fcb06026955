"""Static checks of what cannot run here: KubeRay manifests, the launcher YAML, the Dockerfile, the GPU study files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

CLUSTER = REPO / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
JOBS = sorted((REPO / "jobs").glob("*.yaml"))
# L of each hub model (from its config.json: num_hidden_layers); the configs are not available offline.
# num_hidden_layers from each checkpoint's public config.json (no hub here)
NUM_LAYERS = {"meta-llama/Llama-3.1-8B-Instruct": 32, "Qwen/Qwen2.5-7B-Instruct": 28,
              "meta-llama/Llama-3.1-70B-Instruct": 80, "google/gemma-2-9b-it": 42, "google/gemma-3-1b-it": 26,
              "microsoft/Phi-4-mini-instruct": 32, "Qwen/Qwen3-8B": 36, "Qwen/Qwen3-30B-A3B": 48}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for p in KUBERAY:
        for d in _docs(p):
            if d["kind"] == "RayCluster":
                out.append((p.name, d["spec"]))
            elif d["kind"] == "RayJob":
                out.append((p.name, d["spec"]["rayClusterSpec"]))
    return out


def _pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")) + JOBS, ids=lambda p: p.name)
def test_every_yaml_parses(path):
    assert _docs(path)


def test_kuberay_resources_have_required_fields():
    import ray

    kinds = {d["kind"] for p in KUBERAY for d in _docs(p)}
    assert {"RayCluster", "RayJob", "Secret", "Service", "Deployment", "PersistentVolumeClaim"} <= kinds
    for p in KUBERAY:
        for d in _docs(p):
            if d["kind"] in ("RayCluster", "RayJob"):
                assert d["apiVersion"] == "ray.io/v1", p.name
    specs = _ray_cluster_specs()
    assert len(specs) == 2
    for name, spec in specs:
        assert spec["rayVersion"] == ray.__version__, name  # the image's Ray must match the clients'
        assert spec["headGroupSpec"]["rayStartParams"] is not None and spec["workerGroupSpecs"], name
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))]
        assert gpu_groups, f"{name}: no GPU worker group"
        for pod in _pod_specs(spec):
            assert pod["containers"][0]["image"].endswith("coloc-ray:0.1.0")


def test_services_are_cluster_ip_only():
    files = sorted(CLUSTER.rglob("*.yaml"))
    # Not vacuous: the manifests the loops below check are there (an empty glob would pass every loop).
    want = {"kuberay/raycluster.yaml", "kuberay/rayjob-llama31-8b.yaml", "kuberay/mlflow.yaml", "launcher/aws-gpu.yaml"}
    assert {p.relative_to(CLUSTER).as_posix() for p in files} >= want, files
    for p in files:
        text = yaml.safe_dump_all(_docs(p))
        assert "LoadBalancer" not in text and "NodePort" not in text, p.name
    specs = _ray_cluster_specs()
    assert sorted(n for n, _ in specs) == ["raycluster.yaml", "rayjob-llama31-8b.yaml"]
    for name, spec in specs:
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", name
    services = [(p.name, d) for p in KUBERAY for d in _docs(p) if d["kind"] == "Service"]
    assert [n for n, _ in services] == ["mlflow.yaml"]
    for name, d in services:
        assert d["spec"]["type"] == "ClusterIP", name


def test_token_auth_on_every_ray_container():
    for name, spec in _ray_cluster_specs():
        for pod in _pod_specs(spec):
            secret_mounts = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
            for c in pod["containers"]:
                env = {e["name"]: e.get("value") for e in c["env"]}
                assert env["RAY_AUTH_MODE"] == "token", (name, c["name"])
                token_dir = str(Path(env["RAY_AUTH_TOKEN_PATH"]).parent)
                mount = next(m for m in c["volumeMounts"] if m["mountPath"] == token_dir)
                assert secret_mounts[mount["name"]] == "coloc-ray-auth" and mount.get("readOnly") is True
    job = next(d for p in KUBERAY for d in _docs(p) if d["kind"] == "RayJob")
    sub_env = {e["name"]: e.get("value") for e in job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert sub_env["RAY_AUTH_MODE"] == "token" and sub_env["RAY_AUTH_TOKEN_PATH"]


def test_launcher_is_closed_to_the_world():
    cfg = yaml.safe_load((CLUSTER / "launcher" / "aws-gpu.yaml").read_text())
    assert cfg["provider"]["type"] == "aws" and "0.0.0.0/0" not in yaml.safe_dump(cfg)  # comments aside
    # Without SecurityGroupIds the launcher creates a group with SSH open to 0.0.0.0/0.
    for name, nt in cfg["available_node_types"].items():
        assert nt["node_config"]["SecurityGroupIds"], name
    assert any(nt["node_config"]["InstanceType"].startswith(("p4", "p5", "g5", "g6"))
               for nt in cfg["available_node_types"].values())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "-e RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]


def _pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([0-9][^\s\"',]*)", text)}


def test_dockerfile_pins_match_pyproject():
    import tomllib

    from packaging.specifiers import SpecifierSet

    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = proj["dependencies"] + [r for extra in ("gpu", "eval") for r in proj["optional-dependencies"][extra]]
    want = _pins("\n".join(reqs))
    got = _pins((REPO / "docker" / "Dockerfile").read_text())
    for name in ("transformers", "peft", "bitsandbytes", "vllm", "deepspeed", "ray", "mlflow", "lm-eval", "evalplus"):
        assert got.get(name) == want[name], (name, got.get(name), want.get(name))
    torch_range = next(r for r in proj["dependencies"] if r.startswith("torch"))
    assert got["torch"] in SpecifierSet(torch_range[len("torch"):])
    assert got["torch"] == "2.13.0"  # vllm 0.32.0's METADATA: Requires-Dist torch==2.13.0 (docker/README.md)
    assert ".[gpu,eval]" in (REPO / "docker" / "Dockerfile").read_text()


def _kuberay_worker_resources() -> dict:
    spec = next(s for n, s in _ray_cluster_specs() if n == "raycluster.yaml")
    lim = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    return {"CPU": float(lim["cpu"]), "GPU": float(lim["nvidia.com/gpu"])}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_studies_load_and_fit_the_kuberay_cluster(path):
    from coloc_ray.ablation.study_config import load_study, validate_study

    cfg = load_study(path)
    L = NUM_LAYERS[cfg.model]
    assert validate_study(cfg, cluster_resources=_kuberay_worker_resources(), num_layers=L) == []
    assert cfg.output_dir.startswith("/mnt/results/")  # the shared volume every pod mounts
    r = cfg.resources
    assert cfg.max_concurrent_trials * r.workers_per_trial * r.gpus_per_worker <= _kuberay_worker_resources()["GPU"]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_studies_make_valid_finetune_configs(path):
    from coloc_ray.ablation.sections import finetune_config_dict
    from coloc_ray.ablation.study_config import load_study
    from coloc_ray.finetune.config import FinetuneConfig

    cfg = load_study(path)
    L = NUM_LAYERS[cfg.model]
    spec = {"trial_id": "A-c123-t0", "lora_layers": list(range(L - 10, L)), "garfa_layers": list(range(L - 10, L)),
            "train_seed": 0}
    ft = FinetuneConfig.model_validate(finetune_config_dict(cfg.resolved(), spec, parent_run_id="x"))
    ft.check_layers(L)
    # QLoRA everywhere but the MoE: PEFT's expert LoRA (target_parameters) does not wrap bitsandbytes 4-bit
    # experts, so that study shards a bf16 base with FSDP instead (docs/MODELS.md).
    assert ft.use_gpu and ft.quant == ("none" if "a3b" in path.name else "4bit")
    if "70b" in path.name or "a3b" in path.name:  # the two studies too big for one GPU: FSDP over 4
        from coloc_ray.finetune import strategies as st

        assert ft.strategy == "fsdp" and ft.num_workers == 4
        assert ft.batch_size * ft.grad_accum * ft.num_workers == 16  # the paper's effective batch
        from coloc_ray.models import load_model

        assert st.fsdp_kwargs(load_model("tiny-gqa", device="cpu").model)["use_orig_params"] is True
    else:
        assert ft.strategy == "ddp" and ft.num_workers == 1 and ft.batch_size * ft.grad_accum == 16

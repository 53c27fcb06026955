"""models.ref: the resolved model reference and its weights fingerprint, against hashlib on the file bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from coloc_ray.errors import UserError
from coloc_ray.models import ref as ref_mod
from coloc_ray.models.ref import ModelRef, resolve_model_ref, weights_fingerprint


def reference_fingerprint(files: dict[str, bytes]) -> str:
    """The fingerprint rule written out independently: sha256 of the sorted [[name, sha256(bytes)]] JSON."""
    pairs = sorted([name, hashlib.sha256(data).hexdigest()] for name, data in files.items())
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def save_tiny(out: Path, seed: int = 0) -> Path:
    from coloc_ray.models.tiny import build_tiny

    model, tok = build_tiny("tiny-gqa", seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private coloc cache (the hash cache lives there)."""
    monkeypatch.setenv("COLOC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Two tiny checkpoints of the same shape and config, different weights (seed 0 and seed 1)."""
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny(root / "a", seed=0), save_tiny(root / "b", seed=1)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_fingerprint_is_sha256_of_the_weight_files(cache, tiny_dirs, tmp_path):
    d = _copy(tiny_dirs[0], tmp_path / "m")
    want = reference_fingerprint({p.name: p.read_bytes() for p in d.glob("*.safetensors")})
    assert weights_fingerprint(d) == want
    ref = resolve_model_ref(str(d))
    assert (ref.kind, ref.path, ref.fingerprint) == ("dir", str(d.resolve()), want)
    assert (ref.shape.num_layers, ref.shape.num_kv_heads) == (4, 2)
    # a Trainer's training_args.bin beside the safetensors is not a weight the load reads
    (d / "training_args.bin").write_bytes(b"not weights")
    assert weights_fingerprint(d) == want


def test_bin_only_dir_and_gguf_file(cache, tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\x00\x01weights")
    assert weights_fingerprint(d) == reference_fingerprint({"pytorch_model.bin": b"\x00\x01weights"})
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + bytes(range(256)))
    assert weights_fingerprint(g) == reference_fingerprint({"m.gguf": g.read_bytes()})


def test_a_flipped_weight_byte_changes_the_fingerprint(cache, tiny_dirs, tmp_path):
    d = _copy(tiny_dirs[0], tmp_path / "flipped")
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    assert weights_fingerprint(d) != weights_fingerprint(tiny_dirs[0])
    assert weights_fingerprint(d) == reference_fingerprint({"model.safetensors": bytes(data)})


def test_hashes_are_cached_and_invalidated_by_size_or_mtime(cache, tiny_dirs, tmp_path, monkeypatch):
    d = _copy(tiny_dirs[0], tmp_path / "m")
    hashed = []
    real = ref_mod.sha256_file
    monkeypatch.setattr(ref_mod, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    first = weights_fingerprint(d)
    assert hashed == ["model.safetensors"]
    assert weights_fingerprint(d) == first and hashed == ["model.safetensors"]  # from the cache: not read
    entry = json.loads((cache / "fingerprints.json").read_text())[str((d / "model.safetensors").resolve())]
    assert entry["sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

    st = (d / "model.safetensors").stat()
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert weights_fingerprint(d) == first and len(hashed) == 2  # new mtime: hashed again (same bytes)
    with open(d / "model.safetensors", "ab") as f:
        f.write(b"\x00")
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new size
    assert weights_fingerprint(d) == reference_fingerprint({"model.safetensors": (d / "model.safetensors").read_bytes()})
    assert len(hashed) == 3


def test_a_corrupt_hash_cache_is_ignored_and_rewritten(cache, tiny_dirs):
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "fingerprints.json").write_bytes(b'{"trunc')
    want = reference_fingerprint({"model.safetensors": (tiny_dirs[0] / "model.safetensors").read_bytes()})
    assert weights_fingerprint(tiny_dirs[0]) == want
    assert isinstance(json.loads((cache / "fingerprints.json").read_text()), dict)


def test_a_directory_without_weights_is_one_line(cache, tiny_dirs, tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_dirs[0] / "config.json", d / "config.json")
    with pytest.raises(UserError, match="has no weight files") as e:
        resolve_model_ref(str(d))
    assert "\n" not in str(e.value)


def _fake_hf_cache(root: Path, repo: str, commit: str, files: dict[str, tuple[bytes, str]]) -> Path:
    """models--org--name/{blobs,snapshots/<commit>,refs/main} with the snapshot files symlinked to blobs."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, (data, blob) in files.items():
        (base / "blobs" / blob).write_bytes(data)
        (snap / name).symlink_to(Path("..", "..", "blobs", blob))
    return snap


def test_hf_cache_blob_names_are_the_file_hashes(cache, tiny_dirs, tmp_path, monkeypatch):
    """An LFS blob's name is its sha256 (huggingface_hub): used as is, the file is not read."""
    from huggingface_hub import constants

    weights = (tiny_dirs[0] / "model.safetensors").read_bytes()
    cfg = (tiny_dirs[0] / "config.json").read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    commit = "c" * 40
    snap = _fake_hf_cache(tmp_path / "hub", "org/tiny", commit, {
        "model.safetensors": (weights, sha), "config.json": (cfg, hashlib.sha1(cfg).hexdigest())})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hashed = []
    monkeypatch.setattr(ref_mod, "sha256_file", lambda p: hashed.append(p) or pytest.fail("blob was read"))
    # the same fingerprint as a plain directory holding the same bytes, without reading them
    assert weights_fingerprint(snap) == reference_fingerprint({"model.safetensors": weights})
    ref = resolve_model_ref("org/tiny", local_only=True)
    assert (ref.kind, ref.revision, ref.path) == ("hub", commit, str(snap))
    assert ref.fingerprint == reference_fingerprint({"model.safetensors": weights})
    assert ref.shape.num_layers == 4 and hashed == []
    # the rule trusts the blob name: a blob named by another sha256 gives another fingerprint
    other = _fake_hf_cache(tmp_path / "hub2", "org/tiny", commit, {"model.safetensors": (weights, "e" * 64)})
    assert weights_fingerprint(other) != ref.fingerprint


def test_hub_id_not_cached_while_offline_is_one_line(cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("coloc_ray.models.shape.model_shape", lambda spec, **kw: None)
    with pytest.raises(UserError, match=r"not in the local HF cache.*hf download org/absent") as e:
        resolve_model_ref("org/absent", local_only=True)
    assert "\n" not in str(e.value)


class FakeHfApi:
    """The documented shape of ``HfApi().model_info(repo_id, files_metadata=True)``: ``.sha`` and ``.siblings``
    of ``RepoSibling(rfilename, size, blob_id, lfs=BlobLfsInfo(size, sha256, pointer_size))``."""

    repos: dict = {}
    calls: list = []

    def model_info(self, repo_id, files_metadata=False):
        from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

        FakeHfApi.calls.append((repo_id, files_metadata))
        if repo_id not in self.repos:
            raise OSError("404 repository not found")
        sha, files = self.repos[repo_id]
        sib = [RepoSibling(rfilename=n, size=len(b), blob_id="0" * 40, lfs=None if lfs is None else BlobLfsInfo(
            size=len(b), sha256=lfs, pointer_size=134)) for n, (b, lfs) in files.items()]
        return SimpleNamespace(sha=sha, siblings=sib)


def test_online_hub_id_from_metadata_without_download(cache, tiny_dirs, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from coloc_ray.models import shape as shape_mod

    weights = (tiny_dirs[0] / "model.safetensors").read_bytes()
    FakeHfApi.repos = {"org/online": ("f" * 40, {
        "model.safetensors": (weights, hashlib.sha256(weights).hexdigest()),
        "pytorch_model.bin": (b"older copy", hashlib.sha256(b"older copy").hexdigest()),
        "original/consolidated.pth": (b"x", hashlib.sha256(b"x").hexdigest()),
        "config.json": (b"{}", None)}),
        "org/nolfs": ("1" * 40, {"model.safetensors": (b"w", None)})}
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(ref_mod, "_hub_offline", lambda: False)
    monkeypatch.setattr(shape_mod, "model_shape", lambda spec, **kw: ref_mod.ModelShape(4, 4, 2, 16, 1e4))
    ref = resolve_model_ref("org/online")
    assert FakeHfApi.calls == [("org/online", True)]
    assert (ref.kind, ref.path, ref.revision) == ("hub", None, "f" * 40)
    # the same weights give the same fingerprint from hub metadata as from a local directory
    assert ref.fingerprint == weights_fingerprint(tiny_dirs[0])
    with pytest.raises(UserError, match="no sha256 for model.safetensors"):
        resolve_model_ref("org/nolfs")
    with pytest.raises(UserError, match=r"hub cannot describe it \(OSError\); download it first") as e:
        resolve_model_ref("org/missing")
    assert "\n" not in str(e.value)


def test_local_path_refuses_other_weights_on_this_node(cache, tiny_dirs, tmp_path):
    from coloc_ray.models import load_model

    d = _copy(tiny_dirs[0], tmp_path / "m")
    ref = resolve_model_ref(str(d))
    assert ref.local_path() == str(d.resolve())
    wrong = dataclasses.replace(ref, fingerprint="0" * 64)
    with pytest.raises(UserError, match=rf"on this node has weights {ref.fingerprint[:12]} but the study "
                                        r"resolved 000000000000") as e:
        wrong.local_path()
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="on this node has weights"):
        load_model(wrong, device="cpu")
    # another node's path that does not exist here: the spec is resolved again on this node
    moved = dataclasses.replace(ref, path=str(tmp_path / "elsewhere"))
    assert moved.local_path() == str(d.resolve())


def test_an_alias_resolves_per_node(cache):
    ref = resolve_model_ref("tiny-gqa")
    assert ref.kind == "alias" and Path(ref.path).is_dir()
    assert ref.fingerprint == reference_fingerprint(
        {p.name: p.read_bytes() for p in Path(ref.path).glob("*.safetensors")})
    away = dataclasses.replace(ref, path="/nonexistent/node-a/tiny-gqa")
    assert away.local_path() == ref.path


def test_load_model_carries_the_fingerprint(cache, tiny_dirs):
    from coloc_ray.models import load_model

    ref = resolve_model_ref(str(tiny_dirs[0]))
    by_ref = load_model(ref, device="cpu")
    by_spec = load_model(str(tiny_dirs[0]), device="cpu")
    assert by_ref.spec == by_spec.spec == str(tiny_dirs[0])
    assert by_ref.fingerprint == by_spec.fingerprint == by_ref.info.fingerprint == ref.fingerprint
    assert load_model(str(tiny_dirs[1]), device="cpu").fingerprint == weights_fingerprint(tiny_dirs[1])


def test_resolutions_are_counted(cache, tiny_dirs):
    from coloc_ray.models import load_model

    spec = str(tiny_dirs[1])
    before = ref_mod.RESOLUTIONS[spec]
    ref = resolve_model_ref(spec)
    load_model(ref, device="cpu")  # its path exists here with the same weights: no second resolution
    assert ref_mod.RESOLUTIONS[spec] == before + 1
    resolve_model_ref(spec)
    assert ref_mod.RESOLUTIONS[spec] == before + 2


def test_to_dict_round_trips_through_json(cache, tiny_dirs):
    ref = resolve_model_ref(str(tiny_dirs[0]))
    back = ModelRef.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back == ref
    assert str(ref) == ref.label == f"{tiny_dirs[0]}@{ref.fingerprint[:12]}"


def test_adapter_refuses_another_checkpoint_of_the_same_shape(cache, tiny_dirs, tmp_path):
    from coloc_ray.finetune.adapter import check_compatible, load_adapted, save_adapter
    from coloc_ray.models import load_model

    a, b = (load_model(str(d), device="cpu") for d in tiny_dirs)
    assert a.info.num_layers == b.info.num_layers and a.fingerprint != b.fingerprint
    out = save_adapter(a.model, None, a.info, tmp_path / "adapter")
    saved = json.loads((out / "model_info.json").read_text())
    assert saved["fingerprint"] == weights_fingerprint(tiny_dirs[0])
    assert check_compatible(a.model, out, a.fingerprint)["fingerprint"] == a.fingerprint
    with pytest.raises(UserError, match=rf"weights {a.fingerprint[:12]}.*has weights {b.fingerprint[:12]}") as e:
        check_compatible(b.model, out, b.fingerprint)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="same shape, another checkpoint"):
        load_adapted(b.model, out, fingerprint=b.fingerprint)
    # an adapter saved before fingerprints were recorded: accepted, with a warning
    del saved["fingerprint"]
    (out / "model_info.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="records no weights fingerprint"):
        check_compatible(b.model, out, b.fingerprint)


def test_eval_refuses_an_adapter_of_other_weights_before_any_engine_starts(cache, tiny_dirs, tmp_path, monkeypatch):
    """The vLLM path loads no HF model to hold the adapter against: run_eval checks the adapter's recorded weights
    against the model's before anything loads (an engine start here is a test failure)."""
    from coloc_ray.evaluation import api
    from coloc_ray.evaluation.config import EvalConfig
    from coloc_ray.finetune.adapter import save_adapter
    from coloc_ray.models import load_model

    a = load_model(str(tiny_dirs[0]), device="cpu")
    out = save_adapter(a.model, None, a.info, tmp_path / "adapter")

    def no_engine(*args, **kw):
        raise AssertionError("the engine started before the adapter was checked")

    monkeypatch.setattr(api, "_start_engine", no_engine)
    cfg = EvalConfig(model=str(tiny_dirs[1]), adapter=str(out), backend="vllm", benchmarks=["mmlu"], limit=2,
                     tracking=False)
    with pytest.raises(UserError, match=rf"trained on .*weights {a.fingerprint[:12]}\), but the model given .* has "
                                        rf"other weights \({weights_fingerprint(tiny_dirs[1])[:12]}\)"):
        api.run_eval(cfg, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_stages_refuse_weights_other_than_the_studys(cache, tiny_dirs, tmp_path):
    from coloc_ray.evaluation.api import run_eval
    from coloc_ray.evaluation.config import EvalConfig
    from coloc_ray.finetune.config import FinetuneConfig
    from coloc_ray.finetune.lora import build_trainable

    spec, theirs = str(tiny_dirs[0]), weights_fingerprint(tiny_dirs[1])
    cfg = FinetuneConfig(model=spec, lora_layers=[0], garfa_layers=[], quant="none", model_fingerprint=theirs)
    with pytest.raises(UserError, match=rf"has weights .* but the study resolved {theirs[:12]}"):
        build_trainable(cfg, device="cpu")  # what every Ray Train worker runs
    ok = build_trainable(cfg.model_copy(update={"model_fingerprint": weights_fingerprint(tiny_dirs[0])}),
                         device="cpu")
    assert ok.info.fingerprint == weights_fingerprint(tiny_dirs[0])
    ecfg = EvalConfig(model=spec, model_fingerprint=theirs, tracking=False, benchmarks=["arc_challenge"])
    with pytest.raises(UserError, match=rf"but the study resolved {theirs[:12]}"):
        run_eval(ecfg, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_probes_take_a_model_ref(cache, tiny_dirs):
    from coloc_ray.probes.api import run_sensitivity
    from coloc_ray.probes.distributed import sensitivity_task
    from coloc_ray.probes.pairs import load_pairs

    ref = resolve_model_ref(str(tiny_dirs[0]))
    pairs = load_pairs(None)[:2]
    got = run_sensitivity(ref, pairs=pairs, num_workers=0, top_k=2)
    assert (got["model"], got["model_fingerprint"], got["num_layers"]) == (ref.spec, ref.fingerprint, 4)
    by_spec = run_sensitivity(ref.spec, pairs=pairs, num_workers=0, top_k=2)
    assert by_spec["model_fingerprint"] == ref.fingerprint and by_spec["scores"] == got["scores"]
    wrong = dataclasses.replace(ref, fingerprint="0" * 64)
    with pytest.raises(UserError, match="on this node has weights"):  # the body of each Ray task
        sensitivity_task(wrong, [p.to_dict() for p in pairs], "mean", 10.0, 1)


@pytest.mark.ray
def test_ray_probe_tasks_receive_the_ref_and_check_their_weights(ray_local, tiny_dirs):
    from coloc_ray.probes.api import run_sensitivity
    from coloc_ray.probes.pairs import load_pairs

    ref = resolve_model_ref(str(tiny_dirs[0]))
    pairs = load_pairs(None)[:2]
    local = run_sensitivity(ref, pairs=pairs, num_workers=0, top_k=2)
    remote = run_sensitivity(ref, pairs=pairs, num_workers=1, top_k=2)
    assert (remote["model"], remote["model_fingerprint"]) == (ref.spec, ref.fingerprint)
    assert remote["scores"] == pytest.approx(local["scores"], rel=1e-6)
    with pytest.raises(Exception, match="on this node has weights"):  # raised inside the Ray task
        run_sensitivity(dataclasses.replace(ref, fingerprint="0" * 64), pairs=pairs, num_workers=1, top_k=2)

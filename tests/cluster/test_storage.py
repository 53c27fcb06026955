"""Study storage (``coloc_ray.storage``) on a local directory and on a real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import pytest

from coloc_ray.storage import Storage, is_uri


def _roundtrip(store: Storage, tmp_path) -> None:
    store.write_json("a/b.json", {"x": 1})
    assert store.read_json("a/b.json") == {"x": 1} and store.is_file("a/b.json") and store.exists("a")
    assert not store.exists("a/nope.json") and store.listdir("a") == ["b.json"] and store.listdir("none") == []
    src = tmp_path / "src"
    (src / "eval" / "items").mkdir(parents=True)
    (src / "eval" / "items" / "mmlu.jsonl").write_text("{}\n")
    (src / "adapter").mkdir()
    (src / "adapter" / "w.bin").write_bytes(b"\0" * 10)
    (src / "result.json").write_text('{"ok": true}')
    store.upload(src, "trials/t1", last=["result.json"], skip=["adapter"])
    assert store.read_json("trials/t1/result.json") == {"ok": True}
    assert store.is_file("trials/t1/eval/items/mmlu.jsonl") and not store.exists("trials/t1/adapter")
    got = store.download("trials/t1", tmp_path / "back", skip=["eval"])
    assert [p.name for p in got] == ["result.json"]
    store.delete("trials")
    assert not store.exists("trials/t1/result.json")


def test_local_storage(tmp_path):
    store = Storage(tmp_path / "study")
    assert store.is_local and store.uri("x") == str((tmp_path / "study" / "x").resolve())
    _roundtrip(store, tmp_path)


def test_upload_writes_the_marker_last(tmp_path, monkeypatch):
    """A failure part-way through an upload leaves no result.json: the trial counts as unfinished."""
    store = Storage(tmp_path / "study")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b.txt", "result.json"):
        (src / name).write_text(name)
    real, seen = Storage._put_file, []

    def flaky(self, local, rel):
        seen.append(local.name)
        if local.name == "b.txt":
            raise OSError("disk full")
        return real(self, local, rel)

    monkeypatch.setattr(Storage, "_put_file", flaky)
    with pytest.raises(OSError):
        store.upload(src, "t", last=["result.json"])
    assert seen == ["a.txt", "b.txt"] and not store.exists("t/result.json")


def test_uris_and_paths():
    assert is_uri("s3://b/x") and is_uri("gs://b") and not is_uri("/tmp/x") and not is_uri("file:///tmp/x")
    assert not is_uri("runs/x")


def test_s3_storage_and_json_helpers(s3_server, tmp_path, monkeypatch):
    """The same operations against an S3 API, and io.read_json / write_json on an s3:// URI (the fine-tune's
    live progress file goes there when the study storage is a bucket)."""
    from coloc_ray.io import read_json, write_json

    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    store = Storage(s3_server.uri("unit"))
    assert not store.is_local and store.uri("a") == s3_server.uri("unit", "a")
    _roundtrip(store, tmp_path)
    write_json(s3_server.uri("unit", "train", "run", "progress.json"), {"step": 3})
    assert read_json(s3_server.uri("unit", "train", "run", "progress.json")) == {"step": 3}
    assert "unit/train/run/progress.json" in s3_server.keys("unit/")
    import pickle

    assert pickle.loads(pickle.dumps(store)).root == store.root  # what Ray ships to a trial


def test_missing_offline_data_is_refused_before_any_work(ray_local, tmp_path, monkeypatch):
    """A study that reads the offline data (the default) with no data folder stops with the fix; a hub-only one
    does not need it (a submitted job's working dir is a temp copy without ../shared/data: COLOC_DATA says where)."""
    import yaml

    from coloc_ray.ablation.cluster_checks import check_cluster
    from coloc_ray.ablation.study_config import StudyConfig
    from coloc_ray.errors import UserError
    from tests.conftest import REPO

    d = yaml.safe_load((REPO / "studies" / "tiny_test.yaml").read_text())
    monkeypatch.setenv("COLOC_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="set COLOC_DATA"):
        check_cluster(StudyConfig.model_validate(d), Storage(tmp_path / "study"))
    d["evaluation"]["source"] = "hub"
    d["training"]["data"] = {"source": "hub"}
    d["probes"]["eval_data"] = str(REPO / "pyproject.toml")  # any given file: not the default texts
    assert check_cluster(StudyConfig.model_validate(d), Storage(tmp_path / "study")) is None

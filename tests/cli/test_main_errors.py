"""``coloc``'s last line of defence: a full disk / quota / read-only mount is one line and exit 2, not a traceback."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys

import pytest

import coloc_ray.cli as cli


def _parser_raising(exc):
    def build():
        p = argparse.ArgumentParser(prog="coloc")
        p.add_argument("-v", "--verbose", action="store_true")
        sub = p.add_subparsers(required=True)
        s = sub.add_parser("boom")
        s.set_defaults(func=lambda args: (_ for _ in ()).throw(exc))
        return p

    return build


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_storage_errors_are_one_line(monkeypatch, capsys, code):
    monkeypatch.setattr(cli, "build_parser", _parser_raising(OSError(code, os.strerror(code), "/out/x.json")))
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coloc: error: ") and "/out/x.json" in err[0]


def test_other_os_errors_still_raise(monkeypatch):
    """Only the user's storage conditions are turned into a line; a bug keeps its traceback."""
    monkeypatch.setattr(cli, "build_parser", _parser_raising(OSError(errno.EBADF, "bad fd")))
    with pytest.raises(OSError):
        cli.main(["boom"])


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root to mount a tiny tmpfs")
def test_a_really_full_disk(tmp_path):
    """The real thing: a command that writes 64 KiB into a 16 KiB tmpfs, in a fresh interpreter."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (full / "filler").write_bytes(b"\0" * 12 * 1024)
        code = ("import sys, coloc_ray.cli as c, argparse\n"
                "def build():\n"
                "    p = argparse.ArgumentParser(); p.add_argument('-v', '--verbose', action='store_true')\n"
                "    s = p.add_subparsers(required=True).add_parser('w')\n"
                f"    s.set_defaults(func=lambda a: open({str(full / 'out.bin')!r}, 'wb').write(b'x' * 65536))\n"
                "    return p\n"
                "c.build_parser = build\nsys.exit(c.main(['w']))\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "no space left on device" in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", str(full)])

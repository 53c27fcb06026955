"""Token files are private: created 0600 (never readable by others, not even briefly), loose ones tightened, and
``coloc submit`` warns about a token file others can read. The docs write tokens with umask 077 / chmod 600."""

from __future__ import annotations

import logging
import re
import stat

from coloc_ray.ablation import submit as sb
from tests.conftest import REPO


def test_new_token_file_is_0600_in_a_0700_dir(tmp_path):
    p = sb.ensure_private_token(tmp_path / "home" / ".ray" / "auth_token")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", p.read_text())
    before = p.read_text()
    assert sb.ensure_private_token(p).read_text() == before  # an existing token is kept


def test_loose_token_file_is_tightened_and_kept(tmp_path):
    p = tmp_path / "auth_token"
    p.write_text("tok")
    p.chmod(0o644)  # what Ray 2.60 writes for ~/.ray/auth_token
    sb.ensure_private_token(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == "tok"


def test_reading_a_loose_token_warns(tmp_path, caplog):
    p = tmp_path / "tok"
    p.write_text("abc\n")
    p.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        assert sb.read_token(str(p)) == "abc"
    assert "readable by other users (mode 640): chmod 600" in caplog.text
    caplog.clear()
    p.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        sb.read_token(str(p))
    assert "readable" not in caplog.text


def test_docs_write_tokens_private():
    text = (REPO / "cluster" / "README.md").read_text()
    writes = [ln for ln in text.splitlines() if "> ~/.coloc/ray_token" in ln]
    assert writes and all("umask 077" in ln for ln in writes)
    assert "chmod 600 ~/.coloc/ray_token" in text

"""DKEK share files in sc-hsm-tool's format: the ceremony reads what ``sc-hsm-tool
--create-dkek-share`` wrote (OpenSC 0.23, password ``s3cret-share-1``), so it derives the same key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim.ceremony import cards

DATA = Path(__file__).parent / "data"


@pytest.mark.ceremony  # 10 million MD5 rounds: 15 s of CPU, so in the ceremony step only
def test_a_share_file_sc_hsm_tool_wrote_opens_with_its_password() -> None:
    share = cards.read_share_file(DATA / "sc-hsm-tool-0.23-share.pbe", b"s3cret-share-1")
    assert len(share) == 32


def test_a_share_file_is_written_once_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "share.pbe"
    cards.write_share_file(path, bytes(range(32)), b"pw", rounds=1000)
    raw = path.read_bytes()
    assert len(raw) == 64 and raw.startswith(b"Salted__") and bytes(range(32)) not in raw
    assert cards.read_share_file(path, b"pw", rounds=1000) == bytes(range(32))
    with pytest.raises(cards.CardError, match="wrong password"):
        cards.read_share_file(path, b"pw2", rounds=1000)
    with pytest.raises(FileExistsError):
        cards.write_share_file(path, bytes(32), b"pw", rounds=1000)

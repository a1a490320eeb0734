"""The claim (daemon/inbox/claim.py): interrupted claims are finished or undone at start-up, and one check says
which dropped files may be claimed at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon import names
from daemon.inbox.claim import UnsafeFile, check_plain_file, plain_file_problem, recover_claims
from daemon.jobs.job import write_json_atomic


def test_claim_interrupted_before_its_plan_was_written_is_cleaned_up(tmp_path: Path) -> None:
    """kill -9 between mkdir and the plan's rename leaves only a half-written temp file."""
    staging = tmp_path / f"{names.CLAIM_PREFIX}20261127-000000-abcdef"
    staging.mkdir()
    (staging / ".claim.json.123.tmp").write_text('{"inbox_dir": "/x", "mo')
    assert recover_claims(tmp_path) == []
    assert not staging.exists()


def test_claim_interrupted_after_moving_one_file_puts_it_back(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    staging = tmp_path / "spool" / f"{names.CLAIM_PREFIX}20261127-000000-abcdef"
    staging.mkdir(parents=True)
    write_json_atomic(staging / names.CLAIM_PLAN, {"inbox_dir": str(inbox),
                                                   "moves": [["a b.wav", "audio.wav"], ["a b.mp4", "video.mp4"]]})
    (staging / "audio.wav").write_bytes(b"RIFF")
    (inbox / "a b.mp4").write_bytes(b"video")
    assert recover_claims(tmp_path / "spool") == []
    assert (inbox / "a b.wav").read_bytes() == b"RIFF" and (inbox / "a b.mp4").read_bytes() == b"video"
    assert not staging.exists()


def test_one_check_refuses_links_and_special_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.wav"
    plain.write_bytes(b"RIFF")
    assert plain_file_problem(plain.name, plain.lstat()) is None
    assert check_plain_file(plain).st_size == 4
    link = tmp_path / "link.wav"
    link.symlink_to(plain)
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    hard = tmp_path / "other" / "hard.wav"
    hard.parent.mkdir()
    os.link(plain, hard)
    for path, words in ((link, "symbolic link"), (fifo, "not a regular file"), (hard, "hard link")):
        problem = plain_file_problem(path.name, path.lstat())
        assert problem is not None and words in problem
        with pytest.raises(UnsafeFile, match=words):
            check_plain_file(path)

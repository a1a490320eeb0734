"""submit, retry, doctor and demo through the real `lipsyncd` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import media
from tests.daemon_harness import Daemon, failures, outputs, wait_for, write_config

LIPSYNCD = str(Path(sys.executable).parent / "lipsyncd")


def lipsyncd(config: Path | None, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    prefix = ["--config", str(config)] if config else []
    return subprocess.run([LIPSYNCD, *prefix, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    return media.tone(folder / "a.wav", seconds=1.0), media.color_clip(folder / "v.mp4", seconds=1.0)


def test_submit_copies_safely_and_the_daemon_renders_it(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path)
    with Daemon(config):
        done = lipsyncd(config, "submit", str(pair[0]), str(pair[1]), "--user", "李雷", "--name", "周报 第3期")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "inbox" / "李雷" / "周报 第3期.wav").name in done.stdout
        [out] = wait_for(lambda: outputs(tmp_path), 30, "the submitted job")
    assert out.name == "周报 第3期.mp4" and out.parent.name == "李雷"


def test_submit_refuses_bad_input(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path)
    assert lipsyncd(config, "submit", str(pair[1]), str(pair[1])).returncode == 2  # a video as the audio
    assert lipsyncd(config, "submit", str(pair[0]), str(tmp_path / "missing.mp4")).returncode == 2
    bad = lipsyncd(config, "submit", str(pair[0]), str(pair[1]), "--name", "../escape")
    assert bad.returncode == 2 and "path separator" in bad.stderr
    assert not any((tmp_path / "inbox").rglob("*.*"))


def test_retry_puts_a_failed_job_back(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path, pipeline={"command": {"argv": ["false", "{output}"]}})
    with Daemon(config) as daemon:
        shutil.copy(pair[1], tmp_path / "inbox" / "r.mp4")
        shutil.copy(pair[0], tmp_path / "inbox" / "r.wav")
        [failed] = wait_for(lambda: failures(tmp_path), 30, "the failure")
        assert "exited with status 1" in (failed / "error.txt").read_text()
        job_id = json.loads((failed / "job.json").read_text())["id"]
        daemon.stop()
    fixed = write_config(tmp_path)  # the command works now
    with Daemon(fixed):
        done = lipsyncd(fixed, "retry", job_id)
        assert done.returncode == 0, done.stderr
        assert not failed.exists()
        [out] = wait_for(lambda: outputs(tmp_path), 30, "the retried job")
    assert out.name == "r.mp4"
    assert lipsyncd(fixed, "retry", "no-such-job").returncode == 2


def test_doctor_passes_a_good_setup_and_names_what_is_wrong(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    good = lipsyncd(config, "doctor")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK    ffmpeg" in good.stdout and "OK    engine command (default)" in good.stdout
    shutil.rmtree(tmp_path / "outputs")
    bad = write_config(tmp_path / "b", pipeline={"engine": "wav2lip", "wav2lip": {"checkpoint": "/nope.pth"}})
    shutil.rmtree(tmp_path / "b" / "outputs")
    done = lipsyncd(bad, "doctor")
    assert done.returncode == 1
    assert "FAIL  paths.outputs" in done.stdout
    assert "FAIL  engine wav2lip (pipeline.engine)" in done.stdout and "/nope.pth" in done.stdout


def test_demo_runs_the_whole_daemon_with_the_command_engine(tmp_path: Path) -> None:
    done = lipsyncd(None, "demo", "--engine", "command", "--dir", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    last = Path(done.stdout.strip().splitlines()[-1])
    assert last.is_file() and last.suffix == ".mp4" and last.parent.name == "demo"


def test_demo_takes_a_real_face_through_the_daemon_with_the_builtin_engine(tmp_path: Path) -> None:
    """The README's first command: generated face + speech, the real daemon, the builtin engine."""
    done = lipsyncd(None, "demo", "--dir", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = Path(done.stdout.strip().splitlines()[-1])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["engine"] == "builtin" and record["device"] == "cpu"
    score = record["sync_score"]
    assert abs(score["offset_frames"]) <= 1 and score["correlation"] > 0.3, score
    speech = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                             str(tmp_path / "sample" / "hello.wav")], capture_output=True, text=True, check=True)
    result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                             str(out)], capture_output=True, text=True, check=True)
    assert abs(float(result.stdout) - float(speech.stdout)) <= 0.1, "the output lasts as long as the speech"

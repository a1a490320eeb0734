"""`lipsyncd render` and `lipsyncd sync-score` as a person runs them: exit codes, messages, progress."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests import media

ROOT = Path(__file__).resolve().parents[2]


def lipsyncd(*args: str, config: Path, stderr_tty: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "daemon.cli", "--config", str(config), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not stderr_tty:
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=follower, text=True, cwd=ROOT, env=env,
                              timeout=300)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    return subprocess.CompletedProcess(command, done.returncode, done.stdout, b"".join(chunks).decode("utf-8",
                                                                                                       "replace"))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "lipsyncd.yaml"
    path.write_text("pipeline:\n  engine: builtin\n  device: auto\n  builtin:\n    detect_every: 5\n")
    return path


@pytest.fixture
def two_seconds(tmp_path: Path, speech_wav: Path) -> Path:
    return media.convert(speech_wav, tmp_path / "speech-2s.m4a", "-t", "2.0", "-c:a", "aac")


def test_render_writes_the_result_with_a_progress_bar_and_stage_times(tmp_path: Path, config: Path,
                                                                        two_seconds: Path, face_mp4: Path) -> None:
    output = tmp_path / "out" / "result.mp4"
    done = lipsyncd("render", str(two_seconds), str(face_mp4), "-o", str(output), "--device", "cpu",
                    config=config, stderr_tty=True)
    assert done.returncode == 0, done.stderr
    assert output.is_file() and output.stat().st_size > 10_000
    assert [p.name for p in output.parent.iterdir()] == ["result.mp4"]  # no partial file left behind
    assert f"wrote {output}" in done.stdout and "with engine builtin on cpu" in done.stdout
    stages = next(line for line in done.stdout.splitlines() if line.startswith("stages:"))
    for stage in ("audio", "motion", "faces", "warp", "encode"):
        assert f"{stage} " in stages
    assert "100%|" in done.stderr  # tqdm's bar on the terminal

    scored = lipsyncd("sync-score", str(output), "--json", config=config)
    assert scored.returncode == 0, scored.stderr
    assert abs(json.loads(scored.stdout)["offset_frames"]) <= 1


def test_bad_input_exits_1_with_the_reason_and_no_traceback(tmp_path: Path, config: Path, speech_wav: Path) -> None:
    output = tmp_path / "out.mp4"
    done = lipsyncd("render", str(speech_wav), str(speech_wav), "-o", str(output), "-q", config=config)
    assert done.returncode == 1
    assert "lipsyncd render: the video 'speech.wav' has no picture" in done.stderr
    assert "Traceback" not in done.stderr and not output.exists()

    scored = lipsyncd("sync-score", str(media.color_clip(tmp_path / "mute.mp4")), config=config)
    assert scored.returncode == 1 and "has no sound track" in scored.stderr and "Traceback" not in scored.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.wav", "{video}", "-o", "{out}"], "the audio file 'missing.wav' does not exist"),
        (["{audio}", "{video}", "-o", "{tmp}/out.avi"], "must end in .mp4"),
        (["{audio}", "{video}", "-o", "{out}", "--device", "cuda:7"], "device cuda:7"),
        (["{audio}", "{video}", "-o", "{out}", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, config: Path, speech_wav: Path, face_mp4: Path, args: list[str],
                           message: str) -> None:
    values = {"audio": str(speech_wav), "video": str(face_mp4), "out": str(tmp_path / "out.mp4"),
              "tmp": str(tmp_path)}
    done = lipsyncd("render", *[arg.format(**values) for arg in args], config=config)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_progress_falls_back_to_plain_lines_off_a_terminal() -> None:
    from daemon.commands.render import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(stream=stream)
    for step in range(101):
        bar.update("render", step / 100)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "lipsyncd render: render 0%" and lines[-1] == "lipsyncd render: render 100%"
    assert len(lines) == 11

    quiet = io.StringIO()
    ProgressBar(enabled=False, stream=quiet).update("render", 0.5)
    assert quiet.getvalue() == ""


def test_render_module_imports_no_heavy_libraries() -> None:
    code = ("import sys, daemon.commands.render; heavy = {'torch', 'cv2', 'librosa', 'numpy'} & set(sys.modules); "
            "print(sorted(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_the_builtin_engine_defers_torch_to_a_thread_alongside_the_audio() -> None:
    """A cold render must not wait for torch and OpenCV before it can probe and decode: importing the engine's
    pipeline imports neither (its import thread does, while the audio is decoded)."""
    code = ("import sys, pipeline.engines.builtin.engine, pipeline.engines.builtin.lipsync; "
            "print(sorted({'torch', 'cv2', 'librosa', 'numba'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_an_engine_that_cannot_run_still_exits_2_when_found_by_the_render(tmp_path: Path, config: Path,
                                                                          speech_wav: Path, face_mp4: Path) -> None:
    """The builtin engine is checked only once its render fails (no check before a cold start's render): no
    ffmpeg on PATH is still the setup's problem (exit 2), not the input's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), "render", str(speech_wav),
                           str(face_mp4), "-o", str(tmp_path / "out.mp4"), "--device", "cpu", "-q"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "engine 'builtin' cannot run: ffmpeg is not installed" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out.mp4").exists()


def test_a_render_on_the_cpu_never_imports_torch(tmp_path: Path, speech_wav: Path, face_mp4: Path) -> None:
    """On the CPU the builtin engine needs no torch (numpy motion, OpenCV warp): its import would cost a
    cold render about 1.5 s of CPU. The render runs whole and the process never loads torch."""
    sound = media.convert(speech_wav, tmp_path / "one-second.wav", "-t", "1")
    code = ("import sys; from pathlib import Path; from tests.lipsync_support import render; "
            f"result = render(Path({str(sound)!r}), Path({str(face_mp4)!r}), Path({str(tmp_path / 'out.mp4')!r})); "
            "print(result.details['frames_changed'] > 0, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_auto_without_gpu_device_nodes_is_the_cpu_without_importing_torch(tmp_path: Path) -> None:
    """`auto` (the default device) must not cost a cold render torch's import (about 2 s) before the engine
    starts where no GPU can be: no /dev/nvidia* or /dev/kfd node."""
    from pipeline import devices

    assert not devices._gpu_nodes(tmp_path)
    for node in ("nvidia0", "kfd"):
        (tmp_path / node).touch()
        assert devices._gpu_nodes(tmp_path)
        (tmp_path / node).unlink()
    (tmp_path / "nvidiactl").touch()  # the control node alone is no GPU
    assert not devices._gpu_nodes(tmp_path)
    if devices._gpu_nodes():
        pytest.skip("this machine has GPU device nodes: auto asks torch, as it should")
    code = "import sys; from pipeline import devices; print(devices.resolve('auto'), 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.split() == ["cpu", "False"]

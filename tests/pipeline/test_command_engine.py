"""The command engine with real commands: ffmpeg muxing, a script that fails, one that hangs with a child."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.engines import EngineError, EngineUnavailable, JobSpec, get_engine
from pipeline.engines import command as command_mod
from pipeline.media.probe import probe

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
MUX_ARGV = [FFMPEG, "-v", "error", "-y", "-i", "{video}", "-i", "{audio}", "-map", "0:v", "-map", "1:a",
            "-c:v", "copy", "-c:a", "aac", "-shortest", "{output}"]


def _engine(argv: list[str], **options):
    return get_engine("command", {"command": {"argv": argv, "timeout_seconds": 60, "env": {}, "cwd": None,
                                              **options}})


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


def _spec(tmp_path: Path, video: Path, audio: Path, **kw) -> JobSpec:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return JobSpec(audio=audio, video=video, output=tmp_path / "out.mp4", workdir=work, **kw)


def _gone(pid: int) -> bool:
    """True when *pid* no longer runs (absent, or a zombie waiting for a reaper that is not us)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_ffmpeg_muxes_audio_onto_video(tmp_path: Path, small_mp4: Path, short_wav: Path) -> None:
    progress: list[tuple[str, float]] = []
    result = _engine(MUX_ARGV).render(_spec(tmp_path, small_mp4, short_wav), lambda s, f: progress.append((s, f)))
    info = probe(tmp_path / "out.mp4")
    assert info.has_video and info.has_audio
    assert info.duration == pytest.approx(1.5, abs=0.3)  # -shortest: the 1.5 s tone
    assert result.fps == pytest.approx(25.0)
    assert result.frames > 0 and result.timings["command"] > 0
    assert progress[0] == ("command", 0.0) and progress[-1] == ("command", 1.0)


def test_env_cwd_and_placeholders_reach_the_command(tmp_path: Path, small_mp4: Path, short_wav: Path) -> None:
    cwd = tmp_path / "tooldir"
    cwd.mkdir()
    script = _script(tmp_path, "tool.sh", f"""
set -e
echo "$PWD|$LIPSYNC_TEST_VAR|$1|$2" > "$3/seen.txt"
exec {FFMPEG} -v error -y -i "$4" -i "$5" -map 0:v -map 1:a -c:v copy -c:a aac -shortest "$6"
""")
    argv = [script, "{device}", '{"json": {"kept": true}}', "{workdir}", "{video}", "{audio}", "{output}"]
    spec = _spec(tmp_path, small_mp4, short_wav, device="cpu")
    _engine(argv, env={"LIPSYNC_TEST_VAR": "from-config"}, cwd=str(cwd)).render(spec)
    seen = (spec.workdir / "seen.txt").read_text().strip()
    assert seen == f'{cwd}|from-config|cpu|{{"json": {{"kept": true}}}}'
    assert probe(spec.output).has_audio


def test_failing_script_puts_its_stderr_tail_in_the_error(tmp_path: Path, small_mp4: Path, short_wav: Path) -> None:
    script = _script(tmp_path, "fails.sh", """
for i in $(seq 1 40); do echo "loading layer $i" >&2; done
echo "FileNotFoundError: models/musetalk.pth does not exist" >&2
exit 3
""")
    with pytest.raises(EngineError) as caught:
        _engine([script, "{output}"]).render(_spec(tmp_path, small_mp4, short_wav))
    message = str(caught.value)
    assert "fails.sh exited with status 3" in message
    assert "models/musetalk.pth does not exist" in message
    assert "loading layer 40" in message and "loading layer 5\n" not in message  # only the tail


def test_timeout_kills_the_whole_process_group(tmp_path: Path, small_mp4: Path, short_wav: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command_mod, "KILL_GRACE_SECONDS", 0.5)
    pids = tmp_path / "pids"
    # The child ignores SIGTERM, so only the SIGKILL escalation to the whole group stops it.
    script = _script(tmp_path, "hangs.sh", f"""
bash -c 'trap "" TERM; while true; do sleep 0.1; done' &
echo "$$ $!" > {pids}
echo "waiting for a GPU that never frees up" >&2
while true; do sleep 0.1; done
""")
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        _engine([script, "{output}"], timeout_seconds=1.0).render(_spec(tmp_path, small_mp4, short_wav))
    assert time.monotonic() - started < 20
    message = str(caught.value)
    assert "did not finish within 1 s" in message and "pipeline.command.timeout_seconds" in message
    assert "waiting for a GPU" in message
    leader, child = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (_gone(leader) and _gone(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(leader), "the command itself survived the timeout"
    assert _gone(child), "the command's child survived the timeout"


def test_missing_output_is_a_failure(tmp_path: Path, small_mp4: Path, short_wav: Path) -> None:
    spec = _spec(tmp_path, small_mp4, short_wav)
    shutil.copy(small_mp4, spec.output)  # a leftover from an earlier attempt must not count as the result
    script = _script(tmp_path, "quiet.sh", 'echo "done (but wrote to the wrong place)" >&2\n')
    with pytest.raises(EngineError, match="wrote nothing to out.mp4") as caught:
        _engine([script, "{output}"]).render(spec)
    assert "wrong place" in str(caught.value)


def test_unplayable_output_is_a_failure(tmp_path: Path, small_mp4: Path, short_wav: Path) -> None:
    script = _script(tmp_path, "text.sh", 'echo "this is not a video" > "$1"\n')
    with pytest.raises(EngineError, match="text.sh wrote out.mp4, but .*not a readable media file"):
        _engine([script, "{output}"]).render(_spec(tmp_path, small_mp4, short_wav))


def test_audio_only_output_is_a_failure(tmp_path: Path, small_mp4: Path, short_wav: Path) -> None:
    argv = [FFMPEG, "-v", "error", "-y", "-i", "{audio}", "-c:a", "aac", "-f", "mp4", "{output}"]
    with pytest.raises(EngineError, match="has no video stream"):
        _engine(argv).render(_spec(tmp_path, small_mp4, short_wav))


def test_truncated_output_does_not_play(tmp_path: Path, small_mp4: Path, short_wav: Path) -> None:
    # A real MP4 with its index (moov) first, cut just after the media data starts: ffprobe reads the
    # header happily, but no frame decodes.
    source = tmp_path / "faststart.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(small_mp4), "-c", "copy", "-movflags", "+faststart",
                    str(source)], check=True)
    data = source.read_bytes()
    pos = 0
    while data[pos + 4:pos + 8] != b"mdat":
        pos += struct.unpack(">I", data[pos:pos + 4])[0]
    (tmp_path / "cut.mp4").write_bytes(data[:pos + 16])
    script = _script(tmp_path, "truncate.sh", f'cp {tmp_path / "cut.mp4"} "$1"\n')
    with pytest.raises(EngineError, match="truncate.sh wrote out.mp4, but it does not play: no frame decodes"):
        _engine([script, "{output}"]).render(_spec(tmp_path, small_mp4, short_wav))


@pytest.mark.parametrize(("argv", "words"), [
    ([], "argv is empty"),
    ([FFMPEG, "-i", "{video}", "out.mp4"], "never mentions {output}"),
    ([FFMPEG, "-i", "{vidoe}", "{output}"], "unknown placeholder(s) {vidoe}"),
    (["/opt/nowhere/musetalk-infer", "{output}"], "not an executable program"),
])
def test_check_reports_setup_mistakes(argv: list[str], words: str) -> None:
    with pytest.raises(EngineUnavailable) as caught:
        _engine(argv).check()
    assert words in str(caught.value)


def test_check_reports_a_missing_cwd() -> None:
    with pytest.raises(EngineUnavailable, match="pipeline.command.cwd '/opt/nowhere' is not a folder"):
        _engine(MUX_ARGV, cwd="/opt/nowhere").check()


def test_expand_fills_only_known_placeholders() -> None:
    values = {"audio": "a.wav", "video": "v.mp4", "output": "o.mp4", "device": "cuda:1", "workdir": "/w"}
    assert command_mod.expand(["--cfg", '{"x": {"y": 1}}', "--out={output}", "{device}"], values) == \
        ["--cfg", '{"x": {"y": 1}}', "--out=o.mp4", "cuda:1"]


def _readme_examples(heading: str) -> list[str]:
    """The ```yaml blocks of one README subsection under the engines anchor."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0].split("<!-- section:", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```yaml\n")[1:]]


@pytest.mark.parametrize("heading", ["wav2lip", "heygem", "command"])
def test_readme_config_examples_are_valid(tmp_path: Path, heading: str) -> None:
    from daemon import config as configmod

    examples = _readme_examples(heading)
    assert examples, f"no yaml example under ### {heading}"
    for i, example in enumerate(examples):
        path = tmp_path / f"{heading}{i}.yaml"
        path.write_text(example)
        loaded = configmod.load(path)  # every key known, every value of the right type
        assert loaded["pipeline"]["engine"] == heading
        if heading == "command":
            argv = loaded["pipeline"]["command"]["argv"]
            values = {name: f"<{name}>" for name in command_mod.PLACEHOLDERS}
            expanded = command_mod.expand(argv, values)
            assert "<output>" in " ".join(expanded) and "<audio>" in " ".join(expanded)

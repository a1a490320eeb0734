"""Any external lip-sync CLI (MuseTalk, LatentSync, Wav2Lip's own script) run from an argv template.

The template is a list (never a shell string) with {audio} {video} {output} {device} {workdir}
placeholders; other braces (JSON arguments, say) are passed through untouched. The command runs in its
own process group, so a timeout, or a daemon that stops mid-job, kills everything it started. Its
output must be a video that ffprobe reads and ffmpeg decodes, or the job fails with the tail of what
the command printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.engines.base import Engine, JobSpec, ProgressFn, RenderResult, no_progress
from pipeline.errors import EngineError, EngineUnavailable
from pipeline.media.probe import probe, require_tool

PLACEHOLDERS = ("audio", "video", "output", "device", "workdir")
STDERR_TAIL_LINES = 20
KILL_GRACE_SECONDS = 5.0
DEFAULT_TIMEOUT_SECONDS = 3600.0
DECODE_CHECK_SECONDS = 60

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CommandEngine(Engine):
    name = "command"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.options = dict(settings.get("command") or {})

    @property
    def argv_template(self) -> list[str]:
        return [str(part) for part in self.options.get("argv") or []]

    def check(self) -> None:
        """The template names a runnable program, says where to write, and uses only known placeholders."""
        argv = self.argv_template
        if not argv:
            raise EngineUnavailable("pipeline.command.argv is empty: set it to the command to run, e.g. "
                                    "[ffmpeg, -i, \"{video}\", -i, \"{audio}\", ..., \"{output}\"]")
        unknown = sorted({name for part in argv for name in _PLACEHOLDER.findall(part)} - set(PLACEHOLDERS))
        if unknown:
            raise EngineUnavailable(f"pipeline.command.argv uses unknown placeholder(s) "
                                    f"{', '.join('{' + n + '}' for n in unknown)}; "
                                    f"use only {' '.join('{' + n + '}' for n in PLACEHOLDERS)}")
        if not any("{output}" in part for part in argv):
            raise EngineUnavailable("pipeline.command.argv never mentions {output}: the command must be told "
                                    "where to write the result")
        if _find_program(argv[0], self._cwd()) is None:
            raise EngineUnavailable(f"pipeline.command.argv starts with {argv[0]!r}, which is not an executable "
                                    "program on PATH or at that path; install it or give its full path")
        cwd = self._cwd()
        if cwd is not None and not cwd.is_dir():
            raise EngineUnavailable(f"pipeline.command.cwd {str(cwd)!r} is not a folder; create it or fix the setting")

    def render(self, spec: JobSpec, progress: ProgressFn = no_progress) -> RenderResult:
        self.check()
        own_workdir = spec.workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="lipsyncd-cmd-")) if own_workdir else Path(spec.workdir)
        try:
            return self._run(spec, workdir, progress)
        finally:
            if own_workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, spec: JobSpec, workdir: Path, progress: ProgressFn) -> RenderResult:
        values = {"audio": str(spec.audio), "video": str(spec.video), "output": str(spec.output),
                  "device": spec.device, "workdir": str(workdir)}
        argv = expand(self.argv_template, values)
        program = Path(argv[0]).name
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.options.get("env") or {}).items()})
        timeout = float(self.options.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS)
        cwd = self._cwd() or workdir
        log_path = workdir / "command-output.log"
        with contextlib.suppress(FileNotFoundError):
            spec.output.unlink()  # a leftover from an earlier attempt must not pass for this run's result
        progress("command", 0.0)
        started = time.monotonic()
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        cwd=cwd, env=env, start_new_session=True)
            except OSError as exc:
                raise EngineUnavailable(f"cannot start {argv[0]!r}: {exc.strerror}; check pipeline.command.argv "
                                        "and pipeline.command.cwd") from None
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                raise EngineError(f"the command {program} did not finish within {timeout:g} s "
                                  "(pipeline.command.timeout_seconds) and was stopped with all its processes; "
                                  "raise the timeout if the video is long" + tail(log_path)) from None
            except BaseException:
                kill_group(proc)
                raise
            kill_group(proc, grace=0.0)  # helpers it left running in its group
        elapsed = time.monotonic() - started
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise EngineError(f"the command {program} {how}" + tail(log_path))
        if not spec.output.exists() or spec.output.stat().st_size == 0:
            raise EngineError(f"the command {program} finished but wrote nothing to {spec.output.name}; check that "
                              "pipeline.command.argv passes \"{output}\" where the tool expects its output file"
                              + tail(log_path))
        info = _check_playable(spec.output, program, log_path)
        progress("command", 1.0)
        return RenderResult(timings={"command": elapsed}, fps=info.fps,
                            frames=round(info.duration * info.fps) if info.fps else 0,
                            details={"command": program})

    def _cwd(self) -> Path | None:
        cwd = self.options.get("cwd")
        return Path(cwd) if cwd else None


def expand(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace the known {placeholders} in each argument; leave every other brace alone."""
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise EngineUnavailable(f"pipeline.command.argv has an unknown placeholder {{{name}}}; "
                                    f"use only {' '.join('{' + n + '}' for n in PLACEHOLDERS)}")
        return values[name]
    return [_PLACEHOLDER.sub(fill, part) for part in template]


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the command's whole process group, then SIGKILL whatever is left after *grace* seconds."""
    signals = (signal.SIGTERM, signal.SIGKILL) if grace > 0 else (signal.SIGKILL,)
    for sig in signals:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace or None)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_SECONDS)


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    """The last lines a command printed, formatted to append to an error message ("" when silent)."""
    try:
        text = path.read_text("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    if not text:
        return ""
    return "\n\nLast lines the command printed:\n" + "\n".join(text[-lines:])


def _find_program(program: str, cwd: Path | None) -> str | None:
    if os.sep in program:
        path = Path(program)
        if not path.is_absolute() and cwd is not None:
            path = cwd / path
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program)


def _check_playable(path: Path, program: str, log_path: Path):
    """ffprobe sees a video stream and ffmpeg decodes its first frame; otherwise an EngineError."""
    try:
        info = probe(path, role="result")
    except EngineError as exc:
        raise EngineError(f"the command {program} wrote {path.name}, but {exc}" + tail(log_path)) from None
    if not info.has_video:
        raise EngineError(f"the command {program} wrote {path.name}, but it has no video stream; the tool may "
                          "have written audio only or another format" + tail(log_path))
    ffmpeg = require_tool("ffmpeg")
    try:
        done = subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-i", f"file:{path.absolute()}", "-map", "0:v:0",
                               "-frames:v", "1", "-f", "null", "-"],
                              capture_output=True, timeout=DECODE_CHECK_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise EngineError(f"the command {program} wrote {path.name}, but its first frame could not be decoded "
                          f"within {DECODE_CHECK_SECONDS} s" + tail(log_path)) from None
    if done.returncode != 0:
        reasons = [re.sub(r"^\[[^]]*\]\s*", "", line) for line in done.stderr.decode("utf-8", "replace").splitlines()]
        reason = next((r for r in reasons if "partial file" in r), next((r for r in reasons if r.strip()), ""))
        raise EngineError(f"the command {program} wrote {path.name}, but it does not play: no frame decodes "
                          f"({reason or 'ffmpeg gave no reason'}); the file is probably truncated or damaged"
                          + tail(log_path))
    return info

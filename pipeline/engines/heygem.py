"""Drive an existing HeyGem (Duix.Heygem / HeyGem.ai) video service through its /easy API.

The service reads its inputs from, and writes its results to, a data folder that is mounted into its
container: `pipeline.heygem.host_data_dir` on this machine is `container_data_dir` (usually /code/data)
inside. A job therefore goes:

    copy the audio and video into <host_data_dir>/temp/ under names that start with a unique code
    POST {base_url}/easy/submit  {audio_url, video_url, code, chaofen, watermark_switch, pn}
    GET  {base_url}/easy/query?code=...  until data.status is 2 (done, data.result) or 3 (failed, data.msg)
    copy the result out, then remove every file of that code from the service's temp (and result) folder

The API answers {"code": 10000, "success": true, "msg": ..., "data": {...}}; other codes are 10001 busy,
10002 bad parameters, 10003 lock error, 10004 unknown job, 10005 duplicate job, 9999 system error.
HeyGem itself runs jobs one at a time and hangs without a word when it is stuck, so this engine holds
a lock file in the data folder while it uses the service, and gives up after an overall timeout or when
the progress has not changed for `stall_minutes`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.engines.base import Engine, JobSpec, ProgressFn, RenderResult, no_progress
from pipeline.errors import EngineError, EngineUnavailable
from pipeline.media.probe import probe

OK, BUSY, NOT_FOUND = 10000, 10001, 10004
FAILED_CODES = {9999: "system error", 10002: "bad parameters", 10003: "could not take its lock",
                10005: "a job with this code is already running"}
RUNNING, DONE, FAILED = 1, 2, 3
# Fixed values of the public API: no super-resolution, no watermark, pn=1.
SUBMIT_CONSTANTS = {"chaofen": 0, "watermark_switch": 0, "pn": 1}

LOCK_NAME = ".lipsyncd-heygem.lock"
SERVICE_FOLDERS = ("temp", "result")  # where HeyGem keeps a job's files, under its data folder
REQUEST_TIMEOUT_SECONDS = 30.0
MAX_BAD_ANSWERS = 3  # consecutive unreadable poll answers before giving up
LOCK_POLL_SECONDS = 0.2


class HeyGemEngine(Engine):
    name = "heygem"
    remote = True

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        options = dict(settings.get("heygem") or {})
        self.base_url = str(options.get("base_url") or "http://127.0.0.1:8383").rstrip("/")
        host = options.get("host_data_dir")
        self.host_data_dir = Path(host) if host else None
        self.container_data_dir = str(options.get("container_data_dir") or "/code/data").rstrip("/") or "/"
        self.timeout_seconds = float(options.get("timeout_minutes", 120)) * 60
        self.stall_seconds = float(options.get("stall_minutes", 10)) * 60
        self.poll_seconds = float(options.get("poll_seconds", 2.0))
        self.result_wait_seconds = float(options.get("result_wait_seconds", 30))

    # -- set-up checks -------------------------------------------------------------------------

    def check(self) -> None:
        """The data folder is there and writable, and the service answers its query API."""
        self._check_data_dir()
        try:
            answer = self._request("GET", "/easy/query", params={"code": f"lipsyncd-check-{uuid.uuid4().hex[:8]}"})
        except EngineUnavailable:
            raise
        except EngineError as exc:  # answered, but not like HeyGem: a setup problem too
            raise EngineUnavailable(str(exc)) from None
        if "code" not in answer:
            raise EngineUnavailable(f"the HeyGem service at {self.base_url} answered without a \"code\" field "
                                    f"({_short(answer)}); is pipeline.heygem.base_url really a HeyGem service?")

    def _check_data_dir(self) -> Path:
        if self.host_data_dir is None:
            raise EngineUnavailable("pipeline.heygem.host_data_dir is not set: set it to the host folder that is "
                                    f"mounted at {self.container_data_dir} in the HeyGem container "
                                    "(e.g. ~/heygem_data/face2face)")
        if not self.host_data_dir.is_dir():
            raise EngineUnavailable(f"pipeline.heygem.host_data_dir {str(self.host_data_dir)!r} is not a folder; "
                                    "create it or point it at the folder mounted into the HeyGem container")
        temp = self.host_data_dir / "temp"
        try:
            temp.mkdir(exist_ok=True)
        except OSError as exc:
            raise EngineUnavailable(f"cannot create {temp}: {exc.strerror}; give this user write access to "
                                    "pipeline.heygem.host_data_dir") from None
        if not os.access(temp, os.W_OK | os.X_OK):
            raise EngineUnavailable(f"{temp} is not writable by this user; give it write access "
                                    "(the HeyGem container reads the inputs from there)")
        return temp

    # -- one job ---------------------------------------------------------------------------------

    def render(self, spec: JobSpec, progress: ProgressFn = no_progress) -> RenderResult:
        temp = self._check_data_dir()
        _require_stream(spec.audio, "audio", video=False)
        _require_stream(spec.video, "video", video=True)
        started = time.monotonic()
        deadline = started + self.timeout_seconds
        timings: dict[str, float] = {}
        code = f"lipsyncd-{uuid.uuid4().hex[:16]}"
        progress("waiting", 0.0)
        with self._service_lock(deadline):
            timings["wait"] = time.monotonic() - started
            try:
                mark = time.monotonic()
                audio = self._copy_in(spec.audio, temp / f"{code}-audio{spec.audio.suffix.lower()}")
                video = self._copy_in(spec.video, temp / f"{code}-video{spec.video.suffix.lower()}")
                progress("upload", 0.02)
                timings["upload"] = time.monotonic() - mark
                mark = time.monotonic()
                self._submit(code, audio, video, deadline, progress)
                result = self._poll(code, deadline, progress)
                timings["render"] = time.monotonic() - mark
                mark = time.monotonic()
                found = self._wait_for_result(code, result)
                info = probe(found, role="HeyGem result")
                if not info.has_video:
                    raise EngineError(f"the HeyGem service finished job {code}, but its result {found.name} has no "
                                      "video stream; check the HeyGem logs")
                shutil.copyfile(found, spec.output)
                timings["collect"] = time.monotonic() - mark
            finally:
                self._clean(code)
        progress("collect", 1.0)
        return RenderResult(timings=timings, fps=info.fps, frames=round(info.duration * info.fps) if info.fps else 0,
                            details={"heygem_code": code, "heygem_service": self.base_url})

    @contextlib.contextmanager
    def _service_lock(self, deadline: float) -> Iterator[None]:
        """One job at a time per service: a lock file in its data folder, shared by every worker on this host."""
        assert self.host_data_dir is not None
        path = self.host_data_dir / LOCK_NAME
        with open(path, "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise EngineError(f"another job kept the HeyGem service at {self.base_url} busy for "
                                          f"{self.timeout_seconds / 60:g} minutes (lock {path}); the job was not "
                                          "started: retry it later or raise pipeline.heygem.timeout_minutes") from None
                    time.sleep(LOCK_POLL_SECONDS)
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()}\n")
                handle.flush()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _copy_in(self, source: Path, target: Path) -> str:
        """Copy an input into the service's temp folder (atomically) and return the path the container sees."""
        partial = target.with_name("." + target.name + ".part")
        try:
            shutil.copyfile(source, partial)
            partial.rename(target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise EngineError(f"cannot copy {source.name} into the HeyGem data folder {target.parent}: "
                              f"{exc.strerror}; check free space and permissions there") from None
        return self.to_container(target)

    def _submit(self, code: str, audio: str, video: str, deadline: float, progress: ProgressFn) -> None:
        payload = {"audio_url": audio, "video_url": video, "code": code, **SUBMIT_CONSTANTS}
        while True:
            answer = self._request("POST", "/easy/submit", payload=payload)
            status = answer.get("code")
            if status == OK:
                return
            if status == BUSY:  # someone else's job (another client of the service) is running
                if time.monotonic() + self.poll_seconds >= deadline:
                    raise EngineError(f"the HeyGem service at {self.base_url} stayed busy with other work for "
                                      f"{self.timeout_seconds / 60:g} minutes, so job {code} was never started; "
                                      "retry later or raise pipeline.heygem.timeout_minutes")
                progress("waiting", 0.02)
                time.sleep(self.poll_seconds)
                continue
            raise EngineError(f"the HeyGem service at {self.base_url} refused the job: "
                              f"{_describe(answer)}; check the HeyGem logs")

    def _poll(self, code: str, deadline: float, progress: ProgressFn) -> str:
        """Wait for status 2 and return its result path; fail on status 3, a stall or the overall timeout."""
        last_progress: float | None = None
        last_change = time.monotonic()
        bad_answers = 0
        note = "it has not reported any progress"
        while True:
            time.sleep(self.poll_seconds)
            try:
                answer = self._request("GET", "/easy/query", params={"code": code})
                bad_answers = 0
            except EngineError as exc:
                bad_answers += 1
                if bad_answers >= MAX_BAD_ANSWERS:
                    raise EngineError(f"{exc} (job {code}, {bad_answers} answers in a row)") from None
                answer = {}
            status_code = answer.get("code")
            data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
            if status_code in FAILED_CODES:
                raise EngineError(f"the HeyGem service at {self.base_url} gave up on job {code}: "
                                  f"{_describe(answer)}; check the HeyGem logs")
            if status_code == OK:
                status = data.get("status")
                if status == DONE:
                    result = data.get("result")
                    if not result or not isinstance(result, str):
                        raise EngineError(f"the HeyGem service said job {code} is done but named no result file "
                                          f"({_short(answer)}); check the HeyGem logs")
                    progress("render", 0.95)
                    return result
                if status == FAILED:
                    reason = str(data.get("msg") or answer.get("msg") or "no reason given")
                    raise EngineError(f"the HeyGem service failed job {code}: {reason}; check that the video shows "
                                      "one clear face and the audio is speech, then drop the pair again")
                current = _percent(data.get("progress"))
                if current != last_progress:
                    last_progress, last_change = current, time.monotonic()
                    progress("render", 0.05 + 0.9 * current / 100)
                note = f"its progress has stayed at {current:g}%"
            elif status_code == NOT_FOUND:
                note = "the service says it does not know this job (10004): it may have restarted"
            now = time.monotonic()
            if now - last_change >= self.stall_seconds:
                raise EngineError(f"the HeyGem service at {self.base_url} stalled on job {code}: {note} for "
                                  f"{self.stall_seconds / 60:g} minutes (pipeline.heygem.stall_minutes); restart "
                                  "the HeyGem container if it hangs, then retry the job")
            if now >= deadline:
                raise EngineError(f"the HeyGem service at {self.base_url} did not finish job {code} within "
                                  f"{self.timeout_seconds / 60:g} minutes (pipeline.heygem.timeout_minutes); "
                                  f"{note}")

    def _wait_for_result(self, code: str, result: str) -> Path:
        """The result file on this host, once it exists and has stopped growing."""
        candidates = self.to_host(result)
        if not candidates:
            raise EngineError(f"the HeyGem service named {result!r} as the result of job {code}, which is not a file "
                              f"under its data folder {self.container_data_dir}; check the HeyGem version")
        deadline = time.monotonic() + self.result_wait_seconds
        last_size = -1
        while True:
            found = next((p for p in candidates if p.is_file()), None)
            if found is not None:
                size = found.stat().st_size
                if size > 0 and size == last_size:
                    return found
                last_size = size
            if time.monotonic() >= deadline:
                where = ", ".join(str(p) for p in candidates)
                raise EngineError(f"the HeyGem service said job {code} is done with result {result!r}, but no "
                                  f"complete file appeared at {where} within {self.result_wait_seconds:g} s; check "
                                  "that pipeline.heygem.host_data_dir is the folder mounted at "
                                  f"{self.container_data_dir} in the HeyGem container")
            time.sleep(min(0.25, max(0.05, self.poll_seconds)))

    def _clean(self, code: str) -> None:
        """Remove every file and folder of this job's code from the service's temp and result folders."""
        assert self.host_data_dir is not None
        for folder in SERVICE_FOLDERS:
            base = self.host_data_dir / folder
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                name = entry.name.lstrip(".")
                if not name.startswith(code):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()

    # -- paths between this host and the container ---------------------------------------------

    def to_container(self, host_path: Path) -> str:
        assert self.host_data_dir is not None
        relative = host_path.relative_to(self.host_data_dir).as_posix()
        return posixpath.join(self.container_data_dir, relative)

    def to_host(self, result: str) -> list[Path]:
        """Where a result path the service reports may be on this host (HeyGem reports "/<code>-r.mp4",
        relative to its temp folder; other builds report a full container path)."""
        assert self.host_data_dir is not None
        path = result.strip().replace("\\", "/")
        if "://" in path:
            return []
        prefix = self.container_data_dir.rstrip("/") + "/"
        if path.startswith(prefix):
            relatives = [path[len(prefix):]]
        else:
            stripped = path.lstrip("/")
            relatives = [f"temp/{stripped}", stripped]
        candidates = []
        for relative in relatives:
            parts = [p for p in relative.split("/") if p not in ("", ".")]
            if not parts or ".." in parts:
                continue
            candidates.append(self.host_data_dir.joinpath(*parts))
        return candidates

    # -- HTTP ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, payload: Mapping[str, Any] | None = None,
                 params: Mapping[str, str] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise EngineError(f"the HeyGem service at {self.base_url} answered {path} with HTTP {exc.code} "
                              f"{exc.reason}; check that pipeline.heygem.base_url points at the HeyGem "
                              "video service (port 8383 by default)") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            reason = getattr(reason, "strerror", None) or str(reason)
            raise EngineUnavailable(f"cannot reach the HeyGem service at {self.base_url} ({reason}); start it "
                                    "(docker compose up -d) or fix pipeline.heygem.base_url") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise EngineError(f"the HeyGem service at {self.base_url} answered {path} with something that is not "
                              f"JSON ({body[:120].decode('utf-8', 'replace')!r}); is a proxy in the way, or is "
                              "pipeline.heygem.base_url another service?") from None
        if not isinstance(answer, dict):
            raise EngineError(f"the HeyGem service at {self.base_url} answered {path} with JSON that is not an "
                              f"object ({_short(answer)}); is pipeline.heygem.base_url another service?")
        return answer


def _require_stream(path: Path, role: str, *, video: bool) -> None:
    info = probe(path, role=role)
    if video and not info.has_video:
        raise EngineError(f"the video {path.name!r} has no picture; drop a talking-head video with it")
    if not video and not info.has_audio:
        raise EngineError(f"the audio {path.name!r} has no sound track; drop a real audio file")


def _percent(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, min(100.0, number))


def _describe(answer: Mapping[str, Any]) -> str:
    code = answer.get("code")
    meaning = FAILED_CODES.get(code) if isinstance(code, int) else None
    msg = answer.get("msg")
    parts = [f"code {code}" if code is not None else "no code"]
    if meaning:
        parts.append(meaning)
    if msg not in (None, "", code):
        parts.append(str(msg))
    return ", ".join(parts)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 160 else text[:157] + "..."

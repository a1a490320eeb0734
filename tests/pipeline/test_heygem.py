"""The heygem engine against a small real HTTP server on 127.0.0.1 that speaks HeyGem's /easy API.

The fake service behaves like the real one where it matters: it reads its inputs by *container* paths
(/code/data/...), which it maps to its data folder (the test's host_data_dir); it keeps per-job files in
data/temp named after the job code; it answers {"code": 10000, "data": {"status", "progress", "result",
"msg"}}, forgets a job once it has reported it finished, and answers 10004 for an unknown code.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from pipeline.engines import EngineError, EngineUnavailable, JobSpec, get_engine
from pipeline.media.probe import probe

CONTAINER_DIR = "/code/data"
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


@dataclass
class FakeHeyGem:
    """What the fake service does, per scenario, and what it saw."""

    data_dir: Path
    scenario: str = "happy"  # happy | stuck | fails | malformed | busy | always_busy | no_result | http_error
    busy_answers: int = 2
    submits: list[dict] = field(default_factory=list)
    inputs_seen: list[bool] = field(default_factory=list)
    queries: int = 0
    running: int = 0
    max_running: int = 0
    jobs: dict[str, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def host_path(self, container_path: str) -> Path:
        assert container_path.startswith(CONTAINER_DIR + "/"), container_path
        return self.data_dir / container_path[len(CONTAINER_DIR) + 1:]

    def submit(self, body: dict) -> dict:
        with self.lock:
            self.submits.append(body)
            if self.scenario == "always_busy" or (self.scenario == "busy" and len(self.submits) <= self.busy_answers):
                return {"code": 10001, "success": False, "msg": "忙碌中", "data": {}}
            code = body["code"]
            audio, video = self.host_path(body["audio_url"]), self.host_path(body["video_url"])
            self.inputs_seen.append(audio.is_file() and video.is_file())
            # The real service converts the inputs into per-job files in its temp folder.
            (self.data_dir / "temp" / f"{code}_format.wav").write_bytes(audio.read_bytes()[:1000])
            (self.data_dir / "temp" / code).mkdir()
            (self.data_dir / "temp" / code / "frame_0001.png").write_bytes(b"\x89PNG")
            self.jobs[code] = {"audio": audio, "video": video, "polls": 0}
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            return {"code": 10000, "success": True, "msg": "成功", "data": {"code": code}}

    def query(self, code: str) -> dict | str:
        with self.lock:
            self.queries += 1
            job = self.jobs.get(code)
            if job is None:
                return {"code": 10004, "success": True, "msg": "任务不存在", "data": {}}
            job["polls"] += 1
            polls = job["polls"]
        if self.scenario == "malformed":
            return "<html><body>502 Bad Gateway</body></html>"
        if self.scenario == "stuck":
            return _running(code, 5)
        if self.scenario == "fails" and polls >= 2:
            return self._finish(code, 3, "", "人脸检测失败: no face found in the first frame")
        if self.scenario == "no_result" and polls >= 2:
            return self._finish(code, 2, f"/{code}-r.mp4", "合成成功")
        if polls < 3:
            return _running(code, 10 * polls)
        # "Render": the video with the new audio, written where the real service writes it.
        result = self.data_dir / "temp" / f"{code}-r.mp4"
        subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(job["video"]), "-i", str(job["audio"]),
                        "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(result)], check=True)
        return self._finish(code, 2, f"/{code}-r.mp4", "合成成功")

    def _finish(self, code: str, status: int, result: str, msg: str) -> dict:
        with self.lock:
            self.jobs.pop(code, None)  # the real service forgets a job once it reported the end
            self.running -= 1
        return {"code": 10000, "success": True, "msg": "",
                "data": {"code": code, "status": status, "progress": 100, "result": result, "msg": msg}}


def _running(code: str, progress: int) -> dict:
    return {"code": 10000, "success": True, "msg": "",
            "data": {"code": code, "status": 1, "progress": progress, "result": "", "msg": "合成中"}}


def _handler(fake: FakeHeyGem) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def _send(self, answer: dict | str, status: int = 200) -> None:
            body = (answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            if self.path != "/easy/submit":
                self._send({"error": "not found"}, 404)
            elif fake.scenario == "http_error":
                self._send("<h1>Internal Server Error</h1>", 500)
            else:
                self._send(fake.submit(body))

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path != "/easy/query":
                self._send({"error": "not found"}, 404)
                return
            self._send(fake.query(parse_qs(url.query).get("code", ["-1"])[0]))

    return Handler


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "heygem_data" / "face2face"
    (folder / "temp").mkdir(parents=True)
    return folder


@pytest.fixture
def fake(data_dir: Path) -> Iterator[tuple[FakeHeyGem, str]]:
    service = FakeHeyGem(data_dir)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _engine(base_url: str, data_dir: Path, **options):
    heygem = {"base_url": base_url, "host_data_dir": str(data_dir), "container_data_dir": CONTAINER_DIR,
              "timeout_minutes": 1.0, "stall_minutes": 0.5, "poll_seconds": 0.02, "result_wait_seconds": 2,
              **options}
    return get_engine("heygem", {"heygem": heygem})


def _spec(tmp_path: Path, face_mp4: Path, speech_wav: Path, name: str = "out.mp4") -> JobSpec:
    return JobSpec(audio=speech_wav, video=face_mp4, output=tmp_path / name)


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "temp").iterdir())


def test_happy_path_renders_reports_progress_and_cleans_up(tmp_path: Path, data_dir: Path, fake, face_mp4: Path,
                                                           speech_wav: Path) -> None:
    service, url = fake
    engine = _engine(url, data_dir)
    engine.check()
    progress: list[tuple[str, float]] = []
    result = engine.render(_spec(tmp_path, face_mp4, speech_wav), lambda s, f: progress.append((s, f)))

    info = probe(tmp_path / "out.mp4")
    assert info.has_video and info.has_audio
    assert info.duration == pytest.approx(probe(speech_wav).duration, abs=0.3)
    body = service.submits[0]
    assert set(body) == {"audio_url", "video_url", "code", "chaofen", "watermark_switch", "pn"}
    assert (body["chaofen"], body["watermark_switch"], body["pn"]) == (0, 0, 1)
    assert body["audio_url"].startswith(f"{CONTAINER_DIR}/temp/{body['code']}")
    assert body["video_url"].endswith(".mp4")
    assert service.inputs_seen == [True]  # the container paths led to the copied inputs
    assert result.details["heygem_code"] == body["code"] and result.frames > 0
    renders = [f for stage, f in progress if stage == "render"]
    assert len(renders) >= 3 and renders == sorted(renders) and 0 < renders[0] < renders[-1] < 1
    assert progress[-1] == ("collect", 1.0)
    assert _leftovers(data_dir) == []  # inputs, per-job temp files and folder, and the result are gone


def test_busy_answers_are_retried(tmp_path: Path, data_dir: Path, fake, face_mp4: Path, speech_wav: Path) -> None:
    service, url = fake
    service.scenario, service.busy_answers = "busy", 2
    _engine(url, data_dir).render(_spec(tmp_path, face_mp4, speech_wav))
    assert len(service.submits) == 3 and probe(tmp_path / "out.mp4").has_video


def test_a_service_that_stays_busy_fails_at_the_timeout(tmp_path: Path, data_dir: Path, fake, face_mp4: Path,
                                                        speech_wav: Path) -> None:
    service, url = fake
    service.scenario = "always_busy"
    with pytest.raises(EngineError, match="stayed busy with other work") as caught:
        _engine(url, data_dir, timeout_minutes=0.5 / 60).render(_spec(tmp_path, face_mp4, speech_wav))
    assert "pipeline.heygem.timeout_minutes" in str(caught.value)
    assert len(service.submits) > 2
    assert _leftovers(data_dir) == []


def test_progress_stuck_at_5_percent_is_a_stall(tmp_path: Path, data_dir: Path, fake, face_mp4: Path,
                                               speech_wav: Path) -> None:
    service, url = fake
    service.scenario = "stuck"
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        _engine(url, data_dir, stall_minutes=0.5 / 60).render(_spec(tmp_path, face_mp4, speech_wav))
    message = str(caught.value)
    assert "stalled" in message and "stayed at 5%" in message and "pipeline.heygem.stall_minutes" in message
    assert 0.5 <= time.monotonic() - started < 10
    assert service.queries > 3
    assert _leftovers(data_dir) == []


def test_overall_timeout(tmp_path: Path, data_dir: Path, fake, face_mp4: Path, speech_wav: Path) -> None:
    service, url = fake
    service.scenario = "stuck"
    with pytest.raises(EngineError, match="did not finish job .* within 0.01 minutes"):
        _engine(url, data_dir, timeout_minutes=0.01, stall_minutes=1).render(_spec(tmp_path, face_mp4, speech_wav))


def test_status_3_fails_with_the_service_message(tmp_path: Path, data_dir: Path, fake, face_mp4: Path,
                                                 speech_wav: Path) -> None:
    service, url = fake
    service.scenario = "fails"
    with pytest.raises(EngineError, match="failed job lipsyncd-[0-9a-f]+: 人脸检测失败: no face found"):
        _engine(url, data_dir).render(_spec(tmp_path, face_mp4, speech_wav))
    assert not (tmp_path / "out.mp4").exists()
    assert _leftovers(data_dir) == []


def test_malformed_json(tmp_path: Path, data_dir: Path, fake, face_mp4: Path, speech_wav: Path) -> None:
    service, url = fake
    service.scenario = "malformed"
    with pytest.raises(EngineError, match="not JSON .*502 Bad Gateway"):
        _engine(url, data_dir).render(_spec(tmp_path, face_mp4, speech_wav))
    assert service.queries == 3  # tolerated twice, failed on the third answer in a row
    assert _leftovers(data_dir) == []


def test_http_error_names_the_status(tmp_path: Path, data_dir: Path, fake, face_mp4: Path, speech_wav: Path) -> None:
    service, url = fake
    service.scenario = "http_error"
    with pytest.raises(EngineError, match="answered /easy/submit with HTTP 500"):
        _engine(url, data_dir).render(_spec(tmp_path, face_mp4, speech_wav))


def test_result_file_that_never_appears(tmp_path: Path, data_dir: Path, fake, face_mp4: Path,
                                        speech_wav: Path) -> None:
    service, url = fake
    service.scenario = "no_result"
    with pytest.raises(EngineError) as caught:
        _engine(url, data_dir, result_wait_seconds=0.3).render(_spec(tmp_path, face_mp4, speech_wav))
    message = str(caught.value)
    assert "no complete file appeared" in message and str(data_dir / "temp") in message
    assert "pipeline.heygem.host_data_dir" in message
    assert _leftovers(data_dir) == []


def test_connection_refused(tmp_path: Path, data_dir: Path, face_mp4: Path, speech_wav: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = _engine(f"http://127.0.0.1:{port}", data_dir)
    with pytest.raises(EngineUnavailable, match=f"cannot reach the HeyGem service at http://127.0.0.1:{port} "
                                                r"\(Connection refused\)"):
        engine.check()
    with pytest.raises(EngineUnavailable, match="cannot reach"):
        engine.render(_spec(tmp_path, face_mp4, speech_wav))
    assert _leftovers(data_dir) == []


def test_check_reports_a_service_that_is_not_heygem(data_dir: Path, fake) -> None:
    service, url = fake
    service.scenario = "malformed"  # every answer is an HTML page
    with pytest.raises(EngineUnavailable, match="the HeyGem service at .* answered /easy/query with HTTP 404"):
        _engine(url + "/other-app", data_dir).check()


def test_check_reports_a_missing_data_folder(tmp_path: Path, fake) -> None:
    _, url = fake
    with pytest.raises(EngineUnavailable, match="host_data_dir is not set"):
        get_engine("heygem", {"heygem": {"base_url": url}}).check()
    with pytest.raises(EngineUnavailable, match="is not a folder"):
        _engine(url, tmp_path / "missing").check()


def test_one_job_at_a_time_per_service(tmp_path: Path, data_dir: Path, fake, face_mp4: Path,
                                       speech_wav: Path) -> None:
    service, url = fake
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            _engine(url, data_dir).render(_spec(tmp_path, face_mp4, speech_wav, name))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"out{i}.mp4",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(service.submits) == 2 and service.max_running == 1
    assert probe(tmp_path / "out0.mp4").has_video and probe(tmp_path / "out1.mp4").has_video


def test_result_paths_map_from_container_to_host(data_dir: Path) -> None:
    engine = _engine("http://127.0.0.1:1", data_dir)
    assert engine.to_host("/abc-r.mp4") == [data_dir / "temp" / "abc-r.mp4", data_dir / "abc-r.mp4"]
    assert engine.to_host("/code/data/result/abc-r.mp4") == [data_dir / "result" / "abc-r.mp4"]
    assert engine.to_host("/code/data/../etc/passwd") == []
    assert engine.to_host("http://elsewhere/x.mp4") == []
    assert engine.to_container(data_dir / "temp" / "x.wav") == "/code/data/temp/x.wav"


def test_bad_input_is_refused_before_the_service_is_used(tmp_path: Path, data_dir: Path, fake,
                                                         face_mp4: Path) -> None:
    service, url = fake
    broken = tmp_path / "voice.wav"
    broken.write_bytes(b"RIFF....not really")
    with pytest.raises(EngineError, match="the audio 'voice.wav' is not a readable media file"):
        _engine(url, data_dir).render(JobSpec(audio=broken, video=face_mp4, output=tmp_path / "o.mp4"))
    assert service.submits == []

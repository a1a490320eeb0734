"""The running `lipsyncd web` (gunicorn) process, spoken to over real HTTP with curl.

Here the peer address is the real socket's: the proxy header is believed from 127.0.0.2 (curl --interface)
and not from 127.0.0.1. strace shows the video going out through sendfile, and the worker's own peak memory
(VmHWM) shows an upload streamed to disk, not held in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import ROOT, wait_for
from tests.web.support import DATE, WebServer, add_output

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (Debian package curl)")
PROXY = "127.0.0.2"  # the only trusted proxy address in these tests
VIDEO_BYTES = 24 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    root = tmp_path_factory.mktemp("web-server")
    add_output(root, "alice", "大视频", video=os.urandom(VIDEO_BYTES))
    add_output(root, "bob", "secret", video=b"bob's private video bytes")
    web = WebServer(root, trusted_proxies=[PROXY]).start()
    yield web
    web.stop()


def curl(server: WebServer, path: str, *args: str, interface: str | None = PROXY,
         user: str | None = "alice") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request with curl."""
    command = ["curl", "-sS", "-g", "--path-as-is", "-D", "-", "--max-time", "60", "-H", "Expect:"]
    if interface:
        command += ["--interface", interface]
    if user:
        command += ["-H", f"Remote-User: {user}"]
    done = subprocess.run([*command, *args, server.url + path], capture_output=True, timeout=90, check=True)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def curl_ok(server: WebServer) -> bool:
    return subprocess.run(["curl", "-sf", "-o", "/dev/null", server.url + "/static/app.css"]).returncode == 0


def token(server: WebServer, user: str = "alice") -> str:
    return json.loads(curl(server, "/api/me", user=user)[2])["csrf"]


def test_the_proxy_header_is_believed_only_from_the_trusted_address(server: WebServer) -> None:
    assert curl(server, "/api/me")[0] == 200
    status, _, body = curl(server, "/api/outputs", interface="127.0.0.1")
    assert status == 401 and "大视频".encode() not in body
    assert curl(server, "/api/me", user=None)[0] == 401
    assert curl(server, f"/files/outputs/{DATE}/alice/大视频.mp4", "-H", "X-Forwarded-For: 127.0.0.2",
                interface="127.0.0.1")[0] == 401


def test_range_and_paths_over_http(server: WebServer) -> None:
    video = (server.config.parent / "outputs" / DATE / "alice" / "大视频.mp4").read_bytes()
    status, headers, body = curl(server, f"/files/outputs/{DATE}/alice/大视频.mp4", "-H", "Range: bytes=100-1123")
    assert (status, headers["content-range"], body) == (206, f"bytes 100-1123/{len(video)}", video[100:1124])
    status, headers, body = curl(server, f"/files/outputs/{DATE}/alice/大视频.mp4", "-H",
                                 f"Range: bytes={len(video) - 10}-")
    assert (status, body) == (206, video[-10:])
    for path in (f"/files/outputs/{DATE}/bob/secret.mp4", f"/files/outputs/{DATE}/alice/../bob/secret.mp4",
                 f"/files/outputs/{DATE}/alice/%2e%2e/bob/secret.mp4",
                 f"/files/outputs/{DATE}/alice/..%2fbob%2fsecret.mp4",
                 f"/files/outputs/{DATE}/%2e%2e/{DATE}/bob/secret.mp4"):
        status, _, body = curl(server, path)
        assert status == 404 and b"private" not in body, path


def test_state_changes_over_http_need_the_token(server: WebServer) -> None:
    folder = server.config.parent / "outputs" / DATE / "alice"
    url = f"/api/outputs/{DATE}/alice/大视频/pin"
    assert curl(server, url, "-X", "POST")[0] == 403
    assert not (folder / "大视频.keep").exists()
    assert curl(server, url, "-X", "POST", "-H", f"X-CSRF-Token: {token(server, 'bob')}")[0] == 403
    assert curl(server, url, "-X", "POST", "-H", f"X-CSRF-Token: {token(server)}")[0] == 200
    assert (folder / "大视频.keep").exists()


def test_a_video_goes_out_through_sendfile(server: WebServer, tmp_path: Path) -> None:
    """strace on the gunicorn worker: the body leaves with sendfile(2), whole and for a range, not read+send."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed (Debian package strace)")
    trace = tmp_path / "trace"
    (worker,) = server.worker_pids()
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=sendfile,read,recvfrom,sendto,write", "-o",
                               str(trace), "-p", str(worker)], stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # attached to every thread
        whole = curl(server, f"/files/outputs/{DATE}/alice/大视频.mp4", "-o", str(tmp_path / "out.mp4"))
        part = curl(server, f"/files/outputs/{DATE}/alice/大视频.mp4", "-H", "Range: bytes=1000000-", "-o",
                    str(tmp_path / "part.mp4"))
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    assert (whole[0], part[0]) == (200, 206)
    assert (tmp_path / "out.mp4").stat().st_size == VIDEO_BYTES
    text = trace.read_text()
    sent = sum(int(n) for n in re.findall(r"sendfile\(.*\) = (\d+)", text))
    assert sent == VIDEO_BYTES + (VIDEO_BYTES - 1_000_000), text[-2000:]
    offsets = re.findall(r"sendfile\(\d+, \d+, \[(\d+)\]", text)
    assert "1000000" in offsets, offsets
    big_reads = [int(n) for n in re.findall(r"read\(\d+, .*\) = (\d+)", text) if int(n) >= 1 << 16]
    assert not big_reads, big_reads  # no file content passed through Python


def test_an_upload_streams_to_disk_without_growing_the_worker(server: WebServer, tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    with open(big, "wb") as handle:
        handle.truncate(96 << 20)
    audio = tmp_path / "speech.wav"
    audio.write_bytes(b"RIFF" + b"\0" * 1000)
    (worker,) = server.worker_pids()
    before = _hwm_kib(worker)
    status, _, body = curl(server, "/api/upload", "-H", f"X-CSRF-Token: {token(server)}", "-F", "name=大文件",
                           "-F", f"audio=@{audio}", "-F", f"video=@{big}")
    assert status == 200, body
    inbox = server.config.parent / "inbox" / "alice"
    assert sorted(os.listdir(inbox)) == ["大文件.mp4", "大文件.wav"]
    assert (inbox / "大文件.mp4").stat().st_size == 96 << 20
    grown = _hwm_kib(worker) - before
    assert grown < 24 << 10, f"the worker's peak memory grew by {grown} KiB for a 96 MiB upload"


def _hwm_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))


def test_the_server_stops_on_sigterm(tmp_path: Path) -> None:
    web = WebServer(tmp_path).start()
    assert curl(web, "/api/me", interface=None)[0] == 200  # 127.0.0.1 is trusted by default
    web.stop()
    wait_for(lambda: web.proc is None, 5, "the server to stop")


@pytest.mark.skipif(shutil.which("strace") is None or shutil.which("systemd-analyze") is None,
                    reason="needs strace and systemd-analyze (Debian packages strace, systemd)")
def test_the_web_server_stays_inside_its_units_sandbox(tmp_path: Path) -> None:
    """Every system call, socket family and device of a traced `lipsyncd web` doing a password login (argon2),
    a listing, a ranged sendfile and an upload is allowed by lipsyncd-web.service, with no writable+executable
    memory (MemoryDenyWriteExecute=yes)."""
    from tests.test_units import DEVICES_CLOSED, check_against_unit, read_trace, stop_traced, writable_executable_maps

    add_output(tmp_path, "alice", "clip", video=os.urandom(1 << 20))
    web = WebServer(tmp_path, auth="password")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(web.config), "web-user", "add", "alice",
                    "--password-stdin"], input="pw\n", text=True, check=True, env=env, cwd=ROOT, timeout=60)
    trace_file = tmp_path / "strace.txt"
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["strace", "-f", "-qq", "-s", "256", "-e", "signal=none", "-o", str(trace_file),
                             sys.executable, "-m", "daemon.cli", "--config", str(web.config), "web"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    jar = tmp_path / "cookies"
    try:
        wait_for(lambda: proc.poll() is not None or curl_ok(web), 60, "the traced server")
        assert proc.poll() is None, (tmp_path / "web.log").read_text()
        form = curl(web, "/login", "-c", str(jar), "-b", str(jar), interface=None, user=None)[2].decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        assert curl(web, "/login", "-c", str(jar), "-b", str(jar), "--data-urlencode", "name=alice",
                    "--data-urlencode", "password=pw", "--data-urlencode", f"csrf={csrf}",
                    interface=None, user=None)[0] == 302
        me = json.loads(curl(web, "/api/me", "-b", str(jar), interface=None, user=None)[2])
        assert json.loads(curl(web, "/api/outputs", "-b", str(jar), interface=None, user=None)[2])["total"] == 1
        assert curl(web, f"/files/outputs/{DATE}/alice/clip.mp4", "-b", str(jar), "-H", "Range: bytes=10-",
                    interface=None, user=None)[0] == 206
        (tmp_path / "a.wav").write_bytes(b"RIFF")
        assert curl(web, "/api/upload", "-b", str(jar), "-H", f"X-CSRF-Token: {me['csrf']}", "-F", "name=up",
                    "-F", f"audio=@{tmp_path / 'a.wav'}", "-F", f"video=@{tmp_path / 'a.wav'};filename=v.mp4",
                    interface=None, user=None)[0] == 200
    finally:
        stop_traced(proc, trace_file, 60)  # the first tracee: gunicorn's arbiter
        log.close()
    trace = read_trace(trace_file)
    assert trace.calls("sendfile"), "the traced server sent no file"
    check_against_unit("lipsyncd-web.service", trace, {"AF_UNIX", "AF_INET", "AF_INET6"}, DEVICES_CLOSED)
    assert writable_executable_maps(trace) == []

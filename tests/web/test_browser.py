"""The page in real headless Chromium (Debian's chromium, driven by Playwright), against a running `lipsyncd web`
and a running daemon whose engine is the fast ffmpeg mux (tests/daemon_harness.py).

One person's whole visit: log in, see the history, play a video (currentTime advances), select two and delete
them, upload a pair and watch it become a result, switch to Chinese; then an admin's page. Screenshots go to
$LIPSYNCD_SCREENSHOTS when it is set (the issue's note shows them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import config as configmod
from daemon.janitor.run import run_pass
from tests.daemon_harness import ROOT, Daemon, slow_mux_argv, wait_for
from tests.web.support import DATE, WebServer, add_output

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed (Debian package)")
SHOTS = os.environ.get("LIPSYNCD_SCREENSHOTS")


def clip(path: Path, seconds: float) -> Path:
    """A real H.264 + AAC MP4 (ffmpeg's test pattern and a tone) and its poster beside it."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=320x180:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
                   check=True, timeout=60)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "1", "-i", str(path), "-frames:v", "1",
                    str(path.with_suffix(".jpg"))], check=True, timeout=60)
    return path


def until(page: playwright.Page, script: str, timeout: float = 20.0, what: str = "") -> None:
    """Poll *script* with page.evaluate (the page's CSP forbids the eval that wait_for_function uses)."""
    wait_for(lambda: page.evaluate(script), timeout, what or script, interval=0.2)


def shot(page: playwright.Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"web-{name}.png"), full_page=True)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    """`lipsyncd web` (password accounts alice and admin) over alice's four results and one of bob's."""
    media = tmp_path / "media"
    media.mkdir()
    video = clip(media / "clip.mp4", 6)
    for i, stem in enumerate(["产品介绍", "training-01", "training-02", "客服问答"]):
        path = add_output(tmp_path, "alice", stem, video=video.read_bytes(), record={"frames": 150, "fps": 25.0})
        shutil.copyfile(video.with_suffix(".jpg"), path.with_suffix(".jpg"))
        then = time.time() - i * 3600  # the first is the newest
        for member in (path, path.with_suffix(".jpg"), path.with_suffix(".json")):
            os.utime(member, (then, then))
    add_output(tmp_path, "bob", "bobs-secret")
    # The daemon's engine: the ffmpeg mux after a pause, so the queue shows the job while it runs.
    web = WebServer(tmp_path, {"pipeline": {"command": {"argv": slow_mux_argv(4), "timeout_seconds": 120}}},
                    auth="password", admins=["admin"])
    for name, password in (("alice", "alice-pass"), ("admin", "admin-pass")):
        subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(web.config), "web-user", "add", name,
                        "--password-stdin"], input=password + "\n", text=True, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60)
    config = configmod.load(web.config)
    run_pass(config, now=time.time() - 3600)  # two points an hour apart for the admin's chart
    run_pass(config)
    add_output(tmp_path, "bob", "expired-one", age_days=30)  # what the next pass will delete
    web.start()
    try:
        yield web
    finally:
        web.stop()


@pytest.fixture
def site(web: WebServer) -> Iterator[tuple[WebServer, Daemon]]:
    """The page and the daemon, which turns an upload into a result (the fast ffmpeg mux engine)."""
    with Daemon(web.config) as daemon:
        yield web, daemon


@pytest.fixture
def browser() -> Iterator[playwright.Browser]:
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def log_in(browser: playwright.Browser, web: WebServer, name: str, password: str,
           locale: str = "en-GB") -> playwright.Page:
    page = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900}).new_page()
    page.goto(web.url + "/")
    assert page.url.endswith("/login")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#login-button")
    until(page, "document.querySelector('#count') && document.querySelector('#count').textContent !== ''")
    return page


def test_a_persons_visit(site: tuple[WebServer, Daemon], browser: playwright.Browser, short_wav: Path,
                         small_mp4: Path) -> None:
    web, _daemon = site
    page = browser.new_context(locale="en-GB").new_page()
    page.goto(web.url + "/")
    page.fill("#name", "alice")
    page.fill("#password", "wrong")
    page.click("#login-button")
    assert "Wrong name or password" in page.inner_text("#login-error")
    shot(page, "login")

    page = log_in(browser, web, "alice", "alice-pass")
    cards = page.locator(".card")
    assert cards.count() == 4
    assert page.inner_text("#outputs").count("产品介绍") == 1 and "bobs-secret" not in page.content()
    assert page.locator(".card").first.get_attribute("data-name") == "产品介绍"  # newest first
    assert "6.0 s" in page.inner_text(".card >> nth=0")
    shot(page, "history")

    # Play in the page: the video's clock moves.
    page.locator(".card >> nth=0 >> button.play").click()
    until(page, "document.querySelector('#video').currentTime > 1.0")
    shot(page, "play")
    page.click("#player-close")

    # Search.
    page.fill("#search", "training")
    until(page, "document.querySelectorAll('.card').length === 2")
    page.fill("#search", "")
    until(page, "document.querySelectorAll('.card').length === 4")

    # Pin one: the janitor's marker appears, and the card says so and stops showing an expiry.
    page.click('.card[data-name="客服问答"] button.pin')
    page.wait_for_selector('.card[data-name="客服问答"] .tags .pinned')
    assert (web.config.parent / "outputs" / DATE / "alice" / "客服问答.keep").exists()
    assert "kept (pinned)" in page.inner_text('.card[data-name="客服问答"] .expiry')

    # Select two and delete them, after the confirmation.
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.check('.card[data-name="training-01"] .pick')
    page.check('.card[data-name="training-02"] .pick')
    page.click("#delete-selected")
    until(page, "document.querySelectorAll('.card').length === 2")
    assert dialogs and "Delete 2 result(s)?" in dialogs[0]
    folder = web.config.parent / "outputs" / DATE / "alice"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{stem}.{s}" for stem in ("产品介绍", "客服问答") for s in ("mp4", "json", "jpg")] + ["客服问答.keep"])
    shot(page, "deleted")

    # Upload a pair and watch it become a result.
    page.click("nav [data-tab=upload]")
    page.fill("#up-name", "上传测试")
    page.set_input_files("#up-audio", str(short_wav))
    page.set_input_files("#up-video", str(small_mp4))
    page.click("#up-send")
    until(page, "document.querySelector('#up-result').textContent.includes('上传测试.wav')")
    shot(page, "upload")
    page.click("nav [data-tab=queue]")
    until(page, "document.querySelector('#running').textContent.includes('上传测试')", 60, "the job running")
    shot(page, "queue")
    page.click("nav [data-tab=history]")
    until(page, """async () => { const r = await fetch('/api/outputs?q=上传测试');
                                 return (await r.json()).outputs.length === 1; }""", 120, "the upload's result")
    page.fill("#search", "上传测试")
    page.wait_for_selector('.card[data-name="上传测试"]')
    assert list((web.config.parent / "outputs").glob("*/alice/上传测试.mp4"))
    shot(page, "result")
    page.fill("#search", "")

    # Chinese.
    page.click("#lang-switch")
    until(page, "document.querySelector('nav [data-tab=history]').textContent === '历史记录'")
    assert "删除所选" in page.inner_text("#delete-selected")
    shot(page, "zh")


def test_chinese_browsers_get_chinese_and_admins_see_everything(web: WebServer, browser: playwright.Browser) -> None:
    page = log_in(browser, web, "admin", "admin-pass", locale="zh-CN")
    assert page.inner_text("nav [data-tab=history]") == "历史记录"
    page.select_option("#user-select", "bob")
    page.wait_for_selector('.card[data-name="bobs-secret"]')
    page.click("nav [data-tab=admin]")
    until(page, "document.querySelectorAll('#chart svg polyline').length === 1")
    points = page.get_attribute("#chart svg polyline", "points").split()
    assert len(points) == 2 and points[0] != points[1]
    assert "alice" in page.inner_text("#per-user") and DATE in page.inner_text("#per-date")
    until(page, "document.querySelector('#status').textContent.includes('heartbeat')")
    page.click("#plan-button")
    until(page, "document.querySelector('.plan-totals') !== null")
    assert "expired-one.mp4" in page.inner_text("#plan") and "bobs-secret" not in page.inner_text("#plan")
    shot(page, "admin")

"""The JSON API and files of `lipsyncd web`, driven with Flask's test client on a real data tree.

Each security rule of the issue has its own test: another user's name in the URL, `..`, `%2e%2e`, `%2f`,
symlinks planted in the outputs tree, a forged proxy header from an untrusted address, a missing CSRF token.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from daemon import config as configmod
from daemon.janitor.run import run_pass
from daemon.jobs.job import InputFile, Job, write_json_atomic
from daemon.web import auth
from daemon.web.app import create_app
from tests.daemon_harness import ROOT, write_config
from tests.web.support import DATE, add_output

ALICE = {"Remote-User": "alice"}
SECRET = b"bob's private video bytes"


def make_client(root: Path, **web: Any) -> FlaskClient:
    config = configmod.load(write_config(root, web=web) if web else write_config(root))
    app = create_app(config)
    return app.test_client()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    add_output(tmp_path, "alice", "你好世界", video=bytes(range(256)) * 64)
    add_output(tmp_path, "alice", "second")
    add_output(tmp_path, "bob", "secret", video=SECRET)
    return tmp_path


@pytest.fixture
def client(tree: Path) -> FlaskClient:
    return make_client(tree)


def csrf(client: FlaskClient, headers: dict[str, str] = ALICE) -> dict[str, str]:
    token = client.get("/api/me", headers=headers).json["csrf"]
    return {**headers, "X-CSRF-Token": token}


def test_me_names_the_proxy_user_and_hands_out_a_token(client: FlaskClient) -> None:
    me = client.get("/api/me", headers=ALICE).json
    assert me["user"] == "alice" and me["admin"] is False and len(me["csrf"]) > 20


def test_no_header_or_an_untrusted_address_is_401(client: FlaskClient, tree: Path) -> None:
    assert client.get("/api/me").status_code == 401
    forged = client.get("/api/outputs", headers=ALICE, environ_base={"REMOTE_ADDR": "192.168.1.50"})
    assert forged.status_code == 401 and "你好世界" not in forged.get_data(as_text=True)
    assert client.get(f"/files/outputs/{DATE}/alice/second.mp4", headers=ALICE,
                      environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 401
    # X-Forwarded-For cannot make an untrusted peer trusted.
    assert client.get("/api/me", headers={**ALICE, "X-Forwarded-For": "127.0.0.1"},
                      environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 401
    # A header value that is no user folder name is no user.
    assert client.get("/api/me", headers={"Remote-User": "../bob"}).status_code == 401
    # Only the login page and static files are open (and in proxy mode there is no login page).
    assert client.get("/").status_code == 401
    assert client.get("/static/app.js").status_code == 200


def test_a_trusted_network_is_believed(tree: Path) -> None:
    client = make_client(tree, trusted_proxies=["10.1.0.0/16"])
    assert client.get("/api/me", headers=ALICE, environ_base={"REMOTE_ADDR": "10.1.2.3"}).json["user"] == "alice"
    assert client.get("/api/me", headers=ALICE, environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 401


def test_outputs_lists_only_the_callers_results_newest_first(client: FlaskClient, tree: Path) -> None:
    os.utime(tree / "outputs" / DATE / "alice" / "second.json", (time.time() + 5, time.time() + 5))
    listed = client.get("/api/outputs", headers=ALICE).json
    assert [o["name"] for o in listed["outputs"]] == ["second", "你好世界"]
    first = listed["outputs"][1]
    assert first["video"] == f"/files/outputs/{DATE}/alice/你好世界.mp4"
    assert first["bytes"] == 256 * 64 + len(b"\xff\xd8poster") + len(
        (tree / "outputs" / DATE / "alice" / "你好世界.json").read_bytes())
    assert (first["engine"], first["duration"], first["sync"]["verdict"]) == ("command", 2.0, "in sync")
    assert first["pinned"] is False and first["archived"] is False and first["expires"] > time.time()
    assert client.get("/api/outputs?q=SEC", headers=ALICE).json["outputs"][0]["name"] == "second"
    # Another person's name in the query: not found, and nothing of theirs in the answer.
    other = client.get("/api/outputs?user=bob", headers=ALICE)
    assert other.status_code == 404 and "secret" not in other.get_data(as_text=True)


def test_admins_see_everyone(tree: Path) -> None:
    client = make_client(tree, admins=["carol"])
    carol = {"Remote-User": "carol"}
    assert client.get("/api/me", headers=carol).json["admin"] is True
    assert [o["name"] for o in client.get("/api/outputs?user=bob", headers=carol).json["outputs"]] == ["secret"]
    assert client.get(f"/files/outputs/{DATE}/bob/secret.mp4", headers=carol).data == SECRET
    assert set(client.get("/api/users", headers=carol).json["users"]) == {"alice", "bob"}
    assert client.get("/api/users", headers=ALICE).status_code == 404
    assert client.get("/api/disk", headers=ALICE).status_code == 404


@pytest.mark.parametrize("path", [
    f"/files/outputs/{DATE}/bob/secret.mp4",  # another user's name
    f"/files/outputs/{DATE}/alice/../bob/secret.mp4",
    f"/files/outputs/{DATE}/alice/..%2fbob%2fsecret.mp4",  # %2f
    f"/files/outputs/{DATE}/alice/%2e%2e%2fbob%2fsecret.mp4",  # %2e%2e
    f"/files/outputs/{DATE}/%2e%2e/{DATE}/bob/secret.mp4",
    f"/files/outputs/{DATE}/alice%2f..%2fbob/secret.mp4",
    f"/files/outputs/%2e%2e/outputs/{DATE}/bob/secret.mp4",
    "/files/outputs/../../etc/passwd",
])
def test_no_url_reaches_another_users_file(client: FlaskClient, path: str) -> None:
    response = client.get(path, headers=ALICE)
    assert response.status_code == 404, path
    assert SECRET not in response.data


def test_symlinks_planted_in_the_outputs_tree_are_not_followed(client: FlaskClient, tree: Path) -> None:
    mine = tree / "outputs" / DATE / "alice"
    bob = tree / "outputs" / DATE / "bob"
    (mine / "stolen.mp4").symlink_to(bob / "secret.mp4")  # a file link
    (mine / "stolen.json").symlink_to(bob / "secret.json")
    (tree / "outputs" / "2026-11-29").mkdir()
    (tree / "outputs" / "2026-11-29" / "alice").symlink_to(bob)  # a user-folder link
    (tree / "outputs" / "2026-11-28").symlink_to(tree / "outputs" / DATE)  # a date-folder link (alice -> ...)
    (mine / "fifo.mp4").parent.mkdir(exist_ok=True)
    os.mkfifo(mine / "fifo.mp4")  # must not hang the request
    for path in (f"{DATE}/alice/stolen.mp4", "2026-11-29/alice/secret.mp4", "2026-11-28/bob/secret.mp4",
                 "2026-11-28/alice/second.mp4", f"{DATE}/alice/fifo.mp4"):
        response = client.get(f"/files/outputs/{path}", headers=ALICE)
        assert response.status_code == 404, path
        assert SECRET not in response.data
    listed = client.get("/api/outputs", headers=ALICE).get_data(as_text=True)
    assert "stolen" not in listed and "secret" not in listed and "2026-11-28" not in listed
    for path in ("2026-11-29/alice/secret", f"{DATE}/alice/stolen"):
        assert client.post(f"/api/outputs/{path}/delete", headers=csrf(client)).status_code == 404
    assert (bob / "secret.mp4").read_bytes() == SECRET


def test_range_requests_answer_206_with_the_exact_bytes(client: FlaskClient, tree: Path) -> None:
    data = (tree / "outputs" / DATE / "alice" / "你好世界.mp4").read_bytes()
    url = f"/files/outputs/{DATE}/alice/你好世界.mp4"
    whole = client.get(url, headers=ALICE)
    assert whole.status_code == 200 and whole.data == data and whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Content-Type"] == "video/mp4"
    part = client.get(url, headers={**ALICE, "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.data == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert part.headers["Content-Length"] == "1000"
    tail = client.get(url, headers={**ALICE, "Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.data == data[-100:]
    beyond = client.get(url, headers={**ALICE, "Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    again = client.get(url, headers={**ALICE, "If-None-Match": whole.headers["ETag"]})
    assert again.status_code == 304


def test_download_keeps_the_chinese_name(client: FlaskClient) -> None:
    response = client.get(f"/files/outputs/{DATE}/alice/你好世界.mp4?download=1", headers=ALICE)
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"____.mp4\"; filename*=UTF-8''%E4%BD%A0%E5%A5%BD%E4%B8%96%E7%95%8C.mp4")


def test_every_response_carries_the_security_headers(client: FlaskClient) -> None:
    for response in (client.get("/api/me", headers=ALICE), client.get("/", headers=ALICE), client.get("/api/me"),
                     client.get(f"/files/outputs/{DATE}/bob/secret.mp4", headers=ALICE)):
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("action", ["delete", "pin", "unpin"])
def test_state_changes_need_the_csrf_token(client: FlaskClient, tree: Path, action: str) -> None:
    folder = tree / "outputs" / DATE / "alice"
    if action == "unpin":
        (folder / "second.keep").touch()
    url = f"/api/outputs/{DATE}/alice/second/{action}"
    before = sorted(os.listdir(folder))
    assert client.post(url, headers=ALICE).status_code == 403
    assert client.post(url, headers={**ALICE, "X-CSRF-Token": "forged"}).status_code == 403
    bobs = client.get("/api/me", headers={"Remote-User": "bob"}).json["csrf"]  # another person's token
    assert client.post(url, headers={**ALICE, "X-CSRF-Token": bobs}).status_code == 403
    assert sorted(os.listdir(folder)) == before
    assert client.post(url, headers=csrf(client)).status_code == 200
    assert sorted(os.listdir(folder)) != before


def test_delete_removes_the_whole_group_and_only_the_owners(client: FlaskClient, tree: Path) -> None:
    folder = tree / "outputs" / DATE / "alice"
    (folder / "second.mp4.keep").touch()
    response = client.post(f"/api/outputs/{DATE}/alice/second/delete", headers=csrf(client))
    assert sorted(response.json["removed"]) == ["second.jpg", "second.json", "second.mp4", "second.mp4.keep"]
    assert sorted(os.listdir(folder)) == ["你好世界.jpg", "你好世界.json", "你好世界.mp4"]
    # Another user's result, by name in the URL: 404, and it stays.
    assert client.post(f"/api/outputs/{DATE}/bob/secret/delete", headers=csrf(client)).status_code == 404
    assert client.post(f"/api/outputs/{DATE}/alice/..%2fbob%2fsecret/delete", headers=csrf(client)).status_code == 404
    assert (tree / "outputs" / DATE / "bob" / "secret.mp4").read_bytes() == SECRET


def test_a_pin_from_the_page_is_honoured_by_the_real_janitor(tmp_path: Path) -> None:
    add_output(tmp_path, "alice", "keep-me", age_days=30)
    add_output(tmp_path, "alice", "let-go", age_days=30)
    client = make_client(tmp_path)
    pinned = client.post(f"/api/outputs/{DATE}/alice/keep-me/pin", headers=csrf(client)).json
    assert pinned == {"ok": True, "pinned": True, "pinned_by": "file"}
    listed = {o["name"]: o for o in client.get("/api/outputs", headers=ALICE).json["outputs"]}
    assert listed["keep-me"]["expires"] is None and listed["let-go"]["expires"] < time.time()
    plan = run_pass(configmod.load(tmp_path / "lipsyncd.yaml"), dry_run=True).to_dict()
    doomed = json.dumps(plan["actions"], ensure_ascii=False)
    assert "let-go" in doomed and "keep-me" not in doomed
    client.post(f"/api/outputs/{DATE}/alice/keep-me/unpin", headers=csrf(client))
    plan = run_pass(configmod.load(tmp_path / "lipsyncd.yaml"), dry_run=True).to_dict()
    assert "keep-me" in json.dumps(plan["actions"], ensure_ascii=False)


def test_a_folder_pin_shows_and_cannot_be_undone_from_one_result(client: FlaskClient, tree: Path) -> None:
    (tree / "outputs" / DATE / ".keep").touch()
    listed = client.get("/api/outputs", headers=ALICE).json["outputs"]
    assert {o["pinned_by"] for o in listed} == {"folder"}
    assert client.post(f"/api/outputs/{DATE}/alice/second/unpin", headers=csrf(client)).json["pinned"] is True


def test_upload_lands_in_the_callers_inbox_under_the_chosen_name(client: FlaskClient, tree: Path,
                                                                  short_wav: Path, small_mp4: Path) -> None:
    with open(short_wav, "rb") as audio, open(small_mp4, "rb") as video:
        response = client.post("/api/upload", headers=csrf(client), data={
            "name": "讲话", "audio": (audio, "../../etc/evil.wav"), "video": (video, "/tmp/x.mp4")})
    assert response.status_code == 200, response.json
    assert response.json["inbox"] == ["讲话.mp4", "讲话.wav"]
    inbox = tree / "inbox" / "alice"
    assert sorted(os.listdir(inbox)) == ["讲话.mp4", "讲话.wav"]  # no temp left, nothing elsewhere
    assert (inbox / "讲话.wav").read_bytes() == short_wav.read_bytes()
    assert (inbox / "讲话.mp4").read_bytes() == small_mp4.read_bytes()
    assert not (tree / "etc").exists()


@pytest.mark.parametrize(("form", "why"), [
    ({"name": "../escape"}, "path separator"),
    ({"name": ".hidden"}, "starts with a dot"),
    ({"name": "a@b"}, "@"),
])
def test_upload_cannot_choose_a_path(client: FlaskClient, tree: Path, form: dict[str, str], why: str) -> None:
    response = client.post("/api/upload", headers=csrf(client), data={
        **form, "audio": (io.BytesIO(b"RIFF...."), "a.wav"), "video": (io.BytesIO(b"\x00" * 100), "v.mp4")})
    assert response.status_code == 400 and why in response.json["error"]
    assert os.listdir(tree / "inbox" / "alice") == []  # the temps are gone too


def test_upload_refuses_wrong_kinds_and_taken_names(client: FlaskClient, tree: Path) -> None:
    response = client.post("/api/upload", headers=csrf(client), data={
        "name": "x", "audio": (io.BytesIO(b"x"), "notes.txt"), "video": (io.BytesIO(b"x"), "v.mp4")})
    assert response.status_code == 400 and "notes.txt does not look like audio" in response.json["error"]
    (tree / "inbox" / "alice").mkdir(exist_ok=True)
    (tree / "inbox" / "alice" / "x.mp4").write_bytes(b"waiting")
    response = client.post("/api/upload", headers=csrf(client), data={
        "name": "x", "audio": (io.BytesIO(b"x"), "a.wav"), "video": (io.BytesIO(b"new"), "v.mp4")})
    assert response.status_code == 400 and "already waiting" in response.json["error"]
    assert (tree / "inbox" / "alice" / "x.mp4").read_bytes() == b"waiting"
    assert sorted(os.listdir(tree / "inbox" / "alice")) == ["x.mp4"]


def test_upload_needs_csrf_and_keeps_to_upload_max_mb(tmp_path: Path) -> None:
    client = make_client(tmp_path, upload_max_mb=1)
    def body() -> dict[str, Any]:
        return {"name": "big", "audio": (io.BytesIO(b"x"), "a.wav"), "video": (io.BytesIO(b"\0" * (3 << 20)), "v.mp4")}
    assert client.post("/api/upload", headers=ALICE, data=body()).status_code == 403
    response = client.post("/api/upload", headers=csrf(client), data=body())
    assert response.status_code == 413 and "web.upload_max_mb" in response.json["error"]
    assert os.listdir(tmp_path / "inbox" / "alice") == []


def test_upload_with_a_saved_avatar(client: FlaskClient, tree: Path) -> None:
    (tree / "avatars" / "alice").mkdir(parents=True)
    (tree / "avatars" / "alice" / "anchor.mp4").write_bytes(b"avatar")
    assert client.get("/api/avatars", headers=ALICE).json["avatars"] == ["anchor"]
    response = client.post("/api/upload", headers=csrf(client), data={
        "name": "news", "avatar": "anchor", "audio": (io.BytesIO(b"RIFF"), "speech.wav")})
    assert response.json["inbox"] == ["news@anchor.wav"]
    response = client.post("/api/upload", headers=csrf(client), data={
        "name": "news2", "avatar": "bobs-avatar", "audio": (io.BytesIO(b"RIFF"), "speech.wav")})
    assert response.status_code == 400


def add_job(root: Path, job_id: str, user: str, stem: str) -> None:
    folder = root / "spool" / job_id
    folder.mkdir(parents=True)
    job = Job(id=job_id, user=user, stem=stem, audio=InputFile(f"{stem}.wav", f"{stem}.wav"),
              video=InputFile(f"{stem}.mp4", f"{stem}.mp4"), created=time.time() - 5, attempts=1)
    write_json_atomic(folder / "job.json", job.to_dict())


def test_jobs_shows_only_own_queue_and_failures_and_retry_puts_them_back(client: FlaskClient, tree: Path) -> None:
    add_job(tree, "j-alice", "alice", "waiting-one")
    add_job(tree, "j-bob", "bob", "bobs-job")
    failed = tree / "failed" / DATE / "alice" / "broken"
    failed.mkdir(parents=True)
    (failed / "error.txt").write_text("broken.mp4 has no video stream: export it again", encoding="utf-8")
    (failed / "job.json").write_text(json.dumps({"id": "j-old", "user": "alice"}), encoding="utf-8")
    (failed / "broken.wav").write_bytes(b"RIFF")
    (failed / "broken.mp4").write_bytes(b"not a video")
    bob_failed = tree / "failed" / DATE / "bob" / "bobs-failure"
    bob_failed.mkdir(parents=True)
    (bob_failed / "error.txt").write_text("bob's error", encoding="utf-8")
    (tree / "inbox" / "alice").mkdir(parents=True)
    (tree / "inbox" / "alice" / "next.mp4").write_bytes(b"v")
    (tree / "inbox" / "alice" / ".next.wav.part").write_bytes(b"a")  # still being copied: not shown
    jobs = client.get("/api/jobs", headers=ALICE).json
    assert [j["name"] for j in jobs["queued"]] == ["waiting-one"] and jobs["running"] == []
    assert jobs["inbox"] == ["next.mp4"]
    assert [(f["name"], f["error"]) for f in jobs["failed"]] == [
        ("broken", "broken.mp4 has no video stream: export it again")]
    assert client.post(f"/api/failed/{DATE}/alice/broken/retry", headers=ALICE).status_code == 403
    assert client.post(f"/api/failed/{DATE}/bob/bobs-failure/retry", headers=csrf(client)).status_code == 404
    response = client.post(f"/api/failed/{DATE}/alice/broken/retry", headers=csrf(client))
    assert sorted(response.json["inbox"]) == ["broken.mp4", "broken.wav"]
    assert sorted(os.listdir(tree / "inbox" / "alice")) == [".next.wav.part", "broken.mp4", "broken.wav", "next.mp4"]
    assert not failed.exists() and bob_failed.exists()


def web_user(root: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(root / "lipsyncd.yaml"), "web-user",
                           *args, *(["--password-stdin"] if password is not None else [])],
                          input=(password or "") + "\n", capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def login(client: FlaskClient, name: str, password: str) -> Any:
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf" value="')[1].split('"')[0]
    return client.post("/login", data={"name": name, "password": password, "csrf": token})


def test_password_accounts_login_sessions_and_rate_limit(tmp_path: Path) -> None:
    client = make_client(tmp_path, auth="password")
    assert web_user(tmp_path, "add", "alice", password="correct horse").returncode == 0
    assert web_user(tmp_path, "add", "alice", password="again").returncode == 1
    stored = json.loads((tmp_path / "state" / "web-users.json").read_text())
    assert stored["alice"].startswith("$argon2id$") and "correct horse" not in json.dumps(stored)
    assert (tmp_path / "state" / "web-users.json").stat().st_mode & 0o777 == 0o600
    # No anonymous access; the header of proxy mode means nothing here.
    assert client.get("/api/me", headers=ALICE).status_code == 401
    assert client.get("/").headers["Location"].endswith("/login")
    assert login(client, "alice", "wrong").status_code == 401
    response = login(client, "alice", "correct horse")
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/me").json["user"] == "alice"
    # A forged cookie is no session.
    other = make_client(tmp_path, auth="password")
    other.set_cookie("lipsyncd_session", cookie.split(";")[0].split("=", 1)[1][:-4] + "AAAA")
    assert other.get("/api/me").status_code == 401
    # A removed account's session ends.
    assert web_user(tmp_path, "remove", "alice").returncode == 0
    assert client.get("/api/me").status_code == 401


def test_login_is_rate_limited(tmp_path: Path) -> None:
    client = make_client(tmp_path, auth="password")
    assert web_user(tmp_path, "add", "bob", password="s3cret").returncode == 0
    for _ in range(5):
        assert login(client, "bob", "guess").status_code == 401
    blocked = login(client, "bob", "s3cret")  # even the right password, for a while
    assert blocked.status_code == 429 and "Too many failed attempts" in blocked.get_data(as_text=True)
    # Behind the reverse proxy, another person (another forwarded address) can still log in with their name.
    assert web_user(tmp_path, "add", "carol", password="c4rol").returncode == 0
    for _ in range(5):
        login(client, "nobody", "guess")  # one address fails often ...
    page = client.get("/login").get_data(as_text=True)  # the same server, so the same limiter
    token = page.split('name="csrf" value="')[1].split('"')[0]
    response = client.post("/login", data={"name": "carol", "password": "c4rol", "csrf": token},
                           headers={"X-Forwarded-For": "10.9.9.9"})
    assert response.status_code == 302  # ... carol, from another address through the proxy, is let in
    assert login(client, "carol", "c4rol").status_code == 429  # while that address itself stays blocked
    assert web_user(tmp_path, "passwd", "bob", password="n3w").returncode == 0
    assert web_user(tmp_path, "passwd", "nobody", password="x").returncode == 1


def test_admin_disk_view_reads_the_janitors_history(tmp_path: Path) -> None:
    add_output(tmp_path, "alice", "a", video=b"\x00" * 10000)
    add_output(tmp_path, "bob", "b", video=b"\x00" * 500, date="2026-11-29")
    config = configmod.load(write_config(tmp_path, web={"admins": ["carol"]}))
    for _ in range(2):
        assert run_pass(config).ok
    history = (tmp_path / "state" / "disk-history.jsonl").read_text().splitlines()
    assert len(history) == 2
    client = create_app(config).test_client()
    disk = client.get("/api/disk", headers={"Remote-User": "carol"}).json
    assert len(disk["history"]) == 2 and disk["history"][0]["filesystems"][0]["level"] == "ok"
    assert disk["per_user"]["alice"] > disk["per_user"]["bob"] > 500
    assert list(disk["per_date"]) == [DATE, "2026-11-29"]
    plan = client.get("/api/admin/plan", headers={"Remote-User": "carol"}).json
    assert plan["dry_run"] is True and "totals" in plan
    status = client.get("/api/admin/status", headers={"Remote-User": "carol"}).json
    assert "queue" in status and "workers" in status


def test_pages_follow_each_other_across_dates(tmp_path: Path) -> None:
    """Only the dates a page reaches are read; the pages still add up to the whole list, newest first."""
    expected = []
    for d, date in enumerate(["2026-11-30", "2026-11-29", "2026-11-28"]):
        for i in range(3):
            path = add_output(tmp_path, "alice", f"r{d}{i}", date=date)
            then = time.time() - d * 86400 - i * 60
            for suffix in ("mp4", "json", "jpg"):
                os.utime(path.with_suffix(f".{suffix}"), (then, then))
            expected.append(f"r{d}{i}")
    client = make_client(tmp_path)
    pages = [client.get(f"/api/outputs?offset={offset}&limit=4", headers=ALICE).json for offset in (0, 4, 8)]
    assert [o["name"] for page in pages for o in page["outputs"]] == expected
    assert {page["total"] for page in pages} == {9}
    searched = client.get("/api/outputs?q=r1&limit=2&offset=1", headers=ALICE).json
    assert ([o["name"] for o in searched["outputs"]], searched["total"]) == (["r11", "r12"], 3)


@pytest.mark.root
def test_members_of_the_admin_group_are_admins(tmp_path: Path) -> None:
    """access.admin_group (default lipsyncd-admin) is looked up in the real group database."""
    if os.geteuid() != 0:
        pytest.skip("needs root to add a local group and account")
    made_group = subprocess.run(["groupadd", "-f", auth.ADMIN_GROUP], capture_output=True).returncode == 0 and \
        subprocess.run(["getent", "group", auth.ADMIN_GROUP], capture_output=True).returncode == 0
    assert made_group
    account = f"lsweb{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "-G", auth.ADMIN_GROUP, account], check=True)
    try:
        add_output(tmp_path, "bob", "secret", video=SECRET)
        client = make_client(tmp_path)
        member = {"Remote-User": account}
        assert client.get("/api/me", headers=member).json["admin"] is True
        assert client.get(f"/files/outputs/{DATE}/bob/secret.mp4", headers=member).data == SECRET
        assert client.get("/api/me", headers=ALICE).json["admin"] is False
    finally:
        subprocess.run(["userdel", account], check=True)


def test_a_folder_read_before_is_read_again_once_it_changes(tmp_path: Path) -> None:
    """The names of a past date's folder are kept between requests; a new result, a pin or a delete there
    (each changes the folder's mtime) shows at once."""
    add_output(tmp_path, "alice", "old")
    folder = tmp_path / "outputs" / DATE / "alice"
    os.utime(folder, (time.time() - 3600, time.time() - 3600))  # unchanged for an hour: its names are kept
    client = make_client(tmp_path)
    assert [o["name"] for o in client.get("/api/outputs", headers=ALICE).json["outputs"]] == ["old"]
    add_output(tmp_path, "alice", "new")
    assert {o["name"] for o in client.get("/api/outputs", headers=ALICE).json["outputs"]} == {"old", "new"}
    os.utime(folder, (time.time() - 3600, time.time() - 3600))
    client.get("/api/outputs", headers=ALICE)
    (folder / "old.keep").touch()
    listed = {o["name"]: o["pinned"] for o in client.get("/api/outputs", headers=ALICE).json["outputs"]}
    assert listed == {"old": True, "new": False}
    os.utime(folder, (time.time() - 3600, time.time() - 3600))
    client.get("/api/outputs", headers=ALICE)
    for suffix in ("mp4", "json", "jpg"):
        (folder / f"new.{suffix}").unlink()
    assert [o["name"] for o in client.get("/api/outputs", headers=ALICE).json["outputs"]] == ["old"]

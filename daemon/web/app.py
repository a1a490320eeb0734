"""The Flask application of `lipsyncd web`: the page, the JSON API of DESIGN.md ("Web") and the files.

Every route but the login page and /static needs a person (auth.py); every POST needs the X-CSRF-Token that
GET /api/me hands out. A person reaches only outputs/<date>/<their name>/ and failed/<date>/<their name>/
(admins may read everyone's); anything else answers 404, as if it did not exist. Every response carries a
Content-Security-Policy (no inline script, frame-ancestors 'none') and X-Content-Type-Options: nosniff.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from daemon import names
from daemon.config import Config
from daemon.web import auth, files, jobs, stream, upload

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_SIZE = 60
PAGE_MAX = 500
LANGUAGES = ("en", "zh")
ACTIONS = ("delete", "pin", "unpin")
HISTORY_FILE = "disk-history.jsonl"  # the janitor's one line per pass (daemon/janitor/run.py)
FORM_EXTRA_BYTES = 1 << 20  # the upload's form fields and multipart framing on top of web.upload_max_mb


def create_app(config: Config) -> Flask:
    """The application for *config*; `lipsyncd web` serves it with gunicorn, tests drive it with its client."""
    app = Flask(__name__)
    app.request_class = upload.UploadRequest
    app.secret_key = auth.secret_key(config.paths.state)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_NAME="lipsyncd_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=auth.SESSION_HOURS),
        MAX_CONTENT_LENGTH=int(config.web.upload_max_mb * (1 << 20)) + FORM_EXTRA_BYTES,
        JSON_AS_ASCII=False,
    )
    app.json.ensure_ascii = False
    app.json.sort_keys = False  # per_date newest first, as built
    accounts = auth.Accounts(config.paths.state)
    proxy = auth.Proxy(config)
    csrf = auth.Csrf(app.secret_key)
    limiter = auth.LoginLimiter()
    retention = files.Retention(config)
    marker = config.janitor.keep_marker
    outputs_root = config.paths.outputs

    def language() -> str:
        chosen = request.cookies.get("lang")
        if chosen in LANGUAGES:
            return chosen
        return request.accept_languages.best_match(LANGUAGES, default="en") or "en"

    @app.before_request
    def identify() -> Any:
        g.user = None
        if config.web.auth == "proxy":
            g.user = proxy.user(request.remote_addr, request.headers)
        else:
            name = session.get("user")
            if isinstance(name, str) and accounts.exists(name):
                g.user = name
        if request.endpoint in ("login", "static"):
            return None
        if g.user is None:
            if config.web.auth == "password" and request.method == "GET" and not request.path.startswith(
                    ("/api/", "/files/")):
                return redirect(url_for("login"))
            return _error(401, "log in first" if config.web.auth == "password" else
                          "no user: this page is reached through the reverse proxy that logs people in")
        g.admin = auth.is_admin(config, g.user)
        if request.method not in ("GET", "HEAD") and not csrf.valid(request.headers.get("X-CSRF-Token"), g.user):
            return _error(403, "missing or invalid X-CSRF-Token (GET /api/me hands one out)")
        return None

    @app.after_request
    def harden(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if isinstance(exc, RequestEntityTooLarge):
            return _error(413, f"the upload is larger than web.upload_max_mb ({config.web.upload_max_mb:g} MB)")
        return _error(exc.code or 500, exc.description or exc.name)

    # -- the page and logging in -------------------------------------------------------------------------------

    @app.get("/")
    def page() -> Any:
        return render_template("index.html", lang=language(), user=g.user, admin=g.admin,
                               password=config.web.auth == "password")

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if config.web.auth != "password":
            abort(404)
        message = ""
        if request.method == "POST":
            name = request.form.get("name", "").strip()
            token = request.form.get("csrf", "")
            keys = auth.login_keys(proxy.client(request.remote_addr, request.headers), name)
            if not csrf.valid(token, "login:" + session.get("login", "")):
                message = "expired"
            elif limiter.blocked(*keys):
                return render_template("login.html", lang=language(), message="blocked",
                                       csrf=_login_token(csrf)), 429
            elif accounts.verify(name, request.form.get("password", "")):
                session.clear()
                session.permanent = True
                session["user"] = name
                return redirect(url_for("page"))
            else:
                limiter.failed(*keys)
                message = "wrong"
        return render_template("login.html", lang=language(), message=message, csrf=_login_token(csrf)), \
            401 if message else 200

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return jsonify({"ok": True})

    @app.get("/api/me")
    def me() -> Any:
        return jsonify({"user": g.user, "admin": g.admin, "csrf": csrf.token(g.user), "auth": config.web.auth,
                        "lang": language()})

    # -- outputs -----------------------------------------------------------------------------------------------

    def whose(user: str | None) -> str:
        """The user whose files the caller asks for: their own, or (admins) anyone's."""
        if not user or user == g.user:
            return g.user
        if not g.admin:
            abort(404)
        return user

    @app.get("/api/outputs")
    def outputs() -> Any:
        user = whose(request.args.get("user"))
        date = request.args.get("date") or None
        if date is not None and not files.is_date(date):
            return _error(400, "date must be YYYY-MM-DD")
        query = (request.args.get("q") or "").strip().lower()
        offset = _int_arg("offset", 0, 0, 10**9)
        limit = _int_arg("limit", PAGE_SIZE, 1, PAGE_MAX)
        folders = files.scan(outputs_root, user, marker, date)
        matching = [folder.matching(query) for folder in folders]
        total = sum(len(stems) for stems in matching)
        listed = []
        skip = offset
        for folder, stems in zip(folders, matching, strict=True):  # only the dates the page reaches are stat'ed
            if len(listed) >= limit:
                break
            if skip >= len(stems):
                skip -= len(stems)
                continue
            try:
                fd = _open_user_folder(outputs_root, folder.date, user)
            except files.NotFound:
                continue
            try:
                outputs = files.stat_date(fd, [folder.output(stem) for stem in stems])
                for output in outputs[skip:skip + limit - len(listed)]:
                    record = files.read_record(fd, output.stem)
                    listed.append(files.describe(output, record, retention, f"/files/outputs/{output.date}/{user}/"))
            finally:
                os.close(fd)
            skip = 0
        return jsonify({"outputs": listed, "total": total, "offset": offset, "limit": limit, "user": user})

    @app.get("/files/outputs/<date>/<user>/<name>")
    def output_file(date: str, user: str, name: str) -> Any:
        user = whose(user)
        try:
            with files.user_folder(outputs_root, date, user) as folder:
                handle = files.open_file(folder, name)
        except files.NotFound:
            abort(404)
        return stream.send(request, handle, name, download=request.args.get("download") == "1")

    @app.post("/api/outputs/<date>/<user>/<name>/<action>")
    def change(date: str, user: str, name: str, action: str) -> Any:
        if action not in ACTIONS or user != g.user:  # only the owner changes their results
            abort(404)
        try:
            with files.user_folder(outputs_root, date, user) as folder:
                if not files.is_name(name) or not files.group_names(folder, name):
                    abort(404)
                if action == "delete":
                    removed = files.delete(folder, name, marker)
                    return jsonify({"ok": True, "removed": removed})
                (files.pin if action == "pin" else files.unpin)(folder, name, marker)
        except files.NotFound:
            abort(404)
        except OSError as exc:  # the server's fault (read-only, permissions), not the person's
            return _error(500, f"the server could not {action} {name}: {exc.strerror}")
        found = [f.output(name) for f in files.scan(outputs_root, user, marker, date) if name in f.stems]
        return jsonify({"ok": True, "pinned": bool(found and found[0].pinned_by),
                        "pinned_by": found[0].pinned_by if found else None})

    # -- the queue, failures, retry ----------------------------------------------------------------------------

    @app.get("/api/jobs")
    def own_jobs() -> Any:
        user = whose(request.args.get("user"))
        everyone = g.admin and request.args.get("all") == "1"
        return jsonify({**jobs.queue(config, None if everyone else user), "inbox": jobs.inbox(config, user),
                        "failed": jobs.failures(config, user)})

    @app.post("/api/failed/<date>/<user>/<name>/retry")
    def retry(date: str, user: str, name: str) -> Any:
        from daemon.commands import retry as retrying

        if user != g.user or not files.is_date(date) or not files.is_name(name):
            abort(404)
        try:
            with files.user_folder(config.paths.failed, date, user) as folder:
                os.close(files.open_dir(folder, name))  # a real folder of theirs, not a symlink
        except files.NotFound:
            abort(404)
        try:
            made = retrying.requeue(config, config.paths.failed / date / user / name)
        except retrying.RetryError as exc:
            return _error(409, str(exc))
        except OSError as exc:
            return _error(500, f"the server could not retry {name}: {exc.strerror}")
        return jsonify({"ok": True, "inbox": [p.name for p in made]})

    # -- uploads -----------------------------------------------------------------------------------------------

    @app.get("/api/avatars")
    def avatars() -> Any:
        return jsonify({"avatars": _avatars(config, g.user)})

    @app.post("/api/upload")
    def upload_pair() -> Any:
        req: upload.UploadRequest = request  # type: ignore[assignment]
        try:
            req.upload_fd = upload.inbox_folder(str(config.paths.inbox), g.user)
        except (files.NotFound, OSError) as exc:
            return _error(500, f"the server cannot write your inbox folder: {getattr(exc, 'strerror', exc)}")
        try:
            made = upload.place(req, _avatars(config, g.user))
        except upload.UploadError as exc:
            return _error(400, str(exc))
        except OSError as exc:
            return _error(500, f"the server could not store the upload: {exc.strerror}")
        finally:
            upload.clean_up(req)
            os.close(req.upload_fd)
        return jsonify({"ok": True, "inbox": made})

    # -- admins ------------------------------------------------------------------------------------------------

    def admin_only() -> None:
        if not g.admin:
            abort(404)

    @app.get("/api/users")
    def users() -> Any:
        admin_only()
        per_user, _ = files.user_bytes(outputs_root)
        return jsonify({"users": sorted(per_user)})

    @app.get("/api/disk")
    def disk_usage() -> Any:
        admin_only()
        from daemon.disk import filesystems

        per_user, per_date = files.user_bytes(outputs_root)
        state = _read_json(config.paths.state / "janitor.json")
        levels = {mount: fs.get("level") for mount, fs in (state.get("filesystems") or {}).items()
                  if isinstance(fs, dict)}
        return jsonify({"history": _history(config.paths.state / HISTORY_FILE), "per_user": per_user,
                        "per_date": dict(sorted(per_date.items(), reverse=True)), "levels": levels,
                        "filesystems": [fs.to_dict() for fs in filesystems(config.paths.folders())],
                        "thresholds": dict(config["janitor"]["disk"])})

    @app.get("/api/admin/status")
    def admin_status() -> Any:
        admin_only()
        from daemon.commands import status

        return jsonify(status.collect(config))

    @app.get("/api/admin/plan")
    def admin_plan() -> Any:
        admin_only()
        from daemon.janitor.run import run_pass

        result = run_pass(config, dry_run=True)
        return jsonify(result.to_dict())

    return app


def _login_token(csrf: auth.Csrf) -> str:
    """A token for the login form, bound to a random value kept in the (pre-login) session."""
    if not session.get("login"):
        session["login"] = os.urandom(12).hex()
    return csrf.token("login:" + session["login"])


def _open_user_folder(root: Path, date: str, user: str) -> int:
    root_fd = files.open_dir(None, str(root))
    try:
        date_fd = files.open_dir(root_fd, date)
        try:
            return files.open_dir(date_fd, user)
        finally:
            os.close(date_fd)
    finally:
        os.close(root_fd)


def _avatars(config: Config, user: str) -> list[str]:
    return sorted(names.parse(name).stem for name in files.own_files(config.paths.avatars, user)
                  if names.parse(name).kind == "video")


def _history(path: Path) -> list[dict[str, Any]]:
    """The janitor's usage points (one JSON object a line); a torn or foreign line is skipped."""
    points = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                point = json.loads(line)
                if isinstance(point, dict) and "time" in point:
                    points.append(point)
    return points


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(request.args.get(name, default))))
    except ValueError:
        return default


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message, "status": status, "time": time.time()})
    response.status_code = status
    return response

"""Who is asking: the reverse proxy's header (from trusted addresses only) or lipsyncd's own accounts.

web.auth proxy: the person is the web.proxy_header value, believed only when the request comes straight from
an address in web.trusted_proxies (the socket's peer, never X-Forwarded-For); otherwise 401.
web.auth password: accounts in paths.state/web-users.json (argon2id hashes from argon2-cffi, made by
`lipsyncd web-user add NAME`), a login page that allows LOGIN_FAILURES failures per address and per name in
LOGIN_WINDOW_SECONDS, and the signed, HttpOnly, SameSite=Strict session cookie Flask keeps.
A person is a user folder name; admins are web.admins and members of access.admin_group.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import json
import pwd
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from daemon import names
from daemon.config import Config
from daemon.files import write_atomic

USERS_FILE = "web-users.json"
SECRET_FILE = "web-secret"
ADMIN_GROUP = "lipsyncd-admin"  # access.admin_group's default, used until that key exists
LOGIN_FAILURES = 5
LOGIN_WINDOW_SECONDS = 300
CSRF_MAX_AGE_SECONDS = 24 * 3600
SESSION_HOURS = 12


class AccountError(Exception):
    """A web-user command that cannot be done, worded for the admin who typed it."""


class Accounts:
    """The password accounts of web.auth: password: {name: argon2 hash} in paths.state, mode 0600."""

    def __init__(self, state: Path) -> None:
        self.path = state / USERS_FILE
        self.hasher = PasswordHasher()

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, accounts: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(accounts, ensure_ascii=False, indent=1), mode=0o600)

    def set(self, name: str, password: str, *, new: bool) -> None:
        why = names.refusal(name)
        if why:
            raise AccountError(f"{name!r} cannot be a user name: {why}")
        if not password:
            raise AccountError("the password is empty")
        accounts = self.load()
        if new and name in accounts:
            raise AccountError(f"{name} already has an account; use `lipsyncd web-user passwd {name}`")
        if not new and name not in accounts:
            raise AccountError(f"{name} has no account; use `lipsyncd web-user add {name}`")
        accounts[name] = self.hasher.hash(password)
        self._save(accounts)

    def remove(self, name: str) -> None:
        accounts = self.load()
        if accounts.pop(name, None) is None:
            raise AccountError(f"{name} has no account")
        self._save(accounts)

    def exists(self, name: str) -> bool:
        return name in self.load()

    def verify(self, name: str, password: str) -> bool:
        """True for the right password; the same work is done for an unknown name (no timing oracle)."""
        stored = self.load().get(name)
        try:
            self.hasher.verify(stored or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False
        return stored is not None


_DUMMY_HASH = PasswordHasher().hash(secrets.token_hex(16))


def secret_key(state: Path) -> bytes:
    """The key that signs session cookies and CSRF tokens: made once in paths.state (0600), kept across restarts."""
    path = state / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        key = path.read_bytes().strip()
        if len(key) >= 32:
            return key
    state.mkdir(parents=True, exist_ok=True)
    write_atomic(path, secrets.token_hex(32), mode=0o600)
    return path.read_bytes().strip()


class LoginLimiter:
    """At most LOGIN_FAILURES failed logins per address and per name in LOGIN_WINDOW_SECONDS (one process)."""

    def __init__(self, failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW_SECONDS) -> None:
        self.failures, self.window = failures, window
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                times = self._seen.get(key)
                while times and now - times[0] > self.window:
                    times.popleft()
                if times and len(times) >= self.failures:
                    return True
        return False

    def failed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._seen.setdefault(key, deque()).append(time.monotonic())


class Proxy:
    """web.auth proxy: the header, from trusted addresses only."""

    def __init__(self, config: Config) -> None:
        self.header = config.web.proxy_header
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.web.trusted_proxies]

    def trusted(self, remote_addr: str | None) -> bool:
        try:
            address = ipaddress.ip_address((remote_addr or "").split("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, remote_addr: str | None, headers: Any) -> str:
        """The browser's address: the proxy's X-Forwarded-For (last hop) when the peer is a trusted proxy, so
        that one person's failed logins behind the proxy do not lock out everyone else."""
        forwarded = headers.get("X-Forwarded-For", "")
        if forwarded and self.trusted(remote_addr):
            return forwarded.split(",")[-1].strip()
        return remote_addr or ""

    def user(self, remote_addr: str | None, headers: Any) -> str | None:
        if not self.trusted(remote_addr):
            return None
        value = headers.get(self.header)
        return value if value and names.refusal(value) is None else None


class Csrf:
    """Tokens bound to the person and signed with the secret key: GET /api/me hands one out."""

    def __init__(self, key: bytes) -> None:
        self.serializer = URLSafeTimedSerializer(key, salt="lipsyncd-csrf")

    def token(self, user: str) -> str:
        return self.serializer.dumps(user)

    def valid(self, token: str | None, user: str) -> bool:
        if not token:
            return False
        try:
            return self.serializer.loads(token, max_age=CSRF_MAX_AGE_SECONDS) == user
        except BadSignature:
            return False


def admin_group(config: Config) -> str:
    """access.admin_group when the configuration has it, else its documented default."""
    access = config.get("access")
    group = access.get("admin_group") if isinstance(access, dict) else None
    return group if isinstance(group, str) and group else ADMIN_GROUP


def is_admin(config: Config, user: str) -> bool:
    """web.admins, or a member of access.admin_group (listed in it, or as the account's primary group)."""
    if user in config.web.admins:
        return True
    try:
        group = grp.getgrnam(admin_group(config))
    except KeyError:
        return False
    account = user
    access = config.get("access")
    if isinstance(access, dict) and isinstance(access.get("accounts"), dict):
        account = str(access["accounts"].get(user, user))
    if account in group.gr_mem:
        return True
    try:
        return pwd.getpwnam(account).pw_gid == group.gr_gid
    except KeyError:
        return False


def login_keys(remote_addr: str | None, name: str) -> tuple[str, str]:
    return f"addr:{remote_addr}", f"user:{name}"


def session_lifetime() -> float:
    return SESSION_HOURS * 3600.0


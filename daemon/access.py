"""Access: who may reach a person's folders.

access.mode shared keeps install.sh's layout: the drop group reads every result. access.mode private makes each
user folder (inbox/<user>, avatars/<user>, outputs/<date>/<user>, failed/<date>/<user>) reachable only by its
account, the admin group and the service, through POSIX ACLs with default entries, so that what is made inside
follows. Date folders can be traversed but not listed, so they do not give away other people's names.

An ACL is written in setfacl's short form with numeric ids (u::rwx,u:1001:rwx,g::---,...,d:...) and stored as
the kernel's system.posix_acl_access / system.posix_acl_default attributes, exactly what setfacl --set writes;
it is read back the same way to change only what differs: fix() is idempotent and says what it changed. No
setfacl process per file: fix-permissions over thousands of results takes a moment. A filesystem without ACLs
cannot hold private folders; check() says so, and the daemon refuses to start rather than leave them open.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pwd
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from daemon import names

REMOVED_FILE = "users-removed.json"  # in paths.state: accounts `users remove` took access from


class Mode(str, Enum):
    SHARED = "shared"
    PRIVATE = "private"


class Kind(Enum):
    """What a path is, which decides the ACL it gets."""

    DROP_TOP = "drop-top"  # inbox/, avatars/: people drop into folders below
    RESULT_TOP = "result-top"  # outputs/, failed/: dated folders below
    SPOOL = "spool"  # jobs in progress: the service's own
    DATE = "date"  # outputs/<date>/, failed/<date>/
    DROP_USER = "drop-user"  # inbox/<user>/, avatars/<user>/
    RESULT_USER = "result-user"  # outputs/<date>/<user>/, failed/<date>/<user>/ and folders below
    RESULT_FILE = "result-file"  # a file under a RESULT_USER folder


class AccessError(OSError):
    """Private folders cannot be made here (no ACL support, no admin group), worded for a person.

    An OSError: met while publishing, it is the server's fault, and the job waits for it to be fixed."""


class NoAccount(Exception):
    """A user folder whose name is no local account (and access.accounts does not map it)."""


@dataclass(frozen=True)
class Ids:
    """The numeric ids an ACL names: the service (owner of the data folders), the drop group, the admin group."""

    service: int
    drop: int
    admin: int | None


@dataclass(frozen=True)
class Access:
    """The access rules of one configuration; cheap to make (Access.of(config) wherever it is needed)."""

    mode: Mode
    admin_group: str
    accounts: Mapping[str, str] = field(default_factory=dict)
    state: Path | None = None

    @classmethod
    def of(cls, config: Any) -> Access:
        section = config["access"]
        return cls(Mode(section["mode"]), section["admin_group"], dict(section["accounts"] or {}),
                   Path(config["paths"]["state"]))

    @property
    def private(self) -> bool:
        return self.mode is Mode.PRIVATE

    # --- people --------------------------------------------------------------------------------

    def account_name(self, user: str) -> str:
        """The local account a user folder belongs to: access.accounts[user], else the folder's own name."""
        return self.accounts.get(user, user)

    def account(self, user: str) -> pwd.struct_passwd:
        """The local account of folder *user*; NoAccount when there is none or `users remove` took it away."""
        name = self.account_name(user)
        if name in self.removed():
            raise NoAccount(f"the account {names.quoted(name)} was removed from lipsyncd (lipsyncd users remove)")
        try:
            return pwd.getpwnam(name)
        except (KeyError, ValueError):
            mapped = f" (access.accounts maps it to {names.quoted(name)})" if name != user else ""
            raise NoAccount(f"there is no local account named {names.quoted(name)}{mapped}") from None

    def no_account_reason(self, user: str) -> str | None:
        """Why a drop into inbox/<user>/ cannot be taken in private mode (None: it can, or mode is shared)."""
        if not self.private:
            return None
        try:
            self.account(user)
        except NoAccount as exc:
            return (f"this folder (inbox/{names.printable(user)}) belongs to nobody: {exc}. In private mode each "
                    "folder is a person's account; ask an administrator to run `lipsyncd users add "
                    f"{names.printable(user)}` or to map the folder in access.accounts")
        return None

    def removed(self) -> set[str]:
        if self.state is None:
            return set()
        try:
            return set(json.loads((self.state / REMOVED_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return set()

    def set_removed(self, account: str, removed: bool) -> None:
        assert self.state is not None
        accounts = self.removed()
        (accounts.add if removed else accounts.discard)(account)
        temp = self.state / f".{REMOVED_FILE}.tmp"
        temp.write_text(json.dumps(sorted(accounts)), encoding="utf-8")
        os.replace(temp, self.state / REMOVED_FILE)

    # --- the ACL each kind of path gets ----------------------------------------------------------

    def ids(self, root: Path) -> Ids:
        st = root.stat()
        admin = None
        if self.private:
            try:
                admin = grp.getgrnam(self.admin_group).gr_gid
            except KeyError:
                raise AccessError(f"access.admin_group: there is no group {self.admin_group!r}; create it "
                                  f"(groupadd {self.admin_group}) or name an existing one") from None
        return Ids(st.st_uid, st.st_gid, admin)

    def wanted(self, kind: Kind, ids: Ids, user: str | None = None) -> str:
        """The ACL (setfacl --set text, numeric ids) a path of *kind* should have in this mode."""
        if not self.private:
            return _SHARED[kind].format(s=ids.service, d=ids.drop)
        uid = self._uid(user) if kind in (Kind.DROP_USER, Kind.RESULT_USER, Kind.RESULT_FILE) else None
        a = f"g:{ids.admin}"
        if kind is Kind.DROP_TOP:
            return f"u::rwx,g::--x,o::---,{a}:rwx,m::rwx"
        if kind is Kind.RESULT_TOP:
            return f"u::rwx,g::r-x,o::---,{a}:r-x,m::r-x"
        if kind is Kind.SPOOL:
            return f"u::rwx,g::---,o::---,{a}:r-x,m::r-x"
        if kind is Kind.DATE:
            return f"u::rwx,g::--x,o::--x,{a}:r-x,m::r-x"
        owner = f"u:{uid}:rwx," if uid is not None else ""
        service = f"u:{ids.service}:rwx," if ids.service != uid else ""
        if kind is Kind.RESULT_FILE:  # what a file made in the folder inherits from its default ACL
            return f"u::rw-,{owner}{service}g::---,o::---,{a}:rwx,m::rw-"
        acl = f"u::rwx,{owner}{service}g::---,o::---,{a}:rwx,m::rwx"  # what a sub-folder inherits: the same
        return acl + "," + ",".join(f"d:{entry}" for entry in acl.split(","))

    def _uid(self, user: str | None) -> int | None:
        if user is None:
            return None
        try:
            return self.account(user).pw_uid
        except NoAccount:
            return None  # the admin group and the service only: the folder belongs to nobody

    # --- applying it ------------------------------------------------------------------------------

    def make_folder(self, root: Path, folder: Path, user: str, kind: Kind) -> Path:
        """Create *folder* (root/<user> or root/<date>/<user>) and any date folder between, each with its ACL.

        Only folders made here get an ACL (in private mode): the daemon never fights over a folder someone
        else set up; `lipsyncd users fix-permissions` brings existing folders in line."""
        parts = folder.relative_to(root).parts
        current = root
        for i, part in enumerate(parts):
            current = current / part
            try:
                current.mkdir(0o700 if self.private else 0o777)
            except FileExistsError:
                continue
            if self.private:
                self.apply(current, Kind.DATE if i < len(parts) - 1 else kind, self.ids(root), user)
        return folder

    def secure_file(self, root: Path, path: Path, user: str, *, best_effort: bool = False) -> None:
        """Give a result file its folder's access: one renamed in from the spool, or written with a fixed mode.

        *best_effort*: a file the service does not own (an input the person dropped, moved to failed/) is left
        as it is; it already has the access its inbox folder gave it."""
        if not self.private:
            return
        try:
            self.apply(path, Kind.RESULT_FILE, self.ids(root), user)
        except PermissionError:
            if not best_effort:
                raise

    def apply(self, path: Path, kind: Kind, ids: Ids, user: str | None = None) -> bool:
        """Set *path*'s ACL to what *kind* wants, if it differs. True when something changed.

        Works on the opened inode (O_PATH|O_NOFOLLOW, then /proc/self/fd/N), never through a symlink: a
        person could swap a file in their folder for a link to /etc/shadow while root runs fix-permissions."""
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                return False  # symlinks, FIFOs, devices: not ours to open up
            wanted = self.wanted(kind, ids, user)
            current = read_acl(fd)
            if current == _entries(wanted):
                return False
            if os.geteuid() == 0 and stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid) != (ids.service, ids.drop):
                os.chown(f"/proc/self/fd/{fd}", ids.service, ids.drop)  # folders are the service's
            write_acl(fd, path, _entries(wanted))
            return True
        finally:
            os.close(fd)

    # --- bringing existing folders in line --------------------------------------------------------

    def tree(self, folders: Mapping[str, Path], only: str | None = None) -> Iterator[tuple[Path, Kind, str | None,
                                                                                          Path]]:
        """Every path fix() looks after: (path, kind, user, its data folder); *only*: one user's folders."""
        for key in ("inbox", "avatars", "spool", "outputs", "failed"):
            root = folders[key]
            if not root.is_dir():
                continue
            if only is None:
                yield root, {"spool": Kind.SPOOL, "inbox": Kind.DROP_TOP, "avatars": Kind.DROP_TOP}.get(
                    key, Kind.RESULT_TOP), None, root
            if key in ("inbox", "avatars"):
                for folder in subdirs(root):
                    if only is None or folder.name == only:
                        yield folder, Kind.DROP_USER, folder.name, root
            elif key in ("outputs", "failed"):
                for date in subdirs(root):
                    if not names.is_date(date.name):
                        continue
                    if only is None:
                        yield date, Kind.DATE, None, root
                    for folder in subdirs(date):
                        if only is None or folder.name == only:
                            yield from _results(folder, folder.name, root)

    def fix(self, folders: Mapping[str, Path], only: str | None = None) -> Report:
        """Re-apply this mode's ACLs to existing folders and results (idempotent: the second run changes nothing)."""
        report = Report()
        ids = self.ids(folders["outputs"])
        for path, kind, user, root in self.tree(folders, only):
            ids = self.ids(root)
            try:
                changed = self.apply(path, kind, ids, user)
            except (PermissionError, FileNotFoundError) as exc:
                report.left.append(f"{names.escape(str(path))}: {exc}")
                continue
            if changed:
                report.changed.append(names.escape(str(path)))
            else:
                report.unchanged += 1
        return report


@dataclass
class Report:
    """What fix() did: the paths it changed, how many were right already, what it could not change and why."""

    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    left: list[str] = field(default_factory=list)


def _results(folder: Path, user: str, root: Path) -> Iterator[tuple[Path, Kind, str | None, Path]]:
    """A user's result folder and everything in it (failure folders, files), never following a symlink."""
    yield folder, Kind.RESULT_USER, user, root
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _results(Path(entry.path), user, root)
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path), Kind.RESULT_FILE, user, root


# Shared mode: what install.sh lays out (see its DATA_DIRS and set_inbox_acl) and what a folder made by the
# daemon (UMask=0027, setgid) or by a person under inbox/ gets; s = the service, d = the drop group.
_DROP_SHARED = "u::rwx,u:{s}:rwx,g::rwx,g:{d}:rwx,m::rwx,o::---," \
    "d:u::rwx,d:u:{s}:rwx,d:g::rwx,d:g:{d}:rwx,d:m::rwx,d:o::---"
_SHARED = {
    Kind.DROP_TOP: _DROP_SHARED,
    Kind.DROP_USER: _DROP_SHARED,
    Kind.RESULT_TOP: "u::rwx,g::r-x,o::---",
    Kind.SPOOL: "u::rwx,g::r-x,o::---",
    Kind.DATE: "u::rwx,g::r-x,o::---",
    Kind.RESULT_USER: "u::rwx,g::r-x,o::---",
    Kind.RESULT_FILE: "u::rw-,g::r--,o::---",
}

_TAGS = {"u": "user", "g": "group", "m": "mask", "o": "other"}


def _entries(text: str) -> frozenset[str]:
    """setfacl's short form (u::rwx,d:g:5:r-x) as getfacl -n writes it (user::rwx, default:group:5:r-x)."""
    out = set()
    for entry in text.split(","):
        default = entry.startswith("d:")
        tag, qualifier, perms = (entry[2:] if default else entry).split(":")
        out.add(("default:" if default else "") + f"{_TAGS[tag]}:{qualifier}:{perms}")
    return frozenset(out)


# The kernel's binary form of an ACL (linux/posix_acl_xattr.h): a version, then (tag, perm, id) entries
# sorted by tag and id.
ACCESS_XATTR, DEFAULT_XATTR = "system.posix_acl_access", "system.posix_acl_default"
_VERSION = 2
_NO_ID = 0xFFFFFFFF
_CODES = {("user", False): 0x01, ("user", True): 0x02, ("group", False): 0x04, ("group", True): 0x08,
          ("mask", False): 0x10, ("other", False): 0x20}
_TAG_OF = {code: tag for (tag, _), code in _CODES.items()}


def _encode(entries: list[str]) -> bytes:
    """Entries like "user:1001:rwx" as the kernel's attribute value."""
    items = []
    for entry in entries:
        tag, qualifier, perms = entry.split(":")
        perm = sum(bit for bit, char in zip((4, 2, 1), perms, strict=True) if char != "-")
        items.append((_CODES[(tag, bool(qualifier))], int(qualifier) if qualifier else _NO_ID, perm))
    return struct.pack("<I", _VERSION) + b"".join(struct.pack("<HHI", code, perm, qid)
                                                  for code, qid, perm in sorted(items))


def _decode(data: bytes, prefix: str) -> set[str]:
    out = set()
    for offset in range(4, len(data) - 7, 8):
        code, perm, qid = struct.unpack_from("<HHI", data, offset)
        named = code in (0x02, 0x08)
        out.add(f"{prefix}{_TAG_OF[code]}:{qid if named else ''}:{_perms(perm)}")
    return out


def _perms(bits: int) -> str:
    return "".join(char if bits & bit else "-" for bit, char in ((4, "r"), (2, "w"), (1, "x")))


def _xattr(fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(f"/proc/self/fd/{fd}", name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def read_acl(fd: int) -> frozenset[str]:
    """The ACL of the open file *fd*, as `getfacl -n` lists it (the mode's three entries when it has none)."""
    mode = os.fstat(fd).st_mode
    data = _xattr(fd, ACCESS_XATTR)
    if data is None:
        entries = {f"user::{_perms(mode >> 6)}", f"group::{_perms(mode >> 3)}", f"other::{_perms(mode)}"}
    else:
        entries = _decode(data, "")
    if stat.S_ISDIR(mode) and (default := _xattr(fd, DEFAULT_XATTR)) is not None:
        entries |= _decode(default, "default:")
    return frozenset(entries)


def write_acl(fd: int, path: Path, entries: frozenset[str]) -> None:
    """Give the open file *fd* exactly these entries (setfacl --set; no default entries: the default ACL goes)."""
    target = f"/proc/self/fd/{fd}"
    default = [e.removeprefix("default:") for e in entries if e.startswith("default:")]
    try:
        os.setxattr(target, ACCESS_XATTR, _encode([e for e in entries if not e.startswith("default:")]))
        if default:
            os.setxattr(target, DEFAULT_XATTR, _encode(default))
        elif stat.S_ISDIR(os.fstat(fd).st_mode):
            with _no_data():
                os.removexattr(target, DEFAULT_XATTR)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            raise AccessError(f"the filesystem of {path} does not support POSIX ACLs; private "
                              "folders need them (mount it with ACLs, or use access.mode: shared)") from None
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise PermissionError(exc.errno, f"cannot set the ACL of {path} ({exc.strerror}): only its owner or "
                                  "root may") from None
        raise


@contextlib.contextmanager
def _no_data() -> Iterator[None]:
    """Removing a default ACL that is not there is fine."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise


def subdirs(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            yield Path(entry.path)


def check(folders: Mapping[str, Path]) -> None:
    """Raise AccessError unless every data folder's filesystem takes ACLs (tried on a scratch folder in each)."""
    for key, folder in folders.items():
        scratch = Path(tempfile.mkdtemp(prefix=".lipsyncd-acl-check-", dir=folder))
        try:
            fd = os.open(scratch, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                write_acl(fd, scratch, _entries(f"u::rwx,u:{os.geteuid()}:rwx,g::---,o::---,m::rwx,d:u::rwx,"
                                                f"d:u:{os.geteuid()}:rwx,d:g::---,d:o::---,d:m::rwx"))
            except AccessError as exc:
                raise AccessError(f"paths.{key}: {exc}") from None
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                scratch.rmdir()


# The data folders people reach; spool and state are the service's own (the spool is locked in private mode).
PEOPLE_FOLDERS = ("inbox", "avatars", "outputs", "failed")
TOP_KINDS = {"inbox": Kind.DROP_TOP, "avatars": Kind.DROP_TOP, "outputs": Kind.RESULT_TOP,
             "failed": Kind.RESULT_TOP, "spool": Kind.SPOOL}


def start(config: Any) -> list[str]:
    """At start-up in private mode: refuse (ConfigError, exit 2) a filesystem without ACLs or a missing admin
    group, never leave the folders open; then lock the top folders the service owns. Returns warnings."""
    from daemon.config import ConfigError  # config does not import this module; keeps the janitor's path light

    access = Access.of(config)
    if not access.private:
        return []
    folders = config.paths.folders()
    warnings = []
    try:
        check({key: folders[key] for key in (*PEOPLE_FOLDERS, "spool")})
        for key, kind in TOP_KINDS.items():
            try:
                access.apply(folders[key], kind, access.ids(folders[key]))
            except PermissionError as exc:
                warnings.append(f"paths.{key}: cannot set its access ({exc}); run `lipsyncd users fix-permissions` "
                                "as root")
    except AccessError as exc:
        raise config.error("access.mode", f"private folders cannot be made: {exc}. Nothing was opened up; the "
                                          "daemon does not start") from None
    except ConfigError:
        raise
    return warnings

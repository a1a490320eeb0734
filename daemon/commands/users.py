"""`lipsyncd users add|remove|list|fix-permissions [NAME]`: people and their private folders.

add prepares inbox/NAME and avatars/NAME with the account's access (and, as root, puts the account in the drop
group); remove takes the access away and keeps the files; list shows each user's account, folders, bytes kept and
pins; fix-permissions re-applies access.mode to folders that exist (after switching modes), idempotently.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from daemon import access as accessmod
from daemon import names
from daemon.access import Access, AccessError, Kind, NoAccount
from daemon.config import Config
from daemon.names import Exit
from daemon.notify.messages import human


def _say(text: str) -> None:
    print(f"lipsyncd users: {text}")


def _error(text: str) -> None:
    print(f"lipsyncd users: {text}", file=sys.stderr)


def add(config: Config, name: str) -> int:
    rules = Access.of(config)
    why = names.refusal(name)
    if why:
        _error(f"{name!r} cannot be a user folder name: {why}")
        return Exit.USAGE
    account = rules.account_name(name)
    if account in rules.removed():
        rules.set_removed(account, False)
        _say(f"{account} may use lipsyncd again")
    try:
        person = rules.account(name)
    except NoAccount as exc:
        if rules.private:
            _error(f"{name}: {exc}. In access.mode private each user folder is a local account's: create the "
                   f"account first (useradd {account}) or map the folder in access.accounts")
            return Exit.USAGE
        person = None
    paths = config.paths
    try:
        for root in (paths.inbox, paths.avatars):
            folder = root / name
            existed = folder.is_dir()
            rules.make_folder(root, folder, name, Kind.DROP_USER)
            changed = rules.apply(folder, Kind.DROP_USER, rules.ids(root), name)
            _say(f"{folder}: " + ("created" if not existed else "access set" if changed else "already right"))
    except (AccessError, PermissionError) as exc:
        _error(str(exc))
        return Exit.FAILED
    if person is not None and os.geteuid() == 0:
        _join_drop_group(person.pw_name, paths.inbox, join=True)
    return Exit.OK


def remove(config: Config, name: str) -> int:
    rules = Access.of(config)
    account = rules.account_name(name)
    rules.set_removed(account, True)
    _say(f"{account} no longer reaches {name}'s folders; the files are kept")
    if rules.private:
        report = rules.fix(config.paths.folders(), only=name)
        _print(report)
    if os.geteuid() == 0:
        _join_drop_group(account, config.paths.inbox, join=False)
    return Exit.OK


def _join_drop_group(account: str, inbox: Path, *, join: bool) -> None:
    """Add *account* to (or take it out of) the drop group, the group of paths.inbox, as install.sh made it."""
    group = grp.getgrgid(inbox.stat().st_gid)
    if group.gr_gid == 0:
        return  # an inbox owned by root's group: no drop group to join
    if (account in group.gr_mem) == join:
        return
    subprocess.run(["gpasswd", "-a" if join else "-d", account, group.gr_name], check=True, capture_output=True)
    _say(f"{'added' if join else 'removed'} {account} {'to' if join else 'from'} {group.gr_name}"
         + (" (takes effect at their next login)" if join else ""))


@dataclass
class Person:
    """One line of `users list`."""

    user: str
    account: str
    folders: list[str] = field(default_factory=list)
    bytes: int = 0
    results: int = 0
    pins: int = 0
    failures: int = 0


def people(config: Config) -> dict[str, Person]:
    """Every user with a folder anywhere, with what they keep (missing .mp4 of half-deleted groups is fine)."""
    rules = Access.of(config)
    paths, marker = config.paths, config.janitor.keep_marker
    found: dict[str, Person] = {}

    def person(user: str) -> Person:
        if user not in found:
            try:
                account = rules.account(user).pw_name
            except NoAccount:
                account = "(removed)" if rules.account_name(user) in rules.removed() else "(no account)"
            found[user] = Person(user, account)
        return found[user]

    for root in (paths.inbox, paths.avatars):
        for folder in accessmod.subdirs(root):
            person(folder.name).folders.append(str(folder))
    for root in (paths.outputs, paths.failed):
        for date in accessmod.subdirs(root):
            for folder in accessmod.subdirs(date):
                who = person(folder.name)
                who.folders.append(str(folder))
                for path in _files(folder):
                    size = path.lstat().st_size
                    if root == paths.outputs:
                        who.bytes += size
                        who.results += path.suffix == ".mp4"
                        who.pins += path.name.endswith(marker)
                    elif path.name == names.ERROR_FILE:
                        who.failures += 1
    return dict(sorted(found.items()))


def _files(folder: Path) -> list[Path]:
    out = []
    for top, dirs, files in os.walk(folder):
        out += [Path(top, f) for f in files if not Path(top, f).is_symlink()]
        dirs[:] = [d for d in dirs if not Path(top, d).is_symlink()]
    return out


def list_users(config: Config, *, as_json: bool) -> int:
    found = people(config)
    if as_json:
        print(json.dumps({"users": [asdict(p) for p in found.values()]}, indent=2, ensure_ascii=False))
        return Exit.OK
    if not found:
        print("no user folders yet (lipsyncd users add NAME)")
        return Exit.OK
    print(f"access.mode: {config.access.mode}")
    print(f"{'USER':16} {'ACCOUNT':16} {'FOLDERS':>7} {'RESULTS':>7} {'KEPT':>10} {'PINS':>5} {'FAILED':>6}")
    for p in found.values():
        print(f"{names.escape(p.user)[:16]:16} {p.account[:16]:16} {len(p.folders):7} {p.results:7} "
              f"{human(p.bytes):>10} {p.pins:5} {p.failures:6}")
    return Exit.OK




def fix_permissions(config: Config, name: str | None) -> int:
    rules = Access.of(config)
    try:
        if rules.private:
            accessmod.check({key: config.paths.folders()[key] for key in accessmod.PEOPLE_FOLDERS})
        report = rules.fix(config.paths.folders(), only=name)
    except AccessError as exc:
        _error(str(exc))
        return Exit.FAILED
    _print(report)
    return Exit.FAILED if report.left else Exit.OK


def _print(report: accessmod.Report) -> None:
    for path in report.changed:
        _say(f"changed {path}")
    for line in report.left:
        _error(f"left as it is: {line}")
    _say(f"{len(report.changed)} changed, {report.unchanged} already right, {len(report.left)} left as they are")


def main(config: Config, action: str, name: str | None, *, as_json: bool = False) -> int:
    if action in ("add", "remove") and not name:
        _error(f"users {action} needs a NAME")
        return Exit.USAGE
    if action == "add":
        return add(config, name or "")
    if action == "remove":
        return remove(config, name or "")
    if action == "list":
        return list_users(config, as_json=as_json)
    return fix_permissions(config, name)

"""Filing results: outputs/YYYY-MM-DD/<user>/<stem>.mp4 and failed/YYYY-MM-DD/<user>/<stem>/.

A name that exists is never overwritten (<stem>-2.mp4, ...). The MP4 is published with link(2) from a
dot-named temp file in the same folder, which fails instead of overwriting, so two jobs racing for
one name each get their own; a partial file never appears under a real name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon import names
from daemon.access import Access, Kind
from daemon.files import move
from daemon.jobs.job import Job, write_json_atomic

MAX_SUFFIX = 10_000


def today() -> str:
    return time.strftime("%Y-%m-%d")


def unique_folder(parent: Path, stem: str) -> Path:
    """Create and return parent/<stem>, or parent/<stem>-2, ... whichever is free."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_SUFFIX):
        folder = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise OSError(f"too many entries named {stem!r} in {parent}")


def error_text(reason: str, *, user: str, files: Sequence[tuple[str, int]], job: Job | None,
               folder: Path, engine: str | None = None, device: str | None = None) -> str:
    """The error.txt a person reads: what went wrong, which files, what to do next."""
    lines = ["lipsyncd could not make a video from this drop.", "", "What went wrong:"]
    lines += [f"  {line}" if line else "" for line in reason.strip().splitlines()]
    lines += ["", "Files (kept here, unchanged):"]
    lines += [f"  {name}  ({_size(size)})" for name, size in files]
    lines += ["", f"User:    {user}"]
    if job is not None:
        lines.append(f"Job:     {job.id}  (attempt {max(job.attempts, 1)})")
    if engine:
        lines.append(f"Engine:  {engine}" + (f" on {device}" if device else ""))
    lines.append(f"When:    {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    lines += ["", "What to do:",
              "  Fix what is described above and drop the files into the inbox again, or, if the files were",
              f"  fine and the problem is fixed now, run:  lipsyncd retry '{folder}'"]
    if job is not None:
        lines.append(f"  The full log of this job:  journalctl -u lipsyncd JOB_ID={job.id}")
    return "\n".join(lines) + "\n"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def file_failure(failed_root: Path, user: str, stem: str, files: Sequence[tuple[Path, str]], reason: str, *,
                 job: Job | None = None, engine: str | None = None, device: str | None = None,
                 access: Access | None = None) -> Path:
    """Move *files* ((current path, original name)) into a new failed/ folder with error.txt and job.json.

    With *access*, failed/<date>/<user>/ is made with its ACL (private mode: the person, admins, the service),
    and what is made inside inherits it."""
    user_folder = failed_root / today() / names.printable(user)
    if access is not None:
        access.make_folder(failed_root, user_folder, user, Kind.RESULT_USER)
    folder = unique_folder(user_folder, names.printable(stem))
    listed: list[tuple[str, int]] = []
    for path, original in files:
        safe = names.printable(original) if names.refusal(original) else original
        target = folder / safe
        if target.exists() or target.is_symlink():
            target = folder / f"{Path(safe).stem}-{len(listed) + 1}{Path(safe).suffix}"
        try:
            size = path.lstat().st_size
        except OSError:
            continue
        move(path, target)
        listed.append((target.name, size))
    record: dict[str, Any] = job.to_dict() if job is not None else {"user": user, "stem": stem}
    record.update({"error": reason, "failed_at": time.time(), "files": [name for name, _ in listed]})
    write_json_atomic(folder / names.JOB_FILE, record)
    # error.txt last, atomically: once it is there, the failure report is complete.
    text = error_text(reason, user=user, files=listed, job=job, folder=folder, engine=engine, device=device)
    temp = folder / ".error.txt.part"
    temp.write_text(text, encoding="utf-8")
    if access is not None:
        for path in [folder / name for name, _ in listed] + [folder / names.JOB_FILE, temp]:
            access.secure_file(failed_root, path, user, best_effort=True)
    os.replace(temp, folder / names.ERROR_FILE)
    return folder


def publish(outputs_root: Path, job: Job, video: Path, *, sidecars: dict[str, Path | dict[str, Any]],
            publish_dir: Path | None = None, access: Access | None = None) -> Path:
    """Put *video* into outputs/<date>/<user>/ under a free name; sidecars (".json", ".jpg") follow its name.

    Idempotent for one job: if an earlier attempt already linked the video (same inode), that name is reused;
    if it finished (its temp link gone, the video no longer at *video*), its record's job_id finds it; a
    sidecar file an interrupted try already moved to its temp is taken from there.
    The outputs folder itself is never created here: a missing one is a fault of the server (an unmounted
    share) to wait out, not a folder to make anew on whatever disk lies below.
    With *access*, outputs/<date>/<user>/ is made with its ACL, and files renamed in from the spool get it too.
    """
    if not outputs_root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the outputs folder is missing", str(outputs_root))
    folder = publish_dir or outputs_root / today() / names.printable(job.user)
    if access is not None and folder.parent.parent == outputs_root:
        access.make_folder(outputs_root, folder, job.user, Kind.RESULT_USER)
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{names.printable(job.stem)}.{job.id}.part"
    final = _already_published(folder, temp)
    if final is None and not temp.exists() and not video.exists():
        final = _published_by(folder, job.id)  # done here by an attempt stopped before job.json said so
    if final is None:
        if not temp.exists():
            _copy_or_move(video, temp)
        if access is not None:
            access.secure_file(outputs_root, temp, job.user)
        final = _link_free_name(temp, folder, names.printable(job.stem))
    for suffix, content in sidecars.items():
        publish_sidecar(final, suffix, content, job.id, access=access, outputs_root=outputs_root, user=job.user)
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    return final


def publish_sidecar(final: Path, suffix: str, content: Path | dict[str, Any], job_id: str, *,
                    access: Access | None = None, outputs_root: Path | None = None, user: str = "") -> None:
    """Put a sidecar of the published *final* in place in one rename: a record (dict, as JSON) or a file.

    Also how the poster and the scored record replace what was published first (the worker publishes the
    video and its record as soon as the video is made). A file an interrupted try already moved to its
    temp is taken from there; no file at all (no poster) is skipped. With *access* (and the outputs root
    and the job's user), the sidecar gets its owner's ACL before it takes its name."""
    target = final.with_suffix(suffix)
    if isinstance(content, dict):
        write_json_atomic(target, content)
        if access is not None and outputs_root is not None:
            access.secure_file(outputs_root, target, user)
        return
    side_temp = final.parent / f".{target.name}.{job_id}.part"
    if content.exists():
        _copy_or_move(content, side_temp)
    elif not side_temp.exists():
        return
    if access is not None and outputs_root is not None:
        access.secure_file(outputs_root, side_temp, user)
    os.replace(side_temp, target)


def _copy_or_move(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
        return
    except OSError:
        pass
    tmp = dst.with_name(dst.name + ".copy")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, dst)


def _already_published(folder: Path, temp: Path) -> Path | None:
    """The output an interrupted earlier attempt linked from *temp*, if any."""
    try:
        st = temp.stat()
    except FileNotFoundError:
        return None
    if st.st_nlink < 2:
        return None
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        other = entry.stat(follow_symlinks=False)
        if (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev):
            return Path(entry.path)
    return None


def _published_by(folder: Path, job_id: str) -> Path | None:
    """The video whose record names *job_id*: published whole by an attempt that was stopped before its worker
    could write down where (the video and the temp link are gone then, the record is the trace)."""
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue
        try:
            named = json.loads(Path(entry.path).read_text(encoding="utf-8")).get("job_id")
        except (OSError, ValueError, AttributeError):
            continue
        video = Path(entry.path).with_suffix(".mp4")
        if named == job_id and video.is_file():
            return video
    return None


def _link_free_name(temp: Path, folder: Path, stem: str) -> Path:
    for n in range(1, MAX_SUFFIX):
        final = folder / (f"{stem}.mp4" if n == 1 else f"{stem}-{n}.mp4")
        if final.with_suffix(".json").exists():
            continue  # keep name families together: a record without its video still owns the name
        try:
            os.link(temp, final)
            return final
        except FileExistsError:
            continue
        except OSError:
            # Filesystems without hard links (some SMB/FAT mounts): check, then rename.
            if final.exists():
                continue
            os.rename(temp, final)
            return final
    raise OSError(f"too many outputs named {stem!r} in {folder}")

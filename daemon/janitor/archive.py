"""Archiving before deleting: copy old outputs to a NAS folder or an S3 bucket, verify the copy, then remove the video.

One backend per target behind one small interface (Target: put, get): FolderTarget for file:// (a mounted NAS
share: temp name, fsync, rename, re-read and compare), S3Target for s3:// (boto3, imported only here and only
when archiving to S3; multipart with a bounded part size, Content-MD5 and ETag checked part by part and for the
whole object, the server's SHA-256 where it reports one). archive_pass walks outputs/DATE/USER through folder
descriptors (O_NOFOLLOW, never onto another mount), oldest date first, and for each output old enough:
uploads .json, .jpg, then .mp4; only once all are verified does it record `"archived"` in the local .json
(atomic rewrite, mtime kept) and, with delete_local and no .keep pin, unlink the local .mp4. Anything that fails
leaves the local files as they were, is said in plain words, and is retried next pass: a copy only counts as
archived once the local .json says so, so a pass killed mid-upload leaves nothing that counts.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import errno
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from daemon.config import ArchiveConfig, Config, RetentionRule
from daemon.files import exists_at
from daemon.janitor.plan import mount_id
from daemon.names import DATE_NAME

log = logging.getLogger("lipsyncd.janitor.archive")

ARCHIVED = "archived"  # the key of the local .json's record of the verified copy
SUFFIXES = (".json", ".jpg", ".mp4")  # upload order: the video last, so its verified copy completes the set
PART_SIZE = 8 * 1024 * 1024  # S3 multipart: bytes per part (grown for objects that would need > MAX_PARTS)
PARTS_IN_FLIGHT = 4  # parts uploaded at once; memory holds at most this many parts, whatever the video's size
MAX_PARTS = 9000  # S3 allows 10,000
CHUNK = 1024 * 1024  # folder target: bytes copied per read
RECORD_MAX_BYTES = 1024 * 1024  # a local .json larger than this is not an output record
# Archiving in one pass stops starting new outputs after this long (the timer fires every 15 minutes; the
# pass lock makes a second pass stop politely anyway): what is left waits for the next pass.
PASS_BUDGET_SECONDS = 600.0
S3_RETRIES = 4  # botocore's standard retry mode: attempts per request, exponential backoff with jitter
DAY = 86400.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class Failure(enum.Enum):
    """Why an output was not archived; the first four concern the whole target, so the pass stops trying."""

    UNREACHABLE = "unreachable"
    CREDENTIALS = "credentials"
    NO_BUCKET = "no-bucket"
    TARGET_FULL = "target-full"
    MISMATCH = "mismatch"
    CHANGED = "changed"
    LOCAL = "local"
    TARGET_ERROR = "target-error"
    SETUP = "setup"

    @property
    def whole_target(self) -> bool:
        return self in (Failure.UNREACHABLE, Failure.CREDENTIALS, Failure.NO_BUCKET, Failure.TARGET_FULL,
                        Failure.SETUP)


class ArchiveError(Exception):
    """A copy that could not be made or verified, in plain words (never with credentials in them)."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


class Target(Protocol):
    """Where archived outputs go. *key* is the path relative to outputs/ (DATE/USER/NAME)."""

    url: str  # the base, as configured (no credentials)

    def put(self, key: str, fd: int, size: int) -> str:
        """Copy *size* bytes of *fd* to *key* and verify the copy; the SHA-256 (hex) of what was copied."""

    def get(self, key: str, out: BinaryIO) -> int:
        """Write the archived *key* to *out*; the number of bytes."""

    def check(self) -> str:
        """Raise ArchiveError unless the target can take copies now; what was checked (`lipsyncd doctor`)."""

    def close(self) -> None: ...


def object_url(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{key}"


# -- the folder target (file://) ---------------------------------------------------------------------------

class FolderTarget:
    """A mounted NAS share. The base folder must exist (an unmounted share is not written onto the local disk);
    each file is written to a dot-temp name, fsynced, renamed, its folder fsynced, then read back from the
    disk (page cache dropped) and compared."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = url[len("file://"):].rstrip("/") or "/"

    def put(self, key: str, fd: int, size: int) -> str:
        if not os.path.isdir(self.root):
            raise ArchiveError(Failure.UNREACHABLE, f"the archive folder {self.root} does not exist "
                                                    f"(is the NAS share mounted?)")
        dest = os.path.join(self.root, key)
        folder, name = os.path.split(dest)
        temp = os.path.join(folder, f".{name}.part")  # one pass at a time (the pass lock): a leftover is reused
        try:
            os.makedirs(folder, mode=0o755, exist_ok=True)
            out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                digest = _copy(fd, size, out)
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(temp, dest)
            _fsync_folder(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise _folder_error(exc, self.root) from None
        self._check(dest, size, digest)
        return digest

    def _check(self, dest: str, size: int, digest: str) -> None:
        """Read the copy back from the disk, not from the page cache, and compare size and SHA-256."""
        try:
            fd = os.open(dest, _READ_FLAGS)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                st = os.fstat(fd)
                again = _sha256(fd, st.st_size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _folder_error(exc, self.root) from None
        if st.st_size != size or again != digest:
            raise ArchiveError(Failure.MISMATCH, f"the copy {dest} read back differs from the file sent "
                                                 f"({st.st_size} bytes, expected {size})")

    def check(self) -> str:
        if not os.path.isdir(self.root):
            raise ArchiveError(Failure.UNREACHABLE, f"the archive folder {self.root} does not exist "
                                                    f"(is the NAS share mounted?)")
        probe = os.path.join(self.root, f".lipsyncd-probe.{os.getpid()}")
        try:
            with open(probe, "wb") as handle:
                handle.write(b"probe")
                os.fsync(handle.fileno())
            os.unlink(probe)
        except OSError as exc:
            raise _folder_error(exc, self.root) from None
        return f"{self.root} exists and the janitor's account can write there"

    def get(self, key: str, out: BinaryIO) -> int:
        path = os.path.join(self.root, key)
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            raise ArchiveError(Failure.TARGET_ERROR, f"cannot read {path}: {exc.strerror}") from None
        try:
            total = 0
            while chunk := os.read(fd, CHUNK):
                out.write(chunk)
                total += len(chunk)
            return total
        finally:
            os.close(fd)

    def close(self) -> None:
        pass


def _folder_error(exc: OSError, root: str) -> ArchiveError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ArchiveError(Failure.TARGET_FULL, f"the archive folder {root} is full ({exc.strerror})")
    if exc.errno == errno.EROFS:
        return ArchiveError(Failure.TARGET_FULL, f"the archive folder {root} is read-only")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ArchiveError(Failure.CREDENTIALS, f"the janitor may not write into the archive folder {root} "
                                                 f"({exc.strerror}): give its account write access there")
    if exc.errno in (errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.ETIMEDOUT):
        return ArchiveError(Failure.UNREACHABLE, f"the archive folder {root} cannot be reached ({exc.strerror})")
    return ArchiveError(Failure.TARGET_ERROR, f"cannot write into the archive folder {root}: {exc.strerror}")


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(fd: int, size: int, out: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            raise ArchiveError(Failure.CHANGED, "the file became shorter while it was copied")
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view):]
        offset += len(chunk)
    return digest.hexdigest()


def _sha256(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


# -- the S3 target (s3://) ---------------------------------------------------------------------------------

class S3Target:
    """An S3 bucket (AWS, MinIO, Ceph RGW, rclone serve s3, ...) through boto3: SigV4, path-style addressing.

    An object is sent in one PUT up to *part_size* bytes, else as a multipart upload of *part_size* parts, up to
    PARTS_IN_FLIGHT of them at once (memory stays flat whatever the video's size). Every PUT carries Content-MD5, which
    the server checks; the ETag it answers is compared part by part, the completed object's ETag and size are
    compared, and the SHA-256 the server reports (where it does) must match. A failed multipart upload is
    aborted; an unfinished one never shows as an object."""

    def __init__(self, cfg: ArchiveConfig, part_size: int = PART_SIZE) -> None:
        import boto3  # only when archiving to S3: the janitor starts without it otherwise
        from botocore.config import Config as BotoConfig

        self.url = cfg.url or ""
        self.endpoint = cfg.endpoint_url or "AWS S3"
        rest = self.url[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        settings = BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"},
                              retries={"max_attempts": S3_RETRIES, "mode": "standard"},
                              connect_timeout=10, read_timeout=120, tcp_keepalive=True,
                              request_checksum_calculation="when_required",
                              response_checksum_validation="when_required")
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region or None,
            aws_access_key_id=cfg.access_key_id or None, aws_secret_access_key=cfg.secret_access_key or None,
            config=settings)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, fd: int, size: int) -> str:
        with self._errors():
            if size <= self.part_size:
                return self._put_single(self._key(key), fd, size)
            return self._put_multipart(self._key(key), fd, size)

    def _put_single(self, name: str, fd: int, size: int) -> str:
        body = _read(fd, 0, size)
        md5 = hashlib.md5(body)  # noqa: S324 - Content-MD5 is what S3 checks
        sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
        answer = self.client.put_object(Bucket=self.bucket, Key=name, Body=body,
                                         ContentMD5=base64.b64encode(md5.digest()).decode(), ChecksumSHA256=sha)
        _confirm(answer, md5.hexdigest(), sha, f"the server's answer for {name}", optional=True)
        self._verify(name, size, md5.hexdigest(), sha)
        return base64.b64decode(sha).hex()

    def _put_multipart(self, name: str, fd: int, size: int) -> str:
        from concurrent.futures import Future, ThreadPoolExecutor

        part_size = max(self.part_size, -(-size // MAX_PARTS))
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=name,
                                                     ChecksumAlgorithm="SHA256")["UploadId"]
        whole, whole_md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324
        md5s: list[bytes] = []
        shas: list[bytes] = []
        parts: list[dict[str, Any]] = []
        in_flight: list[Future[dict[str, Any]]] = []
        pool = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="lipsyncd-archive")
        try:
            for offset in range(0, size, part_size):
                if len(in_flight) >= PARTS_IN_FLIGHT:  # at most PARTS_IN_FLIGHT parts in memory
                    parts.append(in_flight.pop(0).result())
                body = _read(fd, offset, min(part_size, size - offset))
                whole.update(body)
                whole_md5.update(body)
                md5s.append(hashlib.md5(body).digest())  # noqa: S324
                shas.append(hashlib.sha256(body).digest())
                in_flight.append(pool.submit(self._put_part, name, upload, len(md5s), body, md5s[-1], shas[-1]))
                del body
            parts += [future.result() for future in in_flight]
            composite = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"  # noqa: S324
            sha_composite = f"{base64.b64encode(hashlib.sha256(b''.join(shas)).digest()).decode()}-{len(shas)}"
            done = self.client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload,
                                                         MultipartUpload={"Parts": parts})
        except BaseException:
            for future in in_flight:
                future.cancel()
            pool.shutdown(wait=True)
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            raise
        pool.shutdown(wait=True)
        _confirm(done, composite, sha_composite, f"the completed {name}", optional=True)
        whole_sha = base64.b64encode(whole.digest()).decode()
        self._verify(name, size, composite, sha_composite, whole_md5.hexdigest(), whole_sha)
        return whole.hexdigest()

    def _put_part(self, name: str, upload: str, number: int, body: bytes, md5: bytes, sha: bytes) -> dict[str, Any]:
        """One part, confirmed by the server's answer (in a pool thread: boto3 clients are thread-safe)."""
        sha64 = base64.b64encode(sha).decode()
        answer = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number,
                                         Body=body, ContentMD5=base64.b64encode(md5).decode(), ChecksumSHA256=sha64)
        _confirm(answer, md5.hex(), sha64, f"part {number} of {name}")
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": sha64}

    def _verify(self, name: str, size: int, etag: str, sha: str, *also: str) -> None:
        """What the server now holds: its size, and its SHA-256 where it reports one, else its ETag (the MD5, the
        multipart composite, or, on servers that store the object whole, the whole file's MD5 or SHA-256)."""
        head = self.client.head_object(Bucket=self.bucket, Key=name, ChecksumMode="ENABLED")
        if head.get("ContentLength") != size:
            raise ArchiveError(Failure.MISMATCH, f"the server holds {head.get('ContentLength')} bytes of {name}, "
                                                 f"{size} were sent")
        _confirm(head, etag, sha, f"the stored {name}", also=also)

    def check(self) -> str:
        with self._errors():
            self.client.head_bucket(Bucket=self.bucket)
        return f"bucket {self.bucket!r} on {self.endpoint} answers with these credentials"

    def get(self, key: str, out: BinaryIO) -> int:
        with self._errors():
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            total = 0
            for chunk in answer["Body"].iter_chunks(CHUNK):
                out.write(chunk)
                total += len(chunk)
            return total

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """botocore's exceptions as ArchiveErrors in plain words; never the keys."""
        from botocore import exceptions as bex

        where = f"the S3 server {self.endpoint}"
        try:
            yield
        except ArchiveError:
            raise
        except bex.NoCredentialsError:
            raise ArchiveError(Failure.CREDENTIALS, "no S3 credentials: set janitor.archive.access_key_id and "
                                                    "secret_access_key, or the AWS environment") from None
        except (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ConnectTimeoutError,
                bex.ReadTimeoutError, bex.ProxyConnectionError) as exc:
            raise ArchiveError(Failure.UNREACHABLE, f"cannot reach {where} ({type(exc).__name__}); "
                                                    f"retried next pass") from None
        except bex.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                        "ExpiredToken", "403"):
                raise ArchiveError(Failure.CREDENTIALS, f"{where} refused the credentials ({code}): check "
                                                        f"janitor.archive.access_key_id/secret_access_key") from None
            if code in ("NoSuchBucket", "404") or code == "NoSuchKey" and "Bucket" in str(exc):
                raise ArchiveError(Failure.NO_BUCKET, f"the bucket {self.bucket!r} does not exist on {where}: "
                                                      f"create it or fix janitor.archive.url") from None
            if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
                raise ArchiveError(Failure.MISMATCH, f"{where} received different bytes than were sent "
                                                     f"({code})") from None
            if code in ("NoSuchKey",):
                raise ArchiveError(Failure.TARGET_ERROR, f"{where} has no such archived file ({code})") from None
            raise ArchiveError(Failure.TARGET_ERROR, f"{where} answered {code}") from None
        except bex.BotoCoreError as exc:
            raise ArchiveError(Failure.UNREACHABLE, f"cannot talk to {where} ({type(exc).__name__})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _read(fd: int, offset: int, size: int) -> bytes:
    body = os.pread(fd, size, offset)
    if len(body) != size:
        raise ArchiveError(Failure.CHANGED, "the file became shorter while it was read")
    return body


def _confirm(answer: dict[str, Any], etag: str, sha: str, what: str, *, optional: bool = False,
             also: tuple[str, ...] = ()) -> None:
    """Raise MISMATCH unless the server confirms what was sent: by the SHA-256 it reports (S3 and MinIO do;
    this also holds for SSE-KMS buckets, whose ETag is no MD5), else by the ETag. *optional*: an answer that
    carries neither (some servers say nothing on completion) is checked later by HEAD."""
    reported = answer.get("ChecksumSHA256")
    if reported:
        if reported in (sha, *also):
            return
        raise ArchiveError(Failure.MISMATCH, f"{what}: the server's SHA-256 differs from the bytes sent")
    tag = _etag(answer)
    if tag in (etag, *also) or optional and tag is None:
        return
    raise ArchiveError(Failure.MISMATCH, f"{what}: the server's ETag {tag} is not the MD5 of the bytes sent")


def _etag(answer: dict[str, Any]) -> str | None:
    value = answer.get("ETag")
    return value.strip('"') if isinstance(value, str) else None


def make_target(cfg: ArchiveConfig, url: str | None = None) -> Target:
    """The backend for janitor.archive.url (or *url*, an archived record's base, with the same credentials)."""
    url = url or cfg.url or ""
    if url.startswith("file://"):
        return FolderTarget(url)
    if url.startswith("s3://"):
        if url != cfg.url:
            cfg = ArchiveConfig(url, cfg.endpoint_url, cfg.region, cfg.access_key_id, cfg.secret_access_key,
                                cfg.after_days, cfg.delete_local, cfg.required)
        return S3Target(cfg)
    raise ValueError(f"not an archive URL: {url!r}")


# -- the pass ----------------------------------------------------------------------------------------------

@dataclass
class Report:
    """What the archive part of a pass did (or, dry run, would do)."""

    url: str
    dry_run: bool = False
    archived: list[dict[str, Any]] = field(default_factory=list)  # {"path", "url", "bytes"} copied + verified
    would: list[dict[str, Any]] = field(default_factory=list)  # dry run: {"path", "bytes", "why"}
    removed: list[str] = field(default_factory=list)  # local .mp4 files removed after a verified copy
    removed_bytes: int = 0
    removed_freed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # {"path", "failure", "why"}
    backlog: dict[str, Any] = field(default_factory=lambda: {"outputs": 0, "bytes": 0, "oldest": None})
    oldest_unarchived: float | None = None  # mtime of the oldest output whose local video has no verified copy
    bytes_sent: int = 0
    out_of_time: bool = False
    stopped: str | None = None  # why the pass stopped trying (a whole-target failure)
    archived_videos: set[tuple[str, str, str]] = field(default_factory=set)  # local videos with a verified copy

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "dry_run": self.dry_run, "archived": self.archived, "would_archive": self.would,
                "removed": self.removed, "removed_bytes": self.removed_bytes, "failures": self.failures,
                "backlog": self.backlog, "oldest_unarchived": self.oldest_unarchived,
                "bytes_sent": self.bytes_sent, "out_of_time": self.out_of_time,
                "stopped": self.stopped}


@dataclass
class _Output:
    stem: str
    files: dict[str, os.stat_result]  # suffix -> stat
    mtime: float
    pinned: bool


_ARCHIVED, _WAITING, _BACKLOG = "archived", "waiting", "backlog"  # what became of one output in a pass


class _Rules:
    """archive_days of the first retention rule that matches (as plan.py matches them), else after_days."""

    def __init__(self, rules: tuple[RetentionRule, ...], after_days: float) -> None:
        import fnmatch
        import re

        self.rules = [(re.compile(fnmatch.translate(r.match)).match, r.archive_days) for r in rules]
        self.after_days = after_days

    def days(self, date: str, user: str, names: list[str]) -> float:
        for match, days in self.rules:
            if match(date) or match(f"{date}/{user}") or any(match(f"{date}/{user}/{n}") for n in names):
                return self.after_days if days is None else days
        return self.after_days


class Archiver:
    """One pass's archiving: walks outputs/ oldest date first and archives each output that is old enough."""

    def __init__(self, config: Config, now: float, *, dry_run: bool = False, target: Target | None = None,
                 critical: float | None = None, budget: float = PASS_BUDGET_SECONDS) -> None:
        self.cfg = config.janitor.archive
        self.root = os.path.abspath(config.paths.outputs)
        self.marker = config.janitor.keep_marker
        self.min_age = config.janitor.min_age_hours * 3600
        self.rules = _Rules(config.janitor.retention.rules, self.cfg.after_days)
        self.now = now
        self.dry_run = dry_run
        self.report = Report(url=self.cfg.url or "", dry_run=dry_run)
        self._target = target
        # critical: the free-space target (target_free_percent, as a percentage) when the disk is at its critical
        # watermark, else None. Until it is met, outputs older than min_age_hours are archived and removed too.
        self.critical = critical
        self.deadline = time.monotonic() + budget
        self._dev = 0
        self._mount: int | None = None

    @property
    def target(self) -> Target:
        if self._target is None:
            try:
                self._target = make_target(self.cfg)
            except ImportError:
                raise ArchiveError(Failure.SETUP, "boto3 is not installed, so nothing can go to S3: install "
                                                  "lipsyncd's s3 extra (pip install 'lipsyncd[s3]')") from None
        return self._target

    def run(self) -> Report:
        try:
            root_fd = os.open(self.root, _DIR_FLAGS)
        except OSError:
            return self.report
        try:
            st = os.fstat(root_fd)
            self._dev, self._mount = st.st_dev, mount_id(root_fd)
            pinned = exists_at(root_fd, self.marker)
            for date in sorted(n for n in os.listdir(root_fd) if DATE_NAME.match(n)):
                date_fd = self._open(root_fd, date)
                if date_fd is None:
                    continue
                try:
                    date_pinned = pinned or exists_at(date_fd, self.marker)
                    for user in sorted(os.listdir(date_fd)):
                        if user.startswith(".") or user == self.marker:
                            continue
                        user_fd = self._open(date_fd, user)
                        if user_fd is None:
                            continue
                        try:
                            self._folder(user_fd, date, user, date_pinned)
                        finally:
                            os.close(user_fd)
                finally:
                    os.close(date_fd)
        except ArchiveError as exc:  # a whole-target failure: the rest waits for the next pass
            self.report.stopped = str(exc)
        finally:
            os.close(root_fd)
            if self._target is not None:
                self._target.close()
        return self.report

    def _open(self, parent: int, name: str) -> int | None:
        """A folder below the root, never through a symlink and never on another mount."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError:
            return None
        if os.fstat(fd).st_dev != self._dev or mount_id(fd) != self._mount:
            os.close(fd)
            return None
        return fd

    def _folder(self, fd: int, date: str, user: str, pinned_above: bool) -> None:
        names = os.listdir(fd)
        present = set(names)
        folder_pinned = pinned_above or self.marker in present
        outputs: dict[str, _Output] = {}
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or not stem or name.startswith(".") or f".{suffix}" not in SUFFIXES:
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            out = outputs.get(stem)
            if out is None:
                out = outputs[stem] = _Output(stem, {}, 0.0, False)
            out.files[f".{suffix}"] = st
            out.mtime = max(out.mtime, st.st_mtime)
        for stem in sorted(outputs, key=lambda s: outputs[s].mtime):
            out = outputs[stem]
            if ".mp4" not in out.files:
                continue
            out.pinned = folder_pinned or (stem + self.marker) in present or any(
                f"{stem}{suffix}{self.marker}" in present for suffix in out.files)
            state = self._output(fd, date, user, out)
            if state != _ARCHIVED:  # the oldest output without a verified copy (a metric), and of the backlog
                report = self.report
                if report.oldest_unarchived is None or out.mtime < report.oldest_unarchived:
                    report.oldest_unarchived = out.mtime
                if state == _BACKLOG and (report.backlog["oldest"] is None or out.mtime < report.backlog["oldest"]):
                    report.backlog["oldest"] = out.mtime

    def _output(self, fd: int, date: str, user: str, out: _Output) -> str:
        """Archive one output if it is due; _ARCHIVED (now or before), _WAITING (not due yet) or _BACKLOG."""
        rel = f"{date}/{user}/{out.stem}"
        path = os.path.join(self.root, rel)
        video = out.files[".mp4"]
        age = self.now - out.mtime
        due = self._old_enough(date, user, out)
        if not due and (out.pinned or age < self.min_age or not self._short()):
            return _WAITING  # (its record is not even read: most outputs are young)
        record = read_record(fd, out.stem + ".json") if ".json" in out.files else {}
        done = record.get(ARCHIVED) if isinstance(record, dict) else None
        if isinstance(done, dict) and done.get("bytes") == video.st_size and \
                done.get("url") == object_url(self.cfg.url or "", rel + ".mp4"):
            self.report.archived_videos.add((date, user, out.stem))
            if not out.pinned and not self.dry_run and (self.cfg.delete_local or self._short()):
                self._remove_video(fd, path, out)  # archived by an earlier pass (that stopped, or kept it)
            return _ARCHIVED
        size = sum(st.st_size for st in out.files.values())
        self.report.backlog["outputs"] += 1
        self.report.backlog["bytes"] += size
        if self.dry_run:
            self.report.would.append({"path": path + ".mp4", "bytes": size,
                                      "why": f"{age / DAY:.1f} days old" + ("; pinned: kept locally" if out.pinned
                                                                            else "")})
            self.report.archived_videos.add((date, user, out.stem))  # the plan as after a successful archive
            return _BACKLOG
        if self.report.stopped:
            return _BACKLOG
        if time.monotonic() > self.deadline:
            self.report.out_of_time = True
            return _BACKLOG
        if record is None:
            self._fail(path + ".json", ArchiveError(Failure.LOCAL, f"{path}.json is not a readable JSON record: "
                                                                   f"the copy could not be noted there"))
            return _BACKLOG
        try:
            sha = self._upload(fd, rel, out)
            if not _unchanged(fd, out):
                raise ArchiveError(Failure.CHANGED, f"{path}.mp4 changed while it was archived")
            entry = {"url": object_url(self.cfg.url or "", rel + ".mp4"), "sha256": sha, "bytes": video.st_size,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_record(fd, out.stem + ".json", {**record, ARCHIVED: entry}, out.files.get(".json"))
        except ArchiveError as exc:
            self._fail(path + ".mp4", exc)
            if exc.failure.whole_target:
                self.report.stopped = str(exc)
            return _BACKLOG
        except OSError as exc:  # the local side: reading the output, rewriting its record
            self._fail(path + ".mp4", ArchiveError(Failure.LOCAL, f"{path}: {exc.strerror or exc} (local side)"))
            return _BACKLOG
        self.report.backlog["outputs"] -= 1
        self.report.backlog["bytes"] -= size
        self.report.archived.append({"path": path + ".mp4", "url": entry["url"], "bytes": size})
        self.report.archived_videos.add((date, user, out.stem))
        log.info("archived %s.mp4 to %s (%d bytes, sha256 %s)", path, entry["url"], video.st_size, sha)
        if (self.cfg.delete_local or self._short()) and not out.pinned:
            self._remove_video(fd, path, out)
        return _ARCHIVED

    def _short(self) -> bool:
        """True while the disk is critical and still below its free-space target (measured, as disk.py does)."""
        if self.critical is None:
            return False
        st = os.statvfs(self.root)
        used, avail = (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize
        return 100.0 * avail / max(used + avail, 1) < self.critical

    def _old_enough(self, date: str, user: str, out: _Output) -> bool:
        days = self.rules.days(date, user, [out.stem + s for s in out.files]) if self.rules.rules else \
            self.cfg.after_days
        return self.now - out.mtime >= max(days * DAY, 0.0)

    def _upload(self, fd: int, rel: str, out: _Output) -> str:
        """Each file of the output, the video last; the video's SHA-256."""
        sha = ""
        for suffix in SUFFIXES:
            st = out.files.get(suffix)
            if st is None:
                continue
            name = out.stem + suffix
            src = os.open(name, _READ_FLAGS, dir_fd=fd)
            try:
                if mount_id(src) != self._mount:  # a file bind-mounted onto an output's name: never read
                    raise ArchiveError(Failure.LOCAL, f"{name} is a mount point: never archived")
                now = os.fstat(src)
                if now.st_ino != st.st_ino or now.st_size != st.st_size or now.st_mtime_ns != st.st_mtime_ns:
                    raise ArchiveError(Failure.CHANGED, f"{name} changed since the folder was read")
                sha = self.target.put(f"{rel}{suffix}", src, st.st_size)
            finally:
                os.close(src)
            self.report.bytes_sent += st.st_size
        return sha

    def _remove_video(self, fd: int, path: str, out: _Output) -> None:
        """Unlink the local .mp4, only while it is still the file that was archived."""
        video = out.files[".mp4"]
        try:
            st = os.stat(out.stem + ".mp4", dir_fd=fd, follow_symlinks=False)
            if st.st_ino != video.st_ino or st.st_size != video.st_size or st.st_mtime_ns != video.st_mtime_ns:
                return  # replaced since: the next pass looks again
            os.unlink(out.stem + ".mp4", dir_fd=fd)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.report.failures.append({"path": path + ".mp4", "failure": Failure.LOCAL.value,
                                             "why": f"archived, but the local copy could not be removed: "
                                                    f"{exc.strerror}"})
            return
        self.report.removed.append(path + ".mp4")
        self.report.removed_bytes += video.st_size
        self.report.removed_freed += video.st_blocks * 512 if video.st_nlink <= 1 else 0

    def _fail(self, path: str, exc: ArchiveError) -> None:
        log.error("could not archive %s: %s; the local file is kept and retried next pass", path, exc)
        self.report.failures.append({"path": path, "failure": exc.failure.value, "why": str(exc)})


def _unchanged(fd: int, out: _Output) -> bool:
    for suffix, st in out.files.items():
        try:
            now = os.stat(out.stem + suffix, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
        if now.st_ino != st.st_ino or now.st_size != st.st_size or now.st_mtime_ns != st.st_mtime_ns:
            return False
    return True


def read_record(fd: int, name: str) -> dict[str, Any] | None:
    """The output's .json as a dict; {} when there is none; None when it is not a JSON object."""
    try:
        src = os.open(name, _READ_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        return {}
    except OSError:
        return None
    try:
        data = os.read(src, RECORD_MAX_BYTES + 1)
    finally:
        os.close(src)
    if len(data) > RECORD_MAX_BYTES:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _write_record(fd: int, name: str, record: dict[str, Any], old: os.stat_result | None) -> None:
    """Replace the .json in one rename (temp, fsync, rename, folder fsync), keeping its mtime: the output's
    age, which retention counts from, must not restart because the copy was noted."""
    temp = f".{name}.{os.getpid()}.tmp"
    out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                  stat.S_IMODE(old.st_mode) if old else 0o644, dir_fd=fd)
    try:
        try:
            view = memoryview(json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8"))
            while view:
                view = view[os.write(out, view):]
            os.fsync(out)
        finally:
            os.close(out)
        if old is not None:
            os.utime(temp, ns=(old.st_atime_ns, old.st_mtime_ns), dir_fd=fd, follow_symlinks=False)
        os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=fd)
        raise


def render_lines(doc: dict[str, Any] | None) -> list[str]:
    """The archive part of the janitor's text report (report.render_text)."""
    if not doc:
        return []
    from daemon.notify.messages import human

    lines: list[str] = []
    for item in doc["would_archive"]:
        lines.append(f"  archive {human(item['bytes']):>10}  {item['path']}  [to {doc['url']}: {item['why']}]")
    for item in doc["archived"][:50]:
        lines.append(f"  archived {human(item['bytes']):>9}  {item['path']} -> {item['url']}")
    if len(doc["archived"]) > 50:
        lines.append(f"  ... and {len(doc['archived']) - 50} more archived (--json lists them)")
    for item in doc["failures"]:
        lines.append(f"  NOT ARCHIVED {item['path']}: {item['why']}; the local file is kept, retried next pass")
    if doc["stopped"]:
        lines.append(f"Archive stopped for this pass: {doc['stopped']}")
    if doc["out_of_time"]:
        lines.append(f"Archive: the pass's time budget ({PASS_BUDGET_SECONDS:.0f} s) was used up; the rest waits for "
                     f"the next pass")
    backlog = doc["backlog"]
    verb = "would archive" if doc["dry_run"] else "archived"
    lines.append(f"Archive to {doc['url']}: {verb} {len(doc['would_archive'] or doc['archived'])} outputs, removed "
                 f"{len(doc['removed'])} local videos ({human(doc['removed_bytes'])}); backlog {backlog['outputs']} "
                 f"outputs ({human(backlog['bytes'])}), {len(doc['failures'])} failures")
    return lines


def alert(config: Config, prior: dict[str, Any], report: Report, watermark_unarchived: list[str],
          held_bytes: int) -> dict[str, Any]:
    """Tell the notify targets about archive trouble once per kind of failure (not every pass), and every time
    the watermark deleted videos that were not archived. Returns the archive part of the janitor state."""
    from daemon.notify.messages import human
    from daemon.notify.send import send, targets

    state = {"told": dict(prior.get("told", {})),
             "bytes_total": int(prior.get("bytes_total", 0)) + sum(item["bytes"] for item in report.archived),
             "backlog": report.backlog, "oldest_unarchived": report.oldest_unarchived,
             "failures": len(report.failures), "last_failure": report.failures[-1]["why"] if report.failures else None}
    lines: list[str] = []
    kinds = {f["failure"] for f in report.failures}
    if held_bytes:
        kinds.add("kept-unarchived")
    new = sorted(kinds - set(state["told"]))
    if new:
        lines.append(f"Archiving to {report.url} failed on {os.uname().nodename}; the local files are kept and "
                     f"retried every pass (this message is not repeated):")
        lines += [f"- {f['path']}: {f['why']}" for f in report.failures[:10]]
        if len(report.failures) > 10:
            lines.append(f"- ... and {len(report.failures) - 10} more (lipsyncd janitor --dry-run, the journal)")
        if held_bytes:
            lines.append(f"- the disk is critical, and {human(held_bytes)} of outputs are kept because they are not "
                         f"archived (janitor.archive.required is true)")
    if watermark_unarchived:
        lines.append(f"The disk was critical: {len(watermark_unarchived)} outputs that were NOT archived were deleted "
                     f"(janitor.archive.required is false):")
        lines += [f"- {path}" for path in watermark_unarchived[:20]]
    if not kinds:
        if state["told"]:
            log.info("archiving to %s works again", report.url)
        state["told"] = {}
    if not lines or report.dry_run:
        return state
    send_to = targets(config)
    sent = send(send_to, "lipsyncd: archive problem" if new else "lipsyncd: unarchived videos deleted",
                "\n".join(lines)) if send_to else {}
    if not send_to or any(sent.values()):
        state["told"].update({kind: time.time() for kind in new})
    else:
        log.warning("the archive message could not be sent; it is tried again next pass")
    return state

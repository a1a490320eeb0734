"""Configuration: YAML (safe loading) merged over the documented defaults, then read once into typed sections.

Every key a user may set is in DEFAULTS (and documented in config/lipsyncd.yaml, which a test keeps in
step with this file). A mistake is reported as ConfigError naming the key, the file and the line, so
`lipsyncd` can exit 2 with a message a person can act on. After validation each daemon-side section is
built once into a frozen dataclass (config.queue.lease_seconds is a float), so no caller converts a value
again; the nested dict stays readable as before. Imports stay light: the janitor loads this module.
"""

from __future__ import annotations

import copy
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon import names
from pipeline import engines  # the registry's engine names; no torch (the janitor imports this module)

SYSTEM_CONFIG = Path("/etc/lipsyncd/lipsyncd.yaml")
DATA_ROOT = "/var/lib/lipsyncd"

DEFAULTS: dict[str, Any] = {
    "paths": {
        "inbox": f"{DATA_ROOT}/inbox",
        "outputs": f"{DATA_ROOT}/outputs",
        "failed": f"{DATA_ROOT}/failed",
        "spool": f"{DATA_ROOT}/spool",
        "state": f"{DATA_ROOT}/state",
        "avatars": f"{DATA_ROOT}/avatars",
    },
    "ingest": {
        "settle_seconds": 5,
        "pair_timeout_minutes": 60,
        "users_from": "folder",
        "default_user": "shared",
        "poll": False,
        "rescan_seconds": 60,
    },
    "pipeline": {
        "engine": "builtin",
        "device": "auto",
        "allowed_engines": list(engines.NAMES),
        "batch_frames": 32,
        "crf": 20,
        "preset": "veryfast",
        "max_seconds": 1800,
        "max_pixels": 3840 * 2160,
        "builtin": {
            "detect_every": 5,
            "mouth_gain": 1.0,
        },
        "wav2lip": {
            "checkpoint": None,
            "pads": [0, 10, 0, 0],
            "batch_size": 64,
        },
        "heygem": {
            "base_url": "http://127.0.0.1:8383",
            "host_data_dir": None,
            "container_data_dir": "/code/data",
            "timeout_minutes": 120,
            "stall_minutes": 10,
            "poll_seconds": 2.0,
            "result_wait_seconds": 30,
        },
        "command": {
            "argv": [],
            "timeout_seconds": 3600,
            "env": {},
            "cwd": None,
        },
    },
    "queue": {
        "url": None,
        "lease_seconds": 30,
        "stop_timeout_seconds": 120,
        "max_attempts": 3,
        "local_workers": True,
    },
    "janitor": {
        "retention": {"default_days": 7, "rules": []},
        "keep_marker": ".keep",
        "failed_days": 14,
        "min_age_hours": 24,
        "disk": {"warn_percent": 80, "critical_percent": 90, "clear_percent": 75, "target_free_percent": 25},
        "archive": {
            "url": None,
            "endpoint_url": None,
            "region": None,
            "access_key_id": None,
            "secret_access_key": None,
            "after_days": 2,
            "delete_local": True,
            "required": True,
        },
    },
    "notify": {
        "urls": [],
        "apprise_config": None,
        "events": ["disk", "job_failed"],
        "repeat_hours": 6,
        "language": "en",
        "users": {},
    },
    "access": {
        "mode": "shared",
        "admin_group": "lipsyncd-admin",
        "accounts": {},
    },
    "logging": {"level": "INFO", "file": None},
    "metrics": {"textfile": None},
    "web": {
        "listen": "127.0.0.1:8787",
        "auth": "proxy",
        "proxy_header": "Remote-User",
        "trusted_proxies": ["127.0.0.1", "::1"],
        "admins": [],
        "upload_max_mb": 2048,
    },
}

# Keys whose default is None or whose shape a default cannot show: dotted key -> allowed types.
_TYPES: dict[str, tuple[type, ...]] = {
    "pipeline.device": (str, list),
    "pipeline.wav2lip.checkpoint": (str, type(None)),
    "pipeline.heygem.host_data_dir": (str, type(None)),
    "pipeline.command.cwd": (str, type(None)),
    "queue.url": (str, type(None)),
    "notify.apprise_config": (str, type(None)),
    "logging.file": (str, type(None)),
    "metrics.textfile": (str, type(None)),
    "janitor.archive.url": (str, type(None)),
    "janitor.archive.endpoint_url": (str, type(None)),
    "janitor.archive.region": (str, type(None)),
    "janitor.archive.access_key_id": (str, type(None)),
    "janitor.archive.secret_access_key": (str, type(None)),
}
_NUMBER = (int, float)
_EVENTS = ("disk", "job_failed", "job_done")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping.

    Plain YAML keeps the last value silently, so a second `paths:` section would wipe out the first one
    without a word. The error names both lines; keys merged in with `<<:` may still be overridden.
    Used for the configuration and for job manifests.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen[key] = line
                except TypeError:  # an unhashable key: construct_mapping reports it
                    continue
                if first is not None:
                    lines = f"on line {line}" if first == line else f"on line {first} and on line {line}"
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is set twice, {lines}: keep one (YAML would silently use the last)",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


class ConfigError(Exception):
    """A configuration mistake, worded for the person who edits the file."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None,
                 line: int | None = None) -> None:
        where = ""
        if source:
            where = f"{source}:{line}: " if line else f"{source}: "
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")
        self.key, self.source, self.line = key, source, line


# One frozen dataclass per daemon-side section, field for field as in DEFAULTS (which holds the defaults:
# these hold only the types). _typed() builds them from the validated dict, so a key added to DEFAULTS
# without its field here fails every load, in every test.

@dataclass(frozen=True)
class PathsConfig:
    """paths: the data folders, as Paths (most users join and test them; os.* calls take them as they are)."""

    inbox: Path
    outputs: Path
    failed: Path
    spool: Path
    state: Path
    avatars: Path

    def folders(self) -> dict[str, Path]:
        """{key: folder} for every data folder, in the section's order (for loops and disk.filesystems)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class IngestConfig:
    """ingest: how the inbox is watched, settled and paired."""

    settle_seconds: float
    pair_timeout_minutes: float
    users_from: str
    default_user: str
    poll: bool
    rescan_seconds: float


@dataclass(frozen=True)
class PipelineConfig:
    """pipeline: what the daemon itself picks; `settings` is the whole section, handed to engines as it is
    (pipeline/ knows nothing of the daemon's config, so each engine reads its own keys from the mapping)."""

    engine: str
    devices: tuple[str, ...]  # pipeline.device as a list: one worker per entry
    allowed_engines: tuple[str, ...]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class QueueConfig:
    """queue: where jobs wait (SQLite in paths.state, or Redis) and how long a worker's lease lasts."""

    url: str | None
    lease_seconds: float
    stop_timeout_seconds: float
    max_attempts: int
    local_workers: bool


@dataclass(frozen=True)
class RetentionRule:
    """One janitor.retention.rules entry: outputs matching the glob are kept *days* days (and, with archiving
    on, archived once *archive_days* old instead of janitor.archive.after_days)."""

    match: str
    days: float
    archive_days: float | None = None


@dataclass(frozen=True)
class RetentionConfig:
    """janitor.retention: how long outputs are kept."""

    default_days: float
    rules: tuple[RetentionRule, ...]


@dataclass(frozen=True)
class DiskConfig:
    """janitor.disk: alert thresholds and the watermark the janitor prunes down to."""

    warn_percent: float
    critical_percent: float
    clear_percent: float
    target_free_percent: float


@dataclass(frozen=True)
class ArchiveConfig:
    """janitor.archive: where outputs are copied (and verified) before their local video is removed."""

    url: str | None  # s3://BUCKET/PREFIX or file:///mnt/nas/lipsync; None: no archiving
    endpoint_url: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    after_days: float
    delete_local: bool
    required: bool

    def __repr__(self) -> str:  # never the secret, wherever a config is printed
        return f"ArchiveConfig(url={self.url!r}, endpoint_url={self.endpoint_url!r}, after_days={self.after_days})"


@dataclass(frozen=True)
class JanitorConfig:
    """janitor: what a pass may prune, and when it alerts."""

    retention: RetentionConfig
    keep_marker: str
    failed_days: float
    min_age_hours: float
    disk: DiskConfig
    archive: ArchiveConfig


@dataclass(frozen=True)
class NotifyConfig:
    """notify: where alerts and job events go, which events, and in which language."""

    urls: tuple[str, ...]
    apprise_config: str | None  # text, not a Path: Apprise also reads its configuration from a URL
    events: tuple[str, ...]
    repeat_hours: float
    language: str
    users: dict[str, tuple[str, ...]]  # notify.users: {user folder: [apprise URLs]} for that person's jobs


@dataclass(frozen=True)
class AccessConfig:
    """access: who may reach a user's folders (daemon.access applies it)."""

    mode: str
    admin_group: str
    accounts: dict[str, str]  # {folder name: local account}


@dataclass(frozen=True)
class LoggingConfig:
    """logging: the level, and an optional file beside the journal."""

    level: str
    file: Path | None


@dataclass(frozen=True)
class WebConfig:
    """web: where `lipsyncd web` listens, who it believes a person is, and how big an upload may be."""

    listen: str
    auth: str  # proxy: the proxy_header from trusted_proxies; password: its own login page
    proxy_header: str
    trusted_proxies: tuple[str, ...]
    admins: tuple[str, ...]
    upload_max_mb: float


@dataclass(frozen=True)
class MetricsConfig:
    """metrics: the node-exporter textfile the janitor writes, if any."""

    textfile: Path | None


class Config(dict):
    """The merged configuration: the nested dict it always was, where it came from, and the typed sections.

    Making one validates it, so a Config always holds good values. Treat it as read-only: the typed
    sections are built once, here, and a reload makes a new Config.
    """

    source: str | None
    lines: dict[str, int]
    paths: PathsConfig
    ingest: IngestConfig
    pipeline: PipelineConfig
    queue: QueueConfig
    janitor: JanitorConfig
    notify: NotifyConfig
    access: AccessConfig
    logging: LoggingConfig
    metrics: MetricsConfig
    web: WebConfig

    def __init__(self, data: Mapping[str, Any], source: str | None, lines: dict[str, int]) -> None:
        super().__init__(data)
        self.source = source
        self.lines = lines
        _validate(self)
        self.paths = _typed(PathsConfig, self["paths"])
        self.ingest = _typed(IngestConfig, self["ingest"])
        pipeline = self["pipeline"]
        self.pipeline = PipelineConfig(engine=pipeline["engine"], devices=_as_tuple(pipeline["device"]),
                                       allowed_engines=tuple(pipeline["allowed_engines"]), settings=pipeline)
        self.queue = _typed(QueueConfig, self["queue"])
        self.janitor = _typed(JanitorConfig, self["janitor"])
        self.notify = _typed(NotifyConfig, self["notify"])
        self.access = _typed(AccessConfig, self["access"])
        self.logging = _typed(LoggingConfig, self["logging"])
        self.metrics = _typed(MetricsConfig, self["metrics"])
        self.web = _typed(WebConfig, self["web"])

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError pointing at the line that set *key* (or the file, for a default)."""
        line = None
        parts = key.split(".")
        while parts and line is None:
            line = self.lines.get(".".join(parts))
            parts.pop()
        return ConfigError(message, key=key, source=self.source, line=line)


def _typed(kind: Any, value: Any) -> Any:
    """A validated *value* as the type *kind* names: a section dataclass, a tuple, Path, float, int, ..."""
    if value is None:
        return None
    if is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{key: _typed(hints[key], item) for key, item in value.items()})
    if typing.get_origin(kind) is dict:
        return {key: _typed(typing.get_args(kind)[1], item) for key, item in value.items()}
    if typing.get_origin(kind) is tuple:
        return tuple(_typed(typing.get_args(kind)[0], item) for item in value)
    if isinstance(kind, types.UnionType):  # X | None, and the value is not None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind(value)


def default_config_path() -> Path | None:
    """--config's default: $LIPSYNCD_CONFIG, then /etc/lipsyncd/lipsyncd.yaml if it exists."""
    env = os.environ.get("LIPSYNCD_CONFIG")
    if env:
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load(path: str | os.PathLike[str] | None, *, required: bool = True,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate a config file merged over DEFAULTS.

    With path None and required False (render, sync-score), the defaults alone are used.
    *overrides* is a nested dict applied on top (tests, the demo).
    """
    data = copy.deepcopy(DEFAULTS)
    lines: dict[str, int] = {}
    source = None
    if path is None:
        if required:
            raise ConfigError(
                f"no configuration file: pass --config FILE, set LIPSYNCD_CONFIG, or create {SYSTEM_CONFIG}"
            )
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("file not found", source=source) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read it: {exc}", source=source) from None
        user, lines = _parse(text, source)
        _merge(data, user, "", source, lines)
    if overrides:
        _merge(data, copy.deepcopy(dict(overrides)), "", source, lines)
    return Config(data, source, lines)


def _parse(text: str, source: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Safe-load YAML, recording the line of every mapping key for error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source=source,
                          line=mark.line + 1 if mark else None) from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("the top level must be a mapping of sections (paths:, ingest:, ...)",
                          source=source, line=node.start_mark.line + 1)
    lines: dict[str, int] = {}
    _record_lines(node, "", lines, source)
    loader = UniqueKeyLoader("")
    try:
        value = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(str(exc.problem), source=source, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None
    return value, lines


def _record_lines(node: yaml.Node, prefix: str, lines: dict[str, int], source: str) -> None:
    """Note the line of every mapping key; a key (or section) written twice is an error naming both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key in seen:
                what = "section" if not prefix else "key"
                where = f"on line {line}" if lines[key] == line else f"on line {lines[key]} and on line {line}"
                raise ConfigError(f"this {what} is set twice, {where}: keep one (YAML would silently use the last)",
                                  key=key, source=source, line=line)
            seen.add(key)
            lines[key] = line
            _record_lines(value_node, key + ".", lines, source)


def _merge(base: dict[str, Any], user: Mapping[str, Any], prefix: str, source: str | None,
           lines: dict[str, int]) -> None:
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in base:
            known = ", ".join(sorted(base)) or "none"
            raise ConfigError(f"unknown key (known here: {known})", key=dotted, source=source,
                              line=lines.get(dotted))
        if isinstance(base[key], dict) and key not in _FREE_FORM_KEYS.get(prefix.rstrip("."), ()):
            if not isinstance(value, Mapping):
                raise ConfigError(f"must be a mapping, not {_kind(value)}", key=dotted, source=source,
                                  line=lines.get(dotted))
            _merge(base[key], value, dotted + ".", source, lines)
        else:
            base[key] = value


# Mappings whose keys are the user's own (not checked against DEFAULTS).
_FREE_FORM_KEYS = {"pipeline.command": ("env",), "notify": ("users",), "access": ("accounts",)}


def _kind(value: Any) -> str:
    return {type(None): "empty", bool: "true/false", str: "text", int: "a number", float: "a number",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _walk_leaves(defaults: Mapping[str, Any], prefix: str = ""):
    for key, value in defaults.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _FREE_DICTS:
            yield from _walk_leaves(value, dotted + ".")
        else:
            yield dotted, value


_FREE_DICTS = {"pipeline.command.env", "notify.users", "access.accounts"}


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value[part]
    return value


def _validate(config: Config) -> None:
    """Type-check every leaf against its default, then the few rules types cannot say."""
    for dotted, default in _walk_leaves(DEFAULTS):
        value = _get(config, dotted)
        allowed = _TYPES.get(dotted)
        if allowed is None:
            if isinstance(default, bool):
                allowed = (bool,)
            elif isinstance(default, (int, float)):
                allowed = _NUMBER
            else:
                allowed = (type(default),)
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            wanted = " or ".join(sorted({_kind_name(t) for t in allowed}))
            raise config.error(dotted, f"must be {wanted}, not {_kind(value)} ({value!r})")

    for dotted, check in _RULES.items():
        message = check(_get(config, dotted))
        if message:
            raise config.error(dotted, message)

    for name, value in config["paths"].items():
        if not str(value).strip():
            raise config.error(f"paths.{name}", "must not be empty")
    rules = config["janitor"]["retention"]["rules"]
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or not {"match", "days"} <= set(rule) <= {"match", "days", "archive_days"} \
                or not isinstance(rule["match"], str) or not _is_number(rule["days"]) \
                or not _is_number(rule.get("archive_days", 0)) or rule.get("archive_days", 0) < 0:
            raise config.error("janitor.retention.rules",
                               f"rule {i + 1} must look like {{match: \"<glob under outputs>\", days: N}} "
                               f"(optionally archive_days: N)")
    disk = config["janitor"]["disk"]
    if not disk["clear_percent"] <= disk["warn_percent"] <= disk["critical_percent"] <= 100:
        raise config.error("janitor.disk", "needs clear_percent <= warn_percent <= critical_percent <= 100")


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _archive_url(value: Any) -> str | None:
    """janitor.archive.url: s3://BUCKET[/PREFIX] or file:///absolute/folder (a mounted NAS share)."""
    if value is None:
        return None
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if bucket and len(bucket) >= 3 and all(c.isalnum() or c in ".-" for c in bucket):
            return None
        return f"names no valid bucket: write s3://BUCKET/PREFIX (not {value!r})"
    if value.startswith("file:///") and value.rstrip("/") != "file://":
        return None
    return f"must be empty (no archiving), s3://BUCKET/PREFIX or file:///mounted/folder (not {value!r})"


def _endpoint_url(value: Any) -> str | None:
    if value is None or value.startswith(("http://", "https://")):
        return None
    return f"must be empty (AWS) or an http:// or https:// URL such as http://minio.lan:9000 (not {value!r})"


def _kind_name(t: type) -> str:
    return {type(None): "empty (null)", bool: "true/false", str: "text", int: "a number",
            float: "a number", list: "a list", dict: "a mapping"}.get(t, t.__name__)


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _limit(value: Any) -> str | None:
    """A limit on what a job may ask (pipeline.max_seconds, max_pixels): a real, positive number."""
    return None if 0 < value < float("inf") else "must be a number greater than 0 (not .inf or .nan)"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)} (not {value!r})"
    return check


def _devices(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if not items:
        return "must name at least one device"
    for item in items:
        if not isinstance(item, str) or not (item in ("auto", "cpu") or item == "cuda"
                                              or (item.startswith("cuda:") and item[5:].isdigit())):
            return f"each device must be auto, cpu, cuda or cuda:N (not {item!r})"
    return None


def _strings(value: Any) -> str | None:
    return None if all(isinstance(v, str) for v in value) else "must be a list of text items"


def _allowed_engines(value: Any) -> str | None:
    bad = [v for v in value if v not in engines.NAMES]
    return f"unknown engine(s) {bad}; known: {', '.join(engines.NAMES)}" if bad else None


def _events(value: Any) -> str | None:
    bad = [v for v in value if v not in _EVENTS]
    return f"unknown event(s) {bad}; known: {', '.join(_EVENTS)}" if bad else None


def _percent(value: Any) -> str | None:
    return None if 0 < value <= 100 else "must be a percentage between 0 and 100"


def _name_map(value: Any, what: str, good: Callable[[Any], Any]) -> str | None:
    """A mapping {user folder name: *what*} (notify.users, access.accounts)."""
    for key, item in value.items():
        if not isinstance(key, str) or names.refusal(key):
            return f"{key!r} cannot be a user folder name"
        if not good(item):
            return f"{key}: must be {what}, not {_kind(item)} ({item!r})"
    return None


def _queue_url(value: Any) -> str | None:
    if value is None or str(value).startswith(("redis://", "rediss://", "unix://")):
        return None
    return "must be empty (SQLite in paths.state) or a redis://host:port/db URL"


def _listen(value: Any) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must be HOST:PORT, e.g. 127.0.0.1:8787 or [::1]:8787 (not {value!r})"
    return None


def _networks(value: Any) -> str | None:
    import ipaddress

    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            return f"each entry must be an IP address or network such as 10.0.0.0/8 (not {item!r})"
    return None


_RULES: dict[str, Callable[[Any], str | None]] = {
    "ingest.settle_seconds": _not_negative,
    "ingest.pair_timeout_minutes": _positive,
    "ingest.rescan_seconds": _positive,
    "ingest.users_from": _one_of("folder", "default"),
    "pipeline.engine": _one_of(*engines.NAMES),
    "pipeline.device": _devices,
    "pipeline.allowed_engines": _allowed_engines,
    "pipeline.batch_frames": _positive,
    "pipeline.max_seconds": _limit,
    "pipeline.max_pixels": _limit,
    "pipeline.command.argv": _strings,
    "queue.url": _queue_url,
    "queue.lease_seconds": _positive,
    "queue.stop_timeout_seconds": _not_negative,
    "queue.max_attempts": _positive,
    "janitor.retention.default_days": _not_negative,
    "janitor.failed_days": _not_negative,
    "janitor.min_age_hours": _not_negative,
    "janitor.disk.warn_percent": _percent,
    "janitor.disk.critical_percent": _percent,
    "janitor.disk.clear_percent": _percent,
    "janitor.disk.target_free_percent": _percent,
    "janitor.archive.url": _archive_url,
    "janitor.archive.endpoint_url": _endpoint_url,
    "janitor.archive.after_days": _not_negative,
    "notify.urls": _strings,
    "notify.events": _events,
    "notify.repeat_hours": _positive,
    "notify.language": _one_of("en", "zh"),
    "logging.level": _one_of(*_LEVELS),
    "web.listen": _listen,
    "web.auth": _one_of("proxy", "password"),
    "web.trusted_proxies": _networks,
    "web.admins": _strings,
    "web.upload_max_mb": _positive,
    "notify.users": lambda value: _name_map(value, "a list of Apprise URLs", lambda v: isinstance(v, list) and all(
        isinstance(u, str) for u in v)),
    "access.mode": _one_of("shared", "private"),
    "access.admin_group": lambda value: None if value.strip() else "must name a group",
    "access.accounts": lambda value: _name_map(value, "a local account name", lambda v: isinstance(v, str) and v),
}


# The folders the janitor prunes: each must be a real folder (not a symlink) of its own.
PRUNED = ("outputs", "failed")
# Why two data folders must not overlap, by the folder that would act on what lies in it.
_OVERLAP_HARM = {
    "outputs": "the janitor prunes paths.outputs and would delete what paths.{other} holds",
    "failed": "the janitor prunes paths.failed and would delete what paths.{other} holds",
    "inbox": "the inbox watcher would take what paths.{other} holds for drops and move it away",
    "spool": "the daemon would take what paths.{other} holds for jobs",
}


def layout_problems(config: Config) -> list[ConfigError]:
    """What is wrong with the paths section as laid out on disk, one error per problem (none: it is fine).

    The single rule every command applies (run and worker refuse to start, the janitor refuses to
    prune, doctor and status report it): the pruned folders are no symlinks, and no data folder is,
    contains or lies inside another (compared after resolving symlinks, so `failed: /` overlaps all).
    """
    problems: list[ConfigError] = []
    paths = {key: os.path.abspath(folder) for key, folder in config.paths.folders().items()}
    for key in PRUNED:
        if os.path.islink(paths[key]):
            problems.append(config.error(
                f"paths.{key}", f"{paths[key]} is a symlink; the janitor never works through symlinks: "
                f"set paths.{key} to the real folder ({os.path.realpath(paths[key])})"))
    real = {key: os.path.realpath(path) for key, path in paths.items()}
    order = [*PRUNED, *(key for key in paths if key not in PRUNED)]  # the pruned folders are named first
    for i, first in enumerate(order):
        for second in order[i + 1:]:
            # The error is about the folder that holds the other (`failed: /` names paths.failed).
            if real[first] == real[second] or _same_folder(real[first], real[second]):
                key, other, relation = first, second, "is the same folder as"
            elif _inside(real[second], real[first]):
                key, other, relation = first, second, "contains"
            elif _inside(real[first], real[second]):
                key, other, relation = second, first, "contains"
            else:
                continue
            theirs = real[other]
            if key in _OVERLAP_HARM:  # the holder acts on what lies in it
                harm = _OVERLAP_HARM[key].format(other=other)
            elif other in _OVERLAP_HARM:  # the same folder: the other one acts on it too
                harm = _OVERLAP_HARM[other].format(other=key)
            else:
                harm = "each would be taken for the other"
            problems.append(config.error(
                f"paths.{key}", f"{paths[key]} overlaps paths.{other}: it {relation} {theirs}; {harm}. "
                "Give each data folder its own place, none inside another"))
    return problems


def check_layout(config: Config) -> None:
    """Raise the first of layout_problems() as a ConfigError (exit 2), for commands that must not start."""
    problems = layout_problems(config)
    if problems:
        raise problems[0]


def _same_folder(a: str, b: str) -> bool:
    """Two existing paths that are one folder under two names (a bind mount of one onto the other)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


# Results wait in the spool while these cannot be written (a share remounted read-only, an immutable
# folder): a server fault the worker waits out, not a reason to refuse to start.
PUBLISHED = ("outputs", "failed")


def ensure_folders(config: Config, names: tuple[str, ...] | None = None) -> list[str]:
    """Create the data folders (*names*, default all); one that cannot be created is a configuration error
    (exit 2), and so is one that cannot be written, except outputs/ and failed/ (PUBLISHED): for those
    the problems are returned, and jobs wait to be published until they are fixed."""
    folders = config.paths.folders()
    waiting = []
    for name in names or folders:
        folder = folders[name]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if name in PUBLISHED and folder.is_dir():
                waiting.append(f"paths.{name}: folder {folder} cannot be written ({exc.strerror})")
                continue
            raise config.error(f"paths.{name}", f"folder {folder} cannot be created: {exc.strerror}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            if name in PUBLISHED:
                waiting.append(f"paths.{name}: folder {folder} is not writable by this user")
                continue
            raise config.error(f"paths.{name}", f"folder {folder} is not writable by this user")
    return waiting


def _as_tuple(value: str | list[str]) -> tuple[str, ...]:
    """pipeline.device as a tuple: one worker per entry."""
    return tuple(value) if isinstance(value, list) else (value,)

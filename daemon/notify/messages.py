"""The words of every notification, in English or Chinese (notify.language), as a title and a Markdown body.

Markdown because DingTalk renders it natively and Apprise turns it into HTML for e-mail; plain
"- item" lists and **bold** only, which read fine even where Markdown is shown as text (json:// hooks).
A disk message is written for the person on call: how full, how fast it grows, when it will be full,
who and which days take the space, what this pass freed, what is pinned, and what to do.
"""

from __future__ import annotations

from typing import Any

from daemon.disk import FsUsage, Growth

LANGUAGES = ("en", "zh")

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title.enter.warn": "[lipsyncd] Disk warning: {mount} on {host} is {percent} full",
        "title.enter.critical": "[lipsyncd] Disk CRITICAL: {mount} on {host} is {percent} full",
        "title.repeat.warn": "[lipsyncd] Still a disk warning: {mount} on {host} is {percent} full",
        "title.repeat.critical": "[lipsyncd] Still CRITICAL: {mount} on {host} is {percent} full",
        "title.clear": "[lipsyncd] Disk back to normal: {mount} on {host} is {percent} full",
        "head": "**{mount}** on **{host}** ({folders}): **{percent} used**",
        "used": "Used {used} of {size}; **{avail} free** ({free_percent})",
        "before": "Before this pass: {percent} used",
        "levels": "Levels: warning at {warn}%, critical at {critical}%, clears below {clear}%",
        "growth": "Growth: {written}/day written, net {net}/day over {runs} runs ({days} days)",
        "full_in": "**Full in about {days} days** at this rate",
        "not_growing": "Not filling up: net usage is flat or falling",
        "no_history": "Growth: not enough history yet (the janitor needs a few runs over at least an hour)",
        "freed": "This pass freed {bytes} ({files} files): {parts}",
        "freed_none": "This pass freed nothing",
        "reason.expired": "{bytes} expired",
        "reason.watermark": "{bytes} early because the disk was critical",
        "reason.failed-expired": "{bytes} of old failed/ entries",
        "reason.abandoned-temp": "{bytes} of abandoned temp files",
        "short": "**Still not enough:** {needed} more must be freed to reach {target}% free, and the janitor "
                 "may not delete anything else: {pinned} is pinned with {marker}, {young} is younger than "
                 "{hours} h, the rest is not under outputs/. Remove pins, move results elsewhere, or add disk.",
        "users": "Largest users: {items}",
        "dates": "Largest dates: {items}",
        "pinned": "Pinned: {files} files, {bytes} ({where})",
        "stale": "Stale spool folders (lease long gone, not queued): {count}; see `lipsyncd janitor --dry-run`",
        "logfile": "Log file {path}: {bytes}",
        "clear_body": "Usage is below {clear}% again.",
        "job.title.job_failed": "[lipsyncd] Job failed: {user}/{stem}",
        "job.title.job_done": "[lipsyncd] Job done: {user}/{stem}",
        "job.user": "User", "job.stem": "Name", "job.id": "Job", "job.host": "Host",
        "job.detail.job_failed": "Error", "job.detail.job_done": "Result",
        "job.more": "Full log: `journalctl -u lipsyncd JOB_ID={job_id}`",
    },
    "zh": {
        "title.enter.warn": "[lipsyncd] 磁盘告警：{host} 上的 {mount} 已用 {percent}",
        "title.enter.critical": "[lipsyncd] 磁盘严重告警：{host} 上的 {mount} 已用 {percent}",
        "title.repeat.warn": "[lipsyncd] 磁盘告警持续：{host} 上的 {mount} 已用 {percent}",
        "title.repeat.critical": "[lipsyncd] 磁盘严重告警持续：{host} 上的 {mount} 已用 {percent}",
        "title.clear": "[lipsyncd] 磁盘已恢复正常：{host} 上的 {mount} 已用 {percent}",
        "head": "**{host}** 上的 **{mount}**（{folders}）：**已用 {percent}**",
        "used": "已用 {used}，共 {size}；**剩余 {avail}**（{free_percent}）",
        "before": "本次清理前：已用 {percent}",
        "levels": "阈值：{warn}% 告警，{critical}% 严重，低于 {clear}% 解除",
        "growth": "增长：每天写入 {written}，净增 {net}/天（{runs} 次运行，{days} 天）",
        "full_in": "**按此速度约 {days} 天后写满**",
        "not_growing": "没有在增长：净用量持平或下降",
        "no_history": "增长：历史数据还不够（需要至少一小时内的多次运行）",
        "freed": "本次清理释放 {bytes}（{files} 个文件）：{parts}",
        "freed_none": "本次清理没有释放空间",
        "reason.expired": "过期 {bytes}",
        "reason.watermark": "磁盘严重不足提前清理 {bytes}",
        "reason.failed-expired": "过期的 failed/ 条目 {bytes}",
        "reason.abandoned-temp": "遗留的临时文件 {bytes}",
        "short": "**空间仍然不够：** 还需释放 {needed} 才能达到 {target}% 空闲，而清理程序不能再删除其他文件："
                 "{pinned} 被 {marker} 固定，{young} 不到 {hours} 小时，其余不在 outputs/ 下。"
                 "请移除固定标记、把结果移走，或增加磁盘。",
        "users": "占用最多的用户：{items}",
        "dates": "占用最多的日期：{items}",
        "pinned": "已固定：{files} 个文件，{bytes}（{where}）",
        "stale": "过期的 spool 目录（租约早已失效且不在队列中）：{count} 个；详见 `lipsyncd janitor --dry-run`",
        "logfile": "日志文件 {path}：{bytes}",
        "clear_body": "用量已回到 {clear}% 以下。",
        "job.title.job_failed": "[lipsyncd] 任务失败：{user}/{stem}",
        "job.title.job_done": "[lipsyncd] 任务完成：{user}/{stem}",
        "job.user": "用户", "job.stem": "名称", "job.id": "任务", "job.host": "主机",
        "job.detail.job_failed": "错误", "job.detail.job_done": "结果",
        "job.more": "完整日志：`journalctl -u lipsyncd JOB_ID={job_id}`",
    },
}


def human(size: float) -> str:
    """Bytes as a short binary-unit size: 0 B, 512 B, 1.5 KiB, 20.0 GiB."""
    value = float(size)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _signed(size: float) -> str:
    return ("+" if size >= 0 else "") + human(size)


def _t(lang: str) -> dict[str, str]:
    return _TEXT.get(lang, _TEXT["en"])


def disk_message(lang: str, kind: str, level: str, fs: FsUsage, facts: dict[str, Any]) -> tuple[str, str]:
    """(title, markdown body) of a disk alert; kind is alerts.ENTER, REPEAT or CLEAR."""
    t = _t(lang)
    percent = f"{fs.percent:.1f}%"
    before = facts.get("percent_before")
    pruned_down = before is not None and before - fs.percent >= 0.1
    host = facts.get("host", "")
    title_key = "title.clear" if kind == "clear" else f"title.{kind}.{level}"
    shown = f"{before:.1f}% → {percent}" if pruned_down else percent
    title = t[title_key].format(mount=fs.mount, host=host, percent=shown)
    disk = facts["disk"]
    lines = [t["head"].format(mount=fs.mount, host=host, folders=", ".join(fs.folders), percent=percent), ""]
    items = [t["used"].format(used=human(fs.used), size=human(fs.size), avail=human(fs.avail),
                              free_percent=f"{fs.free_percent:.1f}%")]
    if pruned_down:
        items.append(t["before"].format(percent=f"{before:.1f}%"))
    if kind == "clear":
        items.append(t["clear_body"].format(clear=f"{disk.clear_percent:g}"))
    items.append(t["levels"].format(warn=f"{disk.warn_percent:g}", critical=f"{disk.critical_percent:g}",
                                    clear=f"{disk.clear_percent:g}"))
    items += _growth_lines(t, facts.get("growth"), fs.avail)
    if "outputs" in fs.folders or "failed" in fs.folders:
        items += _pass_lines(t, facts, disk)
    if facts.get("stale_spool"):
        items.append(t["stale"].format(count=facts["stale_spool"]))
    log_file = facts.get("log_file")
    if log_file and log_file.get("bytes") is not None:
        items.append(t["logfile"].format(path=log_file["path"], bytes=human(log_file["bytes"])))
    lines += [f"- {item}" for item in items]
    return title, "\n".join(lines) + "\n"


def _growth_lines(t: dict[str, str], growth: Growth | None, avail: int) -> list[str]:
    if growth is None:
        return [t["no_history"]]
    out = [t["growth"].format(written=_signed(growth.written_per_day), net=_signed(growth.net_per_day),
                              runs=growth.runs, days=f"{growth.span_days:.1f}")]
    full = growth.days_until_full(avail)
    out.append(t["not_growing"] if full is None else t["full_in"].format(days=f"{full:.1f}"))
    return out


def _pass_lines(t: dict[str, str], facts: dict[str, Any], disk: dict[str, Any]) -> list[str]:
    out: list[str] = []
    freed = facts.get("freed") or {}
    if freed.get("bytes"):
        parts = ", ".join(t[f"reason.{reason}"].format(bytes=human(size))
                          for reason, size in freed.get("by_reason", {}).items() if size and f"reason.{reason}" in t)
        out.append(t["freed"].format(bytes=human(freed["bytes"]), files=freed.get("files", 0), parts=parts or "-"))
    else:
        out.append(t["freed_none"])
    short = facts.get("shortfall")
    if short:
        out.append(t["short"].format(needed=human(short["needed"]), target=f"{disk.target_free_percent:g}",
                                     pinned=human(short["pinned"]), marker=facts.get("keep_marker", ".keep"),
                                     young=human(short["young"]), hours=facts.get("min_age_hours", 24)))
    if facts.get("top_users"):
        out.append(t["users"].format(items=", ".join(f"{name} {human(size)}" for name, size in facts["top_users"])))
    if facts.get("top_dates"):
        out.append(t["dates"].format(items=", ".join(f"{name} {human(size)}" for name, size in facts["top_dates"])))
    pinned = facts.get("pinned") or {}
    if pinned.get("files"):
        where = ", ".join(pinned.get("markers", [])[:5]) or "-"
        out.append(t["pinned"].format(files=pinned["files"], bytes=human(pinned["bytes"]), where=where))
    return out


def job_message(lang: str, event: str, user: str, stem: str, job_id: str, detail: str,
                host: str) -> tuple[str, str]:
    """(title, markdown body) of a job_failed / job_done notification; detail is cut to its first line."""
    t = _t(lang)
    first = next((line.strip() for line in str(detail).splitlines() if line.strip()), "-")
    title = t[f"job.title.{event}"].format(user=user, stem=stem)
    items = [f"{t['job.user']}: {user}", f"{t['job.stem']}: {stem}", f"{t['job.id']}: {job_id}",
             f"{t['job.host']}: {host}", f"{t['job.detail.' + event]}: {first}"]
    body = "\n".join(f"- {item}" for item in items) + "\n\n" + t["job.more"].format(job_id=job_id) + "\n"
    return title, body

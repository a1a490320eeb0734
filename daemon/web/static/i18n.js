// The page's words in English and Chinese; app.js picks one by the <html data-lang> the server chose
// (the lang cookie, else the browser's Accept-Language).
window.LIPSYNCD_TEXT = {
  en: {
    title: "lipsyncd", history: "History", queue: "Queue", upload: "Upload", admin: "Admin", logout: "Log out",
    search: "Search by name", select_all: "Select all", delete_selected: "Delete selected", more: "More",
    close: "Close", running: "Running", waiting: "Waiting", failed: "Failed", name: "Name", audio: "Audio",
    video: "Video", or_avatar: "or a saved avatar", send: "Upload", disk_over_time: "Disk usage over time",
    per_user: "Per user", per_date: "Per date", workers: "Queue and workers",
    plan: "What the next janitor pass will delete", show_plan: "Show the plan", play: "Play",
    download: "Download", pin: "Pin", unpin: "Unpin", delete: "Delete", pinned: "pinned",
    pinned_folder: "pinned (folder)", archived: "archived", expires: "expires", never: "kept (pinned)",
    engine: "engine", sync: "sync", duration: "duration", size: "size", results: "results", retry: "Retry",
    confirm_delete: "Delete {n} result(s)? This cannot be undone.", deleted: "Deleted {n}.", nothing: "Nothing here yet.",
    uploaded: "Uploaded: {files}. It is in the queue now.", uploading: "Uploading…", no_video: "video archived",
    in_inbox: "In your inbox, about to be queued", attempts: "attempt", retried: "Back in the queue: {files}", level: "alert level", error: "Error"
  },
  zh: {
    title: "lipsyncd 口型同步", history: "历史记录", queue: "队列", upload: "上传", admin: "管理", logout: "退出登录",
    search: "按名称搜索", select_all: "全选", delete_selected: "删除所选", more: "更多",
    close: "关闭", running: "正在处理", waiting: "等待中", failed: "失败", name: "名称", audio: "音频",
    video: "视频", or_avatar: "或已保存的形象", send: "上传", disk_over_time: "磁盘使用趋势",
    per_user: "按用户", per_date: "按日期", workers: "队列和工作进程",
    plan: "下一次清理将删除的内容", show_plan: "查看清理计划", play: "播放",
    download: "下载", pin: "固定", unpin: "取消固定", delete: "删除", pinned: "已固定",
    pinned_folder: "已固定（文件夹）", archived: "已归档", expires: "到期", never: "保留（已固定）",
    engine: "引擎", sync: "同步", duration: "时长", size: "大小", results: "个结果", retry: "重试",
    confirm_delete: "删除 {n} 个结果？此操作无法撤销。", deleted: "已删除 {n} 个。", nothing: "暂无内容。",
    uploaded: "已上传：{files}，已进入队列。", uploading: "正在上传…", no_video: "视频已归档",
    in_inbox: "收件箱中，即将排队", attempts: "次尝试", retried: "已重新加入队列：{files}", level: "告警级别", error: "错误"
  }
};

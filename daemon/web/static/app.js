// The history page: talks to the JSON API (DESIGN.md "Web"); no framework, no build step.
"use strict";
(function () {
  const root = document.documentElement;
  const lang = root.dataset.lang === "zh" ? "zh" : "en";
  const T = window.LIPSYNCD_TEXT[lang];
  const admin = root.dataset.admin === "1";
  const $ = s => document.querySelector(s);
  let csrf = "";
  let viewUser = root.dataset.user;
  let offset = 0;
  const selected = new Set();
  const t = (key, vars) => (T[key] || key).replace(/\{(\w+)\}/g, (_, k) => (vars || {})[k]);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  function toast(message) {
    const box = $("#toast");
    box.textContent = message; box.classList.add("show");
    clearTimeout(toast.timer); toast.timer = setTimeout(() => box.classList.remove("show"), 4000);
  }
  function bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  const when = s => new Date(s * 1000).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB");
  async function api(path, opts) {
    opts = opts || {};
    opts.headers = Object.assign({"X-CSRF-Token": csrf}, opts.headers || {});
    opts.credentials = "same-origin";
    const response = await fetch(path, opts);
    let data = {};
    try { data = await response.json(); } catch (e) { /* a file or an empty body */ }
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  // -- words and tabs ----------------------------------------------------------------------------------------
  for (const node of document.querySelectorAll("[data-t]")) node.textContent = t(node.dataset.t);
  for (const node of document.querySelectorAll("[data-t-placeholder]")) node.placeholder = t(node.dataset.tPlaceholder);
  $("#lang-switch").addEventListener("click", () => {
    document.cookie = "lang=" + (lang === "zh" ? "en" : "zh") + "; path=/; SameSite=Strict; max-age=31536000";
    location.reload();
  });
  const logout = $("#logout");
  if (logout) logout.addEventListener("click", async () => { await api("/logout", {method: "POST"}); location.href = "/login"; });
  let tab = "history";
  for (const button of document.querySelectorAll("nav [data-tab]")) {
    button.addEventListener("click", () => {
      tab = button.dataset.tab;
      for (const b of document.querySelectorAll("nav [data-tab]")) b.classList.toggle("active", b === button);
      for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "tab-" + tab;
      if (tab === "queue") loadJobs();
      if (tab === "upload") loadAvatars();
      if (tab === "admin") loadAdmin();
    });
  }

  // -- history -----------------------------------------------------------------------------------------------
  function card(o) {
    const key = `${o.date}/${o.user}/${o.name}`;
    const own = o.user === root.dataset.user;
    const tags = [];
    if (o.pinned) tags.push(el("span", {class: "pinned"}, o.pinned_by === "folder" ? t("pinned_folder") : t("pinned")));
    if (o.archived) tags.push(el("span", {class: "archived"}, t("archived")));
    const poster = o.poster ? el("img", {src: o.poster, alt: o.name, loading: "lazy"}) : el("div", {class: "noposter"});
    if (o.video) poster.addEventListener("click", () => play(o));
    const meta = [bytes(o.bytes)];
    if (o.duration) meta.push(`${t("duration")} ${o.duration.toFixed(1)} s`);
    if (o.engine) meta.push(`${t("engine")} ${o.engine}`);
    if (o.sync) meta.push(`${t("sync")} ${o.sync.verdict} (${Number(o.sync.correlation).toFixed(2)})`);
    const expiry = o.expires ? `${t("expires")} ${when(o.expires)}` : t("never");
    const box = el("input", {type: "checkbox", class: "pick", "data-key": key, disabled: !own});
    box.checked = selected.has(key);
    box.addEventListener("change", () => { box.checked ? selected.add(key) : selected.delete(key); updateSelection(); });
    const actions = el("div", {class: "actions"},
      o.video ? el("button", {type: "button", class: "play", onclick: () => play(o)}, t("play")) : el("span", {}, t("no_video")),
      o.video ? el("a", {href: o.video + "?download=1", download: o.name + ".mp4", class: "download"}, t("download")) : null,
      own && o.pinned_by !== "folder" ? el("button", {type: "button", class: o.pinned ? "unpin" : "pin",
        onclick: () => change(o, o.pinned ? "unpin" : "pin")}, o.pinned ? t("unpin") : t("pin")) : null,
      own ? el("button", {type: "button", class: "delete", onclick: () => removeMany([o])}, t("delete")) : null);
    return el("div", {class: "card", "data-key": key, "data-name": o.name}, poster,
      el("div", {class: "body"}, el("div", {class: "name"}, box, " ", o.name),
        el("div", {class: "meta"}, meta.join(" · ")), el("div", {class: "meta expiry"}, expiry),
        el("div", {class: "tags"}, ...tags), actions));
  }
  let shown = [];
  async function loadOutputs(append) {
    if (!append) { offset = 0; shown = []; }
    const params = new URLSearchParams({offset, limit: 60});
    const q = $("#search").value.trim(); if (q) params.set("q", q);
    const d = $("#date").value; if (d) params.set("date", d);
    if (viewUser !== root.dataset.user) params.set("user", viewUser);
    const data = await api("/api/outputs?" + params);
    shown = shown.concat(data.outputs);
    offset = shown.length;
    const grid = $("#outputs");
    grid.replaceChildren();
    let day = null;
    for (const o of shown) {
      if (o.date !== day) { day = o.date; grid.append(el("h2", {class: "date-head"}, day)); }
      grid.append(card(o));
    }
    if (!shown.length) grid.append(el("p", {}, t("nothing")));
    $("#count").textContent = `${data.total} ${t("results")}`;
    $("#more").hidden = shown.length >= data.total;
    updateSelection();
  }
  function updateSelection() {
    $("#delete-selected").disabled = selected.size === 0;
    $("#delete-selected").textContent = t("delete_selected") + (selected.size ? ` (${selected.size})` : "");
  }
  function play(o) {
    const video = $("#video");
    video.src = o.video;
    $("#player-title").textContent = o.name;
    $("#player").hidden = false;
    video.play().catch(() => {});
  }
  $("#player-close").addEventListener("click", () => { const v = $("#video"); v.pause(); v.removeAttribute("src"); v.load(); $("#player").hidden = true; });
  async function change(o, action) {
    try { await api(`/api/outputs/${o.date}/${encodeURIComponent(o.user)}/${encodeURIComponent(o.name)}/${action}`, {method: "POST"}); }
    catch (e) { toast(`${t("error")}: ${e.message}`); }
    loadOutputs();
  }
  async function removeMany(items) {
    if (!items.length || !window.confirm(t("confirm_delete", {n: items.length}))) return;
    let done = 0;
    for (const o of items) {
      try {
        await api(`/api/outputs/${o.date}/${encodeURIComponent(o.user)}/${encodeURIComponent(o.name)}/delete`, {method: "POST"});
        done++; selected.delete(`${o.date}/${o.user}/${o.name}`);
      } catch (e) { toast(`${t("error")}: ${e.message}`); }
    }
    toast(t("deleted", {n: done}));
    loadOutputs();
  }
  $("#delete-selected").addEventListener("click", () => {
    removeMany([...selected].map(k => { const [date, user, ...rest] = k.split("/"); return {date, user, name: rest.join("/")}; }));
  });
  $("#select-all").addEventListener("change", e => {
    for (const box of document.querySelectorAll(".pick:not([disabled])")) {
      box.checked = e.target.checked;
      e.target.checked ? selected.add(box.dataset.key) : selected.delete(box.dataset.key);
    }
    updateSelection();
  });
  let searchTimer;
  $("#search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => loadOutputs(), 250); });
  $("#date").addEventListener("change", () => loadOutputs());
  $("#more").addEventListener("click", () => loadOutputs(true));

  // -- queue -------------------------------------------------------------------------------------------------
  async function loadJobs() {
    const data = await api("/api/jobs" + (viewUser !== root.dataset.user ? "?user=" + encodeURIComponent(viewUser) : ""));
    $("#inbox").replaceChildren(...data.inbox.map(name => el("li", {}, name)));
    $("#running").replaceChildren(...data.running.map(j => el("li", {"data-job": j.job},
      `${j.name} · ${j.stage || ""} `, el("progress", {max: 1, value: j.progress || 0}), ` ${Math.round(100 * (j.progress || 0))}%`)));
    $("#queued").replaceChildren(...data.queued.map(j => el("li", {"data-job": j.job},
      `${j.name} · ${j.attempts} ${t("attempts")}`, j.waiting ? ` · ${j.waiting}` : "")));
    $("#failed").replaceChildren(...data.failed.map(f => el("li", {"data-name": f.name},
      `${f.date} · ${f.name} `,
      el("button", {type: "button", class: "retry", onclick: async () => {
        try {
          const r = await api(`/api/failed/${f.date}/${encodeURIComponent(f.user)}/${encodeURIComponent(f.name)}/retry`, {method: "POST"});
          toast(t("retried", {files: r.inbox.join(", ")}));
        } catch (e) { toast(`${t("error")}: ${e.message}`); }
        loadJobs();
      }}, t("retry")), el("pre", {}, f.error))));
  }
  setInterval(() => { if (tab === "queue") loadJobs().catch(() => {}); }, 2000);

  // -- upload ------------------------------------------------------------------------------------------------
  async function loadAvatars() {
    const data = await api("/api/avatars");
    $("#up-avatar").replaceChildren(el("option", {value: ""}, ""), ...data.avatars.map(a => el("option", {value: a}, a)));
  }
  $("#upload-form").addEventListener("submit", e => {
    e.preventDefault();
    const form = new FormData(e.target);
    if (!$("#up-video").files.length) form.delete("video");
    const xhr = new XMLHttpRequest();
    const bar = $("#up-progress");
    bar.hidden = false; bar.value = 0;
    $("#up-result").textContent = t("uploading");
    xhr.upload.addEventListener("progress", ev => { if (ev.lengthComputable) bar.value = ev.loaded / ev.total; });
    xhr.addEventListener("load", () => {
      let data = {}; try { data = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
      $("#up-result").textContent = xhr.status === 200 ? t("uploaded", {files: data.inbox.join(", ")}) : `${t("error")}: ${data.error || xhr.statusText}`;
      if (xhr.status === 200) e.target.reset();
    });
    xhr.addEventListener("error", () => { $("#up-result").textContent = t("error"); });
    xhr.open("POST", "/api/upload");
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.send(form);
  });

  // -- admin -------------------------------------------------------------------------------------------------
  async function loadAdmin() {
    const disk = await api("/api/disk");
    const byMount = {};
    for (const p of disk.history) for (const fs of p.filesystems || []) (byMount[fs.mount] = byMount[fs.mount] || []).push([p.time, fs.percent]);
    const chart = $("#chart"); chart.replaceChildren();
    const th = disk.thresholds;
    for (const [mount, points] of Object.entries(byMount)) {
      chart.append(el("h3", {}, mount), window.lipsyncdChart(points, {marks: [th.warn_percent, th.critical_percent]}));
    }
    $("#levels").textContent = `${t("level")}: ` + Object.entries(disk.levels).map(([m, l]) => `${m} ${l}`).join(", ") +
      " · " + disk.filesystems.map(fs => `${fs.mount} ${fs.percent.toFixed(1)}%`).join(", ");
    const rows = obj => Object.entries(obj).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {class: "num"}, bytes(v))));
    $("#per-user").replaceChildren(...rows(disk.per_user));
    $("#per-date").replaceChildren(...rows(disk.per_date));
    const status = await api("/api/admin/status");
    const table = (heads, rows) => el("table", {}, el("tr", {}, ...heads.map(h => el("th", {}, h))),
      ...rows.map(r => el("tr", {}, ...r.map(c => el("td", {}, c === null || c === undefined ? "" : c)))));
    const q = status.queue;
    $("#status").replaceChildren(
      el("p", {}, `${t("waiting")}: ${q.queued} · ${t("running")}: ${q.running}` + (q.error ? ` · ${q.error}` : "")),
      table(["worker", "host", "device", "state", "job", "progress", "heartbeat"], status.workers.map(w => [
        w.name, w.host, w.device, w.stale ? "NOT HEARTBEATING" : w.state, w.job ? `${w.job} (${w.user})` : "",
        w.progress === null ? "" : `${w.stage || ""} ${Math.round(100 * w.progress)}%`, `${w.heartbeat_age_seconds} s`])),
      table(["job", "user", "name", "stage"], status.running.concat(status.queued).map(j => [j.job, j.user, j.name,
        j.stage ? `${j.stage} ${Math.round(100 * (j.progress || 0))}%` : t("waiting")])),
      el("h3", {}, t("failed")),
      table(["time", "user", "name", "reason"], status.recent_failures.map(f => [when(f.time), f.user, f.name, f.reason])));
  }
  const planButton = $("#plan-button");
  if (planButton) planButton.addEventListener("click", async () => {
    const plan = await api("/api/admin/plan");
    const rows = plan.actions.slice(0, 500).map(a => el("tr", {}, el("td", {}, a.path), el("td", {class: "num"}, bytes(a.size)),
      el("td", {}, a.reason), el("td", {}, a.detail || "")));
    $("#plan").replaceChildren(el("p", {class: "plan-totals"},
      `${plan.action_count} · ${bytes(plan.totals.bytes || 0)} · ${JSON.stringify(plan.totals.by_reason || {})}`),
      el("table", {}, ...rows));
  });
  async function loadUsers() {
    const select = $("#user-select");
    if (!select) return;
    const data = await api("/api/users");
    const all = [...new Set([root.dataset.user, ...data.users])];
    select.replaceChildren(...all.map(u => el("option", {value: u, selected: u === viewUser}, u)));
    select.addEventListener("change", () => { viewUser = select.value; selected.clear(); loadOutputs(); });
  }

  api("/api/me").then(me => { csrf = me.csrf; loadOutputs(); if (admin) loadUsers(); })
    .catch(e => toast(`${t("error")}: ${e.message}`));
})();

// llmds web page: chat (streamed markdown, RAG sources), the engine's KV blocks and batch live,
// and the document index.  Talks to this server only (its Content-Security-Policy says so).
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const el = (tag, props = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid != null) e.append(kid);
  return e;
};
const store = {
  get(k, dflt) { try { const v = localStorage.getItem("llmds." + k); return v == null ? dflt : JSON.parse(v); } catch { return dflt; } },
  set(k, v) { try { localStorage.setItem("llmds." + k, JSON.stringify(v)); } catch { /* full or disabled */ } },
};
const fmt = (x, d = 0) => Number(x).toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: d });

// ------------------------------------------------------------------ API key and requests
let apiKey = store.get("apiKey", "");
let asking = null;

function askKey() {  // one dialog however many requests got a 401; resolves true when a key was saved
  if (asking) return asking;
  const dlg = $("#keydialog");
  asking = new Promise((resolve) => {
    const done = (ok) => { dlg.close(); asking = null; resolve(ok); };
    $("#keyinput").value = apiKey;
    $("#keyform").onsubmit = (ev) => { ev.preventDefault(); apiKey = $("#keyinput").value.trim(); store.set("apiKey", apiKey); done(true); };
    $("#keycancel").onclick = () => done(false);
    dlg.oncancel = () => done(false);
    dlg.showModal();
    $("#keyinput").focus();
  });
  return asking;
}

async function api(path, opts = {}) {
  for (;;) {
    const headers = { ...(opts.headers || {}) };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    if (opts.json !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method: opts.json !== undefined ? "POST" : "GET", signal: opts.signal, headers,
                                  body: opts.json !== undefined ? JSON.stringify(opts.json) : undefined });
    if (r.status !== 401) return r;
    if (!await askKey()) throw new Error("this server needs an API key");
  }
}

async function errorText(r) {
  try { const j = await r.json(); return j.error ? j.error.message : JSON.stringify(j); } catch { return r.status + " " + r.statusText; }
}

async function* sse(response) {  // server-sent events of a fetch() response: {event, data}
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const raw = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message";
      const data = [];
      for (const line of raw.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

// ------------------------------------------------------------------ views, theme, layout
function show(view) {
  for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.view === view));
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("active", s.id === "view-" + view);
  store.set("view", view);
  engine.watch(view === "engine");
  if (view === "chat") $("#input").focus();
}

function setTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme; else delete document.documentElement.dataset.theme;
  store.set("theme", theme || null);
  engine.redraw();
}

// ------------------------------------------------------------------ markdown
let highlighter = null;  // highlight.js (the largest script), loaded when the first code block shows

function highlight(blocks) {
  if (!highlighter) {
    highlighter = new Promise((resolve) => {
      const s = el("script", { src: "/ui/vendor/highlight.min.js" });
      s.onload = s.onerror = () => resolve(window.hljs || null);
      document.head.append(s);
    });
  }
  highlighter.then((hljs) => { if (hljs) for (const c of blocks) if (c.isConnected) hljs.highlightElement(c); });
}

function renderMarkdown(target, text, final) {
  const html = window.marked ? marked.parse(text, { gfm: true, breaks: false }) : text;
  target.innerHTML = window.DOMPurify ? DOMPurify.sanitize(html) : "";
  if (!window.DOMPurify) target.textContent = text;
  const blocks = final ? target.querySelectorAll("pre code") : [];
  if (blocks.length) highlight(blocks);
}

// ------------------------------------------------------------------ chat
const chat = {
  convs: store.get("conversations", []),
  current: store.get("currentConversation", null),
  controller: null,
  model: null,

  conv() {
    let c = this.convs.find((x) => x.id === this.current);
    if (!c) {
      c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New chat", messages: [] };
      this.convs.unshift(c);
      this.current = c.id;
    }
    return c;
  },
  save() {
    store.set("conversations", this.convs.slice(0, 100));
    store.set("currentConversation", this.current);
  },
  settings() {
    const num = (id) => { const v = $("#" + id).value; return v === "" ? null : Number(v); };
    return { system: $("#system").value, temperature: num("temperature"), top_p: num("top_p"),
             max_tokens: num("max_tokens"), seed: num("seed"), rag: $("#rag").checked, rag_k: num("rag_k") };
  },
  saveSettings() { store.set("settings", this.settings()); },
  loadSettings() {
    const s = store.get("settings", null);
    if (!s) return;
    $("#system").value = s.system || "";
    for (const k of ["temperature", "top_p", "max_tokens", "seed", "rag_k"]) if (s[k] != null) $("#" + k).value = s[k];
    $("#rag").checked = !!s.rag;
  },

  renderList() {
    const ul = $("#convlist");
    ul.replaceChildren();
    for (const c of this.convs) {
      ul.append(el("li", { class: c.id === this.current ? "current" : "" },
        el("span", { text: c.title, title: c.title, onclick: () => { this.current = c.id; this.save(); this.renderAll(); $("#convs").classList.remove("open"); } }),
        el("button", { class: "link", title: "Delete", "aria-label": "Delete conversation", text: "\u2715",
                       onclick: () => { this.convs = this.convs.filter((x) => x !== c); if (this.current === c.id) this.current = null; this.save(); this.renderAll(); } })));
    }
  },
  renderAll() {
    this.renderList();
    const box = $("#messages");
    box.replaceChildren();
    const c = this.convs.find((x) => x.id === this.current);
    if (!c || !c.messages.length) {
      box.append(el("p", { class: "muted", text: "Ask the model anything. Tick RAG to answer from the indexed documents; the Engine tab shows its KV blocks while it answers." }));
      return;
    }
    c.messages.forEach((m, i) => box.append(this.renderMessage(c, m, i)));
    box.scrollTop = box.scrollHeight;
  },
  renderMessage(c, m, i) {
    const node = el("div", { class: "msg " + m.role });
    const body = el("div", { class: "body" });
    node.append(body);
    if (m.role === "user") body.textContent = m.content;
    else renderMarkdown(body, m.content, true);
    const busy = this.controller !== null;
    const meta = el("div", { class: "meta" });
    if (m.role === "user" && !busy) meta.append(el("button", { class: "link", text: "edit", onclick: () => this.edit(c, i, node) }));
    if (m.role === "assistant") {
      if (m.meta) meta.append(...this.stats(m.meta));
      if (!busy && i === c.messages.length - 1) meta.append(el("button", { class: "link", text: "regenerate", onclick: () => this.regenerate() }));
      if (m.content) meta.append(el("button", { class: "link", text: "copy", onclick: () => navigator.clipboard && navigator.clipboard.writeText(m.content) }));
    }
    node.append(meta);
    if (m.role === "assistant" && m.meta && m.meta.rag) node.insertBefore(this.sources(m.meta.rag), meta);
    return node;
  },
  stats(meta) {
    const out = [];
    if (meta.error) out.push(el("span", { class: "error", text: meta.error }));
    if (meta.stopped) out.push(el("span", { text: "stopped" }));
    const u = meta.usage;
    if (u) {
      const cached = u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens;
      out.push(el("span", { class: "usage", text: `${u.completion_tokens} tokens \u00b7 prompt ${u.prompt_tokens}` + (cached ? ` (${cached} cached)` : "") }));
    } else if (meta.chunks) out.push(el("span", { text: `~${meta.chunks} tokens` }));
    if (meta.ttft != null) out.push(el("span", { class: "ttft", text: `TTFT ${fmt(meta.ttft)} ms` }));
    if (meta.tps != null) out.push(el("span", { class: "tps", text: `${fmt(meta.tps, 1)} tok/s` }));
    return out;
  },
  sources(chunks) {
    const d = el("details", { class: "sources", open: "" });
    d.append(el("summary", { text: `${chunks.length} retrieved source${chunks.length === 1 ? "" : "s"}` }));
    const ol = el("ol");
    for (const ch of chunks) {
      ol.append(el("li", {}, el("span", { class: "source", text: ch.source || "?" }),
        el("span", { class: "muted", text: ch.start != null ? ` [${ch.start}\u2013${ch.end}]` : "" }),
        el("span", { class: "score", text: ` score ${fmt(ch.score, 3)}` })));
    }
    d.append(ol);
    return d;
  },

  edit(c, i, node) {
    const m = c.messages[i];
    const ta = el("textarea", { class: "edit" });
    ta.value = m.content;
    const saveBtn = el("button", { class: "primary", text: "Save & send", onclick: () => {
      const text = ta.value.trim();
      if (!text) return;
      c.messages.splice(i);
      c.messages.push({ role: "user", content: text });
      if (i === 0) c.title = text.slice(0, 48);
      this.generate(c);
    } });
    node.replaceChildren(ta, el("div", { class: "row end" }, el("button", { text: "Cancel", onclick: () => this.renderAll() }), saveBtn));
    ta.focus();
  },
  regenerate() {
    const c = this.conv();
    if (c.messages.length && c.messages[c.messages.length - 1].role === "assistant") c.messages.pop();
    if (c.messages.length) this.generate(c);
  },
  send(text) {
    const c = this.conv();
    if (!c.messages.length) c.title = text.slice(0, 48);
    c.messages.push({ role: "user", content: text });
    this.generate(c);
  },

  async generate(c) {
    const s = this.settings();
    const history = c.messages.map((m) => ({ role: m.role, content: m.content }));
    const msg = { role: "assistant", content: "", meta: {} };
    c.messages.push(msg);
    this.controller = new AbortController();
    this.busy(true);
    this.renderAll();
    const node = $("#messages").lastElementChild;
    const body = $(".body", node);
    body.classList.add("cursor");
    const req = { messages: (s.system.trim() ? [{ role: "system", content: s.system }] : []).concat(history),
                  stream: true, stream_options: { include_usage: true } };
    if (this.model) req.model = this.model;
    for (const k of ["temperature", "top_p", "max_tokens", "seed"]) if (s[k] != null) req[k] = s[k];
    if (s.rag) req.rag = { top_k: s.rag_k || 4 };
    const t0 = performance.now();
    let tFirst = null, tLast = null, pending = false;
    const paint = () => { pending = false; renderMarkdown(body, msg.content, false); $("#messages").scrollTop = 1e9; };
    try {
      const r = await api("/v1/chat/completions", { json: req, signal: this.controller.signal });
      if (!r.ok) throw new Error(await errorText(r));
      for await (const ev of sse(r)) {
        if (ev.data === "[DONE]") break;
        const j = JSON.parse(ev.data);
        if (j.error) { msg.meta.error = j.error.message; break; }
        if (j.rag) { msg.meta.rag = j.rag.chunks; node.insertBefore(this.sources(j.rag.chunks), $(".meta", node)); }
        if (j.usage) msg.meta.usage = j.usage;
        const ch = j.choices && j.choices[0];
        if (ch && ch.delta && ch.delta.content) {
          tLast = performance.now();
          if (tFirst === null) tFirst = tLast;
          msg.content += ch.delta.content;
          msg.meta.chunks = (msg.meta.chunks || 0) + 1;
          if (!pending) { pending = true; requestAnimationFrame(paint); }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") msg.meta.stopped = true; else msg.meta.error = e.message || String(e);
    }
    if (tFirst !== null) {
      msg.meta.ttft = tFirst - t0;
      const n = msg.meta.usage ? msg.meta.usage.completion_tokens : msg.meta.chunks;
      if (n > 1 && tLast > tFirst) msg.meta.tps = (n - 1) / ((tLast - tFirst) / 1000);
    }
    this.controller = null;
    this.busy(false);
    this.save();
    this.renderAll();
  },
  stop() { if (this.controller) this.controller.abort(); },
  busy(on) { $("#send").hidden = on; $("#stop").hidden = !on; },
};

// ------------------------------------------------------------------ engine view
const STATE_NAMES = ["free", "cached prefix", "running", "shared", "pinned hot prefix"];
const engine = {
  blocks: null, last: null, history: [], live: false, controller: null, cell: 10, cols: 1,

  watch(on) {
    if (on === this.live) return;
    this.live = on;
    if (on) this.connect(); else if (this.controller) this.controller.abort();
  },
  async connect() {
    let wait = 500;
    while (this.live) {
      this.controller = new AbortController();
      try {
        const r = await api("/v1/engine/events", { signal: this.controller.signal });
        if (!r.ok) throw new Error(await errorText(r));
        wait = 500;
        for await (const ev of sse(r)) this.apply(ev.event, JSON.parse(ev.data));
      } catch (e) {
        if (e.name === "AbortError" || !this.live) return;
        $("#blockinfo").textContent = "(reconnecting: " + (e.message || e) + ")";
      }
      await new Promise((res) => setTimeout(res, wait));
      wait = Math.min(wait * 2, 5000);
    }
  },
  apply(kind, s) {
    if (kind === "state") {
      this.last = s;
      this.history = s.history || [];
      this.blocks = Uint8Array.from(s.blocks, (ch) => ch.charCodeAt(0) - 48);
      this.layout();
    } else {
      Object.assign(this.last, s);
      if (s.blocks) { this.blocks = Uint8Array.from(s.blocks, (ch) => ch.charCodeAt(0) - 48); this.drawBlocks(); }
      if (s.block_changes) {
        const { i, s: states } = s.block_changes;
        for (let k = 0; k < i.length; k++) { this.blocks[i[k]] = states.charCodeAt(k) - 48; this.drawCell(i[k]); }
      }
      if (s.sample) { this.history.push(s.sample); if (this.history.length > 300) this.history.shift(); this.chartsDirty = true; }
    }
    this.schedule();
  },
  schedule() {  // the panels and charts are redrawn once per frame, and not at all while the tab is hidden
    if (this.pending || document.hidden) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      if (this.chartsDirty) { this.chartsDirty = false; this.drawCharts(); }
      this.panels();
    });
  },
  color(v) { return getComputedStyle(document.documentElement).getPropertyValue("--b" + v).trim(); },
  layout() {
    if (!this.blocks) return;
    const canvas = $("#blockmap");
    const width = canvas.clientWidth || 600;
    const n = this.blocks.length;
    let cell = 11;
    while (cell > 4 && Math.ceil(n / Math.floor(width / cell)) * cell > 420) cell--;
    this.cell = cell;
    this.cols = Math.max(1, Math.floor(width / cell));
    const dpr = window.devicePixelRatio || 1;
    const h = Math.ceil(n / this.cols) * cell;
    canvas.style.height = h + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(h * dpr);
    this.ctx = canvas.getContext("2d");
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.redraw();
  },
  redraw() { if (this.blocks) { this.palette = [0, 1, 2, 3, 4].map((v) => this.color(v)); this.drawBlocks(); this.drawCharts(); } },
  drawBlocks() {
    if (!this.ctx) return;
    this.ctx.clearRect(0, 0, this.cols * this.cell, Math.ceil(this.blocks.length / this.cols) * this.cell);
    for (let b = 0; b < this.blocks.length; b++) this.drawCell(b);
  },
  drawCell(b) {
    if (!this.ctx) return;
    const c = this.cell, x = (b % this.cols) * c, y = Math.floor(b / this.cols) * c;
    this.ctx.fillStyle = this.palette[this.blocks[b]] || "#888";
    this.ctx.fillRect(x, y, c - 1, c - 1);
  },
  panels() {
    const s = this.last;
    const counts = s.block_counts || {};
    const legend = $("#legend");
    legend.replaceChildren();
    (s.block_states || ["free", "cached", "running", "shared", "pinned"]).forEach((name, v) => {
      const span = el("span", { "data-state": name, "data-count": String(counts[name] || 0) }, el("i"), `${STATE_NAMES[v]} ${fmt(counts[name] || 0)}`);
      $("i", span).style.background = `var(--b${v})`;
      legend.append(span);
    });
    $("#blockinfo").textContent = `${fmt(s.num_blocks)} blocks of ${s.block_size} tokens \u00b7 ${fmt(100 * s.kv_usage, 1)}% in use`;
    $("#nrun").textContent = `(${s.num_running})`;
    $("#nwait").textContent = `(${s.num_waiting})`;
    const running = s.running || [], waiting = s.waiting || [];
    const ids = running.map((r) => r.id).join("\n");
    if (ids === this.runIds) running.forEach((r, i) => this.fillRun($("#running").children[i], r));  // same rows: update in place
    else {
      this.runIds = ids;
      $("#running").replaceChildren(...running.map((r) => this.fillRun(el("tr", {}, el("td", { text: r.id }), el("td"),
        el("td", {}, el("div", { class: "bar" }, el("i"))), el("td"), el("td")), r)));
    }
    const waits = JSON.stringify(waiting);
    if (waits !== this.shownWaits) {
      this.shownWaits = waits;
      $("#waiting").replaceChildren(...waiting.map((r) => el("tr", {}, el("td", { text: r.id }),
        el("td", { text: String(r.prompt_tokens) }), el("td", { text: String(r.max_tokens) }), el("td", { text: String(r.priority) }),
        el("td", { text: r.preemptions ? `${r.preemptions}\u00d7` : "" }))));
    }
    this.counters(s);
  },
  fillRun(tr, r) {  // a running request's row: phase, progress bar, prompt (cached) tokens, blocks
    const [, phase, barCell, prompt, blocks] = tr.children;
    const pre = r.phase === "prefill", bar = barCell.firstChild, fill = bar.firstChild;
    const share = pre ? (r.prompt_tokens ? r.computed_tokens / r.prompt_tokens : 1) : (r.max_tokens ? r.output_tokens / r.max_tokens : 0);
    phase.textContent = r.phase;
    bar.title = pre ? `prefill ${r.computed_tokens}/${r.prompt_tokens}` : `${r.output_tokens}/${r.max_tokens} tokens`;
    fill.style.width = `${100 * Math.min(1, share)}%`;
    fill.classList.toggle("cached", pre);
    prompt.textContent = `${r.prompt_tokens} (${r.cached_tokens})`;
    blocks.textContent = String(r.blocks);
    return tr;
  },
  counters(s) {
    const c = s.counters || {};
    const hit = c.prefix_cache_queries ? 100 * c.prefix_cache_hits / c.prefix_cache_queries : 0;
    $("#counters").textContent = `prompt tokens ${fmt(c.prompt_tokens)} \u00b7 generated ${fmt(c.generation_tokens)} \u00b7 ` +
      `prefix cache hits ${fmt(hit, 1)}% \u00b7 preemptions ${fmt(c.preemptions)} \u00b7 steps ${fmt(c.steps)}`;
  },
  series() {  // per-second rates from the cumulative history: [t, generation tok/s, prompt tok/s, kv %]
    const h = this.history, out = [];
    for (let i = 1; i < h.length; i++) {
      const dt = h[i][0] - h[i - 1][0];
      if (dt > 0) out.push([h[i][0], Math.max(0, (h[i][2] - h[i - 1][2]) / dt), Math.max(0, (h[i][1] - h[i - 1][1]) / dt), 100 * h[i][3]]);
    }
    return out;
  },
  drawCharts() {
    const pts = this.series();
    const last = pts[pts.length - 1];
    $("#tput").textContent = last ? `${fmt(last[1], 1)} tok/s generated \u00b7 ${fmt(last[2])} prompt tok/s` : "";
    $("#kvuse").textContent = last ? `${fmt(last[3], 1)}%` : "";
    chart($("#chart-tput"), pts, [1, 2], ["--b2", "--b1"], null);
    chart($("#chart-kv"), pts, [3], ["--b4"], 100);
  },
};

function chart(canvas, pts, cols, colors, fixedMax) {  // the last 5 minutes, newest on the right
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const css = (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim();
  ctx.strokeStyle = css("--line"); ctx.lineWidth = 1;
  ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  if (!pts.length) return;
  const tEnd = pts[pts.length - 1][0], span = 300;
  let max = fixedMax;
  if (max == null) { max = 1; for (const p of pts) for (const c of cols) max = Math.max(max, p[c]); max *= 1.1; }
  ctx.fillStyle = css("--muted"); ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(fmt(max, max < 10 ? 1 : 0), 4, 12);
  ctx.fillText("5 min", 4, h - 4);
  cols.forEach((c, k) => {
    ctx.strokeStyle = css(colors[k]); ctx.lineWidth = 1.5; ctx.beginPath();
    pts.forEach((p, i) => {
      const x = w - ((tEnd - p[0]) / span) * w, y = h - 2 - (p[c] / max) * (h - 16);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}

// ------------------------------------------------------------------ documents view
async function search(query) {
  const info = $("#searchinfo");
  info.textContent = "searching\u2026";
  try {
    const r = await api("/v1/documents/search", { json: { query, top_k: 8 } });
    if (!r.ok) throw new Error(await errorText(r));
    const j = await r.json();
    info.textContent = `${j.data.length} results in ${fmt(1000 * j.seconds, 1)} ms (fused = hybrid score; BM25 and dense = each side before fusion)`;
    $("#hits").replaceChildren(...j.data.map((h) => el("tr", {}, el("td", { class: "source", text: h.source || "?" }),
      el("td", { text: h.start != null ? `${h.start}\u2013${h.end}` : "" }), el("td", { text: fmt(h.score, 3) }),
      el("td", { class: "bm25", text: fmt(h.bm25, 2) }), el("td", { class: "dense", text: h.dense == null ? "\u2013" : fmt(h.dense, 3) }),
      el("td", { class: "text" }, el("div", { class: "snip", text: h.text || "" })))));
  } catch (e) { info.textContent = e.message || String(e); }
}

async function addDocument(text, source) {
  const info = $("#addinfo");
  info.textContent = "indexing\u2026";
  try {
    const r = await api("/v1/documents", { json: source ? { text, source } : { text } });
    if (!r.ok) throw new Error(await errorText(r));
    const j = await r.json();
    const ids = j.data.map((c) => c.id);
    info.textContent = `indexed ${ids.length} chunk${ids.length === 1 ? "" : "s"} of ${j.data[0].source} (ids ${ids[0]}\u2013${ids[ids.length - 1]}); searches and RAG see it now`;
    $("#doctext").value = "";
  } catch (e) { info.textContent = e.message || String(e); }
}

// ------------------------------------------------------------------ start
function start() {
  const theme = store.get("theme", null);
  if (theme) document.documentElement.dataset.theme = theme;
  for (const b of document.querySelectorAll(".tabs button")) b.onclick = () => show(b.dataset.view);
  $("#theme").onclick = () => {
    const dark = document.documentElement.dataset.theme ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    setTheme(dark ? "light" : "dark");
  };
  $("#keybtn").onclick = () => askKey();
  $("#menu").onclick = () => $("#convs").classList.toggle("open");
  $("#newchat").onclick = () => { chat.current = null; chat.conv(); chat.save(); chat.renderAll(); $("#convs").classList.remove("open"); $("#input").focus(); };
  const input = $("#input");
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("#composer").requestSubmit(); }
  });
  $("#composer").onsubmit = (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || chat.controller) return;
    input.value = "";
    chat.send(text);
  };
  $("#stop").onclick = () => chat.stop();
  for (const id of ["system", "temperature", "top_p", "max_tokens", "seed", "rag", "rag_k"]) $("#" + id).addEventListener("change", () => chat.saveSettings());
  chat.loadSettings();
  $("#searchform").onsubmit = (ev) => { ev.preventDefault(); const q = $("#query").value.trim(); if (q) search(q); };
  $("#docfile").onchange = async () => {
    const f = $("#docfile").files[0];
    if (!f) return;
    $("#doctext").value = await f.text();
    if (!$("#docsource").value) $("#docsource").value = f.name;
  };
  $("#addform").onsubmit = (ev) => {
    ev.preventDefault();
    const text = $("#doctext").value;
    if (text.trim()) addDocument(text, $("#docsource").value.trim() || null);
  };
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(() => { engine.layout(); engine.drawCharts(); }, 100); });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => engine.redraw());
  document.addEventListener("visibilitychange", () => engine.watch(!document.hidden && store.get("view", "chat") === "engine"));
  chat.renderAll();
  show(store.get("view", "chat"));
  api("/v1/models").then(async (r) => {
    if (!r.ok) return;
    const j = await r.json();
    chat.model = j.data[0] && j.data[0].id;
    $("#model").textContent = chat.model || "";
  }).catch(() => {});
}

document.addEventListener("DOMContentLoaded", start);

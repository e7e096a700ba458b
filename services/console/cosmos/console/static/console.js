// The console's only script (served from /static; the CSP allows no other). It makes pages live:
// an element with data-live="/path/events" opens a server-sent-event stream and updates the states
// and progress bars it names; a video with data-hls plays the HLS playlist with the vendored hls.js.
"use strict";

const FINAL = ["completed", "succeeded", "failed", "cancelled", "timed_out"];
const LOG_LINES = 500;

function setState(el, state) {
  if (!el) return;
  const badge = el.matches("[data-state]") ? el : el.querySelector("[data-state]");
  if (badge) {
    badge.textContent = state;
    badge.className = badge.className.replace(/\bstate-\S+/g, "").trim() + " state-" + state;
  }
}

function setProgress(key, percent) {
  document.querySelectorAll('[data-progress="' + CSS.escape(key) + '"]').forEach((bar) => { bar.value = percent; });
  document.querySelectorAll('[data-percent="' + CSS.escape(key) + '"]').forEach((label) => {
    label.textContent = Math.round(percent) + "%";
  });
}

function onWorkflow(data) {
  setState(document.querySelector("[data-workflow-state]"), data.state);
  for (const [name, state] of Object.entries(data.nodes)) {
    const node = document.querySelector('svg.dag [data-step="' + CSS.escape(name) + '"]');
    if (node) {
      node.setAttribute("class", "node state-" + state);
      const label = node.querySelector("[data-state]");
      if (label) label.textContent = state;
    }
  }
  for (const [id, state] of Object.entries(data.steps)) {
    setState(document.querySelector('[data-step-id="' + CSS.escape(id) + '"]'), state);
  }
}

function onEncode(data) {
  setState(document.querySelector("[data-encode-state]"), data.state);
  setProgress("encode", data.percent);
  for (const [profile, r] of Object.entries(data.renditions)) {
    setState(document.querySelector('[data-rendition-state="' + CSS.escape(profile) + '"]'), r.state);
    setProgress("r:" + profile, r.percent);
  }
}

function onJob(data) {
  if (data.state) setState(document.querySelector("[data-job-state]"), data.state);
  if (data.percent !== undefined) setProgress("job", data.percent);
  if (data.attempt) {
    const attempt = document.querySelector("[data-job-attempt]");
    if (attempt) attempt.textContent = String(data.attempt);
  }
}

function onLog(data) {
  const log = document.querySelector("[data-log]");
  if (!log) return;
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.appendChild(document.createTextNode(data.text.replace(/\n?$/, "\n")));
  while (log.childNodes.length > LOG_LINES) log.removeChild(log.firstChild);
  if (atEnd) log.scrollTop = log.scrollHeight;
}

function live(el) {
  const source = new EventSource(el.dataset.live);
  // The server ends the stream at a final state; close then, or EventSource would reconnect.
  const done = (state) => { if (FINAL.includes(state)) source.close(); };
  source.addEventListener("workflow", (e) => { const d = JSON.parse(e.data); onWorkflow(d); done(d.state); });
  source.addEventListener("encode", (e) => { const d = JSON.parse(e.data); onEncode(d); done(d.state); });
  source.addEventListener("job", (e) => { const d = JSON.parse(e.data); onJob(d); done(d.state); });
  source.addEventListener("log", (e) => onLog(JSON.parse(e.data)));
  source.addEventListener("failed", () => source.close());
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) source.close(); };
}

function player(video) {
  const src = video.dataset.hls;
  if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = src;
    return;
  }
  const script = document.createElement("script");
  script.src = "/static/vendor/hls.min.js";
  script.onload = () => {
    if (window.Hls && window.Hls.isSupported()) {
      const hls = new window.Hls();
      hls.loadSource(src);
      hls.attachMedia(video);
    }
  };
  document.head.appendChild(script);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(live);
  document.querySelectorAll("video[data-hls]").forEach(player);
});

// salvador dashboard: refresh the live region of each page without reloading it.
// The server renders the fragment (escaped by its templates); this script only swaps it in,
// keeping open <details> open and leaving the region alone while a form in it has focus.
"use strict";

(function () {
  const live = document.getElementById("live");
  const state = document.getElementById("refresh-state");

  function say(text) {
    if (state) { state.textContent = text; }
  }

  function openKeys(root) {
    return new Set(Array.from(root.querySelectorAll("details[data-key]"))
      .filter((d) => d.open).map((d) => d.dataset.key));
  }

  function restoreOpen(root, keys) {
    root.querySelectorAll("details[data-key]").forEach((d) => {
      if (keys.has(d.dataset.key)) { d.open = true; }
    });
  }

  async function refresh() {
    if (document.visibilityState !== "visible" || live.contains(document.activeElement)) {
      return;
    }
    try {
      const response = await fetch(live.dataset.refresh, {
        headers: { "Accept": "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      const doc = await response.json();
      if (!response.ok) {
        say("refresh failed: " + (doc.error || response.status));
        return;
      }
      const keys = openKeys(live);
      live.innerHTML = doc.html;
      restoreOpen(live, keys);
      say("updated " + new Date().toLocaleTimeString());
    } catch (err) {
      say("refresh failed: " + err);
    }
  }

  // Destructive forms ask first (inline handlers are forbidden by the page's CSP).
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset ? event.target.dataset.confirm : undefined;
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  if (live && live.dataset.refresh) {
    const interval = Number(live.dataset.interval) || 3000;
    window.setInterval(refresh, interval);
  }
})();

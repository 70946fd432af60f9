/* The collector's console (/console): plain DOM, no framework, no build step.
 *
 * Everything the API returns (device ids, messages, log_data, error texts) goes into the page
 * as text: textContent, Node.append(string) or element properties; no string is ever parsed as
 * HTML. The page's Content-Security-Policy (collector/web/console.py) backs this up: scripts
 * and styles only from this origin, and Trusted Types, so innerHTML and its kin refuse strings.
 *
 * The key is kept in sessionStorage (this tab only, gone when it closes) and sent as
 * `Authorization: Bearer <key>`; EventSource cannot send headers, so the live tail passes it as
 * `access_token` in its URL, which the tail endpoints alone accept.
 */
(function () {
  "use strict";

  const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
  const KEY_STORE = "collector-console-key";
  const MAX_ROWS = 5000; // the log table's rows; a long tail drops the oldest beyond this
  const DEVICES_REFRESH_MS = 30000;
  const TAIL_RETRY_MS = 5000; // after a tail failed with a 429, 502, 503 or 504
  // Form fields kept in the address's #fragment, so a reload or a shared link shows the same view.
  const HASH_FIELDS = ["device", "device_prefix", "level", "min_level", "since", "until", "q", "data", "order",
    "limit"];
  // A 422's `fields` name query parameters; these are the form fields that hold them.
  const FIELD_INPUTS = {device_id: "device", level: "level", min_level: "min_level", since: "since",
    until: "until", q: "q", data: "data", order: "order", limit: "limit", device_prefix: "device_prefix"};

  const $ = (id) => document.getElementById(id);
  const ui = {
    keyForm: $("key-form"), key: $("key"), forgetKey: $("forget-key"), keyState: $("key-state"),
    error: $("error"),
    devicesForm: $("devices-form"), devicesPrefix: $("devices-prefix"), devicesStatus: $("devices-status"),
    devices: $("devices").tBodies[0], fleetView: $("fleet-view"),
    filters: $("filters"), scope: $("scope-label"), logsStatus: $("logs-status"), liveStatus: $("live-status"),
    logsTable: $("logs"), logs: $("logs").tBodies[0], more: $("more"), live: $("live"),
    help: $("help"), showHelp: $("show-help"), closeHelp: $("close-help"), title: $("logs-title"),
  };
  const field = (name) => ui.filters.elements.namedItem(name);

  const state = {
    key: readKey(),
    view: null, // what the table shows: {path, params, tailPath, tailParams, order, label, device}
    nextCursor: null,
    shown: new Set(), // ids of the logs in the table (the tail may repeat one the page has)
    generation: 0, // an answer to an older request than the latest is dropped
    source: null, // the live tail's EventSource
    received: 0, // logs the tail added
    lastEventId: "", // the position of the last one (to resume after a failure)
    retry: 0, // the timer of a tail's retry
  };

  /* ---------- building the DOM (text only) ---------- */

  // h("td", {className: "n"}, "text", node, ...): properties are set as properties (never
  // `innerHTML`), children are nodes or strings, and a string becomes a Text node.
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("aria-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function setText(node, text) {
    node.textContent = text;
  }

  const pad = (n, width = 2) => String(n).padStart(width, "0");

  function localTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function ago(iso) {
    const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
    if (Number.isNaN(seconds)) return String(iso);
    if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    if (seconds < 7 * 86400) return `${Math.round(seconds / 86400)} d ago`;
    return localTime(iso).slice(0, 10);
  }

  function timeView(iso, text) {
    if (!iso) return h("span", {className: "muted"}, "never");
    const d = new Date(iso);
    return h("time", {dateTime: String(iso), title: Number.isNaN(d.getTime()) ? String(iso) : d.toISOString()},
      text);
  }

  function levelView(level) {
    const name = String(level);
    const known = LEVELS.includes(name);
    return h("span", {className: known ? `level level-${name.toLowerCase()}` : "level"}, name);
  }

  function deviceButton(deviceId) {
    return h("button", {type: "button", className: "linklike device-link", title: "Show this device's logs",
      dataset: {device: String(deviceId)}}, String(deviceId));
  }

  // Long or multi-line text: its first line as a summary, all of it in a <details>.
  function foldable(text, summaryText, full, className) {
    return h("details", {className},
      h("summary", null, summaryText),
      h("pre", null, full !== undefined ? full : text));
  }

  function messageView(message) {
    const text = String(message ?? "");
    const newline = text.indexOf("\n");
    if (newline === -1 && text.length <= 300) return h("span", {className: "text"}, text);
    const first = (newline === -1 ? text : text.slice(0, newline)).slice(0, 200);
    return foldable(text, first + " …", undefined, "text");
  }

  function dataView(data) {
    if (data === null || data === undefined) return "";
    const compact = JSON.stringify(data);
    if (compact.length <= 120) return h("code", null, compact);
    return foldable(compact, h("code", null, compact.slice(0, 100) + " …"), JSON.stringify(data, null, 2), "json");
  }

  function logRow(log, live) {
    const id = String(log.id);
    return h("tr", {className: live ? "live" : "", dataset: {id}},
      h("td", {className: "time"}, timeView(log.created_at, localTime(log.created_at))),
      h("td", {className: "device"}, deviceButton(log.device_id)),
      h("td", null, levelView(log.log_level)),
      h("td", {className: "message"}, messageView(log.message)),
      h("td", {className: "data"}, dataView(log.log_data)));
  }

  function deviceRow(device, current) {
    const counts = device.by_level || {};
    const row = h("tr", null,
      h("th", {scope: "row"}, deviceButton(device.device_id)),
      h("td", {className: "seen"}, timeView(device.last_seen, device.last_seen ? ago(device.last_seen) : "")),
      ...LEVELS.map((level) => {
        const n = Number(counts[level] || 0);
        const hot = n > 0 && (level === "ERROR" || level === "CRITICAL");
        return h("td", {className: hot ? `n hot level-${level.toLowerCase()}` : "n"}, n.toLocaleString());
      }),
      h("td", {className: "n"}, Number(device.total || 0).toLocaleString()));
    if (device.device_id === current) row.setAttribute("aria-current", "true");
    return row;
  }

  /* ---------- the key ---------- */

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return ""; // storage disabled: the key lives in this page only
    }
  }

  function storeKey(key) {
    state.key = key;
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch {
      // storage disabled: keep it in memory
    }
    showKeyState();
  }

  function showKeyState() {
    const parts = state.key.split(".");
    const id = parts.length === 3 ? ` ${parts[1]}` : "";
    setText(ui.keyState, state.key ? `key${id} in use (this tab only)` : "no key: requests go without one");
    ui.forgetKey.hidden = !state.key;
  }

  function headers() {
    const out = {Accept: "application/json"};
    if (state.key) out.Authorization = `Bearer ${state.key}`;
    return out;
  }

  /* ---------- talking to the API ---------- */

  class Problem extends Error {
    constructor(status, code, message, fields) {
      super(message);
      this.status = status;
      this.code = code;
      this.fields = fields || null;
    }
  }

  function withQuery(path, params) {
    const query = params ? params.toString() : "";
    return query ? `${path}?${query}` : path;
  }

  async function problemOf(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (body && typeof body === "object" && typeof body.error === "string") {
      return new Problem(response.status, body.error, String(body.message ?? ""), body.fields);
    }
    return new Problem(response.status, `http_${response.status}`, response.statusText || "No JSON error body.");
  }

  // Paths are relative ("api/logs"), so the console works wherever the API is mounted.
  async function getJson(path, params) {
    let response;
    try {
      response = await fetch(withQuery(path, params), {headers: headers(), cache: "no-store"});
    } catch (err) {
      throw new Problem(0, "network_error", `The collector did not answer (${err.message}).`);
    }
    if (!response.ok) throw await problemOf(response);
    try {
      return await response.json();
    } catch {
      throw new Problem(response.status, "bad_answer", "The answer was not JSON.");
    }
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.replaceChildren();
    for (const node of ui.filters.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  function showError(context, problem) {
    if (!(problem instanceof Problem)) problem = new Problem(0, "script_error", String(problem));
    const status = problem.status ? `${problem.status} ` : "";
    const dismiss = h("button", {type: "button", className: "linklike dismiss", "aria-label": "Dismiss"}, "×");
    dismiss.addEventListener("click", clearError);
    ui.error.replaceChildren(dismiss,
      h("p", null, h("strong", null, `${context}: ${status}${problem.code}`), " ", problem.message));
    if (problem.fields && typeof problem.fields === "object") {
      const list = h("ul");
      for (const [name, messages] of Object.entries(problem.fields)) {
        const text = Array.isArray(messages) ? messages.map(String).join(" ") : JSON.stringify(messages);
        list.append(h("li", null, h("code", null, name), ": ", text));
        const input = FIELD_INPUTS[name] && field(FIELD_INPUTS[name]);
        if (input instanceof RadioNodeList) input.forEach((node) => node.setAttribute("aria-invalid", "true"));
        else if (input) input.setAttribute("aria-invalid", "true");
      }
      ui.error.append(list);
    }
    if (problem.status === 401) {
      ui.error.append(h("p", null, "Enter a key (a reader key reads every device) above and press Enter."));
      ui.key.focus();
    }
    ui.error.hidden = false;
  }

  /* ---------- the filters, the view and the address ---------- */

  function isoFromLocal(value) {
    const d = new Date(value); // datetime-local: the browser's time zone
    return Number.isNaN(d.getTime()) ? value : d.toISOString();
  }

  function checkedLevels() {
    return [...ui.filters.querySelectorAll("input[name=level]:checked")].map((box) => box.value);
  }

  // The form as the query of a page, and of the live tail (the same filters, no paging).
  function readView() {
    const devices = field("device").value.trim().split(/[\s,]+/).filter(Boolean);
    const prefix = field("device_prefix").value.trim();
    const filters = new URLSearchParams();
    const levels = checkedLevels();
    if (levels.length) filters.set("level", levels.join(","));
    if (field("min_level").value) filters.set("min_level", field("min_level").value);
    for (const name of ["since", "until"]) {
      if (field(name).value) filters.set(name, isoFromLocal(field(name).value));
    }
    for (const name of ["q", "data"]) {
      const value = field(name).value.trim();
      if (value) filters.set(name, value);
    }
    const tailParams = new URLSearchParams(filters);
    tailParams.delete("until"); // a tail has no end
    let path;
    let tailPath;
    let label;
    const scope = new URLSearchParams();
    if (devices.length === 1 && !prefix) {
      path = `api/logs/${encodeURIComponent(devices[0])}`;
      tailPath = `${path}/tail`;
      label = `device ${devices[0]}`;
    } else {
      path = "api/logs";
      tailPath = "api/logs/tail";
      for (const device of devices) scope.append("device_id", device);
      if (prefix) scope.set("device_prefix", prefix);
      label = devices.length ? `devices ${devices.join(", ")}` : prefix ? `devices ${prefix}*` : "all devices";
    }
    const order = field("order").value === "asc" ? "asc" : "desc";
    const params = new URLSearchParams([...scope, ...filters]);
    params.set("order", order);
    const limit = field("limit").value.trim();
    if (limit) params.set("limit", limit);
    return {path, params, tailPath, tailParams: new URLSearchParams([...scope, ...tailParams]), order, label,
      device: devices.length === 1 && !prefix ? devices[0] : null};
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const name of HASH_FIELDS) {
      const value = name === "level" ? checkedLevels().join(",") : field(name).value.trim();
      if (value && !(name === "order" && value === "desc") && !(name === "limit" && value === field("limit").defaultValue)) {
        params.set(name, value);
      }
    }
    if (ui.live.checked) params.set("live", "1");
    const hash = params.toString();
    history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
  }

  // The form as the #fragment says; a field it does not name gets its default.
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const name of HASH_FIELDS) {
      const value = params.get(name);
      if (name === "level") {
        const wanted = (value || "").split(",");
        for (const box of ui.filters.querySelectorAll("input[name=level]")) box.checked = wanted.includes(box.value);
      } else {
        const input = field(name);
        if (value !== null) input.value = value;
        else if (input instanceof HTMLSelectElement) input.selectedIndex = Math.max(0,
          [...input.options].findIndex((option) => option.defaultSelected));
        else input.value = input.defaultValue;
      }
    }
    ui.live.checked = params.get("live") === "1";
  }

  /* ---------- the log table ---------- */

  function setStatus(node, text) {
    setText(node, text);
  }

  function showCount(source) {
    const n = ui.logs.rows.length;
    const more = state.nextCursor ? "more to load" : "no more";
    const from = source ? ` (from the ${source})` : "";
    setStatus(ui.logsStatus, n ? `${n} log${n === 1 ? "" : "s"} shown${from}, ${more}` : "No logs match.");
  }

  function addRows(logs, live) {
    const rows = [];
    for (const log of logs) {
      if (!log || typeof log !== "object" || state.shown.has(String(log.id))) continue;
      state.shown.add(String(log.id));
      rows.push(logRow(log, live));
    }
    if (live && state.view && state.view.order === "desc") ui.logs.prepend(...rows.reverse());
    else ui.logs.append(...rows);
    let dropped = false;
    while (ui.logs.rows.length > MAX_ROWS) {
      const far = live && state.view && state.view.order === "desc" ? ui.logs.lastElementChild
        : ui.logs.firstElementChild;
      state.shown.delete(far.dataset.id);
      far.remove();
      dropped = true;
    }
    if (dropped) {
      state.nextCursor = null; // the pages no longer join up with the rows shown
      ui.more.hidden = true;
    }
    return rows.length;
  }

  function showScope() {
    setText(ui.scope, state.view ? `· ${state.view.label}` : "");
    for (const row of ui.devices.rows) {
      const button = row.querySelector(".device-link");
      if (button && state.view && button.dataset.device === state.view.device) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
  }

  async function search() {
    clearError();
    const view = readView();
    writeHash();
    const generation = ++state.generation;
    state.view = view;
    showScope();
    setStatus(ui.logsStatus, "Loading…");
    ui.logsTable.setAttribute("aria-busy", "true");
    ui.more.hidden = true;
    ui.logs.replaceChildren();
    state.shown.clear();
    state.nextCursor = null;
    // The tail first, then the page: a log stored in between is in one or the other (or both:
    // shown once), and one the tail brings while the page loads stays.
    if (ui.live.checked) startTail();
    try {
      const page = await getJson(view.path, view.params);
      if (generation !== state.generation) return;
      state.nextCursor = page.next_cursor || null;
      addRows(Array.isArray(page.data) ? page.data : [], false);
      ui.more.hidden = !state.nextCursor;
      showCount(page.source);
    } catch (problem) {
      if (generation !== state.generation) return;
      setStatus(ui.logsStatus, "No logs shown: see the error above.");
      showError("Logs", problem);
    } finally {
      if (generation === state.generation) ui.logsTable.removeAttribute("aria-busy");
    }
  }

  async function loadMore() {
    if (!state.nextCursor || !state.view || ui.more.disabled) return;
    const generation = state.generation;
    const params = new URLSearchParams(state.view.params);
    params.set("cursor", state.nextCursor);
    ui.more.disabled = true;
    setStatus(ui.logsStatus, "Loading more…");
    try {
      const page = await getJson(state.view.path, params);
      if (generation !== state.generation) return;
      state.nextCursor = page.next_cursor || null;
      addRows(Array.isArray(page.data) ? page.data : [], false);
      ui.more.hidden = !state.nextCursor;
      showCount(page.source);
    } catch (problem) {
      if (generation !== state.generation) return;
      showCount();
      showError("Load more", problem);
    } finally {
      ui.more.disabled = false;
    }
  }

  /* ---------- the device list ---------- */

  async function loadDevices() {
    const params = new URLSearchParams();
    const prefix = ui.devicesPrefix.value.trim();
    if (prefix) params.set("device_prefix", prefix);
    setStatus(ui.devicesStatus, "Loading…");
    try {
      const answer = await getJson("api/devices", params);
      const devices = Array.isArray(answer.devices) ? answer.devices : [];
      ui.devices.replaceChildren(...devices.map((d) => deviceRow(d, state.view && state.view.device)));
      const total = Number(answer.total ?? devices.length);
      setStatus(ui.devicesStatus, total > devices.length ? `${devices.length} of ${total} devices, most recent first`
        : `${devices.length} device${devices.length === 1 ? "" : "s"}, most recent first`);
    } catch (problem) {
      ui.devices.replaceChildren();
      setStatus(ui.devicesStatus, "No devices shown: see the error above.");
      showError("Devices", problem);
    }
  }

  function showDevice(deviceId) {
    field("device").value = deviceId;
    field("device_prefix").value = "";
    search().then(() => ui.title.focus({preventScroll: true}));
  }

  function showFleet() {
    field("device").value = "";
    field("device_prefix").value = "";
    search();
  }

  /* ---------- the live tail ---------- */

  function setLive(text) {
    setStatus(ui.liveStatus, text);
  }

  function stopTail() {
    if (state.source) state.source.close();
    state.source = null;
    clearTimeout(state.retry);
  }

  function receive(event) {
    let log;
    try {
      log = JSON.parse(event.data);
    } catch {
      return; // not a log (a note the server sends): nothing to show
    }
    if (!log || typeof log !== "object" || log.id === undefined) return;
    if (event.lastEventId) state.lastEventId = event.lastEventId;
    state.received += addRows([log], true);
    setLive(`Live: connected, ${state.received} new log${state.received === 1 ? "" : "s"} (highlighted)`);
    showCount();
  }

  // An EventSource that fails for good (any answer but a 200 stream: a 401, a 422, or nginx's
  // 502 while an API restarts) reports no status: ask the same URL with fetch, the key in the
  // header, to show the API's own error. A 429, 502, 503 or 504 is retried a little later, from
  // the last log received (?last_event_id=), so that nothing is missed in between.
  async function explainTailFailure(view) {
    const controller = new AbortController();
    let retry = false;
    try {
      const response = await fetch(withQuery(view.tailPath, view.tailParams),
        {headers: {...headers(), Accept: "text/event-stream"}, cache: "no-store", signal: controller.signal});
      if (!response.ok) {
        const problem = await problemOf(response);
        retry = [429, 502, 503, 504].includes(problem.status);
        if (retry) setLive(`Live: ${problem.status} ${problem.code}; retrying in ${TAIL_RETRY_MS / 1000} s…`);
        else {
          showError("Live tail", problem);
          setLive("Live tail stopped: see the error above.");
        }
      } else {
        retry = true;
        setLive(`Live: the stream closed; reconnecting in ${TAIL_RETRY_MS / 1000} s…`);
      }
    } catch (err) {
      retry = true;
      setLive(`Live: the collector did not answer (${err.message}); retrying in ${TAIL_RETRY_MS / 1000} s…`);
    } finally {
      controller.abort();
    }
    if (state.view !== view || !ui.live.checked) return; // the view changed, or the tail was turned off
    if (retry) {
      state.retry = setTimeout(() => {
        if (state.view === view && ui.live.checked && !state.source) startTail(true);
      }, TAIL_RETRY_MS);
    } else {
      ui.live.checked = false;
      writeHash();
    }
  }

  // A new tail starts now; `resume` continues the last one after the last log it received.
  function startTail(resume = false) {
    stopTail();
    const view = state.view || readView();
    const params = new URLSearchParams(view.tailParams);
    if (state.key) params.set("access_token", state.key);
    if (resume && state.lastEventId) params.set("last_event_id", state.lastEventId);
    if (!resume) {
      state.lastEventId = "";
      state.received = 0;
    }
    const source = new EventSource(withQuery(view.tailPath, params));
    state.source = source;
    setLive("Live: connecting…");
    source.addEventListener("open", () => {
      if (state.source === source) setLive(`Live: connected, ${state.received} new logs so far (highlighted)`);
    });
    const onLog = (event) => {
      if (state.source === source) receive(event);
    };
    source.addEventListener("message", onLog); // events without a name
    source.addEventListener("log", onLog); // events named `log`
    source.addEventListener("error", () => {
      if (state.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        state.source = null;
        explainTailFailure(view);
      } else {
        // The browser reconnects by itself, sending Last-Event-ID: the tail goes on from there.
        setLive("Live: reconnecting… (it resumes where it stopped)");
      }
    });
  }

  function toggleTail() {
    writeHash();
    if (ui.live.checked) {
      if (!state.view) state.view = readView();
      startTail();
    } else {
      stopTail();
      setLive("");
    }
  }

  /* ---------- keyboard ---------- */

  function typingIn(target) {
    if (!(target instanceof Element)) return false;
    if (target.closest("textarea, select, [contenteditable]")) return true;
    return target.matches("input") && !["checkbox", "radio", "button", "submit", "reset"].includes(target.type);
  }

  function onKey(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (ui.help.open) return; // the dialog handles its own keys (Esc closes it)
    if (typingIn(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const actions = {
      "/": () => {
        field("q").focus();
        field("q").select();
      },
      n: () => {
        if (!ui.more.hidden) loadMore();
      },
      t: () => ui.live.click(),
      d: () => {
        const first = ui.devices.querySelector(".device-link");
        if (first) first.focus();
        else ui.devicesPrefix.focus();
      },
      f: showFleet,
      r: loadDevices,
      k: () => ui.key.focus(),
      "?": () => ui.help.showModal(),
    };
    const action = actions[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  }

  /* ---------- wiring ---------- */

  function start() {
    readHash();
    showKeyState();
    ui.keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = ui.key.value.trim();
      ui.key.value = ""; // not left on screen
      storeKey(key);
      loadDevices();
      search();
    });
    ui.forgetKey.addEventListener("click", () => {
      storeKey("");
      stopTail();
      ui.live.checked = false;
      setLive("");
      ui.key.focus();
    });
    ui.devicesForm.addEventListener("submit", (event) => {
      event.preventDefault();
      loadDevices();
    });
    ui.filters.addEventListener("submit", (event) => {
      event.preventDefault();
      search();
    });
    ui.filters.addEventListener("reset", () => {
      const live = ui.live.checked;
      setTimeout(() => {
        ui.live.checked = live;
        search();
      }, 0);
    });
    ui.live.addEventListener("change", toggleTail);
    ui.more.addEventListener("click", loadMore);
    ui.fleetView.addEventListener("click", showFleet);
    for (const table of [ui.devices, ui.logs]) {
      table.addEventListener("click", (event) => {
        const button = event.target instanceof Element && event.target.closest(".device-link");
        if (button) showDevice(button.dataset.device);
      });
    }
    ui.showHelp.addEventListener("click", () => ui.help.showModal());
    ui.closeHelp.addEventListener("click", () => ui.help.close());
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", () => { // a link to a view, or the address edited
      readHash();
      if (!ui.live.checked) {
        stopTail();
        setLive("");
      }
      search();
    });
    setInterval(() => {
      if (document.visibilityState === "visible" && ui.error.hidden) loadDevices();
    }, DEVICES_REFRESH_MS);
    loadDevices();
    search();
  }

  start();
})();

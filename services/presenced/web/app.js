// The web address book: plain JavaScript over the api role's JSON gateway
// (services/presenced/src/api/web.rs). No framework, no build step.
"use strict";

// presence.v1.Availability values, as the gateway sends them (numbers).
const LAMPS = {
  1: { key: "available", text: "Available" },
  2: { key: "away", text: "Away" },
  3: { key: "busy", text: "Busy" },
  4: { key: "on-the-phone", text: "On the phone" },
  5: { key: "offline", text: "Offline" },
};
const BASIC_OPEN = 1;
const BASIC_CLOSED = 2;

const $ = (id) => document.getElementById(id);

let me = null;           // my AoR ("" when the server is open)
let myEtag = "";         // my publication, refreshed by re-publishing
let entries = [];        // the directory entries shown
const presence = new Map(); // aor -> availability from presence
const onPhone = new Map();  // aor -> true while a dialog is in progress
let streams = [];        // the EventSources of the shown entries

async function call(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data = {};
  try { data = await resp.json(); } catch (_) { /* empty body */ }
  if (!resp.ok) {
    const err = new Error(data.error || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function show(loggedIn) {
  $("login-section").hidden = loggedIn;
  $("app").hidden = !loggedIn;
  $("logout").hidden = !loggedIn || me === "";
}

async function start() {
  try {
    const who = await call("GET", "/v1/me");
    me = who.aor || "";
    $("whoami").textContent = who.open ? "Open server: no login needed." : `Logged in as ${me}`;
    show(true);
    await search("");
  } catch (e) {
    if (e.status === 401) {
      show(false);
      $("login-aor").focus();
    } else {
      $("whoami").textContent = `The server cannot be reached: ${e.message}`;
    }
  }
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await call("POST", "/v1/login", { aor: $("login-aor").value.trim(), password: $("login-password").value });
    $("login-password").value = "";
    await start();
  } catch (e) {
    $("login-error").textContent = e.status === 401 ? "Wrong address or password." : e.message;
  }
});

$("logout").addEventListener("click", async () => {
  await call("POST", "/v1/logout", {});
  closeStreams();
  me = null;
  myEtag = "";
  show(false);
});

$("status-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("status-select").value;
  const note = $("status-note").value;
  const req = { note, expires: 3600, etag: myEtag };
  if (status === "offline") {
    req.basic = BASIC_CLOSED;
  } else {
    req.basic = BASIC_OPEN;
    if (status !== "available") req.activity = status;
  }
  try {
    let r;
    try {
      r = await call("POST", "/v1/publish", req);
    } catch (e) {
      // The publication expired: publish a new one.
      if (e.status !== 404 || !myEtag) throw e;
      req.etag = "";
      r = await call("POST", "/v1/publish", req);
    }
    myEtag = r.etag;
    $("status-result").textContent = `Status set: ${$("status-select").selectedOptions[0].text}`;
  } catch (e) {
    $("status-result").textContent = `Status not set: ${e.message}`;
  }
});

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  await search($("search-input").value);
});

async function search(query) {
  try {
    const r = await call("GET", `/v1/directory?query=${encodeURIComponent(query)}&page_size=100`);
    entries = r.entries || [];
    const total = r.total_size || 0;
    $("search-summary").textContent = total === 0
      ? "Nobody found."
      : `${total} ${total === 1 ? "colleague" : "colleagues"}${entries.length < total ? `, first ${entries.length} shown` : ""}.`;
    presence.clear();
    onPhone.clear();
    for (const e of entries) {
      if (e.presence) presence.set(e.aor, e.presence.availability);
    }
    render();
    follow();
  } catch (e) {
    $("search-summary").textContent = `Search failed: ${e.message}`;
  }
}

function lampOf(aor) {
  // A call in progress (BLF) shows, whatever the presence says.
  const a = onPhone.get(aor) ? 4 : presence.get(aor) || 5;
  return LAMPS[a] || LAMPS[5];
}

function render() {
  const body = $("results").querySelector("tbody");
  body.replaceChildren();
  for (const e of entries) {
    const tr = document.createElement("tr");
    tr.dataset.aor = e.aor;
    const lamp = lampOf(e.aor);
    const cell = (text) => { const td = document.createElement("td"); td.textContent = text; return td; };

    const lampTd = document.createElement("td");
    const dot = document.createElement("span");
    dot.className = `lamp lamp-${lamp.key}`;
    dot.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.className = "lamp-text";
    label.textContent = lamp.text;
    lampTd.append(dot, label);
    tr.append(lampTd);

    const nameTd = cell(e.display_name || e.aor);
    const addr = document.createElement("div");
    addr.className = "aor";
    addr.textContent = e.aor;
    nameTd.append(addr);
    tr.append(nameTd, cell(e.department), cell(e.title));

    const phoneTd = document.createElement("td");
    if (e.phone) {
      const a = document.createElement("a");
      a.href = `tel:${e.phone.replace(/[^0-9+*#]/g, "")}`;
      a.textContent = e.phone;
      a.setAttribute("aria-label", `Call ${e.display_name || e.aor} at ${e.phone}`);
      phoneTd.append(a);
    }
    tr.append(phoneTd);

    const actions = document.createElement("td");
    const call = document.createElement("a");
    call.href = e.aor;
    call.textContent = "Call";
    call.setAttribute("aria-label", `Call ${e.display_name || e.aor}`);
    const msg = document.createElement("button");
    msg.type = "button";
    msg.textContent = "Message";
    msg.setAttribute("aria-label", `Message ${e.display_name || e.aor}`);
    msg.addEventListener("click", () => openMessage(e));
    actions.append(call, " ", msg);
    tr.append(actions);
    body.append(tr);
  }
  $("results").hidden = entries.length === 0;
}

function updateRow(aor) {
  const row = [...$("results").querySelectorAll("tbody tr")].find((r) => r.dataset.aor === aor);
  if (!row) return;
  const lamp = lampOf(aor);
  const dot = row.querySelector(".lamp");
  const text = row.querySelector(".lamp-text");
  if (text.textContent !== lamp.text) {
    const e = entries.find((x) => x.aor === aor);
    $("live").textContent = `${(e && e.display_name) || aor} is now ${lamp.text.toLowerCase()}.`;
  }
  dot.className = `lamp lamp-${lamp.key}`;
  text.textContent = lamp.text;
}

function closeStreams() {
  for (const s of streams) s.close();
  streams = [];
}

// Live lamps: one presence stream and one dialog (BLF) stream for the
// entries shown; EventSource reconnects by itself and the server starts
// again with the current states.
function follow() {
  closeStreams();
  if (entries.length === 0) return;
  const aors = entries.map((e) => e.aor).join(",");
  for (const event of ["presence", "dialog"]) {
    const es = new EventSource(`/v1/watch?event=${event}&aors=${encodeURIComponent(aors)}`);
    es.addEventListener("state", (m) => {
      const s = JSON.parse(m.data);
      if (event === "presence") {
        presence.set(s.aor, s.availability);
      } else {
        onPhone.set(s.aor, s.availability === 4);
      }
      updateRow(s.aor);
    });
    es.addEventListener("synced", () => {
      document.body.dataset[`${event === "presence" ? "presence" : "dialog"}Synced`] = "true";
    });
    streams.push(es);
  }
}

let messageTarget = null;

function openMessage(entry) {
  messageTarget = entry;
  $("message-to").textContent = entry.display_name || entry.aor;
  $("message-text").value = "";
  $("message-result").textContent = "";
  $("message-dialog").showModal();
  $("message-text").focus();
}

$("message-cancel").addEventListener("click", () => $("message-dialog").close());

$("message-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!messageTarget) return;
  $("message-send").disabled = true;
  $("message-result").textContent = "Sending…";
  try {
    const r = await call("POST", "/v1/messages", { to: messageTarget.aor, text: $("message-text").value });
    $("message-result").textContent = r.sip_status >= 200 && r.sip_status < 300
      ? `Delivered (${r.sip_status} ${r.reason}).`
      : `Not delivered: ${r.sip_status} ${r.reason}.`;
  } catch (e) {
    $("message-result").textContent = `Not sent: ${e.message}`;
  } finally {
    $("message-send").disabled = false;
  }
});

start();

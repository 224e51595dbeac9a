/* opcenter console: the page and its views. A client of PROTOCOL.md like any other.
 *
 * Owns: sign-in, which session to run (OCConn, conn.js, does the talking), and the
 * DOM of both views (dispatcher: queue, unit board, details, create form;
 * supervisor: figures, read-only lists). State lives in OCStore, drawing in OCMap,
 * element building and formatting in OCDom (dom.js).
 *
 * Must never: render a row from anything but the store (so a resume can neither
 * duplicate nor lose rows), send a command with `retry` unless it carries a `key`
 * (only `incident.create` does), or load anything from outside this server.
 */
(function () {
  "use strict";

  var HISTORY_REPLAY_MAX = 20000; // replay at most this many events for the figures

  var $ = function (id) { return document.getElementById(id); };
  var el = OCDom.el;
  var reconcile = OCDom.reconcile;
  var fmtAge = OCDom.fmtAge;
  var fmtDuration = OCDom.fmtDuration;
  var fmtDistance = OCDom.fmtDistance;
  var params = new URLSearchParams(location.search);

  var store = new OCStore.Store();
  var map = new OCMap($("map"));
  var session = null; // {role, sub, epoch}
  var role = null;
  var selectedId = null;
  var crosshair = null;
  var candidates = null; // {incident_id, list, shortfall, error}
  var selectedUnitId = null; // the unit whose status control is open (dispatcher)
  var unitConfirm = null; // {unit_id, status, incident_id}: waiting for the dispatcher's yes
  var unitSending = false;
  var editBase = null; // {id, category, priority, address, description}: what the edit form was last filled with
  var acked = loadAcked();
  var lastConfig = null;

  var conn = null;
  var history = null;

  /** The hub's WebSocket endpoint on this server (or `?ws=` for a hand-run test). */
  function wsUrl() {
    if (params.get("ws")) return params.get("ws");
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    return proto + "//" + location.host + "/v1/ws";
  }

  // ---------------------------------------------------------------- sign-in

  function initSignin() {
    // A token in the address bar ends up in the browser history, bookmarks,
    // screenshots and shoulder-surfing: take it out at once and keep it in this
    // tab's session storage only (a reload signs in again, a new tab does not).
    var fromUrl = (params.get("token") || "").trim();
    if (fromUrl) {
      sessionStorage.setItem("opcenter.token", fromUrl);
      params.delete("token");
      var rest = params.toString();
      window.history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    }
    var t = sessionStorage.getItem("opcenter.token") || "";
    $("token-input").value = t;
    $("signin-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var token = $("token-input").value.trim();
      if (!token) return;
      signIn(token);
    });
    $("signout").addEventListener("click", signOut);
    $("role-message-back").addEventListener("click", signOut);
    if (t) signIn(t);
  }

  function signIn(token) {
    sessionStorage.setItem("opcenter.token", token);
    $("signin-msg").textContent = "";
    if (conn) conn.stop();
    store = new OCStore.Store();
    selectedId = null;
    candidates = null;
    selectedUnitId = null;
    unitConfirm = null;
    editBase = null;
    conn = new OCConn.Conn(token, {
      url: wsUrl(),
      onError: toastError,
      onState: setConnState,
      onHello: onHello,
      since: function () { return store.cursor(); },
      onSubscribed: onSubscribed,
      onEvent: onEvent,
      onPositions: function (m) { if (store.applyPositions(m.items)) scheduleRender(); },
      onFatal: function (err) {
        showView("signin");
        $("signin-msg").textContent = (err.code || "error") + ": " + (err.message || "connection refused");
      },
    });
    conn.start();
  }

  function signOut() {
    if (conn) conn.stop();
    if (history) history.stop();
    conn = null;
    history = null;
    session = null;
    role = null;
    sessionStorage.removeItem("opcenter.token");
    layers = { zones: null, streets: null };
    $("token-input").value = "";
    $("report-link").hidden = true;
    showView("signin");
  }

  function onHello(ok) {
    role = ok.role;
    session = { role: ok.role, epoch: ok.epoch, seq: ok.seq };
    $("role-badge").textContent = role || "";
    $("signout").hidden = false;
    if (role !== "dispatcher" && role !== "supervisor") {
      $("role-message-text").textContent = "This token has the role \u201c" + role +
        "\u201d. The operations console is for dispatchers and supervisors; " +
        (role === "unit" ? "patrol units use their tablet app." : "intake tokens are for the reporting gateway.");
      showView("role");
      conn.stop();
      return false;
    }
    showView(role);
    loadLayers(conn.token);
    $("report-link").hidden = role !== "supervisor";
    if (role === "supervisor" && !history && typeof ok.seq === "number" && ok.seq > 0 && ok.seq <= HISTORY_REPLAY_MAX) {
      startHistory(conn.token, ok.epoch);
    }
    return true;
  }

  /**
   * The supervisor's figures cover the last hour, but a fresh snapshot says nothing
   * about when incidents were dispatched. A second, short-lived session replays the
   * incident history from seq 0 (when it is short enough) and feeds only timings.
   */
  function startHistory(token, epoch) {
    var h = new OCConn.Conn(token, {
      url: wsUrl(),
      onError: toastError,
      topics: ["incidents"],
      since: function () { return { epoch: epoch, seq: 0 }; },
      onSubscribed: function (ok) {
        if (!ok.recovered) { h.stop(); return; }
        // Live events reach the main session too: stop once the replay has drained.
        setTimeout(function () { if (history === h) { h.stop(); } }, 5000);
      },
      onEvent: function (ev) {
        if (ev.incident) { store.recordTiming(ev.incident, ev.change); scheduleRender(); }
      },
      onFatal: function () { /* the main session reports auth problems */ },
    });
    h.everLive = true;
    history = h;
    h.start();
  }

  function onSubscribed(ok) {
    var replaced = store.applySubscribed(ok);
    if (replaced && selectedId && !store.incident(selectedId)) selectedId = null;
    if (!map.hasView) fitToData();
    scheduleRender();
  }

  var recommendTimer = null;

  function onEvent(ev) {
    if (!store.applyEvent(ev)) return;
    if (ev.incident && ev.incident.id === selectedId) {
      renderDetailsSoon = true;
      // The candidates depend on the incident's state: refresh them, debounced.
      if (role === "dispatcher" && ev.incident.status !== "closed") {
        clearTimeout(recommendTimer);
        recommendTimer = setTimeout(recommend, 250);
      }
    }
    if (!map.hasView) fitToData();
    scheduleRender();
  }

  function setConnState(s) {
    var el = $("conn-state");
    el.dataset.state = s;
    el.textContent = s;
  }

  function showView(v) {
    document.body.dataset.view = v;
    $("signin").hidden = v !== "signin";
    $("role-message").hidden = v !== "role";
    $("console").hidden = v !== "dispatcher" && v !== "supervisor";
    if (v === "signin") {
      $("role-badge").textContent = "";
      $("signout").hidden = true;
    }
    map.dirty = true;
    scheduleRender();
  }

  // ---------------------------------------------------------------- config

  function loadConfig() {
    fetch("/v1/console/config", { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (cfg) {
      lastConfig = cfg || {};
      var ext = cfg && cfg.extent;
      if (ext && isFinite(ext.south) && isFinite(ext.north) && isFinite(ext.west) && isFinite(ext.east)) {
        map.fit(ext, 0.02);
      } else if (cfg && cfg.center && isFinite(cfg.center.lat) && isFinite(cfg.center.lon)) {
        map.center(cfg.center.lat, cfg.center.lon, 20);
      }
      if (cfg && cfg.districts) { map.model.districts = cfg.districts; map.dirty = true; }
      scheduleRender();
    }).catch(function () {
      // No config: fit to the first data we get (see fitToData).
      lastConfig = {};
    });
  }

  // ---------------------------------------------------------------- map layers

  /** The region's zones and streets (GET /v1/zones, /v1/streets), once per sign-in. */
  var layers = { zones: null, streets: null };

  function loadLayers(token) {
    function get(path, slot) {
      fetch(path, { cache: "no-store", headers: { Authorization: "Bearer " + token } }).then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      }).then(function (fc) {
        layers[slot] = fc && Array.isArray(fc.features) ? fc : null;
        scheduleRender();
      }).catch(function () { layers[slot] = null; });
    }
    get("/v1/zones", "zones");
    get("/v1/streets", "streets");
  }

  // ---------------------------------------------------------------- unit filters

  /** Agency and kind filters of the board and the map ("" = all). */
  var filter = { agency: "", kind: "" };
  var filterOptions = "";

  function unitPasses(u) {
    return (!filter.agency || u.agency === filter.agency) && (!filter.kind || u.kind === filter.kind);
  }

  /** Offers the agencies and kinds the units have, keeping the current choice. */
  function renderFilterOptions() {
    var agencies = new Set(), kinds = new Set();
    store.units.forEach(function (u) {
      if (u.agency) agencies.add(u.agency);
      if (u.kind) kinds.add(u.kind);
    });
    if (filter.agency) agencies.add(filter.agency);
    if (filter.kind) kinds.add(filter.kind);
    var a = Array.from(agencies).sort(), k = Array.from(kinds).sort();
    var sig = JSON.stringify([a, k]);
    if (sig === filterOptions) return;
    filterOptions = sig;
    function fill(select, values, current) {
      select.replaceChildren(el("option", { value: "", text: "all" }));
      values.forEach(function (v) { select.appendChild(el("option", { value: v, text: v.replace(/_/g, " ") })); });
      select.value = current;
    }
    fill($("filter-agency"), a, filter.agency);
    fill($("filter-kind"), k, filter.kind);
  }

  function initFilters() {
    $("filter-agency").addEventListener("change", function (e) { filter.agency = e.target.value; scheduleRender(); });
    $("filter-kind").addEventListener("change", function (e) { filter.kind = e.target.value; scheduleRender(); });
  }

  function fitToData() {
    var box = null;
    function add(loc) {
      if (!loc || !isFinite(loc.lat) || !isFinite(loc.lon)) return;
      if (!box) box = { south: loc.lat, north: loc.lat, west: loc.lon, east: loc.lon };
      box.south = Math.min(box.south, loc.lat); box.north = Math.max(box.north, loc.lat);
      box.west = Math.min(box.west, loc.lon); box.east = Math.max(box.east, loc.lon);
    }
    store.units.forEach(function (u) { add(u.location); });
    store.incidents.forEach(function (i) { add(i.location); });
    if (!box) {
      if (lastConfig && lastConfig.extent) { map.fit(lastConfig.extent, 0.02); return true; }
      return false;
    }
    var padDeg = 0.01;
    box.south -= padDeg; box.north += padDeg; box.west -= padDeg; box.east += padDeg;
    map.fit(box);
    return true;
  }

  // ---------------------------------------------------------------- rendering

  var renderQueued = false;
  var renderDetailsSoon = true;

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(function () {
      renderQueued = false;
      render();
    });
  }

  function render() {
    if (!role) return;
    renderQueue();
    renderFilterOptions();
    renderBoard();
    renderShifts();
    renderFigures();
    renderBanner();
    renderUnitControl();
    if (renderDetailsSoon) { renderDetailsSoon = false; renderDetails(); }
    renderAssignAny();
    map.setModel({
      units: Array.from(store.units.values()).filter(unitPasses),
      incidents: Array.from(store.incidents.values()),
      // The zones served to this role; the older console.districts_file otherwise.
      districts: layers.zones ? null : lastConfig && lastConfig.districts,
      zones: layers.zones,
      streets: layers.streets,
      selected: selectedId,
      crosshair: role === "dispatcher" ? crosshair : null,
    });
  }

  function unitLabel(id) {
    var u = store.units.get(id);
    return u && u.callsign && u.callsign !== id ? u.callsign + " (" + id + ")" : String(id);
  }

  function renderQueue() {
    var list = store.queue();
    var box = $("queue");
    $("queue-count").textContent = String(list.length);
    reconcile(box, list, function (inc) { return inc.id; }, function (inc) {
      return JSON.stringify([inc.updated_ms, inc.status, inc.priority, inc.category, inc.units, inc.id === selectedId,
        (inc.units || []).map(unitLabel)]);
    }, function (inc) {
      var units = inc.units || [];
      return el("div", {
        class: "qrow p" + inc.priority + (inc.id === selectedId ? " selected" : "") + (inc.category === "officer_emergency" ? " emerg" : ""),
        "data-testid": "queue-row",
        "data-incident-id": inc.id,
        "data-status": inc.status,
        "data-priority": String(inc.priority),
        onclick: function () { select(inc.id); },
      }, [
        el("span", { class: "prio", text: "P" + inc.priority }),
        el("div", { class: "qmain" }, [
          el("div", { class: "qline" }, [
            el("b", { text: inc.category }),
            el("span", { class: "status st-" + inc.status, "data-testid": "queue-row-status", text: inc.status.replace("_", " ") }),
          ]),
          el("div", { class: "qline small" }, [
            el("span", { class: "muted", text: inc.id + (inc.address ? " · " + inc.address : "") + zoneText(inc, " · ") }),
            el("span", {
              class: "units",
              "data-testid": "queue-row-units",
              text: units.length ? units.map(unitLabel).join(", ") : (inc.dispatch === "manual" ? "manual" : "no unit") + (inc.units_needed > 1 ? " (needs " + inc.units_needed + ")" : ""),
            }),
          ]),
        ]),
        el("span", { class: "wait", "data-testid": "queue-row-wait", "data-since": String(inc.created_ms || ""), text: fmtAge(Date.now() - (inc.created_ms || Date.now())) }),
      ]);
    }, "No open incidents.");
  }

  /** "Central / Central-2" for an incident placed in zones, else "". */
  function zoneText(inc, prefix) {
    var z = [inc.district, inc.beat].filter(Boolean).join(" / ");
    return z ? prefix + z : "";
  }

  function renderBoard() {
    var list = store.board().filter(unitPasses);
    $("board-count").textContent = String(list.length);
    reconcile($("unit-board"), list, function (u) { return u.id; }, function (u) {
      return JSON.stringify([u.status, u.callsign, u.kind, u.agency, u.post, u.incident_id, !!u.location_ms, u.id === selectedUnitId, u.on_duty, !!u.shift_ended]);
    }, function (u) {
      var what = (u.kind || "").replace(/_/g, " ") + (u.post != null ? " №" + u.post : "");
      return el("div", {
        class: "urow" + (u.id === selectedUnitId ? " selected" : ""),
        "data-testid": "unit-row",
        "data-unit-id": u.id,
        "data-status": u.status,
        "data-agency": u.agency || "",
        "data-kind": u.kind || "",
        title: role === "dispatcher" ? "Centre on the map; set its status" : "Centre on the map",
        onclick: function () {
          if (u.location) map.center(u.location.lat, u.location.lon, Math.min(map.view.mpp, 8));
          if (role === "dispatcher") openUnitControl(u.id);
          if (u.incident_id) select(u.incident_id);
        },
      }, [
        el("i", { class: "dot st-" + u.status }),
        el("b", { class: "callsign", "data-testid": "unit-row-callsign", text: u.callsign || u.id }),
        u.shift_ended ? el("span", { class: "shift-over", "data-testid": "unit-row-shift-over", title: "Its shift ended while it held this incident", text: "shift over" }) : null,
        el("span", { class: "agency ag-" + (u.agency || "none"), "data-testid": "unit-row-agency", text: (u.agency || "").replace(/_/g, " ") }),
        el("div", { class: "meta" }, [
          el("span", { class: "muted", text: u.callsign && u.callsign !== u.id ? u.id : "" }),
          el("span", { class: "muted", "data-testid": "unit-row-kind", text: what }),
          el("span", { class: "status st-" + u.status, "data-testid": "unit-row-status", text: String(u.status).replace("_", " ") }),
          el("span", { class: "muted small", text: u.incident_id ? "→ " + u.incident_id : "" }),
          el("span", { class: "muted small", "data-testid": "unit-row-shift", text: u.on_duty ? "shift " + u.on_duty : "" }),
          el("span", { class: "muted small age", "data-at": String(u.location_ms || ""), text: u.location_ms ? fmtAge(Date.now() - u.location_ms) + " ago" : "no fix" }),
        ]),
      ]);
    }, "No units yet.", function (row, u) {
      // Positions move often: refresh the fix age in place instead of rebuilding the row.
      var age = row.querySelector(".age");
      if (age && u.location_ms) age.dataset.at = String(u.location_ms);
    });
  }

  /** Who is on duty now, whose shift comes next, and a warning per unit past its shift on a call. */
  function renderShifts() {
    var sh = store.shifts(Date.now(), lastConfig && lastConfig.local_offset_min);
    var names = function (list) { return list.map(function (u) { return u.callsign || u.id; }).join(", "); };
    var now = "On duty now: " + sh.onDuty.length;
    if ($("shift-now").textContent !== now) $("shift-now").textContent = now;
    var next = sh.next ? "Next shift " + sh.next.at + ": " + names(sh.next.units) : "";
    if ($("shift-next").textContent !== next) $("shift-next").textContent = next;
    var box = $("shift-warnings");
    var sig = JSON.stringify(sh.ended.map(function (u) { return [u.id, u.callsign, u.incident_id]; }));
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    box.textContent = "";
    sh.ended.forEach(function (u) {
      box.appendChild(el("div", { class: "shift-warning", "data-testid": "shift-warning", "data-unit-id": u.id }, [
        el("b", { text: "Shift over: " }),
        document.createTextNode((u.callsign || u.id) + (u.incident_id ? " still holds " + u.incident_id + " (goes off duty when it is closed or reassigned)" : "")),
        u.incident_id ? el("button", { type: "button", class: "link", text: "Show", onclick: function () { select(u.incident_id, true); } }) : null,
      ]));
    });
  }

  function renderFigures() {
    var f = store.figures(Date.now());
    $("fig-open-total").textContent = String(f.openTotal);
    for (var p = 1; p <= 5; p++) $("fig-open-p" + p).textContent = String(f.open[p]);
    $("fig-units-available").textContent = String(f.unitsAvailable);
    $("fig-units-onduty").textContent = String(f.unitsOnDuty);
    $("fig-units-total").textContent = String(f.unitsTotal);
    setFig("fig-median-dispatch", "fig-dispatch-n", f.medianDispatchMs, f.dispatchCount);
    setFig("fig-median-arrival", "fig-arrival-n", f.medianArrivalMs, f.arrivalCount);
  }

  function setFig(id, nId, ms, n) {
    var e = $(id);
    e.dataset.ms = ms == null ? "" : String(Math.round(ms));
    e.dataset.count = String(n);
    e.textContent = ms == null ? "–" : fmtDuration(ms);
    $(nId).textContent = n ? "n = " + n : "no data";
  }

  function renderBanner() {
    var b = $("emergency-banner");
    var open = store.emergencies.filter(function (e) { return !acked[e.key]; });
    b.hidden = open.length === 0;
    document.body.classList.toggle("has-emergency", open.length > 0);
    if (!open.length) { b.replaceChildren(); b.dataset.sig = ""; return; }
    // Rebuilt only when its content changes, so "Acknowledge" stays clickable.
    var sig = JSON.stringify(open.map(function (e) {
      var i = e.incident_id != null ? store.incident(e.incident_id) : null;
      return [e.key, i && i.status, i && i.updated_ms];
    }));
    if (b.dataset.sig === sig) return;
    b.dataset.sig = sig;
    var frag = document.createDocumentFragment();
    open.forEach(function (e) {
      var inc = e.incident_id != null ? store.incident(e.incident_id) : null;
      var unitId = e.unit_id || (inc && inc.emergency_unit);
      var who = unitId ? "unit " + unitLabel(unitId) : (inc && inc.description) || "an officer";
      var where = inc && inc.location ? " at " + inc.location.lat.toFixed(5) + ", " + inc.location.lon.toFixed(5) : "";
      frag.appendChild(el("div", { class: "emerg-item", "data-testid": "emergency-item", "data-key": e.key }, [
        el("strong", { text: "OFFICER EMERGENCY" }),
        el("span", { text: " " + who + where + (inc ? " — incident " + inc.id + " (" + inc.status + ")" : "") }),
        inc ? el("button", { type: "button", class: "link light", text: "Show", onclick: function () { select(inc.id, true); } }) : null,
        el("button", {
          type: "button", class: "ack", "data-testid": "emergency-ack", text: "Acknowledge",
          onclick: function () { acked[e.key] = Date.now(); saveAcked(); scheduleRender(); },
        }),
      ]));
    });
    b.replaceChildren(frag);
  }

  function loadAcked() {
    try { return JSON.parse(sessionStorage.getItem("opcenter.acked") || "{}") || {}; } catch (e) { return {}; }
  }
  function saveAcked() { sessionStorage.setItem("opcenter.acked", JSON.stringify(acked)); }

  // ---------------------------------------------------------------- unit status control

  var HOLDING = { dispatched: true, en_route: true, on_scene: true };

  function openUnitControl(id) {
    if (selectedUnitId !== id) unitConfirm = null;
    selectedUnitId = id;
    scheduleRender();
  }

  function closeUnitControl() {
    selectedUnitId = null;
    unitConfirm = null;
    scheduleRender();
  }

  /** Fills the static control in place (no rebuild), so its buttons stay clickable. */
  function renderUnitControl() {
    var box = $("unit-control");
    var u = selectedUnitId != null && role === "dispatcher" ? store.units.get(selectedUnitId) : null;
    box.hidden = !u;
    if (!u) return;
    box.dataset.unitId = u.id;
    box.dataset.status = u.status;
    $("uc-id").textContent = unitLabel(u.id);
    var st = $("uc-status");
    st.className = "status st-" + u.status;
    st.textContent = String(u.status).replace("_", " ");
    $("uc-incident").textContent = u.incident_id ? "on " + u.incident_id : "";
    box.querySelectorAll(".uc-set").forEach(function (b) {
      b.disabled = unitSending || b.dataset.status === u.status;
      b.classList.toggle("current", b.dataset.status === u.status);
      b.classList.toggle("pending", !!unitConfirm && unitConfirm.status === b.dataset.status);
    });
    // A confirmation asked for another state of the unit no longer applies.
    if (unitConfirm && (unitConfirm.unit_id !== u.id || unitConfirm.incident_id !== u.incident_id)) unitConfirm = null;
    var c = $("uc-confirm");
    c.hidden = !unitConfirm;
    if (unitConfirm) {
      var which = unitConfirm.incident_id != null ? "incident " + unitConfirm.incident_id : "an incident (" + String(u.status).replace("_", " ") + ")";
      var text = unitLabel(u.id) + " holds " + which + ". Setting it " +
        unitConfirm.status.replace("_", " ") + " takes it off the incident, which goes to the next unit (or back to pending when dispatched manually).";
      if ($("uc-confirm-text").textContent !== text) $("uc-confirm-text").textContent = text;
      $("uc-confirm-yes").disabled = unitSending;
    }
  }

  function holdsIncident(u) {
    return !!u && (u.incident_id != null || !!HOLDING[u.status]);
  }

  function setUnitStatus(unitId, status, confirmed) {
    var u = store.units.get(unitId);
    if (!u || !conn) return;
    if (holdsIncident(u) && !confirmed) {
      unitConfirm = { unit_id: unitId, status: status, incident_id: u.incident_id };
      scheduleRender();
      return;
    }
    unitSending = true;
    scheduleRender();
    conn.send({ type: "unit.status", unit_id: unitId, status: status }).then(function () {
      unitSending = false;
      unitConfirm = null;
      toast(unitLabel(unitId) + " set " + status.replace("_", " "), "info");
      scheduleRender();
    }, function (err) {
      unitSending = false;
      unitConfirm = null;
      toastError(err);
      scheduleRender();
    });
  }

  function initUnitControl() {
    $("unit-control").querySelectorAll(".uc-set").forEach(function (b) {
      b.addEventListener("click", function () { if (selectedUnitId != null) setUnitStatus(selectedUnitId, b.dataset.status, false); });
    });
    $("uc-close").addEventListener("click", closeUnitControl);
    $("uc-confirm-yes").addEventListener("click", function () {
      if (unitConfirm) setUnitStatus(unitConfirm.unit_id, unitConfirm.status, true);
    });
    $("uc-confirm-no").addEventListener("click", function () { unitConfirm = null; scheduleRender(); });
  }

  // ---------------------------------------------------------------- details

  function select(id, center) {
    if (selectedId !== id) candidates = null;
    selectedId = id;
    renderDetailsSoon = true;
    var inc = store.incident(id);
    if (center && inc && inc.location) map.center(inc.location.lat, inc.location.lon);
    if (role === "dispatcher" && inc && inc.status !== "closed") recommend();
    scheduleRender();
  }

  function kv(k, v, testid) {
    if (v == null || v === "") return null;
    return el("div", { class: "kv" }, [el("span", { class: "k", text: k }), el("span", { class: "v", "data-testid": testid || null, text: String(v) })]);
  }

  function incidentCard(inc) {
    return el("div", { class: "card", "data-incident-id": inc.id }, [
      kv("Status", inc.status.replace("_", " "), "detail-status"),
      kv("Category", inc.category, "detail-category"),
      kv("Priority", inc.priority, "detail-priority"),
      kv("Location", inc.location ? inc.location.lat.toFixed(5) + ", " + inc.location.lon.toFixed(5) : ""),
      kv("Address", inc.address),
      kv("District", inc.district, "detail-district"),
      kv("Beat", inc.beat, "detail-beat"),
      kv("Description", inc.description),
      kv("Source", inc.source),
      kv("Units", (inc.units || []).length ? inc.units.map(unitLabel).join(", ") : "none", "detail-units"),
      kv("Needed", inc.units_needed),
      kv("Requires", (inc.required || []).join(", ")),
      kv("Dispatch", inc.dispatch),
      kv("Disposition", inc.disposition, "detail-disposition"),
      kv("Created", inc.created_ms ? new Date(inc.created_ms).toLocaleTimeString() + " (" + fmtAge(Date.now() - inc.created_ms) + " ago)" : ""),
    ]);
  }

  var dupCache = new Map();

  function renderDetails() {
    var panel = $("details");
    var inc = selectedId ? store.incident(selectedId) : null;
    if (!inc || role !== "dispatcher") { panel.hidden = true; editBase = null; return; }
    panel.hidden = false;
    panel.dataset.incidentId = inc.id;
    panel.dataset.status = inc.status;
    $("d-id").textContent = inc.id;
    $("d-info").replaceChildren(incidentCard(inc));
    var closed = inc.status === "closed";
    $("d-close").disabled = closed;
    $("d-recommend").disabled = closed;
    $("d-note-add").disabled = closed;
    fillEditForm(inc);

    // Candidates
    var c = $("d-candidates");
    var frag = document.createDocumentFragment();
    if (closed) frag.appendChild(el("p", { class: "muted", text: "Closed." }));
    else if (!candidates || candidates.incident_id !== inc.id) frag.appendChild(el("p", { class: "muted", text: "…" }));
    else if (candidates.error) frag.appendChild(el("p", { class: "err", text: candidates.error }));
    else {
      candidates.list.forEach(function (cand) {
        var assigned = (inc.units || []).indexOf(cand.unit_id) >= 0;
        var u = store.units.get(cand.unit_id);
        frag.appendChild(el("div", { class: "cand", "data-testid": "candidate", "data-unit-id": cand.unit_id }, [
          el("b", { text: unitLabel(cand.unit_id) }),
          el("span", { class: "muted", text: u ? String(u.status).replace("_", " ") : "" }),
          el("span", { class: "dist", "data-testid": "candidate-distance", text: fmtDistance(cand.distance_m) }),
          el("button", {
            type: "button", "data-testid": "assign-btn", "data-unit-id": cand.unit_id, text: assigned ? "Assigned" : "Assign",
            disabled: assigned ? "disabled" : null,
            onclick: function () { assign(inc.id, cand.unit_id); },
          }),
        ]));
      });
      if (!candidates.list.length) frag.appendChild(el("p", { class: "muted", text: "No candidates." }));
      if (candidates.shortfall) {
        frag.appendChild(el("p", { class: "shortfall", "data-testid": "shortfall", text: "Fewer than asked: " + candidates.shortfall.replace(/_/g, " ") }));
      }
    }
    c.replaceChildren(frag);

    // Notes
    var notes = document.createDocumentFragment();
    (inc.notes || []).forEach(function (n) {
      notes.appendChild(el("li", { "data-testid": "note" }, [
        el("span", { class: "muted small", text: new Date(n.at_ms).toLocaleTimeString() + " · " + n.by }),
        el("div", { text: n.text }),
      ]));
    });
    if (!(inc.notes || []).length) notes.appendChild(el("li", { class: "muted", text: "No notes." }));
    $("d-notes").replaceChildren(notes);

    // Possible duplicates, side by side with this incident.
    var dups = inc.possible_duplicates || [];
    $("d-dups-wrap").hidden = dups.length === 0;
    if (dups.length) {
      var row = el("div", { class: "dup-row" }, [el("div", { class: "dup-col" }, [el("h4", { text: "This: " + inc.id }), incidentCard(inc)])]);
      dups.forEach(function (did) {
        var other = store.incident(did) || dupCache.get(did);
        if (!other) fetchIncident(did);
        row.appendChild(el("div", { class: "dup-col", "data-testid": "duplicate", "data-incident-id": did }, [
          el("h4", {}, [el("a", { href: "#", text: did, onclick: function (e) { e.preventDefault(); select(did, true); } })]),
          other ? incidentCard(other) : el("p", { class: "muted", text: "loading…" }),
        ]));
      });
      $("d-dups").replaceChildren(row);
    }
  }

  // ---------------------------------------------------------------- incident edit

  var EDIT_FIELDS = ["category", "priority", "address", "description"];

  function editValues(inc) {
    return {
      category: inc.category || "",
      priority: String(inc.priority),
      address: inc.address || "",
      description: inc.description || "",
    };
  }

  /**
   * Loads the incident into the edit form. A field the dispatcher has changed
   * keeps its value across updates from elsewhere; untouched fields follow them.
   */
  function fillEditForm(inc) {
    var vals = editValues(inc);
    var fresh = !editBase || editBase.id !== inc.id;
    EDIT_FIELDS.forEach(function (f) {
      var input = $("e-" + f);
      if (fresh || input.value === editBase[f]) input.value = vals[f];
    });
    editBase = Object.assign({ id: inc.id }, vals);
    var closed = inc.status === "closed";
    EDIT_FIELDS.forEach(function (f) { $("e-" + f).disabled = closed; });
    updateEditState();
  }

  /** The changed fields, as `incident.update` takes them. */
  function editPatch(inc) {
    var now = editValues(inc);
    var patch = {};
    EDIT_FIELDS.forEach(function (f) {
      var v = $("e-" + f).value.trim();
      if (v === now[f]) return;
      patch[f] = f === "priority" ? parseInt(v, 10) : v;
    });
    return patch;
  }

  function updateEditState() {
    var inc = selectedId ? store.incident(selectedId) : null;
    var closed = !inc || inc.status === "closed";
    var changed = inc ? Object.keys(editPatch(inc)) : [];
    $("e-save").disabled = closed || !changed.length;
    $("e-revert").disabled = closed || !changed.length;
    $("e-state").textContent = changed.length ? "changed: " + changed.join(", ") : "";
    EDIT_FIELDS.forEach(function (f) { $("e-" + f).classList.toggle("changed", changed.indexOf(f) >= 0); });
  }

  function saveEdit() {
    var inc = selectedId ? store.incident(selectedId) : null;
    if (!inc || !conn || inc.status === "closed") return;
    var patch = editPatch(inc);
    var fields = Object.keys(patch);
    if (!fields.length) { toast("Nothing to save", "warn"); return; }
    if ("category" in patch && !patch.category) { toast("Category must not be empty", "warn"); $("e-category").focus(); return; }
    var id = inc.id;
    $("e-save").disabled = true;
    conn.send(Object.assign({ type: "incident.update", incident_id: id }, patch)).then(function () {
      toast("Updated " + id + ": " + fields.join(", "), "info");
      updateEditState();
    }, function (err) {
      toastError(err);
      updateEditState();
    });
  }

  function initEdit() {
    $("edit-form").addEventListener("submit", function (e) { e.preventDefault(); saveEdit(); });
    $("edit-form").addEventListener("input", updateEditState);
    $("edit-form").addEventListener("change", updateEditState);
    $("e-revert").addEventListener("click", function () {
      var inc = selectedId ? store.incident(selectedId) : null;
      if (!inc) return;
      editBase = null;
      fillEditForm(inc);
    });
  }

  // ---------------------------------------------------------------- assign any unit

  var EARTH_R = 6371008.8; // metres, mean radius (as the server)

  /** Great-circle distance in metres between two {lat, lon}. */
  function haversine(a, b) {
    var rad = Math.PI / 180;
    var dlat = (b.lat - a.lat) * rad;
    var dlon = (b.lon - a.lon) * rad;
    var h = Math.sin(dlat / 2) * Math.sin(dlat / 2) +
      Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dlon / 2) * Math.sin(dlon / 2);
    return 2 * EARTH_R * Math.asin(Math.min(1, Math.sqrt(h)));
  }

  /** Every unit for the selected incident, nearest first; units without a fix last. */
  function assignChoices(inc) {
    var list = Array.from(store.units.values()).map(function (u) {
      var d = inc.location && u.location ? haversine(u.location, inc.location) : null;
      return { unit: u, distance_m: d };
    });
    list.sort(function (a, b) {
      if (a.distance_m == null || b.distance_m == null) {
        if (a.distance_m != null) return -1;
        if (b.distance_m != null) return 1;
      } else if (a.distance_m !== b.distance_m) return a.distance_m - b.distance_m;
      return String(a.unit.id).localeCompare(String(b.unit.id));
    });
    return list;
  }

  /** The "any unit" select: rebuilt only when its content changes and never while open. */
  function renderAssignAny() {
    var sel = $("d-assign-unit");
    var btn = $("d-assign-any");
    var inc = selectedId && role === "dispatcher" ? store.incident(selectedId) : null;
    if (!inc) return;
    var closed = inc.status === "closed";
    var mine = inc.units || [];
    var choices = assignChoices(inc);
    var sig = JSON.stringify([inc.id, closed, mine, choices.map(function (c) {
      return [c.unit.id, c.unit.status, c.unit.incident_id, c.unit.callsign, c.distance_m == null ? null : Math.round(c.distance_m / 10)];
    })]);
    if (sel.dataset.sig !== sig && document.activeElement !== sel) {
      var keep = sel.dataset.incidentId === inc.id ? sel.value : "";
      var opts = [el("option", { value: "", text: choices.length ? "any unit… (" + choices.length + ")" : "no units" })];
      choices.forEach(function (c) {
        var u = c.unit;
        var here = mine.indexOf(u.id) >= 0;
        var elsewhere = !here && u.incident_id != null ? " → " + u.incident_id : "";
        var label = unitLabel(u.id) + " · " + String(u.status).replace("_", " ") + " · " +
          (c.distance_m == null ? "no fix" : fmtDistance(c.distance_m)) + elsewhere + (here ? " (assigned)" : "");
        opts.push(el("option", {
          value: u.id, text: label,
          "data-status": u.status,
          "data-distance": c.distance_m == null ? "" : String(Math.round(c.distance_m)),
          disabled: here || u.status === "off_duty" ? "disabled" : null,
        }));
      });
      sel.replaceChildren.apply(sel, opts);
      sel.dataset.sig = sig;
      sel.dataset.incidentId = inc.id;
      var ok = keep && Array.prototype.some.call(sel.options, function (o) { return o.value === keep && !o.disabled; });
      sel.value = ok ? keep : "";
    }
    sel.disabled = closed;
    btn.disabled = closed || !sel.value;
  }

  function fetchIncident(id) {
    if (dupCache.has(id) || !conn) return;
    dupCache.set(id, null);
    fetch("/v1/incidents/" + encodeURIComponent(id), { headers: { Authorization: "Bearer " + conn.token } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (j && j.incident) { dupCache.set(id, j.incident); renderDetailsSoon = true; scheduleRender(); }
      }).catch(function () { /* shown as loading */ });
  }

  function recommend() {
    var id = selectedId;
    if (!conn || !id) return;
    conn.send({ type: "incident.recommend", incident_id: id, count: 3 }).then(function (ok) {
      candidates = { incident_id: id, list: ok.candidates || [], shortfall: ok.shortfall || null };
      renderDetailsSoon = true;
      scheduleRender();
    }, function (err) {
      candidates = { incident_id: id, list: [], error: (err.code || "error") + ": " + (err.message || "") };
      renderDetailsSoon = true;
      scheduleRender();
      if (err.code !== "offline") toastError(err);
    });
  }

  function assign(incidentId, unitId, done) {
    var cmd = { type: "incident.assign", incident_id: incidentId, unit_id: unitId };
    if ($("d-force").checked) cmd.force = true;
    conn.send(cmd).then(function () {
      toast("Assigned " + unitLabel(unitId) + " to " + incidentId, "info");
      if (done) done();
      recommend();
    }, toastError);
  }

  function initDetails() {
    $("d-recommend").addEventListener("click", recommend);
    $("d-assign-unit").addEventListener("change", function () { $("d-assign-any").disabled = !$("d-assign-unit").value; });
    $("d-assign-unit").addEventListener("blur", scheduleRender); // catch up on changes skipped while it was open
    $("d-assign-any").addEventListener("click", function () {
      var unitId = $("d-assign-unit").value;
      if (!selectedId || !unitId) return;
      assign(selectedId, unitId, function () { $("d-assign-unit").value = ""; scheduleRender(); });
    });
    $("d-deselect").addEventListener("click", function () { selectedId = null; renderDetailsSoon = true; scheduleRender(); });
    $("d-close").addEventListener("click", function () {
      var id = selectedId;
      var disp = $("d-disposition").value.trim();
      if (!id) return;
      if (!disp) { toast("Choose a disposition first", "warn"); $("d-disposition").focus(); return; }
      conn.send({ type: "incident.close", incident_id: id, disposition: disp }).then(function () {
        toast("Closed " + id + " (" + disp + ")", "info");
        $("d-disposition").value = "";
      }, toastError);
    });
    $("d-note-add").addEventListener("click", function () {
      var id = selectedId;
      var text = $("d-note-text").value.trim();
      if (!id || !text) return;
      conn.send({ type: "incident.note", incident_id: id, text: text }).then(function () {
        $("d-note-text").value = "";
      }, toastError);
    });
  }

  // ---------------------------------------------------------------- create form

  function initCreate() {
    map.onClick = function (pos) {
      if (role !== "dispatcher") return;
      setCrosshair(pos.lat, pos.lon);
    };
    map.onPick = function (hit) { select(hit.id); };
    ["c-lat", "c-lon"].forEach(function (id) {
      $(id).addEventListener("change", function () {
        var lat = parseFloat($("c-lat").value);
        var lon = parseFloat($("c-lon").value);
        if (isFinite(lat) && isFinite(lon)) { crosshair = { lat: lat, lon: lon }; scheduleRender(); }
      });
    });
    $("create-form").addEventListener("submit", function (e) {
      e.preventDefault();
      createIncident();
    });
    // Address autocomplete (address.js): a pick sets the location too.
    OCAddress.attach($("c-address"), {
      token: function () { return conn && conn.token; },
      onPick: function (m) {
        setCrosshair(m.location.lat, m.location.lon);
        map.center(m.location.lat, m.location.lon);
      },
    });
  }

  function setCrosshair(lat, lon) {
    crosshair = { lat: lat, lon: lon };
    $("c-lat").value = lat.toFixed(6);
    $("c-lon").value = lon.toFixed(6);
    scheduleRender();
  }

  function createIncident() {
    var lat = parseFloat($("c-lat").value);
    var lon = parseFloat($("c-lon").value);
    var addr = $("c-address").value.trim();
    // Without a location the server places the address with its gazetteer.
    var placed = isFinite(lat) && isFinite(lon);
    if (!placed && !addr) { toast("Click the map or type an address to set the location", "warn"); return; }
    var category = $("c-category").value.trim();
    if (!category) { toast("Category is required", "warn"); return; }
    var cmd = {
      type: "incident.create",
      key: "console-" + randomId(),
      category: category,
      priority: parseInt($("c-priority").value, 10),
      units_needed: Math.max(1, parseInt($("c-units").value, 10) || 1),
      dispatch: document.querySelector("input[name=c-dispatch]:checked").value,
      source: "call",
    };
    if (placed) cmd.location = { lat: lat, lon: lon };
    if (addr) cmd.address = addr;
    var desc = $("c-description").value.trim();
    if (desc) cmd.description = desc;
    var req = $("c-required").value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
    if (req.length) cmd.required = req;
    var btn = document.querySelector("[data-testid=create-submit]");
    btn.disabled = true;
    // Carries a key, so it is safe to resend after a drop (retry = true).
    conn.send(cmd, true).then(function (ok) {
      btn.disabled = false;
      var inc = ok.incident;
      if (inc) {
        // The ok reply is the state after auto-dispatch; the event may follow it.
        store.upsertFromReply(inc);
        toast("Created " + inc.id + (inc.units && inc.units.length ? " → " + inc.units.map(unitLabel).join(", ") : " (pending)"), "info");
        select(inc.id);
      }
      $("c-description").value = "";
      $("c-address").value = "";
      crosshair = null;
      scheduleRender();
    }, function (err) {
      btn.disabled = false;
      toastError(err);
    });
  }

  function randomId() {
    if (window.crypto && crypto.getRandomValues) {
      var b = new Uint8Array(12);
      crypto.getRandomValues(b);
      return Array.from(b, function (x) { return x.toString(16).padStart(2, "0"); }).join("");
    }
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  // ---------------------------------------------------------------- toasts

  function toast(text, kind, code) {
    var t = el("div", { class: "toast " + (kind || "error"), "data-testid": "toast", "data-code": code || "", text: text });
    t.addEventListener("click", function () { t.remove(); });
    $("toasts").appendChild(t);
    setTimeout(function () { t.remove(); }, kind === "error" ? 10000 : 5000);
  }

  function toastError(err) {
    if (!err) return;
    // A hub with no active engine (a failover in progress) is not a failure of
    // this command's content: say so briefly instead of showing an error.
    if (err.code === "internal" && /^no engine answered/.test(err.message || "")) {
      toast("Switching over: the region's engine is changing. Send it again in a moment.", "warn", "switching_over");
      return;
    }
    toast((err.code || "error") + ": " + (err.message || ""), "error", err.code);
  }

  // ---------------------------------------------------------------- ticking

  function tick() {
    var now = Date.now();
    $("clock").textContent = new Date(now).toLocaleTimeString();
    document.querySelectorAll("[data-testid=queue-row-wait]").forEach(function (e) {
      var since = parseInt(e.dataset.since, 10);
      if (since) e.textContent = fmtAge(now - since);
    });
    document.querySelectorAll(".urow .age").forEach(function (e) {
      var at = parseInt(e.dataset.at, 10);
      if (at) e.textContent = fmtAge(now - at) + " ago";
    });
    if (role === "supervisor") renderFigures(); // the last-hour window slides
  }

  // ---------------------------------------------------------------- start

  $("zoom-in").addEventListener("click", function () { map.zoom(1 / 1.6); });
  $("zoom-out").addEventListener("click", function () { map.zoom(1.6); });
  $("zoom-fit").addEventListener("click", function () { if (!fitToData()) toast("Nothing to fit yet", "warn"); });
  initSignin();
  initDetails();
  initEdit();
  initUnitControl();
  initFilters();
  initCreate();
  loadConfig();
  setInterval(tick, 1000);
  tick();

  // For tests and the curious: read-only handles.
  window.opcenter = {
    get store() { return store; },
    map: map,
    get connState() { return conn ? conn.state : "offline"; },
    get role() { return role; },
    /** Drops the socket as a network failure would (for resume tests). */
    dropConnection: function () { if (conn && conn.ws) conn.ws.close(4000, "dropped by test"); },
  };
})();

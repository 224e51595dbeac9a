/* opcenter console: the client-side state (PROTOCOL.md sections 4 and 6).
 *
 * Owns: open incidents, units, the resume cursor (epoch, last seq), position
 * freshness per unit, and the dispatch/arrival timings used by the supervisor's
 * figures. Pure logic: no DOM, no sockets, no clock (callers pass `now`), so the
 * same file runs in the page and under `node --test`.
 *
 * Must never: apply an event twice (a seq at or below the cursor is dropped), move
 * a unit backwards in time, or keep a closed incident in the open set.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.OCStore = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var OPEN_DONE = { closed: true };
  var DISPATCHED_STATES = { dispatched: true, en_route: true, on_scene: true };
  var CLOSED_KEEP = 300; // closed incidents remembered for details / duplicates
  var HOUR_MS = 3600 * 1000;

  function Store() {
    this.epoch = null;
    this.seq = null; // last event seq applied, or the snapshot cut
    this.incidents = new Map(); // open incidents by id
    this.closed = new Map(); // recently closed, insertion ordered
    this.units = new Map();
    this.posAt = new Map(); // unit id -> at_ms of the newest fix applied
    // incident id -> {created_ms, dispatched_ms, on_scene_ms}, from events only
    this.timings = new Map();
    this.emergencies = []; // [{key, kind, incident_id?, unit_id?, seq}]
    this.version = 0; // bumped on every visible change
  }

  /** The resume point for `subscribe.since`, or null before the first snapshot. */
  Store.prototype.cursor = function () {
    if (this.epoch == null || this.seq == null) return null;
    return { epoch: this.epoch, seq: this.seq };
  };

  /** Applies a `subscribe` ok reply. Returns true when state was replaced. */
  Store.prototype.applySubscribed = function (msg) {
    if (msg.recovered && this.epoch != null && msg.epoch === this.epoch) {
      // Replayed events follow, all with seq above our cursor: keep everything.
      return false;
    }
    this.epoch = msg.epoch;
    this.seq = typeof msg.seq === "number" ? msg.seq : 0;
    if (msg.recovered) {
      // Recovered from a cursor we never had state for (a replay from zero):
      // start empty, the replay rebuilds it.
      this.incidents.clear();
      this.units.clear();
      this.version++;
      return true;
    }
    this.incidents.clear();
    var self = this;
    (msg.incidents || []).forEach(function (inc) {
      if (inc && inc.id != null && !OPEN_DONE[inc.status]) self.incidents.set(inc.id, inc);
      if (inc && inc.category === "officer_emergency" && !OPEN_DONE[inc.status]) {
        self._emergency("incident:" + inc.id, { kind: "incident", incident_id: inc.id });
      }
    });
    var oldUnits = this.units;
    this.units = new Map();
    (msg.units || []).forEach(function (u) {
      if (!u || u.id == null) return;
      self.units.set(u.id, self._mergeUnit(oldUnits.get(u.id), u));
    });
    this.version++;
    return true;
  };

  /** Applies an `event` frame. Returns false when it was a duplicate or foreign. */
  Store.prototype.applyEvent = function (ev) {
    if (typeof ev.seq === "number") {
      if (this.seq != null && ev.seq <= this.seq) return false;
      this.seq = ev.seq;
    }
    var change = ev.change;
    if (ev.incident && ev.incident.id != null) {
      var inc = ev.incident;
      this._time(inc, change);
      if (OPEN_DONE[inc.status]) {
        this.incidents.delete(inc.id);
        this._remember(inc);
      } else {
        this.incidents.set(inc.id, inc);
      }
      if (change === "emergency" || (inc.category === "officer_emergency" && !OPEN_DONE[inc.status])) {
        this._emergency("incident:" + inc.id, { kind: "incident", incident_id: inc.id, seq: ev.seq });
      }
    }
    if (ev.unit && ev.unit.id != null) {
      var u = ev.unit;
      this.units.set(u.id, this._mergeUnit(this.units.get(u.id), u));
      if (change === "emergency" && u.emergency !== false) {
        // A unit-level emergency event: keyed by the unit and its incident (if any),
        // so the matching incident event does not raise a second banner.
        var key = u.incident_id != null ? "incident:" + u.incident_id : "unit:" + u.id + ":" + ev.seq;
        this._emergency(key, { kind: "unit", unit_id: u.id, incident_id: u.incident_id, seq: ev.seq });
      }
    }
    this.version++;
    return true;
  };

  /** Applies a `positions` frame; fixes older than the unit's newest are ignored. */
  Store.prototype.applyPositions = function (items) {
    var moved = 0;
    for (var i = 0; i < (items || []).length; i++) {
      var p = items[i];
      if (!p || p.unit_id == null || typeof p.lat !== "number" || typeof p.lon !== "number") continue;
      var last = this.posAt.get(p.unit_id);
      var u = this.units.get(p.unit_id);
      if (u && typeof u.location_ms === "number" && (last == null || u.location_ms > last)) last = u.location_ms;
      var at = typeof p.at_ms === "number" ? p.at_ms : null;
      if (last != null && at != null && at < last) continue;
      if (at != null) this.posAt.set(p.unit_id, at);
      if (!u) {
        u = { id: p.unit_id, capabilities: [], status: "unknown" };
        this.units.set(p.unit_id, u);
      } else {
        u = Object.assign({}, u);
        this.units.set(p.unit_id, u);
      }
      u.location = { lat: p.lat, lon: p.lon };
      if (at != null) u.location_ms = at;
      if (typeof p.heading === "number") u.heading = p.heading;
      if (typeof p.speed === "number") u.speed = p.speed;
      moved++;
    }
    if (moved) this.version++;
    return moved;
  };

  /** A unit from an event or snapshot, keeping a newer position we already have. */
  Store.prototype._mergeUnit = function (old, fresh) {
    var u = Object.assign({}, fresh);
    var oldAt = old && typeof old.location_ms === "number" ? old.location_ms : null;
    var posAt = this.posAt.get(fresh.id);
    if (posAt != null && (oldAt == null || posAt > oldAt)) oldAt = posAt;
    var freshAt = typeof fresh.location_ms === "number" ? fresh.location_ms : null;
    if (old && old.location && (fresh.location == null || (oldAt != null && (freshAt == null || freshAt < oldAt)))) {
      u.location = old.location;
      if (oldAt != null) u.location_ms = oldAt;
      if (old.heading != null) u.heading = old.heading;
      if (old.speed != null) u.speed = old.speed;
    }
    return u;
  };

  Store.prototype._remember = function (inc) {
    this.closed.delete(inc.id);
    this.closed.set(inc.id, inc);
    while (this.closed.size > CLOSED_KEEP) this.closed.delete(this.closed.keys().next().value);
  };

  /**
   * An incident from a command's ok reply, kept only if no event has brought it
   * yet: events are authoritative and may already be newer than the reply.
   */
  Store.prototype.upsertFromReply = function (inc) {
    if (!inc || inc.id == null || inc.status === "closed") return false;
    if (this.incidents.has(inc.id) || this.closed.has(inc.id)) return false;
    this.incidents.set(inc.id, inc);
    this.version++;
    return true;
  };

  /** Any incident we know: open, recently closed. */
  Store.prototype.incident = function (id) {
    return this.incidents.get(id) || this.closed.get(id) || null;
  };

  Store.prototype._emergency = function (key, info) {
    for (var i = 0; i < this.emergencies.length; i++) if (this.emergencies[i].key === key) return;
    info.key = key;
    this.emergencies.push(info);
  };

  /** Records created → first dispatched → first on_scene from an incident event. */
  Store.prototype._time = function (inc, change) {
    OCStore_recordTiming(this.timings, inc, change);
  };

  function OCStore_recordTiming(timings, inc, change) {
    if (typeof inc.created_ms !== "number") return;
    var t = timings.get(inc.id);
    if (!t) {
      t = { created_ms: inc.created_ms, dispatched_ms: null, on_scene_ms: null };
      timings.set(inc.id, t);
    }
    var at = typeof inc.updated_ms === "number" ? inc.updated_ms : null;
    if (at == null) return;
    var dispatchedNow = change === "dispatched" || DISPATCHED_STATES[inc.status] ||
      (inc.units && inc.units.length > 0 && inc.status !== "pending" && inc.status !== "closed");
    if (dispatchedNow && (t.dispatched_ms == null || at < t.dispatched_ms)) t.dispatched_ms = at;
    var arrivedNow = change === "on_scene" || inc.status === "on_scene";
    if (arrivedNow && (t.on_scene_ms == null || at < t.on_scene_ms)) {
      t.on_scene_ms = at;
      if (t.dispatched_ms == null || t.dispatched_ms > at) t.dispatched_ms = at;
    }
  }

  /** Feeds timings from a separate history replay (no state change). */
  Store.prototype.recordTiming = function (inc, change) {
    if (inc && inc.id != null) OCStore_recordTiming(this.timings, inc, change);
  };

  function median(xs) {
    if (!xs.length) return null;
    var s = xs.slice().sort(function (a, b) { return a - b; });
    var m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  /** The supervisor's figures at `now` (ms). */
  Store.prototype.figures = function (now) {
    var open = { 1: 0, 2: 0, 3: 0, 4: 0, 5: 0 };
    var openTotal = 0;
    this.incidents.forEach(function (inc) {
      openTotal++;
      if (open[inc.priority] != null) open[inc.priority]++;
    });
    var available = 0;
    var onDuty = 0;
    this.units.forEach(function (u) {
      if (u.status === "available") available++;
      if (u.status !== "off_duty") onDuty++;
    });
    var toDispatch = [];
    var toArrival = [];
    var since = now - HOUR_MS;
    this.timings.forEach(function (t) {
      if (t.dispatched_ms != null && t.dispatched_ms >= since) toDispatch.push(Math.max(0, t.dispatched_ms - t.created_ms));
      if (t.on_scene_ms != null && t.on_scene_ms >= since) toArrival.push(Math.max(0, t.on_scene_ms - t.created_ms));
    });
    return {
      open: open,
      openTotal: openTotal,
      unitsAvailable: available,
      unitsOnDuty: onDuty,
      unitsTotal: this.units.size,
      medianDispatchMs: median(toDispatch),
      dispatchCount: toDispatch.length,
      medianArrivalMs: median(toArrival),
      arrivalCount: toArrival.length,
    };
  };

  /** Minutes of the day of "HH:MM", or null. */
  function hhmm(t) {
    var m = /^(\d{1,2}):(\d{2})$/.exec(String(t || "").trim());
    return m && +m[1] < 24 && +m[2] < 60 ? +m[1] * 60 + +m[2] : null;
  }

  /**
   * Who is on duty now and whose shift comes next, at `now` (ms) in the region's
   * local time (UTC + `offsetMin`, `dispatch.local_offset_min`). `onDuty`: units not
   * off duty; `next`: the earliest start (`at`, "HH:MM") of a roster shift
   * (`on_duty`, "HH:MM-HH:MM") of units now off duty, and those units; `ended`:
   * units whose shift ended while they held an incident (`shift_ended`).
   */
  Store.prototype.shifts = function (now, offsetMin) {
    var local = Math.floor(now / 60000) + (offsetMin || 0);
    var minute = ((local % 1440) + 1440) % 1440;
    var onDuty = [];
    var ended = [];
    var next = null;
    this.board().forEach(function (u) {
      if (u.status !== "off_duty") onDuty.push(u);
      if (u.shift_ended) ended.push(u);
      if (u.status !== "off_duty" || !u.on_duty) return;
      var from = hhmm(String(u.on_duty).split("-")[0]);
      if (from == null) return;
      var wait = (from - minute + 1440) % 1440;
      if (!next || wait < next.wait) next = { wait: wait, at: String(u.on_duty).split("-")[0], units: [u] };
      else if (wait === next.wait) next.units.push(u);
    });
    return { onDuty: onDuty, next: next, ended: ended };
  };

  /** Open incidents, most urgent first: priority 1 before 5, older before newer. */
  Store.prototype.queue = function () {
    var list = Array.from(this.incidents.values());
    list.sort(function (a, b) {
      return (a.priority - b.priority) || ((a.created_ms || 0) - (b.created_ms || 0)) || String(a.id).localeCompare(String(b.id));
    });
    return list;
  };

  var UNIT_ORDER = { available: 0, dispatched: 1, en_route: 2, on_scene: 3, busy: 4, unresponsive: 5, off_duty: 6 };

  /** Units for the board: by status (available first), then id. */
  Store.prototype.board = function () {
    var list = Array.from(this.units.values());
    list.sort(function (a, b) {
      var oa = UNIT_ORDER[a.status] != null ? UNIT_ORDER[a.status] : 9;
      var ob = UNIT_ORDER[b.status] != null ? UNIT_ORDER[b.status] : 9;
      return (oa - ob) || String(a.id).localeCompare(String(b.id));
    });
    return list;
  };

  return { Store: Store, median: median };
});

/* opcenter console: the map, drawn on a <canvas> with no tiles and no network.
 *
 * Owns: the view (centre, metres per pixel), the projection (equirectangular,
 * x scaled by cos(latitude of the view centre)), pan/zoom input, and drawing of
 * the streets layer, zones (districts labelled, beats dashed), incidents, units
 * (shape by agency, a ring and number for posts, colour by status), assignment
 * lines, the crosshair and the scale bar. Exposes counts of what it drew as data
 * attributes on the canvas (data-lines, data-units, data-incidents, data-streets,
 * data-zones, data-district-labels, data-agencies) for the browser test.
 *
 * Must never: fetch anything, or mutate the store (it only reads a model the app
 * hands it through `setModel`).
 */
(function (root) {
  "use strict";

  var R = 6371008.8; // metres, PROTOCOL.md section 1
  var DEG = Math.PI / 180;
  var MIN_MPP = 0.25;
  var MAX_MPP = 200000;

  var UNIT_COLORS = {
    available: "#2fbf71",
    dispatched: "#f2a93b",
    en_route: "#f27b3b",
    on_scene: "#4aa3ff",
    busy: "#a77bf3",
    unresponsive: "#ff4d6d",
    off_duty: "#7a8494",
  };
  var PRIORITY_COLORS = { 1: "#ff3b3b", 2: "#ff8a3b", 3: "#f2d13b", 4: "#7fd1ff", 5: "#b8c2cc" };

  function OCMap(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.view = { lat: 0, lon: 0, mpp: 20000 };
    this.model = { units: [], incidents: [], districts: null, zones: null, streets: null, selected: null, crosshair: null };
    this.onClick = null; // function({lat, lon})
    this.onPick = null; // function({kind, id}) when a marker is clicked
    this.dirty = true;
    this.hasView = false;
    this._drag = null;
    this._size = { w: 0, h: 0 };
    this._bind();
    var self = this;
    function frame() {
      if (self._resize() || self.dirty) {
        self.dirty = false;
        self.draw();
      }
      root.requestAnimationFrame(frame);
    }
    root.requestAnimationFrame(frame);
  }

  /** Sets the view to show a bounding box {south, west, north, east}. */
  OCMap.prototype.fit = function (box, pad) {
    pad = pad == null ? 0.08 : pad;
    this._resize();
    var lat = (box.south + box.north) / 2;
    var lon = (box.west + box.east) / 2;
    var cos = Math.cos(lat * DEG);
    var hM = Math.max(1, (box.north - box.south) * DEG * R);
    var wM = Math.max(1, (box.east - box.west) * DEG * R * cos);
    var w = Math.max(50, this._size.w * (1 - 2 * pad));
    var h = Math.max(50, this._size.h * (1 - 2 * pad));
    this.view = { lat: lat, lon: lon, mpp: clamp(Math.max(wM / w, hM / h), MIN_MPP, MAX_MPP) };
    // Until the user pans or zooms, a resize (e.g. the console becoming visible)
    // fits the same box again.
    this._fit = { box: box, pad: pad };
    this.hasView = true;
    this.dirty = true;
  };

  OCMap.prototype.center = function (lat, lon, mpp) {
    this._fit = null;
    this.view = { lat: lat, lon: lon, mpp: clamp(mpp || this.view.mpp, MIN_MPP, MAX_MPP) };
    this.hasView = true;
    this.dirty = true;
  };

  OCMap.prototype.setModel = function (model) {
    this.model = model;
    this.dirty = true;
  };

  /** Geographic → canvas CSS pixels. */
  OCMap.prototype.project = function (lat, lon) {
    var v = this.view;
    var cos = Math.cos(v.lat * DEG);
    var x = ((lon - v.lon) * DEG * R * cos) / v.mpp + this._size.w / 2;
    var y = (-(lat - v.lat) * DEG * R) / v.mpp + this._size.h / 2;
    return { x: x, y: y };
  };

  /** Canvas CSS pixels → geographic. */
  OCMap.prototype.unproject = function (x, y) {
    var v = this.view;
    var cos = Math.max(1e-6, Math.cos(v.lat * DEG));
    var lon = v.lon + ((x - this._size.w / 2) * v.mpp) / (DEG * R * cos);
    var lat = v.lat - ((y - this._size.h / 2) * v.mpp) / (DEG * R);
    return { lat: clamp(lat, -90, 90), lon: wrapLon(lon) };
  };

  OCMap.prototype.zoom = function (factor, x, y) {
    this._fit = null;
    if (x == null) { x = this._size.w / 2; y = this._size.h / 2; }
    var before = this.unproject(x, y);
    this.view.mpp = clamp(this.view.mpp * factor, MIN_MPP, MAX_MPP);
    var after = this.unproject(x, y);
    this.view.lat = clamp(this.view.lat + (before.lat - after.lat), -85, 85);
    this.view.lon = wrapLon(this.view.lon + (before.lon - after.lon));
    this.dirty = true;
  };

  OCMap.prototype._resize = function () {
    var c = this.canvas;
    var rect = c.getBoundingClientRect();
    var w = Math.max(1, Math.round(rect.width));
    var h = Math.max(1, Math.round(rect.height));
    var dpr = root.devicePixelRatio || 1;
    if (w === this._size.w && h === this._size.h && c.width === Math.round(w * dpr)) return false;
    this._size = { w: w, h: h };
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
    if (this._fit && w > 1 && h > 1) this.fit(this._fit.box, this._fit.pad);
    return true;
  };

  OCMap.prototype._bind = function () {
    var self = this;
    var c = this.canvas;
    c.addEventListener("mousedown", function (e) {
      if (e.button !== 0) return;
      self._drag = { x: e.clientX, y: e.clientY, lat: self.view.lat, lon: self.view.lon, moved: false };
      e.preventDefault();
    });
    root.addEventListener("mousemove", function (e) {
      var d = self._drag;
      if (!d) return;
      var dx = e.clientX - d.x;
      var dy = e.clientY - d.y;
      if (!d.moved && Math.abs(dx) + Math.abs(dy) < 5) return;
      d.moved = true;
      self._fit = null;
      c.classList.add("dragging");
      var cos = Math.max(1e-6, Math.cos(d.lat * DEG));
      self.view.lon = wrapLon(d.lon - (dx * self.view.mpp) / (DEG * R * cos));
      self.view.lat = clamp(d.lat + (dy * self.view.mpp) / (DEG * R), -85, 85);
      self.dirty = true;
    });
    root.addEventListener("mouseup", function (e) {
      var d = self._drag;
      if (!d) return;
      self._drag = null;
      c.classList.remove("dragging");
      if (d.moved) return;
      var rect = c.getBoundingClientRect();
      var x = e.clientX - rect.left;
      var y = e.clientY - rect.top;
      var hit = self.hit(x, y);
      if (hit && hit.kind === "incident" && self.onPick) {
        self.onPick(hit);
        return;
      }
      if (self.onClick) self.onClick(self.unproject(x, y), hit);
    });
    c.addEventListener("wheel", function (e) {
      e.preventDefault();
      var rect = c.getBoundingClientRect();
      var factor = Math.pow(1.0015, e.deltaY);
      self.zoom(factor, e.clientX - rect.left, e.clientY - rect.top);
    }, { passive: false });
  };

  /** The incident (preferred) or unit marker under a canvas point, if any. */
  OCMap.prototype.hit = function (x, y) {
    var best = null;
    var bestD = 12;
    var m = this.model;
    var self = this;
    (m.incidents || []).forEach(function (inc) {
      if (!inc.location) return;
      var p = self.project(inc.location.lat, inc.location.lon);
      var d = Math.hypot(p.x - x, p.y - y);
      if (d < bestD) { bestD = d; best = { kind: "incident", id: inc.id }; }
    });
    if (best) return best;
    bestD = 10;
    (m.units || []).forEach(function (u) {
      if (!u.location) return;
      var p = self.project(u.location.lat, u.location.lon);
      var d = Math.hypot(p.x - x, p.y - y);
      if (d < bestD) { bestD = d; best = { kind: "unit", id: u.id }; }
    });
    return best;
  };

  OCMap.prototype.draw = function () {
    var ctx = this.ctx;
    var w = this._size.w;
    var h = this._size.h;
    var dpr = root.devicePixelRatio || 1;
    var self = this;
    var m = this.model;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#0f1720";
    ctx.fillRect(0, 0, w, h);
    this._grid(ctx, w, h);
    // Streets under the zones, zones under incidents and units.
    var streets = m.streets ? this._streets(ctx, m.streets, w, h) : 0;
    var zones = { drawn: 0, labels: 0 };
    if (m.zones) zones = this._districts(ctx, m.zones);
    else if (m.districts) zones = this._districts(ctx, m.districts);

    var unitsById = new Map();
    (m.units || []).forEach(function (u) { unitsById.set(u.id, u); });

    // Assignment lines first, under the markers.
    var lines = 0;
    ctx.save();
    ctx.lineWidth = 2;
    ctx.setLineDash([6, 4]);
    (m.incidents || []).forEach(function (inc) {
      if (!inc.location) return;
      var to = self.project(inc.location.lat, inc.location.lon);
      (inc.units || []).forEach(function (uid) {
        var u = unitsById.get(uid);
        if (!u || !u.location) return;
        var from = self.project(u.location.lat, u.location.lon);
        ctx.strokeStyle = UNIT_COLORS[u.status] || "#ddd";
        ctx.beginPath();
        ctx.moveTo(from.x, from.y);
        ctx.lineTo(to.x, to.y);
        ctx.stroke();
        lines++;
      });
    });
    ctx.restore();

    // Incidents: diamonds coloured by priority.
    var drawnInc = 0;
    (m.incidents || []).forEach(function (inc) {
      if (!inc.location) return;
      var p = self.project(inc.location.lat, inc.location.lon);
      if (p.x < -20 || p.y < -20 || p.x > w + 20 || p.y > h + 20) return;
      drawnInc++;
      var s = inc.priority <= 2 ? 9 : 7;
      var selected = m.selected === inc.id;
      ctx.beginPath();
      ctx.moveTo(p.x, p.y - s);
      ctx.lineTo(p.x + s, p.y);
      ctx.lineTo(p.x, p.y + s);
      ctx.lineTo(p.x - s, p.y);
      ctx.closePath();
      ctx.fillStyle = PRIORITY_COLORS[inc.priority] || "#ccc";
      ctx.fill();
      ctx.lineWidth = selected ? 3 : 1.5;
      ctx.strokeStyle = selected ? "#ffffff" : "#111";
      ctx.stroke();
      if (inc.category === "officer_emergency") {
        ctx.beginPath();
        ctx.arc(p.x, p.y, s + 6, 0, 2 * Math.PI);
        ctx.strokeStyle = "#ff3b3b";
        ctx.lineWidth = 2;
        ctx.stroke();
      }
      ctx.font = "bold 11px sans-serif";
      ctx.fillStyle = "#f3f6f9";
      ctx.fillText("P" + inc.priority + " " + (inc.category || ""), p.x + s + 3, p.y - 3);
    });

    // Units: circles coloured by status, with a heading tick and the callsign.
    // When crowded, only units that are busy with something keep their label.
    var visible = 0;
    (m.units || []).forEach(function (u) {
      if (!u.location) return;
      var q = self.project(u.location.lat, u.location.lon);
      if (q.x >= 0 && q.y >= 0 && q.x <= w && q.y <= h) visible++;
    });
    var crowded = visible > 60;
    var drawnUnits = 0;
    var agencies = {};
    (m.units || []).forEach(function (u) {
      if (!u.location) return;
      var p = self.project(u.location.lat, u.location.lon);
      if (p.x < -20 || p.y < -20 || p.x > w + 20 || p.y > h + 20) return;
      drawnUnits++;
      if (u.agency) agencies[u.agency] = (agencies[u.agency] || 0) + 1;
      var color = UNIT_COLORS[u.status] || "#ccc";
      if (typeof u.heading === "number" && (u.speed == null || u.speed > 0.5)) {
        var a = u.heading * DEG;
        ctx.beginPath();
        ctx.moveTo(p.x, p.y);
        ctx.lineTo(p.x + Math.sin(a) * 13, p.y - Math.cos(a) * 13);
        ctx.strokeStyle = color;
        ctx.lineWidth = 2;
        ctx.stroke();
      }
      unitShape(ctx, p, u.agency);
      ctx.fillStyle = color;
      ctx.fill();
      ctx.lineWidth = u.agency === "national_guard" ? 2.5 : 1.5;
      ctx.strokeStyle = u.agency === "national_guard" ? GUARD_OUTLINE : "#0b0f14";
      ctx.stroke();
      var post = u.post != null || /post$/.test(u.kind || "");
      if (post) {
        // A post: a white ring, and its number beside it even when crowded.
        ctx.beginPath();
        ctx.arc(p.x, p.y, 9.5, 0, 2 * Math.PI);
        ctx.strokeStyle = "#e8eef3";
        ctx.lineWidth = 1.5;
        ctx.stroke();
      }
      ctx.font = "11px sans-serif";
      ctx.fillStyle = "#d8e0e8";
      if (crowded && (u.status === "available" || u.status === "off_duty")) {
        if (post && u.post != null) ctx.fillText("№" + u.post, p.x + 10, p.y + 12);
        return;
      }
      ctx.fillText((u.post != null ? "№" + u.post + " " : "") + (u.callsign || u.id), p.x + 10, p.y + 12);
    });

    // The create form's location.
    if (m.crosshair) {
      var c = this.project(m.crosshair.lat, m.crosshair.lon);
      ctx.save();
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(c.x - 14, c.y); ctx.lineTo(c.x - 4, c.y);
      ctx.moveTo(c.x + 4, c.y); ctx.lineTo(c.x + 14, c.y);
      ctx.moveTo(c.x, c.y - 14); ctx.lineTo(c.x, c.y - 4);
      ctx.moveTo(c.x, c.y + 4); ctx.lineTo(c.x, c.y + 14);
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(c.x, c.y, 9, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.restore();
    }

    this._scaleBar(ctx, w, h);

    var ds = this.canvas.dataset;
    ds.lines = String(lines);
    ds.units = String(drawnUnits);
    ds.incidents = String(drawnInc);
    ds.streets = String(streets);
    ds.zones = String(zones.drawn);
    ds.districtLabels = String(zones.labels);
    ds.agencies = Object.keys(agencies).sort().join(",");
    ds.centerLat = this.view.lat.toFixed(6);
    ds.centerLon = this.view.lon.toFixed(6);
    ds.mpp = this.view.mpp.toFixed(3);
  };

  OCMap.prototype._grid = function (ctx, w, h) {
    // A graticule whose spacing follows the zoom, so an empty map still shows motion.
    var spanDeg = (this.view.mpp * Math.max(w, h)) / (DEG * R);
    var step = niceStep(spanDeg / 8);
    var tl = this.unproject(0, 0);
    var br = this.unproject(w, h);
    ctx.strokeStyle = "#1b2733";
    ctx.lineWidth = 1;
    ctx.beginPath();
    var lon;
    for (lon = Math.floor(tl.lon / step) * step; lon <= br.lon; lon += step) {
      var x = this.project(this.view.lat, lon).x;
      ctx.moveTo(x, 0); ctx.lineTo(x, h);
    }
    for (var lat = Math.floor(br.lat / step) * step; lat <= tl.lat; lat += step) {
      var y = this.project(lat, this.view.lon).y;
      ctx.moveTo(0, y); ctx.lineTo(w, y);
    }
    ctx.stroke();
  };

  /**
   * Zones: districts filled and labelled at their centre, beats (`kind: "beat"`)
   * dashed, labelled only when zoomed in. Returns {drawn, labels}.
   */
  OCMap.prototype._districts = function (ctx, fc) {
    var self = this;
    var feats = fc.type === "FeatureCollection" ? fc.features || [] : fc.type === "Feature" ? [fc] : [];
    var drawn = 0, labels = 0;
    var beatLabels = this.view.mpp < 12;
    ctx.save();
    ctx.lineWidth = 1.5;
    feats.forEach(function (f, i) {
      var g = f && f.geometry;
      if (!g) return;
      var beat = f.properties && f.properties.kind === "beat";
      var polys = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
      var sx = 0, sy = 0, n = 0;
      ctx.beginPath();
      polys.forEach(function (rings) {
        (rings || []).forEach(function (ring) {
          (ring || []).forEach(function (pt, j) {
            var p = self.project(pt[1], pt[0]);
            if (j === 0) ctx.moveTo(p.x, p.y); else ctx.lineTo(p.x, p.y);
            sx += p.x; sy += p.y; n++;
          });
          ctx.closePath();
        });
      });
      if (!n) return;
      drawn++;
      if (beat) {
        ctx.setLineDash([4, 4]);
        ctx.lineWidth = 1;
        ctx.strokeStyle = "#4d6880";
        ctx.stroke();
        ctx.setLineDash([]);
      } else {
        ctx.fillStyle = i % 2 ? "rgba(74,163,255,0.05)" : "rgba(120,200,160,0.05)";
        ctx.fill("evenodd");
        ctx.lineWidth = 2;
        ctx.strokeStyle = "#3d5a73";
        ctx.stroke();
      }
      var name = f.properties && (f.properties.name || f.properties.id);
      if (name && (!beat || beatLabels)) {
        ctx.font = beat ? "10px sans-serif" : "bold 13px sans-serif";
        ctx.fillStyle = beat ? "#56718a" : "#7d9bb4";
        ctx.textAlign = "center";
        ctx.fillText(String(name), sx / n, sy / n + (beat ? 14 : 0));
        ctx.textAlign = "start";
        if (!beat) labels++;
      }
    });
    ctx.restore();
    return { drawn: drawn, labels: labels };
  };

  /**
   * The streets layer: GeoJSON LineStrings styled by `kind` (river wide and
   * blue, avenues and bridges brighter), names along the main roads when zoomed
   * in. Returns how many features were drawn.
   */
  OCMap.prototype._streets = function (ctx, fc, w, h) {
    var self = this;
    var mpp = this.view.mpp;
    var feats = fc.features || [];
    var drawn = 0;
    var named = [];
    ctx.save();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    feats.forEach(function (f) {
      var g = f && f.geometry;
      if (!g) return;
      var lines = g.type === "LineString" ? [g.coordinates] : g.type === "MultiLineString" ? g.coordinates : [];
      var kind = (f.properties && f.properties.kind) || "street";
      var style = STREET_STYLES[kind] || STREET_STYLES.street;
      ctx.beginPath();
      var mid = null;
      lines.forEach(function (line) {
        (line || []).forEach(function (pt, j) {
          var p = self.project(pt[1], pt[0]);
          if (j === 0) ctx.moveTo(p.x, p.y); else ctx.lineTo(p.x, p.y);
          if (!mid && j === Math.floor(line.length / 2)) mid = p;
        });
      });
      // Width in metres, at least a hairline when zoomed out.
      ctx.lineWidth = Math.max(style.minPx, style.widthM / mpp);
      ctx.strokeStyle = style.color;
      ctx.stroke();
      drawn++;
      var name = f.properties && f.properties.name;
      if (name && mid && (kind === "river" || kind === "avenue" ? mpp < 12 : mpp < 3)) named.push([name, mid]);
    });
    ctx.font = "10px sans-serif";
    ctx.fillStyle = "#6f8598";
    named.forEach(function (x) {
      if (x[1].x > 0 && x[1].y > 0 && x[1].x < w && x[1].y < h) ctx.fillText(String(x[0]), x[1].x + 3, x[1].y - 3);
    });
    ctx.restore();
    return drawn;
  };

  OCMap.prototype._scaleBar = function (ctx, w, h) {
    var target = 120 * this.view.mpp; // metres in ~120 px
    var metres = niceStep(target);
    var px = metres / this.view.mpp;
    var x = 14;
    var y = h - 18;
    ctx.fillStyle = "rgba(15,23,32,0.75)";
    ctx.fillRect(x - 6, y - 18, px + 70, 28);
    ctx.strokeStyle = "#e8eef3";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(x, y - 5); ctx.lineTo(x, y); ctx.lineTo(x + px, y); ctx.lineTo(x + px, y - 5);
    ctx.stroke();
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#e8eef3";
    var label = metres >= 1000 ? metres / 1000 + " km" : metres + " m";
    ctx.fillText(label, x + px + 6, y);
    this.canvas.dataset.scale = label;
  };

  var GUARD_OUTLINE = "#e8c547";
  var STREET_STYLES = {
    river: { color: "#1f4f7a", widthM: 60, minPx: 3 },
    avenue: { color: "#3a4c5e", widthM: 24, minPx: 1.5 },
    bridge: { color: "#8a9aa8", widthM: 24, minPx: 2 },
    embankment: { color: "#35485a", widthM: 16, minPx: 1 },
    street: { color: "#2c3b4a", widthM: 14, minPx: 1 },
    lane: { color: "#27343f", widthM: 10, minPx: 0.75 },
  };

  /** The unit marker's path: a circle for the police, a square for the National Guard, a triangle for any other agency. */
  function unitShape(ctx, p, agency) {
    ctx.beginPath();
    if (!agency || agency === "police") {
      ctx.arc(p.x, p.y, 6, 0, 2 * Math.PI);
    } else if (agency === "national_guard") {
      ctx.rect(p.x - 5.5, p.y - 5.5, 11, 11);
    } else {
      ctx.moveTo(p.x, p.y - 7);
      ctx.lineTo(p.x + 7, p.y + 5);
      ctx.lineTo(p.x - 7, p.y + 5);
      ctx.closePath();
    }
  }

  function niceStep(x) {
    if (!(x > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(x)));
    var f = x / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  }

  function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }
  function wrapLon(lon) { return ((((lon + 180) % 360) + 360) % 360) - 180; }

  OCMap.UNIT_COLORS = UNIT_COLORS;
  OCMap.PRIORITY_COLORS = PRIORITY_COLORS;
  root.OCMap = OCMap;
})(window);

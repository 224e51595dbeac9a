/* opcenter console: the response-time report page (supervisor).
 *
 * Owns: the period form, fetching GET /v1/reports/response-times (JSON for the
 * page, CSV for the download) with the console's token, and drawing the figures:
 * a table, the response-time distribution per priority with its target, the share
 * within target per district, and incidents by hour of day, as SVG built here.
 *
 * Must never: compute figures of its own (the server's report is the record), or
 * write HTML as text or inline handlers/styles (the page's CSP forbids them).
 */
(function () {
  "use strict";
  var el = OCDom.el;
  var SVG = "http://www.w3.org/2000/svg";
  var PRIORITY_COLORS = ["#ff3b3b", "#ff8a3b", "#f2d13b", "#7fd1ff", "#b8c2cc"];
  var INTERVAL_NAMES = {
    intake: "received → created",
    processing: "created → dispatched",
    acknowledge: "dispatched → acknowledged",
    travel: "acknowledged → on scene",
    response: "created → on scene",
    on_scene: "on scene → closed",
  };

  function $(id) { return document.getElementById(id); }

  function svg(tag, attrs, children) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  function token() {
    var params = new URLSearchParams(location.search);
    var fromUrl = (params.get("token") || "").trim();
    if (fromUrl) {
      // Out of the address bar (history, bookmarks), into this tab's storage.
      sessionStorage.setItem("opcenter.token", fromUrl);
      params.delete("token");
      var q = params.toString();
      history.replaceState(null, "", location.pathname + (q ? "?" + q : ""));
    }
    return sessionStorage.getItem("opcenter.token") || "";
  }

  /** A Date as the value of a datetime-local input (browser's local time). */
  function toLocalInput(d) {
    var p = function (n) { return String(n).padStart(2, "0"); };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + "T" +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function fmtMs(ms) {
    if (ms == null) return "–";
    return OCDom.fmtDuration(ms);
  }

  function fmtShare(w) {
    return w == null ? "–" : (w * 100).toFixed(1) + " %";
  }

  function query(group, format) {
    var from = new Date($("from").value).getTime();
    var to = new Date($("to").value).getTime();
    var q = "from=" + from + "&to=" + to + "&group=" + group;
    if (format) q += "&format=" + format;
    return "/v1/reports/response-times?" + q;
  }

  function fetchReport(path) {
    return fetch(path, { headers: { Authorization: "Bearer " + token() } }).then(function (r) {
      return r.text().then(function (body) {
        if (!r.ok) {
          var msg = body;
          try { msg = JSON.parse(body).error.message; } catch (e) { /* not JSON: the text */ }
          throw new Error(r.status + ": " + msg);
        }
        return body;
      });
    });
  }

  function renderSummary(r) {
    $("s-incidents").textContent = String(r.incidents);
    $("s-p50").textContent = fmtMs(r.response.p50_ms);
    $("s-p90").textContent = fmtMs(r.response.p90_ms);
    $("s-within").textContent = fmtShare(r.response.within_target);
    $("s-p50").dataset.ms = r.response.p50_ms == null ? "" : String(r.response.p50_ms);
    $("s-p90").dataset.ms = r.response.p90_ms == null ? "" : String(r.response.p90_ms);
    var off = r.utc_offset_min;
    $("offset").textContent = "UTC" + (off < 0 ? "−" : "+") + String(Math.floor(Math.abs(off) / 60)).padStart(2, "0") +
      ":" + String(Math.abs(off) % 60).padStart(2, "0");
    var warn = [];
    if (r.partial_incidents > 0) {
      warn.push(r.partial_incidents + " incidents left out: the journal no longer holds their creation.");
    }
    if (r.journal_from_ms != null && r.journal_from_ms > r.from_ms) {
      warn.push("The journal reaches back only to " + new Date(r.journal_from_ms).toLocaleString() +
        ": the period before it is not covered.");
    }
    $("warning").textContent = warn.join(" ");
    $("warning").hidden = warn.length === 0;
  }

  function renderTable(r) {
    $("group-head").textContent = r.group;
    var rows = [];
    r.groups.forEach(function (g) {
      g.intervals.forEach(function (s, i) {
        rows.push(el("tr", { "data-testid": "report-row", "data-key": g.key, "data-interval": s.interval, class: i === 0 ? "first" : "" }, [
          el("td", { text: i === 0 ? g.key : "" }),
          el("td", { text: i === 0 ? String(g.incidents) : "" }),
          el("td", { text: INTERVAL_NAMES[s.interval] || s.interval, title: s.interval }),
          el("td", { text: String(s.count) }),
          el("td", { text: fmtMs(s.p50_ms), "data-ms": s.p50_ms == null ? "" : String(s.p50_ms) }),
          el("td", { text: fmtMs(s.p90_ms), "data-ms": s.p90_ms == null ? "" : String(s.p90_ms) }),
          el("td", { text: s.within_target == null ? "" : fmtShare(s.within_target) }),
        ]));
      });
    });
    if (!rows.length) rows.push(el("tr", {}, [el("td", { colspan: "7", class: "empty", text: "No incidents created in this period." })]));
    $("rows").replaceChildren.apply($("rows"), rows);
  }

  /** One small histogram per priority: one-minute buckets, the target dashed. */
  function renderDistribution(r) {
    var box = $("chart-distribution");
    var parts = r.response_histogram.map(function (h) {
      var W = 360, H = 90, left = 34, bottom = 16;
      var n = h.counts.length;
      var bw = (W - left) / n;
      var max = Math.max.apply(null, h.counts.concat([1]));
      var total = h.counts.reduce(function (a, b) { return a + b; }, 0);
      var bars = h.counts.map(function (c, i) {
        var bh = (H - bottom - 4) * c / max;
        return svg("rect", {
          x: (left + i * bw + 0.5).toFixed(1), y: (H - bottom - bh).toFixed(1),
          width: Math.max(1, bw - 1).toFixed(1), height: bh.toFixed(1),
          fill: PRIORITY_COLORS[h.priority - 1] || "#888", "data-count": String(c),
        }, [svg("title", {}, [(i === n - 1 ? "≥ " + i : i + "–" + (i + 1)) + " min: " + c])]);
      });
      var tx = left + Math.min(n, h.target_s / h.bucket_s) * bw;
      var ticks = [0, 5, 10, 15, 20, 25, 30].map(function (m) {
        return svg("text", { x: (left + m * bw).toFixed(1), y: H - 3, class: "tick" }, [m === 30 ? "30+" : String(m)]);
      });
      return svg("svg", {
        viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "hist",
        "data-testid": "dist-p" + h.priority, "data-total": String(total), "data-target-s": String(h.target_s),
      }, [
        svg("text", { x: 0, y: 14, class: "label" }, ["P" + h.priority]),
        svg("text", { x: 0, y: 28, class: "tick" }, ["n=" + total]),
      ].concat(bars, ticks, [
        svg("line", {
          x1: tx.toFixed(1), x2: tx.toFixed(1), y1: 2, y2: H - bottom,
          class: "target", "data-testid": "target-p" + h.priority,
        }, [svg("title", {}, ["target " + Math.round(h.target_s / 60 * 10) / 10 + " min"])]),
      ]));
    });
    if (!parts.length) parts.push(el("p", { class: "empty", text: "No arrivals in this period." }));
    box.replaceChildren.apply(box, parts);
  }

  /** Horizontal bars: the share of responses within target, per district. */
  function renderDistricts(d) {
    var box = $("chart-districts");
    var rows = d.groups.filter(function (g) { return g.intervals[4].count > 0; });
    var W = 360, row = 22, left = 90;
    var H = Math.max(1, rows.length) * row + 4;
    var parts = rows.map(function (g, i) {
      var s = g.intervals[4];
      var w = (W - left - 50) * s.within_target;
      return svg("g", { "data-testid": "district-bar", "data-key": g.key, "data-share": String(s.within_target) }, [
        svg("text", { x: 0, y: i * row + 15, class: "label" }, [g.key]),
        svg("rect", { x: left, y: i * row + 4, width: W - left - 50, height: row - 8, class: "track" }),
        svg("rect", { x: left, y: i * row + 4, width: w.toFixed(1), height: row - 8, class: "share" }),
        svg("text", { x: W - 45, y: i * row + 15, class: "tick" }, [fmtShare(s.within_target) + " of " + s.count]),
      ]);
    });
    box.replaceChildren(rows.length
      ? svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H }, parts)
      : el("p", { class: "empty", text: "No arrivals in this period." }));
  }

  /** 24 columns: incidents created per local hour of day. */
  function renderHours(r) {
    var W = 360, H = 110, bottom = 16, bw = W / 24;
    var max = Math.max.apply(null, r.by_hour.concat([1]));
    var parts = r.by_hour.map(function (c, h) {
      var bh = (H - bottom - 14) * c / max;
      return svg("rect", {
        x: (h * bw + 1).toFixed(1), y: (H - bottom - bh).toFixed(1), width: (bw - 2).toFixed(1), height: bh.toFixed(1),
        class: "hour", "data-testid": "hour-bar", "data-hour": String(h), "data-count": String(c),
      }, [svg("title", {}, [String(h).padStart(2, "0") + ":00 " + c])]);
    });
    [0, 6, 12, 18].forEach(function (h) {
      parts.push(svg("text", { x: (h * bw + 1).toFixed(1), y: H - 3, class: "tick" }, [String(h).padStart(2, "0")]));
    });
    parts.push(svg("text", { x: 0, y: 10, class: "tick" }, ["max " + max]));
    $("chart-hours").replaceChildren(svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H }, parts));
  }

  function run() {
    var group = $("group").value;
    $("state").textContent = "loading…";
    $("state").dataset.state = "loading";
    Promise.all([fetchReport(query(group)), fetchReport(query("district"))]).then(function (bodies) {
      var r = JSON.parse(bodies[0]).report;
      var d = JSON.parse(bodies[1]).report;
      renderSummary(r);
      renderTable(r);
      renderDistribution(r);
      renderDistricts(d);
      renderHours(r);
      $("state").textContent = "updated " + new Date().toLocaleTimeString();
      $("state").dataset.state = "ready";
    }).catch(function (e) {
      $("state").textContent = String(e.message || e);
      $("state").dataset.state = "error";
    });
  }

  function downloadCsv(ev) {
    ev.preventDefault();
    fetchReport(query($("group").value, "csv")).then(function (text) {
      var a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: "response-times.csv" });
      document.body.appendChild(a);
      a.click();
      a.remove();
    }).catch(function (e) { $("state").textContent = String(e.message || e); });
  }

  var params = new URLSearchParams(location.search);
  var to = params.get("to") ? new Date(Number(params.get("to"))) : new Date(Math.ceil(Date.now() / 60000) * 60000);
  var from = params.get("from") ? new Date(Number(params.get("from"))) : new Date(to.getTime() - 24 * 3600 * 1000);
  $("from").value = toLocalInput(from);
  $("to").value = toLocalInput(to);
  $("period").addEventListener("submit", function (ev) { ev.preventDefault(); run(); });
  $("group").addEventListener("change", run);
  $("csv").addEventListener("click", downloadCsv);
  if (!token()) {
    $("state").textContent = "no token: sign in on the console first";
    $("state").dataset.state = "error";
  } else {
    run();
  }
})();

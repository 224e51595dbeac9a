/* opcenter console: DOM helpers and formatting shared by the views.
 *
 * Owns: `el` (build an element from attributes and children, event handlers
 * attached with addEventListener so the page needs no inline handlers),
 * `reconcile` (keyed list update that keeps unchanged rows), and the formatting
 * of ages, durations and distances. Holds no state of its own.
 *
 * Must never: write HTML as text (no innerHTML: content is always text nodes), or
 * set inline `on…` attributes, which the page's Content-Security-Policy forbids.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.OCDom = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      // null/undefined/false mean "no such attribute" (setAttribute would write "null",
      // and a disabled="null" button is still disabled).
      if (attrs[k] == null || attrs[k] === false) return;
      if (k === "text") e.textContent = attrs[k];
      else if (k === "class") e.className = attrs[k];
      else if (k.indexOf("data-") === 0) e.setAttribute(k, attrs[k]);
      else if (k.indexOf("on") === 0) e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      if (c == null) return;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  /**
   * Brings `box`'s children in line with `items` (by key), rebuilding a row only
   * when its signature changed, so a row under the pointer survives unrelated
   * updates (a click is a mousedown and a mouseup on the same element).
   */
  function reconcile(box, items, keyOf, sigOf, build, emptyText, update) {
    var old = new Map();
    Array.prototype.forEach.call(box.children, function (c) { if (c.dataset.key != null) old.set(c.dataset.key, c); });
    var rows = items.map(function (it) {
      var key = String(keyOf(it));
      var sig = sigOf(it);
      var row = old.get(key);
      if (!row || row.dataset.sig !== sig) {
        row = build(it);
        row.dataset.key = key;
        row.dataset.sig = sig;
      }
      if (update) update(row, it);
      return row;
    });
    var same = rows.length === box.children.length && rows.every(function (r, i) { return box.children[i] === r; });
    if (!same) box.replaceChildren.apply(box, rows);
    if (!items.length) box.replaceChildren(el("p", { class: "empty", text: emptyText }));
  }

  function fmtAge(ms) {
    ms = Math.max(0, ms);
    var s = Math.floor(ms / 1000);
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var ss = s % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(ss).padStart(2, "0");
  }

  function fmtDuration(ms) {
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return fmtAge(ms);
  }

  function fmtDistance(m) {
    if (typeof m !== "number") return "";
    return m >= 1000 ? (m / 1000).toFixed(2) + " km" : Math.round(m) + " m";
  }

  return { el: el, reconcile: reconcile, fmtAge: fmtAge, fmtDuration: fmtDuration, fmtDistance: fmtDistance };
});

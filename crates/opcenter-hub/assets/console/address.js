/* opcenter console: address autocomplete from the server's gazetteer.
 *
 * Owns: the suggestion list under an address input. While the dispatcher
 * types, asks `GET /v1/geocode?q=…&limit=…` (debounced, the newest answer
 * only), shows the ranked matches, and on a pick (click, or arrows + Enter)
 * writes the match's label into the input and hands the match to `onPick`
 * (the create form sets its location from it). Without a gazetteer on the
 * server (404) it stays silent: the field is then plain text.
 *
 * Must never: write HTML as text or set inline styles by attribute (the page's
 * Content-Security-Policy forbids both; styles go through the CSSOM), or send
 * the token anywhere but this server.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.OCAddress = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var DEBOUNCE_MS = 150;
  var LIMIT = 8;

  /**
   * attach(input, {token: () => string|null, onPick: (match) => void})
   * returns {close()}: hides the list.
   */
  function attach(input, opts) {
    var list = document.createElement("ul");
    list.setAttribute("data-testid", "address-suggestions");
    list.setAttribute("role", "listbox");
    var s = list.style;
    s.position = "absolute"; s.zIndex = "1000"; s.margin = "0"; s.padding = "0";
    s.listStyle = "none"; s.background = "#fff"; s.color = "#111"; s.border = "1px solid #888";
    s.maxHeight = "16em"; s.overflowY = "auto"; s.display = "none"; s.font = "inherit";
    document.body.appendChild(list);

    var matches = [];
    var active = -1;
    var timer = null;
    var asked = 0; // the newest request's number: older answers are dropped

    function place() {
      var r = input.getBoundingClientRect();
      s.left = (r.left + window.scrollX) + "px";
      s.top = (r.bottom + window.scrollY) + "px";
      s.minWidth = r.width + "px";
    }

    function close() {
      s.display = "none";
      matches = [];
      active = -1;
    }

    function render() {
      while (list.firstChild) list.removeChild(list.firstChild);
      if (!matches.length) { close(); return; }
      matches.forEach(function (m, i) {
        var li = document.createElement("li");
        li.setAttribute("data-testid", "address-suggestion");
        li.setAttribute("role", "option");
        li.textContent = m.label;
        li.style.padding = "2px 6px";
        li.style.cursor = "pointer";
        if (i === active) { li.style.background = "#cde"; li.setAttribute("aria-selected", "true"); }
        // mousedown, not click: a click would blur the input first and close the list.
        li.addEventListener("mousedown", function (e) { e.preventDefault(); pick(i); });
        list.appendChild(li);
      });
      place();
      s.display = "block";
    }

    function pick(i) {
      var m = matches[i];
      if (!m) return;
      // A question still on its way (typed just before the pick) must not
      // reopen the list over the picked address.
      clearTimeout(timer);
      asked++;
      input.value = m.label;
      close();
      if (opts.onPick) opts.onPick(m);
    }

    function ask() {
      var q = input.value.trim();
      var token = opts.token && opts.token();
      if (!q || !token) { close(); return; }
      var n = ++asked;
      fetch("/v1/geocode?q=" + encodeURIComponent(q) + "&limit=" + LIMIT, {
        headers: { Authorization: "Bearer " + token },
      }).then(function (r) {
        return r.ok ? r.json() : { matches: [] };
      }).then(function (body) {
        if (n !== asked) return;
        matches = body.matches || [];
        active = matches.length ? 0 : -1;
        render();
      }, function () {
        if (n === asked) close();
      });
    }

    input.setAttribute("autocomplete", "off");
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(ask, DEBOUNCE_MS);
    });
    input.addEventListener("keydown", function (e) {
      if (!matches.length) return;
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        var d = e.key === "ArrowDown" ? 1 : -1;
        active = (active + d + matches.length) % matches.length;
        render();
      } else if (e.key === "Enter") {
        // Enter picks a suggestion instead of submitting the form.
        e.preventDefault();
        pick(active < 0 ? 0 : active);
      } else if (e.key === "Escape") {
        close();
      }
    });
    input.addEventListener("blur", function () { setTimeout(close, 0); });
    return { close: close };
  }

  return { attach: attach };
});

/* opcenter console: the connection to the hub (PROTOCOL.md sections 3 and 4).
 *
 * Owns: one WebSocket session (hello, subscribe, resume with `since`, reconnect
 * with backoff, keepalive pings), commands and their replies, and the retry of
 * commands that carry an idempotency key. No DOM: the URL, the socket class and
 * every callback (`onError` included) are injected, so the same file runs in the
 * page and under `node --test` against the real server.
 *
 * Must never: resend a command that is not idempotent after a drop (only those
 * sent with `retry`, i.e. `incident.create` with its `key`, are), or hand an event
 * to `onEvent` before the subscribe reply it belongs after.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.OCConn = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var PROTOCOL = 1;
  var TOPICS = ["incidents", "units", "positions"];
  var PING_EVERY_MS = 15000;
  var PING_TIMEOUT_MS = 10000;
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 10000;

  /**
   * One WebSocket session with the hub; reconnects with backoff until stopped.
   * `opts.url` is the WebSocket URL (required); `opts.WebSocket` the socket class
   * (the global one when absent, so node can pass the `ws` package's).
   */
  function Conn(token, opts) {
    this.token = token;
    this.opts = opts || {};
    this.Socket = this.opts.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, cmd, retry}
    this.backoff = BACKOFF_MIN_MS;
    this.stopped = false;
    this.state = "offline";
    this.subscribed = false;
    this.early = []; // events that arrived before the subscribe reply
    this.timer = null;
    this.pingTimer = null;
    this.pingDeadline = null;
    this.everLive = false;
  }

  /** Reports an error nobody waits for (a failed subscribe, an unsolicited error frame). */
  Conn.prototype.report = function (err) {
    if (this.opts.onError) this.opts.onError(err);
  };

  Conn.prototype.setState = function (s) {
    this.state = s;
    if (this.opts.onState) this.opts.onState(s);
  };

  Conn.prototype.start = function () {
    this.stopped = false;
    this.open();
  };

  Conn.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pingTimer);
    if (this.ws) try { this.ws.close(1000, "bye"); } catch (e) { /* already closed */ }
    this.ws = null;
    this.failPending("signed out");
    this.setState("offline");
  };

  Conn.prototype.open = function () {
    var self = this;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    var ws;
    try {
      ws = new this.Socket(this.opts.url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.subscribed = false;
    this.early = [];
    ws.onopen = function () {
      if (self.ws !== ws) return;
      self.send({ type: "hello", token: self.token, protocol: PROTOCOL }).then(function (ok) {
        self.onHello(ok);
      }, function (err) {
        if (err && err.code === "unauthorized") self.fatal(err);
      });
    };
    ws.onmessage = function (e) {
      if (self.ws !== ws) return;
      var msg;
      try { msg = JSON.parse(e.data); } catch (err) { return; }
      self.onMessage(msg);
    };
    ws.onclose = function (e) {
      if (self.ws !== ws) return;
      self.ws = null;
      clearInterval(self.pingTimer);
      self.failPending("connection lost");
      if (self.stopped) return;
      if (e.code === 4001) {
        self.fatal({ code: "unauthorized", message: e.reason || "the server refused this token" });
        return;
      }
      self.scheduleReconnect();
    };
    ws.onerror = function () { /* onclose follows */ };
  };

  Conn.prototype.fatal = function (err) {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pingTimer);
    if (this.ws) try { this.ws.close(); } catch (e) { /* ignore */ }
    this.ws = null;
    this.setState("offline");
    if (this.opts.onFatal) this.opts.onFatal(err);
  };

  Conn.prototype.scheduleReconnect = function () {
    var self = this;
    if (this.stopped) return;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    var delay = this.backoff * (0.75 + Math.random() * 0.5);
    this.backoff = Math.min(BACKOFF_MAX_MS, this.backoff * 2);
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self.open(); }, delay);
  };

  Conn.prototype.onHello = function (ok) {
    var self = this;
    if (this.opts.onHello && this.opts.onHello(ok) === false) return;
    this.subscribeNow();
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(function () { self.keepalive(); }, PING_EVERY_MS);
  };

  Conn.prototype.subscribeNow = function () {
    var self = this;
    var cmd = { type: "subscribe", topics: this.opts.topics || TOPICS };
    var since = this.opts.since ? this.opts.since() : null;
    if (since) cmd.since = since;
    this.send(cmd).then(function (ok) {
      self.subscribed = true;
      self.backoff = BACKOFF_MIN_MS;
      self.everLive = true;
      if (self.opts.onSubscribed) self.opts.onSubscribed(ok);
      var early = self.early;
      self.early = [];
      early.forEach(function (m) { self.opts.onEvent && self.opts.onEvent(m); });
      self.setState("live");
      self.retryCreates();
    }, function (err) {
      self.report(err);
      if (self.ws) self.ws.close(4000, "subscribe failed");
    });
  };

  Conn.prototype.keepalive = function () {
    var self = this;
    var ws = this.ws;
    if (!ws || ws.readyState !== 1) return;
    var timer = setTimeout(function () {
      // No answer: the link is dead even if the socket has not noticed yet.
      if (self.ws === ws) try { ws.close(4000, "ping timeout"); } catch (e) { /* ignore */ }
    }, PING_TIMEOUT_MS);
    this.send({ type: "ping" }).then(function () { clearTimeout(timer); }, function () { clearTimeout(timer); });
  };

  Conn.prototype.onMessage = function (msg) {
    switch (msg.type) {
      case "ok":
      case "error": {
        var p = msg.id != null ? this.pending.get(msg.id) : null;
        if (p) {
          this.pending.delete(msg.id);
          if (msg.type === "ok") p.resolve(msg);
          else p.reject(msg);
        } else if (msg.type === "error") {
          this.report(msg);
        }
        break;
      }
      case "event":
        if (!this.subscribed) this.early.push(msg);
        else if (this.opts.onEvent) this.opts.onEvent(msg);
        break;
      case "positions":
        if (this.opts.onPositions) this.opts.onPositions(msg);
        break;
      default:
        // Unknown server frames are ignored (forward compatibility).
        break;
    }
  };

  /** Sends a command with a fresh id; resolves with the ok reply, rejects with the error. */
  Conn.prototype.send = function (cmd, retry) {
    var self = this;
    return new Promise(function (resolve, reject) {
      var ws = self.ws;
      if (!ws || ws.readyState !== 1) {
        if (retry) {
          self.pending.set("r" + self.nextId++, { resolve: resolve, reject: reject, cmd: cmd, retry: true, queued: true });
          return;
        }
        reject({ code: "offline", message: "not connected" });
        return;
      }
      var id = self.nextId++;
      var frame = Object.assign({}, cmd, { id: id });
      self.pending.set(id, { resolve: resolve, reject: reject, cmd: cmd, retry: !!retry });
      ws.send(JSON.stringify(frame));
    });
  };

  Conn.prototype.failPending = function (why) {
    var self = this;
    var keep = new Map();
    this.pending.forEach(function (p, id) {
      if (p.retry && !self.stopped) keep.set("r" + self.nextId++, Object.assign({}, p, { queued: true }));
      else p.reject({ code: "offline", message: "command not confirmed: " + why });
    });
    this.pending = keep;
  };

  /** Re-sends idempotent commands (creates with a `key`) that a drop left unanswered. */
  Conn.prototype.retryCreates = function () {
    var self = this;
    var queued = [];
    this.pending.forEach(function (p, id) { if (p.queued) queued.push([id, p]); });
    queued.forEach(function (e) {
      self.pending.delete(e[0]);
      self.send(e[1].cmd, true).then(e[1].resolve, e[1].reject);
    });
  };

  return { Conn: Conn, PROTOCOL: PROTOCOL, TOPICS: TOPICS };
});

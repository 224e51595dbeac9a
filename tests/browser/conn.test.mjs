// Tests of the console's connection (assets/console/conn.js) under node, against the
// real opcenter binary: resume with `since` after a drop, no event twice across the
// resume, and the retry of `incident.create` by its key when the reply was lost.
// The socket class is injected, as the page injects the browser's: here the `ws`
// package's, wrapped to hold a reconnect back or to lose one reply.
//
// Run: cargo build && (cd tests/browser && npm ci) && node --test tests/browser/
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { startRealServer } from './hub.mjs';

const require = createRequire(import.meta.url);
const { Conn } = require('../../crates/opcenter-hub/assets/console/conn.js');
const { Store } = require('../../crates/opcenter-hub/assets/console/store.js');

const OUT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'out');
const AT = { lat: 51.2300, lon: 51.3700 };

let server;
const clients = [];

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  server = await startRealServer(OUT, 'conn-server.log');
});

after(async () => {
  for (const c of clients) c.conn.stop();
  await server?.stop();
});

async function until(fn, what, timeoutMs = 15000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A `ws` socket behind the browser WebSocket interface Conn uses, recording what it
 * sends. `ctl.hold` sends connection attempts to a closed port (the hub is
 * unreachable); `ctl.lose(msg)` returning true drops that reply and the link with it,
 * as a network failure after the server acted would.
 */
function socketClass(ctl) {
  return class TestSocket {
    constructor(url) {
      this.ws = new WebSocket(ctl.hold ? 'ws://127.0.0.1:1/v1/ws' : url);
      this.ws.on('error', () => { /* the close event follows */ });
      this.ws.onopen = (e) => this.onopen && this.onopen(e);
      this.ws.onclose = (e) => this.onclose && this.onclose(e);
      this.ws.onmessage = (e) => {
        if (ctl.lose && ctl.lose(JSON.parse(e.data))) { this.ws.close(4000, 'reply lost'); return; }
        if (this.onmessage) this.onmessage(e);
      };
    }
    get readyState() { return this.ws.readyState; }
    send(data) { ctl.sent.push(JSON.parse(data)); this.ws.send(data); }
    close(code, reason) { this.ws.close(code, reason); }
  };
}

/** A dispatcher session as the page runs it: a Conn feeding a Store. */
async function dispatcher(sub) {
  const ctl = { hold: false, lose: null, sent: [] };
  const c = { ctl, store: new Store(), states: [], subscribes: [], events: [], errors: [] };
  c.conn = new Conn(server.token('dispatcher', sub), {
    url: server.url.replace(/^http/, 'ws') + '/v1/ws',
    WebSocket: socketClass(ctl),
    onError: (e) => c.errors.push(e),
    onState: (s) => c.states.push(s),
    since: () => c.store.cursor(),
    onSubscribed: (ok) => { c.subscribes.push(ok); c.store.applySubscribed(ok); },
    onEvent: (ev) => { c.events.push({ seq: ev.seq, change: ev.change, id: ev.incident && ev.incident.id }); c.store.applyEvent(ev); },
    onFatal: (e) => c.errors.push(e),
  });
  clients.push(c);
  c.conn.start();
  await until(() => c.conn.state === 'live', `${sub} live`);
  return c;
}

const create = (c, extra) => c.conn.send({
  type: 'incident.create', category: 'theft', priority: 3, location: AT, dispatch: 'manual', ...extra,
}, !!extra.key);

/** Drops the link and keeps the hub unreachable until `release()`. */
async function dropAndHold(c) {
  c.ctl.hold = true;
  c.conn.ws.close(4000, 'dropped by test');
  await until(() => c.conn.state !== 'live', 'the drop noticed');
  return () => { c.ctl.hold = false; };
}

/** The frames a client sent for a command with this key. */
const framesWithKey = (c, key) => c.ctl.sent.filter((f) => f.key === key);

test('conn: after a drop it resumes with `since` and gets what it missed, each event once', { timeout: 30000 }, async () => {
  const a = await dispatcher('conn-a');
  const b = await dispatcher('conn-b');
  const first = await create(b, { description: 'before the drop' });
  const id1 = first.incident.id;
  await until(() => a.store.incident(id1), 'A sees the first incident');

  const release = await dropAndHold(a);
  const cursor = a.store.cursor();
  const second = await create(b, { description: 'made while A was away' });
  await b.conn.send({ type: 'incident.note', incident_id: id1, text: 'written while A was away' });
  assert.equal(a.store.incident(second.incident.id), null, 'A cannot have seen it yet');
  assert.ok(!a.conn.subscribed || a.conn.state !== 'live', 'A is still away');
  release();

  await until(() => a.conn.state === 'live' && a.subscribes.length === 2, 'A live again');
  const subscribeFrames = a.ctl.sent.filter((f) => f.type === 'subscribe');
  assert.equal(subscribeFrames[0].since, undefined, 'the first subscribe asks for a snapshot');
  assert.deepEqual(subscribeFrames.at(-1).since, cursor, 'the resume asks from the last event applied');
  assert.equal(a.subscribes[1].recovered, true, 'the hub replayed instead of sending a snapshot');
  await until(() => a.store.incident(second.incident.id), 'the incident made during the gap');
  await until(() => (a.store.incident(id1).notes || []).some((n) => n.text === 'written while A was away'), 'the note made during the gap');

  // Every event reached the page once and in order: nothing at or below the cursor
  // came back, and what happened in the gap came exactly once.
  const seqs = a.events.map((e) => e.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `events in order, none twice: ${seqs}`);
  const created = a.events.filter((e) => e.change === 'created' && e.id === second.incident.id);
  assert.equal(created.length, 1, 'the gap\'s create arrived once');
  assert.ok(created[0].seq > cursor.seq, 'and after the cursor');
  assert.deepEqual(a.errors, []);
});

test('conn: a create whose reply was lost is sent again with its key and made once', { timeout: 30000 }, async () => {
  const a = await dispatcher('conn-retry');
  const key = `conn-test-${Date.now()}`;
  let lostId = null;
  a.ctl.lose = (msg) => {
    const frame = a.ctl.sent.find((f) => f.id === msg.id && f.key === key);
    if (msg.type !== 'ok' || !frame || lostId) return false;
    lostId = msg.incident.id;
    return true;
  };
  const ok = await create(a, { key, description: 'reply lost once' });
  assert.ok(lostId, 'the first reply was lost');
  const sent = framesWithKey(a, key);
  assert.equal(sent.length, 2, 'sent once, then once more after the reconnect');
  assert.notEqual(sent[0].id, sent[1].id, 'the retry is a new command id');
  assert.equal(ok.incident.id, lostId, 'the retry answers with the incident the first send made');

  // The hub holds exactly one incident under that key (a fresh snapshot says so).
  const check = await dispatcher('conn-check');
  const made = Array.from(check.store.incidents.values()).filter((i) => i.description === 'reply lost once');
  assert.deepEqual(made.map((i) => i.id), [lostId]);
  assert.deepEqual(a.errors, []);
});

test('conn: while offline a keyed create waits for the link, any other command fails at once', { timeout: 30000 }, async () => {
  const a = await dispatcher('conn-offline');
  const release = await dropAndHold(a);
  const key = `conn-offline-${Date.now()}`;
  const queued = create(a, { key, description: 'queued while offline' });
  await assert.rejects(
    a.conn.send({ type: 'incident.recommend', incident_id: 'none', count: 1 }),
    (e) => e.code === 'offline',
  );
  assert.equal(framesWithKey(a, key).length, 0, 'nothing sent while the hub is unreachable');
  release();
  const ok = await queued;
  assert.equal(ok.incident.description, 'queued while offline');
  assert.equal(framesWithKey(a, key).length, 1, 'sent once the link was back');
  assert.equal(a.ctl.sent.filter((f) => f.type === 'incident.recommend').length, 0, 'the unkeyed command was never sent');
  assert.deepEqual(a.errors, []);
});

// The response-time report page (issue 14 part B): a short scripted shift over the
// real server (create, auto-dispatch, decline and reassignment, ack, arrival, note,
// close, a refused command), then the supervisor's report page in headless Chromium
// must show the shift's figures: the ones computed here by hand from the event
// times the server reported, and every figure of the server's own JSON report.
//
// Run: (cd tests/browser && npm install) && cargo build && node --test tests/browser/
// Env: OPCENTER_BIN (default target/debug/opcenter), CHROMIUM (default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { launchChromium, startRealServer } from './hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(here, 'out');

let server;
let browser;
const sockets = [];

/** A JSON WebSocket session: request/reply by id, events collected in order. */
class Session {
  constructor(url, token) {
    this.url = url.replace(/^http/, 'ws') + '/v1/ws';
    this.token = token;
    this.nextId = 1;
    this.pending = new Map();
    this.events = [];
    this.waiters = [];
  }

  async open() {
    this.ws = new WebSocket(this.url);
    sockets.push(this.ws);
    await new Promise((res, rej) => { this.ws.once('open', res); this.ws.once('error', rej); });
    this.ws.on('message', (d) => this.onMessage(JSON.parse(String(d))));
    await this.ok({ type: 'hello', token: this.token, protocol: 1 });
    return this;
  }

  request(cmd) {
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ ...cmd, id }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${cmd.type}`)), 15000);
      this.pending.set(id, (m) => { clearTimeout(timer); resolve(m); });
    });
  }

  async ok(cmd) {
    const r = await this.request(cmd);
    assert.equal(r.type, 'ok', `${cmd.type}: ${JSON.stringify(r)}`);
    return r;
  }

  onMessage(m) {
    if ((m.type === 'ok' || m.type === 'error') && this.pending.has(m.id)) {
      const done = this.pending.get(m.id);
      this.pending.delete(m.id);
      done(m);
      return;
    }
    if (m.type === 'event') {
      this.events.push(m);
      this.waiters = this.waiters.filter((w) => !w(m));
    }
  }

  /** Resolves with the first event (already seen or coming) that `pred` accepts. */
  event(pred) {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no such event within 15 s')), 15000);
      this.waiters.push((m) => { if (!pred(m)) return false; clearTimeout(timer); resolve(m); return true; });
    });
  }
}

const T1 = { lat: 51.2300, lon: 51.3700 };
const T2 = { lat: 51.2600, lon: 51.4100 };

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  server = await startRealServer(OUT, 'report-server.log');
  browser = await launchChromium();
});

after(async () => {
  for (const ws of sockets) { try { ws.close(); } catch { /* closed */ } }
  await browser?.close().catch(() => {});
  await server?.stop();
});

/** Nearest rank, as docs/records.md defines it. */
const nearestRank = (sorted, p) => sorted[Math.max(1, Math.ceil((p * sorted.length) / 100)) - 1];

test('report page: a scripted shift\'s figures, as the server computes them and by hand', async () => {
  const from = Math.floor(Date.now() / 1000) * 1000 - 60000;
  const watch = await new Session(server.url, server.token('supervisor', 'sup')).open();
  await watch.ok({ type: 'subscribe', topics: ['incidents'] });
  const desk = await new Session(server.url, server.token('dispatcher', 'd1')).open();
  const units = {};
  for (const [id, pos] of [['U-1', T1], ['U-2', T2]]) {
    const u = await new Session(server.url, server.token('unit', id, id)).open();
    await u.ok({ type: 'subscribe', topics: ['assignments'] });
    await u.ok({ type: 'unit.status', status: 'available' });
    await u.ok({ type: 'unit.position', lat: pos.lat, lon: pos.lon });
    units[id] = u;
  }

  // X (P1) next to U-1: ack, arrive, a note, closed by the desk.
  const x = (await desk.ok({ type: 'incident.create', category: 'assault', priority: 1,
    location: { lat: T1.lat + 0.0005, lon: T1.lon }, received_ms: Date.now() - 30000 })).incident;
  assert.deepEqual(x.units, ['U-1']);
  await units['U-1'].ok({ type: 'assignment.ack', incident_id: x.id });
  await units['U-1'].ok({ type: 'unit.status', status: 'on_scene' });
  await desk.ok({ type: 'incident.note', incident_id: x.id, text: 'suspect gone' });
  await desk.ok({ type: 'incident.close', incident_id: x.id, disposition: 'report_taken' });

  // Y (P3) next to U-2: U-2 declines, the engine reassigns to U-1, who acks and arrives.
  const y = (await desk.ok({ type: 'incident.create', category: 'theft', priority: 3,
    location: { lat: T2.lat + 0.0005, lon: T2.lon } })).incident;
  assert.deepEqual(y.units, ['U-2']);
  await units['U-2'].ok({ type: 'assignment.decline', incident_id: y.id });
  await watch.event((e) => e.incident?.id === y.id && e.change === 'dispatched' && e.incident.units[0] === 'U-1');
  await units['U-1'].ok({ type: 'assignment.ack', incident_id: y.id });
  await units['U-1'].ok({ type: 'unit.status', status: 'on_scene' });
  // Refused: U-2 closing an incident that is not its own.
  const refused = await units['U-2'].request({ type: 'incident.close', incident_id: y.id, disposition: 'x' });
  assert.equal(refused.code, 'forbidden');
  await watch.event((e) => e.incident?.id === y.id && e.change === 'on_scene');

  // By hand: response = created → first on_scene event, per incident.
  const response = {};
  for (const inc of [x, y]) {
    const onScene = await watch.event((e) => e.incident?.id === inc.id && e.change === 'on_scene');
    response[inc.id] = onScene.incident.updated_ms - inc.created_ms;
  }
  const all = Object.values(response).sort((a, b) => a - b);
  const to = Math.ceil((Date.now() + 60000) / 1000) * 1000;

  // The server's report, for the figures the page must show.
  const sup = server.token('supervisor', 'sup');
  const res = await fetch(`${server.url}/v1/reports/response-times?from=${from}&to=${to}&group=priority`,
    { headers: { Authorization: `Bearer ${sup}` } });
  assert.equal(res.status, 200);
  const report = (await res.json()).report;
  assert.equal(report.incidents, 2);
  assert.equal(report.response.p50_ms, nearestRank(all, 50));
  assert.equal(report.response.p90_ms, nearestRank(all, 90));

  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const nav = await page.goto(`${server.url}/console/report.html?token=${encodeURIComponent(sup)}&from=${from}&to=${to}`);
  assert.match(nav.headers()['content-security-policy'] || '', /default-src 'self'/);
  await page.waitForSelector('[data-testid=report-state][data-state=ready]', { timeout: 15000 });
  assert.ok(!page.url().includes('token='), 'the token left the address bar');

  // Summary: the hand-computed figures.
  assert.equal(await page.textContent('[data-testid=report-incidents]'), '2');
  assert.equal(await page.$eval('[data-testid=report-p50]', (e) => Number(e.dataset.ms)), nearestRank(all, 50));
  assert.equal(await page.$eval('[data-testid=report-p90]', (e) => Number(e.dataset.ms)), nearestRank(all, 90));
  assert.equal(await page.textContent('[data-testid=report-within]'), '100.0 %');
  assert.ok(await page.isHidden('[data-testid=report-warning]'), 'a journal with its whole history warns of nothing');

  // Table: one row per group and interval; each response row is that incident's own.
  const rows = await page.$$eval('[data-testid=report-row]', (rs) => rs.map((r) => ({
    key: r.dataset.key, interval: r.dataset.interval, p50: r.children[4].dataset.ms, count: r.children[3].textContent,
  })));
  assert.equal(rows.length, 2 * 6);
  const resp = (key) => rows.find((r) => r.key === key && r.interval === 'response');
  assert.equal(Number(resp('1').p50), response[x.id]);
  assert.equal(Number(resp('3').p50), response[y.id]);
  for (const g of report.groups) {
    for (const s of g.intervals) {
      const row = rows.find((r) => r.key === g.key && r.interval === s.interval);
      assert.equal(row.count, String(s.count), `${g.key} ${s.interval}`);
      assert.equal(row.p50, s.p50_ms == null ? '' : String(s.p50_ms), `${g.key} ${s.interval}`);
    }
  }

  // Charts: one histogram per priority with its target marked, one district bar, 24 hours.
  for (const [p, id] of [[1, x.id], [3, y.id]]) {
    const h = await page.$eval(`[data-testid=dist-p${p}]`, (e) => ({
      total: e.dataset.total, target: e.dataset.targetS,
      filled: [...e.querySelectorAll('rect')].findIndex((r) => r.dataset.count === '1'),
    }));
    assert.equal(h.total, '1');
    assert.equal(h.target, String(report.targets_s[p - 1]));
    assert.equal(h.filled, Math.min(30, Math.floor(response[id] / 60000)));
    assert.ok(await page.$(`[data-testid=target-p${p}]`), `P${p} target line`);
  }
  const districts = await page.$$eval('[data-testid=district-bar]', (bs) => bs.map((b) => [b.dataset.key, b.dataset.share]));
  assert.deepEqual(districts, [['unknown', '1']]);
  const hours = await page.$$eval('[data-testid=hour-bar]', (bs) => bs.map((b) => Number(b.dataset.count)));
  assert.equal(hours.length, 24);
  assert.equal(hours.reduce((a, b) => a + b, 0), 2);
  assert.deepEqual(hours, report.by_hour);
  await page.screenshot({ path: path.join(OUT, 'report-page.png'), fullPage: true });

  // Grouping by shift re-draws the table from the server.
  await page.selectOption('[data-testid=report-group]', 'shift');
  await page.waitForFunction(() => document.querySelector('[data-testid=report-row]')?.dataset.key.includes('-'));
  assert.deepEqual(errors, []);
  await page.close();

  // A dispatcher's token gets the server's refusal on the page.
  const p2 = await browser.newPage();
  await p2.goto(`${server.url}/console/report.html?token=${encodeURIComponent(server.token('dispatcher', 'd1'))}`);
  await p2.waitForSelector('[data-testid=report-state][data-state=error]', { timeout: 15000 });
  assert.match(await p2.textContent('[data-testid=report-state]'), /^403: /);
  await p2.close();
});

// End-to-end test of the operations console (issue 6 §6): the real server binary,
// two simulated patrol tablets over WebSocket, and headless Chromium driving the page
// as a dispatcher and as a supervisor.
//
// Run: (cd tests/browser && npm install) && cargo build && node --test tests/browser/
// Env: OPCENTER_BIN (default target/debug/opcenter), CHROMIUM (default /usr/bin/chromium).
// Screenshots go to tests/browser/out/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { chromium } from 'playwright-core';
import { startRealServer, waitFor } from './hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(here, 'out');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// Two patrol cars a couple of kilometres apart; the incident goes next to P-1.
const P1 = { lat: 51.2300, lon: 51.3700 };
const P2 = { lat: 51.2450, lon: 51.3950 };

let server; // {url, stop(), token(role, sub, unit?)}
let browser;
const tablets = [];
const pageErrors = [];

// ------------------------------------------------------------------ tablets

/** A patrol tablet: hello, available, one position fix, acks whatever it is sent. */
class Tablet {
  constructor(id, token, url) {
    this.id = id;
    this.token = token;
    this.url = url.replace(/^http/, 'ws') + '/v1/ws';
    this.nextId = 1;
    this.pending = new Map();
    this.assigned = [];
    this.errors = [];
  }

  async connect() {
    this.ws = new WebSocket(this.url);
    await new Promise((res, rej) => { this.ws.once('open', res); this.ws.once('error', rej); });
    this.ws.on('message', (data) => this.onMessage(JSON.parse(String(data))));
    const ok = await this.send({ type: 'hello', token: this.token, protocol: 1 });
    assert.equal(ok.role, 'unit');
    await this.send({ type: 'subscribe', topics: ['assignments'] });
  }

  send(cmd) {
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ ...cmd, id }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.id}: no reply to ${cmd.type}`)), 10000);
      this.pending.set(id, { resolve: (m) => { clearTimeout(timer); resolve(m); }, reject: (m) => { clearTimeout(timer); reject(m); } });
    });
  }

  onMessage(msg) {
    if ((msg.type === 'ok' || msg.type === 'error') && this.pending.has(msg.id)) {
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.type === 'ok') p.resolve(msg);
      else p.reject(new Error(`${this.id}: ${msg.code}: ${msg.message}`));
      return;
    }
    if (msg.type === 'error') this.errors.push(msg);
    if (msg.type === 'event' && msg.incident) {
      const inc = msg.incident;
      if (inc.status === 'dispatched' && (inc.units || []).includes(this.id) && !this.assigned.includes(inc.id)) {
        this.assigned.push(inc.id);
        this.send({ type: 'assignment.ack', incident_id: inc.id }).catch((e) => this.errors.push(e));
      }
    }
  }

  close() { try { this.ws?.close(); } catch { /* already closed */ } }
}

// ------------------------------------------------------------------ helpers

/** Records every CSP violation of the page in window.__cspViolations, from before its first script. */
function watchCsp(page) {
  return page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI || '(inline)'}`);
    });
  });
}

/**
 * A page that records script errors and Content-Security-Policy violations. The
 * violation listener goes in before any of the page's scripts run; the browser
 * also logs every violation as a console error, which lands in pageErrors.
 */
async function newWatchedPage(name, viewport = { width: 1440, height: 900 }) {
  const page = await browser.newPage({ viewport });
  await watchCsp(page);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    // A 404 for an optional resource (/v1/console/config) is logged by the browser, not by us.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(`${name} console: ${m.text()}`);
  });
  return page;
}

const cspViolations = (page) => page.evaluate(() => window.__cspViolations);

async function openConsole(token, name) {
  const page = await newWatchedPage(name);
  const res = await page.goto(`${server.url}/?token=${encodeURIComponent(token)}`);
  assert.match(res.headers()['content-security-policy'] || '', /default-src 'self'/, `${name}: the page carries its CSP`);
  await page.waitForSelector('[data-testid=conn-state][data-state=live]', { timeout: 15000 });
  return page;
}

/** Closes a console page after checking that its policy never had to block anything. */
async function closeConsole(page, name) {
  assert.deepEqual(await cspViolations(page), [], `${name}: no CSP violation`);
  await page.close();
}

const shot = (page, name) => page.screenshot({ path: path.join(OUT, name) });

/** Great-circle metres, as the console computes them (R = 6371008.8 m). */
function haversine(a, b) {
  const rad = Math.PI / 180;
  const h = Math.sin((b.lat - a.lat) * rad / 2) ** 2 +
    Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin((b.lon - a.lon) * rad / 2) ** 2;
  return 2 * 6371008.8 * Math.asin(Math.min(1, Math.sqrt(h)));
}

// ------------------------------------------------------------------ the test

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  server = await startRealServer(OUT);
  for (const [id, pos] of [['P-1', P1], ['P-2', P2]]) {
    const t = new Tablet(id, server.token('unit', id, id), server.url);
    await t.connect();
    await t.send({ type: 'unit.status', status: 'available' });
    await t.send({ type: 'unit.position', lat: pos.lat, lon: pos.lon, heading: 90, speed: 0, at_ms: Date.now() });
    tablets.push(t);
  }
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing: apt-get install -y chromium`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const t of tablets) t.close();
  await browser?.close().catch(() => {});
  await server?.stop();
});

test('console: dispatcher creates, sees auto-dispatch, closes; supervisor figures follow', async () => {
  const [p1] = tablets;
  const dispatcher = await openConsole(server.token('dispatcher', 'd1'), 'dispatcher');
  assert.equal(await dispatcher.textContent('[data-testid=role]'), 'dispatcher');

  // Both tablets appear on the board as available and on the map as markers.
  for (const id of ['P-1', 'P-2']) {
    await dispatcher.waitForSelector(`[data-testid=unit-row][data-unit-id="${id}"][data-status=available]`);
  }
  await waitFor(() => dispatcher.$eval('[data-testid=map]', (c) => c.dataset.units === '2'), 'two unit markers');
  await shot(dispatcher, '01-dispatcher-live.png');

  // Click the map a few pixels from P-1: the form gets the location.
  const canvas = await dispatcher.$('[data-testid=map]');
  const box = await canvas.boundingBox();
  const at = await dispatcher.evaluate(([lat, lon]) => window.opcenter.map.project(lat, lon), [P1.lat, P1.lon]);
  assert.ok(at.x > 0 && at.y > 0 && at.x < box.width && at.y < box.height, `P-1 is on screen (${JSON.stringify(at)})`);
  await dispatcher.mouse.click(box.x + at.x + 14, box.y + at.y - 10);
  const lat = Number(await dispatcher.inputValue('[data-testid=create-lat]'));
  const lon = Number(await dispatcher.inputValue('[data-testid=create-lon]'));
  assert.ok(Math.abs(lat - P1.lat) < 0.01 && Math.abs(lon - P1.lon) < 0.01, `clicked location ${lat},${lon} is near P-1`);

  await dispatcher.fill('[data-testid=create-category]', 'burglary');
  await dispatcher.selectOption('[data-testid=create-priority]', '2');
  await dispatcher.fill('[data-testid=create-description]', 'alarm going off, back door open');
  await dispatcher.click('[data-testid=create-submit]');

  // The queue row shows the nearest unit; the map draws its assignment line.
  const row = await dispatcher.waitForSelector('[data-testid=queue-row]:has([data-testid=queue-row-units]:text("P-1"))', { timeout: 15000 });
  const incidentId = await row.getAttribute('data-incident-id');
  assert.ok(incidentId, 'queue row carries the incident id');
  await waitFor(() => dispatcher.$eval('[data-testid=map]', (c) => Number(c.dataset.lines) >= 1), 'an assignment line');
  // The tablet acknowledges on its own: en_route.
  await dispatcher.waitForSelector(`[data-testid=queue-row][data-incident-id="${incidentId}"][data-status=en_route]`, { timeout: 15000 });
  await dispatcher.waitForSelector(`[data-testid=incident-details][data-incident-id="${incidentId}"]`);
  await shot(dispatcher, '02-dispatcher-assigned.png');

  // Supervisor opens while the incident is open.
  const supervisor = await openConsole(server.token('supervisor', 's1'), 'supervisor');
  assert.equal(await supervisor.textContent('[data-testid=role]'), 'supervisor');
  assert.equal(await supervisor.isVisible('[data-testid=create-form]'), false, 'supervisor has no create form');
  await waitFor(async () => (await supervisor.textContent('[data-testid=fig-open-total]')) === '1', 'one open incident');
  await waitFor(async () => (await supervisor.textContent('[data-testid=fig-open-p2]')) === '1', 'one open P2');
  await waitFor(async () => (await supervisor.textContent('[data-testid=fig-units-total]')) === '2', 'two units');

  // P-1 arrives: the arrival time exists from now on.
  await p1.send({ type: 'unit.status', status: 'on_scene' });
  await dispatcher.waitForSelector(`[data-testid=queue-row][data-incident-id="${incidentId}"][data-status=on_scene]`, { timeout: 15000 });
  await waitFor(() => supervisor.$eval('[data-testid=fig-median-arrival]', (e) => e.dataset.ms !== ''), 'a median arrival time');
  await waitFor(() => supervisor.$eval('[data-testid=fig-median-dispatch]', (e) => e.dataset.ms !== ''), 'a median dispatch time');
  await shot(supervisor, '03-supervisor-open.png');

  // Add a note, then close with a disposition.
  await dispatcher.fill('[data-testid=note-input]', 'caller on scene, keyholder coming');
  await dispatcher.click('[data-testid=note-add]');
  await dispatcher.waitForSelector('[data-testid=notes] [data-testid=note]:has-text("keyholder")', { timeout: 10000 });
  await dispatcher.fill('[data-testid=disposition]', 'report_taken');
  await dispatcher.click('[data-testid=close-btn]');
  await dispatcher.waitForSelector(`[data-testid=queue-row][data-incident-id="${incidentId}"]`, { state: 'detached', timeout: 15000 });
  await dispatcher.waitForSelector('[data-testid=unit-row][data-unit-id="P-1"][data-status=available]', { timeout: 15000 });
  await waitFor(() => dispatcher.$eval('[data-testid=map]', (c) => c.dataset.lines === '0'), 'no assignment lines');
  await shot(dispatcher, '04-dispatcher-closed.png');

  // The supervisor's figures follow.
  await waitFor(async () => (await supervisor.textContent('[data-testid=fig-open-total]')) === '0', 'no open incidents');
  await waitFor(async () => (await supervisor.textContent('[data-testid=fig-units-available]')) === '2', 'both units available');
  const n = await supervisor.$eval('[data-testid=fig-median-dispatch]', (e) => Number(e.dataset.count));
  assert.ok(n >= 1, 'the dispatch median counts the incident');
  await shot(supervisor, '05-supervisor-after-close.png');

  // A supervisor opened afterwards still sees the last hour (history replay).
  const late = await openConsole(server.token('supervisor', 's2'), 'late supervisor');
  await waitFor(() => late.$eval('[data-testid=fig-median-arrival]', (e) => e.dataset.ms !== ''), 'late supervisor: arrival median', 10000)
    .catch((e) => console.warn(`# late supervisor has no history figures: ${e.message}`));
  await closeConsole(late, 'late');

  for (const t of tablets) assert.deepEqual(t.errors, [], `${t.id} saw no errors`);
  await closeConsole(supervisor, 'supervisor');
  await closeConsole(dispatcher, 'dispatcher');
  assert.deepEqual(pageErrors, [], 'no script errors in the pages');
});

test('console: dispatcher edits an incident, assigns any unit, sets unit status from the board', async () => {
  const dispatcher = await openConsole(server.token('dispatcher', 'd3'), 'dispatcher-edit');
  for (const id of ['P-1', 'P-2']) {
    await dispatcher.waitForSelector(`[data-testid=unit-row][data-unit-id="${id}"][data-status=available]`);
  }
  const queueIds = () => dispatcher.$$eval('[data-testid=queue-row]', (rows) => rows.map((r) => r.dataset.incidentId));
  const row = (id) => `[data-testid=queue-row][data-incident-id="${id}"]`;
  const unitRow = (id) => `[data-testid=unit-row][data-unit-id="${id}"]`;

  // Two manually dispatched incidents (nobody is sent on its own): a P3, then a P4.
  async function create(category, priority, loc) {
    const before = new Set(await queueIds());
    await dispatcher.fill('[data-testid=create-lat]', String(loc.lat));
    await dispatcher.fill('[data-testid=create-lon]', String(loc.lon));
    await dispatcher.fill('[data-testid=create-category]', category);
    await dispatcher.selectOption('[data-testid=create-priority]', String(priority));
    await dispatcher.check('[data-testid=create-dispatch-manual]');
    await dispatcher.click('[data-testid=create-submit]');
    return waitFor(async () => (await queueIds()).find((id) => !before.has(id)), `a new ${category} row`);
  }
  const NOISE_AT = { lat: 51.2400, lon: 51.3850 };
  const theft = await create('theft', 3, { lat: 51.2350, lon: 51.3750 });
  const noise = await create('noise', 4, NOISE_AT);
  let ids = await queueIds();
  assert.ok(ids.indexOf(theft) < ids.indexOf(noise), `P3 before P4: ${ids}`);

  // Edit the P4: priority 2 and an address. The queue re-sorts from the `updated` event.
  await dispatcher.click(row(noise));
  await dispatcher.waitForSelector(`[data-testid=incident-details][data-incident-id="${noise}"]`);
  assert.equal(await dispatcher.inputValue('[data-testid=edit-priority]'), '4');
  assert.equal(await dispatcher.isDisabled('[data-testid=edit-save]'), true, 'nothing to save yet');
  await dispatcher.selectOption('[data-testid=edit-priority]', '2');
  await dispatcher.fill('[data-testid=edit-address]', '12 Harbour Road');
  await dispatcher.click('[data-testid=edit-save]');
  await dispatcher.waitForSelector(`${row(noise)}[data-priority="2"]`, { timeout: 10000 });
  await dispatcher.waitForSelector(`${row(noise)}:has-text("12 Harbour Road")`, { timeout: 10000 });
  ids = await queueIds();
  assert.ok(ids.indexOf(noise) < ids.indexOf(theft), `the P2 now comes before the P3: ${ids}`);
  assert.equal(await dispatcher.textContent(`${row(noise)} .prio`), 'P2');
  await waitFor(async () => (await dispatcher.textContent('[data-testid=detail-priority]')) === '2', 'details show priority 2');
  await waitFor(() => dispatcher.isDisabled('[data-testid=edit-save]'), 'the form is clean after the save');
  await dispatcher.locator('[data-testid=incident-details]').screenshot({ path: path.join(OUT, '04a-details-edited.png') });

  // Assign any unit: the select lists every unit with its straight-line distance.
  const opt = await dispatcher.waitForSelector('[data-testid=assign-any-select] option[value="P-2"]', { state: 'attached' });
  const shown = Number(await opt.getAttribute('data-distance'));
  const expected = haversine(P2, NOISE_AT);
  assert.ok(Math.abs(shown - expected) <= 1, `P-2 is ${shown} m away (expected ${expected.toFixed(1)})`);
  assert.match(await opt.textContent(), /P-2 · available · \d/);
  await dispatcher.selectOption('[data-testid=assign-any-select]', 'P-2');
  await dispatcher.click('[data-testid=assign-any-btn]');
  await dispatcher.waitForSelector(`${row(noise)}:has([data-testid=queue-row-units]:text("P-2"))`, { timeout: 10000 });
  await dispatcher.waitForSelector(`${unitRow('P-2')}[data-status=en_route]`, { timeout: 10000 }); // the tablet acked
  await shot(dispatcher, '04a-dispatcher-edit-assign.png');

  // A free unit is set busy from the board at once.
  await dispatcher.click(unitRow('P-1'));
  await dispatcher.waitForSelector('[data-testid=unit-control][data-unit-id="P-1"]', { state: 'visible' });
  await dispatcher.click('[data-testid=unit-control] [data-testid=unit-set-status][data-status=busy]');
  await dispatcher.waitForSelector(`${unitRow('P-1')}[data-status=busy]`, { timeout: 10000 });
  assert.equal(await dispatcher.textContent(`${unitRow('P-1')} [data-testid=unit-row-status]`), 'busy');
  assert.equal(await dispatcher.isVisible('[data-testid=unit-status-confirm]'), false, 'no confirm for a free unit');

  // A unit on an incident asks first; confirmed, it leaves the (manual) incident.
  await dispatcher.click(unitRow('P-2'));
  await dispatcher.waitForSelector('[data-testid=unit-control][data-unit-id="P-2"]', { state: 'visible' });
  await dispatcher.click('[data-testid=unit-control] [data-testid=unit-set-status][data-status=busy]');
  await dispatcher.waitForSelector(`[data-testid=unit-status-confirm]:has-text("${noise}")`, { state: 'visible' });
  assert.equal(await dispatcher.getAttribute(unitRow('P-2'), 'data-status'), 'en_route', 'nothing sent before the confirm');
  await shot(dispatcher, '04b-dispatcher-unit-confirm.png');
  await dispatcher.click('[data-testid=unit-status-confirm-yes]');
  await dispatcher.waitForSelector(`${unitRow('P-2')}[data-status=busy]`, { timeout: 10000 });
  await dispatcher.waitForSelector(`${row(noise)}[data-status=pending]`, { timeout: 10000 });
  await dispatcher.waitForSelector('[data-testid=unit-status-confirm]', { state: 'hidden' });
  await shot(dispatcher, '04c-dispatcher-units-busy.png');

  // Put everything back for the next test: both units available, both incidents closed.
  for (const id of ['P-2', 'P-1']) {
    await dispatcher.click(unitRow(id));
    await dispatcher.waitForSelector(`[data-testid=unit-control][data-unit-id="${id}"]`, { state: 'visible' });
    await dispatcher.click('[data-testid=unit-control] [data-testid=unit-set-status][data-status=available]');
    await dispatcher.waitForSelector(`${unitRow(id)}[data-status=available]`, { timeout: 10000 });
  }
  for (const id of [noise, theft]) {
    await dispatcher.click(row(id));
    await dispatcher.waitForSelector(`[data-testid=incident-details][data-incident-id="${id}"]`);
    await dispatcher.fill('[data-testid=disposition]', 'cancelled');
    await dispatcher.click('[data-testid=close-btn]');
    await dispatcher.waitForSelector(row(id), { state: 'detached', timeout: 10000 });
  }
  for (const t of tablets) assert.deepEqual(t.errors, [], `${t.id} saw no errors`);
  await closeConsole(dispatcher, 'dispatcher');
  assert.deepEqual(pageErrors, [], 'no script errors in the pages');
});

test('console: an officer emergency takes the top of the screen until acknowledged', async () => {
  const p2 = tablets[1];
  const dispatcher = await openConsole(server.token('dispatcher', 'd1'), 'dispatcher-2');
  await dispatcher.waitForSelector('[data-testid=unit-row][data-unit-id="P-2"]');
  assert.equal(await dispatcher.isVisible('[data-testid=emergency-banner]'), false);
  await p2.send({ type: 'unit.emergency', active: true });
  await dispatcher.waitForSelector('[data-testid=emergency-banner]', { state: 'visible', timeout: 15000 });
  await dispatcher.waitForSelector('[data-testid=queue-row][data-priority="1"]', { timeout: 15000 });
  await shot(dispatcher, '06-emergency.png');
  await dispatcher.click('[data-testid=emergency-ack]');
  await dispatcher.waitForSelector('[data-testid=emergency-banner]', { state: 'hidden', timeout: 5000 });

  // Resume: drop the page's socket; while it is away the assigned unit writes a
  // note; after the reconnect the note is there and no row is doubled.
  const row = await dispatcher.waitForSelector('[data-testid=queue-row][data-priority="1"]');
  const emergencyId = await row.getAttribute('data-incident-id');
  const p1 = tablets[0];
  await waitFor(() => p1.assigned.includes(emergencyId), 'P-1 sent to the emergency');
  await dispatcher.evaluate(() => window.opcenter.dropConnection());
  await dispatcher.waitForSelector('[data-testid=conn-state]:not([data-state=live])', { timeout: 5000 });
  await p1.send({ type: 'incident.note', incident_id: emergencyId, text: 'written while the console was away' });
  await dispatcher.waitForSelector('[data-testid=conn-state][data-state=live]', { timeout: 15000 });
  await waitFor(() => dispatcher.evaluate((id) => {
    const inc = window.opcenter.store.incident(id);
    return inc && inc.notes.some((n) => n.text.includes('while the console was away'));
  }, emergencyId), 'the note made during the gap');
  const ids = await dispatcher.$$eval('[data-testid=queue-row]', (rows) => rows.map((r) => r.dataset.incidentId));
  assert.equal(new Set(ids).size, ids.length, `no duplicated rows: ${ids}`);
  assert.ok(ids.includes(emergencyId));
  await closeConsole(dispatcher, 'dispatcher');
  assert.deepEqual(pageErrors, [], 'no script errors in the pages');
});

test('console: a bad token is refused at sign-in; a unit token gets a clear message', async () => {
  const page = await newWatchedPage('signin', { width: 1280, height: 800 });
  await page.goto(`${server.url}/?token=not-a-jwt`);
  await page.waitForSelector('[data-testid=signin-msg]:has-text("unauthorized")', { timeout: 15000 });
  assert.equal(await page.isVisible('[data-testid=signin]'), true);
  await shot(page, '07-signin-refused.png');

  await page.fill('[data-testid=token-input]', server.token('unit', 'P-9', 'P-9'));
  await page.click('[data-testid=signin-submit]');
  await page.waitForSelector('[data-testid=role-message]', { state: 'visible', timeout: 15000 });
  assert.match(await page.textContent('[data-testid=role-message]'), /unit/);
  await closeConsole(page, 'signin');
  assert.deepEqual(pageErrors, [], 'no script errors in the pages');
});

test('console: the token leaves the address bar at once; a reload stays signed in', async () => {
  const token = server.token('supervisor', 'sup-reload');
  const page = await openConsole(token, 'reload');
  assert.ok(!page.url().includes('token='), `address bar still has the token: ${page.url()}`);
  assert.ok(!page.url().includes(encodeURIComponent(token).slice(0, 20)), 'no part of the token in the address bar');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('opcenter.token')), token);
  await page.reload();
  await page.waitForSelector('[data-testid=conn-state][data-state=live]', { timeout: 15000 });
  assert.ok(!page.url().includes('token='), page.url());
  assert.equal(await page.isVisible('[data-testid=signin]'), false, 'signed in after the reload');
  await closeConsole(page, 'reload');
  assert.deepEqual(pageErrors, [], 'no script errors in the pages');
});

test('console: served with a Content-Security-Policy that the browser enforces', async () => {
  for (const p of ['/', '/console/app.js', '/console/conn.js', '/console/dom.js']) {
    const r = await fetch(`${server.url}${p}`);
    assert.equal(r.status, 200, p);
    const csp = r.headers.get('content-security-policy') || '';
    assert.match(csp, /(^|;\s*)default-src 'self'(;|$)/, `${p}: ${csp}`);
    assert.match(csp, /(^|;\s*)connect-src 'self'(;|$)/, `${p}: ${csp}`);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/, `${p}: ${csp}`);
  }

  // The listener the other tests rely on does hear the policy: a page that tries to
  // reach another origin, or to run an inline handler, is stopped and reported.
  // (No error collection here: the browser logs these refusals as errors.)
  const page = await browser.newPage();
  await watchCsp(page);
  await page.goto(`${server.url}/`);
  await page.waitForSelector('[data-testid=signin]');
  assert.deepEqual(await cspViolations(page), [], 'the sign-in page alone breaks no rule');
  await page.evaluate(() => {
    try { new WebSocket('ws://127.0.0.2:9/v1/ws'); } catch { /* some browsers throw as well */ }
    new Image().src = 'http://127.0.0.2:9/tile.png';
    const b = document.createElement('button');
    b.setAttribute('onclick', 'window.__inlineRan = true');
    document.body.appendChild(b);
    b.click();
  });
  await waitFor(async () => (await cspViolations(page)).length >= 3, 'three violations', 5000);
  const seen = await cspViolations(page);
  for (const d of ['connect-src', 'img-src', 'script-src']) {
    assert.ok(seen.some((v) => v.startsWith(d)), `${d} was enforced: ${seen}`);
  }
  assert.equal(await page.evaluate(() => window.__inlineRan), undefined, 'the inline handler did not run');
  await page.close();
});

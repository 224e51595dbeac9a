// Round-the-clock duty in the console (issue 15, item 7): the real server with two
// roster units on shifts (`on_duty`), headless Chromium as a dispatcher. Checks that
// the console shows who is on duty now and whose shift comes next, and that a unit
// whose shift ends while it holds an incident keeps it, is flagged on the board and
// warned about, and goes off duty once the incident is closed.
//
// The shift really ends while the test runs: the day patrol's window closes at the
// start of a minute 80 to 140 s after the server starts (local time = UTC here,
// `dispatch.local_offset_min = 0`), so this test takes about two minutes. It waits
// on conditions only; the bound on the wait is generous.
//
// Run: cargo build && (cd tests/browser && npm ci) && node --test tests/browser/
// Screenshot: tests/browser/out/shifts.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { startRealServer, launchChromium, waitFor } from './hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(here, 'out');

const DAY = 'Day patrol 7';
const NEXT = 'Evening patrol 9';
const hhmm = (min) => {
  const m = ((min % 1440) + 1440) % 1440;
  return `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
};

let server;
let browser;
let endMin;
let nextStart;
const pageErrors = [];

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  const nowMin = Math.floor(Date.now() / 60000);
  // At least 80 s of shift left after this line, at most 140 s.
  endMin = nowMin + (Date.now() % 60000 > 40000 ? 3 : 2);
  nextStart = hhmm(nowMin + 180);
  const q = JSON.stringify;
  server = await startRealServer(OUT, 'shifts-server.log', {
    dispatch: ['local_offset_min = 0'],
    tail: [
      '[[roster]]',
      'id = "DAY-7"',
      `callsign = ${q(DAY)}`,
      'kind = "patrol_car"',
      'status = "available"',
      `on_duty = ${q(`${hhmm(nowMin - 60)}-${hhmm(endMin)}`)}`,
      'location = { lat = 51.2290, lon = 51.3650 }',
      '',
      '[[roster]]',
      'id = "EVE-9"',
      `callsign = ${q(NEXT)}`,
      'kind = "patrol_car"',
      `on_duty = ${q(`${nextStart}-${hhmm(nowMin + 600)}`)}`,
      'location = { lat = 51.2300, lon = 51.3700 }',
    ],
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A dispatcher's WebSocket; `call(msg)` resolves to the `ok` reply. */
async function dispatcher() {
  const ws = new WebSocket(server.url.replace(/^http/, 'ws') + '/v1/ws');
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  const replies = new Map();
  ws.on('message', (d) => { const m = JSON.parse(String(d)); if (m.id != null) replies.set(m.id, m); });
  let n = 0;
  const call = async (msg) => {
    const id = ++n;
    ws.send(JSON.stringify({ ...msg, id }));
    const m = await waitFor(() => replies.get(id), `reply to ${msg.type}`);
    assert.equal(m.type, 'ok', JSON.stringify(m));
    return m;
  };
  await call({ type: 'hello', token: server.token('dispatcher', 'shift-disp'), protocol: 1 });
  return { call, close: () => ws.close() };
}

const text = (page, id) => page.$eval(`[data-testid=${id}]`, (e) => e.textContent);
const row = (page, unit) => page.$eval(`[data-testid=unit-row][data-unit-id="${unit}"]`, (r) => ({
  status: r.dataset.status,
  shift: r.querySelector('[data-testid=unit-row-shift]').textContent,
  over: !!r.querySelector('[data-testid=unit-row-shift-over]'),
}));

test('the console shows shifts and warns of a unit past its shift on a call', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text()); });
  await page.goto(`${server.url}/?token=${encodeURIComponent(server.token('dispatcher', 'shift-console'))}`);
  await page.waitForSelector('[data-testid=conn-state][data-state=live]', { timeout: 30000 });

  // On duty now: the day patrol; next: the evening patrol, at its start.
  await waitFor(async () => (await row(page, 'EVE-9')).status === 'off_duty', 'the evening patrol off duty');
  await waitFor(async () => (await text(page, 'shift-now')) === 'On duty now: 1', 'one unit on duty');
  assert.equal(await text(page, 'shift-next'), `Next shift ${nextStart}: ${NEXT}`);
  assert.match((await row(page, 'DAY-7')).shift, new RegExp(`-${hhmm(endMin)}$`));
  assert.equal((await row(page, 'DAY-7')).over, false);

  // The day patrol takes a call before its shift ends.
  const d = await dispatcher();
  const inc = (await d.call({ type: 'incident.create', category: 'theft', priority: 3,
    location: { lat: 51.2291, lon: 51.3651 }, dispatch: 'manual' })).incident;
  await d.call({ type: 'incident.assign', incident_id: inc.id, unit_id: 'DAY-7' });
  assert.ok(Date.now() < endMin * 60000, 'assigned before the shift ended (the test set it up too late)');

  // The shift ends: the unit keeps the call, the console warns.
  const warned = await waitFor(
    () => page.$(`[data-testid=shift-warning][data-unit-id="DAY-7"]`),
    'the shift-over warning', Math.max(0, endMin * 60000 - Date.now()) + 60000,
  );
  assert.match(await warned.textContent(), new RegExp(`${DAY} still holds ${inc.id}`));
  const r = await row(page, 'DAY-7');
  assert.equal(r.status, 'dispatched', 'it keeps the incident');
  assert.equal(r.over, true);
  await page.screenshot({ path: path.join(OUT, 'shifts.png') });

  // Closed: the unit goes off duty and the warning goes away.
  await d.call({ type: 'incident.close', incident_id: inc.id, disposition: 'resolved' });
  await waitFor(async () => (await row(page, 'DAY-7')).status === 'off_duty', 'the day patrol off duty');
  await waitFor(async () => (await page.$('[data-testid=shift-warning]')) === null, 'the warning cleared');
  assert.equal((await row(page, 'DAY-7')).over, false);
  assert.equal(await text(page, 'shift-now'), 'On duty now: 0');
  d.close();

  assert.deepEqual(pageErrors, []);
  await page.close();
});

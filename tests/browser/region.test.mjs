// The console in the example region (issue 15): the real server with the Uralsk
// districts, beats and streets (config/uralsk-*.geojson), a police car, a National
// Guard unit and a modular post on the roster, and headless Chromium as a
// dispatcher. Checks that the map draws the streets and zones (GET /v1/streets,
// GET /v1/zones), that units of each agency are told apart and filtered on the
// board and the map alike, that the board shows full callsigns and post numbers,
// and that an incident shows the district and beat it lies in.
//
// Run: cargo build && (cd tests/browser && npm ci) && node --test tests/browser/
// Screenshot: tests/browser/out/region.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { startRealServer, launchChromium, waitFor } from './hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(here, 'out');
const CONFIG = path.resolve(here, '../../config');

// Long callsigns on purpose: the board used to cut them to "Berkut 1…".
const CAR = 'Berkut 101 night patrol, Central district';
const GUARD = 'Guard 1 public order detachment';
const POST = 'Modular post 3 (central market)';
const MARKET = { lat: 51.234497, lon: 51.374308 };

let server;
let browser;
const pageErrors = [];

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  const q = JSON.stringify;
  server = await startRealServer(OUT, 'region-server.log', {
    dispatch: ['agencies = ["police", "national_guard"]', 'default_agencies = ["police"]'],
    tail: [
      '[console]',
      `streets_file = ${q(path.join(CONFIG, 'uralsk-streets.geojson'))}`,
      '',
      '[[zones]]',
      `file = ${q(path.join(CONFIG, 'uralsk-districts.geojson'))}`,
      'kind = "district"',
      '',
      '[[zones]]',
      `file = ${q(path.join(CONFIG, 'uralsk-beats.geojson'))}`,
      'kind = "beat"',
      '',
      '[[roster]]',
      'id = "P-101"',
      `callsign = ${q(CAR)}`,
      'kind = "patrol_car"',
      'capabilities = ["patrol"]',
      'status = "available"',
      'location = { lat = 51.2290, lon = 51.3650 }',
      '',
      '[[roster]]',
      'id = "NG-1"',
      `callsign = ${q(GUARD)}`,
      'kind = "guard_patrol"',
      'agency = "national_guard"',
      'capabilities = ["patrol", "public_order"]',
      'status = "available"',
      'location = { lat = 51.2350, lon = 51.3800 }',
      '',
      '[[roster]]',
      'id = "POST-MARKET"',
      `callsign = ${q(POST)}`,
      'kind = "modular_post"',
      'capabilities = ["patrol", "foot"]',
      'status = "available"',
      'post = 3',
      'district = "Central"',
      `location = { lat = ${MARKET.lat}, lon = ${MARKET.lon} }`,
    ],
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A dispatcher's incident.create over a WebSocket of its own; resolves to the incident. */
async function createIncident(body) {
  const ws = new WebSocket(server.url.replace(/^http/, 'ws') + '/v1/ws');
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  const replies = new Map();
  ws.on('message', (d) => { const m = JSON.parse(String(d)); if (m.id != null) replies.set(m.id, m); });
  const call = async (id, msg) => {
    ws.send(JSON.stringify({ ...msg, id }));
    const m = await waitFor(() => replies.get(id), `reply ${id}`);
    assert.equal(m.type, 'ok', JSON.stringify(m));
    return m;
  };
  await call(1, { type: 'hello', token: server.token('dispatcher', 'region-setup'), protocol: 1 });
  const ok = await call(2, { type: 'incident.create', ...body });
  ws.close();
  return ok.incident;
}

const canvas = (page) => page.evaluate(() => ({ ...document.querySelector('[data-testid=map]').dataset }));
const rows = (page) => page.$$eval('[data-testid=unit-row]', (rs) => rs.map((r) => ({
  id: r.dataset.unitId,
  agency: r.dataset.agency,
  callsign: r.querySelector('[data-testid=unit-row-callsign]').textContent,
  // Cut text would be wider than its box (ellipsis) or clipped.
  cut: (() => { const c = r.querySelector('[data-testid=unit-row-callsign]'); return c.scrollWidth > c.clientWidth + 1; })(),
  kind: r.querySelector('[data-testid=unit-row-kind]').textContent,
})));

test('the region console: streets, zones, agencies, full callsigns, filters', async () => {
  const inc = await createIncident({ category: 'theft', priority: 3, location: MARKET, dispatch: 'manual' });
  assert.equal(inc.district, 'Central', 'the server places the incident');

  // A narrow left column is where callsigns used to be cut.
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text()); });
  await page.goto(`${server.url}/?token=${encodeURIComponent(server.token('dispatcher', 'region-disp'))}`);
  await page.waitForSelector('[data-testid=conn-state][data-state=live]', { timeout: 20000 });

  // Streets and zones are drawn (every feature of both files).
  const streets = JSON.parse(fs.readFileSync(path.join(CONFIG, 'uralsk-streets.geojson'), 'utf8')).features.length;
  const districts = JSON.parse(fs.readFileSync(path.join(CONFIG, 'uralsk-districts.geojson'), 'utf8')).features.length;
  const beats = JSON.parse(fs.readFileSync(path.join(CONFIG, 'uralsk-beats.geojson'), 'utf8')).features.length;
  const drawn = await waitFor(async () => {
    const d = await canvas(page);
    return Number(d.streets) === streets && Number(d.zones) === districts + beats && d;
  }, 'streets and zones on the map');
  assert.equal(Number(drawn.districtLabels), districts, 'every district is labelled');

  // All three units, told apart: full callsigns, agencies, the post's number.
  await waitFor(async () => (await rows(page)).length === 3, 'three unit rows');
  const all = await rows(page);
  const byId = Object.fromEntries(all.map((r) => [r.id, r]));
  assert.equal(byId['P-101'].callsign, CAR);
  assert.equal(byId['NG-1'].callsign, GUARD);
  assert.equal(byId['POST-MARKET'].callsign, POST);
  for (const r of all) assert.equal(r.cut, false, `${r.id}: callsign not cut`);
  assert.equal(byId['NG-1'].agency, 'national_guard');
  assert.equal(byId['P-101'].agency, 'police');
  assert.match(byId['POST-MARKET'].kind, /№3/);
  await waitFor(async () => (await canvas(page)).agencies === 'national_guard,police', 'both agencies on the map');

  // The incident shows where it is.
  await page.waitForSelector(`[data-testid=queue-row][data-incident-id="${inc.id}"]:has-text("Central")`);

  await page.screenshot({ path: path.join(OUT, 'region.png') });

  // Agency filter: the board and the map both keep only the National Guard.
  await page.selectOption('[data-testid=filter-agency]', 'national_guard');
  await waitFor(async () => {
    const r = await rows(page);
    return r.length === 1 && r[0].id === 'NG-1';
  }, 'the board filtered to the National Guard');
  await waitFor(async () => {
    const d = await canvas(page);
    return d.agencies === 'national_guard' && d.units === '1';
  }, 'the map filtered to the National Guard');

  // Kind filter, with the agency filter back to all.
  await page.selectOption('[data-testid=filter-agency]', '');
  await page.selectOption('[data-testid=filter-kind]', 'modular_post');
  await waitFor(async () => {
    const r = await rows(page);
    return r.length === 1 && r[0].id === 'POST-MARKET';
  }, 'the board filtered to modular posts');
  await waitFor(async () => (await canvas(page)).units === '1', 'the map filtered to modular posts');
  await page.selectOption('[data-testid=filter-kind]', '');
  await waitFor(async () => (await rows(page)).length === 3, 'the filter cleared');

  // The layers need a console token: an intake token is refused.
  const refused = await fetch(`${server.url}/v1/zones`, { headers: { Authorization: `Bearer ${server.token('intake', 'app')}` } });
  assert.equal(refused.status, 403);
  assert.equal((await fetch(`${server.url}/v1/streets`)).status, 401);

  assert.deepEqual(pageErrors, []);
  await page.close();
});

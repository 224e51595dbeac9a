// The console in the example region (issue 15): the real server with the Uralsk
// districts, beats and streets (config/uralsk-*.geojson), a police car, a National
// Guard unit and a modular post on the roster, and headless Chromium as a
// dispatcher. Checks that the map draws the streets and zones (GET /v1/streets,
// GET /v1/zones), that units of each agency are told apart and filtered on the
// board and the map alike, that the board shows full callsigns and post numbers,
// that an incident shows the district and beat it lies in, and that the new-incident
// form's address field autocompletes from the example gazetteer
// (config/uralsk-addresses.csv) and sets the incident's location.
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
      '[gazetteer]',
      `file = ${q(path.join(CONFIG, 'uralsk-addresses.csv'))}`,
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

/** The example gazetteer's row for a building name: {label, lat, lon}. */
function addressOf(building) {
  const rows = fs.readFileSync(path.join(CONFIG, 'uralsk-addresses.csv'), 'utf8').split('\n');
  const cols = rows[0].split(',');
  const col = (r, name) => r[cols.indexOf(name)];
  const r = rows.slice(1).map((l) => l.split(',')).find((r) => col(r, 'building') === building);
  assert.ok(r, `${building} in uralsk-addresses.csv`);
  return { label: `${col(r, 'street')}, ${col(r, 'house')} (${building})`, lat: Number(col(r, 'lat')), lon: Number(col(r, 'lon')) };
}

test('the address field autocompletes from the gazetteer and sets the location', async () => {
  const market = addressOf('Центральный рынок');
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text()); });
  await page.goto(`${server.url}/?token=${encodeURIComponent(server.token('dispatcher', 'region-addr'))}`);
  await page.waitForSelector('[data-testid=conn-state][data-state=live]', { timeout: 30000 });

  const field = page.locator('[data-testid=create-address]');
  const suggestions = page.locator('[data-testid=address-suggestion]');
  // Typed key by key, as a dispatcher would: the list follows the newest text.
  await field.click();
  await field.pressSequentially('рын');
  await field.pressSequentially('ок');
  const pick = suggestions.filter({ hasText: market.label });
  await pick.first().waitFor({ timeout: 30000 });
  assert.equal(await suggestions.first().textContent(), market.label, 'the building ranks first');
  await pick.first().dispatchEvent('mousedown');
  await waitFor(async () => (await field.inputValue()) === market.label, 'the picked label in the field');
  await waitFor(async () => (await page.locator('[data-testid=create-lat]').inputValue()) !== '', 'the location set');
  assert.equal(Number(await page.locator('[data-testid=create-lat]').inputValue()), market.lat);
  assert.equal(Number(await page.locator('[data-testid=create-lon]').inputValue()), market.lon);
  assert.equal(await page.locator('[data-testid=address-suggestions]').isVisible(), false, 'the list closes on a pick');

  // Created from the form: the incident is where the address is, in its district.
  await page.selectOption('[data-testid=create-priority]', '2');
  await page.locator('[data-testid=create-dispatch-manual]').check();
  await page.click('[data-testid=create-submit]');
  // The queue shows it with its address; the server has it at the address's point.
  const row = page.locator('[data-testid=queue-row]').filter({ hasText: market.label });
  await row.first().waitFor({ timeout: 30000 });
  const id = await row.first().getAttribute('data-incident-id');
  const res = await fetch(`${server.url}/v1/incidents/${encodeURIComponent(id)}`, {
    headers: { Authorization: `Bearer ${server.token('dispatcher', 'region-check')}` },
  });
  assert.equal(res.status, 200);
  const { incident } = await res.json();
  assert.equal(incident.address, market.label);
  assert.deepEqual(incident.location, { lat: market.lat, lon: market.lon });
  assert.equal(incident.district, 'Central');

  // Keyboard: a Latin spelling, arrow down to the second match, Enter picks it.
  await field.fill('');
  await field.pressSequentially('abaia 7');
  await waitFor(async () => (await suggestions.count()) >= 2 && (await suggestions.first().textContent()) === 'проспект Абая, 7'
    && (await page.locator('[data-testid=address-suggestions]').isVisible()), 'Abaya 7 suggested');
  const second = await suggestions.nth(1).textContent();
  await field.press('ArrowDown');
  await field.press('Enter');
  await waitFor(async () => (await field.inputValue()) === second, 'the second match picked with the keyboard');

  assert.deepEqual(pageErrors, []);
  await page.close();
});

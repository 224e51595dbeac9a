// Unit tests of the console's client-side state (assets/console/store.js): the rules
// that keep rows from being duplicated or lost across reconnects, and positions from
// moving backwards. No server, no browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Store, median } = require('../../crates/opcenter-hub/assets/console/store.js');

const inc = (id, extra = {}) => ({
  id, category: 'theft', priority: 3, status: 'pending', location: { lat: 51.23, lon: 51.37 },
  units: [], notes: [], possible_duplicates: [], created_ms: 1000, updated_ms: 1000, ...extra,
});
const unit = (id, extra = {}) => ({ id, capabilities: [], status: 'available', ...extra });

test('snapshot replaces state; events upsert; closed incidents leave the queue', () => {
  const s = new Store();
  s.applySubscribed({ epoch: 'e1', seq: 10, recovered: false, incidents: [inc('A'), inc('B', { priority: 1 })], units: [unit('P-1')] });
  assert.deepEqual(s.queue().map((i) => i.id), ['B', 'A']);
  assert.equal(s.applyEvent({ seq: 11, topic: 'incidents', change: 'dispatched', incident: inc('A', { status: 'dispatched', units: ['P-1'], updated_ms: 3000 }) }), true);
  assert.equal(s.incidents.get('A').status, 'dispatched');
  s.applyEvent({ seq: 12, topic: 'incidents', change: 'closed', incident: inc('A', { status: 'closed' }) });
  assert.deepEqual(s.queue().map((i) => i.id), ['B']);
  assert.equal(s.incident('A').status, 'closed');
  assert.deepEqual(s.cursor(), { epoch: 'e1', seq: 12 });
});

test('replayed or repeated events are applied once', () => {
  const s = new Store();
  s.applySubscribed({ epoch: 'e1', seq: 5, recovered: false, incidents: [], units: [] });
  s.applyEvent({ seq: 6, topic: 'incidents', change: 'created', incident: inc('A') });
  s.applyEvent({ seq: 7, topic: 'incidents', change: 'closed', incident: inc('A', { status: 'closed' }) });
  // A stale copy of seq 6 after the close must not resurrect the row.
  assert.equal(s.applyEvent({ seq: 6, topic: 'incidents', change: 'created', incident: inc('A') }), false);
  assert.equal(s.incidents.size, 0);
  // Resume recovered: state kept, replay continues above the cursor.
  assert.equal(s.applySubscribed({ epoch: 'e1', seq: 9, recovered: true }), false);
  s.applyEvent({ seq: 8, topic: 'incidents', change: 'created', incident: inc('C') });
  assert.deepEqual(s.queue().map((i) => i.id), ['C']);
  // Not recovered (new epoch): the snapshot replaces everything.
  assert.equal(s.applySubscribed({ epoch: 'e2', seq: 3, recovered: false, incidents: [inc('D')], units: [] }), true);
  assert.deepEqual(s.queue().map((i) => i.id), ['D']);
  assert.deepEqual(s.cursor(), { epoch: 'e2', seq: 3 });
});

test('positions never move a unit backwards, and events keep the newer fix', () => {
  const s = new Store();
  s.applySubscribed({ epoch: 'e', seq: 0, recovered: false, incidents: [], units: [unit('P-1', { location: { lat: 1, lon: 1 }, location_ms: 100 })] });
  assert.equal(s.applyPositions([{ unit_id: 'P-1', lat: 2, lon: 2, at_ms: 50 }]), 0);
  assert.equal(s.applyPositions([{ unit_id: 'P-1', lat: 3, lon: 3, at_ms: 200 }]), 1);
  assert.deepEqual(s.units.get('P-1').location, { lat: 3, lon: 3 });
  s.applyEvent({ seq: 1, topic: 'units', change: 'status', unit: unit('P-1', { status: 'busy', location: { lat: 1, lon: 1 }, location_ms: 100 }) });
  assert.equal(s.units.get('P-1').status, 'busy');
  assert.deepEqual(s.units.get('P-1').location, { lat: 3, lon: 3 });
});

test('figures: open by priority, units, medians from events in the last hour', () => {
  const s = new Store();
  const now = 10_000_000;
  s.applySubscribed({ epoch: 'e', seq: 0, recovered: false, incidents: [], units: [unit('P-1'), unit('P-2', { status: 'off_duty' })] });
  s.applyEvent({ seq: 1, change: 'created', incident: inc('A', { created_ms: now - 60_000, updated_ms: now - 60_000 }) });
  s.applyEvent({ seq: 2, change: 'dispatched', incident: inc('A', { status: 'dispatched', units: ['P-1'], created_ms: now - 60_000, updated_ms: now - 50_000 }) });
  s.applyEvent({ seq: 3, change: 'on_scene', incident: inc('A', { status: 'on_scene', units: ['P-1'], created_ms: now - 60_000, updated_ms: now - 20_000 }) });
  s.applyEvent({ seq: 4, change: 'created', incident: inc('B', { priority: 1, created_ms: now, updated_ms: now }) });
  const f = s.figures(now);
  assert.equal(f.openTotal, 2);
  assert.equal(f.open[1], 1);
  assert.equal(f.open[3], 1);
  assert.equal(f.unitsAvailable, 1);
  assert.equal(f.unitsTotal, 2);
  assert.equal(f.medianDispatchMs, 10_000);
  assert.equal(f.medianArrivalMs, 40_000);
  assert.equal(s.figures(now + 2 * 3600_000).medianDispatchMs, null, 'older than an hour drops out');
  assert.equal(median([3, 1, 2, 10]), 2.5);
});

test('an officer emergency is raised once, from the incident or the event', () => {
  const s = new Store();
  s.applySubscribed({ epoch: 'e', seq: 0, recovered: false, incidents: [], units: [] });
  s.applyEvent({ seq: 1, change: 'emergency', incident: inc('E', { category: 'officer_emergency', priority: 1 }) });
  s.applyEvent({ seq: 2, change: 'dispatched', incident: inc('E', { category: 'officer_emergency', priority: 1, status: 'dispatched' }) });
  assert.equal(s.emergencies.length, 1);
  assert.equal(s.emergencies[0].incident_id, 'E');
});

test('shifts: who is on duty now, whose shift comes next, who is past it on a call', () => {
  const s = new Store();
  // 2025-11-28 02:30 UTC = 07:30 in Uralsk (UTC+5).
  const now = Date.UTC(2025, 10, 28, 2, 30);
  s.applySubscribed({
    epoch: 'e1', seq: 1, recovered: false, incidents: [], units: [
      unit('NIGHT', { on_duty: '20:00-08:00', status: 'en_route', shift_ended: false }),
      unit('DAY-1', { on_duty: '08:00-20:00', status: 'off_duty' }),
      unit('DAY-2', { on_duty: '08:00-20:00', status: 'off_duty' }),
      unit('NOON', { on_duty: '12:00-00:00', status: 'off_duty' }),
      unit('LATE', { on_duty: '20:00-08:00', status: 'on_scene', shift_ended: true, incident_id: 'I-1' }),
      unit('SICK', { status: 'off_duty' }),
    ],
  });
  const sh = s.shifts(now, 300);
  assert.deepEqual(sh.onDuty.map((u) => u.id).sort(), ['LATE', 'NIGHT']);
  assert.equal(sh.next.at, '08:00');
  assert.deepEqual(sh.next.units.map((u) => u.id), ['DAY-1', 'DAY-2']);
  assert.deepEqual(sh.ended.map((u) => u.id), ['LATE']);
  // At 08:30 local the next start is noon (08:00 has passed: tomorrow).
  assert.equal(s.shifts(now + 60 * 60000, 300).next.at, '12:00');
  // Without the offset it is 02:30 local: 08:00 is next.
  assert.equal(s.shifts(now, 0).next.at, '08:00');
});

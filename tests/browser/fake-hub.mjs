// A small stand-in for the opcenter hub, for working on the console while the real
// server is not there yet, and for `OPCENTER_FAKE=1 node --test tests/browser/`.
//
// Owns: just enough of PROTOCOL.md (JSON only) to drive the console: hello,
// subscribe with since/resume, incident.create/update/assign/close/note/recommend,
// unit.status/position, assignment.ack, events and positions. Tokens are JWTs whose
// signature it does NOT check. Must never: be mistaken for the server: the real
// test runs against the real binary unless OPCENTER_FAKE is set.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
const ASSETS = path.resolve(here, '../../crates/opcenter-hub/assets/console');
const R = 6371008.8;

function distance(a, b) {
  const rad = Math.PI / 180;
  const dlat = (b.lat - a.lat) * rad;
  const dlon = (b.lon - a.lon) * rad;
  const h = Math.sin(dlat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dlon / 2) ** 2;
  return 2 * R * Math.asin(Math.min(1, Math.sqrt(h)));
}

export function fakeToken(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}.fake`;
}

export async function startFakeHub({ port = 0, config = null } = {}) {
  const epoch = 'fake-' + Date.now().toString(36);
  let seq = 0;
  let nextInc = 1;
  const history = [];
  const incidents = new Map();
  const units = new Map();
  const sessions = new Set();

  const types = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    let file = null;
    if (url.pathname === '/') file = 'index.html';
    else if (url.pathname.startsWith('/console/')) file = path.basename(url.pathname);
    if (file && fs.existsSync(path.join(ASSETS, file))) {
      res.writeHead(200, { 'content-type': types[file.split('.').pop()] || 'application/octet-stream' });
      res.end(fs.readFileSync(path.join(ASSETS, file)));
      return;
    }
    if (url.pathname === '/v1/console/config' && config) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(config));
      return;
    }
    const m = url.pathname.match(/^\/v1\/incidents\/(.+)$/);
    if (m && incidents.has(decodeURIComponent(m[1]))) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ incident: incidents.get(decodeURIComponent(m[1])) }));
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 'not_found', message: 'no such thing' } }));
  });
  const wss = new WebSocketServer({ server, path: '/v1/ws' });

  function publish(topic, change, body) {
    const ev = { type: 'event', seq: ++seq, topic, change, ...body };
    history.push(ev);
    for (const s of sessions) {
      if (s.topics.has(topic)) s.send(ev);
      else if (topic === 'assignments' && s.topics.has('assignments')) s.send(ev);
    }
    return ev;
  }
  const pubIncident = (change, inc) => {
    publish('incidents', change, { incident: structuredClone(inc) });
    for (const uid of inc.units) {
      for (const s of sessions) if (s.claims.role === 'unit' && s.claims.unit === uid && s.topics.has('assignments')) {
        s.send({ type: 'event', seq, topic: 'assignments', change, incident: structuredClone(inc) });
      }
    }
  };
  const pubUnit = (change, u) => publish('units', change, { unit: structuredClone(u) });

  function eligible(inc) {
    return [...units.values()]
      .filter((u) => u.status === 'available' && u.location && !(inc.declined_by || []).includes(u.id))
      .map((u) => ({ unit_id: u.id, distance_m: distance(u.location, inc.location) }))
      .sort((a, b) => a.distance_m - b.distance_m);
  }

  function assignUnit(inc, u, now) {
    if (u.incident_id && u.incident_id !== inc.id) {
      const old = incidents.get(u.incident_id);
      if (old) {
        old.units = old.units.filter((x) => x !== u.id);
        if (!old.units.length) old.status = 'pending';
        old.updated_ms = now;
        pubIncident('updated', old);
      }
    }
    inc.units.push(u.id);
    if (inc.status === 'pending') inc.status = 'dispatched';
    inc.updated_ms = now;
    u.status = 'dispatched';
    u.incident_id = inc.id;
    pubUnit('dispatched', u);
    pubIncident('dispatched', inc);
  }

  function autoDispatch(inc, now) {
    if (inc.dispatch === 'manual') return;
    while (inc.units.length < inc.units_needed) {
      const c = eligible(inc)[0];
      if (!c) break;
      assignUnit(inc, units.get(c.unit_id), now);
    }
  }

  function handle(s, msg) {
    const reply = (extra = {}) => msg.id != null && s.send({ type: 'ok', id: msg.id, ...extra });
    const fail = (code, message) => s.send({ type: 'error', id: msg.id ?? null, code, message });
    const now = Date.now();
    if (!s.claims) {
      if (msg.type !== 'hello') { fail('unauthenticated', 'hello first'); s.ws.close(4001); return; }
      try {
        s.claims = JSON.parse(Buffer.from(String(msg.token).split('.')[1], 'base64url').toString());
      } catch {
        fail('unauthorized', 'bad token'); s.ws.close(4001); return;
      }
      const extra = {};
      if (s.claims.role === 'unit') {
        if (!units.has(s.claims.unit)) {
          const u = { id: s.claims.unit, callsign: s.claims.callsign, capabilities: s.claims.caps || [], status: 'off_duty' };
          units.set(u.id, u);
          pubUnit('created', u);
        }
        extra.unit = units.get(s.claims.unit);
        const cur = extra.unit.incident_id ? incidents.get(extra.unit.incident_id) : null;
        extra.incident = cur || null;
      }
      reply({ session: 's' + Math.random().toString(36).slice(2), role: s.claims.role, epoch, seq, ...extra });
      return;
    }
    const role = s.claims.role;
    const needInc = () => {
      const inc = incidents.get(msg.incident_id);
      if (!inc) fail('not_found', `no incident ${msg.incident_id}`);
      return inc;
    };
    switch (msg.type) {
      case 'ping': return reply();
      case 'subscribe': {
        s.topics = new Set(msg.topics || []);
        if (msg.since && msg.since.epoch === epoch && msg.since.seq <= seq) {
          reply({ epoch, seq, recovered: true });
          for (const ev of history) if (ev.seq > msg.since.seq && s.topics.has(ev.topic)) s.send(ev);
        } else {
          reply({
            epoch, seq, recovered: false,
            incidents: [...incidents.values()].filter((i) => i.status !== 'closed'),
            units: [...units.values()],
          });
        }
        return;
      }
      case 'incident.create': {
        if (role !== 'dispatcher') return fail('forbidden', 'dispatchers only');
        if (!msg.location || typeof msg.location.lat !== 'number') return fail('bad_request', 'location required');
        if (!(msg.priority >= 1 && msg.priority <= 5)) return fail('bad_request', 'priority 1..5');
        if (msg.key) {
          const prev = [...incidents.values()].find((i) => i.key === msg.key);
          if (prev) return reply({ incident: prev });
        }
        const dups = [...incidents.values()].filter((i) => i.status !== 'closed' && i.category === msg.category && distance(i.location, msg.location) < 300).map((i) => i.id);
        const inc = {
          id: `INC-${String(nextInc++).padStart(4, '0')}`, key: msg.key, category: msg.category, priority: msg.priority,
          status: 'pending', location: msg.location, address: msg.address, description: msg.description,
          source: msg.source || 'call', units: [], required: msg.required || [], units_needed: msg.units_needed || 1,
          notes: [], possible_duplicates: dups, dispatch: msg.dispatch || 'auto', created_ms: now, updated_ms: now,
        };
        incidents.set(inc.id, inc);
        pubIncident('created', inc);
        autoDispatch(inc, now + 1);
        return reply({ incident: inc });
      }
      case 'incident.recommend': {
        const inc = needInc(); if (!inc) return;
        const count = msg.count || 3;
        const list = eligible(inc).slice(0, count);
        const extra = list.length < count ? { shortfall: 'no_units_available' } : {};
        return reply({ candidates: list, ...extra });
      }
      case 'incident.assign': {
        const inc = needInc(); if (!inc) return;
        const u = units.get(msg.unit_id);
        if (!u) return fail('not_found', 'no such unit');
        if (inc.status === 'closed') return fail('conflict', 'incident closed');
        if (u.status !== 'available' && !msg.force) return fail('conflict', `unit ${u.id} is ${u.status}`);
        assignUnit(inc, u, now);
        return reply({ incident: inc });
      }
      case 'incident.close': {
        const inc = needInc(); if (!inc) return;
        if (inc.status === 'closed') return fail('conflict', 'already closed');
        inc.status = 'closed'; inc.disposition = msg.disposition; inc.updated_ms = now;
        for (const uid of inc.units) {
          const u = units.get(uid);
          if (u) { u.status = 'available'; delete u.incident_id; pubUnit('status', u); }
        }
        pubIncident('closed', inc);
        return reply({ incident: inc });
      }
      case 'incident.update': {
        if (role !== 'dispatcher') return fail('forbidden', 'dispatchers only');
        const inc = needInc(); if (!inc) return;
        if (inc.status === 'closed') return fail('conflict', 'incident closed');
        if (msg.priority != null && !(msg.priority >= 1 && msg.priority <= 5)) return fail('bad_request', 'priority 1..5');
        if (msg.category != null && !String(msg.category).trim()) return fail('bad_request', 'category must not be empty');
        for (const f of ['category', 'priority', 'location', 'address', 'description']) if (msg[f] !== undefined) inc[f] = msg[f];
        inc.updated_ms = now;
        pubIncident('updated', inc);
        return reply({ incident: inc });
      }
      case 'incident.note': {
        const inc = needInc(); if (!inc) return;
        inc.notes.push({ at_ms: now, by: s.claims.sub, text: msg.text }); inc.updated_ms = now;
        pubIncident('noted', inc);
        return reply({ incident: inc });
      }
      case 'unit.status': {
        const id = role === 'unit' ? s.claims.unit : msg.unit_id;
        const u = units.get(id); if (!u) return fail('not_found', 'no such unit');
        const free = ['available', 'busy', 'off_duty'].includes(msg.status);
        if (free && u.incident_id) {
          if (role === 'unit') return fail('conflict', 'close or decline your incident first');
          // A dispatcher takes the unit off its incident (manual ones go back to pending).
          const inc = incidents.get(u.incident_id);
          delete u.incident_id;
          if (inc) {
            inc.units = inc.units.filter((x) => x !== u.id);
            if (!inc.units.length) inc.status = 'pending';
            inc.updated_ms = now;
            u.status = msg.status;
            pubUnit('status', u);
            pubIncident('updated', inc);
            autoDispatch(inc, now);
            return reply({ unit: u });
          }
        }
        u.status = msg.status;
        if (msg.status === 'on_scene' && u.incident_id) {
          const inc = incidents.get(u.incident_id);
          inc.status = 'on_scene'; inc.updated_ms = now; pubIncident('on_scene', inc);
        }
        pubUnit('status', u);
        if (msg.status === 'available') {
          const pending = [...incidents.values()].filter((i) => i.status === 'pending').sort((a, b) => a.priority - b.priority || a.created_ms - b.created_ms);
          for (const inc of pending) autoDispatch(inc, now);
        }
        return reply({ unit: u });
      }
      case 'unit.position': {
        if (role !== 'unit') return fail('forbidden', 'units only');
        const u = units.get(s.claims.unit);
        const at = msg.at_ms ?? now;
        if (u.location_ms && at < u.location_ms) return reply();
        u.location = { lat: msg.lat, lon: msg.lon }; u.location_ms = at;
        for (const o of sessions) if (o.topics.has('positions')) {
          o.send({ type: 'positions', items: [{ unit_id: u.id, lat: msg.lat, lon: msg.lon, heading: msg.heading, speed: msg.speed, at_ms: at }] });
        }
        if (u.status === 'available') {
          const pending = [...incidents.values()].filter((i) => i.status === 'pending');
          for (const inc of pending) autoDispatch(inc, now);
        }
        return reply();
      }
      case 'assignment.ack': {
        const inc = needInc(); if (!inc) return;
        const u = units.get(s.claims.unit);
        if (!inc.units.includes(u.id)) return fail('forbidden', 'not your incident');
        inc.status = 'en_route'; inc.updated_ms = now; u.status = 'en_route';
        pubUnit('acknowledged', u); pubIncident('acknowledged', inc);
        return reply({ incident: inc });
      }
      case 'unit.emergency': {
        if (role !== 'unit') return fail('forbidden', 'units only');
        const u = units.get(s.claims.unit);
        if (!msg.active) return reply();
        const loc = msg.location || u.location;
        const inc = {
          id: `INC-${String(nextInc++).padStart(4, '0')}`, category: 'officer_emergency', priority: 1, status: 'pending',
          location: loc, source: 'patrol', units: [], required: [], units_needed: 2, notes: [], possible_duplicates: [],
          dispatch: 'auto', created_ms: now, updated_ms: now, description: `emergency button ${u.id}`,
        };
        incidents.set(inc.id, inc);
        publish('incidents', 'emergency', { incident: structuredClone(inc) });
        const others = eligible(inc).filter((c) => c.unit_id !== u.id).slice(0, 2);
        for (const c of others) assignUnit(inc, units.get(c.unit_id), now);
        return reply({ incident: inc });
      }
      default:
        return fail('unknown_type', `unknown type ${msg.type}`);
    }
  }

  wss.on('connection', (ws) => {
    const s = { ws, claims: null, topics: new Set(), send: (m) => ws.readyState === 1 && ws.send(JSON.stringify(m)) };
    sessions.add(s);
    ws.on('message', (data) => {
      let msg;
      try { msg = JSON.parse(String(data)); } catch { s.send({ type: 'error', id: null, code: 'bad_request', message: 'bad json' }); return; }
      handle(s, msg);
    });
    ws.on('close', () => sessions.delete(s));
  });

  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  const addr = server.address();
  return {
    url: `http://127.0.0.1:${addr.port}`,
    dropAll: () => { for (const s of sessions) s.ws.terminate(); },
    close: () => new Promise((r) => { for (const s of sessions) s.ws.terminate(); wss.close(); server.close(() => r()); }),
  };
}

// `node tests/browser/fake-hub.mjs [port]` runs it by hand and prints tokens.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const hub = await startFakeHub({
    port: Number(process.argv[2] || 0),
    config: { center: { lat: 51.23, lon: 51.37 }, extent: { south: 51.18, west: 51.30, north: 51.28, east: 51.44 }, districts: null },
  });
  console.log(`listening on ${hub.url.replace('http://', '')}`);
  console.log('dispatcher:', `${hub.url}/?token=${fakeToken({ sub: 'd1', role: 'dispatcher' })}`);
  console.log('supervisor:', `${hub.url}/?token=${fakeToken({ sub: 's1', role: 'supervisor' })}`);
}

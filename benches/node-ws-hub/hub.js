// Fan-out peer of opcenter for `docs/performance.md`: a small Node.js broadcast hub
// built on npm `ws`, batching its sends, that speaks just enough of opcenter's wire
// contract (shared/PROTOCOL.md) for `opcenter sim --fanout --no-verify` to drive it
// exactly like opcenter:
//   hello           -> ok {session, role, epoch, seq}     (the token is NOT verified)
//   subscribe       -> ok {epoch, seq, recovered:false, incidents:[], units:[]}
//   incident.create -> ok {incident}, then one event
//                      {"type":"event","seq":N,"topic":"incidents","change":"created","incident":{...}}
//                      broadcast to every session subscribed to "incidents"
//   ping            -> ok
// It does none of opcenter's work: no JWT check, no dispatch, no journal or fsync,
// no history, no MessagePack (JSON text frames only). Each event is serialised once,
// to a Buffer (a string would be converted to bytes again on every send), and the
// same Buffer is sent to every subscriber as a text frame.
//
// Batching: events are queued and flushed on setImmediate; a flush corks each
// subscriber's socket, writes every queued event, and uncorks, so a burst costs one
// write syscall per socket per flush instead of one per event.
//
// Must never: listen on anything but loopback.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 8103);
const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404, { 'content-type': 'text/plain' });
  res.end(req.url === '/healthz' ? 'ok\n' : 'not found\n');
});
const wss = new WebSocketServer({ server, path: '/v1/ws', perMessageDeflate: false, maxPayload: 65536 });

const epoch = 'node-' + Date.now().toString(36);
let seq = 0;
let nextIncident = 1;
let nextSession = 1;
const subscribers = new Set();
let queue = [];
let flushScheduled = false;
const TEXT = { binary: false };

function flush() {
  flushScheduled = false;
  const batch = queue;
  queue = [];
  for (const ws of subscribers) {
    if (ws.readyState !== ws.OPEN) continue;
    ws._socket.cork();
    for (const msg of batch) ws.send(msg, TEXT);
    ws._socket.uncork();
  }
}

function broadcast(msg) {
  queue.push(msg);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
}

function reply(ws, obj) {
  ws.send(JSON.stringify(obj));
}

wss.on('connection', (ws) => {
  let hello = false;
  ws.on('message', (data, isBinary) => {
    let m;
    try {
      if (isBinary) throw new Error('this peer speaks JSON only');
      m = JSON.parse(data.toString());
    } catch (e) {
      return reply(ws, { type: 'error', id: null, code: 'bad_request', message: String(e.message) });
    }
    const id = m.id === undefined ? null : m.id;
    if (!hello && m.type !== 'hello') {
      reply(ws, { type: 'error', id, code: 'unauthenticated', message: 'hello first' });
      return ws.close(4001);
    }
    switch (m.type) {
      case 'hello':
        hello = true;
        return reply(ws, { type: 'ok', id, session: 's' + nextSession++, role: 'dispatcher', epoch, seq });
      case 'subscribe':
        if (Array.isArray(m.topics) && m.topics.includes('incidents')) subscribers.add(ws);
        return reply(ws, { type: 'ok', id, epoch, seq, recovered: false, incidents: [], units: [] });
      case 'incident.create': {
        const now = Date.now();
        const incident = {
          id: 'N' + nextIncident++, key: m.key, category: m.category, priority: m.priority,
          status: 'pending', location: m.location, description: m.description,
          source: m.source || 'call', units: [], required: m.required || [],
          units_needed: m.units_needed || 1, notes: [], possible_duplicates: [],
          created_ms: now, updated_ms: now,
        };
        if (id !== null) reply(ws, { type: 'ok', id, incident });
        seq += 1;
        return broadcast(Buffer.from(JSON.stringify({ type: 'event', seq, topic: 'incidents', change: 'created', incident })));
      }
      case 'ping':
        return id === null ? undefined : reply(ws, { type: 'ok', id });
      default:
        return reply(ws, { type: 'error', id, code: 'unknown_type', message: String(m.type) });
    }
  });
  ws.on('close', () => subscribers.delete(ws));
  ws.on('error', () => subscribers.delete(ws));
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});

// Open-loop create load for benches/failover.sh: RATE keyed incident.create per
// second spread over CONNS dispatcher sessions on one hub, for SECONDS, then up
// to 30 s for the last replies. Writes one CSV line per create:
// `conn,id,sent_ms,reply_ms,type,code` (reply_ms empty when none came).
// Locations are uniform over a 0.5° square (about 55 x 35 km): each trial's
// creates land among the earlier trials' open incidents at a realistic density,
// not on the same points every trial (ids restart with each run of this script).
//
//   node --experimental-websocket benches/failover-load.mjs HOST:PORT TOKEN RATE SECONDS OUT.csv [CONNS=4]
import { writeFileSync } from "node:fs";

const [addr, token, rateArg, secondsArg, out, connsArg] = process.argv.slice(2);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const conns = Number(connsArg || 4);
const TICK_MS = 10;
const perConn = rate / conns;
const rows = [];
const run = `${process.pid}-${Date.now()}`;

function session(c) {
    return new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${addr}/v1/ws`);
        const sent = new Map();
        let nextId = 1;
        let due0 = 0;
        let timer = null;
        let draining = false;
        let closed = false;
        const finish = () => {
            if (closed) return;
            closed = true;
            clearInterval(timer);
            for (const [id, t] of sent) rows.push([c, id, t, "", "none", ""]);
            try { ws.close(); } catch { /* already closed */ }
            resolve();
        };
        ws.onerror = (e) => (timer ? finish() : reject(new Error(`ws ${addr}: ${e.message || e.type}`)));
        ws.onclose = finish;
        ws.onopen = () => ws.send(JSON.stringify({ type: "hello", token, protocol: 1, id: 0 }));
        ws.onmessage = (m) => {
            const f = JSON.parse(m.data);
            if (f.id === 0) {
                if (f.type !== "ok") return reject(new Error(`hello: ${m.data}`));
                const start = Date.now();
                const until = start + seconds * 1000;
                // Open loop: what is due by the clock, however late a tick comes.
                timer = setInterval(() => {
                    if (Date.now() >= until) {
                        clearInterval(timer);
                        draining = true;
                        if (sent.size === 0) finish();
                        setTimeout(finish, 30000);
                        return;
                    }
                    const due = Math.floor(((Date.now() - start) / 1000) * perConn);
                    for (; due0 < due; due0 += 1) {
                        const id = nextId++;
                        const i = c * 1_000_000 + id;
                        sent.set(id, Date.now());
                        ws.send(JSON.stringify({
                            type: "incident.create", id, category: "theft", priority: 2,
                            key: `fo-${run}-${i}`,
                            location: { lat: 51.0 + Math.random() * 0.5, lon: 51.0 + Math.random() * 0.5 },
                        }));
                    }
                }, TICK_MS);
                return;
            }
            if ((f.type === "ok" || f.type === "error") && sent.has(f.id)) {
                rows.push([c, f.id, sent.get(f.id), Date.now(), f.type, f.code || ""]);
                sent.delete(f.id);
                if (sent.size === 0 && draining) finish();
            }
        };
    });
}

await Promise.all(Array.from({ length: conns }, (_, c) => session(c)));
writeFileSync(out, rows.map((r) => r.join(",")).join("\n") + "\n");

// The real opcenter binary for the node tests: started on a free port with a fresh
// data dir, tokens minted by its own CLI. Shared by console.test.mjs (the page in
// Chromium) and conn.test.mjs (the page's connection logic under node), so both
// test against the server and not against a second implementation of the protocol.
//
// Env: OPCENTER_BIN (default target/debug/opcenter). The server's output goes to
// <out>/<logName>.
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
export const BIN = path.resolve(repo, process.env.OPCENTER_BIN || 'target/debug/opcenter');
const SECRET = 'browser-test-secret-of-at-least-32-bytes';

/** Headless Chromium as the browser tests run it (CHROMIUM, default /usr/bin/chromium). */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  const exe = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!fs.existsSync(exe)) throw new Error(`${exe} missing: apt-get install -y chromium`);
  return chromium.launch({
    executablePath: exe,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * Starts the server; resolves to {url, token(role, sub, unit?), stop()}.
 * `more.dispatch`: extra lines of its [dispatch] table; `more.tail`: extra TOML
 * after it (tables of their own, e.g. [console], [[zones]], [[roster]]).
 */
export async function startRealServer(OUT, logName = 'server.log', more = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`server binary not found at ${BIN}: run \`cargo build\` first or set OPCENTER_BIN`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'opcenter-browser-'));
  const cfg = path.join(dir, 'opcenter.toml');
  fs.writeFileSync(cfg, [
    '[server]',
    'listen = "127.0.0.1:0"',
    '',
    '[storage]',
    `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
    '',
    '[auth]',
    `jwt_secret = "${SECRET}"`,
    '',
    '[dispatch]',
    'ack_timeout_s = 300',
    'max_position_age_s = 3600',
    ...(more.dispatch || []),
    '',
    ...(more.tail || []),
    '',
  ].join('\n'));
  const child = spawn(BIN, ['serve', '--config', cfg], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const log = fs.createWriteStream(path.join(OUT, logName));
  child.stderr.pipe(log);
  const addr = await new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`no "listening on" line within 20 s; stdout so far: ${buf}`)), 20000);
    child.stdout.on('data', (d) => {
      buf += d;
      log.write(d);
      const m = buf.match(/listening on (\S+:\d+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.on('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`server exited early (${code ?? sig}); see ${OUT}/${logName}`)); });
  });
  child.stdout.on('data', (d) => log.write(d));
  const host = addr.startsWith('0.0.0.0') ? addr.replace('0.0.0.0', '127.0.0.1') : addr;
  return {
    url: `http://${host}`,
    token: (role, sub, unit) => mintWithCli(cfg, role, sub, unit),
    stop: async () => {
      if (child.exitCode != null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(t);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `opcenter token …`; falls back to minting HS256 here if the CLI does not take these flags. */
function mintWithCli(cfg, role, sub, unit) {
  const args = ['token', '--config', cfg, '--role', role, '--sub', sub];
  if (unit) args.push('--unit', unit);
  try {
    const out = execFileSync(BIN, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    const jwt = out.split(/\s+/).find((w) => /^[\w-]+\.[\w-]+\.[\w-]+$/.test(w));
    if (jwt) return jwt;
    throw new Error(`no JWT in output: ${out}`);
  } catch (e) {
    console.warn(`# opcenter token failed (${String(e.message).split('\n')[0]}); minting HS256 in the test`);
    return mintHs256({ sub, role, ...(unit ? { unit } : {}) });
  }
}

function mintHs256(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${crypto.createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

/** Resolves to `fn()`'s first truthy value, polled every 200 ms; throws after `timeoutMs`. */
export async function waitFor(fn, what, timeoutMs = 30000) {
  const t0 = Date.now();
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

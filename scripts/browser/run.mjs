// Loads page.html in headless Chromium (driven by playwright-core) once per
// broker URL and waits for it to report PASS or FAIL. Serves the page and the
// MQTT.js browser bundle itself over http://127.0.0.1:<free port>.
//
// Usage: node run.mjs --deps DIR --out DIR [--spki HASH] LABEL=URL...
//   --deps  folder whose node_modules holds playwright-core and mqtt
//   --out   where the screenshots (LABEL.png) go
//   --spki  base64 SHA-256 of the server key's SPKI, passed to Chromium as
//           --ignore-certificate-errors-spki-list (for wss with a throwaway CA)
// Environment: CHROMIUM (default /usr/bin/chromium), BROWSER_TIMEOUT_MS (20000).
import { createRequire } from 'node:module';
import { createServer } from 'node:http';
import { readFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let deps = null, out = '/tmp/shardmq-browser', spki = null;
const runs = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--deps') deps = args[++i];
  else if (args[i] === '--out') out = args[++i];
  else if (args[i] === '--spki') spki = args[++i];
  else if (args[i].includes('=')) {
    const at = args[i].indexOf('=');
    runs.push({ label: args[i].slice(0, at), url: args[i].slice(at + 1) });
  } else { console.error(`unknown argument ${args[i]}`); process.exit(2); }
}
if (!deps || runs.length === 0) { console.error('usage: node run.mjs --deps DIR --out DIR [--spki HASH] LABEL=URL...'); process.exit(2); }
const timeoutMs = Number(process.env.BROWSER_TIMEOUT_MS || 20000);
const require = createRequire(join(deps, 'package.json'));
const { chromium } = require('playwright-core');
const bundle = join(dirname(require.resolve('mqtt/package.json')), 'dist', 'mqtt.min.js');

// The whole run is bounded, whatever hangs.
setTimeout(() => { console.error('browser: FAIL overall deadline passed'); process.exit(1); }, timeoutMs * runs.length + 30000).unref();

const files = {
  '/page.html': [join(here, 'page.html'), 'text/html; charset=utf-8'],
  '/page.js': [join(here, 'page.js'), 'text/javascript; charset=utf-8'],
  '/mqtt.min.js': [bundle, 'text/javascript; charset=utf-8'],
};
const server = createServer((req, res) => {
  const f = files[new URL(req.url, 'http://x').pathname];
  if (!f || req.method !== 'GET') { res.writeHead(404); res.end('not found'); return; }
  res.writeHead(200, { 'content-type': f[1], 'cache-control': 'no-store' });
  res.end(readFileSync(f[0]));
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const base = `http://127.0.0.1:${server.address().port}`;
console.log(`browser: serving the page at ${base}/page.html (MQTT.js ${require('mqtt/package.json').version})`);

const MQTT_TYPES = ['?', 'CONNECT', 'CONNACK', 'PUBLISH', 'PUBACK', 'PUBREC', 'PUBREL', 'PUBCOMP',
  'SUBSCRIBE', 'SUBACK', 'UNSUBSCRIBE', 'UNSUBACK', 'PINGREQ', 'PINGRESP', 'DISCONNECT', 'AUTH'];
// Names the MQTT packets in a WebSocket frame (a frame may carry several, or
// only part of one: then the last name ends in "...").
const describe = (payload) => {
  const b = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const names = [];
  let i = 0;
  while (i < b.length) {
    let len = 0, mul = 1, j = i + 1;
    while (j < b.length && j < i + 5) { len += (b[j] & 127) * mul; mul *= 128; if (!(b[j++] & 128)) break; }
    const end = j + len;
    names.push(MQTT_TYPES[b[i] >> 4] + (end > b.length ? '...' : ''));
    i = end;
  }
  return `${typeof payload === 'string' ? 'text' : 'binary'} ${b.length} bytes${names.length ? ` (${names.join(' + ')})` : ''}`;
};

const chromiumArgs = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
if (spki) chromiumArgs.push(`--ignore-certificate-errors-spki-list=${spki}`);
// A fresh profile per run, removed afterwards.
const profile = mkdtempSync(join(tmpdir(), 'shardmq-chromium-'));
mkdirSync(out, { recursive: true });
let context;
let failures = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: chromiumArgs,
    viewport: { width: 1100, height: 520 },
    timeout: 30000,
  });
  console.log(`browser: launched ${process.env.CHROMIUM || '/usr/bin/chromium'} headless, profile ${profile}`);
  for (const { label, url } of runs) {
    const page = await context.newPage();
    page.on('console', (m) => console.log(`browser: console.${m.type()} ${m.text()}`));
    page.on('pageerror', (e) => console.log(`browser: pageerror ${e.message}`));
    page.on('requestfailed', (r) => console.log(`browser: request failed ${r.url()} ${r.failure()?.errorText}`));
    page.on('websocket', (ws) => {
      console.log(`browser: [${label}] websocket opened ${ws.url()}`);
      ws.on('framesent', (f) => console.log(`browser: [${label}] frame sent ${describe(f.payload)}`));
      ws.on('framereceived', (f) => console.log(`browser: [${label}] frame received ${describe(f.payload)}`));
      ws.on('socketerror', (e) => console.log(`browser: [${label}] websocket error ${e}`));
      ws.on('close', () => console.log(`browser: [${label}] websocket closed`));
    });
    const pageUrl = `${base}/page.html?label=${encodeURIComponent(label)}&url=${encodeURIComponent(url)}`;
    console.log(`browser: [${label}] opening ${pageUrl}`);
    const started = Date.now();
    let title;
    try {
      await page.goto(pageUrl, { timeout: timeoutMs });
      await page.waitForFunction(() => /^(PASS|FAIL)/.test(document.title), null, { timeout: timeoutMs });
      title = await page.title();
    } catch (e) {
      title = `FAIL ${label}: ${e.message.split('\n')[0]}`;
    }
    const shot = join(out, `${label}.png`);
    try {
      await page.screenshot({ path: shot, fullPage: true, timeout: 10000 });
    } catch (e) {
      console.log(`browser: [${label}] screenshot failed: ${e.message.split('\n')[0]}`);
    }
    const ok = title === `PASS ${label}`;
    if (!ok) failures++;
    console.log(`browser: ${ok ? 'PASS' : 'FAIL'} ${label} ${url} in ${Date.now() - started} ms, screenshot ${shot}${ok ? '' : ` (${title})`}`);
    await page.close();
  }
} catch (e) {
  console.log(`browser: FAIL ${e.message.split('\n')[0]}`);
  failures++;
} finally {
  await context?.close().catch(() => {});
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failures ? 1 : 0);

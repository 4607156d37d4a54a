// Interoperability checks with MQTT.js (the npm package `mqtt`), an independent client.
// Usage: node mqttjs_check.js HOST PORT. Prints one line per check and a summary line
// 'N passed, N failed'; exits non-zero on any failure.
const mqtt = require('mqtt');
const [host, port] = [process.argv[2], Number(process.argv[3])];
const url = `mqtt://${host}:${port}`;
let passed = 0, failed = 0;

function connect(opts = {}) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, ...opts });
    c.once('connect', (ack) => { c.connack = ack; resolve(c); });
    c.once('error', reject);
  });
}
function nextMessage(c, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message')), ms);
    c.once('message', (topic, payload, packet) => { clearTimeout(t); resolve(packet); });
  });
}
const rand = () => Math.random().toString(16).slice(2, 10);
async function check(name, f) {
  try { await f(); passed++; console.log(`ok   ${name}`); }
  catch (e) { failed++; console.log(`FAIL ${name}: ${e.message}`); }
}

(async () => {
  await check('QoS 0/1/2 publish and subscribe, granted QoS respected', async () => {
    const t = `interop/${rand()}`;
    for (const pq of [0, 1, 2]) for (const sq of [0, 1, 2]) {
      const s = await connect(), p = await connect();
      await s.subscribeAsync(t, { qos: sq });
      const got = nextMessage(s);
      await p.publishAsync(t, `${pq}${sq}`, { qos: pq });
      const m = await got;
      if (m.payload.toString() !== `${pq}${sq}`) throw new Error('payload');
      if (m.qos !== Math.min(pq, sq)) throw new Error(`qos ${m.qos} for ${pq}/${sq}`);
      await s.endAsync(); await p.endAsync();
    }
  });
  await check('retained message on subscribe has the retain flag', async () => {
    const t = `interop/${rand()}`;
    const p = await connect();
    await p.publishAsync(t, 'kept', { qos: 1, retain: true });
    const s = await connect();
    const got = nextMessage(s);
    await s.subscribeAsync(t, { qos: 1 });
    const m = await got;
    if (!m.retain || m.payload.toString() !== 'kept') throw new Error('retained');
    await p.publishAsync(t, '', { qos: 1, retain: true });
    await s.endAsync(); await p.endAsync();
  });
  await check('persistent session keeps QoS 1 messages while offline', async () => {
    const t = `interop/${rand()}`, clientId = `js-${rand()}`;
    let s = await connect({ clientId, clean: false });
    await s.subscribeAsync(t, { qos: 1 });
    await s.endAsync();
    const p = await connect();
    await p.publishAsync(t, 'later', { qos: 1 });
    await p.endAsync();
    s = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, clientId, clean: false });
    const got = nextMessage(s);
    await new Promise((r) => s.once('connect', (ack) => { s.connack = ack; r(); }));
    if (!s.connack.sessionPresent) throw new Error('session present not set');
    if ((await got).payload.toString() !== 'later') throw new Error('payload');
    await s.endAsync();
    await (await connect({ clientId, clean: true })).endAsync();
  });
  await check('will published when the socket drops', async () => {
    const t = `interop/${rand()}`;
    const s = await connect();
    await s.subscribeAsync(t, { qos: 1 });
    const w = await connect({ will: { topic: t, payload: 'bye', qos: 1, retain: false } });
    const got = nextMessage(s);
    w.stream.destroy();
    if ((await got).payload.toString() !== 'bye') throw new Error('will');
    await s.endAsync();
  });
  console.log(`mqtt.js: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();

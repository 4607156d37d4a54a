// MQTT 5.0 interoperability checks with MQTT.js (the npm package `mqtt`, protocolVersion 5).
// Usage: node mqttjs5_check.js HOST PORT [SECURED_PORT]; SECURED_PORT is a listener with
// a password file where alice's password is 'wonderland' (enhanced authentication,
// SCRAM-SHA-512, is checked there). INTEROP_IDS0 / INTEROP_IDS1 (shard_ids.py) list
// client ids homed on shard 0 and shard 1, so publishers and subscribers sit on both
// shards; without them random ids are used. Prints one line per check and a summary line
// 'N passed, N failed'; exits non-zero on any failure.
const mqtt = require('mqtt');
const crypto = require('crypto');
const [host, port, securedPort] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4] || 0)];
const url = `mqtt://${host}:${port}`;
const pools = [(process.env.INTEROP_IDS0 || '').split(' ').filter(Boolean),
  (process.env.INTEROP_IDS1 || '').split(' ').filter(Boolean)];
let passed = 0, failed = 0;
const rand = () => Math.random().toString(16).slice(2, 10);
const cid = (shard) => pools[shard].shift() || `js5-${rand()}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// `setup` runs on the client before its CONNECT goes (handlers for the CONNACK's exchange).
function connect(shard, opts = {}, setup = () => {}, to = url) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(to, { protocolVersion: 5, reconnectPeriod: 0, clientId: cid(shard), ...opts });
    setup(c);
    c.inbox = [];
    c.waiters = [];
    c.on('message', (topic, payload, packet) => {
      packet.emittedTopic = topic; // the topic MQTT.js resolved (packet.topic is '' for an alias)
      const w = c.waiters.shift();
      if (w) w(packet); else c.inbox.push(packet);
    });
    c.once('connect', (ack) => { c.connack = ack; resolve(c); });
    c.once('error', reject);
  });
}
function nextMessage(c, ms = 5000) {
  if (c.inbox.length) return Promise.resolve(c.inbox.shift());
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { c.waiters.shift(); reject(new Error('no message')); }, ms);
    c.waiters.push((p) => { clearTimeout(t); resolve(p); });
  });
}
async function check(name, f) {
  try { await f(); passed++; console.log(`ok   ${name}`); }
  catch (e) { failed++; console.log(`FAIL ${name}: ${e.message}`); }
}
const topic = () => `interop5/js-${rand()}`;
function expect(cond, what) { if (!cond) throw new Error(what); }

(async () => {
  await check('CONNACK reason 0 with Topic Alias Maximum (properties printed)', async () => {
    const c = await connect(0);
    const p = c.connack.properties || {};
    console.log(`     CONNACK: reasonCode ${c.connack.reasonCode}, properties ${JSON.stringify(p)}`);
    await c.endAsync();
    expect(c.connack.reasonCode === 0, `reason ${c.connack.reasonCode}`);
    expect(p.topicAliasMaximum >= 1, 'no topicAliasMaximum');
  });

  await check('user properties, content type, correlation data, payload format cross-shard', async () => {
    const t = topic();
    const s = await connect(1);
    await s.subscribeAsync(t, { qos: 1 });
    const p = await connect(0);
    const properties = {
      userProperties: { a: ['1', '3'], b: '2' }, contentType: 'application/json',
      responseTopic: `${t}/reply`, correlationData: Buffer.from([0, 1, 2, 255]), payloadFormatIndicator: true,
    };
    await p.publishAsync(t, '{"x":1}', { qos: 1, properties });
    const m = await nextMessage(s);
    const mp = m.properties || {};
    await s.endAsync(); await p.endAsync();
    expect(JSON.stringify(mp.userProperties) === JSON.stringify({ a: ['1', '3'], b: '2' }),
      `userProperties ${JSON.stringify(mp.userProperties)}`);
    expect(mp.contentType === 'application/json', `contentType ${mp.contentType}`);
    expect(mp.responseTopic === `${t}/reply`, `responseTopic ${mp.responseTopic}`);
    expect(Buffer.compare(mp.correlationData, Buffer.from([0, 1, 2, 255])) === 0, 'correlationData');
    expect(mp.payloadFormatIndicator === true, `payloadFormatIndicator ${mp.payloadFormatIndicator}`);
  });

  await check('topic aliases from the client: explicit topicAlias, then alias only', async () => {
    const t = topic();
    const s = await connect(1);
    await s.subscribeAsync(t, { qos: 1 });
    const p = await connect(0);
    await p.publishAsync(t, 'one', { qos: 1, properties: { topicAlias: 2 } });
    await p.publishAsync('', 'two', { qos: 1, properties: { topicAlias: 2 } });
    const a = await nextMessage(s), b = await nextMessage(s);
    await s.endAsync(); await p.endAsync();
    expect(a.topic === t && b.topic === t, `topics ${a.topic} ${b.topic}`);
    expect(b.payload.toString() === 'two', 'payload');
  });

  await check('topic aliases from the client: autoUseTopicAlias / autoAssignTopicAlias', async () => {
    const ts = [topic(), topic(), topic()];
    const s = await connect(1);
    await s.subscribeAsync('interop5/#', { qos: 1 });
    const p = await connect(0, { autoAssignTopicAlias: true, autoUseTopicAlias: true });
    for (let i = 0; i < 3; i++) for (const t of ts) await p.publishAsync(t, `${i}`, { qos: 1 });
    const got = [];
    for (let i = 0; i < 9; i++) got.push((await nextMessage(s)).topic);
    await s.endAsync(); await p.endAsync();
    const want = [0, 1, 2].flatMap(() => ts);
    expect(JSON.stringify(got) === JSON.stringify(want), `got ${got}`);
  });

  await check('topic aliases to a subscriber with topicAliasMaximum 2: MQTT.js resolves them', async () => {
    const ts = [topic(), topic(), topic()];
    const s = await connect(0, { properties: { topicAliasMaximum: 2 } });
    await s.subscribeAsync('interop5/#', { qos: 1 });
    const raw = [];
    s.on('packetreceive', (pk) => {
      if (pk.cmd === 'publish') raw.push([pk.topic, pk.properties && pk.properties.topicAlias]);
    });
    const p = await connect(1);
    for (let i = 0; i < 3; i++) for (const t of ts) await p.publishAsync(t, `${i}`, { qos: 1 });
    const got = [];
    for (let i = 0; i < 9; i++) got.push((await nextMessage(s)).emittedTopic);
    await s.endAsync(); await p.endAsync();
    const want = [0, 1, 2].flatMap(() => ts);
    expect(JSON.stringify(got) === JSON.stringify(want), `resolved ${got}`);
    expect(raw.some(([t]) => t === ''), `no publish by alias only: ${JSON.stringify(raw)}`);
    expect(raw.every(([, a]) => a === undefined || (a >= 1 && a <= 2)), `alias above 2: ${JSON.stringify(raw)}`);
  });

  await check('no local: own message not received, the other client gets it', async () => {
    const t = topic();
    const me = await connect(0), other = await connect(1);
    await me.subscribeAsync(t, { qos: 1, nl: true });
    await other.subscribeAsync(t, { qos: 1 });
    await me.publishAsync(t, 'mine', { qos: 1 });
    expect((await nextMessage(other)).payload.toString() === 'mine', 'other');
    await sleep(800);
    await me.endAsync(); await other.endAsync();
    expect(me.inbox.length === 0, 'own message came back');
  });

  await check('retain handling 2: no retained message on subscribe', async () => {
    const t = topic();
    const p = await connect(0);
    await p.publishAsync(t, 'kept', { qos: 1, retain: true });
    const s = await connect(1);
    await s.subscribeAsync(t, { qos: 1, rh: 2 });
    await sleep(800);
    const sent = s.inbox.length;
    await p.publishAsync(t, '', { qos: 1, retain: true });
    await s.endAsync(); await p.endAsync();
    expect(sent === 0, 'retained message sent with rh 2');
  });

  await check('retain as published: RETAIN 1 kept on a live forward ([MQTT-3.3.1-13])', async () => {
    const t = topic();
    const s = await connect(1);
    await s.subscribeAsync(t, { qos: 1, rap: true });
    const p = await connect(0);
    await p.publishAsync(t, 'live', { qos: 1, retain: true });
    const m = await nextMessage(s);
    await p.publishAsync(t, '', { qos: 1, retain: true });
    await s.endAsync(); await p.endAsync();
    expect(m.payload.toString() === 'live' && m.retain, `live forward retain=${m.retain} with rap`);
  });

  await check('session and message expiry: 1 s message dropped, 10 s message kept', async () => {
    const t = topic(), clientId = cid(1);
    let s = await connect(1, { clientId, clean: true, properties: { sessionExpiryInterval: 30 } });
    await s.subscribeAsync(t, { qos: 1 });
    await s.endAsync();
    const p = await connect(0);
    await p.publishAsync(t, 'short', { qos: 1, properties: { messageExpiryInterval: 1 } });
    await p.publishAsync(t, 'long', { qos: 1, properties: { messageExpiryInterval: 10 } });
    await p.endAsync();
    await sleep(2500);
    s = await connect(1, { clientId, clean: false, properties: { sessionExpiryInterval: 30 } });
    const m = await nextMessage(s);
    await sleep(500);
    const more = s.inbox.length;
    await s.endAsync();
    await (await connect(1, { clientId, clean: true })).endAsync();
    expect(s.connack.sessionPresent, 'session not present');
    expect(m.payload.toString() === 'long' && more === 0, `got ${m.payload} then ${more} more`);
    expect(m.properties.messageExpiryInterval <= 8, `remaining ${m.properties.messageExpiryInterval}`);
  });

  await check('reason codes: SUBACK granted, UNSUBACK 0x11 then 0x00, PUBACK 0', async () => {
    const c = await connect(0);
    const granted = await c.subscribeAsync('interop5/js-there', { qos: 1 });
    const un = await c.unsubscribeAsync(['interop5/js-never', 'interop5/js-there']);
    const codes = un && (un.granted || un.reasonCodes);
    let puback;
    c.once('packetreceive', (pk) => { if (pk.cmd === 'puback') puback = pk.reasonCode; });
    await c.publishAsync('interop5/js-there', 'x', { qos: 1 });
    await c.endAsync();
    expect(granted[0].qos === 1, `SUBACK ${JSON.stringify(granted)}`);
    expect(JSON.stringify(codes) === JSON.stringify([0x11, 0]), `UNSUBACK ${JSON.stringify(codes)}`);
    expect(puback === 0 || puback === 0x10, `PUBACK ${puback}`);
  });

  await check('request/response between two clients on different shards', async () => {
    const req = topic(), reply = topic();
    const responder = await connect(0), requester = await connect(1);
    responder.on('message', (tp, payload, pk) => {
      responder.publish(pk.properties.responseTopic, `re:${payload}`,
        { qos: 1, properties: { correlationData: pk.properties.correlationData } });
    });
    await responder.subscribeAsync(req, { qos: 1 });
    await requester.subscribeAsync(reply, { qos: 1 });
    await requester.publishAsync(req, 'ping', { qos: 1, properties: { responseTopic: reply, correlationData: Buffer.from('c-7') } });
    const m = await nextMessage(requester);
    await responder.endAsync(); await requester.endAsync();
    expect(m.payload.toString() === 're:ping', `payload ${m.payload}`);
    expect(m.properties.correlationData.toString() === 'c-7', 'correlationData');
  });

  // Enhanced authentication with SCRAM-SHA-512 (RFC 5802 with SHA-512), the client side
  // written here with node's crypto: AUTH 0x18 both ways through MQTT.js's handleAuth.
  function scram(user, password) {
    const nonce = crypto.randomBytes(18).toString('base64');
    const bare = `n=${user},r=${nonce}`;
    const s = { first: Buffer.from(`n,,${bare}`) };
    s.final = (serverFirst) => {
      const f = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
      if (!f.r.startsWith(nonce)) throw new Error('server nonce does not extend ours');
      const salted = crypto.pbkdf2Sync(password, Buffer.from(f.s, 'base64'), Number(f.i), 64, 'sha512');
      const clientKey = crypto.createHmac('sha512', salted).update('Client Key').digest();
      const storedKey = crypto.createHash('sha512').update(clientKey).digest();
      const withoutProof = `c=biws,r=${f.r}`;
      s.authMessage = `${bare},${serverFirst},${withoutProof}`;
      const sig = crypto.createHmac('sha512', storedKey).update(s.authMessage).digest();
      const proof = Buffer.from(clientKey.map((b, i) => b ^ sig[i]));
      s.serverKey = crypto.createHmac('sha512', salted).update('Server Key').digest();
      return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`);
    };
    s.verify = (serverFinal) => serverFinal ===
      `v=${crypto.createHmac('sha512', s.serverKey).update(s.authMessage).digest('base64')}`;
    return s;
  }
  const METHOD = 'SCRAM-SHA-512';
  async function scramConnect(password) {
    let exchange = scram('alice', password);
    const properties = { authenticationMethod: METHOD, authenticationData: exchange.first };
    const c = await connect(1, { properties }, (c) => {
      c.reauths = [];
      c.handleAuth = (packet, cb) => {
        if (packet.reasonCode === 0) { // re-authentication done
          c.reauths.push(exchange.verify(packet.properties.authenticationData.toString()));
          return cb();
        }
        const data = exchange.final(packet.properties.authenticationData.toString());
        cb(null, { cmd: 'auth', reasonCode: 0x18, properties: { authenticationMethod: METHOD, authenticationData: data } });
      };
      c.reauthenticate = () => {
        exchange = scram('alice', password);
        c._sendPacket({ cmd: 'auth', reasonCode: 0x19, properties: { authenticationMethod: METHOD, authenticationData: exchange.first } });
      };
    }, `mqtt://${host}:${securedPort}`);
    c.proved = exchange.verify((c.connack.properties.authenticationData || '').toString());
    return c;
  }
  if (securedPort) {
    await check('SCRAM-SHA-512 enhanced authentication, server proven, then re-authentication', async () => {
      const c = await scramConnect('wonderland');
      expect(c.connack.reasonCode === 0, `reason ${c.connack.reasonCode}`);
      expect(c.connack.properties.authenticationMethod === METHOD, 'no method in CONNACK');
      expect(c.proved, 'the server signature in CONNACK does not verify');
      c.reauthenticate();
      for (let i = 0; i < 50 && !c.reauths.length; i++) await sleep(100);
      const t = topic();
      await c.subscribeAsync(t, { qos: 1 });
      await c.publishAsync(t, 'after re-auth', { qos: 1 });
      const m = await nextMessage(c);
      await c.endAsync();
      expect(c.reauths.length === 1 && c.reauths[0], `re-authentication: ${JSON.stringify(c.reauths)}`);
      expect(m.payload.toString() === 'after re-auth', 'no message after re-authentication');
    });
    await check('SCRAM-SHA-512 with a wrong password: CONNACK 0x87', async () => {
      let code;
      try { const c = await scramConnect('nope'); code = c.connack.reasonCode; c.end(true); }
      catch (e) { code = e.code; }
      expect(code === 0x87, `reason ${code}`);
    });
  }

  console.log(`mqtt.js5: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();

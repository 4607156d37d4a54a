// Connects to the broker URL in ?url=, subscribes to a fresh topic, publishes
// to it at QoS 1 once the SUBACK is in, and passes when its own message comes
// back and the PUBACK has arrived.
(function () {
  const params = new URLSearchParams(location.search);
  const url = params.get('url');
  const label = params.get('label') || 'run';
  const logEl = document.getElementById('log');
  const resultEl = document.getElementById('result');
  const t0 = performance.now();
  let done = false;

  function log(msg) {
    const line = `[${label} +${Math.round(performance.now() - t0)}ms] ${msg}`;
    logEl.textContent += line + '\n';
    console.log(line);
  }
  function finish(ok, reason) {
    if (done) return;
    done = true;
    const text = ok ? `PASS ${label}` : `FAIL ${label}: ${reason}`;
    resultEl.textContent = text;
    resultEl.className = ok ? 'pass' : 'fail';
    log(text);
    document.title = text;
  }
  window.addEventListener('error', (e) => finish(false, 'page error: ' + e.message));

  if (!url) return finish(false, 'no ?url= given');
  if (typeof mqtt === 'undefined') return finish(false, 'mqtt.min.js did not load');

  const id = Math.random().toString(16).slice(2, 10);
  const clientId = `browser-${label}-${id}`;
  const topic = `shardmq/browser/${label}/${id}`;
  const payload = `hello from ${navigator.userAgent.match(/Chrom\S+/)?.[0] || 'a browser'} over ${label} ${id}`;
  document.getElementById('info').textContent =
    `url=${url}  clientId=${clientId}  topic=${topic}  ${navigator.userAgent}`;

  let received = false, acked = false, ending = false;
  const maybePass = () => {
    if (received && acked && !ending) {
      ending = true;
      log('message received and PUBACK in; disconnecting');
      client.end(false, {}, () => finish(true));
    }
  };

  log(`connecting to ${url} as ${clientId}`);
  const client = mqtt.connect(url, {
    protocolVersion: 4,
    clientId,
    clean: true,
    keepalive: 30,
    reconnectPeriod: 0,
    connectTimeout: 10000,
  });

  client.on('connect', (connack) => {
    log(`CONNACK received (sessionPresent=${connack.sessionPresent}, returnCode=${connack.returnCode})`);
    log(`subscribing to ${topic} at QoS 1`);
    client.subscribe(topic, { qos: 1 }, (err, granted) => {
      if (err) return finish(false, 'subscribe failed: ' + err.message);
      const g = granted && granted[0];
      log(`SUBACK received: granted ${JSON.stringify(g)}`);
      if (!g || g.qos === 128) return finish(false, 'subscription refused');
      log(`publishing ${payload.length} bytes at QoS 1`);
      client.publish(topic, payload, { qos: 1 }, (err2) => {
        if (err2) return finish(false, 'publish failed: ' + err2.message);
        log('PUBACK received');
        acked = true;
        maybePass();
      });
    });
  });
  client.on('message', (t, buf, packet) => {
    const text = new TextDecoder().decode(buf);
    log(`PUBLISH received on ${t} (qos=${packet.qos}): "${text}"`);
    if (t !== topic || text !== payload) return finish(false, `unexpected message on ${t}: ${text}`);
    received = true;
    maybePass();
  });
  client.on('error', (err) => finish(false, 'client error: ' + (err && err.message || err)));
  client.on('close', () => { log('connection closed'); if (!done && !ending) finish(false, 'connection closed before the message came back'); });
  client.on('offline', () => log('client offline'));
})();

"""MQTT 5.0 interoperability checks with Eclipse paho-mqtt (Python, MQTTv5).

Usage: python3 paho5_check.py HOST PORT SECURED_PORT MAX_KEEPALIVE
PORT is an anonymous listener; SECURED_PORT one with a password file where alice's
password is 'wonderland'; MAX_KEEPALIVE the broker's max_keepalive. The broker's
response_information is 'replies/%c'. The environment
variables INTEROP_IDS0 and INTEROP_IDS1 (from shard_ids.py) list client ids homed on
shard 0 and shard 1, so that publishers and subscribers are placed on both shards;
without them random ids are used. Prints one line per check ('ok' or 'FAIL', with the
spec reference the check is about) and a summary line 'N passed, N failed'; exits
non-zero on any failure.
"""
import os
import queue
import socket
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST, PORT, SECURED, MAX_KEEPALIVE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
POOLS = [os.environ.get("INTEROP_IDS0", "").split(), os.environ.get("INTEROP_IDS1", "").split()]
results = []


def cid(shard):
    """A fresh client id homed on `shard` (0 or 1) when the pools are known."""
    if POOLS[shard]:
        return POOLS[shard].pop(0)
    return f"p5-{uuid.uuid4().hex[:8]}"


def props(kind, **kw):
    p = Properties(kind)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def client(client_id, proto=mqtt.MQTTv5, clean=True, port=None, keepalive=30, connect_props=None,
           will=None, username=None, password=None, expect=0):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto,
                    **({} if proto == mqtt.MQTTv5 else {"clean_session": clean}))
    c.inbox = queue.Queue()
    c.connacks = queue.Queue()
    c.acks = queue.Queue()
    c.subacks = queue.Queue()
    c.on_message = lambda cl, u, m: cl.inbox.put(m)
    c.on_connect = lambda cl, u, flags, rc, p: cl.connacks.put((flags.session_present, rc, p))
    c.on_publish = lambda cl, u, mid, rc, p: cl.acks.put((mid, rc))
    c.on_subscribe = lambda cl, u, mid, rcs, p: (setattr(cl, "suback_props", p), cl.subacks.put(rcs))
    c.on_unsubscribe = lambda cl, u, mid, rcs, p: cl.subacks.put(rcs)
    if will:
        c.will_set(*will)
    if username:
        c.username_pw_set(username, password)
    kw = {"clean_start": clean, "properties": connect_props} if proto == mqtt.MQTTv5 else {}
    c.connect(HOST, port or PORT, keepalive=keepalive, **kw)
    c.loop_start()
    c.session_present, rc, c.connack_props = c.connacks.get(timeout=5)
    c.rc = rc.value if hasattr(rc, "value") else rc
    if expect is not None:
        assert c.rc == expect, f"CONNACK reason {c.rc:#x}, expected {expect:#x}"
    return c


def close(*cs):
    for c in cs:
        c.disconnect()
        c.loop_stop()


def drop(c):
    """Closes the socket without DISCONNECT (the will goes)."""
    c.loop_stop()
    c.socket().close()


def sub(c, t, qos=1, **opts):
    props_ = opts.pop("properties", None)
    c.subscribe(t, options=SubscribeOptions(qos=qos, **opts), properties=props_)
    return [r.value for r in c.subacks.get(timeout=5)]


def none_within(c, secs):
    try:
        m = c.inbox.get(timeout=secs)
    except queue.Empty:
        return True
    raise AssertionError(f"unexpected message on {m.topic!r}: {m.payload!r} retain={m.retain}")


def check(name):
    def wrap(f):
        try:
            f()
            results.append(True)
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - report any failure
            results.append(False)
            print(f"FAIL {name}: {e!r}")
        return f
    return wrap


def topic():
    return f"interop5/{uuid.uuid4().hex[:8]}"


# --- raw MQTT 5.0 (for what paho validates away before it reaches the wire) -------

def varint(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b):
    return len(b).to_bytes(2, "big") + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def raw_connect(client_id, props_=b"", flags=0x02):
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.sendall(packet(0x10, s16(b"MQTT") + bytes([5, flags]) + b"\x00\x3c" + varint(len(props_)) + props_
                     + s16(client_id.encode())))
    ack = read_packet(s)
    assert ack[0] == 0x20 and ack[1][1] == 0, f"CONNACK {ack!r}"
    return s


def raw_publish_topic(body):
    """The topic and the Topic Alias (or None) of a PUBLISH at QoS 0."""
    n = int.from_bytes(body[:2], "big")
    t, rest = body[2:2 + n], body[2 + n:]
    plen, i, alias = rest[0], 1, None
    while i < 1 + plen:
        if rest[i] == 0x23:
            alias = int.from_bytes(rest[i + 1:i + 3], "big")
        i += 3 if rest[i] == 0x23 else plen  # only the Topic Alias is read here
    return t, alias


def read_packet(s):
    first = s.recv(1)
    if not first:
        return None
    n, mult = 0, 1
    while True:
        b = s.recv(1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return first[0], body


# --- checks ----------------------------------------------------------------------

@check("CONNACK: reason 0 and the properties the broker announces (§3.2.2.3)")
def _():
    c = client(cid(0))
    p = c.connack_props
    have = {k: getattr(p, k) for k in ("ReceiveMaximum", "TopicAliasMaximum", "MaximumPacketSize",
                                       "RetainAvailable", "WildcardSubscriptionAvailable",
                                       "SharedSubscriptionAvailable",
                                       "SubscriptionIdentifierAvailable", "MaximumQoS")
            if hasattr(p, k)}
    print(f"     CONNACK properties: {have}")
    close(c)
    assert have.get("ReceiveMaximum", 65535) >= 1
    assert have.get("TopicAliasMaximum", 0) >= 1, "no Topic Alias Maximum"
    assert have.get("RetainAvailable", 1) == 1
    assert have.get("WildcardSubscriptionAvailable", 1) == 1
    assert have.get("SubscriptionIdentifierAvailable", 1) == 1
    # Absent means available (§3.2.2.3.15).
    assert have.get("SharedSubscriptionAvailable", 1) == 1, "Shared Subscription Available 0"


@check("CONNACK Server Keep Alive when a client asks for more than max_keepalive, or 0 (§3.2.2.3.14)")
def _():
    for asked in (MAX_KEEPALIVE * 2, 0):
        c = client(cid(1), keepalive=asked)
        got = getattr(c.connack_props, "ServerKeepAlive", None)
        close(c)
        assert got == MAX_KEEPALIVE, f"asked {asked}: Server Keep Alive {got}"
    c = client(cid(1), keepalive=max(1, MAX_KEEPALIVE // 2))
    got = getattr(c.connack_props, "ServerKeepAlive", None)
    close(c)
    assert got in (None, max(1, MAX_KEEPALIVE // 2)), f"asked less: Server Keep Alive {got}"


@check("CONNACK Assigned Client Identifier for an empty client id (§3.2.2.3.7, [MQTT-3.2.2-16])")
def _():
    c = client("")
    got = getattr(c.connack_props, "AssignedClientIdentifier", None)
    close(c)
    assert got, "no Assigned Client Identifier"


@check("CONNACK 0x86 for a wrong password, refusal for no password (§3.2.2.2)")
def _():
    c = client(cid(0), port=SECURED, username="alice", password="nope", expect=None)
    c.loop_stop()
    assert c.rc == 0x86, f"wrong password: reason {c.rc:#x}"
    c = client(cid(0), port=SECURED, expect=None)
    c.loop_stop()
    assert c.rc in (0x86, 0x87), f"anonymous: reason {c.rc:#x}"
    close(client(cid(0), port=SECURED, username="alice", password="wonderland"))


@check("CONNACK 0x8C for an Authentication Method the broker does not support (§4.12, [MQTT-4.12.0-1])")
def _():
    c = client(cid(1), connect_props=props(PacketTypes.CONNECT, AuthenticationMethod="SCRAM-SHA-1"),
               expect=None)
    c.loop_stop()
    assert c.rc == 0x8C, f"reason {c.rc:#x}"


USER = [("a", "1"), ("b", "2"), ("a", "3"), ("ü", "ε")]


def full_props():
    return props(PacketTypes.PUBLISH, UserProperty=list(USER), ContentType="text/plain; charset=utf-8",
                 ResponseTopic="interop5/reply", CorrelationData=b"\x00\x01corr\xff",
                 PayloadFormatIndicator=1)


@check("PUBLISH properties reach 5.0 subscribers on both shards unchanged, in order ([MQTT-3.3.2-15..20])")
def _():
    t = topic()
    subs = [client(cid(0)), client(cid(1))]
    for s in subs:
        sub(s, t, 1)
    p = client(cid(0))
    p.publish(t, "héllo".encode(), qos=1, properties=full_props()).wait_for_publish(5)
    for s in subs:
        m = s.inbox.get(timeout=5)
        mp = m.properties
        assert m.payload == "héllo".encode()
        assert mp.UserProperty == USER, mp.UserProperty
        assert mp.ContentType == "text/plain; charset=utf-8", mp.ContentType
        assert mp.ResponseTopic == "interop5/reply", mp.ResponseTopic
        assert mp.CorrelationData == b"\x00\x01corr\xff", mp.CorrelationData
        assert mp.PayloadFormatIndicator == 1, mp.PayloadFormatIndicator
    close(p, *subs)


@check("5.0 publisher -> 3.1.1 subscriber: message without properties; 3.1.1 publisher -> 5.0 subscriber")
def _():
    t = topic()
    s311, s5 = client(cid(1), proto=mqtt.MQTTv311), client(cid(1))
    s311.subscribe(t, 1)
    s311.subacks.get(timeout=5)
    sub(s5, t, 1)
    p5 = client(cid(0))
    p5.publish(t, b"from5", qos=1, properties=full_props()).wait_for_publish(5)
    m = s311.inbox.get(timeout=5)
    assert m.payload == b"from5" and m.properties is None, m.properties
    s5.inbox.get(timeout=5)
    p311 = client(cid(0), proto=mqtt.MQTTv311)
    p311.publish(t, b"from311", qos=1).wait_for_publish(5)
    m = s5.inbox.get(timeout=5)
    assert m.payload == b"from311" and m.qos == 1
    assert not hasattr(m.properties, "UserProperty"), m.properties
    close(s311, s5, p5, p311)


@check("Message Expiry: 1 s message not delivered after 2.5 s offline; 10 s one is, with less remaining ([MQTT-3.3.2-5], [MQTT-3.3.2-6])")
def _():
    t, sid = topic(), cid(1)
    s = client(sid, clean=True, connect_props=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    sub(s, t, 1)
    close(s)
    p = client(cid(0))
    p.publish(t, b"short", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1)).wait_for_publish(5)
    p.publish(t, b"long", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=10)).wait_for_publish(5)
    close(p)
    time.sleep(2.5)
    s = client(sid, clean=False, connect_props=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert s.session_present, "session not present"
    m = s.inbox.get(timeout=5)
    assert m.payload == b"long", f"got {m.payload!r} first (the 1 s message expired)"
    left = getattr(m.properties, "MessageExpiryInterval", None)
    assert left is not None and left <= 8, f"remaining expiry {left}"
    none_within(s, 1)
    close(s)
    close(client(sid))


@check("Session Expiry 2 s: gone after 3.5 s offline; 60 s: present, subscription kept (§3.1.2.11.2, [MQTT-3.2.2-2])")
def _():
    t, short, long_ = topic(), cid(0), cid(1)
    for i, exp in ((short, 2), (long_, 60)):
        c = client(i, connect_props=props(PacketTypes.CONNECT, SessionExpiryInterval=exp))
        sub(c, t, 1)
        close(c)
    time.sleep(3.5)
    p = client(cid(0))
    p.publish(t, b"away", qos=1).wait_for_publish(5)
    close(p)
    c = client(short, clean=False, connect_props=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert not c.session_present, "2 s session still present after 3.5 s"
    none_within(c, 0.5)
    close(c)
    close(client(short))
    c = client(long_, clean=False, connect_props=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert c.session_present, "60 s session not present"
    assert c.inbox.get(timeout=5).payload == b"away"
    close(c)
    close(client(long_))


@check("No Local: own messages not received, others' subscribers still get them ([MQTT-3.8.3-3])")
def _():
    t = topic()
    me, other = client(cid(0)), client(cid(1))
    sub(me, t, 1, noLocal=True)
    sub(other, t, 1)
    me.publish(t, b"mine", qos=1).wait_for_publish(5)
    assert other.inbox.get(timeout=5).payload == b"mine"
    none_within(me, 1)
    close(me, other)


@check("Retain As Published: RETAIN 1 kept on a live forward when set ([MQTT-3.3.1-12], [MQTT-3.3.1-13])")
def _():
    t = topic()
    rap, plain = client(cid(0)), client(cid(1))
    sub(rap, t, 1, retainAsPublished=True)
    sub(plain, t, 1)
    p = client(cid(1))
    p.publish(t, b"r", qos=1, retain=True).wait_for_publish(5)
    m_plain, m_rap = plain.inbox.get(timeout=5), rap.inbox.get(timeout=5)
    p.publish(t, b"", qos=1, retain=True).wait_for_publish(5)
    close(p, rap, plain)
    assert not m_plain.retain, "RAP 0 subscriber got RETAIN 1 on a live message"
    assert m_rap.retain, "RAP 1 subscriber got RETAIN 0 on a live message published with RETAIN 1"


@check("Retain Handling 0/1/2 ([MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11])")
def _():
    t = topic()
    p = client(cid(0))
    p.publish(t, b"kept", qos=1, retain=True).wait_for_publish(5)
    s = client(cid(1))
    got = []
    for rh, again in ((0, False), (0, True), (1, False), (1, True), (2, False)):
        f = t if rh != 1 else t + "/#"
        if rh == 2:
            f = "+/" + t.split("/", 1)[1]
        sub(s, f, 1, retainHandling=rh)
        try:
            m = s.inbox.get(timeout=1)
            got.append((rh, again, m.retain, m.payload))
        except queue.Empty:
            got.append((rh, again, None, None))
    p.publish(t, b"", qos=1, retain=True).wait_for_publish(5)
    close(p, s)
    want = [(0, False, True, b"kept"), (0, True, True, b"kept"), (1, False, True, b"kept"),
            (1, True, None, None), (2, False, None, None)]
    assert got == want, f"got {got}"


@check("Request/response: Response Topic and Correlation Data round trip across shards (§4.10)")
def _():
    req_t, reply_t = topic(), topic()
    responder, requester = client(cid(0)), client(cid(1))

    def answer(cl, u, m):
        cl.publish(m.properties.ResponseTopic, b"re:" + m.payload, qos=1,
                   properties=props(PacketTypes.PUBLISH, CorrelationData=m.properties.CorrelationData))
    responder.on_message = answer
    sub(responder, req_t, 1)
    sub(requester, reply_t, 1)
    for i in range(3):
        requester.publish(req_t, f"q{i}".encode(), qos=1, properties=props(
            PacketTypes.PUBLISH, ResponseTopic=reply_t, CorrelationData=f"id-{i}".encode())).wait_for_publish(5)
        m = requester.inbox.get(timeout=5)
        assert m.payload == f"re:q{i}".encode() and m.properties.CorrelationData == f"id-{i}".encode()
    close(responder, requester)


@check("Shared subscription $share/g/t: each message to one member, spread (§4.8.2)")
def _():
    t = topic()
    members = [client(cid(i % 2)) for i in range(4)]
    codes = [sub(m, f"$share/g/{t}", 1)[0] for m in members]
    p = client(cid(0))
    avail = getattr(p.connack_props, "SharedSubscriptionAvailable", 1)
    for i in range(20):
        p.publish(t, str(i).encode(), qos=1).wait_for_publish(5)
    time.sleep(1.5)
    per = [[] for _ in members]
    for i, m in enumerate(members):
        while not m.inbox.empty():
            per[i].append(m.inbox.get().payload)
    close(p, *members)
    total = sorted(int(x) for xs in per for x in xs)
    counts = [len(x) for x in per]
    assert avail == 1, f"Shared Subscription Available {avail}; SUBACK {codes}; counts {counts}"
    assert total == list(range(20)), f"SUBACK {codes}; delivered {len(total)} for 20: {counts}"
    assert sum(1 for c in counts if c) > 1, f"not spread: {counts}"


@check("Will Delay: no will if the session resumes within the delay, the will after it ([MQTT-3.1.3-9])")
def _():
    t, wid = topic(), cid(1)
    s = client(cid(0))
    sub(s, t, 1)
    will = (t, b"late", 1, False, props(PacketTypes.WILLMESSAGE, WillDelayInterval=2))
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    w = client(wid, connect_props=cp, will=will)
    drop(w)
    time.sleep(0.5)
    w = client(wid, clean=False, connect_props=cp, will=will)
    none_within(s, 2.5)
    drop(w)
    t0 = time.time()
    m = s.inbox.get(timeout=6)
    waited = time.time() - t0
    assert m.payload == b"late", m.payload
    assert waited >= 1.5, f"will after {waited:.1f} s, delay is 2 s"
    close(s)
    close(client(wid))


@check("Topic alias from the client: a publish by alias only is delivered under its topic (§3.3.2.3.4)")
def _():
    t = topic()
    s = client(cid(1))
    sub(s, t, 1)
    p = client(cid(0))
    p.publish(t, b"one", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1)).wait_for_publish(5)
    p.publish("", b"two", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1)).wait_for_publish(5)
    a, b = s.inbox.get(timeout=5), s.inbox.get(timeout=5)
    close(p, s)
    assert (a.topic, a.payload, b.topic, b.payload) == (t, b"one", t, b"two"), (a.topic, b.topic)


@check("Topic alias to a subscriber that announced Topic Alias Maximum 3: within it, topic then alias ([MQTT-3.3.2-8], [MQTT-3.3.2-10])")
def _():
    ts = [topic() for _ in range(5)]
    s = client(cid(0), connect_props=props(PacketTypes.CONNECT, TopicAliasMaximum=3))
    sub(s, "interop5/#", 1)
    p = client(cid(1))
    for rnd in range(2):
        for t in ts:
            p.publish(t, f"{rnd}".encode(), qos=1).wait_for_publish(5)
    alias_of, seen = {}, []
    for _ in range(10):
        m = s.inbox.get(timeout=5)
        a = getattr(m.properties, "TopicAlias", None)
        seen.append((m.topic, a))
        assert a is None or 1 <= a <= 3, f"alias {a} above the announced 3"
        if m.topic:
            if a is not None:
                alias_of[a] = m.topic
        else:
            assert a in alias_of, f"empty topic with alias {a} never set"
    close(p, s)
    assert any(not tp for tp, _ in seen), f"no publish sent by alias only: {seen}"


@check("Subscription Identifier delivered with the matching message (§3.3.2.3.8)")
def _():
    t = topic()
    s = client(cid(1))
    sub(s, t, 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    p = client(cid(0))
    p.publish(t, b"x", qos=1).wait_for_publish(5)
    m = s.inbox.get(timeout=5)
    close(p, s)
    assert m.properties.SubscriptionIdentifier == [7], m.properties.SubscriptionIdentifier


@check("UNSUBACK 0x11 for a filter never subscribed, 0x00 for one that was (§3.11.3)")
def _():
    c = client(cid(0))
    sub(c, "interop5/there", 1)
    c.unsubscribe(["interop5/never", "interop5/there"])
    codes = [r.value for r in c.subacks.get(timeout=5)]
    close(c)
    assert codes == [0x11, 0x00], [hex(x) for x in codes]


@check("SUBACK 0x8F (or 0x80) for invalid filters, granted QoS for the valid one (§3.9.3)")
def _():
    s = raw_connect(cid(1))
    filters = [b"a/#/b", b"a+/b", b"ok/+", b"x#"]
    body = b"\x00\x07" + b"\x00" + b"".join(s16(f) + b"\x01" for f in filters)
    s.sendall(packet(0x82, body))
    kind, ack = read_packet(s)
    s.close()
    assert kind == 0x90, f"packet {kind:#x}"
    plen = ack[2]
    codes = list(ack[3 + plen:])
    assert codes[2] == 1 and all(codes[i] in (0x8F, 0x80) for i in (0, 1, 3)), [hex(x) for x in codes]


@check("PUBACK/PUBREC reason codes: 0x00 with subscribers, 0x00 or 0x10 with none (§3.4.2.1)")
def _():
    t = topic()
    p = client(cid(0))
    codes = {}
    for q in (1, 2):
        info = p.publish(t + "/nobody", b"x", qos=q)
        info.wait_for_publish(5)
        mid, rc = p.acks.get(timeout=5)
        codes[f"q{q} none"] = rc.value
    s = client(cid(1))
    sub(s, t, 1)
    for q in (1, 2):
        p.publish(t, b"x", qos=q).wait_for_publish(5)
        mid, rc = p.acks.get(timeout=5)
        codes[f"q{q} sub"] = rc.value
    close(p, s)
    print(f"     reason codes: { {k: hex(v) for k, v in codes.items()} }")
    assert codes["q1 sub"] == 0 and codes["q2 sub"] == 0
    assert codes["q1 none"] in (0, 0x10) and codes["q2 none"] in (0, 0x10)


@check("Will properties forwarded; DISCONNECT 0x04 (with Will Message) publishes the will (§3.14.2.1)")
def _():
    from paho.mqtt.reasoncodes import ReasonCode
    t = topic()
    s = client(cid(0))
    sub(s, t, 1)
    will = (t, b"w04", 1, False, props(PacketTypes.WILLMESSAGE, ContentType="text/x-will",
                                       UserProperty=[("k", "v")], CorrelationData=b"cd"))
    w = client(cid(1), will=will)
    w.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    w.loop_stop()
    m = s.inbox.get(timeout=5)
    close(s)
    assert m.payload == b"w04"
    assert m.properties.ContentType == "text/x-will", m.properties
    assert m.properties.UserProperty == [("k", "v")] and m.properties.CorrelationData == b"cd", m.properties


@check("Shared subscription refused when not available: SUBACK 0x9E, not a grant that matches nothing (§3.2.2.3.15, §3.9.3)")
def _():
    c = client(cid(0))
    avail = getattr(c.connack_props, "SharedSubscriptionAvailable", 1)
    code = sub(c, f"$share/g/{topic()}", 1)[0]
    close(c)
    assert avail == 1 or code == 0x9E, f"Shared Subscription Available {avail}, SUBACK {code:#x}"


@check("Receive Maximum 2 from the client: at most 2 unacknowledged QoS 1 publishes in flight ([MQTT-3.3.4-9])")
def _():
    t = topic().encode()
    s = raw_connect(cid(0), b"\x21\x00\x02")
    s.sendall(packet(0x82, b"\x00\x01\x00" + s16(t) + b"\x01"))
    read_packet(s)
    p = raw_connect(cid(1))
    for i in range(5):
        p.sendall(packet(0x32, s16(t) + (i + 1).to_bytes(2, "big") + b"\x00" + b"m%d" % i))
    got = 0
    s.settimeout(1)
    try:
        while read_packet(s)[0] & 0xF0 == 0x30:
            got += 1
    except (socket.timeout, TypeError):
        pass
    s.close(), p.close()
    assert got == 2, f"{got} in flight"


@check("Topic aliases toward a client start over on a new connection ([MQTT-3.3.2-7])")
def _():
    t, sid = topic().encode(), cid(1)
    sei_tam = b"\x11\x00\x00\x00\x3c\x22\x00\x05"
    s = raw_connect(sid, sei_tam)
    s.sendall(packet(0x82, b"\x00\x01\x00" + s16(t) + b"\x00"))
    read_packet(s)
    p = raw_connect(cid(0))
    p.sendall(packet(0x30, s16(t) + b"\x00" + b"one"))
    first = raw_publish_topic(read_packet(s)[1])
    s.sendall(b"\xe0\x00")
    s.close()
    time.sleep(0.3)
    s = raw_connect(sid, sei_tam, flags=0x00)
    p.sendall(packet(0x30, s16(t) + b"\x00" + b"two"))
    again = raw_publish_topic(read_packet(s)[1])
    s.sendall(packet(0xE0, b"\x00\x05\x11\x00\x00\x00\x00"))
    s.close(), p.close()
    assert first[0] == t and again[0] == t, f"before {first}, after reconnect {again}"


@check("Response Information for a client that requests it, none otherwise (§3.2.2.3.15)")
def _():
    asker = cid(0)
    c = client(asker, connect_props=props(PacketTypes.CONNECT, RequestResponseInformation=1))
    d = client(cid(1))
    got = getattr(c.connack_props, "ResponseInformation", None)
    other = getattr(d.connack_props, "ResponseInformation", None)
    close(c, d)
    assert got == f"replies/{asker}", f"ResponseInformation {got!r}"
    assert other is None, f"unrequested ResponseInformation {other!r}"


@check("SUBACK 0x97 for a filter over max_topic_levels with a Reason String naming it; none after Request Problem Information 0 ([MQTT-3.1.2-29])")
def _():
    deep = "/".join(["lv"] * 200)
    c = client(cid(1))
    rcs = sub(c, deep, qos=0)
    why = getattr(c.suback_props, "ReasonString", None)
    q = client(cid(0), connect_props=props(PacketTypes.CONNECT, RequestProblemInformation=0))
    rcs_q = sub(q, deep, qos=0)
    why_q = getattr(q.suback_props, "ReasonString", None)
    close(c, q)
    assert rcs == [0x97] and rcs_q == [0x97], f"SUBACK {rcs} {rcs_q}"
    assert why and deep in why, f"ReasonString {why!r}"
    assert why_q is None, f"ReasonString {why_q!r} despite Request Problem Information 0"


print(f"paho5: {sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)

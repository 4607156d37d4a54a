"""Interoperability checks with Eclipse paho-mqtt (Python), an independent client.

Usage: python3 paho_check.py HOST PORT. Prints one line per check and a summary
line 'N passed, N failed'; exits non-zero on any failure.
"""
import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt

HOST, PORT = sys.argv[1], int(sys.argv[2])
results = []


def client(cid=None, clean=True, proto=mqtt.MQTTv311, will=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid or "",
                    clean_session=clean, protocol=proto)
    c.inbox = queue.Queue()
    c.connacks = queue.Queue()
    c.on_message = lambda cl, u, m: cl.inbox.put(m)
    c.on_connect = lambda cl, u, flags, rc, props: cl.connacks.put((flags.session_present, rc))
    if will:
        c.will_set(*will)
    c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    c.session_present, rc = c.connacks.get(timeout=5)
    assert rc == 0, f"CONNACK {rc}"
    return c


def close(c):
    c.disconnect()
    c.loop_stop()


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
    return f"interop/{uuid.uuid4().hex[:8]}"


@check("QoS 0/1/2 publish and subscribe, granted QoS respected")
def _():
    t = topic()
    for pub_q in (0, 1, 2):
        for sub_q in (0, 1, 2):
            s, p = client(), client()
            s.subscribe(t, sub_q)
            time.sleep(0.2)
            p.publish(t, f"{pub_q}{sub_q}", qos=pub_q).wait_for_publish(5)
            m = s.inbox.get(timeout=5)
            assert m.payload == f"{pub_q}{sub_q}".encode()
            assert m.qos == min(pub_q, sub_q), (m.qos, pub_q, sub_q)
            close(s), close(p)


@check("MQTT 3.1 (MQIsdp) client publishes and receives")
def _():
    t = topic()
    s = client(proto=mqtt.MQTTv31)
    s.subscribe(t, 1)
    time.sleep(0.2)
    p = client(proto=mqtt.MQTTv31)
    p.publish(t, b"v31", qos=1).wait_for_publish(5)
    assert s.inbox.get(timeout=5).payload == b"v31"
    close(s), close(p)


@check("retained message delivered on wildcard subscribe with retain flag")
def _():
    t = topic()
    p = client()
    p.publish(t + "/status", b"up", qos=1, retain=True).wait_for_publish(5)
    s = client()
    s.subscribe(t + "/#", 1)
    m = s.inbox.get(timeout=5)
    assert m.retain and m.payload == b"up"
    p.publish(t + "/status", b"", qos=1, retain=True).wait_for_publish(5)
    close(s), close(p)


@check("will published when the connection drops without DISCONNECT")
def _():
    t = topic()
    s = client()
    s.subscribe(t, 1)
    time.sleep(0.2)
    w = client(will=(t, b"gone", 1, False))
    w.loop_stop()
    w.socket().close()
    assert s.inbox.get(timeout=5).payload == b"gone"
    close(s)


@check("persistent session: QoS 1 published while offline arrives on reconnect")
def _():
    t, cid = topic(), "paho-" + uuid.uuid4().hex[:8]
    s = client(cid, clean=False)
    s.subscribe(t, 1)
    time.sleep(0.2)
    close(s)
    p = client()
    p.publish(t, b"while-away", qos=1).wait_for_publish(5)
    close(p)
    s = client(cid, clean=False)
    assert s.session_present, "session present flag not set"
    assert s.inbox.get(timeout=5).payload == b"while-away"
    close(s)
    close(client(cid, clean=True))


print(f"paho: {sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)

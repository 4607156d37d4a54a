"""Finds client ids homed on each shard of a running 2-shard broker, so the 5.0 checks
can place a publisher and its subscribers on different shards for certain.

Usage: python3 shard_ids.py HOST PORT METRICS_ADDR PREFIX N. Connects candidate ids
PREFIX-0, PREFIX-1, ... one at a time (MQTT 3.1.1, no library), reads which shard's
`shardmq_connections` gauge went up in GET /metrics, and prints two lines: N ids homed
on shard 0, then N ids homed on shard 1.
"""
import re
import socket
import sys
import time
import urllib.request

HOST, PORT, METRICS, PREFIX, N = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])


def gauges():
    text = urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^shardmq_connections\{shard="(\d+)"\} (\S+)$', text, re.M)}


def connect(cid):
    s = socket.create_connection((HOST, PORT))
    cidb = cid.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cidb).to_bytes(2, "big") + cidb
    s.sendall(bytes([0x10, len(body)]) + body)
    assert s.recv(4) == b"\x20\x02\x00\x00", "CONNACK"
    return s


found = {"0": [], "1": []}
i = 0
while min(len(v) for v in found.values()) < N:
    cid = f"{PREFIX}-{i}"
    i += 1
    before = gauges()
    s = connect(cid)
    shard = None
    for _ in range(100):
        after = gauges()
        up = [k for k in after if after[k] > before.get(k, 0)]
        if len(up) == 1:
            shard = up[0]
            break
        time.sleep(0.02)
    s.sendall(b"\xe0\x00")
    s.close()
    time.sleep(0.05)
    if shard in found and len(found[shard]) < N:
        found[shard].append(cid)
print(" ".join(found["0"]))
print(" ".join(found["1"]))

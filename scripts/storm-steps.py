#!/usr/bin/env python3
"""Where one storm client's time goes, step by step, on an otherwise idle broker.

One client at a time, N times (each with a fresh client id, so about half of them are
handed to the other shard of a 2-shard shardmq): TCP connect, then CONNECT until
CONNACK, SUBSCRIBE (QoS 1, its own topic storm/CLIENT_ID) until SUBACK, PUBLISH (QoS 1,
to that topic) until both its PUBACK and its own copy are in, then DISCONNECT. Prints
the quartiles (25th/50th/75th percentile, microseconds) of each step.

A storm with few clients in flight at a time is bound by this latency; one with every
client at once by CPU and by the accept queue (scripts/storm-sweep.sh).

Usage: scripts/storm-steps.py PORT [N]     (N defaults to 300; broker on 127.0.0.1)
"""
import random
import socket
import statistics
import struct
import sys
import time


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def string(b):
    return struct.pack(">H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def read_packet(sock):
    first = read_exact(sock, 1)[0]
    length, mult = 0, 1
    while True:
        b = read_exact(sock, 1)[0]
        length += (b & 127) * mult
        mult *= 128
        if not b & 128:
            break
    return first, read_exact(sock, length)


def one(port, cid):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t1 = time.perf_counter()
    s.sendall(packet(0x10, string(b"MQTT") + bytes([4, 2]) + struct.pack(">H", 60) + string(cid)))
    first, body = read_packet(s)
    if first >> 4 != 2 or body[1] != 0:
        raise RuntimeError(f"CONNACK refused: {body!r}")
    t2 = time.perf_counter()
    topic = b"storm/" + cid
    s.sendall(packet(0x82, struct.pack(">H", 1) + string(topic) + b"\x01"))
    first, body = read_packet(s)
    if first >> 4 != 9 or body[2] > 2:
        raise RuntimeError(f"SUBACK refused: {body!r}")
    t3 = time.perf_counter()
    s.sendall(packet(0x32, string(topic) + struct.pack(">H", 2) + b"storm-steps"))
    acked = received = False
    while not (acked and received):
        first, body = read_packet(s)
        if first >> 4 == 4:
            acked = True
        elif first >> 4 == 3:
            received = True
            pid = body[2 + len(topic):4 + len(topic)]
            s.sendall(packet(0x40, pid))
    t4 = time.perf_counter()
    s.sendall(b"\xe0\x00")
    s.close()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    port = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    tag = random.randrange(1 << 30)
    steps = list(zip(*(one(port, f"steps{tag}-{i}".encode()) for i in range(n))))
    names = ("tcp connect", "CONNECT→CONNACK", "SUBSCRIBE→SUBACK", "PUBLISH→PUBACK+copy")
    for name, xs in zip(names, steps):
        q = statistics.quantiles([x * 1e6 for x in xs], n=4)
        print(f"{name:22} {q[0]:7.0f} {q[1]:7.0f} {q[2]:7.0f} µs (25/50/75th percentile)")


if __name__ == "__main__":
    main()

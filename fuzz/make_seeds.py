#!/usr/bin/env python3
"""Writes the hand-written seeds under fuzz/regressions/ (the fuzzer's crashers sit
beside them, named crash-*). Each seed starts with the bytes the fuzz case reads
first; src/fuzz_support.rs documents both layouts.

Usage: python3 fuzz/make_seeds.py
"""
import base64
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "regressions")
# Inputs that show a bug not fixed yet: they fail, so they wait here, not in regressions/.
FINDINGS = os.path.join(HERE, "findings")


def write(target, name, data, root=ROOT):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ MQTT packets


def remaining_length(n):
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def field(x):
    """A length-prefixed string or binary field."""
    if isinstance(x, str):
        x = x.encode()
    return struct.pack(">H", len(x)) + x


def connect(name=b"MQTT", level=4, flags=0x02, keep_alive=60, fields=()):
    body = field(name) + bytes([level, flags]) + struct.pack(">H", keep_alive)
    return packet(0x10, body + b"".join(field(f) for f in fields))


def publish(topic, payload, qos=0, pkid=0, dup=False, retain=False):
    first = 0x30 | (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = field(topic) + (struct.pack(">H", pkid) if qos else b"") + payload
    return packet(first, body)


def ack(first, pkid):
    return packet(first, struct.pack(">H", pkid))


def subscribe(pkid, filters):
    body = b"".join(field(f) + bytes([q]) for f, q in filters)
    return packet(0x82, struct.pack(">H", pkid) + body)


def unsubscribe(pkid, filters):
    return packet(0xA2, struct.pack(">H", pkid) + b"".join(field(f) for f in filters))


PINGREQ = packet(0xC0, b"")
DISCONNECT = packet(0xE0, b"")


def decode_seed(small_max, max_chunk, seed, stream):
    """decode_case input: small max packet size, chunk sizes, then the stream."""
    return bytes([small_max - 2, max_chunk - 1, seed]) + stream


def decode_seeds():
    full = (
        connect(flags=0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80,
                fields=("seed-client", "will/topic", b"bye", "user", b"pass"))
        + subscribe(1, [("sport/#", 1), ("sport/+/player1", 2), ("+/tennis/#", 0),
                        ("$SYS/#", 0), ("bad/#/x", 1)])
        + publish("sport/tennis/player1", b"hello")
        + publish("sport/tennis/player1", b"q1", 1, 10)
        + publish("sport", b"q2", 2, 11, dup=True, retain=True)
        + publish("$SYS/broker/uptime", b"")
        + ack(0x40, 10) + ack(0x50, 11) + ack(0x62, 11) + ack(0x70, 11)
        + PINGREQ
        + unsubscribe(2, ["sport/#", "never/subscribed"])
        + publish("sport/x", b"after unsubscribe", 1, 12)
        + DISCONNECT
    )
    write("decode", "seed-valid-connect-publish-stream", decode_seed(256, 7, 1, full))
    write("decode", "seed-valid-one-byte-chunks", decode_seed(
        256, 1, 0, connect(fields=("c",)) + publish("a/b", b"x" * 200, 1, 1)))
    write("decode", "seed-valid-mqtt31-legacy-connect", decode_seed(
        66, 4, 7, connect(b"MQIsdp", 3, 0x02 | 0x80 | 0x40, fields=("legacy",)) + PINGREQ))
    write("decode", "seed-valid-large-publish", decode_seed(
        18, 256, 9, connect(fields=("big",)) + publish("big/topic", bytes(range(256)) * 8, 2, 65535)))
    write("decode", "seed-oversized-for-small-max", decode_seed(
        34, 32, 3, connect(fields=("c",)) + publish("t", b"y" * 100)))
    write("decode", "seed-malformed-remaining-length", decode_seed(
        256, 2, 2, bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])))
    write("decode", "seed-mqtt5-connect", decode_seed(256, 5, 4, connect(b"MQTT", 5, fields=("v5",))))
    write("decode", "seed-bad-utf8-and-nul", decode_seed(
        256, 3, 5, publish(b"a\xff", b"") + subscribe(3, [(b"a\x00b", 0)])))
    write("decode", "seed-control-characters", decode_seed(
        256, 3, 6, connect(fields=("c",)) + publish("a/\u0085", b"") + subscribe(4, [("a\x1f", 0)])))
    write("decode", "seed-empty-filter", decode_seed(
        256, 3, 8, connect(fields=("c",)) + subscribe(5, [("ok", 0), ("", 1)])))
    write("decode", "seed-deep-topic", decode_seed(
        256, 64, 10, connect(fields=("c",)) + publish("/" * 200, b"d") + subscribe(6, [("+/" * 100 + "#", 0)])))
    # Bit 7 of byte 2: MQTT 3.1 flag rules (DUP on PUBREL, SUBSCRIBE, UNSUBSCRIBE).
    v31 = (connect(b"MQIsdp", 3, 0x03, fields=("legacy",))
           + packet(0x6A, struct.pack(">H", 3))
           + packet(0x8A, struct.pack(">H", 4) + field("a/b") + bytes([1]))
           + packet(0xAA, struct.pack(">H", 5) + field("a/b")))
    write("decode", "seed-mqtt31-dup-flags", decode_seed(256, 5, 0x81, v31))
    # Bit 6 of byte 2 (bit 7 clear): a 5.0 connection, every packet with its properties.
    write("decode", "seed-mqtt5-valid-stream", decode_seed(256, 6, 0x40, v5_stream()))
    write("decode", "seed-mqtt5-valid-one-byte-chunks", decode_seed(256, 1, 0x40, v5_stream()))
    # 5.0 refusals: a Topic Alias of 0, then (never reached) more packets.
    write("decode", "seed-mqtt5-topic-alias-0", decode_seed(
        256, 4, 0x42, connect5() + publish5("a", b"x", props(b"\x23\x00\x00"))))
    write("decode", "seed-mqtt5-duplicate-property", decode_seed(
        256, 4, 0x43, connect5() + packet(0x40, b"\x00\x01\x00" + props(b"\x1f\x00\x00" * 2))))


def props(body):
    """A 5.0 property list: its Property Length, then the properties."""
    return remaining_length(len(body)) + body


def connect5():
    will_props = props(b"\x18\x00\x00\x00\x05" + b"\x01\x01" + b"\x03" + field("text/plain"))
    body = (field("MQTT") + bytes([5, 0x02 | 0x04 | 0x08 | 0x40 | 0x80]) + struct.pack(">H", 30)
            + props(b"\x11\x00\x00\x00\x0a" + b"\x21\x00\x10" + b"\x26" + field("k") + field("v")
                    + b"\x15" + field("SCRAM") + b"\x16" + field(b"\x00data"))
            + field("seed-5") + will_props + field("will/5") + field(b"gone")
            + field("user") + field(b"pw"))
    return packet(0x10, body)


def publish5(topic, payload, properties, qos=0, pkid=0):
    first = 0x30 | (qos << 1)
    body = field(topic) + (struct.pack(">H", pkid) if qos else b"") + properties + payload
    return packet(first, body)


def v5_stream():
    forward = b"\x26" + field("a") + field("1") + b"\x09" + field(b"\x01corr") + b"\x08" + field("reply/5")
    return (
        connect5()
        # Subscription Identifier 5, No Local, Retain As Published, Retain Handling 2.
        + packet(0x82, struct.pack(">H", 1) + props(b"\x0b\x05")
                 + field("sport/#") + bytes([0x2D]) + field("$share/g/t") + bytes([0x01]))
        + publish5("sport/tennis", b"hello", props(b"\x23\x00\x01" + forward + b"\x02\x00\x00\x00\x3c"), 1, 7)
        + publish5("", b"aliased", props(b"\x23\x00\x01"), 1, 8)
        + publish5("sport/x", b"plain", props(b""))
        + ack(0x40, 7) + packet(0x50, b"\x00\x08\x10") + packet(0x62, b"\x00\x08\x92\x00")
        + packet(0x70, b"\x00\x08\x00" + props(b"\x1f" + field("done")))
        + packet(0xA2, struct.pack(">H", 2) + props(b"\x26" + field("u") + field("")) + field("sport/#"))
        + packet(0xF0, b"\x19" + props(b"\x15" + field("SCRAM") + b"\x16" + field(b"more")))
        + PINGREQ
        + packet(0xE0, b"\x04" + props(b"\x11\x00\x00\x00\x00" + b"\x1f" + field("bye")))
    )


# ------------------------------------------------------------- session operations
# Byte 0: max_inflight = b % 5, queue limits (b >> 3) & 3, 0x80 clean session, 0x40 a
# 5.0 session: then byte 1 picks the peer limits (bits 0-1 the client's Receive
# Maximum 1/2/3/65535, bits 2-4 its Maximum Packet Size none/18/24/40/64/300/630/none,
# bits 5-6 the broker's Receive Maximum 1/2/4/65535). A 5.0 case reads one more byte
# for deliveries (props: bit 0 expiry of bits 2-6 s or, with bit 7, the largest; bit 1
# forwarded properties), subscriptions (identifier) and connects with flags 0x12 (Will
# Properties); a client PUBLISH with flags bit 5 carries an expiry of flags >> 6 s.
# Opcodes (mod 16): 0-2 deliver(qos, granted, flags), 3-4 client PUBLISH(flags, pkid),
# 5 PUBACK(sel), 6 PUBREC(sel), 7 PUBREL(pkid), 8 PUBCOMP(sel), 9 writable(bit 0),
# 10 connect(flags), 11 disconnect(how), 12 (un)subscribe(b, qos), 13 PINGREQ,
# 14 server-only packet(which), 15 clock(u16).


def deliver(qos, granted, flags=0):
    return bytes([0, qos, granted, flags])


def client_publish(flags, pkid):
    return bytes([3, flags, pkid])


def ack_flow(op, index=0):
    """PUBACK (5), PUBREC (6) or PUBCOMP (8) for the index-th flow in flight."""
    return bytes([op, index])


PUBACK, PUBREC, PUBCOMP = 5, 6, 8


def deliver_v5(qos, granted, flags=0, props=0):
    return bytes([0, qos, granted, flags, props])


def clock_ms(ms):
    units = ms // 8
    return bytes([15, units >> 8, units & 0xFF])


def session_v5_seeds():
    # max_inflight 4, the client's Receive Maximum 2, the broker's 2.
    write("session", "seed-v5-receive-maximum", bytes([0x40, 0x21])
          + b"".join(deliver_v5(1 + i % 2, 2, i) for i in range(5))
          + ack_flow(PUBACK) + ack_flow(PUBREC) + ack_flow(PUBCOMP)
          + ack_flow(PUBACK) + ack_flow(PUBREC))
    # Maximum Packet Size 40: small messages fit, properties and larger payloads do not.
    write("session", "seed-v5-max-packet-size", bytes([0x40, 0x0F])
          + deliver_v5(1, 1, 0) + deliver_v5(1, 1, 5) + deliver_v5(2, 2, 20)
          + deliver_v5(0, 0, 5, 0x03) + deliver_v5(1, 1, 0, 0x0D)
          + bytes([12, 0, 1, 0x45]) + deliver_v5(1, 1, 5)
          + ack_flow(PUBACK) + ack_flow(PUBACK))
    # Expiry: while offline and while the buffer is full, with time stepped past it.
    write("session", "seed-v5-message-expiry", bytes([0x41, 0x03])
          + deliver_v5(1, 1, 2, 0x0D) + deliver_v5(2, 2, 2, 0x01)
          + deliver_v5(1, 1, 2, 0x81) + bytes([11, 2])
          + deliver_v5(1, 1, 3, 0x05) + deliver_v5(2, 2, 3, 0x0F)
          + deliver_v5(1, 1, 3) + clock_ms(2500) + bytes([10, 0x00])
          + bytes([9, 0]) + deliver_v5(1, 1, 4, 0x09) + deliver_v5(0, 0, 4, 0x05)
          + clock_ms(1500) + bytes([9, 1])
          + ack_flow(PUBACK) + ack_flow(PUBREC) + clock_ms(60000)
          + bytes([11, 2, 10, 0x00]) + ack_flow(PUBCOMP) + ack_flow(PUBACK))
    # The broker's Receive Maximum 1: a second QoS 2 flow awaiting PUBREL closes the
    # connection; PUBREL for an unknown id gets PUBCOMP 0x92.
    write("session", "seed-v5-inbound-receive-maximum", bytes([0x41, 0x03])
          + client_publish(0x62, 1) + client_publish(2, 1) + client_publish(2, 2)
          + bytes([10, 0x00]) + bytes([7, 5]) + bytes([7, 1])
          + client_publish(2, 2) + client_publish(0x21, 3) + bytes([7, 2]))
    # Subscription identifiers on deliveries; a will with a delay and an expiry.
    write("session", "seed-v5-subscription-ids-and-will", bytes([0x42, 0x1F])
          + bytes([12, 0, 1, 0x45, 12, 2, 2, 0x81, 12, 10, 1, 0xC0])
          + deliver_v5(1, 2, 1) + deliver_v5(2, 2, 1, 0x02)
          + bytes([10, 0x12, 0x55]) + ack_flow(PUBACK)
          + bytes([12, 0, 1, 0x00]) + deliver_v5(0, 1, 1)
          + bytes([11, 2, 10, 0x12, 0x15, 11, 1]) + bytes([10, 0x00]))


def session_seeds():
    session_v5_seeds()
    write("session", "seed-qos1-qos2-flows", bytes([0x04])
          + deliver(1, 1, 5) + deliver(2, 2, 9) + deliver(2, 1)
          + ack_flow(PUBACK) + ack_flow(PUBREC) + ack_flow(PUBCOMP) + ack_flow(PUBACK)
          + deliver(0, 2, 3))
    write("session", "seed-window-and-queue-bounds", bytes([0x02])
          + b"".join(deliver(i % 3, 2, 40 + i) for i in range(14))
          + ack_flow(PUBACK) + ack_flow(PUBREC) + ack_flow(PUBREC, 1)
          + ack_flow(PUBCOMP) + ack_flow(PUBCOMP))
    write("session", "seed-resume-resends-with-dup", bytes([0x03])
          + deliver(1, 1, 4) + deliver(2, 2, 4) + ack_flow(PUBREC, 1)
          + bytes([11, 2])  # the connection breaks
          + deliver(2, 2, 6) + deliver(0, 0, 1)
          + bytes([10, 0x02])  # resume, with a will
          + ack_flow(PUBCOMP) + ack_flow(PUBACK) + ack_flow(PUBREC))
    write("session", "seed-backpressure", bytes([0x04])
          + bytes([9, 0]) + b"".join(deliver(i % 3, 2, i) for i in range(10))
          + bytes([9, 1]) + ack_flow(PUBACK) + ack_flow(PUBREC))
    write("session", "seed-inbound-qos2-dedup", bytes([0x01])
          + client_publish(2, 3) + client_publish(2 | 4, 3) + bytes([7, 3])
          + client_publish(2, 3) + bytes([7, 3, 7, 3])
          + client_publish(1, 5) + client_publish(0, 0) + bytes([13]))
    write("session", "seed-protocol-violations", bytes([0x84])
          + client_publish(4, 0)  # QoS 0 with DUP
          + bytes([10, 0x00]) + client_publish(1, 0)  # QoS 1 with packet id 0
          + bytes([10, 0x03]) + bytes([14, 4])  # SUBSCRIBE handed to the session
          + bytes([10, 0x02]) + ack_flow(PUBACK, 0xF8))  # PUBACK 0
    write("session", "seed-clean-session-and-takeover", bytes([0x82])
          + deliver(1, 1) + bytes([10, 0x02]) + deliver(2, 2) + bytes([11, 0])
          + deliver(1, 1) + bytes([10, 0x01])
          + bytes([12, 0, 1, 12, 2, 2, 12, 1, 0])
          + bytes([15, 0xFF, 0xFF]) + bytes([11, 1]))
    write("session", "seed-huge-messages", bytes([0x0C])
          + deliver(1, 1, 0x80) + deliver(1, 1, 0x80) + deliver(2, 2, 0x90)
          + ack_flow(PUBACK) + ack_flow(PUBREC) + ack_flow(PUBCOMP))


# ----------------------------------------------------------------- password files
# Byte 0: bits 0-1 iterations - 1 of the $7$ hash the case makes, bits 2-6 which user
# to remove, bit 7 replace the first user's hash; the rest is the file.


def b64(data):
    return base64.b64encode(data).decode()


def sha512_line(user, password, salt):
    """A $6$ line: SHA-512 of the password followed by the salt."""
    digest = hashlib.sha512(password + salt).digest()
    return f"{user}:$6${b64(salt)}${b64(digest)}"


def pbkdf2_line(user, password, salt, iterations):
    """A $7$ line: PBKDF2-HMAC-SHA512, 64 bytes, as mosquitto_passwd writes."""
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, 64)
    return f"{user}:$7${iterations}${b64(salt)}${b64(digest)}"


def passwd_seed(control, lines):
    return bytes([control]) + "\n".join(lines).encode() + b"\n"


def passwd_seeds():
    write("passwd", "seed-valid-mosquitto-file", passwd_seed(0x05, [
        "# written by mosquitto_passwd",
        "",
        pbkdf2_line("alice", b"secret", b"NprJc5G4YcVO", 101),
        sha512_line("bob", b"hunter2", b"0123456789ab"),
        "  " + pbkdf2_line("carol", b"pw", bytes(range(64)), 3) + "  \r",
        pbkdf2_line("dave with space", b"", b"s", 1),
        sha512_line("\u00e9ve", "p\u00e4ss".encode(), b"\x00\xff"),
    ]))
    write("passwd", "seed-valid-replace-first-user", passwd_seed(0x83, [
        sha512_line("admin", b"admin", b"saltsaltsalt"),
        pbkdf2_line("guest", b"guest", b"saltsaltsalt", 16),
    ]))
    good = pbkdf2_line("alice", b"a", b"saltsaltsalt", 101)
    write("passwd", "seed-bad-lines", passwd_seed(0x00, [
        good,
        "bob:plaintext",
        "no colon here",
        ":" + good.split(":", 1)[1],
        "carol:$7$abc$c2FsdA==$aGFzaA==",
        "dave:$7$101$!!!$aGFzaA==",
        "erin:$7$101$c2FsdA==$aGFzaA==",
        "frank:$5$abc$def",
        good,
        "gina:$7$0$c2FsdA==$aGFzaA==",
        "hank:$7$1000001$" + good.split("$", 4)[3] + "$" + good.split("$")[-1],
        "ivan:$6$$" + b64(bytes(64)),
        "jo:$6$c2FsdA==$" + b64(bytes(63)),
        "kim:$7$4294967296$c2FsdA==$" + b64(bytes(64)),
        "lee:$6$c2FsdA=$" + b64(bytes(64)),
    ]))
    write("passwd", "seed-empty-and-comments", passwd_seed(0x00, ["", "# only", "   ", "\t#x"]))
    write("passwd", "seed-crlf-and-unicode-whitespace", bytes([0x02]) + (
        sha512_line("u1", b"x", b"y") + "\r\n\u2003"
        + pbkdf2_line("u2", b"x", b"y", 2) + "\u2003\r\n\r\n").encode())


# ---------------------------------------------------------------------- ACL files
# Byte 0 bit 0: the client gives a username. The rest is split at NUL: the file, the
# client id, the username (with bit 0), then topics and filters.


def acl_seed(text, client_id, username, entries):
    parts = [text, client_id] + ([username] if username is not None else []) + entries
    return bytes([1 if username is not None else 0]) + "\0".join(parts).encode()


ACL = """\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic read sensors/+/temp
topic deny sensors/roof/temp

user bob
topic sensors/#
topic write  cmd/with space/x

pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern deny devices/%c/locked
pattern write %u/%c/out
topic read $SYS/broker/#
"""

ACL_ENTRIES = ["#", "+", "+/+", "public/+", "public/secret", "public/news", "alice/#",
               "sensors/+/temp", "sensors/roof/temp", "devices/c1/#", "devices/c1/locked",
               "users/+/inbox", "users/alice/inbox", "$SYS/#", "$SYS/broker/load",
               "alice/c1/out"]


def acl_seeds():
    write("acl", "seed-alice", acl_seed(ACL, "c1", "alice", ACL_ENTRIES))
    write("acl", "seed-anonymous", acl_seed(ACL, "c1", None, ACL_ENTRIES))
    write("acl", "seed-unknown-user", acl_seed(ACL, "c1", "carol",
                                               ["users/carol/inbox", "carol/c1/out", "#"]))
    write("acl", "seed-wildcard-client-id", acl_seed(ACL, "dev+", "alice",
                                                     ["devices/dev+/x", "devices/#", "alice/x"]))
    # A client id holding "%u" must not be replaced again by the username (Mosquitto
    # substitutes in one pass; fixed in d093603, the acl target's first finding).
    write("acl", "seed-percent-in-client-id", acl_seed(ACL, "%u", "bob",
                                                       ["devices/bob/x", "devices/%u/x",
                                                        "devices/+/x", "bob/%u/out"]))
    write("acl", "seed-dollar-rules", acl_seed(
        "topic read #\ntopic read +/x\ntopic read $SYS/broker/#\ntopic deny $SYS/broker/secret\n",
        "c", None, ["#", "$SYS/#", "$SYS/broker/+", "a/b", "$x/x", "$SYS/broker/secret", "+/x"]))
    write("acl", "seed-bad-lines", acl_seed(
        "topic read ok/#\nfoo bar\nuser\ntopic read a/#/b\ntopic deny\npattern write x+/y\n"
        "topic\ntopic read\ntopic read %c+\n",
        "c", None, ["ok/x"]))
    write("acl", "seed-covers-and-intersects", acl_seed(
        "topic read a/#\ntopic deny a/+/b\ntopic write +/+/+\n", "c", None,
        ["a/#", "a/+/b", "+/+/+", "a", "a/b/+", "+/b/#", "a/x/b", "#", "+/#", "/+", "/",
         "a//b", "+"]))


# ------------------------------------------------------------- websocket layer
# Byte 0: bit 0 = built mode (frames described by the rest), bits 1-7 set the chunk
# size (16 + b//2 × 8). Raw mode: the rest is what the client sends.

WS_UPGRADE = (b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")


def ws_frame(flags, payload):
    """Built mode: flags (bits 0-1 kind, bit 2 FIN) and the payload length in bits 3-7."""
    return bytes([flags | (len(payload) << 3)]) + payload


def ws_seeds():
    connect_pkt = connect(fields=("ws",))
    # Binary CONNECT in two fragments with a ping between, then a whole SUBSCRIBE.
    built = (ws_frame(0b000, connect_pkt[:5]) + ws_frame(0b110, b"hi")
             + ws_frame(0b100, connect_pkt[5:]) + ws_frame(0b100, subscribe(1, [("a/b", 1)])))
    write("ws", "seed-built-fragments-and-ping", bytes([1]) + built)
    write("ws", "seed-built-text-frame", bytes([3]) + ws_frame(0b100, connect_pkt) + ws_frame(0b111, b"text"))
    write("ws", "seed-raw-upgrade-and-frame", bytes([0]) + WS_UPGRADE
          + bytes([0x82, 0x80 | 2, 1, 2, 3, 4, 0x10 ^ 1, 0x00 ^ 2]))
    write("ws", "seed-raw-wrong-path", bytes([0]) + WS_UPGRADE.replace(b"/mqtt", b"/x"))
    write("ws", "seed-raw-not-http", bytes([8]) + connect_pkt)


if __name__ == "__main__":
    decode_seeds()
    session_seeds()
    ws_seeds()
    passwd_seeds()
    acl_seeds()

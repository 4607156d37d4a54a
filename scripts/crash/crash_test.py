"""Crash test of shardmq's persistence, driven by scripts/crash-test.sh.

Runs a broker on a data directory for a number of rounds; in each, MQTT 3.1.1 clients
(Eclipse paho-mqtt) publish at QoS 1 and 2 while half of the persistent subscribers
are online, then the broker is killed with SIGKILL at a random moment and started
again on the same data directory. At the end every subscriber (the online ones and
those offline since the start) comes back with clean_session=False and drains its
session. Checks:

* every (publisher, seq) whose PUBACK (QoS 1) or PUBCOMP (QoS 2) reached the
  publisher was received by every subscriber: at least once for QoS 1, exactly once
  for QoS 2 (any QoS 2 duplicate fails, acked or not: a publisher sends each
  message once, with a new client per round, so nothing legitimately repeats it);
* every delivery came at the publisher's QoS, and no unknown message appeared;
* every persistent subscriber found its session (session present) after each
  restart;
* the retained message of each crash/retained/<pub> topic carries a seq no lower
  than the last one acked;
* every broker start succeeded;
* with --shared, for the group $share/crash/crash/# of persistent members (two
  online through the rounds, two that also disconnect or lose their connection at
  random moments, one that leaves in one round and is back only for the final
  drain), summed over the members: every acked message at least once (QoS 1; the
  duplicates are counted) and exactly once (QoS 2), and each member's session
  present whenever it reconnected. A QoS 2 message whose PUBLISH went out stays
  with its member (MQTT 5.0 §4.8.2) and is completed when it reconnects, which
  every member does for the final drain.

Exits 0 when all hold, 1 otherwise; prints a summary either way. The broker's output
of round N goes to WORKDIR/logs/round-NN.log (the final one to final.log).
"""
import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
SUB_FILTER = "crash/#"
# --shared: one group of persistent members over the same topics.
SHARED_FILTER = "$share/crash/crash/#"
RETAINED_PREFIX = "crash/retained/"
OK = mqtt.MQTT_ERR_SUCCESS


def log(msg):
    print(f"crash-test: {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ranges(seqs, limit=8):
    """'3-7,12,20-21 (+N more ranges)' for a sorted list of ints."""
    out, start, prev = [], None, None
    for s in seqs:
        if start is None:
            start = prev = s
        elif s == prev + 1:
            prev = s
        else:
            out.append((start, prev))
            start = prev = s
    if start is not None:
        out.append((start, prev))
    text = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out[:limit])
    if len(out) > limit:
        text += f" (+{len(out) - limit} more ranges)"
    return text


def tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return f"  (cannot read {path}: {e})"
    return "\n".join("  | " + line for line in data[-lines:])


def new_client(client_id, clean):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=clean, protocol=mqtt.MQTTv311)
    c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    return c


# --------------------------------------------------------------------------- broker

class Broker:
    def __init__(self, args):
        self.args = args
        self.proc = None
        self.port = None
        self.log_path = None
        self.starts = []  # seconds each start took

    def cmd(self, port):
        c = [self.args.broker, "--listen", f"{HOST}:{port}", "--shards", "2",
             # Offline sessions hold every message of the run: the default bounds
             # (1000 messages, 1 MiB) would drop them by design, not by a crash.
             "--max-queued-messages", "10000000", "--max-queued-bytes", "1073741824",
             "--sys-interval", "0"]
        if not self.args.no_persistence:
            c += ["--data-dir", self.args.data_dir, "--fsync", self.args.fsync]
            if self.args.fsync_interval_ms is not None:
                c += ["--fsync-interval-ms", str(self.args.fsync_interval_ms)]
            if self.args.log_compaction_bytes is not None:
                c += ["--log-compaction-bytes", str(self.args.log_compaction_bytes)]
        return c

    def start(self, name):
        """Starts the broker on a fresh port and waits until it accepts TCP.
        Returns None, or a failure message."""
        self.port = free_port()
        self.log_path = os.path.join(self.args.log_dir, f"{name}.log")
        logf = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd(self.port), stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        if self.args.pidfile:
            with open(self.args.pidfile, "w") as f:
                f.write(f"{self.proc.pid}\n")
        deadline = t0 + self.args.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"broker exited with status {self.proc.returncode} while starting"
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    self.starts.append(time.monotonic() - t0)
                    return None
            except OSError:
                time.sleep(0.02)
        return f"broker did not accept connections within {self.args.start_timeout:.0f} s"

    def stop(self, how):
        """how: 'kill' (SIGKILL), 'term' (SIGTERM, SIGKILL after 10 s) or 'none'."""
        if self.proc is None or how == "none":
            return None
        if self.proc.poll() is None:
            if how == "kill":
                self.proc.kill()
            else:
                self.proc.terminate()
        try:
            self.proc.wait(timeout=20 if how == "kill" else 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "broker did not exit in time after SIGTERM"
        finally:
            self.proc = None
            if self.args.pidfile:
                open(self.args.pidfile, "w").close()
        return None

    def running(self):
        return self.proc is not None and self.proc.poll() is None


# ------------------------------------------------------------------------ publishers

class Publisher:
    """One publisher's record across rounds; a new paho client each round (clean
    session), so a message not acked before a crash is never sent again."""

    def __init__(self, pubid, qos, retained, args):
        self.pubid, self.qos, self.retained, self.args = pubid, qos, retained, args
        self.topic = f"crash/{pubid}"
        self.rtopic = RETAINED_PREFIX + pubid
        self.next_seq = 0          # seqs 0..next_seq-1 were handed to paho
        self.acked = set()
        self.next_rseq = 0
        self.racked_max = -1
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.client = None
        self.thread = None
        self.stop_flag = False
        self.notes = []

    # -- one round
    def connect(self, port):
        self.mid_items, self.early_acks, self.outstanding = {}, set(), 0
        self.connacks, self.stop_flag = 0, False
        self.conn_event = threading.Event()
        c = new_client(f"crash-pub-{self.pubid}", clean=True)
        c.max_inflight_messages_set(self.args.window)
        c.max_queued_messages_set(0)
        c.on_connect = self.on_connect
        c.on_publish = self.on_publish
        c.connect_async(HOST, port, keepalive=30)
        c.loop_start()
        self.client = c

    def on_connect(self, client, userdata, flags, rc, props):
        if rc == 0:
            self.connacks += 1
            if self.connacks > 1:
                # paho reconnected by itself and may resend unacked messages.
                self.notes.append("reconnected within a round")
            self.conn_event.set()

    def on_publish(self, client, userdata, mid, rc, props):
        with self.lock:
            item = self.mid_items.pop(mid, None)
            if item is None:
                self.early_acks.add(mid)
            else:
                self._ack(item)

    def _ack(self, item):  # with self.lock
        kind, seq = item
        if kind == "n":
            self.acked.add(seq)
        else:
            self.racked_max = max(self.racked_max, seq)
        self.outstanding -= 1
        self.cond.notify()

    def start_load(self, rate):
        self.thread = threading.Thread(target=self.run, args=(rate,), daemon=True)
        self.thread.start()

    def run(self, rate):
        interval = 1.0 / rate if rate > 0 else 0.0
        next_t = time.monotonic()
        n = 0
        while True:
            with self.lock:
                while self.outstanding >= self.args.window and not self.stop_flag:
                    self.cond.wait(0.1)
                if self.stop_flag:
                    return
                self.outstanding += 1
                if self.retained and n % self.args.retain_every == self.args.retain_every - 1:
                    item = ("r", self.next_rseq)
                    self.next_rseq += 1
                else:
                    item = ("n", self.next_seq)
                    self.next_seq += 1
            n += 1
            if item[0] == "n":
                info = self.client.publish(self.topic, f"{self.pubid}:{item[1]}", self.qos)
            else:
                info = self.client.publish(self.rtopic, str(item[1]), 1, retain=True)
            with self.lock:
                if info.mid in self.early_acks:
                    self.early_acks.discard(info.mid)
                    self._ack(item)
                else:
                    self.mid_items[info.mid] = item
            if info.rc != OK:
                # The connection is gone (the broker was killed): this message and
                # those in flight are simply not acked. Wait for the round's end.
                with self.lock:
                    while not self.stop_flag:
                        self.cond.wait(0.1)
                return
            if interval:
                next_t += interval
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1.0:
                    next_t = time.monotonic()

    def stop_load(self):
        with self.lock:
            self.stop_flag = True
            self.cond.notify_all()

    def close(self, graceful):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.client is not None:
            if graceful:
                # Let what is in flight complete, so that this round's tail is acked.
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    with self.lock:
                        if self.outstanding <= 0:
                            break
                    time.sleep(0.02)
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


# ----------------------------------------------------------------------- subscribers

class Subscriber:
    """A persistent session (clean_session=False, fixed client id) kept in one paho
    client for the whole run: paho keeps the state of incoming QoS 2 messages
    (PUBREC sent, PUBREL awaited) across reconnects of the same object, as a durable
    client must."""

    def __init__(self, index, online, publishers, cid=None, sub_filter=SUB_FILTER, role=None):
        self.index, self.online = index, online
        self.cid = cid or f"crash-sub-{index}"
        self.sub_filter = sub_filter
        # Shared-group members (--shared): "stable" (online through the rounds, as
        # an online subscriber), "flaky" (also disconnects and reconnects at random
        # moments during the load) or "away" (flaky until a random moment of one
        # round, then away until the final drain).
        self.role = role or ("online" if online else "offline")
        self.gone = False          # an "away" member that has left
        self.disconnects = 0       # graceful disconnects during the load
        self.drops = 0             # connections cut during the load (paho reconnects)
        self.qos_of = {p.pubid: p.qos for p in publishers}
        self.counts = {}           # (pubid, seq) -> deliveries
        self.retained_deliveries = 0
        self.bad = []              # unparseable or unexpected messages (first few)
        self.bad_count = 0
        self.qos_mismatch = 0
        self.deliveries = 0
        self.last_rx = time.monotonic()
        self.lock = threading.Lock()
        self.session_lost = []     # names of the starts that found no session
        self.client = new_client(self.cid, clean=False)
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        self.client.on_subscribe = self.on_subscribe
        self.connected = threading.Event()
        self.subacked = threading.Event()
        self.granted = None
        self.connect_name = None
        self.expect_session = False

    def on_connect(self, client, userdata, flags, rc, props):
        if rc != 0:
            return
        if self.expect_session and not flags.session_present:
            with self.lock:
                self.session_lost.append(self.connect_name)
        self.connected.set()

    def on_subscribe(self, client, userdata, mid, rcs, props):
        self.granted = [int(r.value) for r in rcs]
        self.subacked.set()

    def on_message(self, client, userdata, msg):
        now = time.monotonic()
        with self.lock:
            self.last_rx = now
            self.deliveries += 1
            if msg.topic.startswith(RETAINED_PREFIX):
                self.retained_deliveries += 1
                return
            try:
                pubid, seq = msg.payload.decode().split(":")
                seq = int(seq)
                want_qos = self.qos_of[pubid]
                if msg.topic != f"crash/{pubid}":
                    raise ValueError("topic does not match payload")
            except (ValueError, KeyError, UnicodeDecodeError):
                self.bad_count += 1
                if len(self.bad) < 5:
                    self.bad.append((msg.topic, msg.payload[:40]))
                return
            key = (pubid, seq)
            self.counts[key] = self.counts.get(key, 0) + 1
            if msg.qos != want_qos:
                self.qos_mismatch += 1

    def connect(self, port, name, expect_session):
        self.connected.clear()
        self.connect_name, self.expect_session = name, expect_session
        self.client.connect_async(HOST, port, keepalive=30)
        self.client.loop_start()

    def subscribe(self):
        self.subacked.clear()
        rc, _ = self.client.subscribe(self.sub_filter, qos=2)
        return rc

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Cuts the connection without DISCONNECT; paho's loop reconnects by itself."""
        sock = self.client.socket()
        if sock is None:
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------- the run

class Run:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.broker = Broker(args)
        self.failures = []
        pubs = []
        for i in range(args.qos1_publishers):
            pubs.append(Publisher(f"p{len(pubs)}", 1, retained=(i == 0), args=args))
        for _ in range(args.qos2_publishers):
            pubs.append(Publisher(f"p{len(pubs)}", 2, retained=False, args=args))
        self.pubs = pubs
        n_online = (args.subscribers + 1) // 2
        self.subs = [Subscriber(i, i < n_online, pubs) for i in range(args.subscribers)]
        self.members = []
        self.away_round = None
        if args.shared:
            roles = (["stable"] * args.shared_stable + ["flaky"] * args.shared_flaky
                     + ["away"] * args.shared_away)
            self.members = [Subscriber(i, True, pubs, cid=f"crash-shm-{i}", sub_filter=SHARED_FILTER, role=r)
                            for i, r in enumerate(roles)]
            # The round in which the "away" members leave (at a random moment).
            self.away_round = self.rng.randint(1, max(1, args.rounds // 2))
        self.loads = []
        self.retained_result = []

    def fail(self, msg):
        self.failures.append(msg)
        log("FAIL: " + msg)

    def start_broker(self, name):
        err = self.broker.start(name)
        if err:
            self.fail(f"{name}: {err}; log {self.broker.log_path}:\n{tail(self.broker.log_path)}")
            return False
        return True

    def wait_connected(self, clients, name, timeout=10.0):
        deadline = time.monotonic() + timeout
        for c, ev in clients:
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                self.fail(f"{name}: {c} not connected within {timeout:.0f} s")
                return False
        return True

    def setup_subscribers(self):
        """Round 1: every subscriber (and shared member) connects, subscribes (SUBACK
        awaited) and the offline half of the subscribers disconnects until the end."""
        everyone = self.subs + self.members
        for s in everyone:
            s.connect(self.broker.port, "round-01", expect_session=False)
        if not self.wait_connected([(s.cid, s.connected) for s in everyone], "round-01"):
            return False
        for s in everyone:
            if s.subscribe() != OK:
                self.fail(f"{s.cid}: SUBSCRIBE not sent")
                return False
        for s in everyone:
            if not s.subacked.wait(10):
                self.fail(f"{s.cid}: no SUBACK within 10 s")
                return False
            if s.granted != [2]:
                self.fail(f"{s.cid}: SUBACK granted {s.granted}, wanted [2]")
                return False
        for s in self.subs:
            if not s.online:
                s.close()
        return True

    def round(self, r):
        name = f"round-{r:02d}"
        if self.broker.running():  # --stop none: the same broker goes on
            t_up = 0.0
        elif self.start_broker(name):
            t_up = self.broker.starts[-1]
        else:
            return False
        online = [s for s in self.subs if s.online] + [m for m in self.members if not m.gone]
        if r == 1:
            if not self.setup_subscribers():
                return False
        else:
            for s in online:
                s.connect(self.broker.port, name, expect_session=True)
            if not self.wait_connected([(s.cid, s.connected) for s in online], name):
                return False
        for p in self.pubs:
            p.connect(self.broker.port)
        if not self.wait_connected([(f"crash-pub-{p.pubid}", p.conn_event) for p in self.pubs], name):
            return False
        before = {p.pubid: len(p.acked) for p in self.pubs}
        load = self.rng.uniform(self.args.min_load, self.args.max_load)
        self.loads.append(load)
        for p in self.pubs:
            p.start_load(self.args.rate)
        churn_stop = threading.Event()
        churn = []
        for m in self.members:
            if m.role == "flaky" or (m.role == "away" and r == self.away_round):
                t = threading.Thread(target=self.churn, daemon=True,
                                     args=(m, name, churn_stop, random.Random(self.rng.random())))
                t.start()
                churn.append(t)
        time.sleep(load)
        if not self.broker.running():
            self.fail(f"{name}: the broker died by itself under load; log {self.broker.log_path}:\n"
                      f"{tail(self.broker.log_path)}")
            return False
        how = self.args.stop
        if how == "kill":
            # The moment of the crash: the publishers are still going.
            self.broker.stop("kill")
        for p in self.pubs:
            p.stop_load()
        churn_stop.set()
        for t in churn:
            t.join()
        for p in self.pubs:
            p.close(graceful=(how != "kill"))
        for s in online:
            if not s.gone:
                s.close()
        if how != "kill":
            err = self.broker.stop(how)
            if err:
                self.fail(f"{name}: {err}")
        q1 = sum(len(p.acked) - before[p.pubid] for p in self.pubs if p.qos == 1)
        q2 = sum(len(p.acked) - before[p.pubid] for p in self.pubs if p.qos == 2)
        stop_word = {"kill": "killed (SIGKILL)", "term": "stopped (SIGTERM)", "none": "left running"}[how]
        churned = ""
        if self.members:
            moves = [f"{m.cid} {m.disconnects}d/{m.drops}c" for m in self.members if m.disconnects or m.drops]
            left = [m.cid for m in self.members if m.role == "away" and r == self.away_round]
            churned = (f"; members disconnected/cut (in all) {', '.join(moves) or 'none'}"
                       + (f"; {', '.join(left)} left until the end" if left else ""))
        log(f"{name}: up in {t_up:.2f} s, load {load:.2f} s, acked +{q1} QoS 1, +{q2} QoS 2, {stop_word}"
            + churned)
        return True

    def churn(self, m, name, stop, rng):
        """A shared member's moves during one round's load, until `stop`: a "flaky"
        one disconnects (DISCONNECT, back after 0.1-1 s) or has its connection cut
        (paho reconnects), every 0.2-1 s; an "away" one leaves once and stays away
        until the final drain."""
        while not stop.wait(rng.uniform(0.2, 1.0)):
            if m.role == "away":
                m.close()
                m.gone = True
                return
            if rng.random() < 0.5:
                m.close()
                m.disconnects += 1
                if stop.wait(rng.uniform(0.1, 1.0)):
                    return
                m.connect(self.broker.port, name, expect_session=True)
            elif m.drop():
                m.drops += 1

    def final(self):
        name = "final"
        if not self.broker.running() and not self.start_broker(name):
            return False
        everyone = self.subs + self.members
        for s in everyone:
            s.connect(self.broker.port, name, expect_session=True)
        if not self.wait_connected([(s.cid, s.connected) for s in everyone], name):
            return False
        t0 = time.monotonic()
        deadline = t0 + self.args.drain_max
        while True:
            now = time.monotonic()
            with_lock = []
            for s in everyone:
                with s.lock:
                    with_lock.append(s.last_rx)
            quiet = now - max(max(with_lock), t0)
            if quiet >= self.args.quiet:
                break
            if now >= deadline:
                self.fail(f"final: deliveries still arriving after {self.args.drain_max:.0f} s of draining")
                break
            time.sleep(0.2)
        log(f"final: drained in {time.monotonic() - t0:.1f} s (until {self.args.quiet:.0f} s without a message)")
        for s in everyone:
            s.close()
        self.check_retained()
        return True

    def check_retained(self):
        rpubs = [p for p in self.pubs if p.retained]
        got = {}
        done = threading.Event()
        suback = threading.Event()

        def on_message(client, userdata, msg):
            if msg.retain:
                got[msg.topic] = msg.payload.decode(errors="replace")
                if all(p.rtopic in got for p in rpubs):
                    done.set()

        c = new_client("crash-retained-check", clean=True)
        c.on_message = on_message
        c.on_connect = lambda cl, u, f, rc, pr: cl.subscribe(RETAINED_PREFIX + "#", 1)
        c.on_subscribe = lambda *a: suback.set()
        c.connect_async(HOST, self.broker.port, keepalive=30)
        c.loop_start()
        if not suback.wait(10):
            self.fail("retained: no SUBACK within 10 s")
        else:
            done.wait(3)
        c.disconnect()
        c.loop_stop()
        for p in rpubs:
            val = got.get(p.rtopic)
            if p.racked_max < 0:
                self.retained_result.append(f"{p.rtopic}: nothing acked, found {val!r}")
                continue
            try:
                ok = val is not None and int(val) >= p.racked_max
            except ValueError:
                ok = False
            line = (f"{p.rtopic}: retained {val if val is not None else 'NONE'}, last acked {p.racked_max}"
                    f" (published up to {p.next_rseq - 1})")
            self.retained_result.append(line + (" ok" if ok else " LOST"))
            if not ok:
                self.fail(f"retained {line}")

    def report_group(self):
        """The shared group as a whole: each acked message at least once (QoS 1),
        exactly once (QoS 2), summed over the members."""
        by_id = {p.pubid: p for p in self.pubs}
        total = {}
        who = {}
        print(f"shared group {SHARED_FILTER} (away members left in round {self.away_round}):")
        for m in self.members:
            for key, n in m.counts.items():
                total[key] = total.get(key, 0) + n
                who.setdefault(key, []).append(f"{m.cid}x{n}")
            print(f"  {m.cid} ({m.role}): {m.deliveries} deliveries ({m.retained_deliveries} retained topic); "
                  f"{m.disconnects} disconnects, {m.drops} connections cut during the load")
        lost = {1: 0, 2: 0}
        lost_seqs = {}
        for p in self.pubs:
            for seq in p.acked:
                if total.get((p.pubid, seq), 0) == 0:
                    lost[p.qos] += 1
                    lost_seqs.setdefault(p.pubid, []).append(seq)
        dup1 = dup1_msgs = dup2_acked = dup2_unacked = unacked_rx = phantom = 0
        dup2_examples = []
        for key, n in sorted(total.items()):
            p = by_id[key[0]]
            is_acked = key[1] in p.acked
            if not is_acked:
                unacked_rx += 1
            if key[1] >= p.next_seq:
                phantom += 1
            if n > 1:
                if p.qos == 1:
                    dup1 += n - 1
                    dup1_msgs += 1
                else:
                    if is_acked:
                        dup2_acked += n - 1
                    else:
                        dup2_unacked += n - 1
                    if len(dup2_examples) < 8:
                        dup2_examples.append(f"{key[0]}:{key[1]} ({' '.join(who[key])})")
        print(f"  group: lost {lost[1]} QoS 1 + {lost[2]} QoS 2; QoS 2 duplicates {dup2_acked} acked + "
              f"{dup2_unacked} unacked; QoS 1 duplicates {dup1} over {dup1_msgs} messages (allowed); "
              f"unacked delivered {unacked_rx}")
        for pubid, seqs in sorted(lost_seqs.items()):
            print(f"      lost {pubid}: {ranges(sorted(seqs))}")
        if dup2_examples:
            print(f"      QoS 2 duplicates, e.g. {'; '.join(dup2_examples)}")
        if lost[1] or lost[2]:
            self.failures.append(f"shared group: lost {lost[1] + lost[2]} acked messages")
        if dup2_acked or dup2_unacked:
            self.failures.append(f"shared group: {dup2_acked + dup2_unacked} QoS 2 duplicates")
        if phantom:
            self.failures.append(f"shared group: {phantom} unknown messages")
        for m in self.members:
            if m.qos_mismatch:
                self.failures.append(f"{m.cid}: {m.qos_mismatch} deliveries at the wrong QoS")
            if m.bad_count:
                self.failures.append(f"{m.cid}: {m.bad_count} unknown messages {m.bad}")
            if m.session_lost:
                self.failures.append(f"{m.cid}: no session present on reconnect at {', '.join(m.session_lost[:5])}"
                                     + (f" (+{len(m.session_lost) - 5} more)" if len(m.session_lost) > 5 else ""))

    def report(self, rounds_done):
        a = self.args
        mode = "without persistence" if a.no_persistence else f"--fsync {a.fsync}"
        avg_load = sum(self.loads) / len(self.loads) if self.loads else 0
        max_up = max(self.broker.starts) if self.broker.starts else 0
        print()
        print(f"== crash test summary: {rounds_done}/{a.rounds} rounds, stop {a.stop}, {mode}, seed {a.seed}")
        print(f"   load {avg_load:.2f} s a round on average; broker start (incl. recovery) max {max_up:.2f} s")
        print("publishers:")
        for p in self.pubs:
            extra = ""
            if p.retained:
                extra = f"; retained: published {p.next_rseq}, last acked {p.racked_max}"
            print(f"  {p.pubid} QoS {p.qos}: published {p.next_seq}, acked {len(p.acked)}{extra}"
                  + (f" [{'; '.join(sorted(set(p.notes)))}]" if p.notes else ""))
        q1 = sum(len(p.acked) for p in self.pubs if p.qos == 1)
        q2 = sum(len(p.acked) for p in self.pubs if p.qos == 2)
        print(f"  acked in all: {q1} QoS 1, {q2} QoS 2")
        print("subscribers:")
        total_lost = total_dup2 = 0
        by_id = {p.pubid: p for p in self.pubs}
        for s in self.subs:
            lost = {1: 0, 2: 0}
            lost_seqs = {}
            dup1 = dup2_acked = dup2_unacked = unacked_rx = phantom = 0
            for p in self.pubs:
                acked = p.acked
                for seq in acked:
                    n = s.counts.get((p.pubid, seq), 0)
                    if n == 0:
                        lost[p.qos] += 1
                        lost_seqs.setdefault(p.pubid, []).append(seq)
            for (pubid, seq), n in s.counts.items():
                p = by_id[pubid]
                is_acked = seq in p.acked
                if not is_acked:
                    unacked_rx += 1
                if seq >= p.next_seq:
                    phantom += 1
                if n > 1:
                    if p.qos == 1:
                        dup1 += n - 1
                    elif is_acked:
                        dup2_acked += n - 1
                    else:
                        dup2_unacked += n - 1
            kind = "online" if s.online else "offline"
            print(f"  {s.cid} ({kind}): {s.deliveries} deliveries ({s.retained_deliveries} retained topic); "
                  f"lost {lost[1]} QoS 1 + {lost[2]} QoS 2; QoS 2 duplicates {dup2_acked} acked + "
                  f"{dup2_unacked} unacked; QoS 1 duplicates {dup1} (allowed); unacked delivered {unacked_rx}")
            for pubid, seqs in sorted(lost_seqs.items()):
                print(f"      lost {pubid}: {ranges(sorted(seqs))}")
            problems = []
            if lost[1] or lost[2]:
                problems.append(f"lost {lost[1] + lost[2]} acked messages")
            if dup2_acked or dup2_unacked:
                problems.append(f"{dup2_acked + dup2_unacked} QoS 2 duplicates")
            if s.qos_mismatch:
                problems.append(f"{s.qos_mismatch} deliveries at the wrong QoS")
            if phantom or s.bad_count:
                problems.append(f"{phantom + s.bad_count} unknown messages {s.bad}")
            if s.session_lost:
                problems.append(f"no session present on reconnect at {', '.join(s.session_lost[:5])}"
                                + (f" (+{len(s.session_lost) - 5} more)" if len(s.session_lost) > 5 else ""))
            for pr in problems:
                self.failures.append(f"{s.cid}: {pr}")
            total_lost += lost[1] + lost[2]
            total_dup2 += dup2_acked + dup2_unacked
        if self.members:
            self.report_group()
        print("retained:")
        for line in self.retained_result or ["  (not checked)"]:
            print(f"  {line}")
        print(f"lost (acked, summed over subscribers): {total_lost}; QoS 2 duplicates: {total_dup2}")
        if self.failures:
            print(f"RESULT: FAIL ({len(self.failures)} problems)")
            for f in self.failures:
                print("  - " + f.splitlines()[0])
            if self.broker.log_path:
                print(f"tail of the last broker log, {self.broker.log_path}:")
                print(tail(self.broker.log_path, 15))
        else:
            print("RESULT: PASS")
        sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--work-dir", required=True, help="holds data/ and logs/")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--fsync", default="always", choices=["always", "interval", "never"])
    ap.add_argument("--fsync-interval-ms", type=int, default=None)
    ap.add_argument("--log-compaction-bytes", type=int, default=None,
                    help="compact the log at this size (small: compactions under load)")
    ap.add_argument("--no-persistence", action="store_true",
                    help="development: start the broker without --data-dir/--fsync")
    ap.add_argument("--stop", default="kill", choices=["kill", "term", "none"],
                    help="development: how each round ends (none: the broker keeps running)")
    ap.add_argument("--min-load", type=float, default=1.0)
    ap.add_argument("--max-load", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=500,
                    help="messages per second per publisher, 0 = as fast as the window allows")
    ap.add_argument("--window", type=int, default=20, help="in-flight messages per publisher")
    ap.add_argument("--retain-every", type=int, default=10,
                    help="every Nth publish of the first QoS 1 publisher is a retained one")
    ap.add_argument("--qos1-publishers", type=int, default=2)
    ap.add_argument("--qos2-publishers", type=int, default=2)
    ap.add_argument("--subscribers", type=int, default=4, help="half online, half offline")
    ap.add_argument("--shared", action="store_true",
                    help="also a shared group $share/crash/crash/# of persistent members")
    ap.add_argument("--shared-stable", type=int, default=2, help="members online through the rounds")
    ap.add_argument("--shared-flaky", type=int, default=2,
                    help="members that disconnect and reconnect at random moments")
    ap.add_argument("--shared-away", type=int, default=1,
                    help="members that leave at a random moment and stay away until the end")
    ap.add_argument("--quiet", type=float, default=5.0, help="final drain ends after this long without a message")
    ap.add_argument("--drain-max", type=float, default=90.0)
    ap.add_argument("--start-timeout", type=float, default=30.0)
    ap.add_argument("--pidfile", default=None, help="the running broker's pid is written here")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if args.qos1_publishers < 1 or args.subscribers < 2:
        ap.error("need at least one QoS 1 publisher and two subscribers")
    args.data_dir = os.path.join(args.work_dir, "data")
    args.log_dir = os.path.join(args.work_dir, "logs")
    os.makedirs(args.data_dir, exist_ok=True)
    os.makedirs(args.log_dir, exist_ok=True)

    run = Run(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rounds_done = 0
    try:
        log(f"{args.rounds} rounds, seed {args.seed}, {len(run.pubs)} publishers, {len(run.subs)} subscribers, "
            + (f"{len(run.members)} shared-group members, " if run.members else "")
            + f"work dir {args.work_dir}")
        ok = True
        for r in range(1, args.rounds + 1):
            if not run.round(r):
                ok = False
                break
            rounds_done = r
        if ok:
            run.final()
    except KeyboardInterrupt:
        run.fail("interrupted")
    finally:
        if run.broker.running():
            run.broker.stop("term")
        for p in run.pubs:
            p.stop_load()
    run.report(rounds_done)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())

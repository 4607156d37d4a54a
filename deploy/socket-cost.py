#!/usr/bin/env python3
"""Measures what an idle, established TCP socket costs the kernel on this machine.

Opens N loopback connection pairs (2N sockets, none with data queued), and reports
the growth of the kernel's slab memory (/proc/meminfo Slab) per socket, with the
slab caches that grew most. Usage: deploy/socket-cost.py [N] (default 4000; needs
2N + 20 open files). The figure is this kernel's: other kernels, configurations
(conntrack, audit) and page sizes give other figures; run it on the target machine.
"""
import gc
import socket
import sys
import time


def slab_kib():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Slab:"))


def caches():
    try:
        with open("/proc/slabinfo") as f:
            rows = f.read().splitlines()[2:]
    except OSError:
        return {}
    # name active_objs num_objs objsize ...: bytes held by allocated objects
    return {r.split()[0]: int(r.split()[2]) * int(r.split()[3]) for r in rows}


def settle():
    gc.collect()
    time.sleep(1.0)


n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
addr = listener.getsockname()
settle()
before, before_caches = slab_kib(), caches()
held = []
for _ in range(n):
    c = socket.create_connection(addr)
    s, _ = listener.accept()
    held += [c, s]
settle()
after, after_caches = slab_kib(), caches()
sockets = len(held)
print(f"{sockets} idle established TCP sockets (loopback, both ends)")
print(f"kernel slab growth: {(after - before) * 1024 / sockets:.0f} bytes per socket")
grew = sorted(
    ((after_caches.get(k, 0) - before_caches.get(k, 0), k) for k in after_caches),
    reverse=True,
)
for delta, name in grew[:8]:
    if delta > 0:
        print(f"  {name:24} {delta / sockets:7.0f} bytes per socket")

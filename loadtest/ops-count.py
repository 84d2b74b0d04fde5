#!/usr/bin/env python3
"""What one operation costs the cluster's backends, counted, not timed:
Redis commands (by command, from INFO commandstats) and bytes, and NATS
messages and bytes (the server's /varz), per PUBLISH with nobody watching
and per PUBLISH with W watchers (each change a NOTIFY to each watcher).

Counts do not depend on the machine's load or on the build profile, so a
debug build and a busy box give the same figures; the idle background
(lease renewals, outbox and expiry sweeps) is measured for as long as each
phase lasted and subtracted.

One local cluster (scripts/cluster-up.sh, SECURE=0: counts are the same
with TLS): 1 edge, 1 compositor, 1 notifier. The phases, each from fresh
counters:
  idle       nothing sent, as long as the next phase takes
  unwatched  N initial PUBLISHes, each to its own AoR nobody watches
  watched    N PUBLISHes (each a change) to P presentities with W watchers
             each, every NOTIFY answered 200 by the watchers' socket

Usage: loadtest/ops-count.py [--presenced BIN] [-n N] [--watchers W]
       [--presentities P]. Prints markdown.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from check_monitoring import Ua, pidf  # noqa: E402


def redis(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out


def redis_counts(port):
    """{command: calls} and (bytes in, bytes out) of the Redis server."""
    calls = {}
    for line in redis(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            calls[name] = int(fields["calls"])
    stats = dict(l.split(":", 1) for l in redis(port, "INFO", "stats").splitlines() if ":" in l)
    return calls, (int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"]))


def nats_counts(monitor):
    v = json.load(urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5))
    return v["in_msgs"], v["out_msgs"], v["in_bytes"], v["out_bytes"]


def snapshot(ports):
    calls, rbytes = redis_counts(ports["redis"])
    return calls, rbytes, nats_counts(ports["monitor"])


def delta(a, b):
    calls = {k: b[0].get(k, 0) - a[0].get(k, 0) for k in set(a[0]) | set(b[0])}
    calls.pop("info", None)  # our own snapshots
    calls = {k: v for k, v in calls.items() if v}
    return calls, tuple(y - x for x, y in zip(a[1], b[1])), tuple(y - x for x, y in zip(a[2], b[2]))


def minus(d, idle, scale):
    """`d` less `idle` scaled to the same duration."""
    calls = {k: v - idle[0].get(k, 0) * scale for k, v in d[0].items()}
    return (calls, tuple(x - y * scale for x, y in zip(d[1], idle[1])),
            tuple(x - y * scale for x, y in zip(d[2], idle[2])))


def publish(ua, aor, note, etag=None):
    """One PUBLISH of `aor` (refreshing the publication `etag` with a new
    body when given); its answer's SIP-ETag."""
    headers = ["Event: presence", "Expires: 3600", "Content-Type: application/pidf+xml"]
    if etag:
        headers.append(f"SIP-If-Match: {etag}")
    branch, data = ua.encode("PUBLISH", aor, headers, pidf(aor, note), to=aor)
    ua.sock.sendto(data, ua.server)
    text = ua.pump(8, branch)
    if text is None or not text.startswith("SIP/2.0 200"):
        raise RuntimeError(f"PUBLISH {aor}: {text and text.splitlines()[0]}")
    return next(l.split(":", 1)[1].strip() for l in text.split("\r\n")
                if l.lower().startswith("sip-etag:"))


class Watchers(threading.Thread):
    """One UDP socket for every watcher: SUBSCRIBEs go out from it and
    every NOTIFY is answered 200 and counted."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.ua = Ua("watchers", server)
        self.lock = threading.Lock()
        self.notifies = 0
        self.stop = False

    def subscribe(self, watcher, presentity):
        self.ua.user = watcher
        self.ua.aor = f"sip:{watcher}@example.com"
        self.ua.request("SUBSCRIBE", presentity, ["Event: presence", "Expires: 3600",
                                                  "Accept: application/pidf+xml"])

    def run(self):
        sock = self.ua.sock
        while not self.stop:
            sock.settimeout(0.2)
            try:
                data, _ = sock.recvfrom(65536)
            except socket.timeout:
                continue
            text = data.decode("utf-8", "replace")
            if text.startswith("NOTIFY"):
                sock.sendto(self.ua.answer(text), self.ua.server)
                with self.lock:
                    self.notifies += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presenced", default=os.path.join(ROOT, "target/debug/presenced"))
    ap.add_argument("-n", type=int, default=1000, help="PUBLISHes per phase")
    ap.add_argument("--watchers", type=int, default=10)
    ap.add_argument("--presentities", type=int, default=100)
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="ops-count-")
    env = dict(os.environ, STATE=state, PRESENCED=args.presenced, EDGES="1", COMPOSITORS="1",
               NOTIFIERS="1", SHARDS="16", SECURE="0", USERS="", POLICY="", SIP_BASE="", LOG="warn")
    subprocess.run([os.path.join(ROOT, "scripts/cluster-up.sh")], env=env, check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        text = open(os.path.join(state, "endpoints.txt")).read()

        def port_after(prefix):
            rest = text[text.index(prefix) + len(prefix):]
            return int("".join(c for c in rest[:6] if c.isdigit()))
        ports = {"sip": port_after("sip:127.0.0.1:"), "redis": port_after("redis://127.0.0.1:"),
                 "monitor": port_after("(monitoring http://127.0.0.1:")}
        server = ("127.0.0.1", ports["sip"])
        time.sleep(3)  # shards owned, roles settled

        watchers = Watchers(server)
        presentities = [f"sip:pres{i}@example.com" for i in range(args.presentities)]
        for p in presentities:
            for w in range(args.watchers):
                watchers.subscribe(f"w{w}x{p[8:-12]}", p)
        watchers.start()
        publisher = Ua("publisher", server)
        # Each presentity published once before counting: every counted
        # PUBLISH of the watched phase is a change of existing state.
        etags = {p: publish(publisher, p, "start") for p in presentities}
        time.sleep(2)

        def phase(run):
            before = snapshot(ports)
            t0 = time.monotonic()
            run()
            time.sleep(1.0)  # the last jobs' NOTIFYs and acks
            return delta(before, snapshot(ports)), time.monotonic() - t0

        def unwatched():
            for i in range(args.n):
                publish(publisher, f"sip:lone{i}@example.com", "x")

        delivered = {}

        def watched():
            start = watchers.notifies
            want = start + args.n * args.watchers
            for i in range(args.n):
                p = presentities[i % len(presentities)]
                etags[p] = publish(publisher, p, f"n{i}", etags[p])
            deadline = time.monotonic() + 30
            while watchers.notifies < want and time.monotonic() < deadline:
                time.sleep(0.1)
            # Changes of one presentity close together may be told in one
            # NOTIFY (the notifier sends the newest document): fewer is fine.
            time.sleep(1.0)
            delivered["n"] = watchers.notifies - start

        u, u_s = phase(unwatched)
        w, w_s = phase(watched)
        idle, idle_s = phase(lambda: time.sleep(max(u_s, w_s) - 1.0))
        watchers.stop = True
        per = delivered["n"] / args.n
        rows = [("PUBLISH, nobody watching", minus(u, idle, u_s / idle_s)),
                (f"PUBLISH to {args.watchers} watchers ({per:.2f} NOTIFYs delivered each)",
                 minus(w, idle, w_s / idle_s))]
        n = args.n
        print(f"Per operation, {n} of each (idle background subtracted; "
              f"`python3 loadtest/ops-count.py -n {n} --watchers {args.watchers}`, "
              f"presenced {args.presenced}):\n")
        print("| operation | Redis commands | Redis bytes in / out | NATS msgs in / out | NATS bytes in / out |")
        print("|---|---|---|---|---|")
        for name, (calls, rb, nb) in rows:
            print(f"| {name} | {sum(calls.values()) / n:.1f} | {rb[0] / n:.0f} / {rb[1] / n:.0f} | "
                  f"{nb[0] / n:.1f} / {nb[1] / n:.1f} | {nb[2] / n:.0f} / {nb[3] / n:.0f} |")
        print()
        for name, (calls, _, _) in rows:
            top = sorted(calls.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{k} {v / n:.2f}" for k, v in top if v / n >= 0.05)
            print(f"- {name}: {shown}")
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/cluster-down.sh")], env=env,
                       stdout=subprocess.DEVNULL, cwd=ROOT)


if __name__ == "__main__":
    main()

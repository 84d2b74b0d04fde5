#!/usr/bin/env python3
"""Overload and connection-cost figures for docs/benchmarks.md §4.

Three measurements against one all-in-one `presenced` (release build) on
127.0.0.1, started here with the load tool's single-address exemption
(`--rate-per-source` high: every simulated UA shares 127.0.0.1):

1. overload: presence-loadtest offers a fan-out load far past the server's
   capacity while a probe from another address (127.0.0.2, its own rate
   bucket) sends an OPTIONS every 200 ms and, every second, a PUBLISH from a
   canary presentity whose NOTIFY a canary watcher must receive. Reported:
   OPTIONS answer time and canary change->NOTIFY time (p50/p99/max, and
   how many took over 1 s or never came), and the server's RSS over time.
2. idle: N TCP connections that each send one OPTIONS and then stay silent:
   the server's RSS and CPU before and after.
3. trickle: M TCP connections sending one byte per second: how long until
   the server closes them (header timeout) and what they cost meanwhile.

Usage: loadtest/overload-bench.py [--bin DIR] [--duration S] [--rate N]
       [--idle N] [--trickle N]. Prints a markdown report. Bounded in time;
loopback only.
"""
import argparse
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time


from benchproc import cpu_s, free_port, rss_kb  # noqa: E402


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def sip(method, uri, local, branch, extra=(), body=b"", ctype=None, frm=None, to=None, call_id=None, cseq=1, to_tag=None):
    frm = frm or "<sip:probe@example.com>;tag=p" + branch
    to = to or f"<{uri}>"
    if to_tag:
        to += f";tag={to_tag}"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{branch};rport",
        "Max-Forwards: 70",
        f"From: {frm}",
        f"To: {to}",
        f"Call-ID: {call_id or branch}@probe",
        f"CSeq: {cseq} {method}",
    ]
    lines += list(extra)
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Probe(threading.Thread):
    """OPTIONS every 200 ms and a canary PUBLISH -> NOTIFY every second, from
    127.0.0.2 (UDP, retransmitting like a UA: T1 = 500 ms)."""

    def __init__(self, server, stop):
        super().__init__(daemon=True)
        self.server, self.stop = server, stop
        self.options, self.options_lost = [], 0
        self.notify, self.notify_lost, self.publish_refused = [], 0, 0
        self.published = []  # canary PUBLISH -> its final answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.2", 0))
        self.sock.settimeout(0.05)
        self.local = self.sock.getsockname()
        self.pending = {}  # branch -> (kind, sent_at, bytes, next_retransmit, interval)
        self.waiting_change = None  # (seq, t0)
        self.seq = 0
        self.etag = None

    def send(self, kind, data, branch):
        now = time.monotonic()
        self.pending[branch] = [kind, now, data, now + 0.5, 0.5]
        self.sock.sendto(data, self.server)

    def answer(self, text):
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [l for l in head[1:] if l.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def pidf(self, seq):
        return (f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:canary@example.com">'
                f'<tuple id="c"><status><basic>open</basic></status><note>canary {seq}</note></tuple></presence>').encode()

    def run(self):
        # The canary watcher subscribes to the canary presentity.
        b = "sub%d" % random.randrange(1 << 30)
        self.send("setup", sip("SUBSCRIBE", "sip:canary@example.com", self.local, b,
                               extra=["Event: presence", f"Contact: <sip:canwatch@{self.local[0]}:{self.local[1]}>",
                                      "Expires: 3600"], frm=f"<sip:canwatch@example.com>;tag=w{b}"), b)
        next_options = next_change = time.monotonic() + 1
        n = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_options:
                n += 1
                b = "o%d-%d" % (n, random.randrange(1 << 30))
                self.send("options", sip("OPTIONS", "sip:example.com", self.local, b), b)
                next_options += 0.2
            if now >= next_change:
                if self.waiting_change is not None:
                    self.notify_lost += 1
                self.seq += 1
                b = "pub%d-%d" % (self.seq, random.randrange(1 << 30))
                extra = ["Event: presence", "Expires: 3600"]
                if self.etag:
                    extra.append(f"SIP-If-Match: {self.etag}")
                self.send("publish", sip("PUBLISH", "sip:canary@example.com", self.local, b, extra=extra,
                                         body=self.pidf(self.seq), ctype="application/pidf+xml",
                                         frm="<sip:canary@example.com>;tag=c1"), b)
                self.waiting_change = (self.seq, now)
                next_change += 1.0
            for br, p in list(self.pending.items()):
                if now >= p[1] + 32:
                    if p[0] == "options":
                        self.options_lost += 1
                    del self.pending[br]
                elif now >= p[3]:
                    self.sock.sendto(p[2], self.server)
                    p[4] = min(p[4] * 2, 4.0)
                    p[3] = now + p[4]
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            text = data.decode("utf-8", "replace")
            t = time.monotonic()
            if text.startswith("SIP/2.0"):
                code = int(text.split()[1])
                if code < 200:
                    continue
                branch = text.split("branch=z9hG4bK", 1)[1].split(";", 1)[0].split("\r", 1)[0]
                p = self.pending.pop(branch, None)
                if p is None:
                    continue
                if p[0] == "options":
                    self.options.append(t - p[1])
                if p[0] == "publish":
                    self.published.append(t - p[1])
                if p[0] == "publish" and code == 200:
                    for line in text.split("\r\n"):
                        if line.lower().startswith("sip-etag:"):
                            self.etag = line.split(":", 1)[1].strip()
                if p[0] == "publish" and code == 412:
                    self.etag = None
                if p[0] == "publish" and code != 200:
                    # Refused (503 while shedding): no change, no NOTIFY owed.
                    self.publish_refused += 1
                    self.waiting_change = None
            elif text.startswith("NOTIFY"):
                self.sock.sendto(self.answer(text), self.server)
                if self.waiting_change and f"canary {self.waiting_change[0]}<" in text:
                    self.notify.append(t - self.waiting_change[1])
                    self.waiting_change = None


def start_server(bindir, sip_port, http_port, extra=()):
    return subprocess.Popen(
        [f"{bindir}/presenced", "--sip-listen", f"127.0.0.1:{sip_port}", "--http-listen",
         f"127.0.0.1:{http_port}", "--domain", "example.com", "--log", "error", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(http_port):
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", http_port), timeout=0.2)
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if b"200" in s.recv(100):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready")


def overload(args):
    sip_port, http_port = free_port(), free_port()
    srv = start_server(args.bin, sip_port, http_port,
                       ["--rate-per-source", "1000000", "--burst-per-source", "1000000",
                        *args.server_arg])
    wait_ready(http_port)
    stop = threading.Event()
    probe = Probe(("127.0.0.1", sip_port), stop)
    rss = []
    load = subprocess.Popen(
        [f"{args.bin}/presence-loadtest", "--target", f"127.0.0.1:{sip_port}", "--users", str(args.users),
         "--buddies", str(args.buddies), "--publish-rate", str(args.rate), "--duration", str(args.duration),
         "--setup-rate", "5000", "--max-errors", "100000000", "--no-teardown"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe.start()
    t0 = time.monotonic()
    while load.poll() is None and time.monotonic() - t0 < args.duration + 240:
        rss.append(rss_kb(srv.pid))
        time.sleep(1)
    if load.poll() is None:
        load.kill()
    out = load.communicate()[0]
    stop.set()
    probe.join(5)
    srv.terminate()
    srv.wait(10)
    return probe, rss, out


def connections(args):
    sip_port, http_port = free_port(), free_port()
    srv = start_server(args.bin, sip_port, http_port,
                       ["--max-connections-per-source", "100000", "--max-connections", "100000",
                        "--rate-per-source", "1000000", "--burst-per-source", "1000000"])
    wait_ready(http_port)
    time.sleep(1)
    base_rss, base_cpu = rss_kb(srv.pid), cpu_s(srv.pid)
    idle = []
    for i in range(args.idle):
        s = socket.create_connection(("127.0.0.1", sip_port))
        local = s.getsockname()
        s.sendall(sip("OPTIONS", "sip:example.com", local, "i%d" % i).replace(b"/UDP", b"/TCP"))
        idle.append(s)
    for s in idle:
        s.settimeout(5)
        s.recv(4096)
    time.sleep(5)
    idle_rss = rss_kb(srv.pid)
    cpu_before = cpu_s(srv.pid)
    time.sleep(10)
    idle_cpu = (cpu_s(srv.pid) - cpu_before) / 10
    for s in idle:
        s.close()
    time.sleep(2)
    # Trickling: one byte per second each, until the server closes them.
    trickle = [socket.create_connection(("127.0.0.1", sip_port)) for _ in range(args.trickle)]
    msg = sip("OPTIONS", "sip:example.com", ("127.0.0.1", 1), "t")
    closed_at = [None] * len(trickle)
    t0 = time.monotonic()
    peak_rss = rss_kb(srv.pid)
    cpu_before = cpu_s(srv.pid)
    for k in range(30):
        for i, s in enumerate(trickle):
            if closed_at[i] is not None:
                continue
            try:
                s.sendall(msg[k:k + 1])
            except OSError:
                closed_at[i] = time.monotonic() - t0
        peak_rss = max(peak_rss, rss_kb(srv.pid))
        if all(c is not None for c in closed_at):
            break
        time.sleep(1)
    trickle_cpu = (cpu_s(srv.pid) - cpu_before) / max(1e-9, time.monotonic() - t0)
    for s in trickle:
        s.close()
    srv.terminate()
    srv.wait(10)
    return dict(base_rss=base_rss, idle_rss=idle_rss, idle_cpu=idle_cpu, peak_rss=peak_rss,
                closed=[c for c in closed_at if c is not None], trickle_cpu=trickle_cpu)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--duration", type=int, default=40)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--buddies", type=int, default=30)
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--trickle", type=int, default=1000)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="an extra presenced argument for the overload run (repeatable)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))

    probe, rss, out = overload(args)
    print(f"### Overload: {args.rate} PUBLISH/s x {args.buddies} watchers offered ({args.rate * args.buddies} NOTIFY/s), {args.users} UAs, {args.duration} s\n")
    tail = [l for l in out.splitlines() if l.strip()][-25:]
    print("presence-loadtest's own summary (its canary is expected to fail: the load is past capacity):\n")
    print("```\n" + "\n".join(tail) + "\n```\n")
    o, n = probe.options, probe.notify
    print("| probe (from 127.0.0.2) | count | p50 ms | p99 ms | max ms | over 1 s | never answered |")
    print("|---|---|---|---|---|---|---|")
    print(f"| OPTIONS every 200 ms | {len(o)} | {pct(o,50)*1000:.1f} | {pct(o,99)*1000:.1f} | {max(o, default=0)*1000:.1f} | {sum(1 for x in o if x > 1)} | {probe.options_lost} |")
    print(f"| canary PUBLISH -> NOTIFY every 1 s | {len(n)} | {pct(n,50)*1000:.1f} | {pct(n,99)*1000:.1f} | {max(n, default=0)*1000:.1f} | {sum(1 for x in n if x > 1)} | {probe.notify_lost} |")
    pb = probe.published
    print(f"| canary PUBLISH -> its answer | {len(pb)} | {pct(pb,50)*1000:.1f} | {pct(pb,99)*1000:.1f} | {max(pb, default=0)*1000:.1f} | {sum(1 for x in pb if x > 1)} | |")
    print(f"\nCanary PUBLISHes refused (503, shed): {probe.publish_refused}.")
    if rss:
        third = max(1, len(rss) // 3)
        print(f"\nServer RSS (MB): first third max {max(rss[:third])/1024:.0f}, middle third max {max(rss[third:2*third] or [0])/1024:.0f}, last third max {max(rss[2*third:] or [0])/1024:.0f}, overall max {max(rss)/1024:.0f}")
        print("RSS every 5 s (MB): " + " ".join(f"{r/1024:.0f}" for r in rss[::5]) + "\n")

    if args.idle == 0 and args.trickle == 0:
        return
    c = connections(args)
    print(f"### Connections\n")
    print("| | value |")
    print("|---|---|")
    print(f"| RSS before | {c['base_rss']/1024:.1f} MB |")
    print(f"| RSS with {args.idle} idle TCP connections | {c['idle_rss']/1024:.1f} MB ({(c['idle_rss']-c['base_rss'])/args.idle:.1f} KB each) |")
    print(f"| server CPU while they idle | {c['idle_cpu']*100:.2f} % of a core |")
    closed = c["closed"]
    print(f"| {args.trickle} trickling connections (1 byte/s) closed | {len(closed)} of {args.trickle}, after {min(closed, default=0):.1f}-{max(closed, default=0):.1f} s |")
    print(f"| RSS peak while trickling | {c['peak_rss']/1024:.1f} MB |")
    print(f"| server CPU while trickling | {c['trickle_cpu']*100:.2f} % of a core |")


if __name__ == "__main__":
    main()

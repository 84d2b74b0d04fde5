#!/usr/bin/env python3
"""TCP, TLS, WebSocket and secure WebSocket side by side, for docs/benchmarks.md.

One all-in-one `presenced` (release build) with a TCP, a TLS and a
WebSocket listener, a throwaway CA and server certificate made here with
`openssl`. presence-loadtest plays the same load over each transport in
turn (a fresh server each time, so state does not carry over); reported per
transport: messages the server handled per second, the server's CPU per
message (from /proc, user + system), latencies, and whether the load
tool's canary passed. Then the TLS handshake cost: N new TLS connections
(Python's ssl), the server's CPU per handshake and handshakes per second of
one core at that cost. Last, the server's memory per idle connection: N
connections opened (TCP, and TLS with its handshake done) and left idle,
resident memory before and after.

Usage: loadtest/transport-bench.py [--bin DIR] [--users N] [--buddies N]
       [--rate N] [--duration S] [--handshakes N] [--idle N]. Prints markdown.
"""
import argparse
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from benchproc import cpu_s, free_port, rss_kb  # noqa: E402


def make_certs(d):
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    def run(*a):
        subprocess.run(a, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ca_key, ca, key, csr, cert = (os.path.join(d, n) for n in ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem"))
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "2", "-subj", "/CN=bench CA", "-keyout", ca_key, "-out", ca)
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-extfile", ext, "-out", cert)
    return ca, cert, key


def start(bindir, cert, key):
    ports = {n: free_port() for n in ("sip", "tls", "ws", "wss", "http")}
    srv = subprocess.Popen(
        [f"{bindir}/presenced", "--sip-listen", f"127.0.0.1:{ports['sip']}",
         "--sip-tls-listen", f"127.0.0.1:{ports['tls']}", "--sip-ws-listen", f"127.0.0.1:{ports['ws']}",
         "--sip-wss-listen", f"127.0.0.1:{ports['wss']}",
         "--tls-cert", cert, "--tls-key", key, "--http-listen", f"127.0.0.1:{ports['http']}",
         "--domain", "example.com", "--log", "error",
         # Every simulated UA shares 127.0.0.1: lift the per-source limits.
         "--rate-per-source", "1000000", "--burst-per-source", "1000000",
         "--max-connections-per-source", "100000", "--max-connections", "100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", ports["tls"]), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return srv, ports


def load(args, transport, ca, cert, key):
    srv, ports = start(args.bin, cert, key)
    port = {"tcp": ports["sip"], "tls": ports["tls"], "ws": ports["ws"], "wss": ports["wss"]}[transport]
    before = cpu_s(srv.pid)
    t0 = time.monotonic()
    out = subprocess.run(
        [f"{args.bin}/presence-loadtest", "--target", f"127.0.0.1:{port}", "--transport", transport,
         "--tls-ca", ca, "--users", str(args.users), "--buddies", str(args.buddies),
         "--publish-rate", str(args.rate), "--duration", str(args.duration)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    wall = time.monotonic() - t0
    cpu = cpu_s(srv.pid) - before
    srv.terminate()
    srv.wait(10)
    return out, cpu, wall


def handshakes(args, ca, cert, key):
    srv, ports = start(args.bin, cert, key)
    ctx = ssl.create_default_context(cafile=ca)
    time.sleep(0.5)
    before = cpu_s(srv.pid)
    t0 = time.monotonic()
    for _ in range(args.handshakes):
        with socket.create_connection(("127.0.0.1", ports["tls"])) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
    wall = time.monotonic() - t0
    cpu = cpu_s(srv.pid) - before
    srv.terminate()
    srv.wait(10)
    return cpu, wall


def idle_memory(args, ca, cert, key, kind):
    """Resident memory the server spends per idle connection of `kind`
    (tcp, or tls with the handshake done): RSS before and after opening
    --idle of them, per connection."""
    srv, ports = start(args.bin, cert, key)
    time.sleep(0.5)
    before = rss_kb(srv.pid)
    ctx = ssl.create_default_context(cafile=ca)
    conns = []
    for _ in range(args.idle):
        raw = socket.create_connection(("127.0.0.1", ports["sip" if kind == "tcp" else "tls"]))
        conns.append(ctx.wrap_socket(raw, server_hostname="127.0.0.1") if kind == "tls" else raw)
    time.sleep(1.0)
    after = rss_kb(srv.pid)
    for c in conns:
        c.close()
    srv.terminate()
    srv.wait(10)
    return (after - before) / args.idle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--buddies", type=int, default=10)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--handshakes", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=2000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.idle + 256)), hard))
    d = tempfile.mkdtemp(prefix="transport-bench-")
    ca, cert, key = make_certs(d)
    print(f"### TCP, TLS, WebSocket and secure WebSocket: {args.users} UAs x {args.buddies} buddies, "
          f"{args.rate} PUBLISH/s for {args.duration} s, one all-in-one presenced\n")
    print("| transport | messages | server CPU s | server µs/message | PUBLISH p50 / p99 ms | change->NOTIFY p50 / p99 ms | canary |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for t in ("tcp", "tls", "ws", "wss"):
        out, cpu, wall = load(args, t, ca, cert, key)
        lines = [l for l in out.splitlines() if l.strip()]
        def row(method):
            for l in lines:
                f = l.split()
                if f and f[0] == method:
                    return f
            return None
        msgs = 0
        for l in lines:
            f = l.split()
            if len(f) > 2 and f[0] in ("PUBLISH", "REGISTER", "SUBSCRIBE", "MESSAGE") and f[1].isdigit():
                msgs += int(f[1]) * 2  # request and answer
            if len(f) > 2 and f[0] == "NOTIFY" and f[1] == "in":
                msgs += int(f[2]) * 2
        p, n = row("PUBLISH"), row("NOTIFY")
        passed = "passed" if any(l.strip() == "PASSED" for l in lines) else "FAILED"
        rows[t] = cpu / max(1, msgs) * 1e6
        print(f"| {t} | {msgs} | {cpu:.2f} | {rows[t]:.1f} | "
              f"{p[4] if p else '?'} / {p[6] if p else '?'} | {n[5] if n else '?'} / {n[7] if n else '?'} | {passed} |")
        if passed != "passed":
            print("\n```\n" + "\n".join(lines[-15:]) + "\n```\n", file=sys.stderr)
    print(f"\nServer CPU per message relative to TCP: TLS {rows['tls'] / rows['tcp']:.2f}x, "
          f"WebSocket {rows['ws'] / rows['tcp']:.2f}x, secure WebSocket {rows['wss'] / rows['tcp']:.2f}x "
          f"(same load, same run).\n")
    tcp_kb = idle_memory(args, ca, cert, key, "tcp")
    tls_kb = idle_memory(args, ca, cert, key, "tls")
    print(f"Idle connections: {args.idle} opened and left idle; server memory {tcp_kb:.1f} KB per TCP "
          f"connection, {tls_kb:.1f} KB per TLS connection (handshake done).\n")
    cpu, wall = handshakes(args, ca, cert, key)
    per = cpu / args.handshakes
    if per <= 0:
        print(f"TLS handshakes: {args.handshakes} are too few to measure (CPU is counted in 10 ms ticks).\n")
        return
    print(f"TLS handshakes: {args.handshakes} new connections (Python ssl client, one at a time) in {wall:.1f} s; "
          f"server CPU {per * 1e6:.0f} µs per handshake, i.e. about {1 / per:.0f} handshakes/s per core.\n")


if __name__ == "__main__":
    main()

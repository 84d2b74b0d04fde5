#!/usr/bin/env python3
"""The presence API under load, for docs/benchmarks.md §8.

For each load a fresh all-in-one `presenced` (release build, per-source
rate limits lifted: every simulated client shares 127.0.0.1) with its api
role on a free port, and `presence-apibench` against it: M AoRs PUBLISHed
once, N Watch streams of D AoRs each opened and synced, K SIP watchers
SUBSCRIBEd to some of the same AoRs, then R changes/s (SIP PUBLISH over
UDP) for T seconds; change → stream event and change → NOTIFY latency on
the same churn; then GetPresence batches. The bench reads the server's
resident memory (before the streams, and with N idle synced streams) and
CPU (from the churn's start until every stream and watcher shows the
newest changes) from /proc, given the server's pid. The default loads
start with a baseline (no streams: the same churn with the SIP watchers
only) and end with a hot spot (50 AoRs in every one of 1 000 streams).
Last, GetPresence alone at a few batch sizes (no streams, no churn).

The server and the bench share the machine: the bench's own CPU is in the
JSON reports and in the table.

Usage: loadtest/api-bench.py [--bin DIR] [--aors M] [--loads N:D:R,...]
       [--duration S] [--sip-watchers K] [--batches B,...] [--keep DIR].
Builds nothing (cargo build --release -p presenced -p presence-loadtest
first). Prints markdown; exits 1 if any run failed its checks.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from benchproc import free_port  # noqa: E402


def start(bindir):
    ports = {n: free_port() for n in ("sip", "http", "api")}
    srv = subprocess.Popen(
        [f"{bindir}/presenced", "--sip-listen", f"127.0.0.1:{ports['sip']}",
         "--http-listen", f"127.0.0.1:{ports['http']}", "--api-listen", f"127.0.0.1:{ports['api']}",
         "--domain", "example.com", "--log", "error",
         # Every simulated client shares 127.0.0.1: lift the per-source limits.
         "--rate-per-source", "1000000", "--burst-per-source", "1000000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", ports["api"]), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(0.3)
    return srv, ports


def bench(args, extra, name, aors=None):
    """One run on a fresh server: the JSON report, the exit status, stderr."""
    srv, ports = start(args.bin)
    path = os.path.join(args.keep, f"{name}.json")
    try:
        p = subprocess.run(
            [f"{args.bin}/presence-apibench", "--api", f"127.0.0.1:{ports['api']}",
             "--sip", f"127.0.0.1:{ports['sip']}", "--aors", str(aors or args.aors),
             "--server-pid", str(srv.pid), "--seed", "14", "--quiet", "--report", path] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        srv.terminate()
        srv.wait(10)
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError):
        r = None
    return r, p.returncode, p.stdout + p.stderr


def ms(p):
    return f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--aors", type=int, default=10000)
    ap.add_argument("--loads",
                    default="0:0:1000,100:20:1000,1000:20:1000,1000:50:1000,5000:20:500,5000:50:500,1000:50:1000:50",
                    help="streams:aors-per-stream:changes-per-second[:aors], comma-separated (the last "
                         "default one is hot: 50 AoRs, each in every stream, 20 changes/s each; "
                         "0:0:R is the baseline: no streams, the churn over every AoR)")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--sip-watchers", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--callers", type=int, default=4)
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument("--get-duration", type=float, default=8)
    ap.add_argument("--keep", default=None, help="directory for the JSON reports (default: a temp dir)")
    args = ap.parse_args()
    args.keep = args.keep or tempfile.mkdtemp(prefix="api-bench-")
    os.makedirs(args.keep, exist_ok=True)
    failed = []

    print(f"### Watch under PUBLISH churn: {args.aors} AoRs (unless said), contiguous departments, "
          f"{args.connections} HTTP/2 connections, {args.sip_watchers} SIP watchers (at most one per AoR) "
          f"on the same churn, {args.duration:g} s per load, one all-in-one presenced per row\n")
    rows, mem, cpu = [], [], []
    for load in args.loads.split(","):
        f = [int(x) for x in load.split(":")]
        n, d, r = f[:3]
        m = f[3] if len(f) > 3 else args.aors
        name = f"watch-{n}x{d}-{r}-{m}"
        # 0 streams: the baseline, the same churn over every AoR with the
        # SIP watchers only (one stream of one AoR, which the bench needs).
        base = ["--churn-all"] if n == 0 else []
        rep, code, out = bench(args, base + [
            "--streams", str(max(n, 1)), "--aors-per-stream", str(max(d, 1)), "--rate", str(r),
            "--duration", str(args.duration), "--sip-watchers", str(min(args.sip_watchers, m)),
            "--connections", str(args.connections), "--callers", "0"], name, m)
        if rep is None:
            failed.append(name)
            print(f"{name}: no report (exit {code})\n```\n{out[-2000:]}\n```", file=sys.stderr)
            continue
        # The baseline's one stream may well see no change of its one AoR.
        ok = rep["passed"] or (n == 0 and rep["failures"] == ["no stream showed a change"])
        if not ok:
            failed.append(name)
            print(f"{name}: FAILED: {rep['failures']}", file=sys.stderr)
        w, nt, s, ph = rep["watch"], rep["notify"], rep["server"], rep["phases"]
        per_aor = rep["setup"]["watched_pairs"] / max(1, rep["setup"]["churn_aors"])
        ratio = "—" if n == 0 or rep["ratio"]["p50"] is None else \
            f"{rep['ratio']['p50']:.2f} / {rep['ratio']['p99']:.2f}"
        event = "—" if n == 0 else f"{ms(rep['watch_latency'])} / {rep['watch_latency']['max_ms']:.0f}"
        conv = ph["converged_s"]
        label = ("none (SIP only)" if n == 0 else f"{n} × {d}") + ("" if m == args.aors else f" of {m}")
        rows.append(
            f"| {label} | {rep['setup']['watched_pairs'] if n else 0} | {per_aor if n else 0:.1f} | "
            f"{rep['publish']['changes_acked'] / ph['churn_s']:.0f} | {rep['watch_changes_per_s']:.0f} | "
            f"{w['coalesced']} / {nt['coalesced']} | {event} | {ms(rep['notify_latency'])} | {ratio} | "
            f"{rep['watch_lost']} / {w['versions_backwards']} / {rep['notify_lost']} | "
            f"{'—' if conv is None else f'{conv:.1f}'} | {'passed' if ok else 'FAILED'} |")
        grown = (s["rss_kb_streams_synced"] - s["rss_kb_before_streams"]) / 1024
        per_stream = f"{s['kb_per_stream']:.1f}" if n else "—"
        per_pair = f"{s['kb_per_watched_aor'] * 1024:.0f}" if n else "—"
        mem.append(
            f"| {label} | {ph['streams_synced_s']:.2f} | {s['rss_kb_before_streams'] / 1024:.1f} | "
            f"{s['rss_kb_streams_synced'] / 1024:.1f} | {grown:.1f} | {per_stream} | {per_pair} | {s['rss_kb_after_churn'] / 1024:.1f} | "
            f"{s['rss_kb_streams_closed'] / 1024:.1f} |")
        cpu.append(
            f"| {label} | {s['churn_wall_s']:.1f} | {s['churn_cpu_s']:.2f} | "
            f"{s['churn_cpu_s'] / s['churn_wall_s'] * 100:.0f} % | {s['delivered']} | "
            f"{s['us_per_delivered']:.1f} | {s['us_per_change']:.0f} | {rep['bench_churn_cpu_s']:.2f} |")

    print("| streams × AoRs | pairs | streams per AoR | changes/s acked | stream changes/s | coalesced stream / NOTIFY "
          "| change→event p50 / p99 / max ms | change→NOTIFY p50 / p99 ms | Watch/NOTIFY p50 / p99 "
          "| lost / versions back / NOTIFY lost | converged after s | checks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nServer memory (resident, from /proc): before the streams (M AoRs published), and with "
          "the N streams synced and idle.\n")
    print("| streams × AoRs | all synced in s | RSS before MB | RSS with streams MB | grown MB | KB per stream "
          "| bytes per watched AoR | RSS after the churn MB | RSS after closing the streams MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(mem))
    print("\nServer CPU from the churn's start until converged (user + system), per delivered event "
          "(stream states + NOTIFYs) and per change; the bench's own CPU in the same time.\n")
    print("| streams × AoRs | seconds | server CPU s | of one core | delivered | µs per delivered | µs per change "
          "| bench CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(cpu))

    print(f"\n### GetPresence: {args.callers} concurrent callers, {args.get_duration:g} s per batch size, "
          f"{args.aors} AoRs published, no streams, no churn\n")
    print("| AoRs per call | calls/s | AoRs/s | call p50 / p99 ms | server CPU of one core | server µs per AoR "
          "| bench CPU s | errors | checks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b in (int(x) for x in args.batches.split(",")):
        name = f"get-{b}"
        rep, code, out = bench(args, [
            "--streams", "1", "--aors-per-stream", "1", "--duration", "0", "--sip-watchers", "0",
            "--connections", str(args.connections), "--callers", str(args.callers), "--batch", str(b),
            "--get-duration", str(args.get_duration)], name)
        if rep is None or rep.get("get_presence") is None:
            failed.append(name)
            print(f"{name}: no report (exit {code})\n```\n{out[-2000:]}\n```", file=sys.stderr)
            continue
        if not rep["passed"]:
            failed.append(name)
            print(f"{name}: FAILED: {rep['failures']}", file=sys.stderr)
        g, s = rep["get_presence"], rep["server"]
        print(f"| {b} | {g['calls_per_s']:.0f} | {g['aors_per_s']:.0f} | {ms(g['latency'])} | "
              f"{s['get_cpu_s'] / g['duration_s'] * 100:.0f} % | {s['us_per_get_aor']:.2f} | "
              f"{rep['bench_get_cpu_s']:.1f} | {g['errors']} | {'passed' if rep['passed'] else 'FAILED'} |")
    print(f"\nJSON reports in {args.keep}.")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

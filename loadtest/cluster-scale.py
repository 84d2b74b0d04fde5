#!/usr/bin/env python3
"""The scaling curve of the cluster on simulated hosts (`make cluster-scale`).

This machine has 2 cores, so every cluster process gets a host of its own:
a network namespace with its own address on a private bridge
(10.203.0.0/24, the bridge in a "switch" namespace), and the instances of
the tier being measured each get a cgroup CPU quota (a fraction of a core,
`--quota`). With every measured instance capped, adding instances adds
capacity until the real cores fill: throughput with 1, 2 and 4 instances of
one tier, while the other tiers run uncapped with headroom, is that tier's
scaling curve. Redis and NATS run on hosts of their own (`--redis-cluster`:
three Redis Cluster masters on three hosts), as does presence-loadtest.

Per tier the load is the one that tier carries:
  edge, compositor   PUBLISH only (no watchers), more offered than the
                     capped tier can take; each UA waits for its answer, so
                     the delivered rate is the tier's capacity;
  notifier           fan-out: PUBLISHes to presentities with --buddies
                     watchers each; the delivered NOTIFY rate is the tier's.

Every row: throughput, p99, the canary's verdict, CPU per operation by role
(utime+stime of every process over the steady state) and the scaling
efficiency throughput(n) / (n * throughput(1)). The table and an SVG plot
go to docs/benchmarks.md (between "cluster-scale:begin/end") and
docs/scaling.svg; `--doc -` prints only.

Needs root (ip netns, cgroup v1 `cpu`), redis-server, nats-server, and the
release binaries (`--bin`, default target/release). Everything it made
(namespaces, veths, cgroups, processes) is removed at exit, also on
Ctrl-C or SIGTERM; a previous run's leftovers are removed at start.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request  # noqa: F401  (used inside the namespaces' helper)

PREFIX = "psc"
SUBNET = "10.203.0"
CG_ROOT = "/sys/fs/cgroup/cpu/presence-scale"
PERIOD_US = 20_000
SHARDS = 256
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*args, check=True, ns=None, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Hosts:
    """Namespaces on one bridge, processes in them, cgroups around them."""

    def __init__(self):
        self.addr = {}
        self.procs = []  # (name, Popen, log file)
        self.groups = []

    @staticmethod
    def leftovers():
        out = sh("ip", "netns", "list", check=False).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(PREFIX + "-"):
                pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
                for p in pids:
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh("ip", "netns", "del", name, check=False)
        if os.path.isdir(CG_ROOT):
            for g in os.listdir(CG_ROOT):
                p = os.path.join(CG_ROOT, g)
                if os.path.isdir(p):
                    Hosts.empty_group(p)
                    os.rmdir(p)
            os.rmdir(CG_ROOT)

    @staticmethod
    def empty_group(path):
        try:
            pids = open(os.path.join(path, "cgroup.procs")).read().split()
        except OSError:
            return
        for p in pids:
            try:
                with open("/sys/fs/cgroup/cpu/cgroup.procs", "w") as f:
                    f.write(p)
            except OSError:
                pass

    def switch(self):
        sw = f"{PREFIX}-sw"
        sh("ip", "netns", "add", sw)
        sh("ip", "link", "set", "lo", "up", ns=sw)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=sw)
        sh("ip", "link", "set", "br0", "up", ns=sw)

    def add(self, name):
        n = len(self.addr) + 2
        ns, sw = f"{PREFIX}-{name}", f"{PREFIX}-sw"
        a, b = f"{PREFIX}h{n}", f"{PREFIX}s{n}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", ns)
        sh("ip", "link", "set", b, "netns", sw)
        sh("ip", "link", "set", a, "name", "eth0", ns=ns)
        sh("ip", "addr", "add", f"{SUBNET}.{n}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "set", b, "master", "br0", ns=sw)
        sh("ip", "link", "set", b, "up", ns=sw)
        self.addr[name] = f"{SUBNET}.{n}"
        return self.addr[name]

    def start(self, name, args, logdir, quota=None, env=None):
        log = open(os.path.join(logdir, f"{name}.log"), "w")
        p = subprocess.Popen(
            ["ip", "netns", "exec", f"{PREFIX}-{name}"] + [str(a) for a in args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if quota:
            g = os.path.join(CG_ROOT, name)
            os.makedirs(g, exist_ok=True)
            # The kernel's smallest quota is 1 ms: longer periods for
            # smaller shares.
            period = max(PERIOD_US, int(1000 / quota) + 1)
            with open(os.path.join(g, "cpu.cfs_period_us"), "w") as f:
                f.write(str(period))
            with open(os.path.join(g, "cpu.cfs_quota_us"), "w") as f:
                f.write(str(int(period * quota)))
            with open(os.path.join(g, "cgroup.procs"), "w") as f:
                f.write(str(p.pid))
            self.groups.append(g)
        self.procs.append((name, p, log))
        return p

    def run_in(self, name, args, timeout=None):
        return sh(*args, ns=f"{PREFIX}-{name}", check=False, timeout=timeout)

    def stop(self):
        for _, p, _ in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for _, p, log in self.procs:
            try:
                p.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            log.close()
        self.procs = []
        for g in self.groups:
            Hosts.empty_group(g)
            try:
                os.rmdir(g)
            except OSError:
                pass
        self.groups = []

    def teardown(self):
        self.stop()
        for name in list(self.addr) + ["sw"]:
            sh("ip", "netns", "del", f"{PREFIX}-{name}", check=False)
        self.addr = {}
        if os.path.isdir(CG_ROOT):
            try:
                os.rmdir(CG_ROOT)
            except OSError:
                pass


def ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return None


HTTP_PROBE = r"""
import re, sys, urllib.request
ok, owned, members = True, 0, set()
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url.replace("/metrics", "/readyz"), timeout=2) as r:
            ok = ok and r.status == 200
        if "comp" in url.split("#")[-1]:
            text = urllib.request.urlopen(url.split("#")[0], timeout=2).read().decode()
            m = re.search(r"^presence_compositor_shards_owned (\S+)$", text, re.M)
            owned += int(float(m.group(1))) if m else 0
            m = re.search(r"^presence_compositor_cluster_members (\S+)$", text, re.M)
            members.add(int(float(m.group(1))) if m else -1)
    except Exception:
        ok = False
print(ok, owned, ",".join(map(str, sorted(members))))
"""


def run_step(a, tier, n, logdir):
    """One cluster with n instances of `tier` (capped), the others uncapped;
    the load; the figures."""
    os.makedirs(logdir, exist_ok=True)
    h = Hosts()
    counts = {"edge": a.edges, "compositor": a.compositors, "notifier": a.notifiers}
    counts[tier] = n
    try:
        h.switch()
        redis_hosts = ["redis1", "redis2", "redis3"] if a.redis_cluster else ["redis"]
        for r in redis_hosts:
            h.add(r)
        h.add("nats")
        h.add("load")
        names = {role: [f"{role[:4]}{i + 1}" for i in range(counts[role])] for role in counts}
        for role in counts:
            for name in names[role]:
                h.add(name)
        for r in redis_hosts:
            ip = h.addr[r]
            extra = ["--cluster-enabled", "yes", "--cluster-config-file",
                     os.path.join(logdir, f"{r}-nodes.conf")] if a.redis_cluster else []
            h.start(r, ["redis-server", "--bind", ip, "--port", 6379, "--save", "",
                        "--appendonly", "no", "--protected-mode", "no",
                        "--dir", logdir] + extra, logdir)
        for r in redis_hosts:
            wait_for(lambda r=r: h.run_in(r, ["redis-cli", "-h", h.addr[r], "ping"]).stdout.strip() == "PONG",
                     f"redis on {r}")
        if a.redis_cluster:
            out = h.run_in("redis1", ["redis-cli", "--cluster", "create"]
                           + [f"{h.addr[r]}:6379" for r in redis_hosts]
                           + ["--cluster-replicas", "0", "--cluster-yes"], timeout=60)
            if out.returncode != 0:
                raise SystemExit(f"redis cluster create failed: {out.stdout}{out.stderr}")
            wait_for(lambda: "cluster_state:ok" in h.run_in(
                "redis1", ["redis-cli", "-h", h.addr["redis1"], "cluster", "info"]).stdout,
                "redis cluster ok")
            redis_url = "redis+cluster://" + ",".join(f"{h.addr[r]}:6379" for r in redis_hosts)
        else:
            redis_url = f"redis://{h.addr['redis']}:6379"
        nats_ip = h.addr["nats"]
        h.start("nats", ["nats-server", "-js", "-sd", os.path.join(logdir, "nats"), "-a", nats_ip,
                         "-p", 4222, "-m", 8222], logdir)
        wait_for(lambda: h.run_in("load", ["python3", "-c",
                 f"import socket; socket.create_connection(('{nats_ip}', 4222), 1)"]).returncode == 0,
                 "nats-server")
        secret = os.urandom(16).hex()
        # The admin API on a non-loopback address wants a token.
        token = os.path.join(logdir, "admin-token")
        with open(token, "w") as f:
            f.write(os.urandom(16).hex())
        os.chmod(token, 0o600)
        pids = {}
        for role in counts:
            for name in names[role]:
                ip = h.addr[name]
                args = [a.bin + "/presenced", "--target", role, "--redis", redis_url,
                        "--nats", f"nats://{nats_ip}:4222", "--node-id", name,
                        "--shards", SHARDS, "--domain", "example.com", "--nonce-secret", secret,
                        "--http-listen", f"{ip}:9100", "--admin-token-file", token, "--log", "warn",
                        "--rate-per-source", 1000000, "--burst-per-source", 1000000]
                if role == "edge":
                    args += ["--sip-listen", f"{ip}:5060"]
                p = h.start(name, args, logdir, quota=a.quotas[role] if role == tier else None)
                pids[name] = p.pid
        for r in redis_hosts:
            pids[r] = [p for nm, p, _ in h.procs if nm == r][0].pid
        pids["nats"] = [p for nm, p, _ in h.procs if nm == "nats"][0].pid
        urls = [f"http://{h.addr[nm]}:9100/metrics#{nm}" for role in counts for nm in names[role]]

        def ready():
            out = h.run_in("load", ["python3", "-c", HTTP_PROBE] + urls, timeout=20).stdout.split()
            return (len(out) == 3 and out[0] == "True" and int(out[1]) == SHARDS
                    and out[2] == str(counts["compositor"]))
        wait_for(ready, "cluster ready", 90)
        # Shards evenly spread takes a few lease cycles more.
        time.sleep(3)
        targets = ",".join(f"{h.addr[nm]}:5060" for nm in names["edge"])
        buddies = a.buddies if tier == "notifier" else 0
        rate = a.fanout_rate if tier == "notifier" else a.publish_rate
        report = os.path.join(logdir, "report.json")
        t0 = time.time()
        # The same UAs in flight per capped instance at every count (for
        # the PUBLISH tiers), so that queueing is the same in every row.
        users = a.users if tier == "notifier" else a.users * n
        lt = h.start("load", [a.bin + "/presence-loadtest", "--target", targets, "--users", users,
                              "--buddies", buddies, "--publish-rate", rate, "--duration", a.duration,
                              "--transport", a.transport, "--notify-deadline", a.notify_deadline,
                              "--no-teardown", "--no-progress", "--report", report], logdir)
        pids["load"] = lt.pid
        samples = []
        while lt.poll() is None:
            samples.append((time.time(), {k: ticks(p) for k, p in pids.items()}))
            time.sleep(0.25)
        return figures(report, t0, samples, tier, n, names)
    finally:
        h.teardown()


def wait_for(pred, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except (subprocess.TimeoutExpired, ValueError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def figures(report, t0, samples, tier, n, names):
    try:
        rep = json.load(open(report))
    except (OSError, ValueError):
        return dict(tier=tier, n=n, error="no report (see the load log)")
    steady = [s for s in rep["timeline"] if s["phase"] == "steady"]
    a, b = t0 + steady[0]["t"], t0 + steady[-1]["t"]

    def at(t):
        best = min(samples, key=lambda s: abs(s[0] - t))
        return best[1]
    x, y = at(a), at(b)
    hz = os.sysconf("SC_CLK_TCK")
    role_of = {nm: role for role, ns in names.items() for nm in ns}
    cpu = {}
    for k in x:
        if x[k] is None or y.get(k) is None:
            continue
        role = role_of.get(k, re.sub(r"[0-9]+$", "", k))
        cpu[role] = cpu.get(role, 0.0) + (y[k] - x[k]) / hz
    window = b - a
    pub = rep["requests"]["PUBLISH"]
    ops = (rep["notify"]["steady_per_s"] if tier == "notifier" else pub["steady_rate_per_s"]) or 0
    count = max(ops * window, 1)
    shed = pub.get("responses", {}).get("503", 0)
    # 503 is the edge's designed answer to overload (nothing accepted is
    # lost); anything else the load tool flags is a fault.
    others = [f for f in rep.get("failures", []) if not (shed and "failed requests" in f)]
    failed = rep.get("errors", 0)
    return dict(
        tier=tier, n=n, passed=rep["passed"] or (not others and failed <= shed),
        shed=shed,
        faults={k: v for k, v in rep["canary"].items() if v},
        failures="; ".join(rep.get("failures", [])),
        throughput=ops,
        p99=(rep["notify"]["latency"]["p99_ms"] if tier == "notifier" else pub["latency"]["p99_ms"]),
        pub_rate=pub["steady_rate_per_s"], notify_rate=rep["notify"]["steady_per_s"],
        us={k: v * 1e6 / count for k, v in cpu.items()},
        cores={k: v / window for k, v in cpu.items()},
    )


UNIT = {"edge": "PUBLISH/s", "compositor": "PUBLISH/s", "notifier": "NOTIFY/s"}
ROLES = ["edge", "compositor", "notifier", "redis", "nats", "load"]


def table(rows, a):
    first = {}
    lines = [
        "| tier | instances | throughput | p99 ms | efficiency | canary | CPU µs/op: edge / compositor / notifier / redis / nats | cores: capped tier / all servers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tier']} | {r['n']} | {r['error']} | | | | | |")
            continue
        if r["n"] == 1:
            first[r["tier"]] = r["throughput"]
        base = first.get(r["tier"])
        eff = f"{r['throughput'] / (r['n'] * base):.2f}" if base else "–"
        verdict = "clean" if r["passed"] else "**NOT CLEAN: " + (
            r["failures"] or ", ".join(f"{k} {v}" for k, v in r["faults"].items())) + "**"
        if r.get("shed"):
            verdict += f" ({r['shed']} PUBLISH shed with 503)"
        us = " / ".join(f"{r['us'].get(k, 0):.0f}" for k in ROLES[:5])
        servers = sum(v for k, v in r["cores"].items() if k != "load")
        lines.append(
            f"| {r['tier']} | {r['n']} | {r['throughput']:.0f} {UNIT[r['tier']]} | {r['p99']:.0f} | {eff} "
            f"| {verdict} | {us} | {r['cores'].get(r['tier'], 0):.2f} / {servers:.2f} |")
    return "\n".join(lines)


def svg(rows, a):
    """Throughput relative to one instance, per tier, against instances."""
    w, hgt, m = 640, 360, 50
    xs = sorted({r["n"] for r in rows})
    xmax = max(xs)
    ratios = [r["throughput"] / b for r in rows if "error" not in r
              for b in [next((q["throughput"] for q in rows if q["tier"] == r["tier"] and q["n"] == 1
                              and "error" not in q), 0)] if b]
    ymax = max([xmax] + [int(x) + 1 for x in ratios])
    colors = {"edge": "#1f77b4", "compositor": "#d62728", "notifier": "#2ca02c"}
    def px(n):
        return m + (w - 2 * m) * (n / xmax)
    def py(v):
        return hgt - m - (hgt - 2 * m) * (v / ymax)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{hgt}" fill="white"/>',
           f'<line x1="{m}" y1="{hgt - m}" x2="{w - m}" y2="{hgt - m}" stroke="black"/>',
           f'<line x1="{m}" y1="{hgt - m}" x2="{m}" y2="{m}" stroke="black"/>',
           f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(xmax)}" y2="{py(xmax)}" stroke="#999" stroke-dasharray="4"/>',
           f'<text x="{px(xmax) - 4}" y="{py(xmax) + 14}" text-anchor="end" fill="#999">linear</text>',
           f'<text x="{w / 2}" y="{hgt - 12}" text-anchor="middle">instances of the tier (each capped: {a.quota} core)</text>',
           f'<text x="14" y="{hgt / 2}" transform="rotate(-90 14 {hgt / 2})" text-anchor="middle">throughput / throughput(1)</text>']
    for n in xs:
        out.append(f'<text x="{px(n)}" y="{hgt - m + 16}" text-anchor="middle">{n}</text>')
    for v in range(0, ymax + 1):
        out.append(f'<text x="{m - 8}" y="{py(v) + 4}" text-anchor="end">{v}</text>')
    for i, tier in enumerate(colors):
        pts = [r for r in rows if r["tier"] == tier and "error" not in r]
        base = next((r["throughput"] for r in pts if r["n"] == 1), None)
        if not base:
            continue
        path = " ".join(f"{px(r['n']):.1f},{py(r['throughput'] / base):.1f}" for r in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colors[tier]}" stroke-width="2"/>')
        for r in pts:
            x, y = px(r["n"]), py(r["throughput"] / base)
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colors[tier]}"/>')
            last = r["n"] == xmax
            # The n=1 points coincide (1.0): their labels one under another.
            ly = y + 4 + (12 * i if r["n"] == 1 else 0)
            out.append(f'<text x="{x - 6 if last else x + 6:.1f}" y="{ly:.1f}" font-size="10" '
                       f'text-anchor="{"end" if last else "start"}" fill="{colors[tier]}">'
                       f'{r["throughput"]:.0f}/s, p99 {r["p99"]:.0f} ms</text>')
        out.append(f'<text x="{m + 10}" y="{m + 14 * i}" fill="{colors[tier]}">{tier}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiers", default="edge,compositor,notifier")
    ap.add_argument("--counts", default="1,2,4")
    ap.add_argument("--quota", default="edge=0.05,compositor=0.1,notifier=0.05",
                    help="cores per instance of the measured tier: one number, or tier=cores,...")
    ap.add_argument("--edges", type=int, default=2)
    ap.add_argument("--compositors", type=int, default=2)
    ap.add_argument("--notifiers", type=int, default=2)
    ap.add_argument("--users", type=int, default=100,
                    help="UAs (edge and compositor tiers: per instance of the measured tier)")
    ap.add_argument("--buddies", type=int, default=10)
    ap.add_argument("--publish-rate", type=int, default=20000)
    ap.add_argument("--fanout-rate", type=int, default=300)
    ap.add_argument("--transport", default="tcp",
                    help="the UAs' transport; tcp: a UA waiting for a capped tier does not retransmit")
    ap.add_argument("--duration", type=int, default=12)
    ap.add_argument("--notify-deadline", type=float, default=5.0,
                    help="seconds a change has to reach its watchers before the canary counts it "
                         "missing (a deeply overloaded notifier tier may need more)")
    ap.add_argument("--redis-cluster", action="store_true")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target/cluster-scale", time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs/benchmarks.md"))
    a = ap.parse_args()
    a.quotas = {}
    for part in a.quota.split(","):
        tier, _, q = part.rpartition("=")
        for t in ([tier] if tier else ["edge", "compositor", "notifier"]):
            a.quotas[t] = float(q)
    if os.geteuid() != 0:
        raise SystemExit("cluster-scale needs root (network namespaces, cgroups)")
    for tool in ("redis-server", "redis-cli", "nats-server", "ip"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")
    a.bin = os.path.abspath(a.bin)
    for b in ("presenced", "presence-loadtest"):
        if not os.access(os.path.join(a.bin, b), os.X_OK):
            raise SystemExit(f"no {b} in {a.bin} (cargo build --release)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Hosts.leftovers()
    os.makedirs(CG_ROOT, exist_ok=True)
    rows = []
    started = time.time()
    try:
        for tier in a.tiers.split(","):
            for n in map(int, a.counts.split(",")):
                print(f"{time.strftime('%H:%M:%S')} {tier} x{n} (capped at {a.quotas[tier]} core each)", file=sys.stderr)
                r = run_step(a, tier, n, os.path.join(a.out, f"{tier}-{n}"))
                print(f"  {json.dumps(r)}", file=sys.stderr)
                rows.append(r)
                json.dump(rows, open(os.path.join(a.out, "rows.json"), "w"), indent=1)
    except KeyboardInterrupt:
        raise SystemExit(130)
    finally:
        Hosts.leftovers()
    cmd = (f"sudo python3 loadtest/cluster-scale.py --tiers {a.tiers} --counts {a.counts} --quota {a.quota} "
           f"--edges {a.edges} --compositors {a.compositors} --notifiers {a.notifiers} --users {a.users} "
           f"--buddies {a.buddies} --publish-rate {a.publish_rate} --fanout-rate {a.fanout_rate} "
           f"--duration {a.duration} --transport {a.transport}"
           + (f" --notify-deadline {a.notify_deadline:g}" if a.notify_deadline != 5.0 else "")
           + (" --redis-cluster" if a.redis_cluster else ""))
    text = (f"Command: `{cmd}` ({int(time.time() - started)} s; raw reports and logs: `{a.out}`, not committed).\n\n"
            + table(rows, a) + "\n")
    print(text)
    json.dump(rows, open(os.path.join(a.out, "rows.json"), "w"), indent=1)
    if a.doc != "-":
        key = "cluster-scale-redis-cluster" if a.redis_cluster else "cluster-scale"
        begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
        doc = open(a.doc).read()
        if begin in doc and end in doc:
            doc = doc[:doc.index(begin) + len(begin)] + "\n" + text + doc[doc.index(end):]
            open(a.doc, "w").write(doc)
        else:
            print(f"(no {begin} marker in {a.doc}: not written)", file=sys.stderr)
        if not a.redis_cluster:
            open(os.path.join(os.path.dirname(a.doc), "scaling.svg"), "w").write(svg(rows, a))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks monitoring/ (dashboards and alert rules) against promtool, the
Grafana schema and the metrics a real `presenced` exports.

Run through scripts/check-monitoring.sh, which installs promtool, node and
the npm packages first. Stdlib only. Fails (exit 1) on any of:

1. rules: `promtool check rules` and `promtool test rules`; every alert has
   a `severity` label, a `for:` and a `runbook_url` whose anchor is a
   heading of docs/operations.md; every alert has a unit test in which it
   fires and one in which it does not.
2. dashboards: each one type-checks against @grafana/schema (the dashboard,
   and each panel's options and custom field config against its plugin's
   types); every PromQL expression in it (panel targets and variable
   queries) parses (`promtool check rules` on a generated rules file).
3. metric names: every metric a dashboard or an alert selects, and every
   label it matches on, is exported by a real process: the all-in-one
   server and a small cluster (redis-server, nats-server, one edge, one
   compositor, one notifier), driven with SIP traffic so that the labelled
   families exist, then scraped. Allowed externals: `up` and the
   redis_exporter metrics in EXTERNAL_METRICS.

Environment: BIN (presenced binary, default target/debug/presenced),
TOOLS (node_modules prefix, default target/tools), PROMTOOL (promtool).
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MON = ROOT / "monitoring"
RULE_FILES = sorted((MON / "alerts").glob("*.yml"))
TEST_FILES = sorted((MON / "alerts" / "tests").glob("*.yml"))
DASHBOARDS = sorted((MON / "dashboards").glob("*.json"))
RUNBOOK = ROOT / "docs" / "operations.md"
BIN = os.environ.get("BIN", str(ROOT / "target" / "debug" / "presenced"))
TOOLS = Path(os.environ.get("TOOLS", str(ROOT / "target" / "tools")))
PROMTOOL = os.environ.get("PROMTOOL", "promtool")

# Metrics no presenced process exports, and who does. Nothing else may be
# used without a process of ours exporting it.
EXTERNAL_METRICS = {
    "up": "Prometheus, per scrape target",
    "redis_evicted_keys_total": "redis_exporter (oliver006/redis_exporter), assumed next to Redis",
}
# Labels the scrape adds to every target (the label contract of
# monitoring/README.md) besides those a process exports.
TARGET_LABELS = {"namespace", "pod", "role", "job", "instance"}
# What the one-per-role cluster runs with; the shard alert must agree.
DEFAULT_SHARDS_FLAG = re.compile(r"--shards <SHARDS>.*?\[default: (\d+)\]", re.S)

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


STARTED = time.monotonic()


def step(title):
    print(f"== {title}  [{time.monotonic() - STARTED:.1f} s]", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def yaml_load(path):
    """YAML -> Python through node's `yaml` package (installed with the
    other tools): the rules and tests files are YAML, stdlib has no parser."""
    script = "const y=require('yaml');const fs=require('fs');" \
             "process.stdout.write(JSON.stringify(y.parse(fs.readFileSync(process.argv[1],'utf8'))))"
    r = run(["node", "-e", script, str(path)], env={**os.environ, "NODE_PATH": str(TOOLS / "node_modules")})
    if r.returncode != 0:
        raise SystemExit(f"cannot read {path}: {r.stderr.strip()}")
    return json.loads(r.stdout)


# ---------------------------------------------------------------- PromQL

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<num>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy]|\d)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>@(){}\[\],])
""", re.X)
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "atan2", "inf", "nan", "start", "end"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def tokens(expr):
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenise at {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def selectors(expr):
    """(metric name, [label names matched]) for every vector selector of a
    PromQL expression. promtool has already said the expression parses; this
    only needs to tell metric names from functions, keywords and label lists."""
    toks, out, i = tokens(expr), [], 0

    def skip_group(i, open_, close):  # toks[i] is `open_`; returns index after its `close`
        depth = 0
        while i < len(toks):
            if toks[i][1] == open_:
                depth += 1
            elif toks[i][1] == close:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return i

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if text == "[":
            i = skip_group(i, "[", "]")
        elif text == "{":  # a selector without a name ({__name__=...}): not used here
            raise ValueError(f"selector without a metric name in {expr!r}")
        elif kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            if text in LABEL_LIST_KEYWORDS and nxt == "(":
                i = skip_group(i, "(", ")")
        elif kind == "ident" and (nxt == "(" or nxt in ("by", "without")):
            i += 1  # a function, or an aggregation (`sum by (l) (...)`)
        elif kind == "ident":
            labels = []
            i += 1
            if nxt == "{":
                end = skip_group(i, "{", "}")
                inner = toks[i + 1:end - 1]
                labels = [t for j, (k, t) in enumerate(inner)
                          if k == "ident" and j + 1 < len(inner) and inner[j + 1][1] in ("=", "!=", "=~", "!~")]
                i = end
            out.append((text, labels))
        else:
            i += 1
    return out


GRAFANA_VARS = re.compile(r"\$(?:__rate_interval|__interval|__range)|\$\{__rate_interval\}|\$\{__interval\}")
OTHER_VARS = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


def substitute(expr):
    """Grafana's variables replaced by values that keep the expression valid:
    intervals by 5m, other variables (always regex matcher values here) by .*"""
    expr = GRAFANA_VARS.sub("5m", expr)
    return OTHER_VARS.sub(".*", expr)


LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)


def dashboard_exprs(dash):
    """(where, PromQL) for every panel target and query variable."""
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f"panel {p.get('title')!r} ref {t.get('refId')}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = LABEL_VALUES.match(q or "")
        if not m:
            fail(f"variable {v['name']}: only label_values(selector, label) queries are checked, got {q!r}")
            continue
        out.append((f"variable {v['name']}", m.group(1)))
    return out


# ---------------------------------------------------------------- rules

def slug(heading):
    """GitHub's anchor for a markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def check_rules():
    step("alert rules: promtool check rules / test rules")
    r = run([PROMTOOL, "check", "rules", *map(str, RULE_FILES)])
    print("  " + (r.stdout + r.stderr).strip().replace("\n", "\n  "))
    if r.returncode != 0:
        fail("promtool check rules")
    r = run([PROMTOOL, "test", "rules", *map(str, TEST_FILES)], cwd=MON / "alerts" / "tests")
    if r.returncode != 0:
        print("  " + (r.stdout + r.stderr).strip().replace("\n", "\n  "))
        fail("promtool test rules")
    else:
        print(f"  promtool test rules: {len(TEST_FILES)} files, SUCCESS")

    step("alert rules: severity, for, runbook_url, a firing and a quiet test each")
    anchors = {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", RUNBOOK.read_text(), re.M)}
    alerts, exprs = {}, []
    for f in RULE_FILES:
        for g in yaml_load(f).get("groups", []):
            for rule in g.get("rules", []):
                exprs.append((f"{f.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]))
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                alerts[name] = rule
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    fail(f"{name}: labels.severity must be critical, warning or info")
                if "for" not in rule:
                    fail(f"{name}: no `for:`")
                url = rule.get("annotations", {}).get("runbook_url", "")
                m = re.fullmatch(r"docs/operations\.md#([\w-]+)", url)
                if not m:
                    fail(f"{name}: runbook_url {url!r} is not docs/operations.md#<anchor>")
                elif m.group(1) not in anchors:
                    fail(f"{name}: runbook_url anchor #{m.group(1)} is no heading of docs/operations.md")
                for a in ("summary", "description"):
                    if not rule.get("annotations", {}).get(a):
                        fail(f"{name}: no {a} annotation")
    fires, quiet = set(), set()
    for f in TEST_FILES:
        for t in yaml_load(f).get("tests", []):
            for case in t.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    for name in sorted(alerts):
        if name not in fires:
            fail(f"{name}: no test in which it fires")
        if name not in quiet:
            fail(f"{name}: no test in which it stays quiet")
    for name in sorted((fires | quiet) - set(alerts)):
        fail(f"tests name an alert that does not exist: {name}")
    print(f"  {len(alerts)} alerts, {len(fires & set(alerts))} with a firing test, "
          f"{len(quiet & set(alerts))} with a quiet test")
    return alerts, exprs


# ---------------------------------------------------------------- dashboards

TS_PRELUDE = """\
import type { Dashboard } from '@grafana/schema';
import type * as TimeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type * as Stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
// A JSON file holds an enum's value, not the enum: Json<T> is T with every
// string enum replaced by the union of its values; nothing else changes.
type Json<T> = T extends string ? (string extends T ? string : `${T}`)
  : T extends (infer U)[] ? Json<U>[]
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;
"""
PANEL_TYPES = {"timeseries": "TimeSeries", "stat": "Stat"}


def check_dashboards():
    step("dashboards: type-check against @grafana/schema (tsc --strict)")
    exprs, uids = [], {}
    with tempfile.TemporaryDirectory(dir=TOOLS) as tmp:
        files = []
        for path in DASHBOARDS:
            try:
                dash = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                fail(f"{path.name}: not JSON: {e}")
                continue
            if dash.get("uid") in uids:
                fail(f"{path.name}: uid {dash.get('uid')} also in {uids[dash['uid']]}")
            uids[dash.get("uid")] = path.name
            lines = [TS_PRELUDE, f"export const dashboard: Json<Dashboard> = {json.dumps(dash, indent=1)};"]
            n = 0
            for p in dash.get("panels", []):
                for q in [p, *p.get("panels", [])]:
                    if q["type"] == "row":
                        continue
                    ns = PANEL_TYPES.get(q["type"])
                    if ns is None:
                        fail(f"{path.name}: panel {q.get('title')!r}: type {q['type']} has no types wired in here")
                        continue
                    n += 1
                    lines.append(f"// {q.get('title')}")
                    lines.append(f"export const options{n}: Json<{ns}.Options> = {json.dumps(q.get('options'))};")
                    custom = q.get("fieldConfig", {}).get("defaults", {}).get("custom")
                    if custom is not None:
                        lines.append(f"export const custom{n}: Json<{ns}.FieldConfig> = {json.dumps(custom)};")
            ts = Path(tmp) / (path.stem + ".ts")
            ts.write_text("\n".join(lines) + "\n")
            files.append(ts)
            exprs += [(f"{path.name}: {w}", e) for w, e in dashboard_exprs(dash)]
        tsc = TOOLS / "node_modules" / ".bin" / "tsc"
        r = run([str(tsc), "--noEmit", "--strict", "--target", "es2022", "--module", "esnext",
                 "--moduleResolution", "bundler", "--skipLibCheck", *map(str, files)], cwd=tmp)
        if r.returncode != 0:
            for line in (r.stdout + r.stderr).replace(tmp + "/", "").strip().splitlines():
                print("  " + line)
                m = re.match(r"(\S+\.ts)\((\d+),\d+\)", line)
                if m:  # the generated line: the JSON in question
                    src = (Path(tmp) / m.group(1)).read_text().splitlines()[int(m.group(2)) - 1].strip()
                    print(f"      at: {src[:140]}")
            fail("dashboards do not type-check against @grafana/schema")
        else:
            print(f"  {len(files)} dashboards type-check")

    step("dashboards: every PromQL expression parses (promtool check rules)")
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": substitute(e)} for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump(rules, f)  # JSON is YAML
    r = run([PROMTOOL, "check", "rules", f.name])
    os.unlink(f.name)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        for m in re.finditer(r"dashboard:expr_(\d+)", out):
            w, e = exprs[int(m.group(1))]
            print(f"  {w}: {e}")
        print("  " + out.strip().replace("\n", "\n  "))
        fail("a dashboard expression does not parse")
    else:
        print(f"  {len(exprs)} expressions parse")
    return exprs


# ---------------------------------------------------------------- processes

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Procs:
    """Processes started here, each with its log file; all stopped at exit."""

    def __init__(self, tmp):
        self.tmp, self.procs = Path(tmp), []

    def start(self, name, cmd):
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((name, p))
        return p

    def stop(self):
        """Newest first, each gone before the next: presenced processes
        before the Redis and NATS they hand their leases back to."""
        for _, p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self):
        for name, _ in self.procs:
            text = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"  --- {name}.log (last 15 lines)")
            for line in text[-15:]:
                print("  " + line)


def wait_tcp(port, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


def wait_until(what, cond, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def presenced(procs, name, args):
    """Start one presenced with `args`; its HTTP port once /readyz is 200."""
    http = free_port()
    procs.start(name, [BIN, "--http-listen", f"127.0.0.1:{http}", "--log", "warn", *args])
    wait_until(f"{name} /readyz", lambda: http_get(http, "/readyz")[0] == 200)
    return http


def scrape(port):
    """{sample name: set of label names} from one /metrics."""
    status, text = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics on {port}: {status}")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        name, labels = m.group(1), m.group(2) or ""
        out.setdefault(name, set()).update(re.findall(r'([a-zA-Z_]\w*)="', labels))
    return out


# ---------------------------------------------------------------- SIP traffic

class Ua:
    """A UDP user agent: sends a request and waits for its final answer,
    answering (200) every request the server sends meanwhile (NOTIFY),
    and Digest credentials when challenged."""

    def __init__(self, user, server, password=None, domain="example.com"):
        self.user, self.server, self.password, self.domain = user, server, password, domain
        self.aor = f"sip:{user}@{domain}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.local = self.sock.getsockname()
        self.n = 0
        self.notifies = 0

    def encode(self, method, uri, headers, body=b"", to=None, call_id=None, cseq=1):
        self.n += 1
        branch = f"z9hG4bK{self.user}{self.n}{os.getpid()}"
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <{self.aor}>;tag=t{self.user}",
                 f"To: <{to or uri}>",
                 f"Call-ID: {call_id or branch}@check",
                 f"CSeq: {cseq} {method}",
                 f"Contact: <sip:{self.user}@{self.local[0]}:{self.local[1]}>",
                 *headers,
                 f"Content-Length: {len(body)}"]
        return branch, ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def answer(self, text):
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [l for l in head[1:] if l.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")]
        to = next((i for i, l in enumerate(keep) if l.lower().startswith("to:")), None)
        if to is not None and ";tag=" not in keep[to]:
            keep[to] += ";tag=a" + self.user
        return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def pump(self, seconds, branch=None):
        """Answer the server's requests for `seconds`, or until the final
        answer to `branch` arrives (returned as text)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(min(left, 0.5))
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            text = data.decode("utf-8", "replace")
            if not text.startswith("SIP/2.0"):
                self.notifies += text.startswith("NOTIFY")
                self.sock.sendto(self.answer(text), self.server)
            elif branch and f"branch={branch}" in text and int(text.split()[1]) >= 200:
                return text
        return None

    def request(self, method, uri, headers=(), body=b"", to=None, expect=200):
        headers = list(headers)
        call_id = f"{method}{self.user}{self.n}"
        for cseq in (1, 2):
            branch, data = self.encode(method, uri, headers, body, to, call_id, cseq)
            self.sock.sendto(data, self.server)
            text = self.pump(8, branch)
            if text is None:
                raise RuntimeError(f"{self.user}: no answer to {method}")
            code = int(text.split()[1])
            if code in (401, 407) and self.password and cseq == 1:
                headers.append(self.credentials(text, method, uri, code))
                continue
            break
        if expect is not None and code != expect:
            raise RuntimeError(f"{self.user}: {method} answered {text.splitlines()[0]}, expected {expect}")
        return code

    def credentials(self, text, method, uri, code):
        name = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
        ch = next(l.split(":", 1)[1] for l in text.split("\r\n")
                  if l.lower().startswith(name.lower() + ":") and "MD5" in l)
        p = dict(re.findall(r'(\w+)="?([^",]*)"?', ch))
        h = lambda s: hashlib.md5(s.encode()).hexdigest()
        ha1, ha2 = h(f"{self.user}:{p['realm']}:{self.password}"), h(f"{method}:{uri}")
        resp = h(f"{ha1}:{p['nonce']}:00000001:c0ffee:auth:{ha2}")
        value = (f'Digest username="{self.user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
                 f'response="{resp}", algorithm=MD5, cnonce="c0ffee", qop=auth, nc=00000001')
        if "opaque" in p:
            value += f', opaque="{p["opaque"]}"'
        return ("Authorization: " if code == 401 else "Proxy-Authorization: ") + value


def pidf(aor, note):
    return (f'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}">'
            f'<tuple id="t1"><status><basic>open</basic></status><note>{note}</note></tuple></presence>').encode()


def presence_traffic(server, watchers, presentity, expires_binding):
    """REGISTER (short-lived, to see it expire), SUBSCRIBE each watcher,
    PUBLISH twice, each NOTIFY answered 200."""
    presentity.request("REGISTER", f"sip:{presentity.domain}", to=presentity.aor,
                       headers=[f"Expires: {expires_binding}"])
    def notified(n):
        wait_until(f"NOTIFY {n} at every watcher",
                   lambda: all(w.pump(0.1) is None and w.notifies >= n for w in watchers), 10)

    for w in watchers:
        w.request("SUBSCRIBE", presentity.aor, headers=["Event: presence", "Accept: application/pidf+xml",
                                                        "Expires: 600"])
    notified(1)
    for n, note in enumerate(("in a meeting", "back"), start=2):
        presentity.request("PUBLISH", presentity.aor, body=pidf(presentity.aor, note),
                           headers=["Event: presence", "Expires: 600", "Content-Type: application/pidf+xml"])
        notified(n)
    # Garbage: counted as dropped (unparseable); the server stays up.
    presentity.sock.sendto(b"hello\r\n\r\n", server)
    presentity.request("OPTIONS", f"sip:{presentity.domain}", expect=None)


def exercise(tmp):
    """Run the all-in-one server and a one-per-role cluster (plus a second
    edge) with traffic; return {sample name: label names} over every
    scrape, and the shards the cluster's compositor owns."""
    procs = Procs(tmp)
    scrapes = {}
    owned = None
    try:
        step("all-in-one: presenced with Digest, REGISTER / SUBSCRIBE / PUBLISH / NOTIFY")
        users = Path(tmp) / "users.txt"
        users.write_text("alice@example.com:secret\nbob@example.com:hunter2\n")
        sip = free_port()
        http = presenced(procs, "all-in-one", ["--sip-listen", f"127.0.0.1:{sip}", "--users", str(users)])
        server = ("127.0.0.1", sip)
        alice, bob = Ua("alice", server, "secret"), Ua("bob", server, "hunter2")
        presence_traffic(server, [bob], alice, expires_binding=2)
        wait_until("the binding's expiry", lambda: total(http, "presence_compositor_expired_total") > 0, 10)
        scrapes["all-in-one"] = scrape(http)

        step("cluster: redis-server, nats-server (JetStream), edge, compositor, notifier")
        for tool in ("redis-server", "nats-server"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} is not installed (scripts/check-monitoring.sh installs it)")
        redis, nats = free_port(), free_port()
        (Path(tmp) / "redis").mkdir()
        procs.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis), "--dir",
                              str(Path(tmp) / "redis"), "--save", "", "--appendonly", "no"])
        procs.start("nats", ["nats-server", "-js", "-sd", str(Path(tmp) / "nats"), "-a", "127.0.0.1",
                             "-p", str(nats)])
        wait_tcp(redis, "redis-server")
        wait_tcp(nats, "nats-server")
        common = ["--redis", f"redis://127.0.0.1:{redis}", "--nats", f"nats://127.0.0.1:{nats}",
                  "--nonce-secret", "check-monitoring-secret"]
        sip = free_port()
        edge = presenced(procs, "edge", ["--target", "edge", "--node-id", "edge-1",
                                         "--sip-listen", f"127.0.0.1:{sip}", "--handover-wait-ms", "300", *common])
        notifier = presenced(procs, "notifier", ["--target", "notifier", "--node-id", "notifier-1",
                                                 "--notify-batch", "1", *common])
        server = ("127.0.0.1", sip)
        carol, dave, erin = (Ua(u, server) for u in ("carol", "dave", "erin"))
        # No compositor yet: nobody owns a shard, the edge gives up (503).
        carol.request("REGISTER", "sip:example.com", to=carol.aor, headers=["Expires: 60"], expect=503)
        compositor = presenced(procs, "compositor", ["--target", "compositor", "--node-id", "compositor-1",
                                                     *common])
        wait_until("the compositor's shard leases",
                   lambda: (gauge(compositor, "presence_compositor_shards_owned") or 0) > 0
                   and total(compositor, "presence_compositor_lease_renewals_total") > 0)
        # Two watchers and --notify-batch 1: the change's fan-out is split.
        presence_traffic(server, [dave, erin], carol, expires_binding=60)

        step("cluster: a UA failing over to a second edge; a notify queue that refuses jobs")
        sip2 = free_port()
        edge2 = presenced(procs, "edge-2", ["--target", "edge", "--node-id", "edge-2",
                                            "--sip-listen", f"127.0.0.1:{sip2}", *common])
        # The same REGISTER transaction through both edges: the shard owner
        # answers the second from memory (retried_commands answered_again).
        branch, data = erin.encode("REGISTER", "sip:example.com", ["Expires: 60"], to=erin.aor)
        for via in (server, ("127.0.0.1", sip2)):
            erin.sock.sendto(data, via)
            if erin.pump(8, branch) is None:
                raise RuntimeError(f"no answer to the REGISTER sent through {via}")
        # JetStream refuses every job (max_bytes 1, discard new): the change
        # is committed, its job stays in the shard outbox (push_failed);
        # once the stream takes jobs again the relay pushes it (relayed) and
        # the watchers get their NOTIFY.
        stream = "$JS.API.STREAM.%s.PRESENCE_NOTIFY"
        config = nats_request(nats, stream % "INFO")["config"]
        nats_request(nats, stream % "UPDATE", dict(config, max_bytes=1, discard="new"))
        carol.request("PUBLISH", carol.aor, body=pidf(carol.aor, "held"),
                      headers=["Event: presence", "Expires: 600", "Content-Type: application/pidf+xml"])
        wait_until("a refused notify job", lambda: total(compositor, "presence_compositor_outbox_jobs_total") > 0)
        nats_request(nats, stream % "UPDATE", config)
        notified = dave.notifies
        wait_until("the relayed job's NOTIFY", lambda: dave.pump(0.1) is None and dave.notifies > notified)
        for name, port in (("edge", edge), ("edge-2", edge2), ("compositor", compositor), ("notifier", notifier)):
            scrapes[name] = scrape(port)
        owned = gauge(compositor, "presence_compositor_shards_owned")
    except Exception as e:  # noqa: BLE001 - reported with the logs, then fails the check
        fail(f"exercising real processes: {e}")
        procs.logs()
    finally:
        procs.stop()
    return scrapes, owned


def nats_request(port, subject, payload=None):
    """One request over NATS's text protocol (a JetStream API call), its
    JSON answer; an answer with an error raises."""
    body = json.dumps(payload).encode() if payload is not None else b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.check 1\r\n'
                  b"PUB %s _INBOX.check %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        while line := f.readline():
            if line.startswith(b"MSG "):
                answer = json.loads(f.read(int(line.split()[-1]) + 2))
                if "error" in answer:
                    raise RuntimeError(f"{subject}: {answer['error']}")
                return answer
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
    raise RuntimeError(f"{subject}: no answer")


def gauge(port, name):
    """The value of an unlabelled gauge, or None."""
    _, text = http_get(port, "/metrics")
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def total(port, name):
    """The sum of every series of `name` (0 when it has none). Counters of
    bounded label sets are exported at 0 from the start, so waiting for
    something to happen means waiting for a value, not for a name."""
    _, text = http_get(port, "/metrics")
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


# ---------------------------------------------------------------- names

def check_names(exprs, scrapes):
    step("metric names: every one used is exported by a real process")
    exported, failed_before = {}, len(failures)
    for samples in scrapes.values():
        for name, labels in samples.items():
            exported.setdefault(name, set()).update(labels)
    used = {}
    for where, expr in exprs:
        try:
            sels = selectors(substitute(expr))
        except ValueError as e:
            fail(f"{where}: {e}")
            continue
        for name, labels in sels:
            used.setdefault(name, []).append(where)
            if name in EXTERNAL_METRICS:
                continue
            if name not in exported:
                hint = " (a histogram: use _bucket, _sum or _count)" if name + "_bucket" in exported else ""
                fail(f"{where}: {name} is exported by no process{hint}")
                continue
            for label in labels:
                if label not in exported[name] and label not in TARGET_LABELS:
                    fail(f"{where}: {name} has no label {label!r} (it has {sorted(exported[name])})")
    ours = [n for n in used if n not in EXTERNAL_METRICS]
    print(f"  {len(ours)} series names of ours used: "
          f"{'all exported' if len(failures) == failed_before else 'NOT all exported'}")
    print(f"  externals used: {', '.join(sorted(n for n in used if n in EXTERNAL_METRICS)) or 'none'}")
    family = lambda n: re.sub(r"_(bucket|sum|count)$", "", n)  # noqa: E731
    unused = sorted({family(n) for n in exported} - {family(n) for n in used})
    if unused:
        print(f"  exported, on no dashboard or alert: {', '.join(unused)}")


def check_shards(alerts, owned):
    """The shard alert's threshold is the binary's default --shards, and the
    one compositor of the cluster (run with that default) owns that many."""
    step("shard count: alert threshold = presenced's default --shards = shards owned")
    rule = alerts.get("PresenceShardsWithoutOwner")
    if rule is None:
        fail("no PresenceShardsWithoutOwner alert")
        return
    m = re.search(r"<\s*(\d+)\s*$", rule["expr"].strip())
    help_text = run([BIN, "--help"]).stdout
    d = DEFAULT_SHARDS_FLAG.search(help_text)
    threshold, default = (int(m.group(1)) if m else None), (int(d.group(1)) if d else None)
    print(f"  alert threshold {threshold}, default --shards {default}, owned by the lone compositor {owned}")
    if threshold is None or threshold != default or owned is None or int(owned) != default:
        fail("the shard count of PresenceShardsWithoutOwner disagrees with presenced")


def main():
    if not Path(BIN).is_file():
        raise SystemExit(f"no presenced binary at {BIN} (set BIN, or build it: cargo build -p presenced)")
    for what, files in (("rules", RULE_FILES), ("rule tests", TEST_FILES), ("dashboards", DASHBOARDS)):
        if not files:
            fail(f"no {what} found")
    alerts, rule_exprs = check_rules()
    dash_exprs = check_dashboards()
    with tempfile.TemporaryDirectory() as tmp:
        scrapes, owned = exercise(tmp)
    if scrapes:
        check_names(rule_exprs + dash_exprs, scrapes)
    check_shards(alerts, owned)
    took = time.monotonic() - STARTED
    if failures:
        print(f"check-monitoring: {len(failures)} failure(s) in {took:.0f} s")
        for f in dict.fromkeys(failures):
            print(f"  - {f}")
        sys.exit(1)
    print(f"check-monitoring: OK in {took:.0f} s")


if __name__ == "__main__":
    main()

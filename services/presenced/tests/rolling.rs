//! A rolling restart of every edge under load loses nothing (issue "Cloud-
//! native delivery", "Graceful rollouts").
//!
//! A real cluster (harness: `redis-server`, `nats-server`, 3 edges, 2
//! compositors, 2 notifiers as separate `presenced` processes, edges with
//! `--drain-seconds 2`) sits behind [`Service`], an in-test UDP load
//! balancer that does what a Kubernetes Service (kube-proxy) does for UDP:
//!
//! - one virtual address for every phone; each client address (a *flow*,
//!   conntrack's 5-tuple) is pinned to one backend edge, picked round-robin
//!   among the ready ones when the flow starts;
//! - it follows the endpoints: a prober reads every edge's `/readyz` every
//!   [`PROBE_PERIOD`] (a readiness probe with failureThreshold 1) and only
//!   ready edges are endpoints; a flow whose edge is no longer ready moves to
//!   a ready one at its next packet (kube-proxy flushes the UDP conntrack
//!   entries of an endpoint that turns not ready, terminating pods included:
//!   kubernetes/kubernetes#137986, KEP-5989); a restarted edge takes new
//!   flows once ready;
//! - answers of the flow's edge reach the client from the virtual address
//!   (reverse NAT); a packet from any *other* edge (a NOTIFY rerouted through
//!   `edges.any`, or a draining edge's answer to a request it still had when
//!   its flows moved) reaches the client from that edge's own return
//!   address, and what the client sends back there goes to that edge (a
//!   pod's own traffic, masqueraded to its node's address). kube-proxy may
//!   instead drop a draining pod's packets once its conntrack entry is gone;
//!   this Service is kinder there;
//! - source addresses are kept as with `externalTrafficPolicy: Local`: an
//!   edge sees one stable address per client whichever edge it is (the
//!   proxy's upstream socket for that client), not the client's own (a
//!   userspace proxy cannot keep it).
//!
//! `presence-loadtest` with its canary runs against the virtual address only
//! (one target: the tool never fails over itself; a timeout or a non-2xx is
//! an error), over UDP: 300 users × 5 buddies on 8 client sockets (8 flows),
//! 100 PUBLISH/s, 20 MESSAGE/s, registrations and subscriptions refreshed
//! during the run. In its steady state every edge in turn is restarted as a
//! Deployment's rollout does: SIGTERM (`/readyz` 503 at once, the Service
//! moves the edge's flows away, the edge still serves SIP for the drain,
//! then finishes what is in flight and exits), then a new process on the
//! *same* SIP and HTTP ports under a *new* node id (the chart's node id is
//! the pod name, and a new pod has a new name: NOTIFYs and MESSAGEs for the
//! old edge's flows go through `edges.any`), and the next edge only once the
//! new one is ready. After the last one the load runs a few more seconds and
//! is ended (SIGINT once: drain, un-SUBSCRIBE, cleanup); it must pass: exit
//! 0, every canary counter zero. Nothing is timed; the figures are printed
//! (readiness changes, flows moved, latencies, reroutes).
//!
//! What this cannot show: TCP (a phone whose connection closes reconnects
//! through the Service; the load tool with one target counts a closed
//! connection as an error and never reconnects, and with several targets a
//! target it saw die stays dead, so a rollout of *every* edge cannot be
//! driven with it); NAT filtering at the phone (a NOTIFY from another edge
//! comes from another address: the tool takes it, a restricted NAT would
//! not — ARCHITECTURE.md "Known gaps"); kube-proxy's own delays (endpoint
//! propagation, probe periods of seconds), scaled down here, which the
//! chart's `drainSeconds`/`preStopSleepSeconds` must cover.
//!
//! What the canary can and cannot tell over UDP (the `#[ignore]`d variants,
//! with node ids kept so that only the way of stopping differs): SIGKILL
//! instead of SIGTERM and a balancer that ignores readiness passed (2 runs
//! each) — each outage is a fraction of a second on the same port or a flow
//! move, the UAs' retransmissions (Timer E) reach an edge that serves them,
//! a PUBLISH or SUBSCRIBE seen twice is answered from the shard owner's
//! memory of transaction keys, and the notifiers send an unanswered NOTIFY
//! again. A fault needs a MESSAGE or NOTIFY in flight when an edge dies or
//! its flow moves, and a MESSAGE relay or NOTIFY that stalls longer than
//! T1 (500 ms). Skipping the drain makes that stall: the edge stops serving
//! `edge.<id>` at SIGTERM but may take seconds to exit (it finishes its
//! requests in flight), so relays towards its flows wait; one run of two
//! failed that way (4 `duplicate_message`, bug 2 below). A SIGKILL cannot be
//! told from a quick crash; the drain's main worth (TCP connections, SIP
//! balancers that probe with OPTIONS) is out of this test's reach.
//!
//! Server bugs this test found (fixed; each fix has its own test too):
//!
//! 1. A NOTIFY or relayed MESSAGE whose flow names an edge nobody serves
//!    waited `EDGE_GONE_AFTER` (4 s) every time: after a rollout (every
//!    edge id changes) every NOTIFY and MESSAGE to a UA that registered or
//!    subscribed before it was 4 s late. Now edges hold a membership lease
//!    (`roster.rs`), released when they stop: an edge the roster does not
//!    list is gone at once, and an edge found gone is remembered
//!    (`gone_edges.rs`).
//! 2. A MESSAGE was not deduplicated across edges: a retransmission that
//!    reached the edge its flow moved to was relayed again (42–50
//!    `duplicate_message` per run). Now the shard owner remembers which edge
//!    relays a transaction; a second edge answers 100 Trying
//!    (`Refusal::RelayedElsewhere`).
//! 3. A gone edge's NOTIFYs went through any edge (`edges.any`), and two
//!    notifiers raced one dialog's NOTIFYs through two edges
//!    (`out_of_order_cseq` 0–5 per run, 143 behind a balancer that ignores
//!    readiness). Now a dialog's NOTIFYs go through its successor: the same
//!    live edge for every notifier (rendezvous hash over the roster), which
//!    keeps the dialog's order.
//! 4. At shutdown the edge stopped reading its UDP sockets while its NOTIFY
//!    transactions were in flight, and the notifier sent them again as new
//!    transactions (`duplicate_notify`). Now a stopping edge keeps receiving
//!    until they end (at most 5 s).
//!
//! The load generator is found or built like in tests/failover.rs.
//!
//! Run: `cargo test -p presenced --test rolling -- --include-ignored --nocapture --test-threads=1`.

mod harness;

use harness::{http_get, json_object, loadtest_binary, metric_sum, Cluster, PATIENCE};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One cluster at a time: the machine has few cores.
static SERIAL: Mutex<()> = Mutex::new(());

const SHARDS: u32 = 64;
const EDGES: usize = 3;
const USERS: u32 = 300;
const PUBLISH_RATE: u32 = 100;
/// The Service's readiness probe period.
const PROBE_PERIOD: Duration = Duration::from_millis(200);
/// Seconds of lame duck: ten probe periods.
const DRAIN_SECONDS: u32 = 2;
/// Steady load between a restarted edge being ready and the next SIGTERM,
/// and after the last one (a rollout's pause; not an assertion).
const SETTLE: Duration = Duration::from_secs(2);
const TAIL: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The Service
// ---------------------------------------------------------------------------

/// How the Service picks endpoints.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoints {
    /// Ready edges only, flows of an edge that left move (kube-proxy).
    Ready,
    /// Every edge, ready or not, flows never move (a load balancer that
    /// ignores health: the drain has no one to tell).
    Static,
}

struct Backend {
    node: String,
    sip: SocketAddr,
    http: SocketAddr,
    ready: AtomicBool,
    /// The address this edge's packets to a client not pinned to it come
    /// from (its node's address), and where the client's answers go back.
    ret: UdpSocket,
    /// Datagrams sent to this edge.
    to: AtomicU64,
    /// Flows pinned to it, moved away from it.
    moved_away: AtomicU64,
}

struct Flow {
    up: Arc<UdpSocket>,
    backend: usize,
}

struct Shared {
    mode: Endpoints,
    front: UdpSocket,
    backends: Vec<Backend>,
    flows: Mutex<HashMap<SocketAddr, Flow>>,
    stop: AtomicBool,
    next: AtomicUsize,
    /// Client datagrams dropped because no edge was ready.
    no_endpoint: AtomicU64,
    /// Readiness changes seen by the prober: (when, node, ready).
    events: Mutex<Vec<(Instant, String, bool)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A UDP socket on 127.0.0.1 with room for bursts (NOTIFY fan-out), and a
/// read timeout so that its thread sees the stop flag.
fn udp_socket() -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("udp socket");
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&harness::addr(0).into()).expect("bind udp");
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    s
}

/// The in-test load balancer in front of the edges (see the file's doc).
struct Service {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Service {
    fn start(c: &Cluster, mode: Endpoints) -> Service {
        let backends = c
            .live("edge")
            .map(|p| Backend {
                node: p.node.clone(),
                sip: p.sip.expect("an edge"),
                http: p.http,
                ready: AtomicBool::new(false),
                ret: udp_socket(),
                to: AtomicU64::new(0),
                moved_away: AtomicU64::new(0),
            })
            .collect();
        let front = udp_socket();
        let addr = front.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            mode,
            front,
            backends,
            flows: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            no_endpoint: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        let sh = shared.clone();
        threads.push(std::thread::spawn(move || sh.probe()));
        let sh = shared.clone();
        threads.push(std::thread::spawn(move || sh.front_loop()));
        for i in 0..shared.backends.len() {
            let sh = shared.clone();
            threads.push(std::thread::spawn(move || sh.return_loop(i)));
        }
        shared.threads.lock().unwrap().extend(threads);
        let s = Service { shared, addr };
        // Every edge is an endpoint before the load starts.
        s.wait_until("every edge is ready", |sh| {
            sh.backends.iter().all(|b| b.ready.load(Ordering::SeqCst))
        });
        s
    }

    fn wait_until(&self, what: &str, cond: impl Fn(&Shared) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(&self.shared) {
            assert!(Instant::now() < deadline, "the Service: {what}, never");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Flows pinned per edge, and datagrams each edge was sent.
    fn summary(&self) -> String {
        let flows = self.shared.flows.lock().unwrap();
        let mut s = String::new();
        for (i, b) in self.shared.backends.iter().enumerate() {
            let n = flows.values().filter(|f| f.backend == i).count();
            s += &format!(
                "{}: {n} flows, {} datagrams in, {} flows moved away; ",
                b.node,
                b.to.load(Ordering::SeqCst),
                b.moved_away.load(Ordering::SeqCst)
            );
        }
        s += &format!(
            "{} datagrams dropped for want of a ready edge",
            self.shared.no_endpoint.load(Ordering::SeqCst)
        );
        s
    }

    fn moved(&self) -> u64 {
        self.shared
            .backends
            .iter()
            .map(|b| b.moved_away.load(Ordering::SeqCst))
            .sum()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let threads: Vec<_> = self.shared.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn is_ready(&self, i: usize) -> bool {
        self.backends[i].ready.load(Ordering::SeqCst)
    }

    /// The next ready edge, round-robin.
    fn pick(&self) -> Option<usize> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::SeqCst);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.mode == Endpoints::Static || self.is_ready(i))
    }

    /// The readiness probe: `/readyz` 200 = ready (one failure is enough).
    fn probe(self: Arc<Self>) {
        while !self.stop.load(Ordering::SeqCst) {
            for b in &self.backends {
                let ready = matches!(http_get(b.http, "/readyz"), Some((200, _)));
                if b.ready.swap(ready, Ordering::SeqCst) != ready {
                    self.events
                        .lock()
                        .unwrap()
                        .push((Instant::now(), b.node.clone(), ready));
                }
            }
            std::thread::sleep(PROBE_PERIOD);
        }
    }

    /// Client → Service: to the flow's edge, moving the flow first if its
    /// edge is no longer an endpoint.
    fn front_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::SeqCst) {
            let Ok((n, client)) = self.front.recv_from(&mut buf) else {
                continue;
            };
            let (up, to) = {
                let mut flows = self.flows.lock().unwrap();
                if let Entry::Vacant(e) = flows.entry(client) {
                    let Some(backend) = self.pick() else {
                        self.no_endpoint.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    let up = Arc::new(udp_socket());
                    let sh = self.clone();
                    let u = up.clone();
                    let t = std::thread::spawn(move || sh.upstream_loop(client, u));
                    self.threads.lock().unwrap().push(t);
                    e.insert(Flow { up, backend });
                }
                let flow = flows.get_mut(&client).expect("a flow");
                if self.mode == Endpoints::Ready && !self.is_ready(flow.backend) {
                    let Some(b) = self.pick() else {
                        self.no_endpoint.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    self.backends[flow.backend]
                        .moved_away
                        .fetch_add(1, Ordering::SeqCst);
                    flow.backend = b;
                }
                (flow.up.clone(), flow.backend)
            };
            self.backends[to].to.fetch_add(1, Ordering::SeqCst);
            let _ = up.send_to(&buf[..n], self.backends[to].sip);
        }
    }

    /// Edge → client (through the client's upstream socket): from the
    /// Service's address if the edge is the flow's, else from the edge's
    /// return address.
    fn upstream_loop(self: Arc<Self>, client: SocketAddr, up: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = up.recv_from(&mut buf) else {
                continue;
            };
            let Some(i) = self.backends.iter().position(|b| b.sip == from) else {
                continue;
            };
            let pinned = self.flows.lock().unwrap().get(&client).map(|f| f.backend);
            let out = if pinned == Some(i) {
                &self.front
            } else {
                &self.backends[i].ret
            };
            let _ = out.send_to(&buf[..n], client);
        }
    }

    /// Client → an edge's return address: to that edge, from the client's
    /// upstream socket.
    fn return_loop(self: Arc<Self>, i: usize) {
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::SeqCst) {
            let Ok((n, client)) = self.backends[i].ret.recv_from(&mut buf) else {
                continue;
            };
            let up = self
                .flows
                .lock()
                .unwrap()
                .get(&client)
                .map(|f| f.up.clone());
            if let Some(up) = up {
                self.backends[i].to.fetch_add(1, Ordering::SeqCst);
                let _ = up.send_to(&buf[..n], self.backends[i].sip);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The load generator (as in tests/failover.rs)
// ---------------------------------------------------------------------------

/// A running `presence-loadtest` against the Service, steady until told to
/// stop.
struct Load {
    child: Option<Child>,
    report: PathBuf,
    out: PathBuf,
}

impl Load {
    fn start(c: &Cluster, target: SocketAddr) -> Load {
        let report = c.dir.join("report.json");
        let out = c.dir.join("loadtest.out");
        let stdout = std::fs::File::create(&out).expect("loadtest output");
        let stderr = stdout.try_clone().expect("loadtest output");
        let child = Command::new(loadtest_binary())
            .args(["--target", &target.to_string()])
            .args(["--transport", "udp"])
            // Eight client addresses: eight flows for the Service to pin.
            .args(["--sockets", "8"])
            .args(["--users", &USERS.to_string()])
            .args(["--buddies", "5"])
            .args(["--publish-rate", &PUBLISH_RATE.to_string()])
            .args(["--message-rate", "20"])
            // Ended by SIGINT once the rollout is over.
            .args(["--duration", "600"])
            // Refreshes during the rollout go through whichever edge.
            .args(["--register-expires", "40"])
            .args(["--subscribe-expires", "60"])
            // A NOTIFY whose answer an exiting edge lost is sent again by
            // the notifier after its 8 s attempt wait.
            .args(["--notify-deadline", "20"])
            .args(["--setup-rate", "500"])
            .args(["--seed", "11"])
            .arg("--no-progress")
            .arg("--report")
            .arg(&report)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start presence-loadtest");
        Load {
            child: Some(child),
            report,
            out,
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Ctrl-C once: the steady state ends, drain and teardown still run.
    fn end_steady_state(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
        }
    }

    /// Wait for the run's end; its exit code, stdout and JSON report.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut child = self.child.take().expect("a running load");
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait for the load generator");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let report = std::fs::read_to_string(&self.report).unwrap_or_default();
        (status.code(), out, report)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Print the run; the canary counters that are not zero.
fn verdict(c: &Cluster, what: &str, result: &(Option<i32>, String, String)) -> Vec<String> {
    let (code, out, report) = result;
    println!("=== {what}: presence-loadtest output ===\n{out}");
    let canary = json_object(report, &["canary"]).unwrap_or("<no report>");
    let flat = |s: &str| s.split_whitespace().collect::<String>();
    println!("{what}: canary {}", flat(canary));
    for method in ["REGISTER", "PUBLISH", "SUBSCRIBE", "MESSAGE"] {
        if let Some(l) = json_object(report, &["requests", method, "latency"]) {
            println!("{what}: {method} latency {}", flat(l));
        }
    }
    if let Some(l) = json_object(report, &["notify", "latency"]) {
        println!("{what}: change -> NOTIFY latency {}", flat(l));
    }
    let w = c.warnings();
    if !w.is_empty() {
        println!("{what}: warnings in the cluster's logs:\n{w}");
    }
    let mut faults: Vec<String> = canary
        .trim_matches(|ch| ch == '{' || ch == '}')
        .split(',')
        .filter(|kv| kv.rsplit(':').next().is_some_and(|v| v.trim() != "0"))
        .map(flat)
        .collect();
    if report.is_empty() {
        faults.push("no report".into());
    }
    if *code != Some(0) {
        faults.push(format!("exit {code:?}"));
    }
    faults
}

// ---------------------------------------------------------------------------
// The rollout
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// SIGTERM: lame duck for the drain, then exit.
    Term,
    /// SIGKILL: gone at once, nothing finished.
    Kill,
}

#[derive(Clone, Copy, Debug)]
struct Rollout {
    stop: Stop,
    drain_seconds: u32,
    endpoints: Endpoints,
    /// The restarted process keeps the old node id (a StatefulSet's pod)
    /// instead of taking a new one (a Deployment's or DaemonSet's pod: the
    /// chart's node id is the pod name).
    same_id: bool,
}

impl Cluster {
    /// PUBLISH requests the live edges have received.
    fn publishes(&self) -> f64 {
        self.live("edge")
            .map(|p| {
                metric_sum(p.http, "presence_edge_requests_total", "method=\"PUBLISH\"")
                    .unwrap_or(0.0)
            })
            .sum()
    }

    /// A metric summed over the live processes of a role.
    fn sum(&self, role: &str, name: &str, labels: &str) -> f64 {
        self.live(role)
            .map(|p| metric_sum(p.http, name, labels).unwrap_or(0.0))
            .sum()
    }
}

/// Wait for a process told to stop to exit (it has its drain and the
/// server's grace to do so).
fn wait_exit(c: &mut Cluster, node: &str) {
    let p = c
        .procs
        .iter_mut()
        .find(|p| p.node == node)
        .expect("a process");
    let mut child = p.child.take().expect("a live process");
    let deadline = Instant::now() + PATIENCE;
    while !matches!(child.try_wait(), Ok(Some(_))) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{node} did not exit after SIGTERM\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restart every edge in turn under load; the load must pass (exit 0, every
/// canary counter zero).
fn rolling(what: &str, r: Rollout) {
    let began = Instant::now();
    let drain = r.drain_seconds.to_string();
    let mut c = Cluster::start(
        "rolling",
        SHARDS,
        (EDGES, 2, 2),
        &["--lease-ttl-ms", "1500", "--drain-seconds", &drain],
    );
    let svc = Service::start(&c, r.endpoints);
    println!(
        "{what}: cluster up in {:.1} s; Service at {} in front of {:?} ({r:?})",
        began.elapsed().as_secs_f64(),
        svc.addr,
        c.edges()
    );
    let mut load = Load::start(&c, svc.addr);
    // The steady state runs: setup's PUBLISHes and a few seconds of changes.
    let want = f64::from(USERS + PUBLISH_RATE * 3);
    let deadline = Instant::now() + PATIENCE * 2;
    while c.publishes() < want {
        assert!(!load.exited(), "the load ended before its steady state");
        assert!(
            Instant::now() < deadline,
            "the load never reached its steady state\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{what}: steady load at {:.1} s; {}",
        began.elapsed().as_secs_f64(),
        svc.summary()
    );
    for i in 0..EDGES {
        let node = format!("edge{i}");
        let at = Instant::now();
        match r.stop {
            Stop::Term => {
                c.signal(&node, "-TERM");
                // Taken out of the endpoints while it still serves.
                if r.endpoints == Endpoints::Ready {
                    svc.wait_until("an edge under SIGTERM leaves the endpoints", |sh| {
                        !sh.is_ready(i)
                    });
                }
                let out = at.elapsed();
                wait_exit(&mut c, &node);
                println!(
                    "{what}: {node}: SIGTERM; out of the Service's endpoints after {:.2} s, exited after {:.2} s",
                    out.as_secs_f64(),
                    at.elapsed().as_secs_f64()
                );
            }
            Stop::Kill => {
                c.kill9(&node);
                // The endpoint goes (a dead pod fails its probe) before a
                // replacement is up: its flows move, as in a cluster.
                if r.endpoints == Endpoints::Ready {
                    svc.wait_until("a killed edge leaves the endpoints", |sh| !sh.is_ready(i));
                }
                println!(
                    "{what}: {node}: SIGKILL; out of the Service's endpoints after {:.2} s",
                    at.elapsed().as_secs_f64()
                );
            }
        }
        let id = if r.same_id {
            node.clone()
        } else {
            format!("{node}-r1")
        };
        c.restart(&node, &id, &[]);
        c.wait_ready();
        if r.endpoints == Endpoints::Ready {
            svc.wait_until("a restarted edge is ready", |sh| sh.is_ready(i));
        }
        println!(
            "{what}: {node}: running again on {} as {id}, ready {:.2} s after the stop; {}",
            c.edge(i),
            at.elapsed().as_secs_f64(),
            svc.summary()
        );
        assert!(!load.exited(), "the load ended during the rollout");
        std::thread::sleep(SETTLE);
    }
    std::thread::sleep(TAIL);
    println!(
        "{what}: rollout done at {:.1} s; ending the steady state",
        began.elapsed().as_secs_f64()
    );
    load.end_steady_state();
    let result = load.finish();
    println!(
        "{what}: load finished at {:.1} s; {}",
        began.elapsed().as_secs_f64(),
        svc.summary()
    );
    println!(
        "{what}: NOTIFYs rerouted through edges.any: {}; PUBLISHes served by the restarted edges: {}",
        c.sum("notifier", "presence_notifier_rerouted_total", ""),
        c.publishes()
    );
    println!(
        "{what}: datagrams the restarted edges withheld (amplification budget of an unproven address): {}",
        c.sum(
            "edge",
            "presence_edge_dropped_total",
            "reason=\"amplification\""
        )
    );
    let bus = |kind: &str| {
        c.sum(
            "notifier",
            "presence_nats_errors_total",
            &format!("bus=\"edge\",kind=\"{kind}\",op=\"request\""),
        )
    };
    println!(
        "{what}: notifier requests to edges: {} timed out, {} dropped by the edge, {} unserved",
        bus("timeout"),
        bus("dropped"),
        bus("no_responders")
    );
    for (t, node, ready) in svc.shared.events.lock().unwrap().iter() {
        println!(
            "{what}: readiness at {:6.2} s: {node} {}",
            t.duration_since(began).as_secs_f64(),
            if *ready { "ready" } else { "not ready" }
        );
    }
    let faults = verdict(&c, what, &result);
    if r.endpoints == Endpoints::Ready {
        assert!(svc.moved() > 0, "no flow moved: the rollout was not tested");
    }
    // Every request of the run went through restarted edges at the end.
    assert!(c.publishes() > 0.0, "no PUBLISH reached a restarted edge");
    println!(
        "{what}: {} s in all; faults {faults:?}",
        began.elapsed().as_secs_f64().round()
    );
    // Failing here, with the cluster alive, keeps its logs (see the harness).
    assert!(faults.is_empty(), "{what}: the load failed: {faults:?}");
}

fn assert_clean(what: &str, r: Rollout) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rolling(what, r);
}

/// The rollout as Kubernetes does it with the chart (scaled down): SIGTERM,
/// lame duck while the Service takes the edge out, a new pod (new node id)
/// on the edge's ports, the next edge once it is ready. Nothing may be lost.
#[test]
fn a_rolling_restart_of_every_edge_under_load_loses_nothing() {
    assert_clean(
        "rolling restart",
        Rollout {
            stop: Stop::Term,
            drain_seconds: DRAIN_SECONDS,
            endpoints: Endpoints::Ready,
            same_id: false,
        },
    );
}

/// The same with every restarted edge keeping its node id (`edge.<id>` is
/// served again by the new process as soon as it is up, so nothing goes
/// through another edge).
#[test]
fn a_rolling_restart_keeping_node_ids_under_load_loses_nothing() {
    assert_clean(
        "rolling restart, same ids",
        Rollout {
            stop: Stop::Term,
            drain_seconds: DRAIN_SECONDS,
            endpoints: Endpoints::Ready,
            same_id: true,
        },
    );
}

/// A rollout done wrong: SIGKILL (no lame duck, nothing in flight
/// finished), node ids kept; the replacement starts once the Service has
/// taken the dead edge out. Passed: the UAs' retransmissions reach the edge
/// that takes the flow over (a fault needs a MESSAGE or NOTIFY in flight at
/// the instant of the kill).
#[test]
#[ignore = "variant (a rollout done wrong); run with --ignored"]
fn a_rolling_kill_9_of_every_edge_under_load() {
    assert_clean(
        "rolling kill -9, same ids",
        Rollout {
            stop: Stop::Kill,
            drain_seconds: DRAIN_SECONDS,
            endpoints: Endpoints::Ready,
            same_id: true,
        },
    );
}

/// A rollout done wrong: SIGTERM without a lame duck (`--drain-seconds 0`),
/// node ids kept. One run of two failed (4 `duplicate_message`: the edge
/// stopped serving `edge.<id>` at once and took 1.8 s to exit, relays
/// towards its flows waited, bug 2 duplicated them). With new ids it fails
/// like the main test (39 `duplicate_message`).
#[test]
#[ignore = "variant (a rollout done wrong); run with --ignored"]
fn a_rolling_restart_without_drain_under_load() {
    assert_clean(
        "rolling restart, no drain, same ids",
        Rollout {
            stop: Stop::Term,
            drain_seconds: 0,
            endpoints: Endpoints::Ready,
            same_id: true,
        },
    );
}

/// A rollout done wrong: a balancer that ignores readiness (flows stay on
/// the restarting edge, whose packets go nowhere while it is down), node ids
/// kept. Passed: the edge is down a fraction of a second and Timer E covers
/// it (with new ids: 143 `out_of_order_cseq`, bug 3).
#[test]
#[ignore = "variant (a rollout done wrong); run with --ignored"]
fn a_rolling_restart_behind_a_static_balancer_under_load() {
    assert_clean(
        "rolling restart, static endpoints, same ids",
        Rollout {
            stop: Stop::Term,
            drain_seconds: DRAIN_SECONDS,
            endpoints: Endpoints::Static,
            same_id: true,
        },
    );
}

//! Transports: the only code of the edge that does socket I/O. UDP
//! listeners and their receive loop, TCP accept, one reader and one
//! writer task per connection (with the limits of `guard.rs`: connections,
//! timeouts, bounded write queues), and the send paths.

use super::*;

pub(super) struct Conn {
    pub(super) tx: mpsc::Sender<Bytes>,
    /// Tells the reader to close the connection (its writer gave up).
    pub(super) close: Arc<tokio::sync::Notify>,
}

/// What a stream listener carries.
#[derive(Clone)]
pub enum StreamKind {
    Tcp,
    /// SIP over TLS with these certificates.
    Tls(Arc<TlsCerts>),
    /// SIP over WebSocket; browsers' `Origin` must be one of these (empty:
    /// any).
    Ws(Arc<Vec<String>>),
    /// SIP over secure WebSocket.
    Wss(Arc<TlsCerts>, Arc<Vec<String>>),
}

/// Bound sockets, so that bind errors surface before anything runs.
pub struct Listeners {
    pub udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    pub tcp: Vec<(SocketAddr, TcpListener)>,
}

impl Listeners {
    pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Listeners> {
        let mut l = Listeners {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in addrs {
            let tcp = TcpListener::bind(addr).await?;
            let actual = tcp.local_addr()?;
            let udp = bind_udp(actual)?;
            l.udp.push((actual, Arc::new(udp)));
            l.tcp.push((actual, tcp));
        }
        Ok(l)
    }
}

/// Socket buffer asked for on UDP listeners. The kernel's default (~200 KiB)
/// overflows within a few milliseconds of a scheduling hiccup at 10k+
/// datagrams/s; the kernel caps the request at `net.core.rmem_max`.
pub(super) const UDP_BUFFER: usize = 4 << 20;

/// The runtime of the UDP receive loops: one thread of the process, apart
/// from the runtime that does the work. Under overload the work runtime's
/// queue is long, and a receive loop waiting its turn there lets the kernel
/// drop datagrams at random: OPTIONS probes and the answers to our NOTIFYs
/// among them. On a thread of its own the loop keeps draining the sockets;
/// what the edge cannot take (`--max-inflight`) is dropped and counted,
/// OPTIONS are answered at once, answers complete their transactions.
fn receive_runtime() -> std::io::Result<tokio::runtime::Handle> {
    static RX: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    if let Some(h) = RX.get() {
        return Ok(h.clone());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sip-udp-rx".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("the UDP receive thread did not start"))??;
    // Two binds racing: the first runtime wins, the other thread idles.
    Ok(RX.get_or_init(|| handle).clone())
}

/// Run `fut` (a UDP receive loop) on the receive runtime.
pub(super) fn spawn_receiver(
    fut: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    match receive_runtime() {
        Ok(h) => h.spawn(fut),
        Err(e) => {
            tracing::warn!(error = %e, "no UDP receive thread; receiving on the work runtime");
            tokio::spawn(fut)
        }
    }
}

pub(super) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::Socket::from(std_sock);
    if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the UDP send buffer");
    }
    if addr.ip().is_unspecified() {
        // A wildcard listener learns each datagram's destination address,
        // which the flow's Via and Contact then name (see advertise.rs).
        let on = if addr.is_ipv4() {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)
        } else {
            nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::Ipv6RecvPacketInfo,
                &true,
            )
        };
        on.map_err(std::io::Error::from)?;
    }
    sock.set_nonblocking(true)?;
    // Registered with the receive runtime's reactor (see `receive_runtime`);
    // sends from the work runtime use it as well.
    let _in = receive_runtime()?.enter();
    UdpSocket::from_std(sock.into())
}

/// Receive one datagram on a wildcard-bound socket: its size, its source,
/// and the address it was sent to (from IP_PKTINFO / IPV6_PKTINFO).
async fn recv_with_destination(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<std::net::IpAddr>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    sock.async_io(tokio::io::Interest::READABLE, || {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut *cmsg), MsgFlags::empty())
            .map_err(std::io::Error::from)?;
        let remote = msg
            .address
            .and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::from(*v4))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6)))
            })
            .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
        let mut dst = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(info) => {
                        dst = Some(std::net::IpAddr::from(
                            u32::from_be(info.ipi_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    ControlMessageOwned::Ipv6PacketInfo(info) => {
                        dst = Some(std::net::IpAddr::from(info.ipi6_addr.s6_addr).to_canonical());
                    }
                    _ => {}
                }
            }
        }
        Ok((msg.bytes, advertise::canonical(remote), dst))
    })
    .await
}

/// Send one datagram: at once if the socket takes it, else waiting for it
/// to be writable (a socket never written to yet reports WouldBlock to
/// `try_send_to`; a full send buffer too) for at most [`UDP_SEND_WAIT`].
pub(super) async fn udp_send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> bool {
    match sock.try_send_to(bytes, to) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            matches!(
                tokio::time::timeout(UDP_SEND_WAIT, sock.send_to(bytes, to)).await,
                Ok(Ok(_))
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, %to, "udp send failed");
            false
        }
    }
}

/// How long a datagram may wait for its socket to be writable.
pub(super) const UDP_SEND_WAIT: Duration = Duration::from_millis(200);

impl Edge {
    /// The receive loop of one UDP listener, on the receive runtime; the
    /// requests it admits are handled on `work` (the edge's runtime). Ends
    /// with `shutdown` (or when its sender is gone).
    pub(super) async fn udp_loop(
        self: Arc<Self>,
        local: SocketAddr,
        sock: Arc<UdpSocket>,
        work: tokio::runtime::Handle,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 65536];
        let wildcard = local.ip().is_unspecified();
        let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo);
        loop {
            let received = async {
                if wildcard {
                    recv_with_destination(&sock, &mut buf, &mut cmsg).await
                } else {
                    sock.recv_from(&mut buf).await.map(|(n, r)| (n, r, None))
                }
            };
            let got = tokio::select! {
                got = received => got,
                _ = shutdown.changed() => return,
            };
            let (n, remote, to) = match got {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; keep serving.
                    tracing::debug!(error = %e, "udp receive error");
                    continue;
                }
            };
            // The flow's local address: where the datagram was sent to.
            let flow_local = match to {
                Some(ip) => SocketAddr::new(ip, local.port()),
                None => local,
            };
            if n <= 4
                && buf[..n]
                    .iter()
                    .all(|b| *b == b'\r' || *b == b'\n' || *b == 0)
            {
                continue; // keep-alive
            }
            let now = Instant::now();
            let peek = presence_sip::peek_response(&buf[..n]);
            // One look at the source's accounting per datagram: its bytes,
            // and a request's token (answers to our requests take none).
            let admitted = self.guard().arrived(remote, n, peek.is_none(), now);
            // Answers to our NOTIFYs are done with here, without a task.
            if let Some(peek) = peek {
                if self.complete_peeked(peek, Some(remote)) {
                    continue;
                }
            } else if !admitted {
                // Over its rate: dropped (answering a forged source would
                // serve the forger); a real UA retransmits.
                self.drop_counted("rate_limited");
                continue;
            }
            let src = Source {
                transport: Transport::Udp,
                remote,
                local: flow_local,
                conn: 0,
            };
            if buf[..n].starts_with(b"OPTIONS ") {
                self.options_now(&buf[..n], src);
                continue;
            }
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                self.drop_counted("overload");
                continue;
            };
            let data = Bytes::copy_from_slice(&buf[..n]);
            let me = self.clone();
            work.spawn(async move {
                me.on_message(&data, src, TransportKind::Datagram).await;
                drop(permit);
            });
        }
    }

    /// Accept TCP connections on `listener` and carry SIP over them as
    /// `kind` says: plain, or after a TLS and/or WebSocket handshake (both
    /// within the header timeout; a failed one is dropped and counted).
    pub(super) async fn accept_loop(
        self: Arc<Self>,
        local: SocketAddr,
        listener: TcpListener,
        kind: StreamKind,
    ) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    if let Err(why) = self.guard().open_connection(remote.ip()) {
                        tracing::debug!(%remote, ?why, "connection refused by limits");
                        self.drop_counted("connection_limit");
                        continue; // dropped: closed at once
                    }
                    let _ = stream.set_nodelay(true);
                    // The address the peer connected to (a wildcard listener
                    // has no single one): what this flow's Contact names.
                    let local = stream
                        .local_addr()
                        .map(advertise::canonical)
                        .unwrap_or(local);
                    if let StreamKind::Tcp = kind {
                        self.clone()
                            .spawn_conn(stream, Transport::Tcp, local, remote);
                        continue;
                    }
                    let me = self.clone();
                    let kind = kind.clone();
                    tokio::spawn(async move {
                        let wait = me.cfg.limits.header_timeout;
                        let started = tokio::time::timeout(
                            wait,
                            me.clone().handshake(stream, kind, local, remote),
                        )
                        .await;
                        let failed = match started {
                            Ok(Ok(())) => None,
                            Ok(Err(reason)) => Some(reason),
                            Err(_) => Some("handshake_timeout"),
                        };
                        if let Some(reason) = failed {
                            me.drop_counted(reason);
                            me.guard().close_connection(remote.ip());
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The handshakes of a TLS, WS or WSS connection, then its reader and
    /// writer; `Err(reason)` to count when one fails.
    async fn handshake(
        self: Arc<Self>,
        stream: TcpStream,
        kind: StreamKind,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(), &'static str> {
        let tls_failed = |e: std::io::Error| {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            "tls_handshake"
        };
        let ws_failed = |e: String| {
            tracing::debug!(%remote, error = %e, "WebSocket handshake failed");
            "ws_handshake"
        };
        let max = self.cfg.max_message;
        match kind {
            StreamKind::Tcp => {
                self.spawn_conn(stream, Transport::Tcp, local, remote);
            }
            StreamKind::Tls(certs) => {
                let s = certs.acceptor().accept(stream).await.map_err(tls_failed)?;
                self.spawn_conn(s, Transport::Tls, local, remote);
            }
            StreamKind::Ws(origins) => {
                let ws = websocket::accept(stream, &origins, max)
                    .await
                    .map_err(ws_failed)?;
                self.spawn_ws_conn(ws, Transport::Ws, local, remote);
            }
            StreamKind::Wss(certs, origins) => {
                let s = certs.acceptor().accept(stream).await.map_err(tls_failed)?;
                let ws = websocket::accept(s, &origins, max)
                    .await
                    .map_err(ws_failed)?;
                self.spawn_ws_conn(ws, Transport::Wss, local, remote);
            }
        }
        Ok(())
    }

    /// A new connection in the tables: its id, the receiving end of its
    /// bounded write queue, and the notice that closes it.
    pub(super) fn register_conn(
        &self,
        remote: SocketAddr,
    ) -> (u64, mpsc::Receiver<Bytes>, Arc<tokio::sync::Notify>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Bytes>(self.cfg.limits.write_queue.max(1));
        let close = Arc::new(tokio::sync::Notify::new());
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Conn {
                tx,
                close: close.clone(),
            },
        );
        self.by_remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(remote, id);
        self.metrics.edge_tcp_connections.inc();
        (id, rx, close)
    }

    /// A connection is gone: out of the tables and the limits.
    pub(super) fn unregister_conn(&self, id: u64, remote: SocketAddr) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let mut br = self.by_remote.lock().unwrap_or_else(|e| e.into_inner());
        if br.get(&remote) == Some(&id) {
            br.remove(&remote);
        }
        drop(br);
        self.metrics.edge_tcp_connections.dec();
        self.guard().close_connection(remote.ip());
    }

    pub(super) fn spawn_conn<S>(
        self: Arc<Self>,
        stream: S,
        transport: Transport,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> u64
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (id, mut rx, close) = self.register_conn(remote);
        let (mut rd, mut wr) = tokio::io::split(stream);
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
                // TLS keeps records until flushed; once the queue is empty,
                // everything written goes out (a no-op for TCP).
                if rx.is_empty() && wr.flush().await.is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let src = Source {
                transport,
                remote,
                local,
                conn: id,
            };
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 16384];
            let limits = me.cfg.limits;
            // The first message, and every message once begun, must arrive
            // whole within the header timeout; between messages the
            // connection may idle for the idle timeout.
            let mut partial_since = Some(Instant::now());
            let mut last_message = Instant::now();
            'read: loop {
                let deadline = match partial_since {
                    Some(t) => t + limits.header_timeout,
                    None => last_message + limits.idle_timeout,
                };
                let n = tokio::select! {
                    r = tokio::time::timeout_at(deadline, rd.read(&mut chunk)) => match r {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => n,
                        Err(_) => {
                            me.drop_counted(if partial_since.is_some() {
                                "header_timeout"
                            } else {
                                "idle_timeout"
                            });
                            break;
                        }
                    },
                    _ = close.notified() => break,
                };
                if buf.is_empty() && partial_since.is_none() {
                    partial_since = Some(Instant::now());
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match frame_stream(&buf, me.cfg.max_message) {
                        Ok(StreamFrame::NeedMore) => break,
                        Ok(StreamFrame::KeepAlive { len, ping }) => {
                            buf.drain(..len);
                            last_message = Instant::now();
                            if buf.is_empty() {
                                partial_since = None;
                            }
                            if ping {
                                me.send_conn(id, Bytes::from_static(b"\r\n"));
                            }
                        }
                        Ok(StreamFrame::Message { skip, len }) => {
                            let msg: Vec<u8> = buf.drain(..skip + len).skip(skip).collect();
                            let now = Instant::now();
                            last_message = now;
                            partial_since = (!buf.is_empty()).then_some(now);
                            me.on_stream_frame(msg, src);
                        }
                        Err(e) => {
                            // Cannot find the next message: answer what we can and close.
                            let status = if matches!(e, FrameError::TooLarge(_)) {
                                413
                            } else {
                                400
                            };
                            me.metrics
                                .edge_dropped
                                .with_label_values(&["tcp_framing"])
                                .inc();
                            if let Some(end) = presence_sip::frame::header_end(&buf) {
                                // Only the head is here, so a body the head
                                // announces is missing: parsing fails with
                                // "Content-Length Larger Than Body" but still
                                // yields the headers to answer with. The
                                // framing error, not that, is the answer.
                                let headers =
                                    match parse(&buf[..end], TransportKind::Datagram, usize::MAX) {
                                        Ok(Message::Request(r)) => Some(r.headers),
                                        Ok(Message::Response(_)) => None,
                                        Err(pe) => pe.answer.map(|h| *h),
                                    };
                                if let Some(headers) = headers {
                                    let reason = if status == 413 {
                                        "Request Entity Too Large"
                                    } else {
                                        "Bad Content-Length"
                                    };
                                    let b = ResponseBuilder::new(
                                        &headers,
                                        status,
                                        reason,
                                        Some(&new_tag()),
                                        Some(remote),
                                    );
                                    me.send_src(src, Bytes::from(b.encode()));
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break 'read;
                        }
                    }
                }
            }
            me.unregister_conn(id, remote);
        });
        id
    }

    /// One framed message from a stream: answers to our requests at once,
    /// requests within the source's rate and the in-flight bound on a task
    /// of their own; over either bound, 503 with Retry-After (a TCP source
    /// is not forged, and has no retransmission to fall back on).
    pub(super) fn on_stream_frame(self: &Arc<Self>, msg: Vec<u8>, src: Source) {
        self.on_frame(msg, src, TransportKind::Stream)
    }

    /// [`Edge::on_stream_frame`] for a message framed by its transport
    /// (`kind` Datagram: a WebSocket message, whose Content-Length may be
    /// absent).
    pub(super) fn on_frame(self: &Arc<Self>, msg: Vec<u8>, src: Source, kind: TransportKind) {
        if let Some(peek) = presence_sip::peek_response(&msg) {
            if self.complete_peeked(peek, None) {
                return;
            }
        }
        let admitted = self.guard().admit_request(src.remote.ip(), Instant::now());
        let permit = if admitted {
            self.inflight.clone().try_acquire_owned().ok()
        } else {
            None
        };
        let Some(permit) = permit else {
            self.drop_counted(if admitted { "overload" } else { "rate_limited" });
            if let Ok(Message::Request(req)) = parse(&msg, kind, self.cfg.max_message) {
                let b = self
                    .reply(&req, src, 503, "Service Unavailable")
                    .header("Retry-After", crate::answers::RETRY_AFTER_SECS.to_string());
                self.send_src(src, Bytes::from(b.encode()));
            }
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            me.on_message(&msg, src, kind).await;
            drop(permit);
        });
    }

    /// Queue `bytes` on connection `id`. A connection whose writer queue is
    /// full (its reader does not read) is closed and counted.
    /// The TCP connection this edge holds from `remote`, if any.
    pub(super) fn conn_from(&self, remote: SocketAddr) -> Option<u64> {
        self.by_remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&remote)
            .copied()
    }

    pub(super) fn send_conn(&self, id: u64, bytes: Bytes) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = conns.get(&id) else {
            return false;
        };
        match c.tx.try_send(bytes) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(c) = conns.remove(&id) {
                    c.close.notify_one();
                }
                drop(conns);
                self.drop_counted("write_queue_full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The UDP socket of the flow whose local address is `local`: its
    /// listener (the same address, or a wildcard one on the same port), else
    /// one of the same family, else any.
    pub(super) fn udp_socket(&self, local: SocketAddr) -> Option<Arc<UdpSocket>> {
        self.udp
            .iter()
            .find(|(a, _)| *a == local)
            .or_else(|| {
                self.udp.iter().find(|(a, _)| {
                    a.ip().is_unspecified()
                        && a.port() == local.port()
                        && (a.is_ipv6() || local.is_ipv4())
                })
            })
            .or_else(|| {
                self.udp
                    .iter()
                    .find(|(a, _)| a.is_ipv4() == local.is_ipv4())
            })
            .or(self.udp.first())
            .map(|(_, s)| s.clone())
    }

    pub(super) fn send_src(&self, src: Source, bytes: Bytes) {
        match src.transport {
            Transport::Udp => {
                if let Some(sock) = self.udp_socket(src.local) {
                    match sock.try_send_to(&bytes, src.remote) {
                        Ok(_) => {}
                        // Not known writable yet (a fresh socket) or its
                        // buffer is full: wait for it, briefly, off this path.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let metrics = self.metrics.clone();
                            tokio::spawn(async move {
                                if !udp_send(&sock, &bytes, src.remote).await {
                                    metrics
                                        .edge_dropped
                                        .with_label_values(&["send_failed"])
                                        .inc();
                                }
                            });
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "udp send failed");
                            self.drop_counted("send_failed");
                        }
                    }
                }
            }
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
                if !self.send_conn(src.conn, bytes) {
                    self.metrics
                        .edge_dropped
                        .with_label_values(&["send_failed"])
                        .inc();
                }
            }
        }
    }

    pub(super) fn answer_parse_error(&self, e: &ParseError, src: Source) {
        match &e.answer {
            Some(headers) => {
                self.metrics
                    .edge_dropped
                    .with_label_values(&["bad_request_answered"])
                    .inc();
                let b = ResponseBuilder::new(
                    headers,
                    e.status,
                    &e.reason,
                    Some(&new_tag()),
                    Some(src.remote),
                );
                self.send_src(src, Bytes::from(b.encode()));
            }
            None => {
                // Refusals that are attacks on the answer (reflection,
                // header injection) get a label of their own to alert on.
                let reason = match e.reason.as_str() {
                    presence_sip::parse::TOO_MANY_VIAS => "too_many_vias",
                    presence_sip::parse::TOO_MANY_HEADERS => "too_many_headers",
                    presence_sip::parse::BAD_HEADER_VALUE => "bad_header_value",
                    _ => "unparseable",
                };
                self.drop_counted(reason);
            }
        }
    }
}

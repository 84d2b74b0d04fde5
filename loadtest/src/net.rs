//! Sockets and tasks: a current-thread tokio runtime, a few shared UDP
//! sockets or TCP connections, one reader task per socket, one writer task
//! per TCP connection, and a 1 ms ticker. All of them drive one [`Engine`].

use crate::config::{Settings, Transport};
use crate::engine::{Endpoint, Engine, TcpOut, Wire};
use crate::scan;
use crate::stats::Report;
use presence_sip::{frame_stream, StreamFrame};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Run the whole load test; `Err` for setup problems (nothing was measured).
pub fn run(s: Settings, cpu_base: (f64, f64, f64)) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_local(s, cpu_base))
}

/// The local address the kernel would use to reach `target`.
pub fn local_ip_for(target: SocketAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    probe
        .connect(target)
        .map_err(|e| format!("no route to {target}: {e}"))?;
    Ok(probe.local_addr().map_err(|e| e.to_string())?.ip())
}

/// A bound UDP socket: the tokio one for reading, a clone for sending.
pub fn bind_udp(ip: IpAddr) -> Result<(UdpSocket, std::net::UdpSocket), String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("udp socket: {e}"))?;
    // Bursts of NOTIFYs (a receptionist's fan-out) need room; the kernel caps
    // these at net.core.rmem_max / wmem_max.
    let _ = sock.set_recv_buffer_size(16 << 20);
    let _ = sock.set_send_buffer_size(16 << 20);
    sock.set_nonblocking(true)
        .map_err(|e| format!("udp socket: {e}"))?;
    sock.bind(&addr.into())
        .map_err(|e| format!("bind {addr}: {e}"))?;
    let sender = sock.try_clone().map_err(|e| format!("udp socket: {e}"))?;
    let reader = UdpSocket::from_std(sock.into()).map_err(|e| format!("udp socket: {e}"))?;
    Ok((reader, sender.into()))
}

pub fn host_of(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

async fn run_local(s: Settings, cpu_base: (f64, f64, f64)) -> Result<Report, String> {
    let target = s.target.ok_or("--target is needed")?;
    let targets = s.targets.clone();
    let ip = local_ip_for(target)?;
    let mut eps = Vec::new();
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    match s.transport {
        Transport::Udp => {
            for _ in 0..s.sockets {
                let (reader, sender) = bind_udp(ip)?;
                let sock = Rc::new(reader);
                let local = sock.local_addr().map_err(|e| e.to_string())?;
                eps.push(Endpoint {
                    wire: Wire::Udp(Rc::new(sender)),
                    host: host_of(local),
                    target: 0,
                });
                udp.push(sock);
            }
        }
        Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
            let tls = match s.transport.is_tls() {
                true => Some(tls_connector(s.tls_ca.as_deref())?),
                false => None,
            };
            // `--connections` to each target, grouped by target.
            for (t, &target) in targets.iter().enumerate() {
                for _ in 0..s.connections {
                    let stream =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
                            .await
                            .map_err(|_| format!("tcp connect to {target}: timed out"))?
                            .map_err(|e| format!("tcp connect to {target}: {e}"))?;
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().map_err(|e| e.to_string())?;
                    let conn = match (s.transport, &tls) {
                        (Transport::Tls, Some(c)) => {
                            let (r, w) = tokio::io::split(tls_handshake(c, target, stream).await?);
                            Conn::Bytes(Box::new(r), Box::new(w))
                        }
                        (Transport::Wss, Some(c)) => {
                            let tls = tls_handshake(c, target, stream).await?;
                            Conn::Wss(Box::new(ws_connect(target, tls, "wss").await?))
                        }
                        (Transport::Ws, _) => {
                            Conn::Ws(Box::new(ws_connect(target, stream, "ws").await?))
                        }
                        _ => {
                            let (r, w) = stream.into_split();
                            Conn::Bytes(Box::new(r), Box::new(w))
                        }
                    };
                    let out = Rc::new(TcpOut::default());
                    eps.push(Endpoint {
                        wire: Wire::Tcp(out.clone()),
                        host: host_of(local),
                        target: t as u32,
                    });
                    tcp.push((conn, target, out));
                }
            }
        }
    }
    let progress = s.progress;
    let engine = Rc::new(RefCell::new(Engine::new(s, targets, eps, progress)));
    for (i, sock) in udp.into_iter().enumerate() {
        let engine = engine.clone();
        tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                if sock.readable().await.is_err() {
                    break;
                }
                let mut n_read = 0;
                // Until WouldBlock (or an ICMP error surfacing): then wait again.
                while let Ok((n, from)) = sock.try_recv_from(&mut buf) {
                    engine.borrow_mut().on_message(i as u32, from, &buf[..n]);
                    n_read += 1;
                    if n_read >= 256 {
                        break;
                    }
                }
                if n_read >= 256 {
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    for (i, (conn, peer, out)) in tcp.into_iter().enumerate() {
        match conn {
            Conn::Bytes(rd, wr) => spawn_stream(i as u32, peer, rd, wr, out, engine.clone()),
            Conn::Ws(ws) => spawn_ws(i as u32, peer, *ws, out, engine.clone()),
            Conn::Wss(ws) => spawn_ws(i as u32, peer, *ws, out, engine.clone()),
        }
    }
    let stop = engine.borrow().stop.clone();
    tokio::task::spawn_local(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            stop.set(stop.get().saturating_add(1));
        }
    });
    // The ticker sleeps until the engine next has something to do (at most
    // a second, at least a millisecond): few wake-ups at low rates.
    loop {
        let at = {
            let mut e = engine.borrow_mut();
            if e.tick() {
                break;
            }
            e.instant_of(e.next_wake_us())
        };
        tokio::time::sleep_until(at.into()).await;
    }
    let e = engine.borrow();
    e.end_progress();
    Ok(e.report(cpu_base))
}

/// One connection of a stream transport.
enum Conn {
    /// TCP or TLS: a byte stream framed by Content-Length.
    Bytes(
        Box<dyn tokio::io::AsyncRead + Unpin>,
        Box<dyn tokio::io::AsyncWrite + Unpin>,
    ),
    /// WebSocket: one SIP message per WebSocket message.
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    /// The same over TLS.
    Wss(Box<tokio_tungstenite::WebSocketStream<TlsStream>>),
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The TLS handshake with `target` (its IP address must be in the
/// certificate) over `stream`.
async fn tls_handshake(
    c: &tokio_rustls::TlsConnector,
    target: SocketAddr,
    stream: TcpStream,
) -> Result<TlsStream, String> {
    let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    tokio::time::timeout(Duration::from_secs(5), c.connect(name, stream))
        .await
        .map_err(|_| format!("tls handshake with {target}: timed out"))?
        .map_err(|e| format!("tls handshake with {target}: {e}"))
}

/// A TLS client trusting the CA in `ca` (PEM).
fn tls_connector(ca: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    let ca = ca.ok_or("--transport tls needs --tls-ca")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?
    {
        let c = c.map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// The WebSocket handshake (subprotocol `sip`) over `stream` (`scheme`
/// ws, or wss over a TLS stream).
async fn ws_connect<S>(
    target: SocketAddr,
    stream: S,
    scheme: &str,
) -> Result<tokio_tungstenite::WebSocketStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{scheme}://{target}/")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("sip"),
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .map_err(|_| format!("websocket handshake with {target}: timed out"))?
    .map_err(|e| format!("websocket handshake with {target}: {e}"))?;
    Ok(ws)
}

/// The writer and reader tasks of a TCP or TLS connection.
fn spawn_stream(
    i: u32,
    peer: SocketAddr,
    mut rd: Box<dyn tokio::io::AsyncRead + Unpin>,
    mut wr: Box<dyn tokio::io::AsyncWrite + Unpin>,
    out: Rc<TcpOut>,
    engine: Rc<RefCell<Engine>>,
) {
    let w_out = out.clone();
    tokio::task::spawn_local(async move {
        let mut spare: Vec<u8> = Vec::new();
        loop {
            w_out.wake.notified().await;
            loop {
                let data =
                    std::mem::replace(&mut *w_out.buf.borrow_mut(), std::mem::take(&mut spare));
                if data.is_empty() {
                    spare = data;
                    break;
                }
                // TLS keeps records until flushed (a no-op for TCP).
                if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                    w_out.closed.set(true);
                    return;
                }
                spare = data;
                spare.clear();
            }
        }
    });
    tokio::task::spawn_local(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(65536);
        let mut chunk = vec![0u8; 65536];
        loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    engine.borrow_mut().on_tcp_closed(i);
                    return;
                }
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut off = 0;
            loop {
                match frame_stream(&buf[off..], scan::MAX_MESSAGE) {
                    Ok(StreamFrame::KeepAlive { len, .. }) => off += len,
                    Ok(StreamFrame::Message { skip, len }) => {
                        let at = off + skip;
                        engine.borrow_mut().on_message(i, peer, &buf[at..at + len]);
                        off = at + len;
                    }
                    Ok(StreamFrame::NeedMore) => break,
                    Err(_) => {
                        let mut e = engine.borrow_mut();
                        e.stats.unparseable += 1;
                        e.on_tcp_closed(i);
                        return;
                    }
                }
            }
            buf.drain(..off);
        }
    });
}

/// The writer and reader tasks of a WebSocket connection: the engine
/// writes SIP messages back to back (with Content-Length), each goes out
/// as one WebSocket message.
fn spawn_ws<S>(
    i: u32,
    peer: SocketAddr,
    ws: tokio_tungstenite::WebSocketStream<S>,
    out: Rc<TcpOut>,
    engine: Rc<RefCell<Engine>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let (mut sink, mut stream) = ws.split();
    let w_out = out.clone();
    tokio::task::spawn_local(async move {
        loop {
            w_out.wake.notified().await;
            loop {
                let data = std::mem::take(&mut *w_out.buf.borrow_mut());
                if data.is_empty() {
                    break;
                }
                let mut off = 0;
                while off < data.len() {
                    match frame_stream(&data[off..], scan::MAX_MESSAGE) {
                        Ok(StreamFrame::Message { skip, len }) => {
                            let at = off + skip;
                            let text = String::from_utf8_lossy(&data[at..at + len]).into_owned();
                            if sink.feed(WsMessage::text(text)).await.is_err() {
                                w_out.closed.set(true);
                                return;
                            }
                            off = at + len;
                        }
                        Ok(StreamFrame::KeepAlive { len, .. }) => off += len,
                        Ok(StreamFrame::NeedMore) | Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    w_out.closed.set(true);
                    return;
                }
            }
        }
    });
    tokio::task::spawn_local(async move {
        while let Some(m) = stream.next().await {
            let data = match m {
                Ok(WsMessage::Text(t)) => t.as_bytes().to_vec(),
                Ok(WsMessage::Binary(b)) => b.to_vec(),
                Ok(WsMessage::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            engine.borrow_mut().on_message(i, peer, &data);
        }
        engine.borrow_mut().on_tcp_closed(i);
    });
}

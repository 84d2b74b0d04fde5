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
fn local_ip_for(target: SocketAddr) -> Result<IpAddr, String> {
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
fn bind_udp(ip: IpAddr) -> Result<(UdpSocket, std::net::UdpSocket), String> {
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

fn host_of(a: SocketAddr) -> String {
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
        Transport::Tcp => {
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
                    let out = Rc::new(TcpOut::default());
                    eps.push(Endpoint {
                        wire: Wire::Tcp(out.clone()),
                        host: host_of(local),
                        target: t as u32,
                    });
                    tcp.push((stream, out));
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
    for (i, (stream, out)) in tcp.into_iter().enumerate() {
        let peer = stream.peer_addr().unwrap_or(target);
        let (mut rd, mut wr) = stream.into_split();
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
                    if wr.write_all(&data).await.is_err() {
                        w_out.closed.set(true);
                        return;
                    }
                    spare = data;
                    spare.clear();
                }
            }
        });
        let engine = engine.clone();
        tokio::task::spawn_local(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(65536);
            let mut chunk = vec![0u8; 65536];
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        engine.borrow_mut().on_tcp_closed(i as u32);
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
                            engine
                                .borrow_mut()
                                .on_message(i as u32, peer, &buf[at..at + len]);
                            off = at + len;
                        }
                        Ok(StreamFrame::NeedMore) => break,
                        Err(_) => {
                            let mut e = engine.borrow_mut();
                            e.stats.unparseable += 1;
                            e.on_tcp_closed(i as u32);
                            return;
                        }
                    }
                }
                buf.drain(..off);
            }
        });
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

//! TCP and UDP servers and clients running inside network namespaces.
//!
//! Servers answer with a fixed reply (by convention the pod's name), so a client learns which
//! backend it reached. All waits are bounded; servers stop when their handle drops.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::netns::{in_netns, spawn_in_netns};

/// How often server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Largest reply a client accepts.
const MAX_REPLY: usize = 64 * 1024;
/// Concurrent connections an echo server serves; more are closed at once.
const MAX_ECHO_CONNECTIONS: usize = 256;
/// Most requests in one round.
const MAX_ROUND: usize = 100_000;

// ---------------------------------------------------------------------------------------------
// Sockets

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket bound to `addr` with SO_REUSEADDR, and IPV6_V6ONLY for IPv6 (so `[::]` and
/// `0.0.0.0` servers on one port coexist).
fn bound_socket(addr: SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned right away.
    let raw = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sin` is a valid sockaddr_in of the given length.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            // SAFETY: sockaddr_in6 is plain old data; all-zero is valid.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: `sin6` is a valid sockaddr_in6 of the given length.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn tcp_listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = bound_socket(addr, libc::SOCK_STREAM)?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn udp_bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    Ok(UdpSocket::from(bound_socket(addr, libc::SOCK_DGRAM)?))
}

/// Waits at most `timeout` for `fd` to become readable.
fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

fn unspecified_like(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A server running on a thread inside a namespace; stops (and its thread is joined) when
/// dropped or [`Server::stop`]ped.
pub struct Server {
    addr: SocketAddr,
    ns: String,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Requests answered so far (connections for TCP, datagrams for UDP, lines for echo).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops it and waits for its thread (at most about 100 ms).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("ns", &self.ns)
            .field("served", &self.served())
            .finish()
    }
}

type Loop<S> = Box<dyn FnOnce(S, Arc<AtomicBool>, Arc<AtomicU64>) + Send>;

/// Binds in `ns` with `bind`, then runs `serve` on the same thread until stopped.
fn start_server<S: 'static>(
    ns: &str,
    addr: SocketAddr,
    bind: fn(SocketAddr) -> io::Result<S>,
    serve: Loop<S>,
) -> Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::sync_channel::<io::Result<()>>(1);
    let (stop2, served2) = (stop.clone(), served.clone());
    let thread = spawn_in_netns(ns, move || match bind(addr) {
        Ok(socket) => {
            let _ = tx.send(Ok(()));
            serve(socket, stop2, served2);
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(Server {
            addr,
            ns: ns.to_string(),
            stop,
            served,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e).with_context(|| format!("binding {addr} in netns {ns}"))
        }
        Err(_) => {
            let _ = thread.join();
            Err(anyhow!("server thread in {ns} ended before binding {addr}"))
        }
    }
}

/// Accepts connections on `listener` until stopped, handing each to `handle`.
fn accept_loop(listener: TcpListener, stop: &AtomicBool, mut handle: impl FnMut(TcpStream)) {
    while !stop.load(Ordering::Relaxed) {
        match poll_readable(listener.as_raw_fd(), POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                eprintln!("skiff-testbed: poll on {:?}: {e}", listener.local_addr());
                return;
            }
        }
        match listener.accept() {
            Ok((conn, _)) => {
                // Accepted sockets do not inherit O_NONBLOCK on Linux, but be explicit.
                let _ = conn.set_nonblocking(false);
                handle(conn);
            }
            Err(e) if is_transient(&e) || e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                eprintln!("skiff-testbed: accept on {:?}: {e}", listener.local_addr());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A TCP server in `ns` bound to `addr:port` (use `0.0.0.0` or `::`): every connection gets
/// `reply` and is closed. Handles connections one after another, quickly.
pub fn tcp_server(ns: &str, addr: IpAddr, port: u16, reply: impl Into<String>) -> Result<Server> {
    let reply = reply.into();
    start_server(
        ns,
        SocketAddr::new(addr, port),
        tcp_listen,
        Box::new(move |listener, stop, served| {
            accept_loop(listener, &stop, |mut conn| {
                let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = conn.write_all(reply.as_bytes());
                let _ = conn.shutdown(Shutdown::Write);
                served.fetch_add(1, Ordering::Relaxed);
            });
        }),
    )
}

/// A UDP server in `ns` bound to `addr:port`: every datagram is answered with `reply`.
pub fn udp_server(ns: &str, addr: IpAddr, port: u16, reply: impl Into<String>) -> Result<Server> {
    let reply = reply.into();
    start_server(
        ns,
        SocketAddr::new(addr, port),
        udp_bind,
        Box::new(move |socket, stop, served| {
            if let Err(e) = socket.set_read_timeout(Some(POLL)) {
                eprintln!("skiff-testbed: udp server: {e}");
                return;
            }
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        let _ = socket.send_to(reply.as_bytes(), from);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => {
                        eprintln!("skiff-testbed: udp server recv: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }),
    )
}

/// A TCP line-echo server in `ns`: each line `L` received is answered with `"{reply} {L}\n"`,
/// on connections kept open as long as the client wants (up to 256 at once).
pub fn tcp_echo_server(
    ns: &str,
    addr: IpAddr,
    port: u16,
    reply: impl Into<String>,
) -> Result<Server> {
    let reply = reply.into();
    start_server(
        ns,
        SocketAddr::new(addr, port),
        tcp_listen,
        Box::new(move |listener, stop, served| {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            accept_loop(listener, &stop, |conn| {
                conns.retain(|c| !c.is_finished());
                if conns.len() >= MAX_ECHO_CONNECTIONS {
                    return; // dropped: closed
                }
                let (reply, stop, served) = (reply.clone(), stop.clone(), served.clone());
                match std::thread::Builder::new()
                    .name("echo-conn".into())
                    .spawn(move || echo_connection(conn, &reply, &stop, &served))
                {
                    Ok(handle) => conns.push(handle),
                    Err(e) => eprintln!("skiff-testbed: echo thread: {e}"),
                }
            });
            for conn in conns {
                let _ = conn.join();
            }
        }),
    )
}

fn echo_connection(mut conn: TcpStream, reply: &str, stop: &AtomicBool, served: &AtomicU64) {
    if conn.set_read_timeout(Some(POLL)).is_err()
        || conn
            .set_write_timeout(Some(Duration::from_secs(1)))
            .is_err()
    {
        return;
    }
    let _ = conn.set_nodelay(true);
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                    if conn
                        .write_all(format!("{reply} {text}\n").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
                if pending.len() > MAX_REPLY {
                    return;
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Connects to `to`, reads until the server closes; the whole exchange within `timeout`.
fn tcp_exchange(to: SocketAddr, timeout: Duration) -> Result<String> {
    if timeout.is_zero() {
        bail!("zero timeout");
    }
    let deadline = Instant::now() + timeout;
    let mut conn =
        TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{to}: no complete reply within {timeout:?} (got {:?})",
                String::from_utf8_lossy(&out)
            );
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_REPLY {
                    bail!("{to}: reply longer than {MAX_REPLY} bytes");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_transient(&e) => continue, // the deadline check above ends it
            Err(e) => return Err(e).with_context(|| format!("reading from {to}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}

/// Sends one datagram to `to` from a fresh (connected) socket and waits for one answer.
fn udp_exchange(to: SocketAddr, timeout: Duration) -> Result<String> {
    if timeout.is_zero() {
        bail!("zero timeout");
    }
    let socket = UdpSocket::bind(unspecified_like(&to)).context("binding UDP client")?;
    socket
        .connect(to)
        .with_context(|| format!("connecting UDP to {to}"))?;
    socket
        .send(b"ping\n")
        .with_context(|| format!("sending to {to}"))?;
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).map_err(|e| {
        if is_transient(&e) {
            anyhow!("{to}: no UDP answer within {timeout:?}")
        } else {
            anyhow!("{to}: {e}")
        }
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

/// One TCP connection from namespace `ns` to `addr:port`; returns what the server sent before
/// closing (trailing whitespace trimmed). Connect and read within `timeout`.
pub fn tcp_connect_once(ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> Result<String> {
    in_netns(ns, || tcp_exchange(SocketAddr::new(addr, port), timeout))
}

/// One UDP request from namespace `ns` to `addr:port` (fresh source port); returns the answer.
pub fn udp_request(ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> Result<String> {
    in_netns(ns, || udp_exchange(SocketAddr::new(addr, port), timeout))
}

/// Counts of answers (who replied how often) and failures of a round of requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Reply → how many requests got it.
    pub answers: BTreeMap<String, usize>,
    /// Requests without an answer.
    pub failures: usize,
    /// The first few failures' messages.
    pub errors: Vec<String>,
}

impl Tally {
    /// Records one request's outcome.
    pub fn record(&mut self, outcome: Result<String>) {
        match outcome {
            Ok(reply) => *self.answers.entry(reply).or_default() += 1,
            Err(e) => {
                self.failures += 1;
                if self.errors.len() < 5 {
                    self.errors.push(format!("{e:#}"));
                }
            }
        }
    }

    /// Requests answered.
    pub fn ok(&self) -> usize {
        self.answers.values().sum()
    }

    /// Requests made.
    pub fn total(&self) -> usize {
        self.ok() + self.failures
    }

    /// Adds another tally's counts to this one.
    pub fn merge(&mut self, other: &Tally) {
        for (reply, n) in &other.answers {
            *self.answers.entry(reply.clone()).or_default() += n;
        }
        self.failures += other.failures;
        for e in &other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e.clone());
            }
        }
    }

    /// A table, one line per reply, with counts and a bar; then failures if any.
    pub fn table(&self) -> String {
        let total = self.total().max(1);
        let width = self
            .answers
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(8);
        let mut out = String::new();
        for (reply, n) in &self.answers {
            let bar = "#".repeat(n * 40 / total);
            out.push_str(&format!(
                "  {reply:<width$} {n:>5} {:>5.1}%  {bar}\n",
                *n as f64 * 100.0 / total as f64
            ));
        }
        if self.failures > 0 {
            out.push_str(&format!("  {:<width$} {:>5}\n", "(failed)", self.failures));
            for e in &self.errors {
                out.push_str(&format!("    {e}\n"));
            }
        }
        out
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .answers
            .iter()
            .map(|(reply, n)| format!("{reply}={n}"))
            .collect();
        write!(f, "{}", parts.join(" "))?;
        if self.failures > 0 {
            write!(f, " failed={}", self.failures)?;
            if let Some(e) = self.errors.first() {
                write!(f, " ({e})")?;
            }
        }
        Ok(())
    }
}

fn check_round(n: usize) -> Result<()> {
    if n > MAX_ROUND {
        bail!("at most {MAX_ROUND} requests per round");
    }
    Ok(())
}

/// `n` sequential TCP connections from `ns` to `addr:port` (one thread in the namespace),
/// each within `timeout`: who answered how often.
pub fn tcp_round(ns: &str, addr: IpAddr, port: u16, n: usize, timeout: Duration) -> Result<Tally> {
    check_round(n)?;
    let to = SocketAddr::new(addr, port);
    in_netns(ns, || {
        let mut tally = Tally::default();
        for _ in 0..n {
            tally.record(tcp_exchange(to, timeout));
        }
        Ok(tally)
    })
}

/// `n` sequential UDP requests (each from a fresh source port) from `ns` to `addr:port`.
pub fn udp_round(ns: &str, addr: IpAddr, port: u16, n: usize, timeout: Duration) -> Result<Tally> {
    check_round(n)?;
    let to = SocketAddr::new(addr, port);
    in_netns(ns, || {
        let mut tally = Tally::default();
        for _ in 0..n {
            tally.record(udp_exchange(to, timeout));
        }
        Ok(tally)
    })
}

// ---------------------------------------------------------------------------------------------
// Long-lived connection

/// What a [`LongLivedClient`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Lines sent.
    pub sent: u64,
    /// Lines echoed back correctly.
    pub ok: u64,
    /// Lines without a correct echo within 1 s (write error, timeout, wrong content, closed).
    pub failures: u64,
    /// Which server answered (the first word of the echo) how often. More than one entry
    /// means the connection moved between backends.
    pub backends: BTreeMap<String, u64>,
    /// The first few failures' messages.
    pub errors: Vec<String>,
    /// The connection was closed or reset.
    pub connection_lost: bool,
}

/// One TCP connection kept open, sending a numbered line every `interval` to an echo server
/// ([`tcp_echo_server`]) and checking each echo. Stops on [`LongLivedClient::stop`], on drop, or
/// after `max_duration`. It never reconnects: failures count against this one connection.
pub struct LongLivedClient {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<EchoStats>>,
    thread: Option<JoinHandle<()>>,
}

impl LongLivedClient {
    /// Connects from `ns` to `addr:port` (within 2 s; an error if that fails) and starts.
    pub fn start(
        ns: &str,
        addr: IpAddr,
        port: u16,
        interval: Duration,
        max_duration: Duration,
    ) -> Result<LongLivedClient> {
        let to = SocketAddr::new(addr, port);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EchoStats::default()));
        let (tx, rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = spawn_in_netns(ns, move || {
            let conn = TcpStream::connect_timeout(&to, Duration::from_secs(2));
            match conn {
                Ok(conn) => {
                    let _ = tx.send(Ok(()));
                    long_lived(conn, interval, max_duration, &stop2, &stats2);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(LongLivedClient {
                stop,
                stats,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e).with_context(|| format!("connecting to {to} from {ns}"))
            }
            Err(_) => {
                let _ = thread.join();
                Err(anyhow!("client thread in {ns} ended before connecting"))
            }
        }
    }

    /// What it has seen so far.
    pub fn stats(&self) -> EchoStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether it is still sending (not stopped, not past its maximum duration).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops it and returns the final statistics.
    pub fn stop(mut self) -> EchoStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LongLivedClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads one line (without the newline) by `deadline`, keeping extra bytes in `pending`.
fn read_line(conn: &mut TcpStream, pending: &mut Vec<u8>, deadline: Instant) -> Result<String> {
    let mut buf = [0u8; 1024];
    loop {
        if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            return Ok(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no echo within the deadline");
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => bail!(CLOSED_BY_PEER),
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                if pending.len() > MAX_REPLY {
                    bail!("echo line longer than {MAX_REPLY} bytes");
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e).context("reading echo"),
        }
    }
}

/// Whether `e` means the connection is gone (closed, reset, broken pipe).
fn is_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.to_string() == CLOSED_BY_PEER
            || cause.downcast_ref::<io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::NotConnected
                )
            })
    })
}

const CLOSED_BY_PEER: &str = "connection closed by peer";

fn long_lived(
    mut conn: TcpStream,
    interval: Duration,
    max_duration: Duration,
    stop: &AtomicBool,
    stats: &Mutex<EchoStats>,
) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    let start = Instant::now();
    let mut pending = Vec::new();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max_duration {
        let tick = Instant::now();
        seq += 1;
        let line = format!("seq {seq}");
        let outcome = conn
            .write_all(format!("{line}\n").as_bytes())
            .context("sending")
            .and_then(|()| read_line(&mut conn, &mut pending, tick + Duration::from_secs(1)))
            .and_then(|echo| match echo.split_once(' ') {
                Some((backend, rest)) if rest == line => Ok(backend.to_string()),
                _ => Err(anyhow!("sent {line:?}, got {echo:?}")),
            });
        {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.sent += 1;
            match outcome {
                Ok(backend) => {
                    s.ok += 1;
                    *s.backends.entry(backend).or_default() += 1;
                }
                Err(e) => {
                    s.failures += 1;
                    let msg = format!("{e:#}");
                    if is_lost(&e) {
                        s.connection_lost = true;
                    }
                    if s.errors.len() < 5 {
                        s.errors.push(format!("seq {seq}: {msg}"));
                    }
                    // Resynchronize: drop whatever partial echo is pending.
                    pending.clear();
                }
            }
        }
        while !stop.load(Ordering::Relaxed) && tick.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(5).min(interval));
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

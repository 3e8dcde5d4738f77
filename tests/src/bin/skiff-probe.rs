//! `skiff-probe`: a socket client that runs as a process of its own, so that a test can put
//! it into a cgroup (the socket-level hooks select sockets by their process's cgroup) and a
//! network namespace before it opens any socket.
//!
//! ```text
//! skiff-probe [--cgroup DIR] [--netns NAME] MODE ADDR PORT [COUNT]
//! MODE: tcp            connect, read the reply until EOF; getpeername
//!       udp            unconnected: sendto, recvfrom (the answer's source)
//!       udp-reuse      like udp, but every attempt on the same socket
//!       udp-connected  connect, send, recvfrom; getpeername
//! ```
//! One line per attempt (each on a fresh socket unless reused, 2 s timeout):
//! `ok reply=<text> from=<addr|-> peer=<addr|->` or `err os=<errno|-> <message>`.

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_COUNT: usize = 10_000;

struct Answer {
    reply: String,
    from: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

fn tcp(to: SocketAddr) -> io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let peer = s.peer_addr().ok();
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(Answer {
        reply: String::from_utf8_lossy(&out).trim_end().to_string(),
        from: None,
        peer,
    })
}

fn udp_socket(to: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let s = UdpSocket::bind(any)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok(s)
}

fn udp(to: SocketAddr, connected: bool) -> io::Result<Answer> {
    udp_on(&udp_socket(to)?, to, connected)
}

fn udp_on(s: &UdpSocket, to: SocketAddr, connected: bool) -> io::Result<Answer> {
    if connected {
        s.connect(to)?;
        s.send(b"ping\n")?;
    } else {
        s.send_to(b"ping\n", to)?;
    }
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok(Answer {
        reply: String::from_utf8_lossy(&buf[..n]).trim_end().to_string(),
        from: Some(from),
        peer: if connected { s.peer_addr().ok() } else { None },
    })
}

fn show(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
}

/// Move this process into cgroup `dir` (writing 0 to cgroup.procs moves the writer).
fn join_cgroup(dir: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{dir}/cgroup.procs"))?
        .write_all(b"0")
}

fn join_netns(name: &str) -> io::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: a valid fd; this single-threaded process changes its own network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "skiff-probe: {msg}\nusage: skiff-probe [--cgroup DIR] [--netns NAME] \
         tcp|udp|udp-reuse|udp-connected ADDR PORT [COUNT]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take_opt = |name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        let v = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
        v
    };
    let cgroup = take_opt("--cgroup");
    let netns = take_opt("--netns");
    if let Some(dir) = &cgroup {
        if let Err(e) = join_cgroup(dir) {
            return usage(&format!("joining cgroup {dir}: {e}"));
        }
    }
    if let Some(ns) = &netns {
        if let Err(e) = join_netns(ns) {
            return usage(&format!("entering netns {ns}: {e}"));
        }
    }
    let (mode, addr, port) = match (args.first(), args.get(1), args.get(2)) {
        (Some(m), Some(a), Some(p)) => (m.clone(), a, p),
        _ => return usage("missing arguments"),
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return usage(&format!("bad address {addr}"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return usage(&format!("bad port {port}"));
    };
    let count = match args.get(3).map(|c| c.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if (1..=MAX_COUNT).contains(&n) => n,
        Some(_) => return usage(&format!("COUNT must be 1..={MAX_COUNT}")),
    };
    let to = SocketAddr::new(addr, port);
    let mut reused = None;
    let mut run = |to| -> io::Result<Answer> {
        match mode.as_str() {
            "tcp" => tcp(to),
            "udp" => udp(to, false),
            "udp-connected" => udp(to, true),
            _ => {
                if reused.is_none() {
                    reused = Some(udp_socket(to)?);
                }
                udp_on(reused.as_ref().unwrap(), to, false)
            }
        }
    };
    if !["tcp", "udp", "udp-reuse", "udp-connected"].contains(&mode.as_str()) {
        return usage(&format!("unknown mode {mode}"));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for _ in 0..count {
        let line = match run(to) {
            Ok(a) => format!(
                "ok reply={} from={} peer={}",
                a.reply,
                show(a.from),
                show(a.peer)
            ),
            Err(e) => format!(
                "err os={} {e}",
                e.raw_os_error()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
        };
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

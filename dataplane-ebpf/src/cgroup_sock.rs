//! The socket-level service path: cgroup `sock_addr` hooks on the sockets of one cgroup v2
//! subtree (the node's root cgroup in production). A local socket that addresses a service
//! is given the backend's address at `connect()` (or at each unconnected `sendmsg()`), so
//! its packets leave already addressed to the backend and need no per-packet translation:
//! this is also the only skiff hook that host processes and hostNetwork pods meet. The
//! reverse hooks (`recvmsg()`, `getpeername()`) report the service address back, so the
//! application never sees the backend's (a DNS client checks the source of its answers).
//!
//! Backend selection is `lb`'s, shared with the packet path, with the socket's network
//! namespace as the session-affinity client (`dataplane_common::sock::netns_client`).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use dataplane_common::{
    is_v4_mapped,
    sock::{netns_client, SockKey, SockValue, SOCK_DIR_FWD, SOCK_DIR_REV},
    v4_mapped, Backend, Reason, PROTO_TCP, PROTO_UDP,
};

use crate::{conntrack, lb, maps::SOCK, stats};

/// Return values of `sock_addr` programs.
const PROCEED: i32 = 1;
const REJECT: i32 = 0;
/// What a local client of a service without endpoints sees: kube-proxy REJECTs such traffic
/// with ICMP port unreachable, which a TCP `connect()` reports as ECONNREFUSED.
const ECONNREFUSED: i32 = 111;

/// How one address family reads and writes the address of a `bpf_sock_addr`. The verifier
/// allows only the family's own fields in each hook and only 4-byte accesses to
/// `user_ip6`: volatile accesses keep LLVM from merging them.
trait Family {
    /// The address (IPv4-mapped for IPv4), as the maps store it.
    unsafe fn addr(sa: *const bpf_sock_addr) -> [u8; 16];
    /// Write `a`; false when it cannot be expressed in this family.
    unsafe fn set_addr(sa: *mut bpf_sock_addr, a: &[u8; 16]) -> bool;
}

struct V4;
struct V6;

impl Family for V4 {
    #[inline(always)]
    unsafe fn addr(sa: *const bpf_sock_addr) -> [u8; 16] {
        let ip = unsafe { read_volatile(addr_of!((*sa).user_ip4)) };
        v4_mapped(ip.to_ne_bytes())
    }

    #[inline(always)]
    unsafe fn set_addr(sa: *mut bpf_sock_addr, a: &[u8; 16]) -> bool {
        if !is_v4_mapped(a) {
            return false;
        }
        let ip = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        unsafe { write_volatile(addr_of_mut!((*sa).user_ip4), ip) };
        true
    }
}

impl Family for V6 {
    /// An IPv6 socket's IPv4-mapped destination (`::ffff:a.b.c.d`) is already in the maps'
    /// form: it finds the IPv4 service and gets an IPv4-mapped backend.
    #[inline(always)]
    unsafe fn addr(sa: *const bpf_sock_addr) -> [u8; 16] {
        let mut out = [0u8; 16];
        let w = unsafe {
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ]
        };
        out[0..4].copy_from_slice(&w[0].to_ne_bytes());
        out[4..8].copy_from_slice(&w[1].to_ne_bytes());
        out[8..12].copy_from_slice(&w[2].to_ne_bytes());
        out[12..16].copy_from_slice(&w[3].to_ne_bytes());
        out
    }

    #[inline(always)]
    unsafe fn set_addr(sa: *mut bpf_sock_addr, a: &[u8; 16]) -> bool {
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip6[0]), w(0));
            write_volatile(addr_of_mut!((*sa).user_ip6[1]), w(4));
            write_volatile(addr_of_mut!((*sa).user_ip6[2]), w(8));
            write_volatile(addr_of_mut!((*sa).user_ip6[3]), w(12));
        }
        true
    }
}

/// A socket's new connection (or datagram) as `lb` sees it.
struct SockConn {
    dst: [u8; 16],
    client: [u8; 16],
    dport_be: u16,
    proto: u8,
}

impl lb::Conn for SockConn {
    #[inline(always)]
    fn dst(&self) -> &[u8; 16] {
        &self.dst
    }
    #[inline(always)]
    fn dport_be(&self) -> u16 {
        self.dport_be
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn client(&self) -> &[u8; 16] {
        &self.client
    }
    /// Local sockets are inside the cluster: the internal scope.
    #[inline(always)]
    fn scope(&self) -> u8 {
        dataplane_common::SCOPE_INTERNAL
    }
    /// The source port is not chosen yet at `connect()`, and no other node ever sees the
    /// flow untranslated: a random entry of a Maglev table (its shares are Maglev's).
    #[inline(always)]
    fn lb_hash(&self) -> u32 {
        unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() }
    }
}

/// The socket's protocol when the service path translates it (TCP and UDP).
#[inline(always)]
unsafe fn proto(sa: *const bpf_sock_addr) -> Option<u8> {
    let p = unsafe { read_volatile(addr_of!((*sa).protocol)) };
    (p == PROTO_TCP as u32 || p == PROTO_UDP as u32).then_some(p as u8)
}

/// `user_port` holds the port in network byte order in its low 16 bits.
#[inline(always)]
unsafe fn port_be(sa: *const bpf_sock_addr) -> u16 {
    unsafe { read_volatile(addr_of!((*sa).user_port)) as u16 }
}

#[inline(always)]
unsafe fn set_port_be(sa: *mut bpf_sock_addr, port_be: u16) {
    unsafe { write_volatile(addr_of_mut!((*sa).user_port), port_be as u32) };
}

#[inline(always)]
fn sock_key(cookie: u64, addr: [u8; 16], port_be: u16, dir: u8) -> SockKey {
    SockKey {
        cookie,
        addr,
        port_be,
        dir,
        _pad: [0; 5],
    }
}

/// Refuse the `connect()`/`sendmsg()` with ECONNREFUSED, counted as `reason`.
#[inline(always)]
fn refuse(reason: Reason) -> i32 {
    stats::count(reason);
    // Only fails on hooks without a return value to set; both callers have one.
    let _ = unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// The backend this socket's earlier datagrams to the frontend went to, while it still
/// exists with the same address (the packet path's rule for UDP conntrack entries).
#[inline(always)]
fn sticky(cookie: u64, conn: &SockConn) -> Option<(u32, Backend)> {
    let v = unsafe { SOCK.get(&sock_key(cookie, conn.dst, conn.dport_be, SOCK_DIR_FWD)) }?;
    let be = lb::backend(v.backend_id)?;
    (be.addr == v.addr && be.port_be == v.port_be).then_some((v.backend_id, be))
}

/// `connect()` (`datagram` false) or unconnected `sendmsg()` (`datagram` true): rewrite a
/// service destination to a backend.
#[inline(always)]
fn forward<F: Family>(ctx: &SockAddrContext, datagram: bool) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = (unsafe { proto(sa) }) else {
        return PROCEED;
    };
    let mut conn = SockConn {
        dst: unsafe { F::addr(sa) },
        client: [0; 16],
        dport_be: unsafe { port_be(sa) },
        proto,
    };
    let Some(svc) = lb::lookup_frontend(&conn) else {
        return PROCEED;
    };
    if svc.count == 0 {
        return refuse(Reason::DropSockNoEndpoints);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let (id, be, fresh) = match datagram.then(|| sticky(cookie, &conn)).flatten() {
        Some((id, be)) => (id, be, false),
        None => {
            conn.client = netns_client(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) });
            match lb::select_backend(&conn, &svc, conntrack::now()) {
                Ok((id, be)) => (id, be, true),
                Err(reason) => return refuse(reason),
            }
        }
    };
    if !unsafe { F::set_addr(sa, &be.addr) } {
        // An IPv6 backend for an IPv4 frontend: the agent never writes one.
        return refuse(Reason::DropNoBackend);
    }
    unsafe { set_port_be(sa, be.port_be) };
    if fresh {
        // A full LRU map evicts its oldest entry; failing here would only cost the reverse
        // translation, never the connection.
        let rev = SockValue {
            addr: conn.dst,
            port_be: conn.dport_be,
            _pad: [0; 2],
            backend_id: 0,
        };
        let _ = SOCK.insert(
            &sock_key(cookie, be.addr, be.port_be, SOCK_DIR_REV),
            &rev,
            0,
        );
        if datagram {
            let fwd = SockValue {
                addr: be.addr,
                port_be: be.port_be,
                _pad: [0; 2],
                backend_id: id,
            };
            let _ = SOCK.insert(
                &sock_key(cookie, conn.dst, conn.dport_be, SOCK_DIR_FWD),
                &fwd,
                0,
            );
        }
    }
    stats::count(Reason::SockNat);
    PROCEED
}

/// `recvmsg()` / `getpeername()`: report a backend this socket was sent to as the service
/// address the application used. These hooks must always return PROCEED.
#[inline(always)]
fn reverse<F: Family>(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if unsafe { proto(sa) }.is_none() {
        return PROCEED;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = sock_key(
        cookie,
        unsafe { F::addr(sa) },
        unsafe { port_be(sa) },
        SOCK_DIR_REV,
    );
    if let Some(v) = unsafe { SOCK.get(&key) } {
        if unsafe { F::set_addr(sa, &v.addr) } {
            unsafe { set_port_be(sa, v.port_be) };
            stats::count(Reason::SockRevNat);
        }
    }
    PROCEED
}

#[cgroup_sock_addr(connect4)]
pub fn skiff_conn4(ctx: SockAddrContext) -> i32 {
    forward::<V4>(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn skiff_conn6(ctx: SockAddrContext) -> i32 {
    forward::<V6>(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_send4(ctx: SockAddrContext) -> i32 {
    forward::<V4>(&ctx, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn skiff_send6(ctx: SockAddrContext) -> i32 {
    forward::<V6>(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recv4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn skiff_recv6(ctx: SockAddrContext) -> i32 {
    reverse::<V6>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn skiff_peer4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn skiff_peer6(ctx: SockAddrContext) -> i32 {
    reverse::<V6>(&ctx)
}

//! ABI of the socket-level service path (cgroup `connect`/`sendmsg`/`recvmsg`/`getpeername`
//! hooks): local sockets are translated once, at `connect()` or per unconnected `sendmsg()`,
//! instead of per packet.
//!
//! One map, `SK_SOCK_V1` (LRU), keyed by socket cookie, holds both directions:
//! - `SOCK_DIR_FWD`: (socket, service frontend) -> the backend an unconnected UDP socket's
//!   datagrams to that frontend go to, so that a socket keeps its backend (as a conntrack
//!   entry keeps a packet flow's) while the backend exists;
//! - `SOCK_DIR_REV`: (socket, backend) -> the frontend the application addressed, so that
//!   `recvmsg()` and `getpeername()` report the service address, never the backend's.

/// Key of `SK_SOCK_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// `bpf_get_socket_cookie()`: unique per socket for the kernel's lifetime.
    pub cookie: u64,
    /// `SOCK_DIR_FWD`: the frontend address; `SOCK_DIR_REV`: the backend address.
    pub addr: [u8; 16],
    /// Port (network byte order) belonging to `addr`.
    pub port_be: u16,
    /// `SOCK_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 32);

/// Value of `SK_SOCK_V1`: the address to rewrite to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockValue {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: [u8; 2],
    /// `SOCK_DIR_FWD`: the backend's id, re-checked on use so a removed backend is never used.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<SockValue>() == 24);

pub const SOCK_DIR_FWD: u8 = 1;
pub const SOCK_DIR_REV: u8 = 2;

/// The session-affinity client identity of a socket: its network namespace. A socket does
/// not know its source address at `connect()` time, and every socket of one namespace
/// (the node's, or one pod's) leaves with that namespace's address, which is what
/// kube-proxy's `ClientIP` affinity keys on. The form `ff00::<cookie>` (reserved multicast
/// scope 0) can never be a packet's source, so it never collides with the packet path's
/// client addresses in `SK_AFF_V1`.
#[inline(always)]
pub const fn netns_client(netns_cookie: u64) -> [u8; 16] {
    let c = netns_cookie.to_be_bytes();
    [
        0xff, 0, 0, 0, 0, 0, 0, 0, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
    ]
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] plain-old-data without implicit padding (sizes asserted above).
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_clients_are_reserved_multicast_and_distinct() {
        let a = netns_client(1);
        let b = netns_client(0x0102_0304_0506_0708);
        assert_eq!(a[0], 0xff);
        assert_eq!(a[1], 0);
        assert_ne!(a, b);
        assert_eq!(b[8..], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(!crate::is_v4_mapped(&a));
    }
}

//! The one netlink question aya does not answer: in which mode an interface runs its XDP
//! program. A pinned XDP link says nothing about its mode, and an older agent may have left a
//! generic (skb) one, which skiff no longer uses.

use std::io;

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
/// Attribute types carry the nested and byte-order flags in their top bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How an interface runs XDP (`XDP_ATTACHED_*` of linux/if_link.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    None,
    /// Native: in the driver.
    Driver,
    /// Generic: on the skb, in the stack.
    Skb,
    /// Offloaded to the NIC.
    Hardware,
    /// More than one mode at once.
    Multi,
}

/// The XDP mode of interface `ifindex` in this network namespace.
pub fn xdp_attached(ifindex: u32) -> io::Result<XdpAttached> {
    let index = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain socket(2); the descriptor is owned (and closed) by `fd` below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let fd_raw = std::os::fd::AsRawFd::as_raw_fd(&fd);

    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let req_len = req.len() as u32;
    req[0..4].copy_from_slice(&req_len.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    req[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&index.to_ne_bytes());
    // SAFETY: sending `req.len()` bytes from a live buffer; the kernel is the default peer.
    if unsafe { libc::send(fd_raw, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // One RTM_NEWLINK answer (a few KB with the statistics) or an error.
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: receiving into a live buffer of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd_raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_newlink(&buf[..n as usize])
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b` as (type, payload), each padded to 4 bytes.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let ty = u16_at(b, 2)? & NLA_TYPE_MASK;
        let payload = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn parse_newlink(msg: &[u8]) -> io::Result<XdpAttached> {
    let len = u32_at(msg, 0).ok_or_else(|| bad("short answer"))? as usize;
    let ty = u16_at(msg, 4).ok_or_else(|| bad("short answer"))?;
    let msg = msg.get(..len).ok_or_else(|| bad("truncated answer"))?;
    if ty == NLMSG_ERROR {
        let errno = u32_at(msg, NLMSG_HDRLEN).ok_or_else(|| bad("short error"))? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if ty != RTM_NEWLINK {
        return Err(bad(&format!("unexpected message type {ty}")));
    }
    let body = msg
        .get(NLMSG_HDRLEN + IFINFOMSG_LEN..)
        .ok_or_else(|| bad("short RTM_NEWLINK"))?;
    let Some((_, xdp)) = attrs(body).find(|(t, _)| *t == IFLA_XDP) else {
        return Ok(XdpAttached::None);
    };
    let mode = attrs(xdp)
        .find(|(t, _)| *t == IFLA_XDP_ATTACHED)
        .and_then(|(_, v)| v.first().copied())
        .unwrap_or(0);
    Ok(match mode {
        0 => XdpAttached::None,
        1 => XdpAttached::Driver,
        2 => XdpAttached::Skb,
        3 => XdpAttached::Hardware,
        _ => XdpAttached::Multi,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_xdp_attribute_is_found_among_others() {
        let mut m = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        // IFLA_IFNAME "lo\0" (padded), then IFLA_XDP (nested flag) { IFLA_XDP_ATTACHED: 2 }.
        m.extend_from_slice(&[7, 0, 3, 0, b'l', b'o', 0, 0]);
        m.extend_from_slice(&(12u16).to_ne_bytes());
        m.extend_from_slice(&(IFLA_XDP | 0x8000).to_ne_bytes());
        m.extend_from_slice(&[5, 0, IFLA_XDP_ATTACHED as u8, 0, 2, 0, 0, 0]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_newlink(&m).unwrap(), XdpAttached::Skb);
        // Without IFLA_XDP: nothing attached.
        let mut short = m[..NLMSG_HDRLEN + IFINFOMSG_LEN + 8].to_vec();
        let len = short.len() as u32;
        short[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_newlink(&short).unwrap(), XdpAttached::None);
    }

    #[test]
    fn errors_carry_the_errno() {
        let mut m = vec![0u8; NLMSG_HDRLEN + 4];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[NLMSG_HDRLEN..].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let e = parse_newlink(&m).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }

    /// The real kernel: loopback runs no XDP; an interface that does not exist is an error.
    #[test]
    fn loopback_runs_no_xdp() {
        assert_eq!(xdp_attached(1).unwrap(), XdpAttached::None);
        assert!(xdp_attached(i32::MAX as u32).is_err());
    }
}

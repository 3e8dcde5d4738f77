//! Header parsing: Ethernet, IPv4/IPv6 (with a bounded walk over IPv6 extension headers),
//! and the ports of TCP/UDP/SCTP. Other IP protocols (ICMP, ...) come back with their
//! addresses and zero ports: the service datapath passes them, NetworkPolicy still checks them.

use dataplane_common::{v4_mapped, Reason, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::ctx::{load, Packet, Tc};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;
/// How many IPv6 extension headers are walked before giving up (bounded loop).
const IPV6_MAX_EXT: usize = 4;
/// Linear bytes wanted for parsing: Ethernet + IPv6 + some extension headers + TCP.
const PARSE_LINEAR: usize = 192;

/// A parsed transport flow, with the offsets the NAT code needs.
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports as they sit in the packet (network byte order).
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub v6: bool,
    pub tcp_flags: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    /// Scope of the service frontend the flow matched (`SCOPE_*`; set by the lookup).
    pub scope: u8,
}

pub enum Parsed {
    /// Not IPv4/IPv6.
    NotIp,
    /// A fragment without the transport header.
    Fragment,
    /// IP, but not a protocol with ports the service datapath translates: addresses and
    /// protocol set, ports and TCP flags 0, `l4_off` where its header would start (it may be
    /// truncated: nothing of it was read).
    Other(Flow),
    Flow(Flow),
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

// A subprogram: keeps the parse temporaries out of the pipeline's stack frame.
#[inline(always)]
pub fn parse<C: Packet>(ctx: &C) -> Result<Parsed, Reason> {
    ctx.make_linear(PARSE_LINEAR);
    let ethertype: u16 = load::<C, u16>(ctx, 12).ok_or(Reason::DropMalformed)?;
    match u16::from_be(ethertype) {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        _ => Ok(Parsed::NotIp),
    }
}

/// `parse` as a subprogram, for the TC hooks: its temporaries then stay out of their stack
/// frames, which policy and the service pipeline need. (Not for XDP: there LLVM hands the
/// subprogram packet pointers the verifier refuses to do arithmetic on.)
#[inline(never)]
pub fn parse_tc(ctx: &Tc) -> Result<Parsed, Reason> {
    parse(ctx)
}

#[inline(always)]
fn parse_v4<C: Packet>(ctx: &C) -> Result<Parsed, Reason> {
    let l3 = ETH_HLEN;
    let vihl: u8 = load(ctx, l3).ok_or(Reason::DropMalformed)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::DropMalformed);
    }
    let frag: u16 = load(ctx, l3 + 6).ok_or(Reason::DropMalformed)?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return Ok(Parsed::Fragment);
    }
    let proto: u8 = load(ctx, l3 + 9).ok_or(Reason::DropMalformed)?;
    let src: [u8; 4] = load(ctx, l3 + 12).ok_or(Reason::DropMalformed)?;
    let dst: [u8; 4] = load(ctx, l3 + 16).ok_or(Reason::DropMalformed)?;
    l4(
        ctx,
        proto,
        v4_mapped(src),
        v4_mapped(dst),
        false,
        l3,
        l3 + ihl,
    )
}

#[inline(always)]
fn parse_v6<C: Packet>(ctx: &C) -> Result<Parsed, Reason> {
    let l3 = ETH_HLEN;
    let vtc: u8 = load(ctx, l3).ok_or(Reason::DropMalformed)?;
    if vtc >> 4 != 6 {
        return Err(Reason::DropMalformed);
    }
    let mut next: u8 = load(ctx, l3 + 6).ok_or(Reason::DropMalformed)?;
    let src: [u8; 16] = load(ctx, l3 + 8).ok_or(Reason::DropMalformed)?;
    let dst: [u8; 16] = load(ctx, l3 + 24).ok_or(Reason::DropMalformed)?;
    let mut off = l3 + IPV6_HLEN;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let hdr: [u8; 2] = load(ctx, off).ok_or(Reason::DropMalformed)?;
                next = hdr[0];
                off += (hdr[1] as usize + 1) * 8;
            }
            // Fragment header: only the first fragment carries the transport header.
            44 => {
                let hdr: [u8; 4] = load(ctx, off).ok_or(Reason::DropMalformed)?;
                if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                    return Ok(Parsed::Fragment);
                }
                next = hdr[0];
                off += 8;
            }
            _ => break,
        }
    }
    l4(ctx, next, src, dst, true, l3, off)
}

#[inline(always)]
fn l4<C: Packet>(
    ctx: &C,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    v6: bool,
    l3_off: usize,
    l4_off: usize,
) -> Result<Parsed, Reason> {
    let min = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        _ => {
            return Ok(Parsed::Other(Flow {
                src,
                dst,
                sport_be: 0,
                dport_be: 0,
                proto,
                v6,
                tcp_flags: 0,
                l3_off,
                l4_off,
                scope: 0,
            }))
        }
    };
    // The whole fixed header must be there, not just the ports: NAT writes its checksum.
    if l4_off + min > ctx.data_end() - ctx.data() {
        return Err(Reason::DropMalformed);
    }
    let ports: [u16; 2] = load(ctx, l4_off).ok_or(Reason::DropMalformed)?;
    let tcp_flags = if proto == PROTO_TCP {
        load::<C, u8>(ctx, l4_off + 13).ok_or(Reason::DropMalformed)?
    } else {
        0
    };
    Ok(Parsed::Flow(Flow {
        src,
        dst,
        sport_be: ports[0],
        dport_be: ports[1],
        proto,
        v6,
        tcp_flags,
        l3_off,
        l4_off,
        scope: 0,
    }))
}

//! SCTP port rewrites: the port and the CRC32c (RFC 4960 appendix B) that covers it, updated
//! incrementally (`dataplane_common::crc32c`) from the packet's length alone.

use dataplane_common::crc32c;

use crate::{
    ctx::{load, Packet},
    parse::Flow,
};

/// SCTP common header: ports, verification tag, checksum.
const SCTP_HLEN: usize = 12;

/// Write `new_be` over the source (`is_src`) or destination port, which holds `old_be`, and
/// fix the CRC32c. Inlined: as a subprogram its frame plus that of `skiff_sctp_crc` do not
/// fit beside the external egress program's 464 bytes.
#[inline(always)]
pub fn rewrite_port<C: Packet>(
    ctx: &C,
    flow: &Flow,
    is_src: bool,
    old_be: u16,
    new_be: u16,
) -> Result<(), ()> {
    // The CRC covers the SCTP packet as the IP length gives it; an skb's length may include
    // Ethernet padding. A length pointing past the packet's end is refused (dropped), not
    // guessed at.
    let end = if flow.v6 {
        let plen: u16 = load(ctx, flow.l3_off + 4).ok_or(())?;
        flow.l3_off + 40 + u16::from_be(plen) as usize
    } else {
        let total: u16 = load(ctx, flow.l3_off + 2).ok_or(())?;
        flow.l3_off + u16::from_be(total) as usize
    };
    if end < flow.l4_off + SCTP_HLEN || end > ctx.pkt_len() {
        return Err(());
    }
    // The common header read and written whole: one bounds check each, which the verifier
    // can follow (separate checks for the port and the CRC were merged by LLVM into one the
    // verifier could not relate to the second access).
    let mut hdr: [u8; SCTP_HLEN] = load(ctx, flow.l4_off).ok_or(())?;
    let at = if is_src { 0 } else { 2 };
    let after = end - flow.l4_off - at - 2;
    // Little-endian on the wire: the CRC value is the field read as a little-endian u32.
    let stored = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let crc = if C::SCTP_CRC_MAY_BE_PENDING && stored == 0 {
        // Checksum offload (CHECKSUM_PARTIAL: the sender's device has NETIF_F_SCTP_CRC, as
        // veth does) computes the CRC over the packet as it leaves, with this field taken
        // as is: it must stay zero. (A real CRC of zero, 1 in 2^32, is then left stale.)
        0
    } else {
        skiff_sctp_crc(stored, (old_be ^ new_be) as u32, after as u32, crc32c::POLY)
    };
    let port = new_be.to_ne_bytes();
    if is_src {
        hdr[0] = port[0];
        hdr[1] = port[1];
    } else {
        hdr[2] = port[0];
        hdr[3] = port[1];
    }
    let crc = crc.to_le_bytes();
    hdr[8] = crc[0];
    hdr[9] = crc[1];
    hdr[10] = crc[2];
    hdr[11] = crc[3];
    ctx.store(flow.l4_off, &hdr)
}

/// `crc32c::flip2` for a port changed by `delta` (old XOR new, as they sit in the packet),
/// followed by `after` bytes.
///
/// A global function (exported, see build.rs): the verifier checks it once, for any scalar
/// arguments, instead of walking its loops again on every path that reaches a port rewrite
/// (past the 1M-instruction limit). `poly` is always `crc32c::POLY`, passed in so that the
/// verifier does not know it (see `dataplane_common::crc32c`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn skiff_sctp_crc(crc: u32, delta: u32, after: u32, poly: u32) -> u32 {
    crc32c::flip2(crc, (delta as u16).to_ne_bytes(), after as u16, poly)
}

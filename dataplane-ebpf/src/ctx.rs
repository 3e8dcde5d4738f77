//! One packet abstraction for TC and XDP. The pipeline (parse, conntrack, NAT) is written
//! against `Packet`; TC uses the kernel's checksum helpers (they know about CHECKSUM_PARTIAL
//! skbs, which pods' veth traffic is), XDP updates checksums in software (`checksum`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    helpers::{
        bpf_l4_csum_replace, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_pull_data, bpf_skb_store_bytes, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use dataplane_common::Reason;

use crate::checksum;

/// Flags for `l4_csum_replace`, with the kernel's meaning.
pub const CSUM_PSEUDO: u64 = BPF_F_PSEUDO_HDR as u64;
pub const CSUM_MANGLED_0: u64 = BPF_F_MARK_MANGLED_0 as u64;

pub trait Packet {
    /// True where an SCTP CRC32c may still be owed by checksum offload (an skb with
    /// CHECKSUM_PARTIAL carries a zero CRC field, filled in when it leaves the node).
    const SCTP_CRC_MAY_BE_PENDING: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole packet, non-linear part included.
    fn pkt_len(&self) -> usize;
    /// Make the first `len` bytes (or the whole packet if shorter) directly accessible.
    fn make_linear(&self, len: usize);
    /// Write `v` at byte offset `off` of the packet.
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), ()>;
    /// IPv4 header checksum at `off`: a 4-byte field changed from `from` to `to`.
    fn l3_csum_replace(&self, off: usize, from: u32, to: u32) -> Result<(), ()>;
    /// L4 checksum at `off`. `size` 2 or 4: a field changed from `from` to `to`; `size` 0:
    /// `to` is a `bpf_csum_diff` result. `flags`: `CSUM_PSEUDO` for pseudo-header fields
    /// (addresses), `CSUM_MANGLED_0` for UDP (0 means "no checksum").
    fn l4_csum_replace(
        &self,
        off: usize,
        from: u32,
        to: u32,
        size: u64,
        flags: u64,
    ) -> Result<(), ()>;
    /// Write `N` bytes from `src` (map memory) at `off`, without a copy on the stack.
    fn store_buf<const N: usize>(&self, off: usize, src: &[u8; N]) -> Result<(), ()>;
    /// Copy `N` packet bytes at `off` into `dst` (map memory), without going through
    /// registers or the stack.
    fn load_buf<const N: usize>(&self, off: usize, dst: &mut [u8; N]) -> Result<(), ()>;
    /// Make the packet exactly `len` bytes long (contents unspecified afterwards: callers
    /// overwrite all of it). Packet pointers must be re-read after it.
    fn resize(&self, len: usize) -> Result<(), ()>;
}

/// Bounds-checked read at `off`; the check sits right beside the access for the verifier.
#[inline(always)]
pub fn load<C: Packet, T: Copy>(ctx: &C, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

pub struct Tc<'a>(pub &'a TcContext);

/// TC_ACT_UNSPEC: no opinion, the next TCX program (or the stack) decides.
pub const TC_ACT_NEXT: i32 = -1;

impl Tc<'_> {
    /// What a TC program returns for a packet counted as `reason`: a reject reply (the packet
    /// rewritten, MACs swapped) goes back out of the interface it came in by; drops are shot;
    /// anything else goes on.
    #[inline(always)]
    pub fn action(&self, reason: Reason) -> i32 {
        if reason.is_reject() {
            let ifindex = unsafe { (*self.0.skb.skb).ifindex };
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        } else if reason.is_drop() {
            TC_ACT_SHOT
        } else {
            TC_ACT_NEXT
        }
    }

    /// A pointer to a `T` at `off` in the linear area (bounds checked beside the access).
    #[inline(always)]
    fn ptr_mut<T>(&self, off: usize) -> Result<*mut T, ()> {
        let start = self.data();
        if start + off + core::mem::size_of::<T>() > self.data_end() {
            return Err(());
        }
        Ok((start + off) as *mut T)
    }

    /// `bpf_skb_store_bytes`: works beyond the linear area too.
    #[inline(always)]
    fn store_bytes<T: Copy>(&self, off: usize, v: &T) -> Result<(), ()> {
        let r = unsafe {
            bpf_skb_store_bytes(
                self.0.skb.skb,
                off as u32,
                v as *const T as *const _,
                core::mem::size_of::<T>() as u32,
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(())
        }
    }
}

impl Packet for Tc<'_> {
    const SCTP_CRC_MAY_BE_PENDING: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn pkt_len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn make_linear(&self, len: usize) {
        let total = self.0.len() as usize;
        let want = if total < len { total } else { len };
        if self.data_end() - self.data() < want {
            // Failure leaves the packet as it was; bounds checks then see a short packet.
            unsafe { bpf_skb_pull_data(self.0.skb.skb, want as u32) };
        }
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), ()> {
        // Within the linear area: a direct write, not a helper call per field. The price:
        // a program with direct writes gets the kernel's unclone prologue, which calls
        // bpf_skb_pull_data(skb, 0) before the program on every skb with the cloned bit set
        // (TCP's transmit clones included; it copies nothing when the header is writable,
        // and drops the packet if unsharing fails for want of memory), whether or not this
        // packet is then rewritten.
        match self.ptr_mut::<T>(off) {
            Ok(p) => {
                unsafe { core::ptr::write_unaligned(p, *v) };
                Ok(())
            }
            Err(()) => self.store_bytes(off, v),
        }
    }

    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u32, to: u32) -> Result<(), ()> {
        // The IPv4 header checksum is always complete in the packet (no offload state to
        // respect; its change cancels the address's in a CHECKSUM_COMPLETE skb->csum, which
        // bpf_l3_csum_replace leaves alone too): updated in software. Callers only change
        // headers `parse` read directly, so the field is in the linear area.
        let p = self.ptr_mut::<u16>(off)?;
        unsafe {
            let old = core::ptr::read_unaligned(p);
            core::ptr::write_unaligned(p, checksum::replace4(old, from, to));
        }
        Ok(())
    }

    #[inline(always)]
    fn l4_csum_replace(
        &self,
        off: usize,
        from: u32,
        to: u32,
        size: u64,
        flags: u64,
    ) -> Result<(), ()> {
        let r = unsafe {
            bpf_l4_csum_replace(
                self.0.skb.skb,
                off as u32,
                from as u64,
                to as u64,
                size | flags,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn store_buf<const N: usize>(&self, off: usize, src: &[u8; N]) -> Result<(), ()> {
        self.store_bytes(off, src)
    }

    #[inline(always)]
    fn load_buf<const N: usize>(&self, off: usize, dst: &mut [u8; N]) -> Result<(), ()> {
        let r = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const _,
                off as u32,
                dst.as_mut_ptr() as *mut _,
                N as u32,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), ()> {
        let r = unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(())
        }
    }
}

pub struct Xdp<'a>(pub &'a XdpContext);

impl Xdp<'_> {
    #[inline(always)]
    fn ptr_mut<T>(&self, off: usize) -> Result<*mut T, ()> {
        let start = self.data();
        if start + off + core::mem::size_of::<T>() > self.data_end() {
            return Err(());
        }
        Ok((start + off) as *mut T)
    }
}

impl Packet for Xdp<'_> {
    // Frames from the wire carry their CRC.
    const SCTP_CRC_MAY_BE_PENDING: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn pkt_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn make_linear(&self, _len: usize) {
        // XDP buffers without the frags flag are always linear.
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), ()> {
        let p = self.ptr_mut::<T>(off)?;
        unsafe { core::ptr::write_unaligned(p, *v) };
        Ok(())
    }

    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u32, to: u32) -> Result<(), ()> {
        let p = self.ptr_mut::<u16>(off)?;
        unsafe {
            let old = core::ptr::read_unaligned(p);
            core::ptr::write_unaligned(p, checksum::replace4(old, from, to));
        }
        Ok(())
    }

    #[inline(always)]
    fn l4_csum_replace(
        &self,
        off: usize,
        from: u32,
        to: u32,
        size: u64,
        flags: u64,
    ) -> Result<(), ()> {
        let p = self.ptr_mut::<u16>(off)?;
        let old = unsafe { core::ptr::read_unaligned(p) };
        let mangled_0 = flags & CSUM_MANGLED_0 != 0;
        if mangled_0 && old == 0 {
            // UDP over IPv4 without a checksum stays without one.
            return Ok(());
        }
        let mut new = match size {
            0 => checksum::apply_diff(old, to),
            2 => checksum::replace2(old, from as u16, to as u16),
            _ => checksum::replace4(old, from, to),
        };
        if mangled_0 && new == 0 {
            new = 0xffff;
        }
        unsafe { core::ptr::write_unaligned(p, new) };
        Ok(())
    }

    #[inline(always)]
    fn store_buf<const N: usize>(&self, off: usize, src: &[u8; N]) -> Result<(), ()> {
        let p = self.ptr_mut::<[u8; N]>(off)?;
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p as *mut u8, N) };
        Ok(())
    }

    #[inline(always)]
    fn load_buf<const N: usize>(&self, off: usize, dst: &mut [u8; N]) -> Result<(), ()> {
        let p = self.ptr_mut::<[u8; N]>(off)?;
        unsafe { core::ptr::copy_nonoverlapping(p as *const u8, dst.as_mut_ptr(), N) };
        Ok(())
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Result<(), ()> {
        // Grow at the head (every XDP buffer has headroom; tailroom depends on the driver),
        // shrink at the tail.
        let cur = self.data_end() - self.data();
        let r = if len > cur {
            unsafe { bpf_xdp_adjust_head(self.0.ctx, -((len - cur) as i32)) }
        } else if len < cur {
            unsafe { bpf_xdp_adjust_tail(self.0.ctx, -((cur - len) as i32)) }
        } else {
            0
        };
        if r == 0 {
            Ok(())
        } else {
            Err(())
        }
    }
}

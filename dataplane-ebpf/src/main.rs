//! skiff eBPF programs. One entry file per attach point (`tc_pod`, `tc_to_pod`, `xdp_ext`,
//! `tc_ext_in`, `tc_ext`, `cgroup_sock`); the packet pipeline is shared through the `ctx::Packet`
//! abstraction so TC and XDP run the same code.
#![no_std]
#![no_main]
// Map helpers take `impl Borrow<K>`: passing keys by value, as this lint asks, copies them onto
// the 512-byte BPF stack (and out of the per-CPU scratch map built to avoid exactly that).
#![allow(clippy::needless_borrows_for_generic_args)]

mod baseline;
mod cgroup_sock;
mod checksum;
mod conntrack;
mod ctx;
mod events;
mod hairpin;
mod icmp;
mod icmp_nat;
mod lb;
mod maglev;
mod maps;
mod nat;
mod parse;
mod policy;
mod policy_ct;
mod reject;
mod sctp;
mod service;
mod snat;
mod stats;
mod tc_ext;
mod tc_ext_in;
mod tc_pod;
mod tc_to_pod;
mod xdp_ext;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: checksum and conntrack helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! Conversions between std types and the kernel ABI in `dataplane_common`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_common::{is_v4_mapped, v4_mapped, Backend, ServiceKey, BE_F_NONE, SCOPE_INTERNAL};

use crate::desired::{BackendAddr, Frontend, Protocol};

/// The 16-byte map form of an address (IPv4-mapped for IPv4).
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Inverse of `addr16`.
pub fn ip_from16(a: [u8; 16]) -> IpAddr {
    if is_v4_mapped(&a) {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// The internal-scope key of a frontend slot.
pub fn service_key(fe: &Frontend, slot: u16) -> ServiceKey {
    service_key_scoped(fe, slot, SCOPE_INTERNAL)
}

pub fn service_key_scoped(fe: &Frontend, slot: u16, scope: u8) -> ServiceKey {
    ServiceKey {
        addr: addr16(fe.addr),
        port_be: fe.port.to_be(),
        slot,
        proto: fe.proto.number(),
        scope,
        _pad: [0; 2],
    }
}

pub fn backend(be: &BackendAddr) -> Backend {
    Backend {
        addr: addr16(be.addr),
        port_be: be.port.to_be(),
        proto: be.proto.number(),
        flags: BE_F_NONE,
    }
}

/// Inverse of `backend`, for reading maps back (`None` for an unknown protocol).
pub fn backend_addr(be: &Backend) -> Option<BackendAddr> {
    Some(BackendAddr {
        addr: ip_from16(be.addr),
        port: u16::from_be(be.port_be),
        proto: Protocol::from_number(be.proto)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_v4_is_mapped() {
        for ip in ["10.96.0.10", "0.0.0.0", "fd00:96::10", "::ffff:0:1", "::"] {
            let ip: IpAddr = ip.parse().unwrap();
            let a = addr16(ip);
            // An IPv6 address that happens to be IPv4-mapped reads back as IPv4: that is the
            // same packet address on the wire, so the maps treat them alike.
            match ip {
                IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                    assert_eq!(ip_from16(a), IpAddr::V4(v6.to_ipv4_mapped().unwrap()))
                }
                _ => assert_eq!(ip_from16(a), ip),
            }
        }
        assert_eq!(
            addr16("10.96.0.10".parse().unwrap()),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]
        );
    }

    #[test]
    fn ports_are_network_order() {
        let fe = Frontend {
            addr: "10.0.0.1".parse().unwrap(),
            port: 0x1234,
            proto: Protocol::Udp,
        };
        let k = service_key(&fe, 3);
        assert_eq!(k.port_be.to_ne_bytes(), [0x12, 0x34]);
        assert_eq!((k.slot, k.proto), (3, 17));
        let be = BackendAddr {
            addr: "fd00::1".parse().unwrap(),
            port: 8080,
            proto: Protocol::Tcp,
        };
        assert_eq!(backend_addr(&backend(&be)), Some(be));
    }
}

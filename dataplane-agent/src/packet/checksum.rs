//! The Internet checksum (RFC 1071) with the TCP/UDP/ICMPv6 pseudo-headers, and CRC32c
//! (Castagnoli, RFC 3309) for SCTP.

use std::net::IpAddr;

use super::PacketError;

/// Running ones'-complement sum of a byte stream given in pieces of any length (an odd-length
/// piece continues into the next one, as if they were concatenated).
#[derive(Clone, Copy, Debug, Default)]
pub struct Checksum {
    sum: u64,
    /// First byte of a 16-bit word whose second byte has not arrived yet.
    odd: Option<u8>,
}

impl Checksum {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes to the stream.
    pub fn add(&mut self, mut data: &[u8]) -> &mut Self {
        if let Some(hi) = self.odd.take() {
            match data.split_first() {
                Some((&lo, rest)) => {
                    self.sum += u64::from(u16::from_be_bytes([hi, lo]));
                    data = rest;
                }
                None => {
                    self.odd = Some(hi);
                    return self;
                }
            }
        }
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            self.sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.odd = Some(*last);
        }
        self
    }

    /// The checksum: the complement of the folded sum, a trailing odd byte padded with zero.
    /// Over data that includes a correct checksum field the result is 0.
    pub fn finish(&self) -> u16 {
        let mut sum = self.sum + self.odd.map_or(0, |hi| u64::from(hi) << 8);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

/// The Internet checksum of the concatenation of `chunks`.
pub fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut c = Checksum::new();
    for chunk in chunks {
        c.add(chunk);
    }
    c.finish()
}

/// The TCP/UDP/ICMPv6 checksum of `segment` (the whole L4 segment) behind the pseudo-header of
/// `src`, `dst` and `proto`. With the checksum field zeroed this is the value to store; over a
/// segment carrying a correct checksum it is 0.
pub fn l4_checksum(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    segment: &[u8],
) -> Result<u16, PacketError> {
    let mut c = Checksum::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let len = u16::try_from(segment.len())
                .map_err(|_| PacketError::TooLarge { len: segment.len() })?;
            c.add(&s.octets())
                .add(&d.octets())
                .add(&[0, proto])
                .add(&len.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = u32::try_from(segment.len())
                .map_err(|_| PacketError::TooLarge { len: segment.len() })?;
            c.add(&s.octets())
                .add(&d.octets())
                .add(&len.to_be_bytes())
                .add(&[0, 0, 0, proto]);
        }
        _ => return Err(PacketError::MixedFamilies { src, dst }),
    }
    Ok(c.add(segment).finish())
}

/// Table of the reflected CRC32c polynomial 0x82F63B78, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Feeds `data` into a CRC32c register (no initial or final inversion).
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC32c (Castagnoli) of `data`: `crc32c(b"123456789") == 0xE306_9283`.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// The SCTP checksum of a whole SCTP packet (common header and chunks), computed as if its
/// checksum field (bytes 8..12) were zero. On the wire it is stored little-endian
/// (`to_le_bytes`), as Linux and RFC 4960 appendix B do.
pub fn sctp_checksum(sctp: &[u8]) -> u32 {
    let head = &sctp[..sctp.len().min(8)];
    let field = sctp.len().clamp(8, 12) - 8;
    let rest = sctp.get(12..).unwrap_or(&[]);
    let crc = crc32c_update(!0, head);
    let crc = crc32c_update(crc, &[0u8; 4][..field]);
    !crc32c_update(crc, rest)
}

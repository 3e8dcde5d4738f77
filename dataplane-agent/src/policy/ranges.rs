//! Port sets as the datapath holds them: sorted, disjoint, merged inclusive ranges.

use dataplane_common::policy::PortRange;

/// What one rule key allows of its protocol's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ports {
    All,
    /// Unsorted and unmerged until [`Ports::merged`].
    Ranges(Vec<PortRange>),
}

impl Ports {
    pub(crate) fn add(&mut self, lo: u16, hi: u16) {
        if let Ports::Ranges(r) = self {
            r.push(PortRange { lo, hi });
        }
    }

    /// Sorted, disjoint ranges; overlapping and adjacent ones merged.
    pub(crate) fn merged(self) -> Ports {
        match self {
            Ports::All => Ports::All,
            Ports::Ranges(r) => Ports::Ranges(merge(r)),
        }
    }
}

pub(crate) fn merge(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort_unstable();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(r.hi);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Whether `r` lies inside one range of `by` (merged).
pub(crate) fn covered(r: &PortRange, by: &[PortRange]) -> bool {
    by.iter().any(|b| b.lo <= r.lo && r.hi <= b.hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: u16, hi: u16) -> PortRange {
        PortRange { lo, hi }
    }

    #[test]
    fn merges_overlapping_and_adjacent() {
        assert_eq!(
            merge(vec![
                r(90, 95),
                r(80, 80),
                r(81, 85),
                r(84, 88),
                r(100, 100),
                r(1, 1)
            ]),
            vec![r(1, 1), r(80, 88), r(90, 95), r(100, 100)]
        );
        assert_eq!(merge(vec![r(1, 65535), r(65535, 65535)]), vec![r(1, 65535)]);
        assert_eq!(merge(vec![]), vec![]);
    }

    #[test]
    fn coverage() {
        let by = [r(10, 20), r(30, 40)];
        assert!(covered(&r(10, 20), &by));
        assert!(covered(&r(31, 31), &by));
        assert!(!covered(&r(15, 35), &by));
        assert!(!covered(&r(21, 21), &by));
    }
}

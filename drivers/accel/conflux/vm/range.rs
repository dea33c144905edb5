// SPDX-License-Identifier: GPL-2.0

//! Arithmetic on sets of address ranges, for the checks of a bind.

use core::ops::Range;

use kernel::prelude::*;

/// Whether `r` is covered by the union of `ranges`.
pub(super) fn covered(r: Range<u64>, ranges: &[Range<u64>]) -> bool {
    let mut cur = r.start;
    while cur < r.end {
        match ranges.iter().find(|s| s.contains(&cur)) {
            Some(s) => cur = s.end,
            None => return false,
        }
    }
    true
}

/// Whether `r` overlaps one of `ranges`.
pub(super) fn overlaps(r: &Range<u64>, ranges: &[Range<u64>]) -> bool {
    ranges.iter().any(|s| s.start < r.end && r.start < s.end)
}

/// The ranges of `ranges` without `r`.
pub(super) fn subtract(ranges: &[Range<u64>], r: &Range<u64>) -> Result<KVec<Range<u64>>> {
    let mut out = KVec::with_capacity(ranges.len() + 1, GFP_KERNEL_ACCOUNT)?;
    for s in ranges {
        if s.end <= r.start || r.end <= s.start {
            out.push(s.clone(), GFP_KERNEL_ACCOUNT)?;
            continue;
        }
        if s.start < r.start {
            out.push(s.start..r.start, GFP_KERNEL_ACCOUNT)?;
        }
        if r.end < s.end {
            out.push(r.end..s.end, GFP_KERNEL_ACCOUNT)?;
        }
    }
    Ok(out)
}

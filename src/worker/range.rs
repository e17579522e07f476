//! The `Range` header (RFC 9110 §14.1.2, §14.2): which bytes of a file a request asks for.
//!
//! Choices where the RFC leaves room, as nginx makes them:
//! - Only the `bytes` unit; another unit, or any range-spec that is malformed (`5-2`,
//!   `a-b`), makes the whole header ignored: the whole file is sent with 200.
//! - Unsatisfiable specs are dropped; if none is left the answer is 416.
//! - Overlapping ranges are coalesced into one (§15.3.7.2 allows it), keeping the place of
//!   the first of them, so the parts follow the order of the request otherwise. Ranges that
//!   only touch stay apart: a client asked for them as two.
//! - At most [`MAX_PARTS`] parts after coalescing; a request for more gets the whole file
//!   (§14.2: a server may ignore a Range that is inefficient to serve). So a request for
//!   thousands of tiny ranges costs a bounded amount of work and a bounded response.

use super::request::parse_decimal;

/// Most parts of a `multipart/byteranges` answer.
pub const MAX_PARTS: usize = 16;

/// Inclusive byte positions within a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub first: u64,
    /// Last byte (inclusive).
    pub last: u64,
}

impl ByteRange {
    /// Number of bytes; never 0 (`first <= last`), so no `is_empty`.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> u64 {
        self.last - self.first + 1
    }

    fn overlaps(self, other: ByteRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Up to [`MAX_PARTS`] ranges, pairwise disjoint, in the order they were asked for; on
/// the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSet {
    ranges: [ByteRange; MAX_PARTS],
    len: usize,
}

impl Default for RangeSet {
    fn default() -> Self {
        RangeSet { ranges: [ByteRange { first: 0, last: 0 }; MAX_PARTS], len: 0 }
    }
}

/// Adding a range would make more than [`MAX_PARTS`] parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyParts;

impl RangeSet {
    /// The ranges, in order.
    pub fn as_slice(&self) -> &[ByteRange] {
        &self.ranges[..self.len]
    }

    /// Adds `range`, coalescing it with every range it overlaps; the result takes the
    /// place of the first of them.
    ///
    /// One pass suffices: the kept ranges are disjoint, so a range found disjoint from
    /// the growing union stays disjoint from it (the union of overlapping intervals has
    /// no gap for it to sit in).
    pub fn add(&mut self, range: ByteRange) -> Result<(), TooManyParts> {
        let mut merged = range;
        let mut place = None;
        let mut kept = 0;
        for i in 0..self.len {
            let part = self.ranges[i];
            if part.overlaps(merged) {
                merged = ByteRange { first: part.first.min(merged.first), last: part.last.max(merged.last) };
                place.get_or_insert(kept);
            } else {
                self.ranges[kept] = part;
                kept += 1;
            }
        }
        let at = match place {
            Some(at) => at,
            None if kept == MAX_PARTS => return Err(TooManyParts),
            None => kept,
        };
        self.ranges.copy_within(at..kept, at + 1);
        self.ranges[at] = merged;
        self.len = kept + 1;
        Ok(())
    }
}

/// What a `Range` header asks of a file.
// Returned by value once per ranged request; boxing the set would allocate for each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range: send the whole file with 200.
    Whole,
    /// One satisfiable range (or several coalesced into one): 206.
    Part(ByteRange),
    /// Several: 206 with a `multipart/byteranges` body.
    Parts(RangeSet),
    /// A valid range set that selects nothing: 416.
    NotSatisfiable,
}

/// `bytes=` and a list of `a-b`, `a-` or `-n` against a file of `file_len` bytes.
pub fn parse_ranges(value: &[u8], file_len: u64) -> RangeRequest {
    let value = value.trim_ascii();
    let Some(set) = value.get(..6).filter(|unit| unit.eq_ignore_ascii_case(b"bytes=")).map(|_| &value[6..]) else {
        return RangeRequest::Whole;
    };
    let mut parts = RangeSet::default();
    let mut specs = 0;
    // `1#range-spec`: empty list elements are allowed and ignored (RFC 9110 §5.6.1).
    for spec in set.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|spec| !spec.is_empty()) {
        specs += 1;
        match parse_range_spec(spec, file_len) {
            Err(Malformed) => return RangeRequest::Whole,
            Ok(None) => {}
            Ok(Some(range)) => {
                if parts.add(range).is_err() {
                    return RangeRequest::Whole;
                }
            }
        }
    }
    match parts.as_slice() {
        [] if specs == 0 => RangeRequest::Whole,
        [] => RangeRequest::NotSatisfiable,
        [one] => RangeRequest::Part(*one),
        _ => RangeRequest::Parts(parts),
    }
}

/// A range-spec that is not `a-b`, `a-` or `-n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed;

/// One range-spec: the bytes it selects, or `None` when it selects none of the file.
fn parse_range_spec(spec: &[u8], file_len: u64) -> Result<Option<ByteRange>, Malformed> {
    let dash = spec.iter().position(|&b| b == b'-').ok_or(Malformed)?;
    let (first, last) = (spec[..dash].trim_ascii(), spec[dash + 1..].trim_ascii());
    // Positions past u64 saturate: past any file's end anyway.
    match (parse_decimal(first), parse_decimal(last)) {
        (None, Some(suffix_len)) if first.is_empty() => Ok(suffix_range(suffix_len, file_len)),
        (Some(first), None) if last.is_empty() => Ok(bounded_range(first, u64::MAX, file_len)),
        (Some(first), Some(last)) if first <= last => Ok(bounded_range(first, last, file_len)),
        _ => Err(Malformed),
    }
}

/// `-n`: the last `n` bytes, or the whole file if it is shorter.
fn suffix_range(suffix_len: u64, file_len: u64) -> Option<ByteRange> {
    if suffix_len == 0 || file_len == 0 {
        return None;
    }
    Some(ByteRange { first: file_len.saturating_sub(suffix_len), last: file_len - 1 })
}

/// `a-b` or `a-`: satisfiable if `a` is inside the file; `b` is clamped to its end.
fn bounded_range(first: u64, last: u64, file_len: u64) -> Option<ByteRange> {
    (first < file_len).then(|| ByteRange { first, last: last.min(file_len - 1) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(first: u64, last: u64) -> ByteRange {
        ByteRange { first, last }
    }

    fn parts(value: &str, file_len: u64) -> Vec<(u64, u64)> {
        match parse_ranges(value.as_bytes(), file_len) {
            RangeRequest::Parts(set) => set.as_slice().iter().map(|r| (r.first, r.last)).collect(),
            other => panic!("{value}: expected parts, got {other:?}"),
        }
    }

    #[test]
    fn several_ranges_are_parts_in_the_order_asked() {
        assert_eq!(parts("bytes=0-1,3-4", 10), [(0, 1), (3, 4)]);
        assert_eq!(parts("bytes=-2, 0-0", 10), [(8, 9), (0, 0)]);
        assert_eq!(parts("bytes=0-0,,5-", 10), [(0, 0), (5, 9)]);
        assert_eq!(parts("bytes=0-4,5-9", 10), [(0, 4), (5, 9)], "touching ranges stay apart");
    }

    #[test]
    fn overlapping_ranges_are_coalesced_in_the_place_of_the_first() {
        assert_eq!(parts("bytes=8-9,0-3,2-5", 10), [(8, 9), (0, 5)]);
        assert_eq!(parts("bytes=12-13,0-1,4-5,1-4", 20), [(12, 13), (0, 5)]);
        assert_eq!(parse_ranges(b"bytes=0-1,4-5,8-9,1-8,3-3", 20), RangeRequest::Part(range(0, 9)));
        assert_eq!(parse_ranges(b"bytes=0-3,2-5,1-1", 10), RangeRequest::Part(range(0, 5)));
        assert_eq!(parse_ranges(b"bytes=0-0,0-0,0-0", 10), RangeRequest::Part(range(0, 0)));
        assert_eq!(parse_ranges(b"bytes=5-,-3", 10), RangeRequest::Part(range(5, 9)));
    }

    #[test]
    fn unsatisfiable_specs_are_dropped_and_all_unsatisfiable_is_416() {
        assert_eq!(parse_ranges(b"bytes=50-60,2-3", 10), RangeRequest::Part(range(2, 3)));
        assert_eq!(parse_ranges(b"bytes=50-60,-0", 10), RangeRequest::NotSatisfiable);
        assert_eq!(parse_ranges(b"bytes=0-", 0), RangeRequest::NotSatisfiable);
    }

    #[test]
    fn one_malformed_spec_or_another_unit_ignores_the_header() {
        for value in ["bytes=0-1,5-2", "bytes=0-1,x", "items=0-1", "bytes=", "bytes=,", "bytes = 0-1", "bytes=0-1,-"] {
            assert_eq!(parse_ranges(value.as_bytes(), 10), RangeRequest::Whole, "{value}");
        }
    }

    #[test]
    fn at_most_sixteen_parts() {
        let sixteen: Vec<String> = (0..16).map(|i| format!("{}-{}", i * 2, i * 2)).collect();
        assert_eq!(parts(&format!("bytes={}", sixteen.join(",")), 100).len(), 16);
        let seventeen = format!("bytes={},40-40", sixteen.join(","));
        assert_eq!(parse_ranges(seventeen.as_bytes(), 100), RangeRequest::Whole);
        // Coalescing keeps the count down: many overlapping ranges are one part.
        let overlapping: Vec<String> = (0..100).map(|i| format!("{i}-{}", i + 5)).collect();
        let value = format!("bytes={}", overlapping.join(","));
        assert_eq!(parse_ranges(value.as_bytes(), 1000), RangeRequest::Part(range(0, 104)));
    }

    proptest! {
        #[test]
        fn a_set_stays_disjoint_and_covers_every_range_added(
            added in prop::collection::vec((0u64..200, 0u64..20), 1..40),
        ) {
            let mut set = RangeSet::default();
            let mut covered = Vec::new();
            for (first, len) in added {
                let r = range(first, first + len);
                if set.add(r).is_ok() {
                    covered.push(r);
                }
                let slice = set.as_slice();
                prop_assert!(slice.len() <= MAX_PARTS);
                for (i, a) in slice.iter().enumerate() {
                    for b in &slice[i + 1..] {
                        prop_assert!(!a.overlaps(*b), "{a:?} overlaps {b:?}");
                    }
                }
                for c in &covered {
                    prop_assert!(slice.iter().any(|p| p.first <= c.first && c.last <= p.last), "{c:?} lost");
                }
            }
        }
    }
}

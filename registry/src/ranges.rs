//! The byte-range grammar, in one place: `Range: bytes=...` on blob GETs
//! and `Content-Range: <start>-<end>` on upload chunks. Pure functions of
//! the header text (fuzzed: fuzzing/, target `range`).

use std::ops::Range;

/// Parses one `bytes=` range against a blob of `size` bytes into a
/// half-open range. `None` when it cannot be satisfied.
pub fn parse_range(value: &str, size: u64) -> Option<Range<u64>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multipart ranges are not served
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 {
            return None;
        }
        size.saturating_sub(suffix)..size
    } else {
        let start: u64 = start.parse().ok()?;
        let end: u64 = if end.is_empty() {
            size.checked_sub(1)?
        } else {
            end.parse::<u64>().ok()?.min(size.checked_sub(1)?)
        };
        if start > end {
            return None;
        }
        start..end + 1
    };
    (range.start < size).then_some(range)
}

/// Parses an upload chunk's `Content-Range: <start>-<end>` (also accepting
/// `bytes ` and a `/total` suffix) into inclusive bounds, `start <= end`.
/// `None` when it is malformed.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let s = value.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Some(90..100));
        assert_eq!(parse_range("bytes=95-200", 100), Some(95..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-4", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-9"), Some((0, 9)));
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 19)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range(" 5 - 5 "), Some((5, 5)));
        assert_eq!(parse_content_range("9-0"), None);
        assert_eq!(parse_content_range("0-"), None);
        assert_eq!(parse_content_range("-1-2"), None);
        assert_eq!(parse_content_range("bytes=0-1"), None);
    }
}

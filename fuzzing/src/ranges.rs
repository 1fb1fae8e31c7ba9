//! Target `range`: `Range: bytes=...` (blob GETs) and upload
//! `Content-Range` parsing (berth_registry::ranges).

use berth_registry::ranges::{parse_content_range, parse_range};

pub fn range(data: &[u8]) {
    // The first 8 bytes pick the blob size (small sizes more often), the
    // rest is the header text.
    let (size, text) = if data.len() >= 8 {
        let raw = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let size = match raw % 4 {
            0 => raw >> 56,
            1 => raw >> 40,
            2 => u64::MAX - (raw >> 60),
            _ => raw,
        };
        (size, crate::text(&data[8..]))
    } else {
        (100, crate::text(data))
    };
    if let Some(r) = parse_range(&text, size) {
        assert!(
            r.start < r.end && r.end <= size,
            "Range {text:?} on {size} bytes gave {r:?}"
        );
    }
    // A plain `bytes=a-b` the blob covers is served exactly.
    if let Some((a, b)) = plain_pair(text.strip_prefix("bytes=").unwrap_or("")) {
        if a <= b && b < size {
            assert_eq!(parse_range(&text, size), Some(a..b + 1), "{text:?}");
        }
    }
    if let Some((a, b)) = parse_content_range(&text) {
        assert!(a <= b, "Content-Range {text:?} gave {a}-{b}");
    }
    if let Some((a, b)) = plain_pair(&text) {
        assert_eq!(
            parse_content_range(&text),
            (a <= b).then_some((a, b)),
            "{text:?}"
        );
    }
}

/// `<digits>-<digits>` with nothing else, as numbers.
fn plain_pair(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

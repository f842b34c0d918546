//! A deterministic, non-repeating-looking byte pattern, so that a reply
//! that is shifted, truncated, duplicated or zero-filled never compares equal.

/// Period of the pattern: a prime, so it does not line up with any
/// power-of-two buffer size a server might use.
pub const PERIOD: usize = 65_521;

pub struct Pattern {
    /// PERIOD bytes of pattern followed by `max_chunk` more bytes that
    /// repeat its start, so any window of up to `max_chunk` bytes starting
    /// at any offset is one contiguous slice.
    ext: Vec<u8>,
    max_chunk: usize,
}

impl Pattern {
    pub fn new(max_chunk: usize) -> Self {
        let mut base = Vec::with_capacity(PERIOD);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while base.len() < PERIOD {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            base.push((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8);
        }
        let mut ext = Vec::with_capacity(PERIOD + max_chunk);
        while ext.len() < PERIOD + max_chunk {
            let take = (PERIOD + max_chunk - ext.len()).min(PERIOD);
            ext.extend_from_slice(&base[..take]);
        }
        Pattern { ext, max_chunk }
    }

    /// The `len` pattern bytes starting at stream offset `offset`.
    /// Panics if `len` exceeds the `max_chunk` given to `new` (a caller bug).
    pub fn window(&self, offset: u64, len: usize) -> &[u8] {
        assert!(
            len <= self.max_chunk,
            "pattern window larger than max_chunk"
        );
        let start = (offset % PERIOD as u64) as usize;
        &self.ext[start..start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_consistent_across_the_period_boundary() {
        let p = Pattern::new(1000);
        let a = p.window(PERIOD as u64 - 10, 20).to_vec();
        let mut b = p.window(PERIOD as u64 - 10, 10).to_vec();
        b.extend_from_slice(p.window(PERIOD as u64, 10));
        assert_eq!(a, b);
        assert_eq!(p.window(5, 100), p.window(PERIOD as u64 + 5, 100));
    }

    #[test]
    fn pattern_is_not_constant_or_short_periodic() {
        let p = Pattern::new(4096);
        let w = p.window(0, 4096);
        let distinct = w.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 200, "only {distinct} distinct byte values");
        for shift in 1..=64 {
            assert_ne!(&w[..1024], &w[shift..shift + 1024], "period {shift}");
        }
    }
}

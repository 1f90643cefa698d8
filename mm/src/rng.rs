//! Small deterministic pseudo-random generators for the fragmentation experiment, the
//! tests and the benchmarks (George Marsaglia's xorshift family): the same seed gives
//! the same sequence on the host and in the kernel, with no dependency. Not for
//! secrets. (`fail_page_alloc` keeps its own xorshift64* step on an atomic, shared
//! by every CPU.)

/// xorshift64 with shifts 13, 7, 17. The seed must not be 0 (0 stays 0).
pub struct XorShift64(pub u64);

impl XorShift64 {
    /// The next value.
    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value in `0..n` (`n > 0`; modulo bias is irrelevant for these uses).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Shuffles `v` in place (Fisher–Yates, from the back).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// xorshift64* (shifts 12, 25, 27, then a multiply): better low bits than
/// [`XorShift64`]. The seed must not be 0.
pub struct XorShift64Star(pub u64);

impl XorShift64Star {
    /// The next value.
    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// `true` once in `one_in` on average.
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_the_published_ones() {
        // xorshift64 (13, 7, 17) from seed 1 (values computed independently).
        let mut r = XorShift64(1);
        assert_eq!(r.next(), 1_082_269_761);
        assert_eq!(r.next(), 1_152_992_998_833_853_505);
        // xorshift64* from seed 1: state 33554433 after one step.
        let mut s = XorShift64Star(1);
        assert_eq!(s.next(), 33_554_433u64.wrapping_mul(0x2545_f491_4f6c_dd1d));
    }

    #[test]
    fn shuffle_is_a_permutation_and_reproducible() {
        let mut a: [u32; 64] = core::array::from_fn(|i| i as u32);
        let mut b = a;
        XorShift64(7).shuffle(&mut a);
        XorShift64(7).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, core::array::from_fn::<u32, 64, _>(|i| i as u32));
        let mut sorted = a;
        sorted.sort_unstable();
        assert_eq!(sorted, core::array::from_fn::<u32, 64, _>(|i| i as u32));
    }
}

//! The sampler's random numbers: SplitMix64 used as a counter-based generator.
//!
//! Draw `i` (counting from 0) of a request with seed `s` is
//!
//! ```text
//! z = s + (i + 1) · 0x9E3779B97F4A7C15          (wrapping u64 arithmetic)
//! z = (z ^ (z >> 30)) · 0xBF58476D1CE4E5B9
//! z = (z ^ (z >> 27)) · 0x94D049BB133111EB
//! x = z ^ (z >> 31)
//! ```
//!
//! which is exactly the `i`-th output of Steele, Lea & Flood's SplitMix64 seeded with `s` (the
//! generator of Java's `SplittableRandom`, also used to seed xoshiro). Because each draw depends only
//! on `(seed, i)`, a GPU kernel reproduces draw `i` without carrying generator state, and the result
//! cannot change with the version of a crate. The sampler makes one draw per generated token, so
//! `i` is the index of the token in the output, and uses its 53 high bits (`logits::draw_target`).
//!
//! Why SplitMix64 and not Philox4x32-10 (cuRAND's counter-based generator): a token needs one
//! 64-bit number, not Philox's four 32-bit ones; SplitMix64 is three multiply/xor-shift rounds
//! (cheap in one thread per row on a GPU, where 64-bit multiplies are a few instructions) and
//! passes BigCrush; and it is the generator the CPU sampler already used, so the random numbers
//! of seeded requests did not change when the GPU started sampling (only the exact-arithmetic
//! draw of `logits` did, which picks the old token except within ~10⁻⁷ of a boundary).
//! The device twin is `splitmix64` in `backend/cuda/kernels/sample.cu`.

/// SplitMix64's increment, the odd integer closest to 2⁶⁴ / φ.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Draw `counter` of the stream seeded by `seed` (see the module docs).
pub fn splitmix64(seed: u64, counter: u64) -> u64 {
    let mut z = seed.wrapping_add(counter.wrapping_add(1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded stream of draws: a seed and the index of the next draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng {
    seed: u64,
    counter: u64,
}

impl Rng {
    /// The stream of `seed`, at its first draw.
    pub fn new(seed: u64) -> Self {
        Rng { seed, counter: 0 }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Index of the next draw.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let x = splitmix64(self.seed, self.counter);
        self.counter += 1;
        x
    }

    /// The next uniform number in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_splitmix64() {
        // First outputs of the sequential reference algorithm (Vigna's splitmix64.c) seeded with 1234567.
        let mut rng = Rng::new(1_234_567);
        let expected = [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
        assert_eq!(rng.counter(), 3);
        assert_eq!(splitmix64(1_234_567, 1), expected[1]);
    }

    #[test]
    fn uniform_in_unit_interval_with_mean_one_half() {
        let mut rng = Rng::new(7);
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.005);
    }
}

//! A small deterministic random generator (SplitMix64) and a Zipf sampler:
//! runs are reproducible from `--seed`, and no dependency is needed.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank+1)^s`;
/// `s = 0` is uniform.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 0..n {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(acc);
        }
        if acc > 0.0 {
            for c in &mut cdf {
                *c /= acc;
            }
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf
            .partition_point(|c| *c < u)
            .min(self.cdf.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_zipf_skews() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
        }
        let z = Zipf::new(1000, 1.2);
        let mut top = 0;
        for _ in 0..10_000 {
            if z.sample(&mut r) < 10 {
                top += 1;
            }
        }
        assert!(top > 3000, "the 10 most popular got {top} of 10000");
        let u = Zipf::new(1000, 0.0);
        let mut low = 0;
        for _ in 0..10_000 {
            if u.sample(&mut r) < 10 {
                low += 1;
            }
        }
        assert!(low < 300, "uniform: the first 10 got {low} of 10000");
    }
}

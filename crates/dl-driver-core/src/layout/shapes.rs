//! Per-file sample shapes drawn exactly as DLIO draws them, so our datasets match DLIO's file by file:
//! numpy's legacy global generator seeded with 10 (MT19937 + the polar Box-Muller `gauss` that caches its second
//! value), `normal(dim, dim_stdev, 2 * total_files)`, file i taking draws 2i and 2i+1, truncated to integers, at least 1.
//! dim = int(sqrt(record_length)), dim_stdev = stdev / 2 / sqrt(record_length) (reference: dlio.md §2, §9).

/// numpy's `RandomState` legacy stream: MT19937 seeded like `np.random.seed(int)`.
pub struct NumpyLegacyRng {
    state: [u32; 624],
    index: usize,
    cached_gauss: Option<f64>,
}

impl NumpyLegacyRng {
    /// `np.random.seed(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: 624, cached_gauss: None }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut value = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                value ^= 0x9908_b0df;
            }
            self.state[i] = value;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A double in [0, 1) with 53 random bits, as numpy's legacy `random_sample`.
    pub fn next_f64(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// A standard normal value from numpy's legacy polar method (which returns the second value of each pair first).
    pub fn gauss(&mut self) -> f64 {
        if let Some(cached) = self.cached_gauss.take() {
            return cached;
        }
        loop {
            let x1 = 2.0 * self.next_f64() - 1.0;
            let x2 = 2.0 * self.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.cached_gauss = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `np.random.normal(loc, scale)`.
    pub fn normal(&mut self, loc: f64, scale: f64) -> f64 {
        loc + scale * self.gauss()
    }
}

/// The (d1, d2) of every file: `total_files` = train files followed by eval files.
pub fn file_shapes(record_length: f64, record_length_stdev: f64, total_files: u64) -> Vec<(u64, u64)> {
    let dim = record_length.sqrt().trunc();
    let dim_stdev = record_length_stdev / 2.0 / record_length.sqrt();
    let mut rng = NumpyLegacyRng::new(10);
    let mut draw = || {
        let value = rng.normal(dim, dim_stdev).trunc();
        if value < 1.0 {
            1
        } else {
            value as u64
        }
    };
    (0..total_files).map(|_| (draw(), draw())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_stream() {
        // The first outputs of MT19937 seeded with 5489 (the reference implementation's default seed).
        let mut rng = NumpyLegacyRng::new(5489);
        let first: Vec<u32> = (0..3).map(|_| rng.next_u32()).collect();
        assert_eq!(first, vec![3_499_211_612, 581_869_302, 3_890_346_734]);
    }

    #[test]
    fn shapes_match_dlio_test_vectors() {
        // dlio.md §9: (record length, stdev, files) -> first shapes and the sum of d1*d2 over all files.
        type Case = (f64, f64, u64, [(u64, u64); 4], u64);
        let cases: [Case; 3] = [
            (
                146_600_628.0,
                68_341_808.0,
                168,
                [(15865, 14125), (7745, 12083), (13860, 10074), (12856, 12413)],
                25_285_981_919,
            ),
            (2_828_486.0, 71_311.0, 8, [(1709, 1696), (1648, 1680), (1694, 1665), (1686, 1683)], 22_700_299),
            (1_048_576.0, 262_144.0, 6, [(1194, 1115), (826, 1022), (1103, 931), (1057, 1037)], 6_593_491),
        ];
        for (length, stdev, files, first, sum) in cases {
            let shapes = file_shapes(length, stdev, files);
            assert_eq!(&shapes[..4], &first, "record length {length}");
            assert_eq!(shapes.iter().map(|(a, b)| a * b).sum::<u64>(), sum, "record length {length}");
        }
    }

    #[test]
    fn zero_stdev_gives_square_samples() {
        assert!(file_shapes(65536.0, 0.0, 5).iter().all(|s| *s == (256, 256)));
        assert_eq!(file_shapes(114_660.07, 0.0, 1), vec![(338, 338)]);
    }
}

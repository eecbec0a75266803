//! Sample bytes: incompressible pseudo-random data produced at ~8 GiB/s per core (wyrand), so generation is
//! never bound by random-number generation. Optionally the data is made compressible (each 4 KiB block is random
//! for only 1/ratio of its length, zeros after) or deduplicable (each random block repeats `ratio` times).

/// Block size for the compressibility and dedup shaping.
pub const BLOCK: usize = 4096;

/// A deterministic stream of sample bytes.
#[derive(Clone)]
pub struct SampleBytes {
    seed: u64,
    block: u64,
    /// Random bytes at the start of each block (BLOCK = incompressible).
    random_per_block: usize,
    dedup: u64,
    current: [u8; BLOCK],
    offset: usize,
}

impl SampleBytes {
    /// A stream for one file; `compress_ratio` and `dedup_ratio` are >= 1 (1 = plain random).
    pub fn new(seed: u64, compress_ratio: f64, dedup_ratio: f64) -> Self {
        let random_per_block = ((BLOCK as f64 / compress_ratio.max(1.0)).round() as usize).clamp(1, BLOCK);
        // `block` starts one before 0: the first read generates block 0.
        Self {
            seed,
            block: u64::MAX,
            random_per_block,
            dedup: dedup_ratio.max(1.0).round() as u64,
            current: [0; BLOCK],
            offset: BLOCK,
        }
    }

    fn next_block(&mut self) {
        self.block = self.block.wrapping_add(1);
        let mut current = self.current;
        self.generate(self.block, &mut current);
        self.current = current;
        self.offset = 0;
    }

    /// Writes block `block` of the stream into `out` (BLOCK bytes).
    fn generate(&self, block: u64, out: &mut [u8]) {
        let mut state = mix(self.seed ^ mix(block / self.dedup));
        let mut word = || {
            state = state.wrapping_add(0xa076_1d64_78bd_642f);
            let t = u128::from(state) * u128::from(state ^ 0xe703_7ed1_a0b4_28db);
            ((t >> 64) as u64 ^ t as u64).to_le_bytes()
        };
        let mut words = out[..self.random_per_block].chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let w = word();
            tail.copy_from_slice(&w[..tail.len()]);
        }
        out[self.random_per_block..BLOCK].fill(0);
    }

    /// A seed for an independent stream derived from this one (for data that must repeat, like csv rows).
    pub fn fork(&mut self) -> u64 {
        let mut seed = [0u8; 8];
        self.fill(&mut seed);
        u64::from_le_bytes(seed)
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            if self.offset == BLOCK && out.len() >= BLOCK {
                // Whole blocks are generated straight into the output.
                self.block = self.block.wrapping_add(1);
                let (head, rest) = std::mem::take(&mut out).split_at_mut(BLOCK);
                self.generate(self.block, head);
                out = rest;
                continue;
            }
            if self.offset == BLOCK {
                self.next_block();
            }
            let n = out.len().min(BLOCK - self.offset);
            out[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
            self.offset += n;
            out = &mut out[n..];
        }
    }
}

/// A 64-bit finalizer (splitmix64) to derive independent seeds.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u64, len: usize, compress: f64, dedup: f64) -> Vec<u8> {
        let mut out = vec![0; len];
        let mut s = SampleBytes::new(seed, compress, dedup);
        // Fill in uneven pieces: the stream must not depend on how it is read.
        let (a, b) = out.split_at_mut(len / 3);
        s.fill(a);
        s.fill(b);
        out
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        assert_eq!(bytes(1, 100_000, 1.0, 1.0), bytes(1, 100_000, 1.0, 1.0));
        assert_ne!(bytes(1, 100_000, 1.0, 1.0), bytes(2, 100_000, 1.0, 1.0));
        let mut whole = vec![0; 100_000];
        SampleBytes::new(1, 1.0, 1.0).fill(&mut whole);
        assert_eq!(whole, bytes(1, 100_000, 1.0, 1.0));
    }

    #[test]
    fn shapes_compressibility_and_dedup() {
        let plain = bytes(3, 64 * BLOCK, 1.0, 1.0);
        let zeros = plain.len() - plain.iter().copied().map(usize::from).filter(|b| *b != 0).count();
        assert!(zeros < plain.len() / 100, "random data has few zeros: {zeros}");
        let half = bytes(3, 64 * BLOCK, 2.0, 1.0);
        assert_eq!(half.chunks(BLOCK).filter(|b| b[BLOCK / 2..].iter().all(|x| *x == 0)).count(), 64);
        let dedup = bytes(3, 64 * BLOCK, 1.0, 4.0);
        let unique: std::collections::HashSet<&[u8]> = dedup.chunks(BLOCK).collect();
        assert_eq!(unique.len(), 16);
    }
}

//! Which samples a rank reads in an epoch, in which order (dlio.md §3): global sample g is sample `g % spf` of file
//! `g / spf`; rank r owns the contiguous range `[r * ceil(N / P), min((r + 1) * ceil(N / P), N))`; shuffles come
//! from one seeded generator; an access-order digest lets two runs prove they read the same samples in the same order.
//!
//! Shuffles (`reader.file_shuffle`, `reader.sample_shuffle`): `off` keeps the range in order; `seed` draws from
//! [`Rng`] seeded with `train.seed` (plus the epoch when `train.seed_change_epoch`), the rank and the purpose; `random`
//! seeds it from the clock. The file shuffle permutes the order of the files in the rank's range (each file's samples
//! stay together); the sample shuffle then permutes all of the rank's samples.
//!
//! Every rank runs the same number of steps (`steps_per_epoch` of the plan, so barriers never deadlock): a rank
//! whose range is shorter than `steps * batch` (the last rank when N does not divide evenly) reads its range again
//! from the start for the missing samples, and the report counts them as `repeated`.

use crate::config::Shuffle;

/// Sample ids are global sample indices.
pub type SampleId = u64;

/// SplitMix64 (Steele, Lea and Flood 2014): the one generator behind every seeded choice of a run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for `purpose`, derived from the run's seed, the epoch and the rank.
    pub fn derive(seed: u64, epoch: u64, rank: u64, purpose: u64) -> Self {
        let mut mix = Self(seed);
        let mut state = mix.next_u64();
        for part in [epoch, rank, purpose] {
            state = Self(state ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64();
        }
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) by Lemire's multiply-shift with rejection (unbiased).
    pub fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// What to shuffle and with which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShufflePolicy {
    pub file: Shuffle,
    pub sample: Shuffle,
    pub seed: u64,
    pub seed_change_epoch: bool,
}

/// One rank's view of one phase (training or evaluation) of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampler {
    pub files: u64,
    pub samples_per_file: u64,
    pub rank: u64,
    pub world_size: u64,
    pub batch_size: u64,
    pub steps_per_epoch: u64,
    pub policy: ShufflePolicy,
}

/// The samples a rank reads in one epoch, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochOrder {
    pub samples: Vec<SampleId>,
    /// Samples read a second time because the rank's range is shorter than the epoch's steps need.
    pub repeated: u64,
    pub digest: String,
}

impl EpochOrder {
    /// The ids of batch `step` (0-based).
    pub fn batch(&self, step: u64, batch_size: u64) -> &[SampleId] {
        let start = usize::try_from(step * batch_size).unwrap_or(usize::MAX).min(self.samples.len());
        let end = usize::try_from((step + 1) * batch_size).unwrap_or(usize::MAX).min(self.samples.len());
        &self.samples[start..end]
    }
}

/// Purposes that keep the file and sample shuffles (and other seeded draws) independent.
pub const PURPOSE_FILES: u64 = 1;
pub const PURPOSE_SAMPLES: u64 = 2;
pub const PURPOSE_COMPUTE: u64 = 3;

impl Sampler {
    pub fn total_samples(&self) -> u64 {
        self.files * self.samples_per_file
    }

    /// This rank's global sample range.
    pub fn range(&self) -> std::ops::Range<SampleId> {
        let total = self.total_samples();
        let per_rank = total.div_ceil(self.world_size.max(1));
        let start = (self.rank * per_rank).min(total);
        start..((self.rank + 1) * per_rank).min(total)
    }

    /// (file, sample within file) of a global sample id.
    pub fn locate(&self, id: SampleId) -> (u64, u64) {
        (id / self.samples_per_file, id % self.samples_per_file)
    }

    /// The order in which this rank reads `epoch` (1-based): `steps_per_epoch * batch_size` samples. The epoch's
    /// global order (the file shuffle, then the sample shuffle, seeded by the seed and not the rank) is the same
    /// whatever the world size; rank r reads its DLIO shard of it, the r-th contiguous range ([`Sampler::range`]),
    /// so one rank reads what two ranks read one after the other.
    pub fn epoch(&self, epoch: u64) -> EpochOrder {
        let p = &self.policy;
        let salt = if p.seed_change_epoch { epoch } else { 0 };
        let rng = |purpose: u64, mode: Shuffle| match mode {
            Shuffle::Seed => Some(Rng::derive(p.seed, salt, 0, purpose)),
            Shuffle::Random => Some(Rng::new(clock_seed())),
            Shuffle::Off => None,
        };
        let total = self.total_samples();
        let range = self.range();
        let shuffled = p.file != Shuffle::Off || p.sample != Shuffle::Off;
        // Unshuffled, the global order is the ids themselves: no need to hold the whole epoch.
        let mut global: Vec<SampleId> = if shuffled { (0..total).collect() } else { Vec::new() };
        if let Some(mut rng) = rng(PURPOSE_FILES, p.file) {
            let spf = self.samples_per_file.max(1);
            let mut files: Vec<u64> = (0..total.div_ceil(spf)).collect();
            rng.shuffle(&mut files);
            global = files.into_iter().flat_map(|f| f * spf..((f + 1) * spf).min(total)).collect();
        }
        if let Some(mut rng) = rng(PURPOSE_SAMPLES, p.sample) {
            rng.shuffle(&mut global);
        }
        let at = |i: u64| if shuffled { global[usize::try_from(i).unwrap_or(usize::MAX)] } else { i };
        let mut own: Vec<SampleId> = range.map(at).collect();
        let wanted = usize::try_from(self.steps_per_epoch * self.batch_size).unwrap_or(usize::MAX);
        let repeated = wanted.saturating_sub(own.len()) as u64;
        if own.is_empty() && total > 0 && wanted > 0 {
            // More ranks than ceil-sized ranges: this rank owns nothing but must run the common steps, so it reads
            // the samples that follow its would-be range, wrapping around the dataset.
            let per_rank = total.div_ceil(self.world_size.max(1));
            own = (0..wanted as u64).map(|i| at((self.rank * per_rank + i) % total)).collect();
        }
        let samples: Vec<SampleId> = own.iter().copied().cycle().take(wanted).collect();
        let digest = digest(&samples);
        EpochOrder { samples, repeated, digest }
    }
}

/// FNV-1a (64-bit) of the ids as little-endian u64s, in hex: equal digests mean the same samples in the same order.
pub fn digest(ids: &[SampleId]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Rng::new(now.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn sampler(files: u64, spf: u64, rank: u64, world: u64, batch: u64, file: Shuffle, sample: Shuffle) -> Sampler {
        let steps = files * spf / batch / world;
        Sampler {
            files,
            samples_per_file: spf,
            rank,
            world_size: world,
            batch_size: batch,
            steps_per_epoch: steps,
            policy: ShufflePolicy { file, sample, seed: 123, seed_change_epoch: true },
        }
    }

    #[test]
    fn ranks_are_disjoint_and_cover_the_epoch() {
        for (files, spf, world) in [(8, 4, 4), (10, 3, 4), (7, 1, 3), (5, 5, 2)] {
            let mut seen = HashSet::new();
            for rank in 0..world {
                let s = sampler(files, spf, rank, world, 1, Shuffle::Seed, Shuffle::Seed);
                let range: HashSet<u64> = s.range().collect();
                assert!(seen.is_disjoint(&range), "ranks overlap for {files}x{spf} on {world}");
                seen.extend(range);
            }
            assert_eq!(seen, (0..files * spf).collect(), "{files}x{spf} on {world}");
        }
    }

    #[test]
    fn uneven_ranks_run_the_same_steps_by_repeating_their_own_samples() {
        // 10 samples on 4 ranks: ceil = 3 each, the last rank owns only sample 9; steps = floor(10 / 1 / 4) = 2.
        let last = sampler(10, 1, 3, 4, 1, Shuffle::Off, Shuffle::Off);
        let order = last.epoch(1);
        assert_eq!(order.samples, vec![9, 9]);
        assert_eq!(order.repeated, 1);
        let first = sampler(10, 1, 0, 4, 1, Shuffle::Off, Shuffle::Off).epoch(1);
        assert_eq!((first.samples, first.repeated), (vec![0, 1], 0));
    }

    #[test]
    fn ranks_without_samples_still_run_the_steps() {
        // 10 samples on 8 ranks: ceil = 2, ranks 5..7 own nothing; steps = floor(10 / 1 / 8) = 1.
        for rank in 5..8 {
            let order = sampler(10, 1, rank, 8, 1, Shuffle::Off, Shuffle::Off).epoch(1);
            assert_eq!((order.samples.len(), order.repeated), (1, 1), "rank {rank}");
            assert!(order.samples[0] < 10);
        }
    }

    #[test]
    fn shuffles_are_deterministic_and_ranks_shard_one_global_order() {
        let s = sampler(16, 4, 1, 2, 4, Shuffle::Seed, Shuffle::Seed);
        let a = s.epoch(1);
        assert_eq!(a, s.epoch(1), "same seed, same order");
        // Rank 1 of 2 reads the second half of the order one rank reads; the two halves cover the epoch once.
        let alone = sampler(16, 4, 0, 1, 4, Shuffle::Seed, Shuffle::Seed).epoch(1);
        let first = sampler(16, 4, 0, 2, 4, Shuffle::Seed, Shuffle::Seed).epoch(1);
        assert_eq!([first.samples.clone(), a.samples.clone()].concat(), alone.samples);
        let mut sorted = alone.samples.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        assert_ne!(alone.samples, sorted, "a seeded shuffle shuffles");
        assert_ne!(a.digest, s.epoch(2).digest, "seed_change_epoch changes the order per epoch");
        let other_seed = Sampler { policy: ShufflePolicy { seed: 124, ..s.policy }, ..s.clone() };
        assert_ne!(a.digest, other_seed.epoch(1).digest);
        let fixed = Sampler { policy: ShufflePolicy { seed_change_epoch: false, ..s.policy }, ..s.clone() };
        assert_eq!(fixed.epoch(1).digest, fixed.epoch(2).digest);
        let random = Sampler { policy: ShufflePolicy { sample: Shuffle::Random, file: Shuffle::Off, ..s.policy }, ..s };
        assert_ne!(random.epoch(1).samples, random.epoch(1).samples, "random is seeded from the clock");
    }

    #[test]
    fn file_shuffle_keeps_each_files_samples_together() {
        let s = sampler(8, 4, 0, 1, 4, Shuffle::Seed, Shuffle::Off);
        let order = s.epoch(1).samples;
        assert_ne!(order, (0..32).collect::<Vec<_>>());
        for chunk in order.chunks(4) {
            let file = chunk[0] / 4;
            assert_eq!(chunk, (file * 4..file * 4 + 4).collect::<Vec<_>>().as_slice());
        }
        let off = sampler(8, 4, 0, 1, 4, Shuffle::Off, Shuffle::Off).epoch(1);
        assert_eq!(off.samples, (0..32).collect::<Vec<_>>());
        assert_eq!(off.digest, digest(&(0..32).collect::<Vec<_>>()));
    }

    #[test]
    fn the_generator_is_unbiased_enough_and_stable() {
        // Pinned first outputs: changing the generator changes every digest, so it must be deliberate.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        let mut counts = [0u32; 6];
        let mut r = Rng::new(7);
        for _ in 0..60_000 {
            counts[r.below(6) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (9_000..11_000).contains(c)), "{counts:?}");
    }
}

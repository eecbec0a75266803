//! Metrics: per-stage latency histograms (HDR, nanoseconds) and DLIO's AU and throughput arithmetic (dlio.md §6).
//!
//! Per rank and block (an epoch, or the part of one between step checkpoints) with per-step times `load` (start of
//! the wait to batch arrival), `proc` (start of the wait to compute end) and `compute` (measured compute time), the
//! first `exclude_start_steps` and last `exclude_end_steps` steps are excluded:
//! `AU% = 100 * sum(compute, kept) / (T_block - sum(proc, excluded))` and
//! `throughput = kept * batch / (T_block - sum(proc, excluded))`. DLIO HEAD counts `n - 2` samples-worth of steps
//! in the throughput whatever the exclusions are (an off-by-one); dl-driver counts the kept steps. A block too short
//! to keep any step is measured over all its steps instead of reporting 0. An epoch's value is the step-weighted
//! mean of its blocks; across ranks AU is the mean and throughput the sum; over epochs, mean and population stdev.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One step's times in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StepTimes {
    pub load: f64,
    pub proc: f64,
    pub compute: f64,
}

/// AU (%) and throughput (samples/s) of one block lasting `duration` seconds.
pub fn block_metrics(
    steps: &[StepTimes],
    duration: f64,
    batch: u64,
    exclude_start: u64,
    exclude_end: u64,
) -> (f64, f64) {
    let n = steps.len();
    let (start, end) = (usize::try_from(exclude_start).unwrap_or(n), usize::try_from(exclude_end).unwrap_or(n));
    let (kept, excluded): (&[StepTimes], f64) = if start.saturating_add(end) < n {
        let excluded = steps[..start].iter().chain(&steps[n - end..]).map(|s| s.proc).sum();
        (&steps[start..n - end], excluded)
    } else {
        (steps, 0.0)
    };
    let denominator = duration - excluded;
    if kept.is_empty() || denominator <= 0.0 {
        return (0.0, 0.0);
    }
    let compute: f64 = kept.iter().map(|s| s.compute).sum();
    (100.0 * compute / denominator, kept.len() as f64 * batch as f64 / denominator)
}

/// Step-weighted mean of (value, steps) pairs; 0 without steps.
pub fn step_weighted(values: &[(f64, usize)]) -> f64 {
    let steps: usize = values.iter().map(|(_, n)| n).sum();
    if steps == 0 {
        return 0.0;
    }
    values.iter().map(|(v, n)| v * *n as f64).sum::<f64>() / steps as f64
}

/// Mean and population standard deviation (numpy's default), NaN for an empty list as numpy gives.
pub fn mean_stdev(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Reduces per-rank epoch values: AU is the mean over ranks, throughput the sum.
pub fn across_ranks(per_rank: &[(f64, f64)]) -> (f64, f64) {
    if per_rank.is_empty() {
        return (0.0, 0.0);
    }
    let au = per_rank.iter().map(|(a, _)| a).sum::<f64>() / per_rank.len() as f64;
    (au, per_rank.iter().map(|(_, t)| t).sum())
}

/// The stages whose latencies are recorded. `compute` is the measured emulated compute of a step (what AU counts),
/// `compute_overshoot` how much longer that was than the time drawn from the config.
pub const STAGES: [&str; 8] =
    ["first_byte", "read", "decode", "batch_wait", "compute", "barrier", "checkpoint_part", "compute_overshoot"];

/// An HDR histogram of latencies in nanoseconds, 1 ns to 1 hour at 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds"))
    }
}

/// A latency histogram's summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn record(&mut self, d: std::time::Duration) {
        self.0.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
    }

    pub fn add(&mut self, other: &Self) {
        self.0.add(&other.0).expect("histograms with the same bounds add");
    }

    /// The histogram's recorded buckets as (value in ns, count), lowest first: what a rank sends so another can
    /// rebuild it exactly ([`Latency::from_buckets`]) and merge it.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.0.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
    }

    pub fn from_buckets(buckets: &[(u64, u64)]) -> Self {
        let mut l = Self::default();
        for &(value, count) in buckets {
            l.0.saturating_record_n(value.max(1), count);
        }
        l
    }

    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        let h = &self.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One histogram per stage, in [`STAGES`] order.
#[derive(Debug, Clone, Default)]
pub struct StageLatencies(pub [Latency; 8]);

impl StageLatencies {
    pub fn record(&mut self, stage: usize, d: std::time::Duration) {
        self.0[stage].record(d);
    }

    pub fn summaries(&self) -> std::collections::BTreeMap<&'static str, LatencySummary> {
        STAGES.iter().zip(&self.0).map(|(name, h)| (*name, h.summary())).collect()
    }

    /// Every stage's [`Latency::buckets`], by stage name.
    pub fn buckets(&self) -> std::collections::BTreeMap<String, Vec<(u64, u64)>> {
        STAGES.iter().zip(&self.0).map(|(name, h)| ((*name).to_string(), h.buckets())).collect()
    }

    /// Adds histograms sent as [`StageLatencies::buckets`] (stages it does not know are ignored).
    pub fn add_buckets(&mut self, buckets: &std::collections::BTreeMap<String, Vec<(u64, u64)>>) {
        for (i, name) in STAGES.iter().enumerate() {
            if let Some(b) = buckets.get(*name) {
                self.0[i].add(&Latency::from_buckets(b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(list: &[(f64, f64, f64)]) -> Vec<StepTimes> {
        list.iter().map(|&(load, proc, compute)| StepTimes { load, proc, compute }).collect()
    }

    #[test]
    fn au_and_throughput_exclude_the_first_step() {
        // 4 steps of batch 2: the first waits 1.0 s for data, the others 0.1 s; compute 0.5 s each; block 3.4 s.
        let s = steps(&[(1.0, 1.5, 0.5), (0.1, 0.6, 0.5), (0.1, 0.6, 0.5), (0.1, 0.6, 0.5)]);
        let (au, thr) = block_metrics(&s, 3.4, 2, 1, 0);
        // kept: 3 steps, compute 1.5 s; denominator 3.4 - 1.5 = 1.9 s
        assert!((au - 100.0 * 1.5 / 1.9).abs() < 1e-9, "{au}");
        assert!((thr - 6.0 / 1.9).abs() < 1e-9, "{thr}");
        // Excluding the last step too: kept 2 steps (1.0 s compute), denominator 3.4 - 1.5 - 0.6 = 1.3 s.
        let (au, thr) = block_metrics(&s, 3.4, 2, 1, 1);
        assert!((au - 100.0 / 1.3).abs() < 1e-9 && (thr - 4.0 / 1.3).abs() < 1e-9, "{au} {thr}");
    }

    #[test]
    fn a_block_too_short_to_exclude_uses_all_its_steps() {
        let s = steps(&[(0.2, 0.7, 0.5)]);
        let (au, thr) = block_metrics(&s, 0.8, 4, 1, 0);
        assert!((au - 62.5).abs() < 1e-9 && (thr - 5.0).abs() < 1e-9, "{au} {thr}");
        assert_eq!(block_metrics(&[], 1.0, 4, 1, 0), (0.0, 0.0));
    }

    #[test]
    fn blocks_split_by_a_checkpoint_combine_step_weighted() {
        // Block 1: 3 steps at AU 90 / 100 samples/s; block 2: 1 step at AU 60 / 40 samples/s.
        let epoch_au = step_weighted(&[(90.0, 3), (60.0, 1)]);
        let epoch_thr = step_weighted(&[(100.0, 3), (40.0, 1)]);
        assert!((epoch_au - 82.5).abs() < 1e-9 && (epoch_thr - 85.0).abs() < 1e-9);
        assert_eq!(step_weighted(&[]), 0.0);
    }

    #[test]
    fn ranks_reduce_to_mean_au_and_summed_throughput_and_epochs_to_mean_and_stdev() {
        let (au, thr) = across_ranks(&[(80.0, 100.0), (90.0, 120.0), (100.0, 80.0)]);
        assert!((au - 90.0).abs() < 1e-9 && (thr - 300.0).abs() < 1e-9);
        let (m, s) = mean_stdev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12 && (s - 2.0).abs() < 1e-12);
        assert!(mean_stdev(&[]).0.is_nan());
    }

    #[test]
    fn histograms_sent_as_buckets_merge_exactly() {
        let (mut a, mut b, mut both) = (StageLatencies::default(), StageLatencies::default(), Latency::default());
        for us in 1..=500u64 {
            a.record(4, std::time::Duration::from_micros(us));
            both.record(std::time::Duration::from_micros(us));
        }
        for ms in 1..=20u64 {
            b.record(4, std::time::Duration::from_millis(ms));
            both.record(std::time::Duration::from_millis(ms));
        }
        let mut merged = StageLatencies::default();
        merged.add_buckets(&a.buckets());
        merged.add_buckets(&b.buckets());
        assert_eq!(merged.0[4].summary(), both.summary());
        assert_eq!(merged.0[4].summary().count, 520);
        assert_eq!(merged.0[0].summary().count, 0);
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::default();
        for us in 1..=1000u64 {
            l.record(std::time::Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!(
            (s.p50_us - 500.0).abs() < 1.0 && (s.p99_us - 990.0).abs() < 1.5 && (s.max_us - 1000.0).abs() < 1.0,
            "{s:?}"
        );
        assert!((s.mean_us - 500.5).abs() < 0.5);
    }
}

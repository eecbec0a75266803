//! Progress on stderr through indicatif: bars with their rate and ETA (an epoch's steps, a checkpoint's bytes below
//! it, generation's files), and a line per finished epoch, checkpoint or generation. Drawn only when the caller asks
//! (the CLI asks when stderr is a terminal) and stderr is a terminal: otherwise the bars are hidden and their lines
//! are dropped, so logs and pipes stay clean.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second: often enough to read, rare enough to cost nothing.
const HZ: u8 = 4;

/// Where a run's bars draw, one under the other; hidden unless asked.
#[derive(Debug, Clone, Default)]
pub struct Display(Option<MultiProgress>);

impl Display {
    pub fn new(shown: bool) -> Self {
        Self(shown.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(HZ))))
    }

    /// A bar of `total` units drawn with `template` (indicatif's: `{bar}`, `{pos}`, `{len}`, `{msg}`, `{eta}`,
    /// `{bytes}`, ...), below the display's other bars; a hidden one when the display is.
    pub fn bar(&self, total: u64, template: &str) -> ProgressBar {
        let Some(multi) = &self.0 else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(ProgressStyle::with_template(template).expect("the templates are valid").progress_chars("=> "));
        bar
    }

    /// Runs `print` with the bars cleared and draws them again after, so lines printed to the same terminal (stdout
    /// too) stay whole.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(multi) => multi.suspend(print),
            None => print(),
        }
    }
}

/// Generation: files written of the total, MiB and MiB/s in the message.
pub const GENERATION: &str = "generating [{bar:30}] {pos}/{len} files  {msg}  ETA {eta}";
/// Training: an epoch's steps, samples/s and MiB/s in the message.
pub const TRAINING: &str = "epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}";
/// A checkpoint's save or load: its bytes, rate and ETA.
pub const CHECKPOINT: &str = "{prefix} [{bar:30}] {bytes}/{total_bytes}  {binary_bytes_per_sec}  ETA {eta}";

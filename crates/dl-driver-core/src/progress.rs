//! Progress on stderr through indicatif: a bar with its rate and ETA, and a line per finished epoch, checkpoint or
//! generation. Drawn only when the caller asks (the CLI asks when stderr is a terminal) and stderr is a terminal:
//! otherwise the bar is hidden and its lines are dropped, so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second: often enough to read, rare enough to cost nothing.
const HZ: u8 = 4;

/// A bar of `total` units drawn with `template` (indicatif's: `{bar}`, `{pos}`, `{len}`, `{msg}`, `{eta}`, ...),
/// or a hidden one when `shown` is false.
pub fn bar(shown: bool, total: u64, template: &str) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(HZ));
    bar.set_style(ProgressStyle::with_template(template).expect("the templates are valid").progress_chars("=> "));
    bar
}

/// Generation: files written of the total, MiB and MiB/s in the message.
pub const GENERATION: &str = "generating [{bar:30}] {pos}/{len} files  {msg}  ETA {eta}";
/// Training: an epoch's steps, samples/s and MiB/s in the message.
pub const TRAINING: &str = "epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}";

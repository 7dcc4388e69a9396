//! Progress bars on stderr: drawn on a terminal, hidden when `show` is false.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` units drawn with `template` (indicatif's syntax), or a hidden one.
pub fn bar(len: usize, show: bool, template: &str) -> ProgressBar {
    let bar = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

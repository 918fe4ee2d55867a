//! Terminal output: an indicatif progress bar on a terminal, plain log lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// How the run reports progress on the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Plain lines (logs, CI).
    Plain,
    /// Only errors.
    Quiet,
}

/// The terminal sink of the trainer.
pub struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    epoch: usize,
    epochs: usize,
    /// Language models: one bar over all iterations, throughput in tokens.
    iterations: bool,
}

impl Progress {
    /// Resolves `Auto` against stderr.
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        Self {
            mode,
            bar: None,
            epoch: 0,
            epochs: 0,
            iterations: false,
        }
    }

    /// Begins an epoch of `batches` steps.
    pub fn start_epoch(&mut self, epoch: usize, epochs: usize, batches: u64) {
        self.epoch = epoch;
        self.epochs = epochs;
        if self.mode == ProgressMode::Bar {
            let bar = ProgressBar::new(batches);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
            self.bar = Some(bar);
        }
    }

    /// Begins a language-model run of `iterations` steps (throughput in tokens/s).
    pub fn start_iterations(&mut self, iterations: u64) {
        self.start_epoch(1, 1, iterations);
        self.iterations = true;
        if let Some(bar) = &self.bar {
            bar.set_prefix("iter");
        }
    }

    /// Reports the metrics of the last logging window.
    pub fn step(
        &mut self,
        batch: u64,
        global_step: u64,
        loss: f64,
        acc: f64,
        samples_per_sec: f64,
    ) {
        let unit = if self.iterations { "tokens" } else { "samples" };
        let msg = format!("loss {loss:.4} acc {acc:.4} {samples_per_sec:.0} {unit}/s");
        match (&self.bar, self.mode) {
            (Some(bar), _) => {
                bar.set_position(batch);
                bar.set_message(msg);
            }
            (None, ProgressMode::Plain) if self.iterations => {
                eprintln!("iter {global_step}: {msg}")
            }
            (None, ProgressMode::Plain) => eprintln!(
                "epoch {}/{} step {global_step}: {msg}",
                self.epoch, self.epochs
            ),
            _ => {}
        }
    }

    /// Closes the epoch with a summary line.
    pub fn end_epoch(&mut self, line: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.line(line);
    }

    /// Prints a line above the bar (or plainly).
    pub fn line(&self, line: &str) {
        match (&self.bar, self.mode) {
            (_, ProgressMode::Quiet) => {}
            (Some(bar), _) => bar.println(line),
            (None, _) => eprintln!("{line}"),
        }
    }
}

//! One logging interface for everything the trainer reports; TensorBoard, the terminal and
//! `summary.json` are sinks behind it.

use std::io;

/// A destination for training metrics (TensorBoard event files, a terminal, a test recorder).
pub trait MetricSink: Send {
    /// Records one scalar `value` under `tag` (e.g. `train/loss`) at global step `step`.
    fn scalar(&mut self, tag: &str, value: f64, step: u64) -> io::Result<()>;
    /// Records the distribution of `values` under `tag` at global step `step`.
    fn histogram(&mut self, tag: &str, values: &[f32], step: u64) -> io::Result<()>;
    /// Makes everything recorded so far durable (e.g. flushed to disk).
    fn flush(&mut self) -> io::Result<()>;
}

/// Fans every metric out to all registered sinks.
#[derive(Default)]
pub struct Logger {
    sinks: Vec<Box<dyn MetricSink>>,
}

impl Logger {
    /// A logger with no sinks (metrics are dropped).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sink; every later metric reaches it.
    pub fn with_sink(mut self, sink: Box<dyn MetricSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Records a scalar on every sink.
    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) -> io::Result<()> {
        for sink in &mut self.sinks {
            sink.scalar(tag, value, step)?;
        }
        Ok(())
    }

    /// Records a histogram on every sink.
    pub fn histogram(&mut self, tag: &str, values: &[f32], step: u64) -> io::Result<()> {
        for sink in &mut self.sinks {
            sink.histogram(tag, values, step)?;
        }
        Ok(())
    }

    /// Flushes every sink.
    pub fn flush(&mut self) -> io::Result<()> {
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        Ok(())
    }
}

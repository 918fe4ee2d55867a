//! The TensorBoard sink: writes real TensorBoard event files (scalars and histograms) through
//! `tensorboard-rs`.
//!
//! # What `tensorboard-rs` 0.5.9 does, and why this sink does not call its `flush`
//!
//! `SummaryWriter` hands every serialized event over a channel to a background thread that
//! owns the event file and writes each record with an unbuffered `File::write_all`.
//! `SummaryWriter::flush` only *enqueues* a flush request and returns at once, so when it
//! returns the records sent before it may still be sitting in the channel. The only point at
//! which everything is known to be written is `EventFileWriter`'s `Drop`, which sends a stop
//! request and joins the thread. Nothing in the crate ever calls `fsync`. The crate also
//! reports every failure by panicking: `expect` on the background thread (cannot create the
//! file, write error), and `expect` on the caller's thread when that thread has died (in
//! `add_*`, and in `Drop`, on the send and on the join).
//!
//! So [`TensorBoardSink::flush`] *finishes* the current event file (drops the writer, which
//! joins its thread) and the next metric starts a new event file in the same directory.
//! TensorBoard reads all `*tfevents*` files of a run directory in name order, and names start
//! with the creation time in seconds, so the files read as one continuous run.
//!
//! Guarantees: once `flush` has returned `Ok`, or the sink has been dropped, every metric
//! recorded before has been written to its event file with `write_all` and the file is
//! closed, so any reader (TensorBoard, [`crate::tb_reader`]) sees all of it. The files are not
//! `fsync`ed: a crash of the operating system may still lose the tail. Failures of the
//! background thread come back as `io::Error`s (the panic message is still printed by the
//! panic hook); they never unwind into the caller.
//!
//! Cost: each flush that is followed by more metrics opens a new event file, and, because
//! `tensorboard-rs` names files by the second (`events.out.tfevents.<secs>.<host>.<pid>.0`)
//! and `File::create` would truncate an existing file of the same name, opening a file waits
//! until the clock has left the second in which the previous file for the same directory was
//! opened by this process. Flush at epoch or evaluation boundaries, not after every step.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tensorboard_rs::summary_writer::SummaryWriter;

use crate::logger::MetricSink;

/// For each log directory (canonical path), the wall-clock second in which this process last
/// opened an event file there; see [`open_writer`] for why.
static LAST_OPENED_SECOND: Mutex<BTreeMap<PathBuf, u64>> = Mutex::new(BTreeMap::new());

/// A [`MetricSink`] writing TensorBoard event files into one run directory.
pub struct TensorBoardSink {
    /// The directory as the caller named it (used in error messages).
    dir: PathBuf,
    /// `dir` canonicalized, the key into [`LAST_OPENED_SECOND`].
    key: PathBuf,
    /// The open writer; `None` after a flush until the next metric arrives.
    writer: Option<SummaryWriter>,
    /// Non-finite histogram values skipped so far, over all tags.
    non_finite_skipped: u64,
}

impl TensorBoardSink {
    /// Creates `dir` (and parents) if needed, checks it is writable and opens an event file
    /// in it; errors name the directory.
    pub fn new(dir: &Path) -> io::Result<Self> {
        prepare_dir(dir)?;
        let key = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let writer = open_writer(dir, &key)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            writer: Some(writer),
            non_finite_skipped: 0,
        })
    }

    /// The run directory the event files go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many non-finite (NaN, ±inf) histogram values have been left out so far.
    pub fn non_finite_skipped(&self) -> u64 {
        self.non_finite_skipped
    }

    /// Runs `f` on the open writer (opening a new event file first if a flush closed the last
    /// one), turning a panic inside `tensorboard-rs` into an `io::Error`.
    fn with_writer(&mut self, f: impl FnOnce(&mut SummaryWriter)) -> io::Result<()> {
        if self.writer.is_none() {
            self.writer = Some(open_writer(&self.dir, &self.key)?);
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(io::Error::other(
                "TensorBoard writer missing after opening it",
            ));
        };
        if panic::catch_unwind(AssertUnwindSafe(|| f(writer))).is_ok() {
            return Ok(());
        }
        // The writer's thread is gone; drop what is left of it (its Drop panics too).
        if let Some(writer) = self.writer.take() {
            let _ = finish(writer, &self.dir);
        }
        Err(writer_died(&self.dir))
    }
}

impl MetricSink for TensorBoardSink {
    /// Records `value` (narrowed to `f32`, TensorBoard's `simple_value` type) as a scalar.
    fn scalar(&mut self, tag: &str, value: f64, step: u64) -> io::Result<()> {
        let step = step_to_usize(step)?;
        self.with_writer(|w| w.add_scalar(tag, value as f32, step))
    }

    /// Records the distribution of `values` with TensorFlow's default bucket limits.
    ///
    /// Non-finite values (NaN, ±inf) cannot be placed in buckets and would poison min, max and
    /// sums, so they are left out of the histogram (its `num` counts finite values only); when
    /// there are any, their number is logged as the scalar `<tag>/non_finite` at the same step
    /// and added to [`TensorBoardSink::non_finite_skipped`]. If no finite value is left, no
    /// histogram is written for this step.
    fn histogram(&mut self, tag: &str, values: &[f32], step: u64) -> io::Result<()> {
        let step_usize = step_to_usize(step)?;
        let h = HistogramSummary::from_values(values);
        if h.non_finite > 0 {
            self.non_finite_skipped += h.non_finite;
            self.scalar(&format!("{tag}/non_finite"), h.non_finite as f64, step)?;
        }
        if h.num == 0 {
            return Ok(());
        }
        self.with_writer(|w| {
            w.add_histogram_raw(
                tag,
                h.min,
                h.max,
                h.num as f64,
                h.sum,
                h.sum_squares,
                &h.bucket_limit,
                &h.bucket,
                step_usize,
            )
        })
    }

    /// Finishes the current event file: when this returns `Ok`, everything recorded so far is
    /// written and the file closed (not fsynced). The next metric opens a new event file.
    fn flush(&mut self) -> io::Result<()> {
        match self.writer.take() {
            Some(writer) => finish(writer, &self.dir),
            None => Ok(()),
        }
    }
}

impl Drop for TensorBoardSink {
    /// Finishes the current event file (joins the writer thread), so the file is complete
    /// once the sink is gone; errors cannot be reported here, call `flush` first to see them.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = finish(writer, &self.dir);
        }
    }
}

/// The numbers that make up a TensorBoard `HistogramProto`, computed from raw values.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSummary {
    /// Smallest finite value (0 if there is none).
    pub min: f64,
    /// Largest finite value (0 if there is none).
    pub max: f64,
    /// Number of finite values.
    pub num: u64,
    /// Sum of the finite values.
    pub sum: f64,
    /// Sum of the squares of the finite values.
    pub sum_squares: f64,
    /// Right edges of the buckets, increasing; bucket `i` holds values in
    /// `(bucket_limit[i-1], bucket_limit[i]]`.
    pub bucket_limit: Vec<f64>,
    /// Number of values in each bucket (as `f64`, the proto's type).
    pub bucket: Vec<f64>,
    /// Values left out because they were NaN or infinite.
    pub non_finite: u64,
}

impl HistogramSummary {
    /// Buckets `values` on [`default_bucket_limits`] in O(n log k).
    ///
    /// Like tensorboardX's `make_histogram`, empty buckets before the first and after the last
    /// non-empty one are dropped, except one empty bucket kept on the left so the left edge of
    /// the first non-empty bucket is still known. Empty buckets in between are kept.
    pub fn from_values(values: &[f32]) -> Self {
        let limits = default_bucket_limits();
        let mut counts = vec![0u64; limits.len()];
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut num, mut non_finite) = (0u64, 0u64);
        let (mut sum, mut sum_squares) = (0.0f64, 0.0f64);
        for &v in values {
            if !v.is_finite() {
                non_finite += 1;
                continue;
            }
            let v = f64::from(v);
            min = min.min(v);
            max = max.max(v);
            num += 1;
            sum += v;
            sum_squares += v * v;
            // First limit >= v: the bucket whose half-open range (prev, limit] holds v. The
            // last limit is f64::MAX, so a finite value always finds one.
            let i = limits.partition_point(|&l| l < v);
            counts[i.min(limits.len() - 1)] += 1;
        }
        let (bucket_limit, bucket) = match (
            counts.iter().position(|&c| c > 0),
            counts.iter().rposition(|&c| c > 0),
        ) {
            (Some(first), Some(last)) => {
                let start = first.saturating_sub(1);
                (
                    limits[start..=last].to_vec(),
                    counts[start..=last].iter().map(|&c| c as f64).collect(),
                )
            }
            _ => (Vec::new(), Vec::new()),
        };
        if num == 0 {
            (min, max) = (0.0, 0.0);
        }
        Self {
            min,
            max,
            num,
            sum,
            sum_squares,
            bucket_limit,
            bucket,
            non_finite,
        }
    }
}

/// TensorFlow's default histogram bucket limits (`histogram.cc`, `InitDefaultBucketsInner`):
/// `±1e-12 · 1.1^k` for as long as that stays below `1e20`, then `±f64::MAX`, with `0` in the
/// middle; 1551 limits, increasing.
pub fn default_bucket_limits() -> &'static [f64] {
    static LIMITS: OnceLock<Vec<f64>> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let mut positive = Vec::new();
        let mut v = 1.0e-12;
        while v < 1.0e20 {
            positive.push(v);
            v *= 1.1;
        }
        positive.push(f64::MAX);
        let mut limits: Vec<f64> = positive.iter().rev().map(|&p| -p).collect();
        limits.push(0.0);
        limits.extend_from_slice(&positive);
        limits
    })
}

/// Creates `dir` and proves it writable by creating and removing a probe file, because
/// `tensorboard-rs` would only panic on its background thread if it cannot create its file.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot create TensorBoard log directory {}: {e}",
                dir.display()
            ),
        )
    })?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // No "tfevents" in the name, so TensorBoard ignores it should removing it fail.
    let probe = dir.join(format!(
        ".quench-write-probe.{}.{nanos}",
        std::process::id()
    ));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "TensorBoard log directory {} is not writable: {e}",
                    dir.display()
                ),
            )
        })?;
    fs::remove_file(&probe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot remove probe file {}: {e}", probe.display()),
        )
    })
}

/// Opens a new `tensorboard-rs` writer (and so a new event file) in `dir`.
///
/// `tensorboard-rs` names the file after the current second, host and process id and creates
/// it with `File::create`, which truncates a file of the same name. To never clobber a file
/// this process wrote earlier in `dir` (a previous writer of this sink, or another sink on the
/// same directory), wait until the clock has left the second in which the last one was
/// opened. The second is read *after* construction, so it is never earlier than the one in
/// the file name.
fn open_writer(dir: &Path, key: &Path) -> io::Result<SummaryWriter> {
    prepare_dir(dir)?;
    let mut last = LAST_OPENED_SECOND
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(&prev) = last.get(key) {
        // Only equality clobbers; if the clock stepped back, do not wait for it to catch up.
        while unix_now().as_secs() == prev {
            let into_second = unix_now().subsec_nanos();
            let rest = 1_000_000_000u32.saturating_sub(into_second);
            thread::sleep(Duration::from_nanos(u64::from(rest)) + Duration::from_millis(1));
        }
    }
    let writer = panic::catch_unwind(|| SummaryWriter::new(dir)).map_err(|_| {
        io::Error::other(format!(
            "tensorboard-rs failed to open an event file in {} (it panicked)",
            dir.display()
        ))
    })?;
    last.insert(key.to_path_buf(), unix_now().as_secs());
    Ok(writer)
}

/// Drops `writer`, which makes `tensorboard-rs` join its thread after the thread has written
/// every queued record; a panic on either side becomes an error.
fn finish(writer: SummaryWriter, dir: &Path) -> io::Result<()> {
    panic::catch_unwind(AssertUnwindSafe(move || drop(writer))).map_err(|_| writer_died(dir))
}

/// The error for a writer whose background thread failed.
fn writer_died(dir: &Path) -> io::Error {
    io::Error::other(format!(
        "TensorBoard event writer for {} failed (its background thread panicked; \
         the panic message above says why); metrics since the last flush may be lost",
        dir.display()
    ))
}

/// Converts a global step to the `usize` `tensorboard-rs` takes.
fn step_to_usize(step: u64) -> io::Result<usize> {
    usize::try_from(step).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("step {step} does not fit in usize"),
        )
    })
}

/// Time since the Unix epoch (zero if the clock is before it, as `tensorboard-rs` does).
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tb_reader::{self, Histogram, read_event_dir, scalars};

    /// The histogram of `tag` at `step` among `events`.
    fn histo_at<'a>(events: &'a [tb_reader::Event], tag: &str, step: i64) -> &'a Histogram {
        events
            .iter()
            .filter(|e| e.step == step)
            .flat_map(|e| &e.values)
            .find(|v| v.tag == tag)
            .and_then(|v| v.histo.as_ref())
            .unwrap_or_else(|| panic!("no histogram {tag} at step {step}"))
    }

    /// Checks `h` describes exactly the finite values of `values`.
    fn assert_histogram_matches(h: &Histogram, values: &[f32]) {
        let finite: Vec<f64> = values
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| f64::from(v))
            .collect();
        assert_eq!(h.num, finite.len() as f64);
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(h.min, min);
        assert_eq!(h.max, max);
        let sum: f64 = finite.iter().sum();
        let sum_sq: f64 = finite.iter().map(|v| v * v).sum();
        assert!(
            (h.sum - sum).abs() <= 1e-9 * (1.0 + sum.abs()),
            "{} vs {sum}",
            h.sum
        );
        assert!(
            (h.sum_squares - sum_sq).abs() <= 1e-9 * (1.0 + sum_sq),
            "{} vs {sum_sq}",
            h.sum_squares
        );
        assert_eq!(h.bucket_limit.len(), h.bucket.len());
        assert!(!h.bucket.is_empty());
        assert_eq!(h.bucket.iter().sum::<f64>(), h.num);
        assert!(
            h.bucket_limit.windows(2).all(|w| w[0] < w[1]),
            "bucket limits not increasing: {:?}",
            h.bucket_limit
        );
        // Recount: bucket i covers (limit[i-1], limit[i]], bucket 0 everything up to limit[0].
        let mut recount = vec![0.0; h.bucket.len()];
        for &v in &finite {
            let i = h
                .bucket_limit
                .iter()
                .position(|&l| v <= l)
                .unwrap_or_else(|| panic!("{v} is above every bucket limit"));
            recount[i] += 1.0;
        }
        assert_eq!(
            recount, h.bucket,
            "values are not in the buckets the file says"
        );
        // Nothing below the first non-empty bucket but one empty bucket, nothing above.
        assert_eq!(
            h.bucket[0], 0.0,
            "tensorboardX keeps one empty bucket on the left"
        );
        assert!(h.bucket[1] > 0.0);
        assert!(*h.bucket.last().unwrap() > 0.0);
    }

    #[test]
    fn scalars_and_histogram_round_trip_through_event_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let values: Vec<f32> = vec![
            -3.5, -1.0, -1e-7, 0.0, 0.0, 1e-13, 2e-12, 0.25, 0.5, 1.0, 1.0, 7.0, 1e6, 3e30,
        ];
        let losses = [2.5f64, 1.25, 0.1, 1e-3];
        {
            let mut sink = TensorBoardSink::new(&run).unwrap();
            for (step, &l) in losses.iter().enumerate() {
                sink.scalar("train/loss", l, step as u64 * 10).unwrap();
            }
            sink.scalar("eval/acc", 0.875, 30).unwrap();
            sink.histogram("weights/fc1", &values, 30).unwrap();
        }
        let events = read_event_dir(&run).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert!(
            events[0].wall_time > 1.5e9,
            "wall time {}",
            events[0].wall_time
        );
        let expected: Vec<(i64, f32)> = losses
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as i64 * 10, l as f32))
            .collect();
        assert_eq!(scalars(&events, "train/loss"), expected);
        assert_eq!(scalars(&events, "eval/acc"), vec![(30, 0.875)]);
        assert!(scalars(&events, "weights/fc1/non_finite").is_empty());
        assert_histogram_matches(histo_at(&events, "weights/fc1", 30), &values);
        // Every bucket limit written is one of TensorFlow's defaults.
        let h = histo_at(&events, "weights/fc1", 30);
        let defaults = default_bucket_limits();
        assert!(h.bucket_limit.iter().all(|l| defaults.contains(l)));
    }

    #[test]
    fn flush_makes_everything_readable_while_the_sink_lives() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::new(dir.path()).unwrap();
        for step in 0..100u64 {
            sink.scalar("loss", step as f64, step).unwrap();
        }
        sink.flush().unwrap();
        let first: Vec<(i64, f32)> = (0..100).map(|s| (s, s as f32)).collect();
        assert_eq!(scalars(&read_event_dir(dir.path()).unwrap(), "loss"), first);

        for step in 100..150u64 {
            sink.scalar("loss", step as f64, step).unwrap();
        }
        sink.histogram("h", &[1.0, 2.0, 3.0], 149).unwrap();
        sink.flush().unwrap();
        sink.flush().unwrap(); // a second flush with nothing new is a no-op
        let events = read_event_dir(dir.path()).unwrap();
        let all: Vec<(i64, f32)> = (0..150).map(|s| (s, s as f32)).collect();
        assert_eq!(scalars(&events, "loss"), all, "events lost or reordered");
        assert_eq!(histo_at(&events, "h", 149).num, 3.0);
        // Every event file starts with its own file_version event.
        let files = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("events.out.tfevents.")
            })
            .count();
        let versions = events.iter().filter(|e| e.file_version.is_some()).count();
        assert_eq!(files, 2);
        assert_eq!(versions, files);
    }

    #[test]
    fn two_sinks_on_one_dir_do_not_clobber_each_other() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut a = TensorBoardSink::new(dir.path()).unwrap();
            a.scalar("a", 1.0, 1).unwrap();
        }
        {
            // Opened within the same second as `a` unless it waits: same file name.
            let mut b = TensorBoardSink::new(dir.path()).unwrap();
            b.scalar("b", 2.0, 2).unwrap();
        }
        let events = read_event_dir(dir.path()).unwrap();
        assert_eq!(scalars(&events, "a"), vec![(1, 1.0)]);
        assert_eq!(scalars(&events, "b"), vec![(2, 2.0)]);
    }

    #[test]
    fn new_under_a_regular_file_errors_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not_a_dir");
        fs::write(&file, b"x").unwrap();
        let target = file.join("run");
        let err = match TensorBoardSink::new(&target) {
            Ok(_) => panic!("TensorBoardSink::new succeeded under a regular file"),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains(&target.display().to_string()),
            "error does not name the path: {err}"
        );
    }

    #[test]
    fn losing_the_log_dir_gives_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut sink = TensorBoardSink::new(&run).unwrap();
        sink.scalar("x", 1.0, 0).unwrap();
        sink.flush().unwrap();
        fs::remove_dir_all(&run).unwrap();
        fs::write(&run, b"now a file").unwrap();
        assert!(sink.scalar("x", 2.0, 1).is_err());
        assert!(sink.histogram("h", &[1.0], 1).is_err());
        assert!(
            sink.flush().is_ok(),
            "nothing was opened, so nothing to flush"
        );
    }

    #[test]
    fn non_finite_values_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let values = [1.0, f32::NAN, -2.0, f32::INFINITY, f32::NEG_INFINITY, 4.0];
        let mut sink = TensorBoardSink::new(dir.path()).unwrap();
        sink.histogram("w", &values, 5).unwrap();
        sink.histogram("all_nan", &[f32::NAN, f32::NAN], 6).unwrap();
        assert_eq!(sink.non_finite_skipped(), 5);
        sink.flush().unwrap();
        let events = read_event_dir(dir.path()).unwrap();
        let h = histo_at(&events, "w", 5);
        assert_histogram_matches(h, &values);
        assert_eq!(h.num, 3.0);
        assert_eq!(scalars(&events, "w/non_finite"), vec![(5, 3.0)]);
        assert_eq!(scalars(&events, "all_nan/non_finite"), vec![(6, 2.0)]);
        let all_nan_histos = events
            .iter()
            .flat_map(|e| &e.values)
            .filter(|v| v.tag == "all_nan" && v.histo.is_some())
            .count();
        assert_eq!(all_nan_histos, 0, "no histogram without finite values");
    }

    #[test]
    fn default_bucket_limits_match_tensorflow() {
        let l = default_bucket_limits();
        // 774 positive limits below 1e20 (1e-12 * 1.1^773 < 1e20), DBL_MAX, mirrored, and 0.
        assert_eq!(l.len(), 1551);
        let mid = l.len() / 2;
        assert_eq!(l[mid], 0.0);
        assert_eq!(l[mid + 1], 1e-12);
        assert_eq!(l[mid - 1], -1e-12);
        assert_eq!(l[0], -f64::MAX);
        assert_eq!(l[l.len() - 1], f64::MAX);
        assert!(l[l.len() - 2] < 1e20 && l[l.len() - 2] * 1.1 >= 1e20);
        for i in 0..mid {
            assert_eq!(l[i], -l[l.len() - 1 - i]);
        }
        for w in l[mid + 1..l.len() - 1].windows(2) {
            assert_eq!(w[1], w[0] * 1.1);
        }
    }

    #[test]
    fn summary_of_a_million_values_keeps_every_value() {
        let n = 1_000_000usize;
        // Deterministic spread over many decades, both signs.
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let x = (i as f32 * 0.618_034).fract() - 0.5;
                x * 10f32.powi((i % 9) as i32 - 4)
            })
            .collect();
        let h = HistogramSummary::from_values(&values);
        assert_eq!(h.num, n as u64);
        assert_eq!(h.bucket.iter().sum::<f64>(), n as f64);
        assert_eq!(h.non_finite, 0);
        // Spot-check the bucket of a few values against a linear scan.
        for &v in values.iter().step_by(99_991) {
            let v = f64::from(v);
            let i = h.bucket_limit.iter().position(|&l| v <= l).unwrap();
            assert!(h.bucket[i] > 0.0);
            assert!(i == 0 || h.bucket_limit[i - 1] < v);
        }
    }

    #[test]
    fn empty_input_gives_an_empty_summary() {
        let h = HistogramSummary::from_values(&[]);
        assert_eq!((h.num, h.non_finite), (0, 0));
        assert!(h.bucket.is_empty() && h.bucket_limit.is_empty());
        assert_eq!((h.min, h.max, h.sum, h.sum_squares), (0.0, 0.0, 0.0, 0.0));
    }
}

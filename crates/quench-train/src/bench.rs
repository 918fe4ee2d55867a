//! `quench bench`: steady-state training throughput of a fixed set of reference workloads.
//!
//! Each workload is a recipe (a TOML string below) built by the same machinery as `quench run`
//! (`Experiment` → layer plan → model, `build_optimizer`, `build_scheduler`, `Distiller`) and
//! trained with the very step function `quench run` uses ([`crate::run::train_step`]) on real
//! Fashion-MNIST batches assembled the way a run assembles them (seeded epoch order, batches of
//! 128). Warm-up steps are excluded from the timing; the result is one [`BenchResult`] per
//! workload. `benches/compare_pytorch.py` runs the same workloads in PyTorch.

use std::path::Path;
use std::time::Instant;

use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use quench_data::epoch_order;
use serde::Serialize;

use crate::TrainError;
use crate::device::resolve_device;
use crate::distill::Distiller;
use crate::optim::{build_optimizer, build_scheduler};
use crate::recipe::Experiment;
use crate::run::{ImageData, build_model, load_image_data, train_step};
use quench_models::Classifier;

/// Batch size of every workload.
pub const BATCH_SIZE: usize = 128;

/// The workload names, in the order `quench bench` runs them by default.
pub const WORKLOADS: [&str; 6] = [
    "mlp-fp32",
    "mlp-qat",
    "mlp-ternary",
    "lenet-fp32",
    "lenet-qat",
    "distill",
];

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Device name (`flex`, `wgpu`, …), as for `quench run --device`.
    pub device: String,
    /// Workloads to run, in this order (names from [`WORKLOADS`]).
    pub workloads: Vec<String>,
    /// Timed optimizer steps per workload.
    pub steps: usize,
    /// Untimed optimizer steps before the timed ones.
    pub warmup: usize,
    /// Samples per step ([`BATCH_SIZE`] for the comparison with PyTorch; small batches make a
    /// memory soak of many steps).
    pub batch_size: usize,
    /// `Some(k)`: time the workloads side by side, `k` steps each in turn (see
    /// [`bench`]); `None`: one after the other.
    pub interleave: Option<usize>,
}

/// One workload's measurement (printed as one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Workload name.
    pub workload: String,
    /// Training samples per second over the timed steps.
    pub samples_per_s: f64,
    /// Timed optimizer steps.
    pub steps: usize,
    /// Peak resident memory of the process while the workload ran, MiB (`VmHWM`).
    pub peak_rss_mb: f64,
    /// Device name.
    pub device: String,
    /// CPU threads of the compute pool (rayon; `RAYON_NUM_THREADS` sets it).
    pub threads: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Seconds the timed steps took.
    pub seconds: f64,
    /// The model, as `quench check` describes it.
    pub model: String,
    /// Whether the peak RSS counter could be reset before this workload (otherwise it is the
    /// process's peak so far, which includes earlier workloads).
    pub peak_rss_reset: bool,
    /// Resident memory (`VmRSS`, MiB) when the timed steps start, after the warm-up.
    pub rss_mb_after_warmup: f64,
    /// The largest of 20 `VmRSS` samples taken evenly over the timed steps, MiB.
    pub rss_mb_max_timed: f64,
    /// `VmRSS` after the last timed step, MiB.
    pub rss_mb_end: f64,
    /// Steps per turn when the workloads were timed side by side (`--interleave`), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interleave: Option<usize>,
    /// With `--interleave`: the seconds of each turn's block of steps, in turn order (block `i`
    /// of every workload ran in turn `i`); else absent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block_seconds: Vec<f64>,
}

/// The recipe head every workload shares: Fashion-MNIST, Adam lr 1e-3, batch 128, constant lr.
fn base_recipe(name: &str, device: &str, model: &str) -> String {
    format!(
        "name = \"bench-{name}\"\nseed = 0\ndevice = \"{device}\"\n\
         [data]\ndataset = \"fashion-mnist\"\n\
         [model]\n{model}\n\
         [train]\nepochs = 1\nbatch_size = {BATCH_SIZE}\noptimizer = \"adam\"\nlr = 1e-3\n"
    )
}

const MLP: &str = "arch = \"mlp\"\nhidden = [512, 512]";
const LENET: &str = "arch = \"lenet5\"";

/// W4 per-channel symmetric weights and A8 per-tensor asymmetric activations, both from the
/// current tensor's range every step (moving average with momentum 1: the batch's min/max;
/// symmetric weights: max |W| per output channel), as `compare_pytorch.py` computes them.
const W4A8: &str = "[[quant.layers]]\npattern = \"*\"\n\
    weight = { bits = 4, granularity = \"per_channel\", estimator = \"moving_average\", momentum = 1.0 }\n\
    input = { bits = 8, granularity = \"per_tensor\", estimator = \"moving_average\", momentum = 1.0, symmetric = false }\n";

/// BitNet b1.58: ternary weights, 8-bit absmax per-token activations.
const TERNARY: &str = "[[quant.layers]]\npattern = \"*\"\nkind = \"ternary\"\n";

/// The recipe (TOML) of workload `name` on `device`, or `None` for an unknown name.
pub fn workload_recipe(name: &str, device: &str) -> Option<String> {
    let r = match name {
        "mlp-fp32" => base_recipe(name, device, MLP),
        "mlp-qat" => base_recipe(name, device, MLP) + W4A8,
        "mlp-ternary" => base_recipe(name, device, MLP) + TERNARY,
        "lenet-fp32" => base_recipe(name, device, LENET),
        "lenet-qat" => base_recipe(name, device, LENET) + W4A8,
        // The teacher path is never read: the bench builds the teacher in memory.
        "distill" => {
            base_recipe(name, device, MLP)
                + "[distill]\nteacher = \"untrained-lenet5\"\ntemperature = 4.0\nalpha = 0.7\n"
        }
        _ => return None,
    };
    Some(r)
}

/// Checks the options before anything is loaded: every workload name known, steps ≥ 1.
pub fn validate(opts: &BenchOptions) -> Result<(), TrainError> {
    if let Some(bad) = opts
        .workloads
        .iter()
        .find(|w| !WORKLOADS.contains(&w.as_str()))
    {
        return Err(TrainError::Config(format!(
            "unknown workload `{bad}`; valid workloads: {}",
            WORKLOADS.join(", ")
        )));
    }
    if opts.workloads.is_empty() {
        return Err(TrainError::Config(format!(
            "no workload given; valid workloads: {}",
            WORKLOADS.join(", ")
        )));
    }
    if opts.steps == 0 {
        return Err(TrainError::Config("--steps must be at least 1".into()));
    }
    if opts.interleave == Some(0) {
        return Err(TrainError::Config(
            "--interleave must be at least 1 step".into(),
        ));
    }
    if opts.batch_size == 0 || opts.batch_size > 60_000 {
        return Err(TrainError::Config(format!(
            "--batch-size must be in 1..=60000, got {}",
            opts.batch_size
        )));
    }
    Ok(())
}

/// Runs every workload of `opts` in order, handing each result to `report` as soon as it is
/// measured (so a caller can print it while the next one runs); returns them all.
///
/// With [`BenchOptions::interleave`] the workloads are instead built together and timed side by
/// side (see [`bench_interleaved`]); `report` then gets every result at the end.
pub fn bench(
    opts: &BenchOptions,
    mut report: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, TrainError> {
    validate(opts)?;
    let device = resolve_device(&opts.device)?;
    // Every workload trains on the same data: load it once.
    let first = parse(&opts.workloads[0], &opts.device)?;
    let data = load_image_data(&first)?;
    if let Some(block) = opts.interleave {
        let results = bench_interleaved(opts, block, &data, &device)?;
        results.iter().for_each(&mut report);
        return Ok(results);
    }
    let mut results = Vec::with_capacity(opts.workloads.len());
    for name in &opts.workloads {
        let peak_rss_reset = reset_peak_rss();
        let mut w = Workload::new(name, &data, &device, opts)?;
        let mut rss_max: f64 = 0.0;
        let sample_every = (opts.steps / 20).max(1);
        for _ in 0..opts.warmup {
            w.step()?;
        }
        let rss_after_warmup = rss_mb().unwrap_or(0.0);
        let start = Instant::now();
        for step in 0..opts.steps {
            if step.is_multiple_of(sample_every) {
                rss_max = rss_max.max(rss_mb().unwrap_or(0.0));
            }
            w.step()?;
        }
        let seconds = start.elapsed().as_secs_f64();
        let rss_end = rss_mb().unwrap_or(0.0);
        let r = BenchResult {
            peak_rss_reset,
            rss_mb_after_warmup: rss_after_warmup,
            rss_mb_max_timed: rss_max.max(rss_end),
            rss_mb_end: rss_end,
            ..w.result(opts, seconds, Vec::new())
        };
        report(&r);
        results.push(r);
    }
    Ok(results)
}

/// Times the workloads side by side, in one process: all are built and warmed up, then they
/// take turns, `block` steps each, until each has done `opts.steps` timed steps. Load from
/// other processes (on a shared VM, ±30 % within minutes) then falls on every workload alike,
/// so the ratios of their figures are steadier than those of separate runs; each result lists
/// its blocks' times (`block_seconds`, the i-th block of every workload ran in the same turn)
/// for paired comparisons (`benches/overhead.sh`).
///
/// Each turn starts with one untimed step: the caches then hold what a run of that workload
/// alone would have, not what the previous workload left (which favoured a workload that
/// followed a small model over one that followed a large one).
///
/// Peak RSS is the whole process's (all workloads live at once): `peak_rss_reset` is false.
fn bench_interleaved(
    opts: &BenchOptions,
    block: usize,
    data: &ImageData,
    device: &Device,
) -> Result<Vec<BenchResult>, TrainError> {
    let mut workloads = opts
        .workloads
        .iter()
        .map(|name| Workload::new(name, data, device, opts))
        .collect::<Result<Vec<_>, _>>()?;
    for w in &mut workloads {
        for _ in 0..opts.warmup {
            w.step()?;
        }
    }
    let rss_after_warmup = rss_mb().unwrap_or(0.0);
    let mut rss_max: f64 = rss_after_warmup;
    let mut blocks = vec![Vec::new(); workloads.len()];
    let mut done = 0;
    while done < opts.steps {
        let n = block.min(opts.steps - done);
        for (w, times) in workloads.iter_mut().zip(&mut blocks) {
            w.step()?;
            let start = Instant::now();
            for _ in 0..n {
                w.step()?;
            }
            times.push(start.elapsed().as_secs_f64());
        }
        rss_max = rss_max.max(rss_mb().unwrap_or(0.0));
        done += n;
    }
    let rss_end = rss_mb().unwrap_or(0.0);
    Ok(workloads
        .iter()
        .zip(blocks)
        .map(|(w, times)| BenchResult {
            peak_rss_reset: false,
            rss_mb_after_warmup: rss_after_warmup,
            rss_mb_max_timed: rss_max.max(rss_end),
            rss_mb_end: rss_end,
            interleave: Some(block),
            ..w.result(opts, times.iter().sum(), times)
        })
        .collect())
}

fn parse(name: &str, device: &str) -> Result<Experiment, TrainError> {
    let text = workload_recipe(name, device)
        .ok_or_else(|| TrainError::Config(format!("unknown workload `{name}`")))?;
    Ok(Experiment::from_toml_str(
        &text,
        Path::new(&format!("<bench {name}>")),
        &[],
    )?)
}

/// One workload being trained: its model, optimizer and place in the epoch order.
struct Workload<'a> {
    name: String,
    exp: Experiment,
    data: &'a ImageData,
    train_device: Device,
    /// `None` only while a step has it.
    model: Option<Classifier>,
    optim: ModuleOptimizer,
    scheduler: ModuleLrScheduler,
    distiller: Option<Distiller>,
    loss_fn: CrossEntropyLoss,
    per_epoch: usize,
    epoch: usize,
    order: Vec<usize>,
    /// Steps taken so far.
    step: usize,
}

impl<'a> Workload<'a> {
    /// Workload `name`, built as `quench run` builds its recipe, with `opts.batch_size`.
    fn new(
        name: &str,
        data: &'a ImageData,
        device: &Device,
        opts: &BenchOptions,
    ) -> Result<Self, TrainError> {
        let mut exp = parse(name, &opts.device)?;
        exp.train.batch_size = opts.batch_size;
        device.seed(exp.seed);
        let train_device = device.clone().autodiff();
        let model = build_model(&exp, &train_device)?;
        let optim = build_optimizer(&exp.train);
        // (with --interleave, one more untimed step per turn)
        let turns = opts.interleave.map_or(0, |k| opts.steps.div_ceil(k.max(1)));
        let scheduler = build_scheduler(&exp.train, opts.warmup + opts.steps + turns)?;
        let distiller = match &exp.distill {
            Some(spec) => {
                // A freshly initialized LeNet-5 stands in for the trained teacher checkpoint:
                // its weights do not change the cost of its forward pass.
                let teacher_exp = parse("lenet-fp32", &opts.device)?;
                let teacher = build_model(&teacher_exp, device)?;
                Some(Distiller::with_teacher(spec.kd_loss()?, teacher, device))
            }
            None => None,
        };
        let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
        let per_epoch = data.train.len() / opts.batch_size;
        if per_epoch == 0 {
            return Err(TrainError::Config(format!(
                "the training set has {} samples, fewer than one batch of {}",
                data.train.len(),
                opts.batch_size
            )));
        }
        let order = epoch_order(data.train.len(), exp.seed, 0);
        Ok(Self {
            name: name.to_string(),
            exp,
            data,
            train_device,
            model: Some(model),
            optim,
            scheduler,
            distiller,
            loss_fn,
            per_epoch,
            epoch: 0,
            order,
            step: 0,
        })
    }

    /// One optimizer step on the next batch of the epoch order; a non-finite loss is an error.
    fn step(&mut self) -> Result<(), TrainError> {
        let batch = self.exp.train.batch_size;
        let b = self.step % self.per_epoch;
        if b == 0 && self.step > 0 {
            self.epoch += 1;
            self.order = epoch_order(self.data.train.len(), self.exp.seed, self.epoch);
        }
        let model = self
            .model
            .take()
            .ok_or_else(|| TrainError::Config(format!("workload {}: no model", self.name)))?;
        let idx = &self.order[b * batch..(b + 1) * batch];
        let lr = self.scheduler.step();
        self.step += 1;
        let (model, stats) = train_step(
            model,
            &mut self.optim,
            lr,
            &self.data.train,
            idx,
            &self.train_device,
            self.distiller.as_ref(),
            &self.loss_fn,
            self.step as u64,
        );
        self.model = Some(model);
        if !stats.loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step as u64,
                detail: format!("workload {}: training loss is {}", self.name, stats.loss),
            });
        }
        Ok(())
    }

    /// The result of `opts.steps` timed steps that took `seconds` (memory fields zero).
    fn result(&self, opts: &BenchOptions, seconds: f64, block_seconds: Vec<f64>) -> BenchResult {
        BenchResult {
            workload: self.name.clone(),
            samples_per_s: (opts.steps * opts.batch_size) as f64 / seconds.max(1e-9),
            steps: opts.steps,
            peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
            device: opts.device.clone(),
            threads: rayon::current_num_threads(),
            warmup: opts.warmup,
            batch_size: opts.batch_size,
            seconds,
            model: self.exp.model.describe(28 * 28, 10),
            peak_rss_reset: false,
            rss_mb_after_warmup: 0.0,
            rss_mb_max_timed: 0.0,
            rss_mb_end: 0.0,
            interleave: None,
            block_seconds,
        }
    }
}

/// Resets the kernel's peak-RSS counter of this process (Linux `clear_refs` value 5); `false`
/// where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size of this process in MiB (`VmHWM` of `/proc/self/status`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&status, "VmHWM:")
}

/// Current resident set size of this process in MiB (`VmRSS`).
pub fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&status, "VmRSS:")
}

/// The `KEY   1234 kB` line of a `/proc/PID/status` text, in MiB.
fn parse_status_kb(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_recipe_parses_and_builds() {
        let d = Device::flex();
        for w in WORKLOADS {
            let exp = parse(w, "flex").unwrap();
            build_model(&exp, &d).unwrap();
            assert_eq!(exp.train.batch_size, BATCH_SIZE);
            assert_eq!(exp.distill.is_some(), w == "distill");
        }
        assert!(workload_recipe("nope", "flex").is_none());
    }

    #[test]
    fn unknown_workload_names_it_and_the_valid_ones() {
        let opts = BenchOptions {
            device: "flex".into(),
            workloads: vec!["mlp-fp32".into(), "resnet".into()],
            steps: 1,
            warmup: 0,
            batch_size: BATCH_SIZE,
            interleave: None,
        };
        let e = validate(&opts).unwrap_err().to_string();
        assert!(e.contains("`resnet`"), "{e}");
        for w in WORKLOADS {
            assert!(e.contains(w), "{e}");
        }
    }

    #[test]
    fn vm_hwm_parses() {
        let s = "Name:\tquench\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_status_kb(s, "VmHWM:"), Some(2.0));
        assert_eq!(parse_status_kb(s, "VmRSS:"), Some(1.0));
        assert_eq!(parse_status_kb("VmRSS: 1 kB", "VmHWM:"), None);
        assert!(peak_rss_mb().is_some_and(|m| m > 0.0));
        assert!(rss_mb().is_some_and(|m| m > 0.0));
    }
}

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

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::Device;
use quench_data::epoch_order;
use serde::Serialize;

use crate::TrainError;
use crate::device::resolve_device;
use crate::distill::Distiller;
use crate::optim::{build_optimizer, build_scheduler};
use crate::recipe::Experiment;
use crate::run::{ImageData, build_model, load_image_data, train_step};

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
pub fn bench(
    opts: &BenchOptions,
    mut report: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, TrainError> {
    validate(opts)?;
    let device = resolve_device(&opts.device)?;
    // Every workload trains on the same data: load it once.
    let first = parse(&opts.workloads[0], &opts.device)?;
    let data = load_image_data(&first)?;
    let mut results = Vec::with_capacity(opts.workloads.len());
    for name in &opts.workloads {
        let exp = parse(name, &opts.device)?;
        let r = bench_one(name, &exp, &data, &device, opts)?;
        report(&r);
        results.push(r);
    }
    Ok(results)
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

/// Trains `warmup + steps` steps of `exp` and times the last `steps`.
fn bench_one(
    name: &str,
    exp: &Experiment,
    data: &ImageData,
    device: &Device,
    opts: &BenchOptions,
) -> Result<BenchResult, TrainError> {
    let peak_rss_reset = reset_peak_rss();
    device.seed(exp.seed);
    let train_device = device.clone().autodiff();
    let mut model = build_model(exp, &train_device)?;
    let mut exp = exp.clone();
    exp.train.batch_size = opts.batch_size;
    let exp = &exp;
    let t = &exp.train;
    let total = opts.warmup + opts.steps;
    let mut optim = build_optimizer(t);
    let mut scheduler = build_scheduler(t, total)?;
    let distiller = match &exp.distill {
        Some(spec) => {
            // A freshly initialized LeNet-5 stands in for the trained teacher checkpoint: its
            // weights do not change the cost of its forward pass.
            let teacher_exp = parse("lenet-fp32", &opts.device)?;
            let teacher = build_model(&teacher_exp, device)?;
            Some(Distiller::with_teacher(spec.kd_loss()?, teacher, device))
        }
        None => None,
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);

    let per_epoch = data.train.len() / t.batch_size;
    if per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "the training set has {} samples, fewer than one batch of {}",
            data.train.len(),
            t.batch_size
        )));
    }
    let mut epoch = 0;
    let mut order = epoch_order(data.train.len(), exp.seed, epoch);
    let mut start = Instant::now();
    let mut rss_after_warmup = 0.0;
    let mut rss_max: f64 = 0.0;
    let sample_every = (opts.steps / 20).max(1);
    for step in 0..total {
        if step == opts.warmup {
            rss_after_warmup = rss_mb().unwrap_or(0.0);
            start = Instant::now();
        }
        if step >= opts.warmup && (step - opts.warmup).is_multiple_of(sample_every) {
            rss_max = rss_max.max(rss_mb().unwrap_or(0.0));
        }
        let b = step % per_epoch;
        if b == 0 && step > 0 {
            epoch += 1;
            order = epoch_order(data.train.len(), exp.seed, epoch);
        }
        let idx = &order[b * t.batch_size..(b + 1) * t.batch_size];
        let lr = scheduler.step();
        let stats;
        (model, stats) = train_step(
            model,
            &mut optim,
            lr,
            &data.train,
            idx,
            &train_device,
            distiller.as_ref(),
            &loss_fn,
            step as u64 + 1,
        );
        if !stats.loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step as u64 + 1,
                detail: format!("workload {name}: training loss is {}", stats.loss),
            });
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let rss_end = rss_mb().unwrap_or(0.0);
    Ok(BenchResult {
        workload: name.to_string(),
        samples_per_s: (opts.steps * t.batch_size) as f64 / seconds.max(1e-9),
        steps: opts.steps,
        peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
        device: opts.device.clone(),
        threads: rayon::current_num_threads(),
        warmup: opts.warmup,
        batch_size: t.batch_size,
        seconds,
        model: exp.model.describe(28 * 28, 10),
        peak_rss_reset,
        rss_mb_after_warmup: rss_after_warmup,
        rss_mb_max_timed: rss_max.max(rss_end),
        rss_mb_end: rss_end,
    })
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

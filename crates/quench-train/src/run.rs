//! The training loop: recipe → data → model → (batch → forward → loss → backward → step)* →
//! eval / log / checkpoint each epoch → `summary.json`.
//!
//! Why our own loop rather than burn-train's `Learner`: quench needs per-step work from later
//! techniques (masks re-applied after every optimizer step, observers frozen at a step, pruning
//! schedules), a global step shared with TensorBoard, and checkpoints that hold the recipe, the
//! history and the optimizer and scheduler state in one atomic file so that a resumed run is
//! bit-identical to an uninterrupted one. It reuses burn's optimizers, LR schedulers, gradient
//! clipping, losses and records.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::lr_scheduler::LrSchedulerRecord;
use burn::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Int, Tensor};
use quench_data::{ImageSet, Split, epoch_order, locate_dataset};
use quench_models::Classifier;
use serde::Serialize;

use crate::TrainError;
use crate::checkpoint::{self, Checkpoint, CheckpointMeta, EpochRecord};
use crate::device::resolve_device;
use crate::distill::Distiller;
use crate::logger::Logger;
use crate::optim::{build_optimizer, build_scheduler};
use crate::params::float_params;
use crate::progress::{Progress, ProgressMode};
use crate::recipe::{Experiment, NonFinite, prune_layers};
use crate::tensorboard::TensorBoardSink;
use quench_prune::Pruner;

/// Optimizer steps at the start of a process excluded from the steady-state throughput.
const WARMUP_STEPS: usize = 10;
/// With `train.on_nonfinite = "skip"`: this many non-finite batches in a row stop the run.
const MAX_CONSECUTIVE_SKIPS: u32 = 10;

/// How to run a recipe.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output directory (checkpoints, `tb/`, `summary.json`).
    pub out_dir: PathBuf,
    /// Continue from the newest valid checkpoint in `out_dir`.
    pub resume: bool,
    /// Terminal output style.
    pub progress: ProgressMode,
}

/// What `summary.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Experiment name.
    pub experiment: String,
    /// Model description (`mlp 784-512-512-10`).
    pub model: String,
    /// Epochs trained in total (across resumes).
    pub epochs_completed: usize,
    /// Optimizer steps in total.
    pub steps: u64,
    /// Test-set accuracy of the final model (fraction).
    pub test_accuracy: f64,
    /// Test-set mean cross-entropy.
    pub test_loss: f64,
    /// Steady-state training samples/s in this process (warm-up steps and eval excluded).
    pub train_samples_per_sec: f64,
    /// Trainable parameters.
    pub params: usize,
    /// Bytes of the parameters as f32.
    pub model_bytes_fp32: usize,
    /// Bytes of the model as `quench export` packs it (quantized models only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_bytes_packed: Option<usize>,
    /// Per layer: `float`, `w4a8`, `ternary`, … .
    pub layer_bits: std::collections::BTreeMap<String, String>,
    /// Fraction of the pruned layers' weights that are zero (pruned runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// Nonzero weights and biases of the whole model (pruned runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonzero_params: Option<usize>,
    /// Bytes of the model in the sparse format (bitmask + nonzero f32 values per tensor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_bytes_sparse: Option<usize>,
    /// Per pruned layer: its sparsity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_sparsity: Option<std::collections::BTreeMap<String, f64>>,
    /// Teacher test accuracy (distillation runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher_test_accuracy: Option<f64>,
    /// Batches skipped for a non-finite loss (`train.on_nonfinite = "skip"`).
    pub skipped_batches: u64,
    /// The learning-rate multiplier those skips left (1 when none).
    pub lr_factor: f64,
    /// Soft-loss weight α and temperature T (distillation runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillUsed>,
    /// Directory of the TensorBoard event files.
    pub tensorboard_dir: PathBuf,
    /// The final checkpoint (accepted by `quench eval`).
    pub checkpoint: PathBuf,
    /// Device the run trained on.
    pub device: String,
    /// Seed.
    pub seed: u64,
    /// Wall time of this process's training, seconds.
    pub wall_seconds: f64,
    /// Whether this process resumed from a checkpoint (and from which epoch).
    pub resumed_from_epoch: Option<usize>,
    /// Per-epoch metrics.
    pub history: Vec<EpochRecord>,
}

/// The distillation settings a run used.
#[derive(Debug, Clone, Serialize)]
pub struct DistillUsed {
    /// Teacher checkpoint.
    pub teacher: PathBuf,
    /// Temperature.
    pub temperature: f64,
    /// Weight of the soft (KL·T²) loss.
    pub soft_weight: f64,
    /// Weight of the hard-label cross-entropy (1 − α).
    pub hard_weight: f64,
    /// Whether cached logits were used.
    pub cached_logits: bool,
}

/// Training and test data for an image experiment.
pub struct ImageData {
    /// Training samples (after removing the validation split).
    pub train: ImageSet,
    /// Held-out validation split, when `data.val_fraction` > 0.
    pub val: Option<ImageSet>,
    /// The test set.
    pub test: ImageSet,
}

/// Loads the data a recipe names.
pub fn load_image_data(exp: &Experiment) -> Result<ImageData, TrainError> {
    let explicit = (!exp.data.path.is_empty()).then(|| Path::new(&exp.data.path));
    let dir = locate_dataset(exp.data.dataset.name(), explicit)?;
    let train = ImageSet::load_split(&dir, Split::Train)?;
    let test = ImageSet::load_split(&dir, Split::Test)?;
    let (train, val) = if exp.data.val_fraction > 0.0 {
        let (t, v) = train.split_validation(exp.data.val_fraction, exp.seed);
        (t, Some(v))
    } else {
        (train, None)
    };
    Ok(ImageData { train, val, test })
}

/// The layer name (`fc1`) of a parameter path (`Mlp.layers.0.inner.weight`), or the path.
fn layer_name_of<'a>(layers: &'a [(String, String)], key: &'a str) -> &'a str {
    layers
        .iter()
        .find(|(path, _)| key.starts_with(&format!("{path}.")))
        .map_or(key, |(_, n)| n.as_str())
}

/// Nonzero weights+biases and the bytes of the model in a sparse format: per weight tensor a
/// bitmask (1 bit per element) plus the nonzero values — f32, or `bits`-wide integer codes for
/// quantized layers (with their scales) — and dense f32 biases.
fn sparse_size(layers: &[quench_models::ExportedLayer]) -> Result<(usize, usize), TrainError> {
    use quench_quant::layer::ExportedWeight;
    let mut nonzero = 0;
    let mut bytes = 0;
    for l in layers {
        let n: usize = l.info.weight_shape.iter().product();
        match &l.weight {
            ExportedWeight::Float(w) => {
                let enc = quench_prune::SparseTensor::encode(w, &l.info.weight_shape)?;
                nonzero += enc.nnz();
                bytes += enc.encoded_bytes();
            }
            ExportedWeight::Int {
                codes,
                scales,
                zero_points,
                bits,
                ..
            } => {
                // A weight is zero exactly when its code equals its zero-point: 0 for symmetric
                // specs (the weight default). With per-channel asymmetric zero-points, a code is
                // counted as zero only when it is 0 (an upper bound on the size).
                let z = match zero_points.first() {
                    Some(&z0) if zero_points.iter().all(|&z| z == z0) => z0,
                    _ => 0,
                };
                let nnz = codes.iter().filter(|c| **c != z).count();
                nonzero += nnz;
                bytes += n.div_ceil(8) + (nnz * *bits as usize).div_ceil(8) + 8 * scales.len();
            }
        }
        if let Some(b) = &l.bias {
            nonzero += b.iter().filter(|v| **v != 0.0).count();
            bytes += 4 * b.len();
        }
    }
    Ok((nonzero, bytes))
}

/// Per quantized layer: scale / zero-point / clip scalars, the weight quantization error and,
/// for ternary / binary layers, the fractions of −1 / 0 / +1 codes.
fn log_quant(logger: &mut Logger, model: &Classifier, step: u64) -> std::io::Result<()> {
    log_quant_reports(logger, model.quant_reports(), step)
}

/// The run's logger with its TensorBoard sink in `tb_dir`.
pub(crate) fn open_tb_logger(tb_dir: &Path) -> Result<Logger, TrainError> {
    let sink = TensorBoardSink::new(tb_dir).map_err(|source| TrainError::Io {
        path: tb_dir.to_path_buf(),
        source,
    })?;
    Ok(Logger::new().with_sink(Box::new(sink)))
}

/// [`log_quant`] for any model's per-layer reports (classifiers and the GPT).
pub(crate) fn log_quant_reports(
    logger: &mut Logger,
    reports: Vec<(
        quench_models::LayerInfo,
        quench_models::LayerQuant,
        quench_quant::layer::LayerReport,
    )>,
    step: u64,
) -> std::io::Result<()> {
    for (info, _, r) in reports {
        let name = &info.name;
        let fields = [
            ("weight_scale", r.weight_scale),
            ("weight_zero_point", r.weight_zero_point),
            ("input_scale", r.input_scale),
            ("input_zero_point", r.input_zero_point),
            ("input_clip", r.input_clip),
            ("weight_error", r.weight_error),
        ];
        for (what, v) in fields {
            if let Some(v) = v {
                logger.scalar(&format!("quant/{name}/{what}"), v as f64, step)?;
            }
        }
        if let Some([neg, zero, pos]) = r.ternary_fractions {
            logger.scalar(&format!("ternary/{name}/frac_neg"), neg as f64, step)?;
            logger.scalar(&format!("ternary/{name}/frac_zero"), zero as f64, step)?;
            logger.scalar(&format!("ternary/{name}/frac_pos"), pos as f64, step)?;
        }
    }
    Ok(())
}

/// Mean cross-entropy and accuracy of `model` over `set` (inference only, no autodiff).
pub fn evaluate(
    model: &Classifier,
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> (f64, f64) {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let order: Vec<usize> = (0..set.len()).collect();
    let mut loss_sum = 0.0f64;
    let mut correct = 0i64;
    for idx in order.chunks(batch_size.max(1)) {
        let batch = set.batch(idx, device);
        let logits = model.forward(batch.images);
        let loss = loss_fn.forward(logits.clone(), batch.labels.clone());
        loss_sum += loss.into_scalar::<f32>() as f64 * idx.len() as f64;
        correct += count_correct(logits, batch.labels).into_scalar::<i64>();
    }
    let n = set.len().max(1) as f64;
    (loss_sum / n, correct as f64 / n)
}

fn count_correct(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1, Int> {
    let [b] = labels.dims();
    logits.argmax(1).equal(labels.reshape([b, 1])).int().sum()
}

/// What one training step leaves for the loop to log.
pub(crate) struct StepStats {
    /// Mean loss of the batch.
    pub loss: f64,
    /// Correctly classified samples of the batch.
    pub correct: i64,
    /// Distillation parts (soft loss, hard loss, teacher agreement), when distilling.
    pub kd: Option<(f32, f32, f32)>,
    /// False when the loss was not finite: then no backward pass and no optimizer step ran, so
    /// the returned model is the one passed in.
    pub stepped: bool,
}

/// Test-only fault injection: `QUENCH_FAULT_NAN_AT_STEPS=3,7` makes the loss of those (1-based)
/// optimizer steps NaN, so the divergence handling can be tested end to end.
pub(crate) fn fault_nan_at(step: u64) -> bool {
    static STEPS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    STEPS
        .get_or_init(|| {
            std::env::var("QUENCH_FAULT_NAN_AT_STEPS")
                .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
                .unwrap_or_default()
        })
        .contains(&step)
}

/// Where a model holds non-finite values: the first parameter (in module order) with NaN/inf.
pub(crate) fn first_nonfinite_param<M: Module>(model: &M) -> Option<String> {
    crate::params::float_params(model)
        .into_iter()
        .find(|p| p.values.iter().any(|v| !v.is_finite()))
        .map(|p| p.path)
}

/// The divergence report's words on what survives: the newest checkpoint, if any.
pub(crate) fn kept_checkpoint_note(last: Option<&Path>) -> String {
    match last {
        Some(p) => format!("the last good checkpoint {} is kept", p.display()),
        None => "no checkpoint had been written yet".to_string(),
    }
}

/// One training step of a classifier, exactly as `quench run` (and `quench bench`) executes it:
/// the samples `idx` of `train` assembled into a batch on `device` → teacher logits (when
/// distilling) → forward → cross-entropy or KD loss → backward → optimizer step at `lr`.
///
/// Reads the loss and the number of correct predictions back to the host, so a step's time
/// includes finishing its work. Pruning masks and logging are the caller's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_step(
    model: Classifier,
    optim: &mut ModuleOptimizer,
    lr: ModuleLearningRate,
    train: &ImageSet,
    idx: &[usize],
    device: &Device,
    distiller: Option<&Distiller>,
    loss_fn: &CrossEntropyLoss,
    step: u64,
) -> (Classifier, StepStats) {
    // The other pool workers poll for the step's parallel work instead of sleeping.
    crate::pool::hot(move || {
        let batch = train.batch(idx, device);
        let teacher_logits = distiller.map(|d| d.logits(idx, &batch.images));
        let logits = model.forward(batch.images);
        let (loss, kd) = match (distiller, teacher_logits) {
            (Some(d), Some(t)) => {
                let out =
                    d.kd.forward(logits.clone(), t.clone(), batch.labels.clone());
                let agree = quench_distill::agreement(logits.clone().detach(), t);
                (
                    out.total,
                    Some((
                        out.soft.into_scalar::<f32>(),
                        out.hard.into_scalar::<f32>(),
                        agree,
                    )),
                )
            }
            _ => (loss_fn.forward(logits.clone(), batch.labels.clone()), None),
        };
        let correct = count_correct(logits.detach(), batch.labels);
        let mut loss_value = loss.clone().into_scalar::<f32>() as f64;
        if fault_nan_at(step) {
            loss_value = f64::NAN;
        }
        if !loss_value.is_finite() {
            // Never step on a non-finite loss: the weights stay those of the last good step.
            let stats = StepStats {
                loss: loss_value,
                correct: 0,
                kd,
                stepped: false,
            };
            return (model, stats);
        }
        let grads = crate::optim::gradients(loss.backward(), &model);
        let model = optim.step(lr, model, grads);
        let stats = StepStats {
            loss: loss_value,
            correct: correct.into_scalar::<i64>(),
            stepped: true,
            kd,
        };
        (model, stats)
    })
}

/// Builds the recipe's model (each layer float / QAT / ternary / binary per `[quant]`).
pub fn build_model(exp: &Experiment, device: &Device) -> Result<Classifier, TrainError> {
    let plan = exp.layer_plan()?;
    Ok(exp.model.init(28 * 28, 10, &plan, device)?)
}

/// Copies the latent weights and biases of the checkpoint at `path` (any recipe with the same
/// architecture, e.g. a float run) into `model` (e.g. its QAT / ternary / pruned version).
pub fn init_from_checkpoint(
    model: Classifier,
    path: &Path,
    device: &Device,
) -> Result<Classifier, TrainError> {
    let ckpt = Checkpoint::read(path)?;
    let src_exp = Experiment::from_toml_str(&ckpt.meta.experiment_toml, path, &[])?;
    let src = model_from_checkpoint(&src_exp, &ckpt, path, device)?;
    let src_params: std::collections::BTreeMap<String, crate::params::ParamValues> =
        float_params(&src)
            .into_iter()
            .map(|p| (p.path.clone(), p))
            .collect();
    let mut wanted = std::collections::BTreeMap::new();
    for info in model.layer_infos() {
        for (p, shape) in [
            (info.weight_path(), info.weight_shape.clone()),
            (
                info.bias_path(),
                vec![
                    *info
                        .weight_shape
                        .get(if info.kind == quench_models::LayerKind::Linear {
                            1
                        } else {
                            0
                        })
                        .unwrap_or(&0),
                ],
            ),
        ] {
            let v = src_params.get(&p).ok_or_else(|| {
                TrainError::Record(format!(
                    "train.init_from {}: has no tensor `{p}` (its model is {}, this recipe's is different)",
                    path.display(),
                    src_exp.model.describe(28 * 28, 10)
                ))
            })?;
            if v.dims != shape {
                return Err(TrainError::Record(format!(
                    "train.init_from {}: tensor `{p}` has shape {:?}, this recipe's model needs {shape:?}",
                    path.display(),
                    v.dims
                )));
            }
            wanted.insert(p, v.clone());
        }
    }
    let (model, _) = crate::params::set_float_params(model, &wanted);
    Ok(model)
}

/// Builds the classifier on `device` and loads the model section of `ckpt` into it.
pub fn model_from_checkpoint(
    exp: &Experiment,
    ckpt: &Checkpoint,
    ckpt_path: &Path,
    device: &Device,
) -> Result<Classifier, TrainError> {
    let model = build_model(exp, device)?;
    let bytes = ckpt.section("model").ok_or_else(|| {
        TrainError::Checkpoint(checkpoint::CheckpointError::Corrupt {
            path: ckpt_path.to_path_buf(),
            detail: "no model section".into(),
        })
    })?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| TrainError::Record(format!("{}: model record: {e:?}", ckpt_path.display())))?;
    model.try_load_record(record).map_err(|e| {
        TrainError::Record(format!(
            "{}: model does not match the recipe: {e:?}",
            ckpt_path.display()
        ))
    })
}

/// Prepares `out`: refuses a directory that holds a different experiment, or a finished run of
/// this one without `--resume`; records the recipe; creates `checkpoints/` and `tb/` and
/// proves `checkpoints/` writable.
pub(crate) fn prepare_out_dir(
    exp: &Experiment,
    out: &Path,
    resume: bool,
) -> Result<(), TrainError> {
    let recorded = out.join("run.toml");
    if recorded.exists() {
        let text = fs::read_to_string(&recorded).map_err(|source| TrainError::Io {
            path: recorded.clone(),
            source,
        })?;
        let other = Experiment::from_toml_str(&text, &recorded, &[])?;
        if !other.same_run_as(exp) {
            return Err(TrainError::OutDir(format!(
                "{} already holds experiment `{}` with a different recipe; nothing was overwritten — \
                 choose another --out",
                out.display(),
                other.name
            )));
        }
        let has_ckpt = !checkpoint::list_checkpoints(&out.join("checkpoints"))?.is_empty();
        if has_ckpt && !resume {
            return Err(TrainError::OutDir(format!(
                "{} already holds a run of `{}`; pass --resume to continue it or choose another --out",
                out.display(),
                exp.name
            )));
        }
    } else if out.exists() && has_foreign_entries(out) {
        return Err(TrainError::OutDir(format!(
            "{} is not empty and is not a quench run directory; nothing was overwritten — \
             choose another --out",
            out.display()
        )));
    }
    // `run.toml` goes in first: once anything else exists the directory is a quench run
    // directory, so a run killed at any point here can be resumed.
    fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    // The directory is this run's now: drop what a killed `run.toml` write left.
    for e in out.read_dir().into_iter().flatten().flatten() {
        if is_run_toml_temporary(&e.file_name()) {
            let _ = fs::remove_file(e.path());
        }
    }
    // Also the first proof that `out` can take files (read-only, full disk).
    checkpoint::write_atomic(&recorded, exp.to_toml().as_bytes())?;
    for d in [out.join("checkpoints"), out.join("tb")] {
        fs::create_dir_all(&d).map_err(|source| TrainError::Io {
            path: d.clone(),
            source,
        })?;
    }
    // Fail before training when checkpoints cannot be written either.
    checkpoint::probe_writable(&out.join("checkpoints"))?;
    Ok(())
}

/// True when `dir` holds anything but the temporary of a killed `run.toml` write.
fn has_foreign_entries(dir: &Path) -> bool {
    dir.read_dir().is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !is_run_toml_temporary(&e.file_name()))
    })
}

/// Whether `name` is the temporary [`checkpoint::write_atomic`] writes `run.toml` through.
fn is_run_toml_temporary(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with(".run.toml.tmp-")
}

/// Runs a recipe end to end and writes `summary.json`.
///
/// Image classifiers only; a language model (`arch = "gpt"`) runs through
/// [`crate::lm::run_lm`].
pub fn run(exp: &Experiment, opts: &RunOptions) -> Result<Summary, TrainError> {
    if exp.model.is_language_model() {
        return Err(TrainError::Config(
            "arch = \"gpt\" is a language model: train it with quench_train::lm::run_lm".into(),
        ));
    }
    let wall = Instant::now();
    let out = &opts.out_dir;
    let ckpt_dir = out.join("checkpoints");
    let tb_dir = out.join("tb");
    let device = resolve_device(&exp.device)?;
    // Load data before touching the output directory: a missing data set leaves nothing behind.
    crate::phase::enter("load-data");
    let data = load_image_data(exp)?;
    crate::phase::enter("prepare");
    prepare_out_dir(exp, out, opts.resume)?;
    checkpoint::remove_stale_temporaries(&out.join("checkpoints"))?;

    device.seed(exp.seed);
    let train_device = device.clone().autodiff();
    let mut model = build_model(exp, &train_device)?;
    if !exp.train.init_from.is_empty() && !opts.resume {
        model = init_from_checkpoint(model, Path::new(&exp.train.init_from), &device)?;
    }
    let t = &exp.train;
    let batches_per_epoch = if t.drop_last {
        data.train.len() / t.batch_size
    } else {
        data.train.len().div_ceil(t.batch_size)
    };
    if batches_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "train.batch_size = {} is larger than the {} training samples with drop_last",
            t.batch_size,
            data.train.len()
        )));
    }
    let total_steps = batches_per_epoch * t.epochs;
    let mut optim = build_optimizer(t);
    let mut scheduler = build_scheduler(t, total_steps)?;
    let mut pruner = match &exp.prune {
        Some(spec) => Some(Pruner::new(
            spec.clone(),
            &prune_layers(&model.layer_infos()),
        )?),
        None => None,
    };
    // Lottery-ticket rewinding needs the weights the run started from.
    let rewind_to = pruner
        .as_ref()
        .filter(|p| p.spec().rewind)
        .map(|_| model.clone());
    let mut distiller = match &exp.distill {
        Some(spec) => Some(Distiller::new(spec, &data, &device)?),
        None => None,
    };

    let mut progress = Progress::new(opts.progress);
    let mut start_epoch = 0usize;
    let mut global_step = 0u64;
    // Divergence handling (`train.on_nonfinite = "skip"`): LR multiplier and skip counts,
    // saved in checkpoints so a resumed run continues with the same learning rate.
    let (mut lr_factor, mut skipped_batches, mut consecutive_skips) = (1.0f64, 0u64, 0u32);
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut resumed_from = None;
    if opts.resume {
        let mut skipped = Vec::new();
        match checkpoint::latest_valid(&ckpt_dir, &mut skipped) {
            Ok((path, ckpt)) => {
                for (p, why) in &skipped {
                    progress.line(&format!(
                        "warning: skipping damaged checkpoint {}: {why}",
                        p.display()
                    ));
                }
                let saved = Experiment::from_toml_str(&ckpt.meta.experiment_toml, &path, &[])?;
                if !saved.same_run_as(exp) {
                    return Err(TrainError::OutDir(format!(
                        "checkpoint {} was made by a different recipe (`{}`); refusing to resume",
                        path.display(),
                        saved.name
                    )));
                }
                model = model_from_checkpoint(exp, &ckpt, &path, &train_device)?;
                (optim, scheduler) =
                    restore_optimizer_and_schedule(&ckpt, &path, optim, scheduler)?;
                if let Some(p) = pruner.as_mut() {
                    p.resume_from_module(ckpt.meta.global_step, &model)?;
                }
                start_epoch = ckpt.meta.epoch;
                global_step = ckpt.meta.global_step;
                lr_factor = ckpt.meta.lr_factor;
                skipped_batches = ckpt.meta.skipped_batches;
                history = ckpt.meta.history.clone();
                resumed_from = Some(start_epoch);
                progress.line(&format!(
                    "resuming `{}` from {} (epoch {start_epoch}, step {global_step})",
                    exp.name,
                    path.display()
                ));
            }
            Err(checkpoint::CheckpointError::NoneFound { .. }) => {
                progress.line("no checkpoint to resume from; starting from the beginning");
            }
            Err(e) => return Err(e.into()),
        }
    }

    let mut logger = open_tb_logger(&tb_dir)?;
    let log_io = |source| TrainError::Io {
        path: tb_dir.clone(),
        source,
    };
    let layer_names: Vec<(String, String)> = model
        .layer_infos()
        .into_iter()
        .map(|l| (l.path, l.name))
        .collect();
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let eval_set = data.val.as_ref().unwrap_or(&data.test);
    let eval_name = if data.val.is_some() { "val" } else { "test" };
    let mut steady_time = 0.0f64;
    let mut steady_samples = 0usize;
    let mut steps_this_process = 0usize;
    let mut last_ckpt = checkpoint::list_checkpoints(&ckpt_dir)?
        .last()
        .map(|(_, p)| p.clone());

    for epoch in start_epoch..t.epochs {
        crate::phase::enter("train");
        let order = epoch_order(data.train.len(), exp.seed, epoch);
        let epoch_start = Instant::now();
        let mut epoch_train_time = 0.0f64;
        let mut epoch_samples = 0usize;
        let mut loss_sum = 0.0f64;
        let mut correct_sum = 0i64;
        let mut window_loss = 0.0f64;
        let mut window_correct = 0i64;
        let mut window_samples = 0usize;
        let mut window_time = 0.0f64;
        let mut kd_window = (0.0f64, 0.0f64, 0.0f64, 0usize);
        progress.start_epoch(epoch + 1, t.epochs, batches_per_epoch as u64);
        for (bi, idx) in order.chunks(t.batch_size).enumerate() {
            if bi >= batches_per_epoch {
                break;
            }
            let step_start = Instant::now();
            let mut lr = scheduler.step();
            if lr_factor != 1.0 {
                lr = ModuleLearningRate::from(lr.base() * lr_factor);
            }
            let lr_value = lr.base();
            if let (Some(d), Some(spec)) = (distiller.as_mut(), &exp.distill) {
                d.kd.temperature = spec.temperature_at(global_step, total_steps as u64);
            }
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
                global_step + 1,
            );
            if !stats.stepped {
                global_step += 1;
                let at = format!(
                    "training loss is {} at step {global_step} (epoch {}, batch {})",
                    stats.loss,
                    epoch + 1,
                    bi + 1
                );
                let weights = match first_nonfinite_param(&model) {
                    Some(p) => format!("the weights of `{p}` are the first to hold NaN/inf"),
                    None => {
                        let images = data.train.batch(idx, &device).images;
                        match model.valid().first_nonfinite_layer(images) {
                            Some(l) => format!(
                                "every weight is finite; the outputs of layer `{l}` are the \
                                 first to go non-finite on this batch"
                            ),
                            None => "every weight is finite and every layer's output too: the \
                                     loss itself is non-finite"
                                .to_string(),
                        }
                    }
                };
                let kept = kept_checkpoint_note(
                    checkpoint::list_checkpoints(&ckpt_dir)?
                        .last()
                        .map(|(_, p)| p.as_path()),
                );
                match t.on_nonfinite {
                    NonFinite::Skip if consecutive_skips < MAX_CONSECUTIVE_SKIPS => {
                        consecutive_skips += 1;
                        skipped_batches += 1;
                        lr_factor *= 0.5;
                        progress.line(&format!(
                            "warning: {at}; {weights}: batch skipped, learning rate now × \
                             {lr_factor}"
                        ));
                        logger
                            .scalar("train/skipped_batches", skipped_batches as f64, global_step)
                            .map_err(log_io)?;
                        continue;
                    }
                    NonFinite::Skip => {
                        return Err(TrainError::Diverged {
                            step: global_step,
                            detail: format!(
                                "{at}; {MAX_CONSECUTIVE_SKIPS} batches in a row were skipped \
                                 (train.on_nonfinite = \"skip\"); {weights}; {kept}"
                            ),
                        });
                    }
                    NonFinite::Stop => {
                        return Err(TrainError::Diverged {
                            step: global_step,
                            detail: format!(
                                "{at}; {weights}; {kept}. `train.on_nonfinite = \"skip\"` \
                                 skips such batches and halves the learning rate instead"
                            ),
                        });
                    }
                }
            }
            consecutive_skips = 0;
            if let Some(p) = pruner.as_mut() {
                let step = global_step + 1;
                p.update_module(step, &model)?;
                if p.schedule().rewind_at(step)
                    && let Some(init) = &rewind_to
                {
                    // Lottery ticket: surviving weights back to their initial values, fresh Adam.
                    model = quench_prune::rewind_module(init, p.masks())?;
                    optim = build_optimizer(t);
                }
                if !p.masks().is_empty() {
                    model = quench_prune::apply_masks_to_module(model, p.masks())?;
                }
            }
            if let Some((soft, hard, agree)) = stats.kd {
                kd_window.0 += soft as f64;
                kd_window.1 += hard as f64;
                kd_window.2 += agree as f64;
                kd_window.3 += 1;
            }
            let (loss_value, correct_value) = (stats.loss, stats.correct);
            let dt = step_start.elapsed().as_secs_f64();
            global_step += 1;
            steps_this_process += 1;
            if steps_this_process > WARMUP_STEPS {
                steady_time += dt;
                steady_samples += idx.len();
            }
            epoch_train_time += dt;
            epoch_samples += idx.len();
            loss_sum += loss_value * idx.len() as f64;
            correct_sum += correct_value;
            window_loss += loss_value * idx.len() as f64;
            window_correct += correct_value;
            window_samples += idx.len();
            window_time += dt;
            let last_batch = bi + 1 == batches_per_epoch;
            if global_step.is_multiple_of(exp.log.every_steps as u64) || last_batch {
                let n = window_samples.max(1) as f64;
                let (l, a, sps) = (
                    window_loss / n,
                    window_correct as f64 / n,
                    n / window_time.max(1e-9),
                );
                logger
                    .scalar("train/loss", l, global_step)
                    .map_err(log_io)?;
                logger
                    .scalar("train/accuracy", a, global_step)
                    .map_err(log_io)?;
                logger.scalar("lr", lr_value, global_step).map_err(log_io)?;
                logger
                    .scalar("throughput/samples_per_sec", sps, global_step)
                    .map_err(log_io)?;
                if kd_window.3 > 0 {
                    let k = kd_window.3 as f64;
                    logger
                        .scalar("distill/soft_loss", kd_window.0 / k, global_step)
                        .map_err(log_io)?;
                    logger
                        .scalar("distill/hard_loss", kd_window.1 / k, global_step)
                        .map_err(log_io)?;
                    logger
                        .scalar("distill/agreement", kd_window.2 / k, global_step)
                        .map_err(log_io)?;
                    if let Some(d) = &distiller {
                        logger
                            .scalar("distill/temperature", d.kd.temperature, global_step)
                            .map_err(log_io)?;
                    }
                    kd_window = (0.0, 0.0, 0.0, 0);
                }
                if let Some(p) = &pruner {
                    let r = p.report();
                    logger
                        .scalar(
                            "prune/target_sparsity",
                            p.schedule().target(global_step),
                            global_step,
                        )
                        .map_err(log_io)?;
                    logger
                        .scalar("prune/sparsity", r.sparsity, global_step)
                        .map_err(log_io)?;
                    for l in &r.layers {
                        let name = layer_name_of(&layer_names, &l.key);
                        logger
                            .scalar(&format!("prune/{name}/sparsity"), l.sparsity, global_step)
                            .map_err(log_io)?;
                    }
                }
                log_quant(&mut logger, &model.valid(), global_step).map_err(log_io)?;
                progress.step(bi as u64 + 1, global_step, l, a, sps);
                window_loss = 0.0;
                window_correct = 0;
                window_samples = 0;
                window_time = 0.0;
            }
        }
        crate::phase::enter("eval");
        let valid_model = model.valid();
        let (eval_loss, eval_acc) = evaluate(&valid_model, eval_set, 1000, &device);
        logger
            .scalar("eval/loss", eval_loss, global_step)
            .map_err(log_io)?;
        logger
            .scalar("eval/accuracy", eval_acc, global_step)
            .map_err(log_io)?;
        if exp.log.histograms {
            for p in float_params(&valid_model) {
                let tag = match layer_names
                    .iter()
                    .find(|(path, _)| p.path.starts_with(&format!("{path}.")))
                {
                    Some((path, name)) => {
                        let rest = &p.path[path.len() + 1..];
                        format!(
                            "params/{name}/{}",
                            rest.strip_prefix("inner.").unwrap_or(rest)
                        )
                    }
                    None => format!("params/{}", p.path),
                };
                logger
                    .histogram(&tag, &p.values, global_step)
                    .map_err(log_io)?;
            }
        }
        let n = epoch_samples.max(1) as f64;
        let record = EpochRecord {
            epoch: epoch + 1,
            step: global_step,
            train_loss: loss_sum / n,
            train_accuracy: correct_sum as f64 / n,
            eval_loss,
            eval_accuracy: eval_acc,
            samples_per_sec: n / epoch_train_time.max(1e-9),
        };
        progress.end_epoch(&format!(
            "epoch {}/{}: train loss {:.4} acc {:.4} | {eval_name} loss {:.4} acc {:.4} | {:.0} samples/s | {:.1}s",
            epoch + 1,
            t.epochs,
            record.train_loss,
            record.train_accuracy,
            eval_loss,
            eval_acc,
            record.samples_per_sec,
            epoch_start.elapsed().as_secs_f64()
        ));
        history.push(record);

        let ckpt = Checkpoint {
            meta: CheckpointMeta {
                experiment_toml: exp.to_toml(),
                epoch: epoch + 1,
                global_step,
                history: history.clone(),
                quench_version: env!("CARGO_PKG_VERSION").to_string(),
                sections: Vec::new(),
                lr_factor,
                skipped_batches,
            },
            sections: training_sections(&model, &optim, &scheduler)?,
        };
        let path = ckpt_dir.join(checkpoint::epoch_file_name(epoch + 1));
        crate::phase::enter("checkpoint");
        ckpt.write(&path)?;
        checkpoint::prune_old(&ckpt_dir, exp.checkpoint.keep)?;
        last_ckpt = Some(path);
        logger.flush().map_err(log_io)?;
    }

    crate::phase::enter("finish");
    let final_model = model.valid();
    let (test_loss, test_accuracy) = evaluate(&final_model, &data.test, 1000, &device);
    let checkpoint = last_ckpt.ok_or_else(|| TrainError::Config("no epoch was trained".into()))?;
    // The model's own weights and biases (quantizer steps, norms and observers excluded).
    let exported = final_model.export_layers();
    let params: usize = exported
        .iter()
        .map(|l| {
            l.info.weight_shape.iter().product::<usize>() + l.bias.as_ref().map_or(0, |b| b.len())
        })
        .sum();
    let quantized = exported
        .iter()
        .any(|l| !matches!(l.kind, quench_models::LayerQuant::Float));
    let model_bytes_packed = if quantized {
        Some(crate::export::packed_bytes(&final_model)?)
    } else {
        None
    };
    let (sparsity, nonzero_params, model_bytes_sparse, layer_sparsity) = match &pruner {
        Some(p) => {
            let report = p.report();
            let mut per_layer = std::collections::BTreeMap::new();
            for l in &report.layers {
                let name = layer_name_of(&layer_names, &l.key).to_string();
                per_layer.insert(name, l.sparsity);
            }
            let (nonzero, sparse_bytes) = sparse_size(&exported)?;
            (
                Some(report.sparsity),
                Some(nonzero),
                Some(sparse_bytes),
                Some(per_layer),
            )
        }
        None => (None, None, None, None),
    };
    let layer_bits = exported
        .iter()
        .map(|l| (l.info.name.clone(), l.kind.label()))
        .collect();
    let summary = Summary {
        experiment: exp.name.clone(),
        model: exp.model.describe(28 * 28, 10),
        epochs_completed: history.len(),
        steps: global_step,
        test_accuracy,
        test_loss,
        train_samples_per_sec: if steady_time > 0.0 {
            steady_samples as f64 / steady_time
        } else {
            0.0
        },
        params,
        model_bytes_fp32: params * 4,
        model_bytes_packed,
        layer_bits,
        sparsity,
        nonzero_params,
        model_bytes_sparse,
        layer_sparsity,
        teacher_test_accuracy: distiller.as_ref().map(|d| d.teacher_test_accuracy),
        skipped_batches,
        lr_factor,
        distill: exp.distill.as_ref().map(|d| DistillUsed {
            teacher: d.teacher.clone(),
            temperature: d.temperature,
            soft_weight: d.alpha,
            hard_weight: 1.0 - d.alpha,
            cached_logits: d.cache_logits,
        }),
        tensorboard_dir: tb_dir.clone(),
        checkpoint,
        device: exp.device.clone(),
        seed: exp.seed,
        wall_seconds: wall.elapsed().as_secs_f64(),
        resumed_from_epoch: resumed_from,
        history,
    };
    logger
        .scalar("test/accuracy", test_accuracy, global_step)
        .map_err(log_io)?;
    logger
        .scalar("test/loss", test_loss, global_step)
        .map_err(log_io)?;
    logger.flush().map_err(log_io)?;
    drop(logger);
    let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
    checkpoint::write_atomic(&out.join("summary.json"), &json)?;
    progress.line(&format!(
        "done: test accuracy {:.4}, test loss {:.4}, {:.0} train samples/s; summary in {}",
        test_accuracy,
        test_loss,
        summary.train_samples_per_sec,
        out.join("summary.json").display()
    ));
    Ok(summary)
}

fn record_bytes(r: Result<Bytes, burn::store::RecordError>) -> Result<Vec<u8>, TrainError> {
    r.map(|b| b.to_vec())
        .map_err(|e| TrainError::Record(format!("serializing a record: {e:?}")))
}

/// The sections both trainers' checkpoints hold: the model, the optimizer's state and the
/// learning-rate schedule's.
pub(crate) fn training_sections<M: Module>(
    model: &M,
    optim: &ModuleOptimizer,
    scheduler: &ModuleLrScheduler,
) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
    Ok(vec![
        (
            "model".into(),
            record_bytes(model.clone().into_record().into_bytes())?,
        ),
        ("optimizer".into(), record_bytes(optim.into_bytes())?),
        (
            "scheduler".into(),
            record_bytes(scheduler.to_record().into_bytes())?,
        ),
    ])
}

/// The section `name` of the checkpoint read from `path`; a checkpoint without it is corrupt.
pub(crate) fn checkpoint_section<'a>(
    ckpt: &'a Checkpoint,
    name: &str,
    path: &Path,
) -> Result<&'a [u8], TrainError> {
    ckpt.section(name).ok_or_else(|| {
        TrainError::Checkpoint(checkpoint::CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("no `{name}` section"),
        })
    })
}

/// `optim` and `scheduler` with the state saved in the checkpoint read from `path`
/// ([`training_sections`]).
pub(crate) fn restore_optimizer_and_schedule(
    ckpt: &Checkpoint,
    path: &Path,
    optim: ModuleOptimizer,
    scheduler: ModuleLrScheduler,
) -> Result<(ModuleOptimizer, ModuleLrScheduler), TrainError> {
    let bytes = |name: &str| -> Result<Bytes, TrainError> {
        Ok(Bytes::from_bytes_vec(
            checkpoint_section(ckpt, name, path)?.to_vec(),
        ))
    };
    let invalid = |name: &str, e| TrainError::Record(format!("{}: {name}: {e:?}", path.display()));
    let orec =
        OptimizerRecord::from_bytes(bytes("optimizer")?).map_err(|e| invalid("optimizer", e))?;
    let srec =
        LrSchedulerRecord::from_bytes(bytes("scheduler")?).map_err(|e| invalid("scheduler", e))?;
    Ok((optim.load_record(orec), scheduler.load_record(srec)))
}

//! The character-level language-model path: `quench run` of a recipe with `model.arch = "gpt"`
//! (training for `train.iterations` on random windows of a text corpus, nanoGPT style), and
//! `quench sample CKPT` (text generation from a checkpoint).
//!
//! It shares the classifier trainer's pieces — recipes, optimizers, LR schedules, checkpoints
//! (atomic, CRC-checked, resumable), TensorBoard, quantized layers — and differs in the data
//! (random windows instead of epochs) and the metrics (validation cross-entropy in nats per
//! character, tokens per second).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::store::ModuleRecord;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};
use quench_data::{CharCorpus, eval_windows, locate_text, sample_windows};
use quench_models::{CharGpt, GptConfig, LayerQuant};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::TrainError;
use crate::checkpoint::{self, Checkpoint, CheckpointMeta, EpochRecord};
use crate::device::resolve_device;
use crate::optim::{build_optimizer, build_scheduler};
use crate::progress::Progress;
use crate::recipe::Experiment;
use crate::run::{
    RunOptions, checkpoint_section, log_quant_reports, open_tb_logger, prepare_out_dir,
    restore_optimizer_and_schedule, training_sections,
};

/// Steps excluded from the throughput figure at the start of each process (allocations settle).
const WARMUP_STEPS: usize = 10;
/// Windows per batch when the whole validation split is scored at the end.
const FULL_EVAL_BATCH: usize = 64;

/// `summary.json` of a language-model run.
#[derive(Debug, Clone, Serialize)]
pub struct LmSummary {
    /// Experiment name.
    pub experiment: String,
    /// Model description.
    pub model: String,
    /// The corpus trained on.
    pub corpus: PathBuf,
    /// Distinct characters.
    pub vocab_size: usize,
    /// Characters in the training / validation splits.
    pub train_chars: usize,
    /// Characters in the validation split.
    pub val_chars: usize,
    /// Optimizer steps done.
    pub iterations: usize,
    /// Mean cross-entropy (nats per character) of the final model over the whole validation
    /// split (every character predicted once, with up to `context` characters before it).
    pub val_loss: f64,
    /// Validation loss estimate at the last evaluation (`eval_iters` random batches, as nanoGPT
    /// reports it).
    pub val_loss_estimate: f64,
    /// Mean training loss of the last logging window.
    pub train_loss: f64,
    /// Steady-state training throughput (tokens = characters per second, evaluation excluded).
    pub tokens_per_sec: f64,
    /// Parameters (embeddings, norms, linears).
    pub params: usize,
    /// fp32 size of those parameters.
    pub model_bytes_fp32: usize,
    /// Size with the quantized Linears packed (embeddings and norms f32), when any is quantized.
    pub model_bytes_packed: Option<usize>,
    /// Per layer: `float`, `w4a8`, `ternary`, …
    pub layer_bits: std::collections::BTreeMap<String, String>,
    /// 200 characters sampled from the final model (prompt "\n", temperature 0.8, seed 0).
    pub sample: String,
    /// TensorBoard event directory.
    pub tensorboard_dir: PathBuf,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// Device.
    pub device: String,
    /// Seed.
    pub seed: u64,
    /// Wall-clock seconds of this process.
    pub wall_seconds: f64,
    /// Iteration this process resumed from, if it did.
    pub resumed_from_iteration: Option<usize>,
    /// One record per evaluation (`epoch` and `step` hold the iteration; accuracies are
    /// next-character accuracies; `samples_per_sec` is tokens per second).
    pub history: Vec<EpochRecord>,
}

/// The corpus a recipe names.
pub fn load_corpus(exp: &Experiment) -> Result<(PathBuf, CharCorpus), TrainError> {
    let explicit = (!exp.data.path.is_empty()).then(|| Path::new(&exp.data.path));
    let path = locate_text(explicit)?;
    let corpus = CharCorpus::from_file(&path)?;
    Ok((path, corpus))
}

/// The GPT of `exp` for a vocabulary of `vocab` characters, each Linear per `[[quant.layers]]`.
pub fn build_gpt(exp: &Experiment, vocab: usize, device: &Device) -> Result<CharGpt, TrainError> {
    let config = gpt_config(exp, vocab)?;
    let plan = exp.layer_plan()?;
    Ok(config.init(&plan, device)?)
}

fn gpt_config(exp: &Experiment, vocab: usize) -> Result<GptConfig, TrainError> {
    exp.model
        .gpt(vocab)
        .ok_or_else(|| TrainError::Config("the recipe's model is not arch = \"gpt\"".into()))
}

/// A GPT checkpoint: its recipe, vocabulary and model (on `device`).
pub struct LmCheckpoint {
    /// The recipe stored in the checkpoint.
    pub exp: Experiment,
    /// The vocabulary (token id → character).
    pub vocab: Vec<char>,
    /// The model.
    pub model: CharGpt,
    /// Iterations it had done.
    pub iteration: usize,
}

/// Reads a language-model checkpoint.
pub fn load_lm_checkpoint(path: &Path, device: &Device) -> Result<LmCheckpoint, TrainError> {
    let ckpt = Checkpoint::read(path)?;
    lm_checkpoint_from(&ckpt, path, device)
}

/// Decodes a language-model checkpoint already read and verified (`path` names it in errors):
/// the recipe, vocabulary and model that [`load_lm_checkpoint`] returns.
pub fn lm_checkpoint_from(
    ckpt: &Checkpoint,
    path: &Path,
    device: &Device,
) -> Result<LmCheckpoint, TrainError> {
    let exp = Experiment::from_toml_str(&ckpt.meta.experiment_toml, path, &[])?;
    if !exp.model.is_language_model() {
        return Err(TrainError::Config(format!(
            "{} is a checkpoint of `{}` ({}), not of a language model",
            path.display(),
            exp.name,
            exp.model.describe(28 * 28, 10)
        )));
    }
    let vocab_text =
        std::str::from_utf8(checkpoint_section(ckpt, "vocab", path)?).map_err(|e| {
            TrainError::Checkpoint(checkpoint::CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("vocab section is not UTF-8: {e}"),
            })
        })?;
    let vocab: Vec<char> = vocab_text.chars().collect();
    let model = model_from_bytes(
        &exp,
        vocab.len(),
        checkpoint_section(ckpt, "model", path)?,
        path,
        device,
    )?;
    Ok(LmCheckpoint {
        exp,
        vocab,
        model,
        iteration: ckpt.meta.global_step as usize,
    })
}

fn model_from_bytes(
    exp: &Experiment,
    vocab: usize,
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<CharGpt, TrainError> {
    let model = build_gpt(exp, vocab, device)?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| TrainError::Record(format!("{}: model record: {e:?}", path.display())))?;
    model.try_load_record(record).map_err(|e| {
        TrainError::Record(format!(
            "{}: model does not match the recipe: {e:?}",
            path.display()
        ))
    })
}

/// The training batch of iteration `it`: a function of (seed, iteration) only, so a resumed
/// run draws exactly the batches the uninterrupted one would have.
fn batch_rng(seed: u64, it: usize, stream: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ (it as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.rotate_left(32),
    )
}

/// Summed cross-entropy (nats), correct argmax predictions and token count of `model` on the
/// windows `(x, y)`.
fn score(model: &CharGpt, x: Tensor<2, Int>, y: Tensor<2, Int>) -> (f64, i64, usize) {
    let [b, t] = x.dims();
    let n = b * t;
    let logits = model.forward(x);
    let vocab = logits.dims()[2];
    let logits = logits.reshape([n, vocab]);
    let y = y.reshape([n]);
    let logp = log_softmax(logits.clone(), 1);
    let picked = logp.gather(1, y.clone().unsqueeze_dim(1));
    let nll = -picked.sum().into_scalar::<f32>() as f64;
    let correct = logits
        .argmax(1)
        .reshape([n])
        .equal(y)
        .int()
        .sum()
        .into_scalar::<i64>();
    (nll, correct, n)
}

/// Mean loss and next-character accuracy over `batches` random windows of `ids`.
fn estimate(
    model: &CharGpt,
    ids: &[u32],
    context: usize,
    batch: usize,
    batches: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let (mut nll, mut correct, mut n) = (0.0, 0i64, 0usize);
    for _ in 0..batches {
        let (x, y) = sample_windows(ids, context, batch, rng, device)?;
        let (l, c, k) = score(model, x, y);
        nll += l;
        correct += c;
        n += k;
    }
    Ok((nll / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

/// Mean loss over (about) every character of `ids`: non-overlapping windows of `context`
/// characters spread over the whole split.
pub fn full_loss(
    model: &CharGpt,
    ids: &[u32],
    context: usize,
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let windows = (ids.len().saturating_sub(1) / context).max(1);
    let batches = windows.div_ceil(FULL_EVAL_BATCH);
    let (mut nll, mut correct, mut n) = (0.0, 0i64, 0usize);
    for (x, y) in eval_windows(ids, context, FULL_EVAL_BATCH, batches, device)? {
        let (l, c, k) = score(model, x, y);
        nll += l;
        correct += c;
        n += k;
    }
    Ok((nll / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

/// Sampling settings for [`generate`].
#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    /// Characters to generate.
    pub tokens: usize,
    /// Softmax temperature (> 0); lower is more conservative.
    pub temperature: f64,
    /// Keep only the `top_k` most likely characters (0 = all).
    pub top_k: usize,
    /// RNG seed: the same seed gives the same text.
    pub seed: u64,
}

/// Continues `prompt` by `opts.tokens` characters sampled from `model`. The distribution is
/// computed on the host in f64 from the logits, so a seed reproduces the text exactly.
pub fn generate(
    model: &CharGpt,
    vocab: &[char],
    prompt: &str,
    opts: SampleOptions,
    device: &Device,
) -> Result<String, TrainError> {
    generate_with(vocab, model.context(), prompt, opts, |window| {
        let t = window.len();
        let x = Tensor::<2, Int>::from_data(TensorData::new(window.to_vec(), [1, t]), device);
        let logits = model.forward(x).narrow(1, t - 1, 1).reshape([vocab.len()]);
        logits
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| TrainError::Record(format!("reading logits: {e:?}")))
    })
}

/// The sampling loop of [`generate`] for any model: `last_logits(window)` gives the logits of
/// the next character after `window` (at most `context` token ids).
pub fn generate_with(
    vocab: &[char],
    context: usize,
    prompt: &str,
    opts: SampleOptions,
    mut last_logits: impl FnMut(&[i64]) -> Result<Vec<f32>, TrainError>,
) -> Result<String, TrainError> {
    use rand::Rng;
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        return Err(TrainError::Config(format!(
            "--temperature {} must be > 0",
            opts.temperature
        )));
    }
    let mut ids: Vec<i64> = Vec::with_capacity(prompt.len() + opts.tokens);
    let missing: Vec<char> = prompt.chars().filter(|c| !vocab.contains(c)).collect();
    if !missing.is_empty() {
        let mut uniq = missing.clone();
        uniq.sort_unstable();
        uniq.dedup();
        return Err(TrainError::Config(format!(
            "--prompt: the character(s) {} are not in the model's vocabulary of {} characters",
            uniq.iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            vocab.len()
        )));
    }
    for ch in prompt.chars() {
        if let Some(id) = vocab.iter().position(|&v| v == ch) {
            ids.push(id as i64);
        }
    }
    if ids.is_empty() {
        // An empty prompt starts from a newline when the vocabulary has one, as nanoGPT does.
        ids.push(vocab.iter().position(|&v| v == '\n').unwrap_or(0) as i64);
    }
    let start = ids.len();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    for _ in 0..opts.tokens {
        let window = &ids[ids.len().saturating_sub(context.max(1))..];
        let logits = last_logits(window)?;
        if logits.len() != vocab.len() {
            return Err(TrainError::Record(format!(
                "the model gave {} logits for a vocabulary of {}",
                logits.len(),
                vocab.len()
            )));
        }
        let mut scaled: Vec<f64> = logits
            .iter()
            .map(|&l| l as f64 / opts.temperature)
            .collect();
        if opts.top_k > 0 && opts.top_k < scaled.len() {
            let mut sorted = scaled.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[opts.top_k - 1];
            for v in &mut scaled {
                if *v < kth {
                    *v = f64::NEG_INFINITY;
                }
            }
        }
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scaled.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut next = weights.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                next = i;
                break;
            }
            u -= w;
        }
        ids.push(next as i64);
    }
    let mut out: String = prompt.to_string();
    out.extend(ids[start..].iter().map(|&i| vocab[i as usize]));
    Ok(out)
}

/// `quench sample CKPT`: text from a language-model checkpoint, or from its `quench export`
/// file (ternary layers on the integer kernel).
pub fn sample_checkpoint(
    path: &Path,
    prompt: &str,
    opts: SampleOptions,
) -> Result<String, TrainError> {
    let device = Device::flex();
    if !Checkpoint::has_magic(path)? {
        // Not a checkpoint: a `quench export` file, run from its integers.
        let packed = crate::lm_export::PackedGpt::load(path)?;
        return packed.generate(prompt, opts, true);
    }
    let ck = load_lm_checkpoint(path, &device)?;
    generate(&ck.model, &ck.vocab, prompt, opts, &device)
}

/// Trains the language model of `exp` and writes `summary.json`.
pub fn run_lm(exp: &Experiment, opts: &RunOptions) -> Result<LmSummary, TrainError> {
    let wall = Instant::now();
    let out = &opts.out_dir;
    let ckpt_dir = out.join("checkpoints");
    let tb_dir = out.join("tb");
    let device = resolve_device(&exp.device)?;
    // Load the corpus before touching the output directory.
    crate::phase::enter("load-data");
    let (corpus_path, corpus) = load_corpus(exp)?;
    let (train_ids, val_ids) = corpus.split(exp.data.val_fraction);
    let config = gpt_config(exp, corpus.vocab_size())?;
    for (what, ids) in [("training", &train_ids), ("validation", &val_ids)] {
        if ids.len() < config.context + 1 {
            return Err(TrainError::Config(format!(
                "{}: the {what} split has {} characters, fewer than model.context + 1 = {}",
                corpus_path.display(),
                ids.len(),
                config.context + 1
            )));
        }
    }
    crate::phase::enter("prepare");
    prepare_out_dir(exp, out, opts.resume)?;
    checkpoint::remove_stale_temporaries(&ckpt_dir)?;

    device.seed(exp.seed);
    let train_device = device.clone().autodiff();
    let mut model = build_gpt(exp, corpus.vocab_size(), &train_device)?;
    let t = &exp.train;
    let mut optim = build_optimizer(t);
    let mut scheduler = build_scheduler(t, t.iterations)?;
    let mut progress = Progress::new(opts.progress);
    let mut start = 0usize;
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut resumed_from = None;
    let vocab_string: String = corpus.vocab.iter().collect();
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
                if checkpoint_section(&ckpt, "vocab", &path)? != vocab_string.as_bytes() {
                    return Err(TrainError::OutDir(format!(
                        "checkpoint {} was trained on a corpus with another vocabulary than {}",
                        path.display(),
                        corpus_path.display()
                    )));
                }
                model = model_from_bytes(
                    exp,
                    corpus.vocab_size(),
                    checkpoint_section(&ckpt, "model", &path)?,
                    &path,
                    &train_device,
                )?;
                (optim, scheduler) =
                    restore_optimizer_and_schedule(&ckpt, &path, optim, scheduler)?;
                start = ckpt.meta.global_step as usize;
                history = ckpt.meta.history.clone();
                resumed_from = Some(start);
                progress.line(&format!(
                    "resuming `{}` from {} (iteration {start})",
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
    progress.line(&format!(
        "{}: {} ({} parameters) on {} ({} characters, vocabulary {}), {} iterations of {}×{}",
        exp.name,
        exp.model.describe(0, corpus.vocab_size()),
        config.num_params(),
        corpus_path.display(),
        corpus.ids.len(),
        corpus.vocab_size(),
        t.iterations,
        t.batch_size,
        config.context
    ));
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let tokens_per_step = t.batch_size * config.context;
    let (mut steady_time, mut steady_tokens, mut steps_here) = (0.0f64, 0usize, 0usize);
    let (mut window_loss, mut window_correct, mut window_steps, mut window_time) =
        (0.0f64, 0i64, 0usize, 0.0f64);
    let (mut last_train_loss, mut last_train_acc) = (f64::NAN, f64::NAN);
    let mut last_ckpt = checkpoint::list_checkpoints(&ckpt_dir)?
        .last()
        .map(|(_, p)| p.clone());
    progress.start_iterations(t.iterations as u64);
    crate::phase::enter("train");
    for it in start..t.iterations {
        let step_start = Instant::now();
        let lr = scheduler.step();
        let lr_value = lr.base();
        let mut rng = batch_rng(exp.seed, it, 0);
        let (x, y) = sample_windows(
            &train_ids,
            config.context,
            t.batch_size,
            &mut rng,
            &train_device,
        )?;
        // The step itself, with the other pool workers polling for its parallel work
        // (`pool::hot`); it hands the model back, updated unless the loss was not finite.
        let (next, outcome) = crate::pool::hot(|| {
            let logits = model
                .forward(x)
                .reshape([tokens_per_step, corpus.vocab_size()]);
            let y = y.reshape([tokens_per_step]);
            let loss = loss_fn.forward(logits.clone(), y.clone());
            let correct = logits
                .detach()
                .argmax(1)
                .reshape([tokens_per_step])
                .equal(y)
                .int()
                .sum();
            let mut loss_value = loss.clone().into_scalar::<f32>() as f64;
            if crate::run::fault_nan_at(it as u64 + 1) {
                loss_value = f64::NAN;
            }
            if !loss_value.is_finite() {
                return (model, Err(loss_value));
            }
            let grads = crate::optim::gradients(loss.backward(), &model);
            let model = optim.step(lr, model, grads);
            (model, Ok((loss_value, correct.into_scalar::<i64>())))
        });
        model = next;
        let (loss_value, correct_value) = match outcome {
            Ok(done) => done,
            Err(loss_value) => {
                // Checked before backward: the weights stay those of the last good iteration.
                let weights = match crate::run::first_nonfinite_param(&model) {
                    Some(p) => format!("the weights of `{p}` are the first to hold NaN/inf"),
                    None => {
                        "every weight is finite, so this batch's forward pass or loss overflowed"
                            .to_string()
                    }
                };
                let kept = crate::run::kept_checkpoint_note(last_ckpt.as_deref());
                return Err(TrainError::Diverged {
                    step: it as u64 + 1,
                    detail: format!(
                        "training loss is {loss_value} at iteration {}; {weights}; {kept}",
                        it + 1
                    ),
                });
            }
        };
        let dt = step_start.elapsed().as_secs_f64();
        let done = it + 1;
        steps_here += 1;
        if steps_here > WARMUP_STEPS {
            steady_time += dt;
            steady_tokens += tokens_per_step;
        }
        window_loss += loss_value;
        window_correct += correct_value;
        window_steps += 1;
        window_time += dt;
        let is_last = done == t.iterations;
        if done.is_multiple_of(exp.log.every_steps) || is_last {
            let (l, a, tps) = (
                window_loss / window_steps as f64,
                window_correct as f64 / (window_steps * tokens_per_step) as f64,
                (window_steps * tokens_per_step) as f64 / window_time.max(1e-9),
            );
            (last_train_loss, last_train_acc) = (l, a);
            let step = done as u64;
            logger.scalar("train/loss", l, step).map_err(log_io)?;
            logger.scalar("train/accuracy", a, step).map_err(log_io)?;
            logger.scalar("lr", lr_value, step).map_err(log_io)?;
            logger
                .scalar("throughput/tokens_per_sec", tps, step)
                .map_err(log_io)?;
            log_quant_reports(&mut logger, model.valid().quant_reports(), step).map_err(log_io)?;
            progress.step(done as u64, step, l, a, tps);
            (window_loss, window_correct, window_steps, window_time) = (0.0, 0, 0, 0.0);
        }
        if done.is_multiple_of(t.eval_interval) || is_last {
            crate::phase::enter("eval");
            let valid = model.valid();
            let mut erng = batch_rng(exp.seed, it, 1);
            let (val_loss, val_acc) = estimate(
                &valid,
                &val_ids,
                config.context,
                t.batch_size,
                t.eval_iters,
                &mut erng,
                &device,
            )?;
            let step = done as u64;
            logger.scalar("eval/loss", val_loss, step).map_err(log_io)?;
            logger
                .scalar("eval/accuracy", val_acc, step)
                .map_err(log_io)?;
            let record = EpochRecord {
                epoch: done,
                step,
                train_loss: last_train_loss,
                train_accuracy: last_train_acc,
                eval_loss: val_loss,
                eval_accuracy: val_acc,
                samples_per_sec: if steady_time > 0.0 {
                    steady_tokens as f64 / steady_time
                } else {
                    0.0
                },
            };
            progress.line(&format!(
                "iter {done}/{}: train loss {:.4} | val loss {val_loss:.4} acc {val_acc:.4} | {:.0} tokens/s",
                t.iterations, record.train_loss, record.samples_per_sec
            ));
            history.push(record);
            let ckpt = Checkpoint {
                meta: CheckpointMeta {
                    experiment_toml: exp.to_toml(),
                    epoch: done,
                    global_step: step,
                    history: history.clone(),
                    quench_version: env!("CARGO_PKG_VERSION").to_string(),
                    sections: Vec::new(),
                    lr_factor: 1.0,
                    skipped_batches: 0,
                },
                sections: {
                    let mut sections = training_sections(&model, &optim, &scheduler)?;
                    sections.push(("vocab".into(), vocab_string.as_bytes().to_vec()));
                    sections
                },
            };
            let path = ckpt_dir.join(checkpoint::iter_file_name(done));
            crate::phase::enter("checkpoint");
            ckpt.write(&path)?;
            checkpoint::prune_old(&ckpt_dir, exp.checkpoint.keep)?;
            last_ckpt = Some(path);
            logger.flush().map_err(log_io)?;
            crate::phase::enter("train");
        }
    }
    progress.end_epoch("training done");

    crate::phase::enter("finish");
    let final_model = model.valid();
    let (val_loss, val_acc) = full_loss(&final_model, &val_ids, config.context, &device)?;
    let sample = generate(
        &final_model,
        &corpus.vocab,
        "",
        SampleOptions {
            tokens: 200,
            temperature: 0.8,
            top_k: 0,
            seed: 0,
        },
        &device,
    )?;
    let checkpoint =
        last_ckpt.ok_or_else(|| TrainError::Config("no iteration was trained".into()))?;
    let layers = final_model.export_layers();
    let quantized = layers.iter().any(|l| !matches!(l.kind, LayerQuant::Float));
    let params = config.num_params();
    let linear_params: usize = layers
        .iter()
        .map(|l| l.info.weight_shape.iter().product::<usize>())
        .sum();
    let model_bytes_packed = if quantized {
        Some(crate::export::packed_layers_bytes(&layers)? + 4 * (params - linear_params))
    } else {
        None
    };
    let last = history.last();
    let summary = LmSummary {
        experiment: exp.name.clone(),
        model: exp.model.describe(0, corpus.vocab_size()),
        corpus: corpus_path,
        vocab_size: corpus.vocab_size(),
        train_chars: train_ids.len(),
        val_chars: val_ids.len(),
        iterations: last.map_or(0, |r| r.epoch),
        val_loss,
        val_loss_estimate: last.map_or(f64::NAN, |r| r.eval_loss),
        train_loss: last_train_loss,
        tokens_per_sec: if steady_time > 0.0 {
            steady_tokens as f64 / steady_time
        } else {
            0.0
        },
        params,
        model_bytes_fp32: 4 * params,
        model_bytes_packed,
        layer_bits: layers
            .iter()
            .map(|l| (l.info.name.clone(), l.kind.label()))
            .collect(),
        sample,
        tensorboard_dir: tb_dir.clone(),
        checkpoint,
        device: exp.device.clone(),
        seed: exp.seed,
        wall_seconds: wall.elapsed().as_secs_f64(),
        resumed_from_iteration: resumed_from,
        history,
    };
    let step = summary.iterations as u64;
    logger.scalar("val/loss", val_loss, step).map_err(log_io)?;
    logger
        .scalar("val/accuracy", val_acc, step)
        .map_err(log_io)?;
    logger.flush().map_err(log_io)?;
    drop(logger);
    let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
    checkpoint::write_atomic(&out.join("summary.json"), &json)?;
    progress.line(&format!(
        "done: val loss {val_loss:.4} nats/char (whole validation split), {:.0} tokens/s; summary in {}",
        summary.tokens_per_sec,
        out.join("summary.json").display()
    ));
    Ok(summary)
}

/// `quench eval` of a language-model checkpoint: the whole validation split.
#[derive(Debug, Clone, Serialize)]
pub struct LmEvalReport {
    /// Experiment name stored in the checkpoint.
    pub experiment: String,
    /// Iterations the checkpoint had done.
    pub iteration: usize,
    /// Mean cross-entropy, nats per character, over the whole validation split.
    pub val_loss: f64,
    /// Next-character accuracy.
    pub val_accuracy: f64,
    /// Characters in the validation split.
    pub val_chars: usize,
}

/// True when the checkpoint at `path` holds a language model.
pub fn is_lm_checkpoint(path: &Path) -> Result<bool, TrainError> {
    // The header alone: the caller reads (and verifies) the whole file next.
    let meta = Checkpoint::read_meta(path)?;
    let exp = Experiment::from_toml_str(&meta.experiment_toml, path, &[])?;
    Ok(exp.model.is_language_model())
}

/// Scores a language-model checkpoint on its recipe's validation split; `overrides`
/// (`data.path=…`) adjust the stored recipe.
pub fn eval_lm_checkpoint(path: &Path, overrides: &[String]) -> Result<LmEvalReport, TrainError> {
    let device = Device::flex();
    let ck = load_lm_checkpoint(path, &device)?;
    let exp = Experiment::from_toml_str(&ck.exp.to_toml(), path, overrides)?;
    let (corpus_path, corpus) = load_corpus(&exp)?;
    if corpus.vocab != ck.vocab {
        return Err(TrainError::Config(format!(
            "{}: its vocabulary differs from the one {} was trained with",
            corpus_path.display(),
            path.display()
        )));
    }
    let (_, val_ids) = corpus.split(exp.data.val_fraction);
    let (val_loss, val_accuracy) = full_loss(&ck.model, &val_ids, ck.model.context(), &device)?;
    Ok(LmEvalReport {
        experiment: exp.name,
        iteration: ck.iteration,
        val_loss,
        val_accuracy,
        val_chars: val_ids.len(),
    })
}

//! Recipes: TOML files that deserialize into a validated [`Experiment`], with `--set a.b=v`
//! overrides applied before validation so an override is checked exactly like the file.

use std::path::{Path, PathBuf};

use quench_distill::{DistillError, DistillSpec};
use quench_models::{
    ClassifierConfig, LayerKind, LayerPlan, LayerQuant, ModelConfig, select_layers,
};
use quench_prune::{PruneError, PruneSpec};
use quench_quant::{QuantError, QuantSpec};
use serde::{Deserialize, Serialize};

/// Why a recipe could not be loaded; every variant names the file or the dotted key.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The recipe file could not be read.
    #[error("cannot read recipe {path}: {source}")]
    Read {
        /// The recipe path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("recipe {path} is not valid TOML: {detail}")]
    Syntax {
        /// The recipe path.
        path: PathBuf,
        /// The parser's message (with line and column).
        detail: String,
    },
    /// A key is unknown, has the wrong type or is missing.
    #[error("recipe {path}: `{key}`: {detail}")]
    Schema {
        /// The recipe path.
        path: PathBuf,
        /// Dotted path of the offending key (`train.lr`).
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A value is out of range, or values contradict each other.
    #[error("recipe {path}: `{key}` = {value}: {detail}")]
    Invalid {
        /// The recipe path.
        path: PathBuf,
        /// Dotted path of the offending key.
        key: String,
        /// The value as given.
        value: String,
        /// The allowed range or the contradiction.
        detail: String,
    },
    /// A `--set` override is malformed.
    #[error("bad override `{arg}`: {detail}")]
    Override {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        detail: String,
    },
}

/// A complete, validated experiment: what to train, on what, how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Experiment name (shown in logs, `summary.json`).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Seed for weight init, shuffling and the validation split.
    #[serde(default)]
    pub seed: u64,
    /// Where to train: `flex` (CPU) by default.
    #[serde(default = "default_device")]
    pub device: String,
    /// The data set.
    pub data: DataConfig,
    /// The model architecture.
    pub model: ClassifierConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Quantization per layer (QAT, ternary, binary); empty = all float.
    #[serde(default, skip_serializing_if = "QuantConfig::is_empty")]
    pub quant: QuantConfig,
    /// Pruning (masks, criterion, schedule); absent = dense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneSpec>,
    /// Distillation from a teacher checkpoint; absent = plain cross-entropy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillSpec>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

/// The prunable layers of a model (quench layers keep burn's layer in `inner`).
pub fn prune_layers(infos: &[quench_models::LayerInfo]) -> Vec<quench_prune::PruneLayer> {
    infos
        .iter()
        .map(|i| match i.kind {
            LayerKind::Linear => quench_prune::PruneLayer::linear(
                i.name.clone(),
                i.weight_path(),
                Some(i.bias_path()),
                [i.weight_shape[0], i.weight_shape[1]],
            ),
            LayerKind::Conv2d => quench_prune::PruneLayer::conv2d(
                i.name.clone(),
                i.weight_path(),
                Some(i.bias_path()),
                [
                    i.weight_shape[0],
                    i.weight_shape[1],
                    i.weight_shape[2],
                    i.weight_shape[3],
                ],
            ),
        })
        .collect()
}

fn prune_error_parts(e: &PruneError) -> (String, String, String) {
    match e {
        PruneError::Invalid {
            field,
            value,
            reason,
        } => (format!("prune.{field}"), value.clone(), reason.clone()),
        PruneError::NoMatchingLayer { pattern, .. } => (
            "prune.layers".into(),
            format!("\"{pattern}\""),
            e.to_string(),
        ),
        PruneError::ScheduleEndsBeforeStart { end_step, .. } => {
            ("prune.end_step".into(), end_step.to_string(), e.to_string())
        }
        PruneError::NotDivisible { .. } => ("prune.m".into(), String::new(), e.to_string()),
        PruneError::AllUnitsPruned { sparsity, .. } => (
            "prune.target_sparsity".into(),
            sparsity.to_string(),
            e.to_string(),
        ),
        other => ("prune".into(), String::new(), other.to_string()),
    }
}

/// `[quant]`: which layers are quantized and how. Rules apply in order; a later rule that
/// matches a layer replaces an earlier one (so `"*"` first, then exceptions).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// `[[quant.layers]]` rules.
    #[serde(default)]
    pub layers: Vec<QuantRule>,
}

impl QuantConfig {
    /// No rule: an all-float model.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// What a `[[quant.layers]]` rule makes of the layers it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantKind {
    /// Fake quantization with the rule's `weight` / `input` specs.
    #[default]
    Qat,
    /// Left in f32.
    Float,
    /// BitNet b1.58 ternary weights, 8-bit absmax activations.
    Ternary,
    /// BitNet b1 binary weights, 8-bit absmax activations.
    Binary,
}

/// One `[[quant.layers]]` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantRule {
    /// Layer-name glob (`"*"`, `"fc1"`, `"conv?"`).
    pub pattern: String,
    /// `qat` (default), `float`, `ternary`, `binary`.
    #[serde(default)]
    pub kind: QuantKind,
    /// Weight spec (qat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<QuantSpec>,
    /// Input-activation spec (qat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<QuantSpec>,
    /// Ternary/binary: RMSNorm of the layer input (SubLN).
    #[serde(default)]
    pub norm: bool,
}

fn default_device() -> String {
    "flex".to_string()
}

/// Which data set: images for classifiers, text for the char-level language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST (Debian `dataset-fashion-mnist`).
    FashionMnist,
    /// MNIST digits.
    Mnist,
    /// TinyShakespeare (`../shared/datasets/tinyshakespeare/input.txt`, or `data.path`).
    Tinyshakespeare,
    /// Any UTF-8 text file named by `data.path`, tokenized by character.
    Text,
}

impl DatasetKind {
    /// The name `quench_data::locate_dataset` understands (`tinyshakespeare`, `text` for text).
    pub fn name(self) -> &'static str {
        match self {
            Self::FashionMnist => "fashion-mnist",
            Self::Mnist => "mnist",
            Self::Tinyshakespeare => "tinyshakespeare",
            Self::Text => "text",
        }
    }

    /// True for the character-level text corpora.
    pub fn is_text(self) -> bool {
        matches!(self, Self::Tinyshakespeare | Self::Text)
    }
}

/// `[data]`: where the data comes from and how it is split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `fashion-mnist` or `mnist`.
    pub dataset: DatasetKind,
    /// A directory with the IDX files; empty = the standard locations.
    #[serde(default)]
    pub path: String,
    /// Fraction of the training set held out for per-epoch evaluation (0 = evaluate on test).
    #[serde(default)]
    pub val_fraction: f64,
}

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (L2 weight decay if `weight_decay` > 0).
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
    /// SGD with momentum.
    Sgd,
}

/// Learning-rate schedule shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduleKind {
    /// Constant `lr`.
    Constant,
    /// Cosine annealing from `lr` to `min_lr` over the remaining steps.
    Cosine,
}

/// What the trainer does with a batch whose loss is not finite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinite {
    /// Stop with an error naming the step and the first non-finite weights.
    #[default]
    Stop,
    /// Skip the batch (no optimizer step) and halve the learning rate; 10 in a row stop.
    Skip,
}

impl NonFinite {
    fn is_stop(&self) -> bool {
        *self == NonFinite::Stop
    }
}

/// `[train]`: the optimisation loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set (image classifiers).
    #[serde(default)]
    pub epochs: usize,
    /// Optimizer steps on random windows (language models; instead of `epochs`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iterations: usize,
    /// Language models: estimate the validation loss (and checkpoint) every this many
    /// iterations, and after the last.
    #[serde(default = "default_eval_interval")]
    pub eval_interval: usize,
    /// Language models: random validation batches per estimate.
    #[serde(default = "default_eval_iters")]
    pub eval_iters: usize,
    /// Start from the weights of this checkpoint (e.g. a float run, to fine-tune it with QAT,
    /// ternary layers or pruning); the architectures must match. Empty = fresh initialization.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub init_from: String,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// `adam`, `adamw` or `sgd`.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay (L2 for adam/sgd, decoupled for adamw).
    #[serde(default)]
    pub weight_decay: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Adam β₁.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam β₂.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam ε (PyTorch's default, 1e-8).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this value (0 = off).
    #[serde(default)]
    pub grad_clip_norm: f64,
    /// What a non-finite (NaN / inf) training loss does: `stop` the run (the default; the last
    /// good checkpoint is kept) or `skip` the batch and halve the learning rate.
    #[serde(default, skip_serializing_if = "NonFinite::is_stop")]
    pub on_nonfinite: NonFinite,
    /// `constant` or `cosine`.
    #[serde(default = "default_schedule")]
    pub lr_schedule: LrScheduleKind,
    /// Linear warm-up steps from `lr`/100 to `lr`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Final learning rate of the cosine schedule.
    #[serde(default)]
    pub min_lr: f64,
    /// Drop the last incomplete batch of each epoch.
    #[serde(default)]
    pub drop_last: bool,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn default_eval_interval() -> usize {
    250
}
fn default_eval_iters() -> usize {
    20
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adam
}
fn default_momentum() -> f64 {
    0.9
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_schedule() -> LrScheduleKind {
    LrScheduleKind::Constant
}

/// `[log]`: what goes to TensorBoard and the terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Log train loss/accuracy/throughput every this many steps.
    #[serde(default = "default_log_every")]
    pub every_steps: usize,
    /// Weight histograms per layer each epoch.
    #[serde(default = "default_true")]
    pub histograms: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            every_steps: default_log_every(),
            histograms: true,
        }
    }
}

fn default_log_every() -> usize {
    50
}
fn default_true() -> bool {
    true
}

/// `[checkpoint]`: how many epoch checkpoints to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Keep the newest this many epoch checkpoints (≥ 1).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            keep: default_keep(),
        }
    }
}

fn default_keep() -> usize {
    3
}

/// Splits `a.b.c=value` into the key path and a TOML value (strings may be bare).
pub fn parse_override(arg: &str) -> Result<(Vec<String>, toml::Value), RecipeError> {
    let bad = |detail: &str| RecipeError::Override {
        arg: arg.to_string(),
        detail: detail.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE"))?;
    let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key segment"));
    }
    // A value is read as a TOML literal (number, bool, array, quoted string); anything that is
    // not valid TOML is taken as a bare string, so `--set data.path=/tmp/x` works unquoted.
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((path, value))
}

/// Sets `path` in `table` to `value`, creating intermediate tables.
fn apply_override(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    arg: &str,
) -> Result<(), RecipeError> {
    let (first, rest) = path.split_first().ok_or_else(|| RecipeError::Override {
        arg: arg.to_string(),
        detail: "empty key".to_string(),
    })?;
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in(entry, rest, value, arg, path.len() - rest.len(), path)
}

/// Sets `value` at `rest` inside `v`: tables by key, arrays (`[[quant.layers]]`) by index, so
/// `--set quant.layers.0.weight.bits=4` works.
fn set_in(
    v: &mut toml::Value,
    rest: &[String],
    value: toml::Value,
    arg: &str,
    depth: usize,
    path: &[String],
) -> Result<(), RecipeError> {
    let err = |detail: String| RecipeError::Override {
        arg: arg.to_string(),
        detail,
    };
    let Some((seg, tail)) = rest.split_first() else {
        *v = value;
        return Ok(());
    };
    let here = path[..depth].join(".");
    let next = match v {
        toml::Value::Table(t) => {
            if tail.is_empty() {
                t.insert(seg.clone(), value);
                return Ok(());
            }
            t.entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        }
        toml::Value::Array(a) => {
            let len = a.len();
            let idx: usize = seg
                .parse()
                .map_err(|_| err(format!("`{here}` is a list: index it by number")))?;
            a.get_mut(idx).ok_or_else(|| {
                err(format!(
                    "`{here}`: index {idx} out of range (the list has {len})"
                ))
            })?
        }
        _ => return Err(err(format!("`{here}` is not a table"))),
    };
    set_in(next, tail, value, arg, depth + 1, path)
}

impl Experiment {
    /// Reads, overrides and validates a recipe file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parses recipe text (`path` is only used in messages).
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        overrides: &[String],
    ) -> Result<Self, RecipeError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| RecipeError::Syntax {
            path: path.to_path_buf(),
            detail: e.to_string().trim().replace('\n', " "),
        })?;
        for arg in overrides {
            let (keys, value) = parse_override(arg)?;
            apply_override(&mut table, &keys, value, arg)?;
        }
        let exp: Experiment =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                RecipeError::Schema {
                    path: path.to_path_buf(),
                    key: if key == "." {
                        "(top level)".into()
                    } else {
                        key
                    },
                    detail: e.into_inner().to_string().trim().replace('\n', " "),
                }
            })?;
        exp.validate(path)?;
        Ok(exp)
    }

    /// Checks ranges and combinations; the error names the dotted key.
    pub fn validate(&self, path: &Path) -> Result<(), RecipeError> {
        let invalid = |key: &str, value: String, detail: &str| RecipeError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            value,
            detail: detail.to_string(),
        };
        let t = &self.train;
        if self.name.trim().is_empty() {
            return Err(invalid("name", "\"\"".into(), "must not be empty"));
        }
        let lm = self.model.is_language_model();
        if lm != self.data.dataset.is_text() {
            return Err(invalid(
                "data.dataset",
                format!("\"{}\"", self.data.dataset.name()),
                if lm {
                    "arch = \"gpt\" trains on text: use \"tinyshakespeare\" or \"text\""
                } else {
                    "a text corpus needs a language model (model.arch = \"gpt\")"
                },
            ));
        }
        if self.data.dataset == DatasetKind::Text && self.data.path.is_empty() {
            return Err(invalid(
                "data.path",
                "\"\"".into(),
                "dataset = \"text\" needs the path of a UTF-8 text file",
            ));
        }
        if lm {
            if t.epochs != 0 {
                return Err(invalid(
                    "train.epochs",
                    t.epochs.to_string(),
                    "language models train for train.iterations, not epochs",
                ));
            }
            if t.on_nonfinite != NonFinite::Stop {
                return Err(invalid(
                    "train.on_nonfinite",
                    "skip".into(),
                    "language models support only \"stop\" (the default)",
                ));
            }
            if !(1..=100_000_000).contains(&t.iterations) {
                return Err(invalid(
                    "train.iterations",
                    t.iterations.to_string(),
                    "must be in 1..=100000000",
                ));
            }
            if t.eval_interval == 0 {
                return Err(invalid("train.eval_interval", "0".into(), "must be ≥ 1"));
            }
            if !(1..=100_000).contains(&t.eval_iters) {
                return Err(invalid(
                    "train.eval_iters",
                    t.eval_iters.to_string(),
                    "must be in 1..=100000",
                ));
            }
            if self.data.val_fraction.is_nan() || self.data.val_fraction <= 0.0 {
                return Err(invalid(
                    "data.val_fraction",
                    self.data.val_fraction.to_string(),
                    "a language model needs held-out text for its validation loss (e.g. 0.1)",
                ));
            }
            for (key, present) in [
                ("prune", self.prune.is_some()),
                ("distill", self.distill.is_some()),
                ("train.init_from", !t.init_from.is_empty()),
            ] {
                if present {
                    return Err(invalid(
                        key,
                        "…".into(),
                        "not supported for arch = \"gpt\" yet (quant.layers is)",
                    ));
                }
            }
        } else {
            if !(1..=100_000).contains(&t.epochs) {
                return Err(invalid(
                    "train.epochs",
                    t.epochs.to_string(),
                    "must be in 1..=100000",
                ));
            }
            if t.iterations != 0 {
                return Err(invalid(
                    "train.iterations",
                    t.iterations.to_string(),
                    "applies to language models; classifiers train for train.epochs",
                ));
            }
        }
        if !(1..=1 << 20).contains(&t.batch_size) {
            return Err(invalid(
                "train.batch_size",
                t.batch_size.to_string(),
                "must be in 1..=1048576",
            ));
        }
        if !(t.lr > 0.0 && t.lr <= 1.0) {
            return Err(invalid("train.lr", t.lr.to_string(), "must be in (0, 1]"));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay < 1.0) {
            return Err(invalid(
                "train.weight_decay",
                t.weight_decay.to_string(),
                "must be in [0, 1)",
            ));
        }
        if !(t.momentum >= 0.0 && t.momentum < 1.0) {
            return Err(invalid(
                "train.momentum",
                t.momentum.to_string(),
                "must be in [0, 1)",
            ));
        }
        for (key, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid(key, v.to_string(), "must be in [0, 1)"));
            }
        }
        if !(t.eps > 0.0 && t.eps < 1.0) {
            return Err(invalid("train.eps", t.eps.to_string(), "must be in (0, 1)"));
        }
        if !(t.grad_clip_norm >= 0.0 && t.grad_clip_norm.is_finite()) {
            return Err(invalid(
                "train.grad_clip_norm",
                t.grad_clip_norm.to_string(),
                "must be ≥ 0 (0 = off)",
            ));
        }
        if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return Err(invalid(
                "train.min_lr",
                t.min_lr.to_string(),
                "must be in [0, train.lr]",
            ));
        }
        if !(self.data.val_fraction >= 0.0 && self.data.val_fraction < 1.0) {
            return Err(invalid(
                "data.val_fraction",
                self.data.val_fraction.to_string(),
                "must be in [0, 1)",
            ));
        }
        if self.log.every_steps == 0 {
            return Err(invalid("log.every_steps", "0".into(), "must be ≥ 1"));
        }
        if self.checkpoint.keep == 0 {
            return Err(invalid("checkpoint.keep", "0".into(), "must be ≥ 1"));
        }
        if !matches!(
            self.device.as_str(),
            "flex" | "cpu" | "wgpu" | "vulkan" | "cuda" | "ndarray"
        ) {
            return Err(invalid(
                "device",
                format!("\"{}\"", self.device),
                "must be one of flex, wgpu, vulkan, cuda (ndarray: measurement builds only)",
            ));
        }
        self.model
            .validate(28 * 28, 10)
            .map_err(|e| invalid("model", format!("{:?}", self.model), &e.to_string()))?;
        self.layer_plan_at(path)?;
        if let Some(p) = &self.prune {
            // The pruner checks the spec and its fit to the model's layers (patterns, N:M
            // divisibility, structured pruning leaving at least one unit).
            let layers = prune_layers(&self.model.layer_infos(28 * 28, 10));
            quench_prune::Pruner::new(p.clone(), &layers).map_err(|e| {
                let (key, value, detail) = prune_error_parts(&e);
                invalid(&key, value, &detail)
            })?;
        }
        if let Some(d) = &self.distill {
            d.validate().map_err(|e| {
                let (key, value) = match &e {
                    DistillError::Temperature { value } => ("distill.temperature", *value),
                    DistillError::TemperatureEnd { value } => ("distill.temperature_end", *value),
                    DistillError::Alpha { value } => ("distill.alpha", *value),
                    _ => {
                        return RecipeError::Schema {
                            path: path.to_path_buf(),
                            key: "distill".into(),
                            detail: e.to_string(),
                        };
                    }
                };
                // The message starts with "`key` = value: "; keep only the reason after it.
                let text = e.to_string();
                let reason = text.split_once(": ").map_or(text.as_str(), |(_, r)| r);
                invalid(key, value.to_string(), reason)
            })?;
            if let Some(t) = &d.teacher_model {
                let m: Result<ModelConfig, _> = toml::Value::Table(t.clone()).try_into();
                match m {
                    Err(e) => {
                        return Err(invalid(
                            "distill.teacher_model",
                            String::new(),
                            &e.to_string(),
                        ));
                    }
                    Ok(m) if m.is_language_model() => {
                        return Err(invalid(
                            "distill.teacher_model",
                            "gpt".into(),
                            "a teacher must be an image classifier (mlp, lenet5, cnn)",
                        ));
                    }
                    Ok(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Resolves `[[quant.layers]]` against the model's layer names into a per-layer plan.
    pub fn layer_plan(&self) -> Result<LayerPlan, RecipeError> {
        self.layer_plan_at(Path::new("<recipe>"))
    }

    fn layer_plan_at(&self, path: &Path) -> Result<LayerPlan, RecipeError> {
        let invalid = |key: String, value: String, detail: String| RecipeError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            detail,
        };
        let infos = self.model.layer_infos(28 * 28, 10);
        let mut plan = LayerPlan::float();
        for (i, rule) in self.quant.layers.iter().enumerate() {
            let key = format!("quant.layers[{i}]");
            let hits = select_layers(&infos, &rule.pattern).map_err(|e| {
                invalid(
                    format!("{key}.pattern"),
                    format!("\"{}\"", rule.pattern),
                    e.to_string(),
                )
            })?;
            let kind = match rule.kind {
                QuantKind::Float => LayerQuant::Float,
                QuantKind::Ternary => LayerQuant::Ternary { norm: rule.norm },
                QuantKind::Binary => LayerQuant::Binary { norm: rule.norm },
                QuantKind::Qat => {
                    if rule.weight.is_none() && rule.input.is_none() {
                        return Err(invalid(
                            format!("{key}.kind"),
                            "\"qat\"".into(),
                            "a qat rule needs a `weight` and/or an `input` spec".into(),
                        ));
                    }
                    LayerQuant::Qat {
                        weight: rule.weight.clone(),
                        input: rule.input.clone(),
                    }
                }
            };
            if rule.kind != QuantKind::Qat && (rule.weight.is_some() || rule.input.is_some()) {
                return Err(invalid(
                    format!("{key}.weight"),
                    format!("{:?}", rule.kind).to_lowercase(),
                    "weight/input specs apply only to kind = \"qat\"".into(),
                ));
            }
            for (operand, spec) in [("weight", &rule.weight), ("input", &rule.input)] {
                if let Some(spec) = spec {
                    spec.validate().map_err(|e| {
                        let QuantError::Invalid {
                            field,
                            value,
                            reason,
                        } = e;
                        invalid(format!("{key}.{operand}.{field}"), value, reason)
                    })?;
                }
            }
            for info in hits {
                if let Some(spec) = &rule.weight {
                    // The channel axis of burn's layers: Linear [d_in, d_out] → 1, Conv2d → 0;
                    // the quantizer derives the group axis (the input dim) from it.
                    let axis = if info.kind == LayerKind::Linear { 1 } else { 0 };
                    quench_quant::Quantizer::weight_layout(spec, &info.weight_shape, axis)
                        .map_err(|e| {
                            let QuantError::Invalid {
                                field,
                                value,
                                reason,
                            } = e;
                            invalid(
                                format!("{key}.weight.{field}"),
                                value,
                                format!(
                                    "{reason} (layer {}, weight {:?})",
                                    info.name, info.weight_shape
                                ),
                            )
                        })?;
                }
                plan.layers.insert(info.name.clone(), kind.clone());
            }
        }
        Ok(plan)
    }

    /// The recipe as TOML (what checkpoints and `run.toml` store).
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of numbers, strings and vectors cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// True when `other` describes the same run, so a checkpoint of one can resume the other.
    /// Only `train.epochs` may differ (extending a finished run is allowed).
    pub fn same_run_as(&self, other: &Experiment) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        a.train.epochs = 0;
        b.train.epochs = 0;
        a.train.iterations = 0;
        b.train.iterations = 0;
        a.description.clear();
        b.description.clear();
        // Logging, checkpoint retention and the device do not change what is trained.
        a.log = b.log.clone();
        a.checkpoint = b.checkpoint.clone();
        a.device = b.device.clone();
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
seed = 3
[data]
dataset = "fashion-mnist"
[model]
arch = "mlp"
hidden = [32]
[train]
epochs = 2
batch_size = 64
lr = 1e-3
"#;

    fn load(text: &str, sets: &[&str]) -> Result<Experiment, RecipeError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Experiment::from_toml_str(text, Path::new("r.toml"), &sets)
    }

    #[test]
    fn defaults_fill_in() {
        let e = load(BASE, &[]).unwrap();
        assert_eq!(e.device, "flex");
        assert_eq!(e.train.optimizer, OptimizerKind::Adam);
        assert_eq!(e.train.eps, 1e-8);
        assert_eq!(e.log.every_steps, 50);
        assert_eq!(e.model, ClassifierConfig::Mlp { hidden: vec![32] });
    }

    #[test]
    fn overrides_by_dotted_path() {
        let e = load(
            BASE,
            &[
                "train.epochs=1",
                "data.path=/tmp/some dir",
                "model.hidden=[8, 8]",
                "train.lr=0.5",
            ],
        )
        .unwrap();
        assert_eq!(e.train.epochs, 1);
        assert_eq!(e.data.path, "/tmp/some dir");
        assert_eq!(e.model, ClassifierConfig::Mlp { hidden: vec![8, 8] });
        assert_eq!(e.train.lr, 0.5);
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = load(
            &BASE.replace("lr = 1e-3", "lr = 1e-3\nlearning_rate = 2"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("train") && err.contains("learning_rate"),
            "{err}"
        );
        let err = load(BASE, &["train.nope=1"]).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let err = load(BASE, &["data.val_fraction=\"x\""])
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.val_fraction"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        for (set, key) in [
            ("train.lr=0", "train.lr"),
            ("train.lr=2.0", "train.lr"),
            ("train.epochs=0", "train.epochs"),
            ("train.batch_size=0", "train.batch_size"),
            ("data.val_fraction=1.0", "data.val_fraction"),
            ("train.momentum=1.5", "train.momentum"),
            ("device=\"tpu\"", "device"),
            ("model.hidden=[4, 0]", "model"),
            ("train.min_lr=0.5", "train.min_lr"),
        ] {
            let err = load(BASE, &[set]).unwrap_err();
            assert!(matches!(err, RecipeError::Invalid { .. }), "{set}: {err}");
            assert!(
                err.to_string().contains(&format!("`{key}`")),
                "{set}: {err}"
            );
        }
    }

    #[test]
    fn malformed_overrides_and_toml_are_reported() {
        assert!(matches!(
            load(BASE, &["train.epochs"]),
            Err(RecipeError::Override { .. })
        ));
        assert!(matches!(
            load(BASE, &["name.x=1"]),
            Err(RecipeError::Override { .. })
        ));
        assert!(matches!(
            load("name = ", &[]),
            Err(RecipeError::Syntax { .. })
        ));
    }

    #[test]
    fn round_trips_through_toml_and_compares_runs() {
        let e = load(BASE, &[]).unwrap();
        let back = load(&e.to_toml(), &[]).unwrap();
        assert_eq!(e, back);
        let longer = load(BASE, &["train.epochs=9"]).unwrap();
        assert!(e.same_run_as(&longer));
        let other = load(BASE, &["seed=4"]).unwrap();
        assert!(!e.same_run_as(&other));
    }
}

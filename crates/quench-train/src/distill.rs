//! The trainer's side of distillation: a frozen teacher loaded from a quench checkpoint (run on
//! the plain, non-autodiff device: a forward pass only, never in the optimizer), or its logits
//! read from a cache written by `quench distill-cache`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use quench_data::ImageSet;
use quench_distill::{
    DistillSpec, Fingerprint, KdLoss, LogitCache, check_classes, fingerprint_file,
};
use quench_models::{Classifier, ModelConfig};

use crate::TrainError;
use crate::checkpoint::Checkpoint;
use crate::recipe::Experiment;
use crate::run::{ImageData, evaluate, model_from_checkpoint};

/// Classes of the image data sets quench trains on.
const CLASSES: usize = 10;

/// Teacher (or its cached logits) plus the KD loss, for one run.
pub struct Distiller {
    /// The loss (T, α).
    pub kd: KdLoss,
    /// The frozen teacher, when logits are computed live.
    teacher: Option<Classifier>,
    /// Cached logits, when `distill.cache_logits`.
    cache: Option<LogitCache>,
    /// Teacher test-set accuracy (fraction).
    pub teacher_test_accuracy: f64,
    device: Device,
}

/// Where the logit cache of `spec`'s teacher lives: next to the teacher, `.logits`.
pub fn cache_path(spec: &DistillSpec) -> PathBuf {
    spec.teacher.with_extension("logits")
}

/// A fingerprint of a training set in index order (labels and pixels), so a cache made for
/// other data, another split or another order is refused.
pub fn data_fingerprint(set: &ImageSet) -> u64 {
    let mut f = Fingerprint::new();
    f.update(&set.labels).update_f32(&set.pixels);
    f.finish()
}

/// Loads the teacher `spec` names: a quench checkpoint (which carries its architecture), or a
/// PyTorch state dict for the architecture in `distill.teacher_model`.
pub fn load_spec_teacher(spec: &DistillSpec, device: &Device) -> Result<Classifier, TrainError> {
    let path = &spec.teacher;
    if Checkpoint::has_magic(path)? {
        if spec.teacher_model.is_some() || !spec.teacher_key_map.is_empty() {
            return Err(TrainError::Config(format!(
                "distill.teacher_model / teacher_key_map: {} is a quench checkpoint, which carries \
                 its own architecture and names; remove those keys",
                path.display()
            )));
        }
        return load_teacher(path, device);
    }
    let model = teacher_model_config(spec)?.ok_or_else(|| {
        TrainError::Config(format!(
            "distill.teacher: {} is not a quench checkpoint; a PyTorch teacher (safetensors or \
             .pt) needs its architecture in the recipe: distill.teacher_model = {{ arch = \"mlp\", \
             hidden = [512, 512] }} (or lenet5 / cnn)",
            path.display()
        ))
    })?;
    crate::pytorch_teacher::load_pytorch_teacher(path, &model, &spec.teacher_key_map, device)
}

/// The `[distill.teacher_model]` table as a model description, if the recipe has one.
pub fn teacher_model_config(spec: &DistillSpec) -> Result<Option<ModelConfig>, TrainError> {
    let Some(table) = &spec.teacher_model else {
        return Ok(None);
    };
    let model: ModelConfig = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e| TrainError::Config(format!("distill.teacher_model: {e}")))?;
    if model.is_language_model() {
        return Err(TrainError::Config(
            "distill.teacher_model: a teacher must be an image classifier (mlp, lenet5, cnn)"
                .into(),
        ));
    }
    Ok(Some(model))
}

/// Loads the teacher checkpoint at `path` onto `device`, checking its class count.
pub fn load_teacher(path: &Path, device: &Device) -> Result<Classifier, TrainError> {
    let ckpt = Checkpoint::read(path)?;
    let texp = Experiment::from_toml_str(&ckpt.meta.experiment_toml, path, &[])?;
    if texp.model.is_language_model() {
        return Err(TrainError::Config(format!(
            "distill.teacher: {} is a language-model (gpt) checkpoint; a teacher must be an \
             image classifier (mlp, lenet5, cnn) with 10 classes",
            path.display()
        )));
    }
    let teacher = model_from_checkpoint(&texp, &ckpt, path, device)?;
    let classes = teacher
        .layer_infos()
        .last()
        .and_then(|l| l.weight_shape.last().copied())
        .unwrap_or(0);
    check_classes(CLASSES, classes)?;
    Ok(teacher)
}

impl Distiller {
    /// Loads the teacher (and the cache, if the spec asks for it); evaluates the teacher once.
    pub fn new(spec: &DistillSpec, data: &ImageData, device: &Device) -> Result<Self, TrainError> {
        let kd = spec.kd_loss()?;
        let teacher = load_spec_teacher(spec, device)?;
        let (_, teacher_test_accuracy) = evaluate(&teacher, &data.test, 1000, device);
        let cache = if spec.cache_logits {
            let path = cache_path(spec);
            if !path.exists() {
                // First use: one teacher pass over the training set writes the cache (what
                // `quench distill-cache` does); every later run reads it.
                write_cache(spec, &teacher, &data.train, device)?;
            }
            Some(LogitCache::open(
                &path,
                fingerprint_file(&spec.teacher)?,
                data_fingerprint(&data.train),
                data.train.len(),
                CLASSES,
            )?)
        } else {
            None
        };
        Ok(Self {
            kd,
            teacher: if cache.is_some() { None } else { Some(teacher) },
            cache,
            teacher_test_accuracy,
            device: device.clone(),
        })
    }

    /// A distiller around an in-memory `teacher` run live (no checkpoint, no logit cache, its
    /// test accuracy not measured: NaN). `quench bench` uses it with an untrained teacher.
    pub fn with_teacher(kd: KdLoss, teacher: Classifier, device: &Device) -> Self {
        Self {
            kd,
            teacher: Some(teacher),
            cache: None,
            teacher_test_accuracy: f64::NAN,
            device: device.clone(),
        }
    }

    /// Teacher logits for the training samples `idx` whose images are `images` (any device):
    /// from the cache, or a forward pass of the frozen teacher on the plain device.
    pub fn logits(&self, idx: &[usize], images: &Tensor<2>) -> Tensor<2> {
        match (&self.cache, &self.teacher) {
            (Some(c), _) => c.batch(idx, &self.device),
            (None, Some(t)) => t.forward(images.clone().without_autodiff()),
            (None, None) => unreachable!("a distiller has a teacher or a cache"),
        }
    }
}

/// `quench distill-cache`: runs the recipe's teacher once over its training set and writes the
/// logits cache the recipe's `distill.cache_logits = true` reads. Returns the path.
pub fn build_cache(exp: &Experiment) -> Result<(PathBuf, usize), TrainError> {
    let spec = exp.distill.as_ref().ok_or_else(|| {
        TrainError::Config(format!("recipe `{}` has no [distill] section", exp.name))
    })?;
    let device = Device::flex();
    let data = crate::run::load_image_data(exp)?;
    let teacher = load_spec_teacher(spec, &device)?;
    write_cache(spec, &teacher, &data.train, &device)
}

/// Runs `teacher` over `train` in index order and writes the logit cache of `spec`.
fn write_cache(
    spec: &DistillSpec,
    teacher: &Classifier,
    train: &ImageSet,
    device: &Device,
) -> Result<(PathBuf, usize), TrainError> {
    let n = train.len();
    let mut logits = Vec::with_capacity(n * CLASSES);
    let order: Vec<usize> = (0..n).collect();
    for idx in order.chunks(1000) {
        let batch = train.batch(idx, device);
        let l = teacher.forward(batch.images);
        logits.extend(
            l.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| TrainError::Record(format!("teacher logits: {e:?}")))?,
        );
    }
    let path = cache_path(spec);
    LogitCache::create(
        &path,
        fingerprint_file(&spec.teacher)?,
        data_fingerprint(train),
        logits,
        n,
        CLASSES,
    )?;
    Ok((path, n))
}

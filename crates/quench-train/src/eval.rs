//! `quench eval CKPT`: the test set on a checkpoint, using the recipe stored inside it.

use std::path::Path;

use serde::Serialize;

use crate::TrainError;
use crate::checkpoint::Checkpoint;
use crate::device::resolve_device;
use crate::recipe::Experiment;
use crate::run::{evaluate, load_image_data, model_from_checkpoint};

/// Result of evaluating a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Experiment name stored in the checkpoint.
    pub experiment: String,
    /// Epochs the checkpoint had completed.
    pub epoch: usize,
    /// Test accuracy (fraction).
    pub test_accuracy: f64,
    /// Test mean cross-entropy.
    pub test_loss: f64,
    /// Test samples.
    pub samples: usize,
}

/// Evaluates the checkpoint at `path` on its recipe's test set; `overrides` (`data.path=…`,
/// `device=…`) adjust the stored recipe.
pub fn eval_checkpoint(path: &Path, overrides: &[String]) -> Result<EvalReport, TrainError> {
    let ckpt = Checkpoint::read(path)?;
    let exp = Experiment::from_toml_str(&ckpt.meta.experiment_toml, path, overrides)?;
    let device = resolve_device(&exp.device)?;
    let data = load_image_data(&exp)?;
    let model = model_from_checkpoint(&exp, &ckpt, path, &device)?;
    let (test_loss, test_accuracy) = evaluate(&model, &data.test, 1000, &device);
    Ok(EvalReport {
        experiment: exp.name,
        epoch: ckpt.meta.epoch,
        test_accuracy,
        test_loss,
        samples: data.test.len(),
    })
}

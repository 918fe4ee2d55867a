//! `quench sensitivity`: prune one layer at a time at several sparsities (magnitude, no
//! retraining) and measure test accuracy — which layers tolerate pruning, before choosing
//! per-layer targets for a schedule.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use quench_prune::criteria::{WeightRef, magnitude_mask};
use serde::Serialize;

use crate::TrainError;
use crate::checkpoint::Checkpoint;
use crate::logger::Logger;
use crate::params::{ParamValues, float_params, set_float_params};
use crate::recipe::Experiment;
use crate::run::{evaluate, load_image_data, model_from_checkpoint};
use crate::tensorboard::TensorBoardSink;

/// Accuracy of the model with one layer pruned to each sparsity.
#[derive(Debug, Clone, Serialize)]
pub struct SensitivityReport {
    /// Test accuracy of the unpruned checkpoint.
    pub baseline_accuracy: f64,
    /// Sparsities tried.
    pub sparsities: Vec<f64>,
    /// Layer name → test accuracy per sparsity.
    pub layers: BTreeMap<String, Vec<f64>>,
}

impl SensitivityReport {
    /// A plain-text table (layers × sparsities).
    pub fn table(&self) -> String {
        let mut s = format!(
            "baseline test accuracy {:.4}\nlayer   ",
            self.baseline_accuracy
        );
        for sp in &self.sparsities {
            s.push_str(&format!(" {:>6.0}%", sp * 100.0));
        }
        s.push('\n');
        for (name, accs) in &self.layers {
            s.push_str(&format!("{name:<8}"));
            for a in accs {
                s.push_str(&format!(" {:>7.4}", a));
            }
            s.push('\n');
        }
        s
    }
}

/// Runs the analysis on the checkpoint at `ckpt_path`; writes `sensitivity/<layer>` scalars
/// (step = sparsity in percent) to `tb_dir` when given.
pub fn sensitivity(
    ckpt_path: &Path,
    sparsities: &[f64],
    tb_dir: Option<&Path>,
) -> Result<SensitivityReport, TrainError> {
    if let Some(s) = sparsities.iter().find(|s| !(0.0..1.0).contains(*s)) {
        return Err(TrainError::Config(format!(
            "sparsity {s} is outside [0, 1)"
        )));
    }
    let ckpt = Checkpoint::read(ckpt_path)?;
    let exp = Experiment::from_toml_str(&ckpt.meta.experiment_toml, ckpt_path, &[])?;
    let device = Device::flex();
    let model = model_from_checkpoint(&exp, &ckpt, ckpt_path, &device)?;
    let data = load_image_data(&exp)?;
    let (_, baseline_accuracy) = evaluate(&model, &data.test, 1000, &device);
    let params: BTreeMap<String, ParamValues> = float_params(&model)
        .into_iter()
        .map(|p| (p.path.clone(), p))
        .collect();
    let mut logger = Logger::new();
    if let Some(dir) = tb_dir {
        let sink = TensorBoardSink::new(dir).map_err(|source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        logger = logger.with_sink(Box::new(sink));
    }
    let mut layers = BTreeMap::new();
    for info in model.layer_infos() {
        let key = info.weight_path();
        let Some(w) = params.get(&key) else { continue };
        let mut accs = Vec::new();
        for &s in sparsities {
            let mask = magnitude_mask(WeightRef::new(&key, &w.values, &w.dims)?, s, None)?;
            let mut pruned = w.clone();
            mask.apply_to(&mut pruned.values)?;
            let one = BTreeMap::from([(key.clone(), pruned)]);
            let (m, _) = set_float_params(model.clone(), &one);
            let (_, acc) = evaluate(&m, &data.test, 1000, &device);
            logger
                .scalar(
                    &format!("sensitivity/{}", info.name),
                    acc,
                    (s * 100.0).round() as u64,
                )
                .map_err(|source| TrainError::Io {
                    path: tb_dir.map(Path::to_path_buf).unwrap_or_default(),
                    source,
                })?;
            accs.push(acc);
        }
        layers.insert(info.name.clone(), accs);
    }
    logger.flush().map_err(|source| TrainError::Io {
        path: tb_dir.map(Path::to_path_buf).unwrap_or_default(),
        source,
    })?;
    Ok(SensitivityReport {
        baseline_accuracy,
        sparsities: sparsities.to_vec(),
        layers,
    })
}

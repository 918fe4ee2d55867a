//! quench-train: the training loop glue, recipes, checkpoints/resume, TensorBoard logging,
//! progress and the run summary. It composes the technique crates.

pub mod adam;
pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod distill;
pub mod eval;
pub mod export;
pub mod lm;
pub mod lm_export;
pub mod logger;
pub mod optim;
pub mod params;
pub mod phase;
pub mod pool;
pub mod progress;
pub mod pytorch_teacher;
pub mod recipe;
pub mod run;
pub mod sensitivity;
pub mod tb_reader;
pub mod tensorboard;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use progress::ProgressMode;
pub use recipe::{Experiment, RecipeError};
pub use run::{RunOptions, Summary, run};

use std::path::PathBuf;

/// Everything that can stop a run; each message names the file, key or step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Export or reading an export file failed.
    #[error("export: {0}")]
    Export(String),
    /// Pruning failed (spec, masks).
    #[error("pruning: {0}")]
    Prune(#[from] quench_prune::PruneError),
    /// Distillation failed (teacher, cache).
    #[error("distillation: {0}")]
    Distill(#[from] quench_distill::DistillError),
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] quench_models::ModelError),
    /// The recipe is invalid.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The data could not be loaded.
    #[error(transparent)]
    Data(#[from] quench_data::DataError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A burn record could not be encoded or does not fit the model.
    #[error("{0}")]
    Record(String),
    /// I/O on a named path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The output directory cannot be used.
    #[error("{0}")]
    OutDir(String),
    /// The device cannot be used.
    #[error("device `{name}`: {detail}")]
    Device {
        /// The device name asked for.
        name: String,
        /// Why it cannot be used.
        detail: String,
    },
    /// Training diverged (a non-finite loss).
    #[error("training diverged at step {step}: {detail}")]
    Diverged {
        /// Global step.
        step: u64,
        /// What went non-finite.
        detail: String,
    },
    /// Contradictory settings found at run time.
    #[error("{0}")]
    Config(String),
}

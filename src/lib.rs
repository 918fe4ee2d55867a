//! quench: train neural networks that come out small — the facade over the quench crates.
//!
//! - [`data`]: IDX (MNIST, Fashion-MNIST) and char-level text datasets, batches.
//! - [`models`]: reference models with layers addressable by name (`fc1`, `conv2`).
//! - [`quant`], [`prune`], [`distill`]: the techniques (fake quantization and BitNet layers,
//!   masks and schedules, KD loss and logit cache); `quant::reparam::prepare` adds QAT to any
//!   burn model.
//! - [`train`]: recipes, the training loop, checkpoints, TensorBoard, summaries.

pub use quench_data as data;
pub use quench_distill as distill;
pub use quench_models as models;
pub use quench_prune as prune;
pub use quench_quant as quant;
pub use quench_train as train;

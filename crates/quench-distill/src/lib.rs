//! Knowledge distillation: temperature-scaled KL loss with hard-label CE, and a teacher-logit cache.
//!
//! - [`DistillSpec`]: the `[distill]` part of a recipe (teacher checkpoint, T, α, caching).
//! - [`KdLoss`]: Hinton's loss `α·T²·KL(p_t^T ‖ p_s^T) + (1−α)·CE(s, y)`; the teacher is constant.
//! - [`LogitCache`]: the teacher's logits for a whole training set on disk, so a run can skip the
//!   live teacher; refuses to load when teacher, data set or shape differ from what it was made for.
#![warn(missing_docs)]

mod cache;
mod error;
mod kd_loss;
mod spec;

pub use cache::{Fingerprint, LogitCache, fingerprint_bytes, fingerprint_file};
pub use error::{CacheProblem, DistillError};
pub use kd_loss::{KdLoss, KdOutput, agreement, check_classes};
pub use spec::DistillSpec;

//! Pruning: masks, criteria (magnitude, structured norms, N:M), scope and sparsity schedules.
//!
//! Layout conventions follow burn: a Linear weight is `[d_in, d_out]` (output neurons on axis 1,
//! the transpose of PyTorch), a Conv2d weight `[out, in/groups, kh, kw]` (output channels on
//! axis 0). Masks are host-side keep flags keyed by parameter path (see [`mask`]); the trainer
//! re-applies them after every optimizer step with [`apply_masks_to_module`].

pub mod criteria;
pub mod error;
pub mod mask;
pub mod module;
pub mod pattern;
pub mod pruner;
pub mod schedule;
pub mod sparse;
pub mod spec;
pub mod stats;

pub use criteria::{
    Norm, WeightRef, global_magnitude_masks, magnitude_mask, n_m_mask, structured_mask,
};
pub use error::PruneError;
pub use mask::{Mask, Masks, apply_mask};
pub use module::{ParamData, apply_masks_to_module, read_float_params, rewind_module};
pub use pruner::{PruneLayer, Pruner};
pub use schedule::Schedule;
pub use sparse::{SparseTensor, shrink_linear_outputs, shrink_next_inputs};
pub use spec::{PruneMethod, PruneScope, PruneSpec, ScheduleKind};
pub use stats::{SparsityReport, report};

//! Fake quantization for training small models: specs, straight-through estimators, observers,
//! learned ranges (LSQ, PACT), BitNet ternary/binary weights, low-bit packing and a ternary kernel.

pub mod conv;
pub mod dense;
pub mod error;
pub mod flexops;
pub mod kernel;
pub mod layer;
pub mod observer;
pub mod pack;
pub mod qparams;
pub mod quantizer;
pub mod range_hint;
pub mod reparam;
pub mod spec;
pub mod ste;
pub mod ternary;

pub use error::QuantError;
pub use observer::RangeObserver;
pub use qparams::QuantLayout;
pub use quantizer::Quantizer;
pub use spec::{Estimator, Granularity, QuantSpec};

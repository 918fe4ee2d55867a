//! Custom autodiff operations on the CPU (Flex) backend, where a step's time went into burn ops
//! that a single host pass can replace:
//!
//! * [`conv2d`]: 2-d convolution as im2col into a per-sample buffer that stays in cache, one
//!   GEMM per sample for the forward and for each backward product, samples split over rayon.
//!   Used by [`crate::layer::QuantConv2d`].
//! * the straight-through estimators of [`crate::ste`] (an identity node, and the clipped one
//!   of the fused fake-quant, whose backward multiplies by the in-range mask), and the fused
//!   2×2 max-pool + ReLU of [`crate::conv`], which use the plumbing here.
//!
//! **Why by hand.** burn Flex's `conv2d` and its two backward ops were about half of a LeNet-5
//! training step (`perf`: `conv3d_f32`, `conv_transpose3d_f32`, and `copy_2d_tiled` for the
//! layout changes around them). Its weight gradient is a convolution of the batch-transposed
//! input with the batch-transposed output gradient, each transpose a full copy, and its input
//! gradient is a transposed convolution. Here both backward products are GEMMs on the same
//! patch matrix as the forward, rebuilt per sample in a buffer that stays in L2 (a LeNet-5
//! sample's is 78 KB), and the layouts are expressed as GEMM strides, so nothing is transposed.
//! The multiplications are the `gemm` crate's, the same kernels burn-flex uses.
//!
//! **How it plugs into burn.** burn 0.22 has no public way to give a tensor-level function its
//! own backward. With burn's `extension` feature a tensor exposes its backend primitive: an
//! `Autodiff<Flex>` tensor when autodiff is on, a Flex tensor otherwise. [`conv2d`] records
//! one node with [`burn_autodiff`]'s `Backward` trait (as burn's own ops do), whose backward
//! computes only the gradients the graph needs (none for an image batch, say).
//!
//! **Scope of the convolution.** f32, stride 1, dilation 1, one group, on Flex, with autodiff
//! disabled or without gradient checkpointing (what quench's training uses). Anything else — another backend or
//! dtype, strides, groups, a checkpointing strategy — goes to burn's `conv2d` unchanged, so
//! wgpu/CUDA runs are untouched. Results equal burn's up to float summation order (tests:
//! values and all three gradients against burn's op, and against finite differences).

use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, DispatchAutodiffContext, DispatchKindConversion, DispatchTensor, Flex,
    GradientCheckpointingStrategy,
};
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Calls `$f(args)` through a copy of `$f` compiled for AVX2 when the CPU has it (8-lane loops;
/// the baseline x86-64 target has only 4-lane SSE), else `$f` itself: the same source, so the
/// same arithmetic and bits. `$f` is `#[inline(always)]`, so that its loops are compiled
/// inside the AVX2 copy.
macro_rules! with_avx2 {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { avx2(|| $f($($arg),*)) }
        } else {
            $f($($arg),*)
        }
        #[cfg(not(target_arch = "x86_64"))]
        $f($($arg),*)
    }};
}
pub(crate) use with_avx2;

/// Elements per rayon task of quench's host passes (fake quantization, BitNet, masks,
/// min/max): a pass over at most this many runs on the calling thread.
pub(crate) const TASK_ELEMENTS: usize = 1 << 15;

/// Elements per task of a pass over whole units of `unit` elements (rows, runs sharing a
/// scale): as many units as fit in [`TASK_ELEMENTS`], at least one.
pub(crate) fn task_len(unit: usize) -> usize {
    let unit = unit.max(1);
    (TASK_ELEMENTS / unit).max(1) * unit
}

/// The autodiff backend quench's training tensors live on (no gradient checkpointing).
pub(crate) type Ad = Autodiff<Flex, NoCheckpointing>;

/// Sizes of one convolution (stride and dilation 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    out_channels: usize,
    kh: usize,
    kw: usize,
    /// Top and left padding (bottom and right follow from the output size).
    pad_top: usize,
    pad_left: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    /// Patch length `C·Kh·Kw` (rows of the patch matrix).
    fn patch(&self) -> usize {
        self.channels * self.kh * self.kw
    }
    /// Output pixels per plane (columns of the patch matrix).
    fn pixels(&self) -> usize {
        self.ho * self.wo
    }
    fn in_sample(&self) -> usize {
        self.channels * self.h * self.w
    }
    fn out_sample(&self) -> usize {
        self.out_channels * self.pixels()
    }
    /// Height and width of the zero-padded frame the windows slide over: `Ho + Kh − 1`,
    /// `Wo + Kw − 1` (stride 1).
    fn frame(&self) -> (usize, usize) {
        (self.ho + self.kh - 1, self.wo + self.kw - 1)
    }
    /// Whether the frame is the input itself (no padding on any side).
    fn unpadded(&self) -> bool {
        self.pad_top == 0 && self.pad_left == 0 && self.frame() == (self.h, self.w)
    }
    /// Where each input row lies in the frame: `(offset in the sample, offset in the frame,
    /// length)` for every channel and row, in order.
    fn frame_rows(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (hp, wp) = self.frame();
        let n = self.w.min(wp - self.pad_left);
        (0..self.channels).flat_map(move |c| {
            (0..self.h.min(hp - self.pad_top)).map(move |y| {
                let frame = (c * hp + y + self.pad_top) * wp + self.pad_left;
                ((c * self.h + y) * self.w, frame, n)
            })
        })
    }
}

/// `conv2d` with burn's semantics; on Flex (f32, stride 1, dilation 1, one group) a host
/// convolution with its own backward, elsewhere burn's op.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    match geometry(&x, &weight, bias.as_ref(), &options) {
        Some(g) => host_conv(x, weight, bias, g, options),
        None => burn_conv2d(x, weight, bias, options),
    }
}

/// The sizes if the host path applies.
fn geometry(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    options: &ConvOptions<2>,
) -> Option<Geometry> {
    let flex = Device::flex();
    let f32_on_flex = |dtype: DType, device: Device| dtype == DType::F32 && device == flex;
    if options.groups != 1
        || options.stride != [1, 1]
        || options.dilation != [1, 1]
        || !f32_on_flex(x.dtype(), x.device())
        || !f32_on_flex(weight.dtype(), weight.device())
        || bias.is_some_and(|b| !f32_on_flex(b.dtype(), b.device()))
    {
        return None;
    }
    let [batch, channels, h, w] = x.dims();
    let [out_channels, in_channels, kh, kw] = weight.dims();
    if in_channels != channels || bias.is_some_and(|b| b.dims() != [out_channels]) {
        return None; // burn reports the mismatch
    }
    let begin = options.padding_begin();
    let end = options.padding_end();
    let ho = (h + begin[0] + end[0]).checked_sub(kh)? + 1;
    let wo = (w + begin[1] + end[1]).checked_sub(kw)? + 1;
    let g = Geometry {
        batch,
        channels,
        h,
        w,
        out_channels,
        kh,
        kw,
        pad_top: begin[0],
        pad_left: begin[1],
        ho,
        wo,
    };
    (g.patch() > 0 && g.pixels() > 0 && batch > 0 && out_channels > 0).then_some(g)
}

/// One input's routing: its Flex value, and its autodiff tensor when autodiff is on.
pub(crate) enum Input {
    Plain(FlexTensor),
    Tracked(FloatTensor<Ad>),
}

impl Input {
    /// The Flex value, without its autodiff node.
    pub(crate) fn into_plain(self) -> FlexTensor {
        match self {
            Input::Plain(p) => p,
            Input::Tracked(t) => t.into_primitive(),
        }
    }
}

/// Splits `t` into its primitive; `None`: not on Flex, or checkpointed (use burn's op).
pub(crate) fn primitive<const D: usize>(t: Tensor<D>) -> Option<Input> {
    let d: DispatchTensor = t.into_dispatch();
    match d.autodiff {
        DispatchAutodiffContext::Disabled => {
            match <DispatchTensor as DispatchKindConversion<Flex>>::try_into_backend(d) {
                Ok(burn::backend::BackendTensor::Float(p)) => Some(Input::Plain(p)),
                _ => None,
            }
        }
        DispatchAutodiffContext::Enabled(GradientCheckpointingStrategy::Disabled) => {
            match <DispatchTensor as DispatchKindConversion<Ad>>::try_into_backend(d) {
                Ok(burn::backend::BackendTensor::Float(p)) => Some(Input::Tracked(p)),
                _ => None,
            }
        }
        DispatchAutodiffContext::Enabled(_) => None,
    }
}

fn host_conv(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    g: Geometry,
    options: ConvOptions<2>,
) -> Tensor<4> {
    match run_weighted(HostConv(g), x, weight, bias) {
        Ok(y) => {
            #[cfg(test)]
            tests::HOST_CALLS.with(|n| n.set(n.get() + 1));
            y
        }
        Err(inputs) => {
            let (x, w, b) = *inputs;
            burn_conv2d(x, w, b, options)
        }
    }
}

/// An op on an input, a weight and an optional bias that runs on Flex primitives and records
/// one autodiff node with the three as parents (the convolution, the dense layer's product).
/// The op value carries the sizes; the node saves the input and the weight where the backward
/// will read them.
pub(crate) trait WeightedOp: Copy + std::fmt::Debug + Send + Sync + 'static {
    /// The bias length (the zero constant parent stands in when there is no bias).
    fn bias_len(&self) -> usize;
    /// The output, from row-major or strided Flex tensors.
    fn forward(&self, x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor;
    /// The gradients `need` asks for (input, weight, bias), from the output gradient `dy`.
    /// `x` is `Some` when `need.dw`, `w` when `need.dx` (each is saved only for that).
    fn backward(
        &self,
        x: Option<&FlexTensor>,
        w: Option<&FlexTensor>,
        dy: &FlexTensor,
        need: Needs,
    ) -> Grads;
}

/// The autodiff node of a [`WeightedOp`].
#[derive(Debug)]
struct Weighted<O>(O);

impl<O: WeightedOp> Backward<Flex, 3> for Weighted<O> {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Saved { x, w } = ops.state;
        let need = Needs {
            dx: node_x.is_some() && w.is_some(),
            dw: node_w.is_some() && x.is_some(),
            db: node_b.is_some(),
        };
        let (dx, dw, db) = self.0.backward(x.as_ref(), w.as_ref(), &dy, need);
        for (node, grad) in [(node_x, dx), (node_w, dw), (node_b, db)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// What a [`WeightedOp`]'s backward needs (shared buffers, not copies): the input when the
/// weight's gradient is wanted, the weight when the input's is. A fake-quantized weight is a
/// fresh buffer each step; the first layer's input (the data) wants no gradient, so its
/// quantized weight is freed right after the forward instead of being held to the end of the
/// backward.
#[derive(Debug, Clone)]
struct Saved {
    pub(crate) x: Option<FlexTensor>,
    pub(crate) w: Option<FlexTensor>,
}

/// Runs `op` on the primitives of `x`, `w` and `b`: a plain Flex forward when none of them is
/// tracked, else the forward recorded as one node. `Err` hands the three back unchanged when
/// one is not on Flex or the graph checkpoints (the caller then uses burn's op).
#[allow(clippy::type_complexity)] // the three inputs handed back
pub(crate) fn run_weighted<O: WeightedOp, const D: usize, const E: usize>(
    op: O,
    x: Tensor<D>,
    w: Tensor<E>,
    b: Option<Tensor<1>>,
) -> Result<Tensor<D>, Box<(Tensor<D>, Tensor<E>, Option<Tensor<1>>)>> {
    // Keep the originals for the fallback (cloning a tensor shares its buffer).
    let originals = (x.clone(), w.clone(), b.clone());
    let parts = (
        primitive(x),
        primitive(w),
        b.map(|b| primitive(b).ok_or(())).transpose(),
    );
    let (Some(x), Some(w), Ok(b)) = parts else {
        return Err(Box::new(originals));
    };
    let tracked = |i: &Input| matches!(i, Input::Tracked(_));
    if !(tracked(&x) || tracked(&w) || b.as_ref().is_some_and(tracked)) {
        let b = b.map(Input::into_plain);
        let out = op.forward(&x.into_plain(), &w.into_plain(), b.as_ref());
        return Ok(Tensor::from_primitive::<Flex>(out));
    }
    let as_tracked = |i: Input| match i {
        Input::Tracked(t) => t,
        Input::Plain(p) => FloatTensor::<Ad>::new(p),
    };
    let (x, w) = (as_tracked(x), as_tracked(w));
    let has_bias = b.is_some();
    let b = b.map(as_tracked).unwrap_or_else(|| {
        FloatTensor::<Ad>::new(FlexTensor::zeros(Shape::new([op.bias_len()]), DType::F32))
    });
    let out = op.forward(
        x.primitive(),
        w.primitive(),
        has_bias.then(|| b.primitive()),
    );
    let out = match Weighted(op)
        .prepare::<NoCheckpointing>([x.node(), w.node(), b.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let wants_grad = |t: &FloatTensor<Ad>| t.is_tracked();
            let saved = Saved {
                x: wants_grad(&w).then(|| x.primitive().clone()),
                w: wants_grad(&x).then(|| w.primitive().clone()),
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Ok(Tensor::from_primitive::<Ad>(out))
}

/// `y = q` with `dy/dx` 1, but 0 at the `clamped` positions of a fake-quantized tensor's codes,
/// as one autodiff node on Flex: the clipped straight-through estimator without the three
/// tracked ops (`x·keep`, a subtraction, an add) of the op-by-op form. The backward multiplies
/// the listed gradients by 0.0 in place, the bits a 0/1 mask's product gives (burn's `mul`
/// backward), and leaves the rest. `Err(clamped)` hands the list back when `x` is not a tracked
/// Flex f32 tensor.
pub(crate) fn masked_straight_through<const D: usize>(
    x: Tensor<D>,
    q: Tensor<D>,
    clamped: Vec<u32>,
) -> Result<Tensor<D>, Vec<u32>> {
    let len = q.shape().num_elements();
    if x.dtype() != DType::F32 || clamped.last().is_some_and(|&i| i as usize >= len) {
        return Err(clamped);
    }
    let q = match primitive(q) {
        Some(Input::Plain(q)) => q,
        _ => return Err(clamped),
    };
    let x = match primitive(x) {
        Some(Input::Tracked(x)) => x,
        _ => return Err(clamped),
    };
    #[cfg(test)]
    tests::MASK_CALLS.with(|n| n.set(n.get() + 1));
    let out = record_unary(MaskedIdentity, &x, q, || std::sync::Arc::new(clamped));
    Ok(Tensor::from_primitive::<Ad>(out))
}

/// `y = q` with `dy/dx = 1` as one autodiff node on Flex (the straight-through estimator): no
/// tensor ops in the forward, the upstream gradient handed on unchanged (as burn's `add` and
/// `sub` backward do). `None` when `x` is not a tracked Flex f32 tensor.
pub(crate) fn identity_straight_through<const D: usize>(
    x: &Tensor<D>,
    q: &Tensor<D>,
) -> Option<Tensor<D>> {
    let applies = x.dtype() == DType::F32
        && q.dtype() == DType::F32
        && x.shape() == q.shape()
        && x.device() == Device::flex()
        && q.device() == Device::flex()
        && x.is_tracked();
    if !applies {
        return None;
    }
    let (q, x) = match (primitive(q.clone())?, primitive(x.clone())?) {
        (Input::Plain(q), Input::Tracked(x)) => (q, x),
        (Input::Tracked(q), Input::Tracked(x)) => (q.into_primitive(), x),
        _ => return None,
    };
    #[cfg(test)]
    tests::IDENTITY_CALLS.with(|n| n.set(n.get() + 1));
    let out = record_unary(Identity, &x, q, || ());
    Some(Tensor::from_primitive::<Ad>(out))
}

/// Records `out` as the result of the one-parent operation `op` on `x`; `state` (what the
/// backward needs) is built only when the graph tracks `x`.
pub(crate) fn record_unary<O: Backward<Flex, 1>>(
    op: O,
    x: &FloatTensor<Ad>,
    out: FlexTensor,
    state: impl FnOnce() -> O::State,
) -> FloatTensor<Ad> {
    match op
        .prepare::<NoCheckpointing>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[derive(Debug)]
struct Identity;

impl Backward<Flex, 1> for Identity {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            grads.register::<Flex>(node.id, dy);
        }
    }
}

#[derive(Debug)]
struct MaskedIdentity;

impl Backward<Flex, 1> for MaskedIdentity {
    /// The clamped positions, ascending.
    type State = std::sync::Arc<Vec<u32>>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        // In place when the gradient buffer is not shared (the usual case), else in a copy.
        // (Its storage must be exactly the values: a row-major view may start at an offset.)
        let mut dx = into_contiguous(dy);
        let len = dx.shape().num_elements();
        if dx.try_storage_mut::<f32>().is_none_or(|v| v.len() != len) {
            dx = FlexTensor::from_data(TensorData::new(slice(&dx).to_vec(), dx.shape()));
        }
        if let Some(values) = dx.try_storage_mut::<f32>() {
            // `g·0`, what a 0/1 mask's product gives: ±0 by the sign of `g`, NaN for NaN or ±inf.
            for &i in ops.state.iter() {
                values[i as usize] *= 0.0;
            }
        }
        grads.register::<Flex>(node.id, dx);
    }
}

/// A plain (non-autodiff) Flex f32 tensor's buffer, owned for an in-place host update: no copy
/// when nothing else holds the buffer (the usual case for an optimizer's parameter, gradient
/// and moments), one copy otherwise. Reading through `TensorData` instead copied each operand
/// once more to realign its bytes.
pub struct HostBuffer {
    tensor: FlexTensor,
}

impl HostBuffer {
    /// The buffer of `t`, or `t` back unchanged when it is not a plain Flex f32 tensor.
    pub fn take<const D: usize>(t: Tensor<D>) -> Result<Self, Box<Tensor<D>>> {
        use burn::backend::{BackendTensor, DispatchTensorKind};
        let d = t.into_dispatch();
        let plain = d.autodiff == DispatchAutodiffContext::Disabled
            && d.dtype() == DType::F32
            && matches!(&d.kind, DispatchTensorKind::Flex(BackendTensor::Float(_)));
        if !plain {
            return Err(Box::new(Tensor::from_dispatch(d)));
        }
        match <DispatchTensor as DispatchKindConversion<Flex>>::try_into_backend(d) {
            Ok(BackendTensor::Float(p)) => Ok(Self::own(p)),
            _ => unreachable!("a plain Flex float tensor (checked above)"),
        }
    }

    /// Zeros of `shape`.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            tensor: FlexTensor::zeros(Shape::from(shape.to_vec()), DType::F32),
        }
    }

    /// `p` itself when it is unshared, contiguous and spans its whole buffer, else a copy.
    fn own(p: FlexTensor) -> Self {
        let whole = p
            .as_slice::<f32>()
            .is_some_and(|v| v.len() * 4 == p.bytes().len());
        if p.is_unique() && whole {
            return Self { tensor: p };
        }
        let values = slice(&contiguous(&p)).to_vec();
        Self {
            tensor: FlexTensor::from_data(TensorData::new(values, p.shape())),
        }
    }

    /// The values, row-major.
    pub fn values(&self) -> &[f32] {
        slice(&self.tensor)
    }

    /// The values, row-major, to update in place.
    pub fn values_mut(&mut self) -> &mut [f32] {
        self.tensor
            .try_storage_mut::<f32>()
            .unwrap_or_else(|| unreachable!("an owned, whole, unshared buffer (see `own`)"))
    }

    /// The updated tensor (plain Flex).
    pub fn into_tensor<const D: usize>(self) -> Tensor<D> {
        Tensor::from_primitive::<Flex>(self.tensor)
    }
}

/// The host convolution as a recorded operation. Parents: input, weight, bias (a zero
/// constant when there is none).
#[derive(Debug, Clone, Copy)]
struct HostConv(Geometry);

impl WeightedOp for HostConv {
    fn bias_len(&self) -> usize {
        self.0.out_channels
    }
    fn forward(&self, x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor {
        forward(x, w, b, &self.0)
    }
    fn backward(
        &self,
        x: Option<&FlexTensor>,
        w: Option<&FlexTensor>,
        dy: &FlexTensor,
        need: Needs,
    ) -> Grads {
        backward(x, w, dy, &self.0, need)
    }
}

/// `t` itself when row-major, else a row-major copy: no second handle on the buffer, so an
/// unshared buffer stays writable in place ([`contiguous`] of a borrowed `t` shares it).
pub(crate) fn into_contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// `t` with a row-major layout: `t` itself (sharing its buffer) when it already has one, else a
/// contiguous copy. [`slice`] then reads its values.
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The f32 values of a tensor made row-major by [`contiguous`].
pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .unwrap_or_else(|| unreachable!("made contiguous f32 by `contiguous`"))
}

fn flex(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Samples per rayon task: enough work per task to amortize its buffers and partial sums.
fn samples_per_task(g: &Geometry) -> usize {
    let per_sample = g.patch() * g.pixels() * g.out_channels;
    (1usize << 18).div_ceil(per_sample.max(1)).clamp(1, g.batch)
}

/// `y[b] = W · cols(x[b]) (+ bias)`, one GEMM per sample.
fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, g: &Geometry) -> FlexTensor {
    let (x, w) = (contiguous(x), contiguous(w));
    let b = b.map(contiguous);
    let (xs, ws) = (slice(&x), slice(&w));
    let bs = b.as_ref().map(slice);
    let (k, p, co) = (g.patch(), g.pixels(), g.out_channels);
    let len = g.batch * g.out_sample();
    // Not zero-filled: every sample's output is written in full below (the bias, or the
    // product with `read_dst` off).
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let per_task = samples_per_task(g);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(per_task * g.out_sample())
        .enumerate()
        .for_each(|(task, ys)| {
            let (mut cols, mut frame) = (vec![0.0f32; k * p], Vec::new());
            for (i, yb) in ys.chunks_exact_mut(g.out_sample()).enumerate() {
                let sample = task * per_task + i;
                let xb = &xs[sample * g.in_sample()..][..g.in_sample()];
                im2col(padded(xb, g, &mut frame), g, &mut cols);
                if let Some(bs) = bs {
                    for (row, &bias) in yb.chunks_exact_mut(p).zip(bs) {
                        row.iter_mut().for_each(|v| {
                            v.write(bias);
                        });
                    }
                }
                // yb[co, p] (bias +)= W[co, k] · cols[k, p]
                let (w_mat, cols_mat) =
                    (MatRef::row_major(ws, co, k), MatRef::row_major(&cols, k, p));
                // SAFETY: `yb` holds `co × p` slots, exclusively borrowed; with a bias they
                // were all written just above, and without one `gemm` writes every slot
                // without reading it (`read_dst` off).
                unsafe {
                    gemm_raw(
                        w_mat,
                        cols_mat,
                        yb.as_mut_ptr().cast::<f32>(),
                        bs.is_some(),
                        gemm::Parallelism::None,
                    )
                };
            }
        });
    // SAFETY: the tasks above wrote all `len` slots (each sample's `co × p` outputs).
    unsafe { y.set_len(len) };
    flex(y, [g.batch, co, g.ho, g.wo])
}

/// Which gradients the graph needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    pub(crate) dx: bool,
    pub(crate) dw: bool,
    pub(crate) db: bool,
}

/// Input, weight and bias gradients (each `None` when not needed).
pub(crate) type Grads = (Option<FlexTensor>, Option<FlexTensor>, Option<FlexTensor>);

/// Input, weight and bias gradients from the output gradient `dy`:
/// `dW = Σ_b dy[b] · cols(x[b])ᵀ`, `db = Σ_b,pixels dy[b]`, `dx[b] = col2im(Wᵀ · dy[b])`.
///
/// `x` is read only for dW and `w` only for dx (each is `Some` when that gradient is needed).
fn backward(
    x: Option<&FlexTensor>,
    w: Option<&FlexTensor>,
    dy: &FlexTensor,
    g: &Geometry,
    need: Needs,
) -> Grads {
    let (x, w, dy) = (x.map(contiguous), w.map(contiguous), contiguous(dy));
    let (xs, ws, dys) = (
        x.as_ref().map_or(&[][..], slice),
        w.as_ref().map_or(&[][..], slice),
        slice(&dy),
    );
    let (k, p, co) = (g.patch(), g.pixels(), g.out_channels);
    let per_task = samples_per_task(g);
    let tasks = g.batch.div_ceil(per_task);
    let dx_len = if need.dx { g.batch * g.in_sample() } else { 0 };
    // Zero-filled by each task, in its own thread and while it is in cache, not up front.
    let mut dx: Vec<f32> = Vec::with_capacity(dx_len);
    // Per task: its samples' input-gradient rows (empty when not needed) and its partial dW, db.
    let dx_chunks: Vec<&mut [MaybeUninit<f32>]> = if need.dx {
        dx.spare_capacity_mut()[..dx_len]
            .chunks_mut(per_task * g.in_sample())
            .collect()
    } else {
        (0..tasks).map(|_| &mut [][..]).collect()
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(task, dx_task)| {
            for v in dx_task.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every slot of `dx_task` was initialized just above; `MaybeUninit<f32>`
            // has the layout of `f32`, and the slice stays exclusively borrowed.
            let dx_task: &mut [f32] = unsafe {
                std::slice::from_raw_parts_mut(dx_task.as_mut_ptr().cast(), dx_task.len())
            };
            let mut dw = vec![0.0f32; if need.dw { co * k } else { 0 }];
            let mut db = vec![0.0f32; if need.db { co } else { 0 }];
            let (mut cols, mut frame) = (vec![0.0f32; k * p], Vec::new());
            let first = task * per_task;
            let last = (first + per_task).min(g.batch);
            for sample in first..last {
                let dyb = &dys[sample * g.out_sample()..][..g.out_sample()];
                if need.dw {
                    let xb = &xs[sample * g.in_sample()..][..g.in_sample()];
                    im2col(padded(xb, g, &mut frame), g, &mut cols);
                    // dw[co, k] += dy[b][co, p] · cols[k, p]ᵀ
                    matmul(
                        MatRef::row_major(dyb, co, p),
                        MatRef::col_major(&cols, p, k),
                        &mut dw,
                        sample > first,
                    );
                }
                if need.db {
                    for (acc, row) in db.iter_mut().zip(dyb.chunks_exact(p)) {
                        *acc += lane_sum(row);
                    }
                }
                if need.dx {
                    // cols[k, p] = W[co, k]ᵀ · dy[b][co, p], then scattered back onto the input.
                    matmul(
                        MatRef::col_major(ws, k, co),
                        MatRef::row_major(dyb, co, p),
                        &mut cols,
                        false,
                    );
                    let dxb = &mut dx_task[(sample - first) * g.in_sample()..][..g.in_sample()];
                    col2im(&cols, g, dxb, &mut frame);
                }
            }
            (dw, db)
        })
        .collect();
    // The tasks' partial sums, added in task order (deterministic).
    let sum = |parts: Vec<&Vec<f32>>, len: usize| {
        let mut total = vec![0.0f32; len];
        for part in parts {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        total
    };
    let dw = need.dw.then(|| {
        let parts = partials.iter().map(|p| &p.0).collect();
        flex(sum(parts, co * k), [co, g.channels, g.kh, g.kw])
    });
    let db = need.db.then(|| {
        let parts = partials.iter().map(|p| &p.1).collect();
        FlexTensor::from_data(TensorData::new(sum(parts, co), [co]))
    });
    // SAFETY: the tasks zero-filled all `dx_len` slots of the spare capacity (and then added
    // into them); with `need.dx` false, `dx_len` is 0.
    unsafe { dx.set_len(dx_len) };
    let dx = need.dx.then(|| flex(dx, [g.batch, g.channels, g.h, g.w]));
    (dx, dw, db)
}

/// Sum of `v` in 8 interleaved partial sums (a single running sum is a serial chain of
/// dependent adds that cannot vectorize), combined at the end.
fn lane_sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut blocks = v.chunks_exact(8);
    for block in &mut blocks {
        for (l, x) in lanes.iter_mut().zip(block) {
            *l += x;
        }
    }
    let tail: f32 = blocks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + tail
}

/// A read-only matrix view: `rows × cols` with element `(r, c)` at `r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// `data` holds the matrix row after row.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols);
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// `data` holds the matrix column after column (the transpose of a row-major `cols × rows`).
    pub(crate) fn col_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols);
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }
}

/// `dst (+)= lhs · rhs` with `dst` row-major `lhs.rows × rhs.cols`, on the calling thread (the
/// callers already split the batch over rayon).
fn matmul(lhs: MatRef, rhs: MatRef, dst: &mut [f32], accumulate: bool) {
    assert!(dst.len() >= lhs.rows * rhs.cols);
    // SAFETY: `dst` holds `lhs.rows × rhs.cols` initialized values and is borrowed mutably
    // while the inputs are borrowed immutably (no aliasing).
    unsafe {
        gemm_raw(
            lhs,
            rhs,
            dst.as_mut_ptr(),
            accumulate,
            gemm::Parallelism::None,
        )
    }
}

/// `lhs · rhs` in a new row-major buffer, written by `gemm` without zero-filling it first;
/// split over rayon's threads when the product is as large as burn-flex's own threshold for
/// that (192³ multiply-adds), so the partition — and so every bit — is the one burn's
/// `matmul` would give.
pub(crate) fn matmul_new(lhs: MatRef, rhs: MatRef) -> Vec<f32> {
    let len = lhs.rows * rhs.cols;
    let parallelism = if lhs.rows * rhs.cols * lhs.cols >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut dst = Vec::with_capacity(len);
    // SAFETY: with `read_dst = false`, `gemm` zeroes its `alpha` and stores every element of
    // the `rows × cols` destination without reading it (`k = 0` stores zeros), so the
    // `len` values are initialized when it returns; the buffer has capacity `len`.
    unsafe {
        gemm_raw(lhs, rhs, dst.as_mut_ptr(), false, parallelism);
        dst.set_len(len);
    }
    dst
}

/// `dst = (read_dst ? dst : 0) + lhs · rhs`, `dst` row-major `lhs.rows × rhs.cols`.
///
/// # Safety
/// `dst` must be valid for `lhs.rows × rhs.cols` writes (and reads, with `read_dst`, of
/// initialized values) and must not overlap `lhs` or `rhs`.
unsafe fn gemm_raw(
    lhs: MatRef,
    rhs: MatRef,
    dst: *mut f32,
    read_dst: bool,
    parallelism: gemm::Parallelism,
) {
    assert_eq!(lhs.cols, rhs.rows);
    let as_isize = |v: usize| v as isize;
    // SAFETY: the assert above and those in `MatRef`'s constructors keep every index `gemm`
    // forms (`r·row_stride + c·col_stride` for r < rows, c < cols) inside the input slices; the
    // caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.cols,
            lhs.cols,
            dst,
            1,
            as_isize(rhs.cols),
            read_dst,
            lhs.data.as_ptr(),
            as_isize(lhs.col_stride),
            as_isize(lhs.row_stride),
            rhs.data.as_ptr(),
            as_isize(rhs.col_stride),
            as_isize(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// One sample's input in the padded frame `[C, Hp, Wp]` (`Hp = Ho + Kh − 1`, likewise `Wp`), so
/// every patch row is `Ho` full runs of `Wo` values: borrowed as is when there is no padding,
/// else copied into `buf` with zero borders.
fn padded<'a>(x: &'a [f32], g: &Geometry, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if g.unpadded() {
        return x;
    }
    let (hp, wp) = g.frame();
    buf.clear();
    buf.resize(g.channels * hp * wp, 0.0);
    for (src, dst, n) in g.frame_rows() {
        buf[dst..dst + n].copy_from_slice(&x[src..src + n]);
    }
    buf
}

/// The patch matrix `[C·Kh·Kw, Ho·Wo]` of one padded sample `xp` ([`padded`]): row
/// `(c, ky, kx)` holds, for every output pixel, the input under that kernel tap.
fn im2col(xp: &[f32], g: &Geometry, cols: &mut [f32]) {
    // 8-lane copies with AVX2 (the baseline x86-64 target has only SSE).
    with_avx2!(im2col_body(xp, g, cols))
}

#[inline(always)]
fn im2col_body(xp: &[f32], g: &Geometry, cols: &mut [f32]) {
    let (p, (hp, wp)) = (g.pixels(), g.frame());
    for c in 0..g.channels {
        let plane = &xp[c * hp * wp..][..hp * wp];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &mut cols[((c * g.kh + ky) * g.kw + kx) * p..][..p];
                for (oy, dst) in row.chunks_exact_mut(g.wo).enumerate() {
                    copy_run(dst, &plane[(oy + ky) * wp + kx..][..g.wo]);
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of im2col (a kernel row's span of one image
/// row, 10–28 values for LeNet-5) without a `memmove` call per run, which `perf` showed costing
/// more than the copy: 8-value blocks, the tail as one more block that overlaps the last.
#[inline]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    const B: usize = 8;
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    if n < B {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
        return;
    }
    let block = |i: usize, dst: &mut [f32]| {
        let s: [f32; B] = src[i..i + B]
            .try_into()
            .unwrap_or_else(|_| unreachable!("an 8-value slice"));
        dst[i..i + B].copy_from_slice(&s);
    };
    let mut i = 0;
    while i + B <= n {
        block(i, dst);
        i += B;
    }
    if i < n {
        block(n - B, dst);
    }
}

/// The adjoint of [`im2col`] and [`padded`]: adds every patch-matrix entry back onto the input
/// position it was read from. `dx` is `[C, H, W]`, zeroed by the caller; `buf` is scratch for
/// the padded frame.
fn col2im(cols: &[f32], g: &Geometry, dx: &mut [f32], buf: &mut Vec<f32>) {
    // 8-lane adds with AVX2.
    with_avx2!(col2im_body(cols, g, dx, buf))
}

#[inline(always)]
fn col2im_body(cols: &[f32], g: &Geometry, dx: &mut [f32], buf: &mut Vec<f32>) {
    let (p, (hp, wp)) = (g.pixels(), g.frame());
    let direct = g.unpadded();
    if !direct {
        buf.clear();
        buf.resize(g.channels * hp * wp, 0.0);
    }
    let frame: &mut [f32] = if direct { dx } else { buf };
    for c in 0..g.channels {
        let plane = &mut frame[c * hp * wp..][..hp * wp];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &cols[((c * g.kh + ky) * g.kw + kx) * p..][..p];
                for (oy, src) in row.chunks_exact(g.wo).enumerate() {
                    let dst = &mut plane[(oy + ky) * wp + kx..][..g.wo];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
        }
    }
    if !direct {
        for (dst, src, n) in g.frame_rows() {
            dx[dst..dst + n].copy_from_slice(&buf[src..src + n]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use burn::tensor::Tolerance;

    use super::*;

    thread_local! {
        /// Convolutions that took the host path on this thread (so a test cannot pass by
        /// silently falling back to burn's op).
        pub(super) static HOST_CALLS: Cell<usize> = const { Cell::new(0) };
        /// Clipped straight-throughs recorded as one node on this thread.
        pub(crate) static MASK_CALLS: Cell<usize> = const { Cell::new(0) };
        /// Straight-throughs recorded as one identity node on this thread.
        pub(crate) static IDENTITY_CALLS: Cell<usize> = const { Cell::new(0) };
    }

    fn host_calls() -> usize {
        HOST_CALLS.with(Cell::get)
    }

    /// Deterministic values in [-1, 1) on the autodiff device (xorshift).
    pub(crate) fn rand4(dims: [usize; 4], seed: u64) -> Tensor<4> {
        rand(dims, seed)
    }

    /// Deterministic values in [-1, 1) on the autodiff device (xorshift), any rank.
    pub(crate) fn rand<const D: usize>(dims: [usize; D], seed: u64) -> Tensor<D> {
        let n: usize = dims.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_data(TensorData::new(v, dims), &Device::flex().autodiff())
    }

    /// How the input enters the convolution: a leaf that requires a gradient, an intermediate
    /// result of a tracked op (its gradient is read from the leaf), or a constant batch.
    #[derive(Clone, Copy, PartialEq)]
    enum Input {
        Leaf,
        Intermediate,
        Constant,
    }

    /// Forward, input gradient, weight gradient and bias gradient against burn's `conv2d`.
    fn check(x: [usize; 4], wd: [usize; 4], options: ConvOptions<2>) {
        let host = options.stride == [1, 1] && options.dilation == [1, 1];
        for input in [Input::Leaf, Input::Intermediate, Input::Constant] {
            let before = host_calls();
            check_input(x, wd, options.clone(), input);
            assert_eq!(host_calls() - before, usize::from(host), "host path taken?");
        }
    }

    fn check_input(x: [usize; 4], wd: [usize; 4], options: ConvOptions<2>, input: Input) {
        let run = |fast: bool| {
            let leaf = rand4(x, 1);
            let leaf = if input == Input::Constant {
                leaf
            } else {
                leaf.require_grad()
            };
            let xt = if input == Input::Intermediate {
                leaf.clone() * 2.0
            } else {
                leaf.clone()
            };
            let wt = rand4(wd, 2).require_grad();
            let bt: Tensor<1> = rand4([1, 1, 1, wd[0]], 3).reshape([wd[0]]).require_grad();
            let y = if fast {
                conv2d(xt.clone(), wt.clone(), Some(bt.clone()), options.clone())
            } else {
                burn_conv2d(xt.clone(), wt.clone(), Some(bt.clone()), options.clone())
            };
            // A non-uniform upstream gradient: weight the outputs.
            let g = rand4(y.dims(), 4);
            let grads = (y.clone() * g).sum().backward();
            (
                y.inner(),
                leaf.grad(&grads),
                wt.grad(&grads).unwrap(),
                bt.grad(&grads).unwrap(),
            )
        };
        let (y0, gx0, gw0, gb0) = run(false);
        let (y1, gx1, gw1, gb1) = run(true);
        let tol = Tolerance::<f32>::relative(1e-4).set_absolute(1e-4);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        match (gx1, gx0) {
            (Some(a), Some(b)) => a.into_data().assert_approx_eq(&b.into_data(), tol),
            (None, None) => assert!(input == Input::Constant),
            _ => panic!("input gradient present in only one of the two paths"),
        }
        gw1.into_data().assert_approx_eq(&gw0.into_data(), tol);
        gb1.into_data().assert_approx_eq(&gb0.into_data(), tol);
    }

    #[test]
    fn lenet_shapes_match_burn() {
        check(
            [3, 1, 28, 28],
            [6, 1, 5, 5],
            ConvOptions::new([1, 1], [2, 2], [1, 1], 1),
        );
        check(
            [3, 6, 14, 14],
            [16, 6, 5, 5],
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
    }

    #[test]
    fn kernel_widths_padding_and_parallel_split_match_burn() {
        // Kernel widths 2–4, asymmetric padding that cuts windows on both sides, padding wider
        // than a kernel row (taps that never touch the image), and a batch large enough to be
        // split into several rayon tasks.
        check(
            [4, 2, 9, 8],
            [3, 2, 3, 3],
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        check(
            [2, 3, 7, 6],
            [2, 3, 4, 2],
            ConvOptions::new_with_padding([1, 1], [(2, 1), (0, 1)], [1, 1], 1),
        );
        check(
            [2, 1, 6, 6],
            [2, 1, 3, 4],
            ConvOptions::new([1, 1], [1, 3], [1, 1], 1),
        );
        check(
            [40, 1, 28, 28],
            [6, 1, 5, 5],
            ConvOptions::new([1, 1], [2, 2], [1, 1], 1),
        );
    }

    #[test]
    fn strided_and_dilated_convolutions_fall_back_to_burn() {
        check(
            [2, 3, 9, 8],
            [4, 3, 3, 3],
            ConvOptions::new([2, 1], [1, 0], [1, 2], 1),
        );
        check(
            [2, 2, 7, 6],
            [3, 2, 3, 2],
            ConvOptions::new_with_padding([1, 2], [(0, 1), (2, 0)], [1, 1], 1),
        );
    }

    #[test]
    fn hand_computed_padded_convolution() {
        // 1×1×2×2 input, 1×1×3×3 all-ones kernel, padding 1: every output is the sum of the
        // inputs its window covers, which with a 2×2 input is all four.
        let d = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2., 3., 4.], [1, 1, 2, 2]), &d);
        let w = Tensor::<4>::ones([1, 1, 3, 3], &d);
        let y = conv2d(x, w, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), vec![10.0; 4]);
    }

    #[test]
    fn hand_computed_unpadded_convolution() {
        // x = 1..9 as 3×3, kernel [[1, 2], [3, 4]]: y[i][j] = x[i][j] + 2x[i][j+1] + 3x[i+1][j]
        // + 4x[i+1][j+1], e.g. y[0][0] = 1 + 4 + 12 + 20 = 37.
        let d = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &d,
        );
        let w = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2., 3., 4.], [1, 1, 2, 2]), &d);
        let b = Tensor::<1>::from_data(TensorData::new(vec![0.5f32], [1]), &d);
        let y = conv2d(x, w, Some(b), ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        assert_eq!(
            y.into_data().try_to_vec::<f32>().unwrap(),
            vec![37.5, 47.5, 67.5, 77.5]
        );
    }

    #[test]
    fn without_bias_and_on_a_plain_device() {
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        // No bias, autodiff on: values and both gradients.
        let run = |host: bool| {
            let xt = rand4([2, 3, 6, 5], 11).require_grad();
            let wt = rand4([4, 3, 3, 3], 12).require_grad();
            let y = if host {
                conv2d(xt.clone(), wt.clone(), None, opts.clone())
            } else {
                burn_conv2d(xt.clone(), wt.clone(), None, opts.clone())
            };
            let grads = (y.clone() * rand4(y.dims(), 13)).sum().backward();
            (
                y.inner().into_data(),
                xt.grad(&grads).unwrap().into_data(),
                wt.grad(&grads).unwrap().into_data(),
            )
        };
        let tol = Tolerance::<f32>::relative(1e-4).set_absolute(1e-4);
        let (a, b) = (run(true), run(false));
        a.0.assert_approx_eq(&b.0, tol);
        a.1.assert_approx_eq(&b.1, tol);
        a.2.assert_approx_eq(&b.2, tol);
        // Autodiff off (evaluation, a frozen teacher): the plain forward.
        let x = rand4([2, 3, 6, 5], 11).inner();
        let w = rand4([4, 3, 3, 3], 12).inner();
        let bias = rand4([1, 1, 1, 4], 14).inner().reshape([4]);
        assert_eq!(x.device(), Device::flex());
        let before = host_calls();
        let host = conv2d(x.clone(), w.clone(), Some(bias.clone()), opts.clone());
        assert_eq!(host_calls(), before + 1);
        let reference = burn_conv2d(x, w, Some(bias), opts);
        host.into_data()
            .assert_approx_eq(&reference.into_data(), tol);
    }

    #[test]
    fn host_buffer_updates_in_place_without_touching_shared_tensors() {
        let d = Device::flex();
        let t = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2., 3., 4.], [2, 2]), &d);
        // Shared: the update goes to a copy, the other holder keeps its values.
        let other = t.clone();
        let mut buffer = HostBuffer::take(t).unwrap_or_else(|_| panic!("plain Flex f32"));
        buffer.values_mut()[0] = 10.0;
        let updated: Tensor<2> = buffer.into_tensor();
        assert_eq!(updated.dims(), [2, 2]);
        assert_eq!(
            updated.into_data().try_to_vec::<f32>().unwrap(),
            vec![10.0, 2., 3., 4.]
        );
        assert_eq!(
            other.clone().into_data().try_to_vec::<f32>().unwrap(),
            vec![1.0, 2., 3., 4.]
        );
        // A transposed view is read in row-major order of the view.
        let mut buffer =
            HostBuffer::take(other.transpose()).unwrap_or_else(|_| panic!("plain Flex f32"));
        assert_eq!(buffer.values(), &[1.0, 3., 2., 4.]);
        buffer.values_mut()[3] = 0.5;
        let back: Tensor<2> = buffer.into_tensor();
        assert_eq!(
            back.into_data().try_to_vec::<f32>().unwrap(),
            vec![1.0, 3., 2., 0.5]
        );
        // Autodiff and non-f32 tensors come back unchanged.
        let ad = rand4([1, 1, 2, 2], 5);
        assert!(HostBuffer::take(ad).is_err());
        let ints = Tensor::<2>::from_data(TensorData::new(vec![1.0f64, 2.], [1, 2]), &d);
        if ints.dtype() != DType::F32 {
            assert!(HostBuffer::take(ints).is_err());
        }
        assert_eq!(HostBuffer::zeros(&[2, 3]).values(), &[0.0; 6]);
    }

    #[test]
    fn weight_gradient_matches_finite_differences() {
        // L = Σ y·g for a small padded convolution; dL/dw[i] against (L(w+h) − L(w−h)) / 2h in
        // f64 on the host, for every weight and the bias.
        let d = Device::flex();
        let x = rand4([2, 2, 5, 4], 21).inner();
        let w0 = rand4([3, 2, 3, 2], 22).inner();
        let b0 = rand4([1, 1, 1, 3], 23).inner().reshape([3]);
        let opts = ConvOptions::new_with_padding([1, 1], [(1, 0), (1, 1)], [1, 1], 1);
        let g = rand4([2, 3, 4, 5], 24).inner();
        let loss = |w: &[f32], b: &[f32]| -> f64 {
            let w = Tensor::<4>::from_data(TensorData::new(w.to_vec(), [3, 2, 3, 2]), &d);
            let b = Tensor::<1>::from_data(TensorData::new(b.to_vec(), [3]), &d);
            let y = conv2d(x.clone(), w, Some(b), opts.clone());
            assert_eq!(y.dims(), [2, 3, 4, 5]);
            let y = y.into_data().try_to_vec::<f32>().unwrap();
            let g = g.clone().into_data().try_to_vec::<f32>().unwrap();
            y.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let ad = Device::flex().autodiff();
        let wt = Tensor::<4>::from_data(w0.clone().into_data(), &ad).require_grad();
        let bt = Tensor::<1>::from_data(b0.clone().into_data(), &ad).require_grad();
        let xt = Tensor::<4>::from_data(x.clone().into_data(), &ad);
        let y = conv2d(xt, wt.clone(), Some(bt.clone()), opts.clone());
        let grads = (y * Tensor::<4>::from_data(g.clone().into_data(), &ad))
            .sum()
            .backward();
        let analytic_w = wt
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let analytic_b = bt
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let (w, b) = (
            w0.into_data().try_to_vec::<f32>().unwrap(),
            b0.into_data().try_to_vec::<f32>().unwrap(),
        );
        let h = 1e-2f32;
        for i in 0..w.len() {
            let (mut plus, mut minus) = (w.clone(), w.clone());
            plus[i] += h;
            minus[i] -= h;
            let numeric = (loss(&plus, &b) - loss(&minus, &b)) / (2.0 * h as f64);
            assert!(
                (numeric - analytic_w[i] as f64).abs() < 2e-3,
                "dw[{i}]: {numeric} vs {}",
                analytic_w[i]
            );
        }
        for i in 0..b.len() {
            let (mut plus, mut minus) = (b.clone(), b.clone());
            plus[i] += h;
            minus[i] -= h;
            let numeric = (loss(&w, &plus) - loss(&w, &minus)) / (2.0 * h as f64);
            assert!((numeric - analytic_b[i] as f64).abs() < 2e-3, "db[{i}]");
        }
    }

    #[test]
    fn second_use_of_the_input_accumulates_its_gradient() {
        // x feeds the convolution and, directly, the loss: dx must be the sum of both paths.
        let run = |host: bool| {
            let xt = rand4([2, 2, 6, 6], 31).require_grad();
            let wt = rand4([3, 2, 3, 3], 32).require_grad();
            let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            let y = if host {
                conv2d(xt.clone(), wt.clone(), None, opts)
            } else {
                burn_conv2d(xt.clone(), wt.clone(), None, opts)
            };
            let loss = (y.clone() * y).sum() + (xt.clone() * 3.0).sum();
            let grads = loss.backward();
            xt.grad(&grads).unwrap().into_data()
        };
        run(true).assert_approx_eq(
            &run(false),
            Tolerance::<f32>::relative(1e-4).set_absolute(1e-4),
        );
    }
}

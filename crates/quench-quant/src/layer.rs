//! Layers whose kind is data: `QuantLinear` and `QuantConv2d` wrap burn's own `Linear` /
//! `Conv2d` and are float, fake-quantized (weight + input-activation quantizers), ternary
//! (BitNet b1.58) or binary (BitNet b1) according to a [`LayerQuant`] from the recipe.
//!
//! Keeping burn's layer inside (rather than copying its weight fields) means a float
//! checkpoint's record loads into a QAT model unchanged (`inner.weight`, `inner.bias`), so a
//! float model can be fine-tuned with QAT, and export reads the same latent weights.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d, RmsNorm, RmsNormConfig};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::QuantError;
use crate::quantizer::Quantizer;
use crate::spec::QuantSpec;
use crate::ternary::{
    absmax_quant_activation, binary_codes, binary_weight, ternary_codes, ternary_weight,
};

/// What a layer computes with: the per-layer choice a recipe makes by layer-name pattern.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum LayerQuant {
    /// Plain f32.
    #[default]
    Float,
    /// Fake quantization: an optional weight spec and an optional input-activation spec.
    Qat {
        /// Weight quantizer spec (`None`: float weights).
        weight: Option<QuantSpec>,
        /// Input-activation quantizer spec (`None`: float activations).
        input: Option<QuantSpec>,
    },
    /// BitNet b1.58: ternary weights (per-tensor absmean γ), 8-bit absmax per-token activations,
    /// RMSNorm of the input inside the layer when `norm` (SubLN).
    Ternary {
        /// Normalize the input with a learned RMSNorm before quantizing it.
        norm: bool,
    },
    /// BitNet b1: binary weights sign(W − mean W)·mean|W|, 8-bit absmax activations.
    Binary {
        /// As for `Ternary`.
        norm: bool,
    },
}

impl LayerQuant {
    /// Weight bits this layer is stored with after export (32 for float).
    pub fn weight_bits(&self) -> f32 {
        match self {
            LayerQuant::Float => 32.0,
            LayerQuant::Qat { weight: None, .. } => 32.0,
            LayerQuant::Qat {
                weight: Some(s), ..
            } => s.bits as f32,
            LayerQuant::Ternary { .. } => 1.58,
            LayerQuant::Binary { .. } => 1.0,
        }
    }

    /// Short label for reports: `float`, `w4a8`, `w8`, `ternary`, `binary`.
    pub fn label(&self) -> String {
        match self {
            LayerQuant::Float => "float".into(),
            LayerQuant::Qat { weight, input } => {
                let mut s = String::new();
                if let Some(w) = weight {
                    s.push_str(&format!("w{}", w.bits));
                }
                if let Some(a) = input {
                    s.push_str(&format!("a{}", a.bits));
                }
                if s.is_empty() { "float".into() } else { s }
            }
            LayerQuant::Ternary { .. } => "ternary".into(),
            LayerQuant::Binary { .. } => "binary".into(),
        }
    }
}

/// Per-operand quantizers and the BitNet norm shared by both layer types.
#[derive(Module, Debug)]
pub struct Operands {
    /// Weight fake-quantizer (QAT).
    pub weight_q: Option<Quantizer>,
    /// Input-activation fake-quantizer (QAT).
    pub input_q: Option<Quantizer>,
    /// SubLN RMSNorm of the input (BitNet with `norm`).
    pub norm: Option<RmsNorm>,
    #[module(skip)]
    kind: LayerQuant,
}

impl Operands {
    fn new(
        kind: &LayerQuant,
        weight_dims: &[usize],
        channel_axis: usize,
        norm_dim: usize,
        device: &Device,
    ) -> Result<Self, QuantError> {
        let (weight_q, input_q, norm) = match kind {
            LayerQuant::Float => (None, None, None),
            LayerQuant::Qat { weight, input } => (
                weight
                    .as_ref()
                    .map(|s| Quantizer::for_weight(s, weight_dims, channel_axis, device))
                    .transpose()?,
                input
                    .as_ref()
                    .map(|s| Quantizer::for_activation(s, device))
                    .transpose()?,
                None,
            ),
            LayerQuant::Ternary { norm } | LayerQuant::Binary { norm } => (
                None,
                None,
                norm.then(|| RmsNormConfig::new(norm_dim).init(device)),
            ),
        };
        Ok(Self {
            weight_q,
            input_q,
            norm,
            kind: kind.clone(),
        })
    }

    fn weight<const D: usize>(&self, w: Tensor<D>, training: bool) -> Tensor<D> {
        match &self.kind {
            LayerQuant::Float => w,
            LayerQuant::Qat { .. } => match &self.weight_q {
                Some(q) => q.forward(w, training),
                None => w,
            },
            LayerQuant::Ternary { .. } => ternary_weight(w),
            LayerQuant::Binary { .. } => binary_weight(w),
        }
    }

    fn input<const D: usize>(&self, x: Tensor<D>, training: bool, feature_dim: usize) -> Tensor<D> {
        match &self.kind {
            LayerQuant::Float => x,
            LayerQuant::Qat { .. } => match &self.input_q {
                Some(q) => q.forward(x, training),
                None => x,
            },
            LayerQuant::Ternary { .. } | LayerQuant::Binary { .. } => {
                let x = match &self.norm {
                    // RmsNorm normalizes the last dim: move the feature dim there and back.
                    Some(n) if feature_dim + 1 == D => n.forward(x),
                    Some(n) => n
                        .forward(x.swap_dims(feature_dim, D - 1))
                        .swap_dims(feature_dim, D - 1),
                    None => x,
                };
                if feature_dim + 1 == D {
                    absmax_quant_activation(x, 8)
                } else {
                    // Per token = per spatial position for convolutions: absmax over channels.
                    absmax_quant_activation(x.swap_dims(feature_dim, D - 1), 8)
                        .swap_dims(feature_dim, D - 1)
                }
            }
        }
    }

    /// The layer's kind.
    pub fn kind(&self) -> &LayerQuant {
        &self.kind
    }

    /// Turns fake quantization on or off (QAT quantizers; BitNet layers are always quantized).
    pub fn set_fake_quant(mut self, enabled: bool) -> Self {
        self.weight_q = self.weight_q.map(|q| q.set_enabled(enabled));
        self.input_q = self.input_q.map(|q| q.set_enabled(enabled));
        self
    }

    /// Freezes the observers of both quantizers (ranges stop updating).
    pub fn freeze_observers(mut self) -> Self {
        self.weight_q = self.weight_q.map(|q| q.freeze_observer());
        self.input_q = self.input_q.map(|q| q.freeze_observer());
        self
    }
}

/// A layer's weight as exported: integer codes with their scales and zero-points, or f32.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportedWeight {
    /// Left in f32 (row-major, burn's layout).
    Float(Vec<f32>),
    /// Integer codes: `w = (code − zp)·scale`, exactly the values the trained forward used.
    Int {
        /// Codes, row-major in burn's weight layout.
        codes: Vec<i32>,
        /// One scale per channel / group / tensor (layout order).
        scales: Vec<f32>,
        /// One zero-point per scale.
        zero_points: Vec<i32>,
        /// Bits per code (2 for ternary, 1 for binary).
        bits: u32,
        /// Whether codes are signed.
        signed: bool,
        /// `qat`, `ternary` or `binary`.
        scheme: &'static str,
    },
}

/// How an exported layer quantizes its input at inference.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportedInput {
    /// Not quantized.
    Float,
    /// Fixed scale/zero-point (observers after training, LSQ steps, PACT clips): fake-quantize
    /// with `(scale, zero_point, qmin, qmax)`; PACT also clips to `[0, clip]` / `[-clip, clip]`.
    Static {
        /// Scales (one for per-tensor).
        scales: Vec<f32>,
        /// Zero-points.
        zero_points: Vec<i32>,
        /// Code range.
        qmin: i32,
        /// Code range.
        qmax: i32,
        /// PACT clip (α) and whether it is symmetric, when the spec is PACT.
        pact: Option<(f32, bool)>,
    },
    /// Per-token ranges computed from each input (min/max over the feature dim).
    PerToken {
        /// The spec whose range formula applies.
        spec: QuantSpec,
    },
    /// BitNet: optional RMSNorm (its learned scale and ε), then 8-bit absmax per token.
    Absmax8 {
        /// RMSNorm gamma over the input features, when the layer normalizes.
        norm: Option<(Vec<f32>, f64)>,
    },
}

/// Numbers a quantized layer reports to TensorBoard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerReport {
    /// Mean weight scale (QAT), or γ / β (ternary / binary).
    pub weight_scale: Option<f32>,
    /// Mean weight zero-point (QAT).
    pub weight_zero_point: Option<f32>,
    /// Mean input scale (static input quantizers).
    pub input_scale: Option<f32>,
    /// Mean input zero-point.
    pub input_zero_point: Option<f32>,
    /// Learned PACT clip α.
    pub input_clip: Option<f32>,
    /// ‖w − q(w)‖ / ‖w‖ of the latent weight.
    pub weight_error: Option<f32>,
    /// Fractions of weights at −1, 0, +1 (ternary / binary).
    pub ternary_fractions: Option<[f32; 3]>,
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

fn mean(v: &[f32]) -> Option<f32> {
    (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
}

impl Operands {
    /// The integer (or float) weight this layer exports for the latent weight `w`.
    pub fn export_weight<const D: usize>(&self, w: Tensor<D>) -> ExportedWeight {
        let w = w.detach();
        match (&self.kind, &self.weight_q) {
            (LayerQuant::Qat { .. }, Some(q)) => {
                let (codes, scales, zero_points) = q.quantize_to_int(w);
                ExportedWeight::Int {
                    codes,
                    scales,
                    zero_points,
                    bits: q.spec().bits,
                    signed: q.spec().signed,
                    scheme: "qat",
                }
            }
            (LayerQuant::Ternary { .. }, _) => {
                let (codes, gamma) = ternary_codes(w);
                ExportedWeight::Int {
                    codes: codes.into_iter().map(i32::from).collect(),
                    scales: vec![gamma],
                    zero_points: vec![0],
                    bits: 2,
                    signed: true,
                    scheme: "ternary",
                }
            }
            (LayerQuant::Binary { .. }, _) => {
                let (codes, beta) = binary_codes(w);
                ExportedWeight::Int {
                    codes: codes.into_iter().map(i32::from).collect(),
                    scales: vec![beta],
                    zero_points: vec![0],
                    bits: 1,
                    signed: true,
                    scheme: "binary",
                }
            }
            _ => ExportedWeight::Float(
                w.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default(),
            ),
        }
    }

    /// How the input is quantized at inference (after training: observers are fixed).
    pub fn export_input(&self) -> ExportedInput {
        match &self.kind {
            LayerQuant::Float | LayerQuant::Qat { input: None, .. } => ExportedInput::Float,
            LayerQuant::Qat { input: Some(_), .. } => {
                let Some(q) = &self.input_q else {
                    return ExportedInput::Float;
                };
                if !q.is_enabled() {
                    return ExportedInput::Float;
                }
                let spec = q.spec().clone();
                if spec.granularity == crate::spec::Granularity::PerToken {
                    return ExportedInput::PerToken { spec };
                }
                let (qmin, qmax) = spec.qrange();
                match q.scale_zero_point() {
                    Some((s, zp)) => {
                        let scales = host(s);
                        let pact = (spec.estimator == crate::spec::Estimator::Pact)
                            .then(|| (scales[0] * qmax as f32, spec.signed));
                        ExportedInput::Static {
                            scales,
                            zero_points: host(zp).into_iter().map(|z| z as i32).collect(),
                            qmin,
                            qmax,
                            pact,
                        }
                    }
                    // Never observed: the forward uses each input's own range.
                    None => ExportedInput::PerToken { spec },
                }
            }
            LayerQuant::Ternary { .. } | LayerQuant::Binary { .. } => ExportedInput::Absmax8 {
                norm: self.norm.as_ref().map(|n| (host(n.gamma.val()), n.epsilon)),
            },
        }
    }

    /// Scales, zero-points, quantization error and code fractions of this layer for `w`.
    pub fn report<const D: usize>(&self, w: Tensor<D>) -> LayerReport {
        let w = w.detach();
        let mut r = LayerReport::default();
        if matches!(self.kind, LayerQuant::Float) {
            return r;
        }
        let q = self.weight(w.clone(), false);
        let norm = w.clone().powf_scalar(2.0).sum().sqrt().into_scalar::<f32>();
        let err = (w.clone() - q)
            .powf_scalar(2.0)
            .sum()
            .sqrt()
            .into_scalar::<f32>();
        if norm > 0.0 && !matches!(self.kind, LayerQuant::Qat { weight: None, .. }) {
            r.weight_error = Some(err / norm);
        }
        match self.export_weight(w) {
            ExportedWeight::Int {
                codes,
                scales,
                zero_points,
                scheme,
                ..
            } => {
                r.weight_scale = mean(&scales);
                r.weight_zero_point =
                    mean(&zero_points.iter().map(|&z| z as f32).collect::<Vec<_>>());
                if scheme != "qat" {
                    let n = codes.len().max(1) as f32;
                    let count = |c: i32| codes.iter().filter(|&&x| x == c).count() as f32 / n;
                    r.ternary_fractions = Some([count(-1), count(0), count(1)]);
                }
            }
            ExportedWeight::Float(_) => {}
        }
        if let ExportedInput::Static {
            scales,
            zero_points,
            pact,
            ..
        } = self.export_input()
        {
            r.input_scale = mean(&scales);
            r.input_zero_point = mean(&zero_points.iter().map(|&z| z as f32).collect::<Vec<_>>());
            r.input_clip = pact.map(|p| p.0);
        }
        r
    }
}

/// A `Linear` whose weight and input are float, fake-quantized, ternary or binary.
#[derive(Module, Debug)]
pub struct QuantLinear {
    /// burn's layer holding the latent f32 weight `[d_in, d_out]` and bias.
    pub inner: Linear,
    /// Quantizers / norm.
    pub ops: Operands,
}

impl QuantLinear {
    /// Wraps a float `Linear` (fresh or loaded from a float checkpoint) as `kind`.
    pub fn from_linear(inner: Linear, kind: &LayerQuant) -> Result<Self, QuantError> {
        let dims = inner.weight.val().dims();
        let device = inner.weight.lazy_device();
        let ops = Operands::new(kind, &dims, 1, dims[0], &device)?;
        Ok(Self { inner, ops })
    }

    /// The effective weight the forward uses (fake-quantized / ternary / float), not observing.
    pub fn effective_weight(&self) -> Tensor<2> {
        self.ops.weight(self.inner.weight.val(), false)
    }

    /// `y = q(x)·q(W) + b`. Observers update only in training (autodiff) forwards.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.inner.weight.val();
        let training = w.is_require_grad();
        let x = self.ops.input(x, training, D - 1);
        let w = self.ops.weight(w, training);
        crate::dense::linear(x, w, self.inner.bias.as_ref().map(|b| b.val()))
    }
}

/// A `Conv2d` whose weight and input are float, fake-quantized, ternary or binary.
#[derive(Module, Debug)]
pub struct QuantConv2d {
    /// burn's layer holding the latent f32 weight `[out, in/groups, kh, kw]` and bias.
    pub inner: Conv2d,
    /// Quantizers / norm.
    pub ops: Operands,
}

impl QuantConv2d {
    /// Wraps a float `Conv2d` as `kind` (per-channel weight specs use the output-channel axis 0).
    pub fn from_conv(inner: Conv2d, kind: &LayerQuant) -> Result<Self, QuantError> {
        let dims = inner.weight.val().dims();
        let device = inner.weight.lazy_device();
        let in_channels = dims[1] * inner.groups;
        let ops = Operands::new(kind, &dims, 0, in_channels, &device)?;
        Ok(Self { inner, ops })
    }

    /// The effective weight the forward uses, not observing.
    pub fn effective_weight(&self) -> Tensor<4> {
        self.ops.weight(self.inner.weight.val(), false)
    }

    /// Convolution of the quantized input with the quantized weight (burn's padding rules).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = &self.inner;
        let [_, _, h, w] = x.dims();
        let ((top, bottom), (left, right)) =
            padding_pairs(&c.padding, h, w, c.kernel_size, c.stride);
        let options = ConvOptions::new_with_padding(
            c.stride,
            [(top, bottom), (left, right)],
            c.dilation,
            c.groups,
        );
        let weight = c.weight.val();
        let training = weight.is_require_grad();
        let x = self.ops.input(x, training, 1);
        let weight = self.ops.weight(weight, training);
        // burn's `conv2d` semantics; a custom autodiff op on Flex (see `flexops`).
        crate::flexops::conv2d(x, weight, c.bias.as_ref().map(|b| b.val()), options)
    }
}

/// burn's padding rule for `Conv2d` (its helper is crate-private, so it is restated here).
fn padding_pairs(
    padding: &PaddingConfig2d,
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
) -> ((usize, usize), (usize, usize)) {
    let same = |k: usize, s: usize, n: usize| {
        let out = n.div_ceil(s);
        let total = if out > 0 {
            ((out - 1) * s + k).saturating_sub(n)
        } else {
            0
        };
        (total / 2, total - total / 2)
    };
    match padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => (same(kernel[0], stride[0], h), same(kernel[1], stride[1], w)),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((*top, *bottom), (*left, *right)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::TensorData;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn linear_with(w: [[f32; 2]; 3], device: &Device) -> Linear {
        let mut l = LinearConfig::new(3, 2).with_bias(false).init(device);
        l.weight = burn::module::Param::from_tensor(Tensor::from_data(w, device));
        l
    }

    #[test]
    fn float_conv_equals_burn_conv_for_every_padding() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 2, 7, 6], burn::tensor::Distribution::Default, &device);
        for padding in [
            PaddingConfig2d::Valid,
            PaddingConfig2d::Explicit(2, 1, 2, 1),
            PaddingConfig2d::Same,
        ] {
            for stride in [1, 2] {
                let conv = Conv2dConfig::new([2, 3], [3, 3])
                    .with_stride([stride, stride])
                    .with_padding(padding.clone())
                    .init(&device);
                let expected = host(conv.forward(x.clone()));
                let q = QuantConv2d::from_conv(conv, &LayerQuant::Float).unwrap();
                // Same padding and shapes as burn's layer; the values agree up to summation
                // order (stride 1 runs quench's host convolution, stride 2 burn's).
                let got = host(q.forward(x.clone()));
                assert_eq!(got.len(), expected.len(), "{padding:?} stride {stride}");
                for (a, b) in got.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "{padding:?} stride {stride}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn ternary_linear_matches_hand_computation_and_trains_latent_weights() {
        let device = Device::flex().autodiff();
        // W (burn layout [d_in=3, d_out=2]); γ = mean|W| = (0.9+0.1+0.2+0.6+0.4+1.2)/6 = 0.5666…
        let w = [[0.9f32, -0.1], [0.2, -0.6], [-0.4, 1.2]];
        let layer = QuantLinear::from_linear(
            linear_with(w, &device),
            &LayerQuant::Ternary { norm: false },
        )
        .unwrap();
        let g = 3.4f32 / 6.0;
        // W/γ = [1.59, -0.18; 0.35, -1.06; -0.71, 2.12] → codes [1, 0; 0, -1; -1, 1].
        let expected_w = [g, 0.0, 0.0, -g, -g, g];
        let eff = host(layer.effective_weight());
        for (a, b) in eff.iter().zip(expected_w) {
            assert!((a - b).abs() < 1e-6, "{eff:?}");
        }
        // Input [1, -2, 0.5]: absmax 2 → scale 127/2; x_q = round([63.5, -127, 31.75]) / 63.5
        // = [64, -127, 32] / 63.5 (63.5 rounds half to even → 64).
        let x = Tensor::<2>::from_data([[1.0f32, -2.0, 0.5]], &device);
        let xq = [64.0f32 / 63.5, -127.0 / 63.5, 32.0 / 63.5];
        let y = layer.forward(x);
        let want = [
            xq[0] * g - xq[2] * g,  // codes column 0: [1, 0, -1]
            -xq[1] * g + xq[2] * g, // codes column 1: [0, -1, 1]
        ];
        let got = host(y.clone());
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // STE: dL/dW of sum(y) is x_qᵀ·1 for every latent weight, pruned-to-zero codes included.
        let grads = y.sum().backward();
        let gw = host(layer.inner.weight.val().grad(&grads).unwrap());
        let want_g = [xq[0], xq[0], xq[1], xq[1], xq[2], xq[2]];
        for (a, b) in gw.iter().zip(want_g) {
            assert!((a - b).abs() < 1e-5, "{gw:?}");
        }
    }

    #[test]
    fn binary_weights_are_sign_of_centered_w_times_mean_abs() {
        let device = Device::flex();
        let w = [[0.9f32, -0.1], [0.2, -0.6], [-0.4, 1.2]];
        let layer =
            QuantLinear::from_linear(linear_with(w, &device), &LayerQuant::Binary { norm: false })
                .unwrap();
        // mean W = 0.2, β = mean|W| = 3.4/6; sign(W − 0.2) with sign(0) = +1.
        let b = 3.4f32 / 6.0;
        let expected = [b, -b, b, -b, -b, b];
        let eff = host(layer.effective_weight());
        for (a, e) in eff.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{eff:?}");
        }
    }

    #[test]
    fn qat_layer_switches_off_and_ternary_norm_is_trained() {
        let device = Device::flex();
        let spec = QuantSpec {
            bits: 4,
            ..QuantSpec::default()
        };
        let lin = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.3f32, -1.0, 2.0], [1, 3]), &device);
        let float = host(lin.forward(x.clone()));
        let q = QuantLinear::from_linear(
            lin,
            &LayerQuant::Qat {
                weight: Some(spec.clone()),
                input: Some(QuantSpec::with_bits(8)),
            },
        )
        .unwrap();
        assert_ne!(
            host(q.forward(x.clone())),
            float,
            "4-bit weights change the output"
        );
        let off = QuantLinear {
            ops: q.ops.set_fake_quant(false),
            inner: q.inner,
        };
        assert_eq!(
            host(off.forward(x)),
            float,
            "fake quant off = the float layer"
        );
        let t = QuantLinear::from_linear(
            LinearConfig::new(3, 2).init(&device),
            &LayerQuant::Ternary { norm: true },
        )
        .unwrap();
        assert_eq!(
            t.num_params(),
            3 * 2 + 2 + 3,
            "RMSNorm gamma over the 3 inputs is a param"
        );
        assert_eq!(LayerQuant::Ternary { norm: true }.label(), "ternary");
        assert_eq!(
            LayerQuant::Qat {
                weight: Some(spec),
                input: Some(QuantSpec::with_bits(8))
            }
            .label(),
            "w4a8"
        );
    }
}

//! `quench export`: a checkpoint's quantized layers as real low-bit integers in one safetensors
//! file, and the reader that runs inference from that file alone.
//!
//! File layout (safetensors; every tensor named `<layer>.<what>`):
//! - `<layer>.weight.codes` (U8): packed codes — int8 as bytes, int4 two per byte, int2 four per
//!   byte (low bits first, two's complement), ternary 2 bits (4 per byte) or base-3 (5 per byte),
//!   binary 1 bit (8 per byte, 1 = +1);
//! - `<layer>.weight.scale` (F32, one per channel / group / tensor), `<layer>.weight.zero_point`
//!   (I32, asymmetric specs only); `<layer>.weight` (F32) for layers left in float;
//! - `<layer>.bias` (F32); `<layer>.input.scale` / `.input.zero_point` for static input
//!   quantizers; `<layer>.input.norm` (F32) for BitNet layers with SubLN;
//! - metadata `quench.recipe` (the experiment TOML: the architecture) and `quench.layers` (JSON:
//!   per layer its kind and spec, shape, packing and input mode).
//!
//! The reader dequantizes `(code − zp)·scale` — bit-for-bit the values the fake-quant forward
//! used — and applies the same input quantization, so its logits equal the trained model's.
//! Ternary Linear layers can also run on the integer kernel (`TernaryMatrix`: int8 activations ×
//! 2-bit weights, i32 accumulation), which agrees to float tolerance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Relu, RmsNorm, RmsNormConfig};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use quench_models::{Classifier, ClassifierConfig, ExportedLayer, LayerKind, LayerQuant};
use quench_quant::kernel::TernaryMatrix;
use quench_quant::layer::{ExportedInput, ExportedWeight};
use quench_quant::pack;
use quench_quant::qparams::{QuantLayout, qparams_from_range};
use quench_quant::spec::Granularity;
use quench_quant::ste::fake_quantize;
use quench_quant::ternary::absmax_quant_activation;
use quench_quant::{QuantSpec, Quantizer};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::Checkpoint;
use crate::recipe::Experiment;
use crate::run::model_from_checkpoint;

/// How ternary weights are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TernaryPacking {
    /// 2 bits per weight, 4 per byte.
    Bits2,
    /// Base 3, 5 weights per byte (1.6 bits).
    Base3,
}

/// Per-layer metadata stored in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Layer name (`fc1`).
    pub name: String,
    /// `linear` or `conv2d`.
    pub op: String,
    /// Weight shape (burn layout).
    pub shape: Vec<usize>,
    /// The layer's kind (float, qat with specs, ternary, binary).
    pub kind: LayerQuant,
    /// `float`, `int{bits}`, `uint{bits}`, `ternary2`, `ternary3`, `binary1`.
    pub packing: String,
    /// Conv padding.
    pub padding: Option<usize>,
    /// Input mode: `float`, `static`, `per_token`, `absmax8`.
    pub input: String,
    /// Static input code range and PACT clip.
    pub input_qrange: Option<(i32, i32)>,
    /// PACT clip (α, signed).
    pub input_pact: Option<(f32, bool)>,
    /// RMSNorm ε (BitNet SubLN).
    pub norm_eps: Option<f64>,
    /// Bytes this layer takes in the file (codes + scales + zero-points + bias + input params).
    pub bytes: usize,
}

/// What `quench export` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// Tensor payload bytes (without the safetensors header).
    pub payload_bytes: usize,
    /// The same parameters as f32.
    pub fp32_bytes: usize,
    /// Per layer: name, packing, bytes.
    pub layers: Vec<(String, String, usize)>,
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn pack_binary(codes: &[i32]) -> Vec<u8> {
    // One bit per weight (1 = +1, 0 = −1), low bit first; pack.rs covers 2..=8 bits only.
    let mut out = vec![0u8; codes.len().div_ceil(8)];
    for (i, &c) in codes.iter().enumerate() {
        if c > 0 {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

fn unpack_binary(bytes: &[u8], len: usize) -> Vec<i32> {
    (0..len)
        .map(|i| {
            if bytes.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1) {
                1
            } else {
                -1
            }
        })
        .collect()
}

pub(crate) fn export_err(path: &Path, detail: impl std::fmt::Display) -> TrainError {
    TrainError::Export(format!("{}: {detail}", path.display()))
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub(crate) type TensorBytes = (String, Dtype, Vec<usize>, Vec<u8>);

/// Packs one layer; returns its tensors and metadata.
pub(crate) fn pack_layer(
    l: &ExportedLayer,
    ternary: TernaryPacking,
    path: &Path,
) -> Result<(Vec<TensorBytes>, LayerMeta), TrainError> {
    let name = &l.info.name;
    let mut tensors = Vec::new();
    let packing = match &l.weight {
        ExportedWeight::Float(values) => {
            tensors.push((
                format!("{name}.weight"),
                Dtype::F32,
                l.info.weight_shape.clone(),
                f32_bytes(values),
            ));
            "float".to_string()
        }
        ExportedWeight::Int {
            codes,
            scales,
            zero_points,
            bits,
            signed,
            scheme,
        } => {
            let (bytes, packing) = match *scheme {
                "ternary" => {
                    let trits: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
                    match ternary {
                        TernaryPacking::Bits2 => {
                            (pack::pack_ternary_2bit(&trits), "ternary2".to_string())
                        }
                        TernaryPacking::Base3 => {
                            (pack::pack_ternary_base3(&trits), "ternary3".to_string())
                        }
                    }
                }
                "binary" => (Ok(pack_binary(codes)), "binary1".to_string()),
                _ if *signed => (pack::pack_signed(codes, *bits), format!("int{bits}")),
                _ => {
                    let u: Vec<u32> = codes.iter().map(|&c| c.max(0) as u32).collect();
                    (pack::pack_unsigned(&u, *bits), format!("uint{bits}"))
                }
            };
            let bytes = bytes.map_err(|e| export_err(path, format!("layer {name}: {e}")))?;
            tensors.push((
                format!("{name}.weight.codes"),
                Dtype::U8,
                vec![bytes.len()],
                bytes,
            ));
            tensors.push((
                format!("{name}.weight.scale"),
                Dtype::F32,
                vec![scales.len()],
                f32_bytes(scales),
            ));
            if zero_points.iter().any(|&z| z != 0) {
                tensors.push((
                    format!("{name}.weight.zero_point"),
                    Dtype::I32,
                    vec![zero_points.len()],
                    i32_bytes(zero_points),
                ));
            }
            packing
        }
    };
    if let Some(b) = &l.bias {
        tensors.push((
            format!("{name}.bias"),
            Dtype::F32,
            vec![b.len()],
            f32_bytes(b),
        ));
    }
    let (input, input_qrange, input_pact, norm_eps) = match &l.input {
        ExportedInput::Float => ("float", None, None, None),
        ExportedInput::Static {
            scales,
            zero_points,
            qmin,
            qmax,
            pact,
        } => {
            tensors.push((
                format!("{name}.input.scale"),
                Dtype::F32,
                vec![scales.len()],
                f32_bytes(scales),
            ));
            tensors.push((
                format!("{name}.input.zero_point"),
                Dtype::I32,
                vec![zero_points.len()],
                i32_bytes(zero_points),
            ));
            ("static", Some((*qmin, *qmax)), *pact, None)
        }
        ExportedInput::PerToken { .. } => ("per_token", None, None, None),
        ExportedInput::Absmax8 { norm } => {
            if let Some((gamma, _)) = norm {
                tensors.push((
                    format!("{name}.input.norm"),
                    Dtype::F32,
                    vec![gamma.len()],
                    f32_bytes(gamma),
                ));
            }
            ("absmax8", None, None, norm.as_ref().map(|n| n.1))
        }
    };
    let bytes = tensors.iter().map(|t| t.3.len()).sum();
    let meta = LayerMeta {
        name: name.clone(),
        op: match l.info.kind {
            LayerKind::Linear => "linear".into(),
            LayerKind::Conv2d => "conv2d".into(),
        },
        shape: l.info.weight_shape.clone(),
        kind: l.kind.clone(),
        packing,
        padding: l.padding,
        input: input.to_string(),
        input_qrange,
        input_pact,
        norm_eps,
        bytes,
    };
    Ok((tensors, meta))
}

/// A pruned float layer in the sparse format: bitmask + nonzero f32 values (`.weight.sparse`).
fn pack_sparse(
    l: &ExportedLayer,
    path: &Path,
) -> Result<(Vec<TensorBytes>, LayerMeta), TrainError> {
    let (mut tensors, mut meta) = pack_layer(l, TernaryPacking::Bits2, path)?;
    if let ExportedWeight::Float(w) = &l.weight {
        let enc = quench_prune::SparseTensor::encode(w, &l.info.weight_shape)?;
        let bytes = enc.to_bytes();
        let name = format!("{}.weight", l.info.name);
        tensors.retain(|t| t.0 != name);
        tensors.push((
            format!("{name}.sparse"),
            Dtype::U8,
            vec![bytes.len()],
            bytes,
        ));
        meta.packing = "sparse".into();
        meta.bytes = tensors.iter().map(|t| t.3.len()).sum();
    }
    Ok((tensors, meta))
}

/// Structured pruning made physical: output units (Linear columns, Conv output channels) whose
/// weights and bias are all zero are removed, with the matching inputs of the next layer, so the
/// exported model is really smaller and computes the same outputs.
fn shrink_structured(layers: &mut [ExportedLayer], path: &Path) -> Result<(), TrainError> {
    for i in 0..layers.len().saturating_sub(1) {
        let (head, tail) = layers.split_at_mut(i + 1);
        let l = &mut head[i];
        let next = &mut tail[0];
        let ExportedWeight::Float(w) = &l.weight else {
            continue;
        };
        let shape = l.info.weight_shape.clone();
        let out_axis = if l.info.kind == LayerKind::Linear {
            1
        } else {
            0
        };
        let units = shape[out_axis];
        let mut alive = vec![false; units];
        for (k, &x) in w.iter().enumerate() {
            if x != 0.0 {
                alive[unit_of(k, &shape, out_axis)] = true;
            }
        }
        if let Some(b) = &l.bias {
            for (u, &x) in b.iter().enumerate() {
                alive[u] |= x != 0.0;
            }
        }
        let kept: Vec<usize> = (0..units).filter(|&u| alive[u]).collect();
        if kept.len() == units {
            continue;
        }
        if kept.is_empty() {
            return Err(export_err(
                path,
                format!("layer {} has every unit pruned", l.info.name),
            ));
        }
        let (nw, nshape) = quench_prune::sparse::select_along_axis(w, &shape, out_axis, &kept)?;
        l.weight = ExportedWeight::Float(nw);
        l.info.weight_shape = nshape;
        l.bias = l
            .bias
            .as_ref()
            .map(|b| kept.iter().map(|&u| b[u]).collect());
        // The next layer's inputs: Linear rows (× features per unit after a conv flatten), or
        // Conv input channels (axis 1).
        let ExportedWeight::Float(nw) = &next.weight else {
            return Err(export_err(
                path,
                format!("layer {} is quantized; cannot shrink", next.info.name),
            ));
        };
        let nshape = next.info.weight_shape.clone();
        let (vals, sh) = if next.info.kind == LayerKind::Linear {
            let per = nshape[0] / units;
            let rows: Vec<usize> = kept.iter().flat_map(|&u| u * per..(u + 1) * per).collect();
            quench_prune::sparse::select_along_axis(nw, &nshape, 0, &rows)?
        } else {
            quench_prune::sparse::select_along_axis(nw, &nshape, 1, &kept)?
        };
        next.weight = ExportedWeight::Float(vals);
        next.info.weight_shape = sh;
    }
    Ok(())
}

/// Index along `axis` of flat element `k` of a row-major tensor of `shape`.
fn unit_of(k: usize, shape: &[usize], axis: usize) -> usize {
    let inner: usize = shape[axis + 1..].iter().product();
    (k / inner.max(1)) % shape[axis]
}

/// Bytes the model takes when exported (what `summary.json` reports as `model_bytes_packed`).
pub fn packed_bytes(model: &Classifier) -> Result<usize, TrainError> {
    packed_layers_bytes(&model.export_layers())
}

/// Bytes of `layers` packed as `quench export` writes them (ternary at 2 bits).
pub fn packed_layers_bytes(layers: &[ExportedLayer]) -> Result<usize, TrainError> {
    let mut total = 0;
    for l in layers {
        let (_, meta) = pack_layer(l, TernaryPacking::Bits2, Path::new("<model>"))?;
        total += meta.bytes;
    }
    Ok(total)
}

/// Writes the packed model of the checkpoint at `ckpt_path` to `out`.
pub fn export_checkpoint(
    ckpt_path: &Path,
    out: &Path,
    ternary: TernaryPacking,
) -> Result<ExportReport, TrainError> {
    let ckpt = Checkpoint::read(ckpt_path)?;
    let exp = Experiment::from_toml_str(&ckpt.meta.experiment_toml, ckpt_path, &[])?;
    let device = Device::flex();
    let model = model_from_checkpoint(&exp, &ckpt, ckpt_path, &device)?;
    let mut layers = model.export_layers();
    let fp32_bytes: usize = layers
        .iter()
        .map(|l| {
            4 * (l.info.weight_shape.iter().product::<usize>()
                + l.bias.as_ref().map_or(0, |b| b.len()))
        })
        .sum();
    let all_float = layers.iter().all(|l| matches!(l.kind, LayerQuant::Float));
    let sparse = match &exp.prune {
        Some(p) if all_float && p.method.is_structured() => {
            shrink_structured(&mut layers, ckpt_path)?;
            false
        }
        Some(_) if all_float => true,
        _ => false,
    };
    if all_float && exp.prune.is_none() {
        return Err(export_err(
            ckpt_path,
            "the checkpoint has no quantized layer (its recipe has no [[quant.layers]] rule), so \
             there are no integers to export (nor pruned weights to shrink or store sparse); \
             nothing was written",
        ));
    }
    let mut tensors = Vec::new();
    let mut metas = Vec::new();
    for l in &layers {
        let (t, meta) = if sparse {
            pack_sparse(l, ckpt_path)?
        } else {
            pack_layer(l, ternary, ckpt_path)?
        };
        tensors.extend(t);
        metas.push(meta);
    }
    let bytes = write_export(out, &tensors, exp.to_toml(), &metas, &[])?;
    Ok(ExportReport {
        path: out.to_path_buf(),
        file_bytes: bytes.len() as u64,
        payload_bytes: tensors.iter().map(|t| t.3.len()).sum(),
        fp32_bytes,
        layers: metas
            .iter()
            .map(|m| (m.name.clone(), m.packing.clone(), m.bytes))
            .collect(),
    })
}

/// Serializes `tensors` with the quench metadata (recipe, per-layer `metas`, format, `extra`
/// keys) and writes the safetensors file atomically; returns its bytes.
pub(crate) fn write_export(
    out: &Path,
    tensors: &[TensorBytes],
    recipe_toml: String,
    metas: &[LayerMeta],
    extra: &[(&str, String)],
) -> Result<Vec<u8>, TrainError> {
    let views = tensors
        .iter()
        .map(|(n, dt, shape, data)| {
            TensorView::new(*dt, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| export_err(out, format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut info = HashMap::new();
    info.insert("quench.recipe".to_string(), recipe_toml);
    info.insert(
        "quench.layers".to_string(),
        serde_json::to_string(metas).map_err(|e| export_err(out, e))?,
    );
    info.insert("quench.format".to_string(), "1".to_string());
    for (k, v) in extra {
        info.insert((*k).to_string(), v.clone());
    }
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| export_err(out, e))?;
    crate::checkpoint::write_atomic(out, &bytes)?;
    Ok(bytes)
}

/// How one layer of a [`PackedModel`] quantizes its input.
#[derive(Debug)]
enum InputQuant {
    Float,
    Static {
        scale: f32,
        zero_point: f32,
        qmin: i32,
        qmax: i32,
        pact: Option<(f32, bool)>,
    },
    PerToken(QuantSpec),
    Absmax8(Option<RmsNorm>),
}

/// One layer of a [`PackedModel`]: dequantized weight, bias, input quantization.
#[derive(Debug)]
pub(crate) struct PackedLayer {
    meta: LayerMeta,
    weight2: Option<Tensor<2>>,
    weight4: Option<Tensor<4>>,
    bias: Option<Tensor<1>>,
    input: InputQuant,
    /// Ternary Linear layers: the integer kernel's matrix (`[d_out, d_in]`).
    pub(crate) ternary: Option<TernaryMatrix>,
}

/// A model read back from a `quench export` file, runnable without the checkpoint.
#[derive(Debug)]
pub struct PackedModel {
    /// The architecture.
    pub model: ClassifierConfig,
    layers: Vec<PackedLayer>,
    device: Device,
}

pub(crate) fn read_f32(
    st: &safetensors::SafeTensors,
    name: &str,
    path: &Path,
) -> Result<Vec<f32>, TrainError> {
    let t = st
        .tensor(name)
        .map_err(|e| export_err(path, format!("tensor {name}: {e}")))?;
    if t.dtype() != Dtype::F32 {
        return Err(export_err(
            path,
            format!("tensor {name} is {:?}, not F32", t.dtype()),
        ));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_i32(
    st: &safetensors::SafeTensors,
    name: &str,
    path: &Path,
) -> Result<Vec<i32>, TrainError> {
    let t = st
        .tensor(name)
        .map_err(|e| export_err(path, format!("tensor {name}: {e}")))?;
    if t.dtype() != Dtype::I32 {
        return Err(export_err(
            path,
            format!("tensor {name} is {:?}, not I32", t.dtype()),
        ));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Parses a `quench export` file: its tensors and its quench metadata.
pub(crate) fn open_export<'a>(
    bytes: &'a [u8],
    path: &Path,
) -> Result<(safetensors::SafeTensors<'a>, HashMap<String, String>), TrainError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| export_err(path, format!("not a safetensors file: {e}")))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| export_err(path, e))?;
    let info = header
        .metadata()
        .clone()
        .ok_or_else(|| export_err(path, "no quench metadata (not written by quench export)"))?;
    Ok((st, info))
}

impl PackedModel {
    /// Reads an export file; every inconsistency is an error naming the file and tensor.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses export bytes held in memory (`path` only names the source in errors); what
    /// [`Self::load`] does after reading the file, exposed so fuzz targets need no disk.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TrainError> {
        let (st, info) = open_export(bytes, path)?;
        let recipe = info
            .get("quench.recipe")
            .ok_or_else(|| export_err(path, "metadata has no quench.recipe"))?;
        let exp = Experiment::from_toml_str(recipe, path, &[])?;
        let metas: Vec<LayerMeta> = serde_json::from_str(
            info.get("quench.layers")
                .ok_or_else(|| export_err(path, "metadata has no quench.layers"))?,
        )
        .map_err(|e| export_err(path, format!("quench.layers: {e}")))?;
        let device = Device::flex();
        let mut layers = Vec::new();
        for meta in metas {
            layers.push(Self::load_layer(&st, meta, path, &device)?);
        }
        let expected: Vec<String> = exp
            .model
            .layer_infos(28 * 28, 10)
            .into_iter()
            .map(|i| i.name)
            .collect();
        let got: Vec<String> = layers.iter().map(|l| l.meta.name.clone()).collect();
        if expected != got {
            return Err(export_err(
                path,
                format!("layers {got:?} do not match the architecture's {expected:?}"),
            ));
        }
        Ok(Self {
            model: exp.model,
            layers,
            device,
        })
    }

    pub(crate) fn load_layer(
        st: &safetensors::SafeTensors,
        meta: LayerMeta,
        path: &Path,
        device: &Device,
    ) -> Result<PackedLayer, TrainError> {
        let name = meta.name.clone();
        // The weight tensor built below has the op's rank; a shape that disagrees (or whose
        // element count overflows) is a corrupt file, not a panic.
        let (rank, channel_axis) = match meta.op.as_str() {
            "linear" => (2, 1),
            "conv2d" => (4, 0),
            op => {
                return Err(export_err(
                    path,
                    format!("{name}: unknown op `{op}` (linear or conv2d)"),
                ));
            }
        };
        if meta.shape.len() != rank {
            return Err(export_err(
                path,
                format!(
                    "{name}: {} weight of shape {:?}, needs {rank} dimensions",
                    meta.op, meta.shape
                ),
            ));
        }
        let n = meta
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                export_err(
                    path,
                    format!("{name}: shape {:?} has too many elements", meta.shape),
                )
            })?;
        let mut ternary = None;
        let values: Vec<f32> = if meta.packing == "float" {
            read_f32(st, &format!("{name}.weight"), path)?
        } else if meta.packing == "sparse" {
            let t = st
                .tensor(&format!("{name}.weight.sparse"))
                .map_err(|e| export_err(path, format!("tensor {name}.weight.sparse: {e}")))?;
            let enc = quench_prune::SparseTensor::from_bytes(t.data())
                .map_err(|e| export_err(path, format!("{name}: {e}")))?;
            if enc.shape() != meta.shape.as_slice() {
                return Err(export_err(
                    path,
                    format!("{name}: sparse shape {:?} ≠ {:?}", enc.shape(), meta.shape),
                ));
            }
            enc.decode()
        } else {
            let codes_t = st
                .tensor(&format!("{name}.weight.codes"))
                .map_err(|e| export_err(path, format!("tensor {name}.weight.codes: {e}")))?;
            let data = codes_t.data();
            let unpack_err = |e: pack::PackError| export_err(path, format!("{name}: {e}"));
            let codes: Vec<i32> = match meta.packing.as_str() {
                "ternary2" => pack::unpack_ternary_2bit(data, n)
                    .map_err(unpack_err)?
                    .into_iter()
                    .map(i32::from)
                    .collect(),
                "ternary3" => pack::unpack_ternary_base3(data, n)
                    .map_err(unpack_err)?
                    .into_iter()
                    .map(i32::from)
                    .collect(),
                "binary1" => {
                    if data.len() < n.div_ceil(8) {
                        return Err(export_err(path, format!("{name}: codes truncated")));
                    }
                    unpack_binary(data, n)
                }
                p if p.starts_with("uint") => {
                    let bits = p[4..]
                        .parse()
                        .map_err(|_| export_err(path, format!("packing {p}")))?;
                    pack::unpack_unsigned(data, bits, n)
                        .map_err(unpack_err)?
                        .into_iter()
                        .map(|c| c as i32)
                        .collect()
                }
                p if p.starts_with("int") => {
                    let bits = p[3..]
                        .parse()
                        .map_err(|_| export_err(path, format!("packing {p}")))?;
                    pack::unpack_signed(data, bits, n).map_err(unpack_err)?
                }
                p => return Err(export_err(path, format!("{name}: unknown packing {p}"))),
            };
            let scales = read_f32(st, &format!("{name}.weight.scale"), path)?;
            let zps = match st.tensor(&format!("{name}.weight.zero_point")) {
                Ok(_) => read_i32(st, &format!("{name}.weight.zero_point"), path)?,
                Err(_) => vec![0; scales.len()],
            };
            if meta.packing.starts_with("ternary") && meta.op == "linear" {
                // The kernel wants [d_out, d_in] rows; burn's Linear weight is [d_in, d_out].
                let (din, dout) = (meta.shape[0], meta.shape[1]);
                let mut t = vec![0i8; n];
                for i in 0..din {
                    for o in 0..dout {
                        t[o * din + i] = codes[i * dout + o] as i8;
                    }
                }
                let gamma = scales
                    .first()
                    .copied()
                    .ok_or_else(|| export_err(path, format!("{name}.weight.scale: no scale")))?;
                ternary = TernaryMatrix::from_codes(&t, dout, din, gamma).ok();
            }
            match &meta.kind {
                LayerQuant::Qat {
                    weight: Some(spec), ..
                } => {
                    let layout = Quantizer::weight_layout(spec, &meta.shape, channel_axis)
                        .map_err(|e| export_err(path, format!("{name}: {e}")))?;
                    if scales.len() != layout.num_scales() || zps.len() != scales.len() {
                        return Err(export_err(
                            path,
                            format!(
                                "{name}: {} scales for {} groups",
                                scales.len(),
                                layout.num_scales()
                            ),
                        ));
                    }
                    let codes_f: Vec<f32> = codes.iter().map(|&c| c as f32).collect();
                    let s = layout.broadcast(Tensor::from_data(
                        TensorData::new(scales.clone(), [scales.len()]),
                        device,
                    ));
                    let z = layout.broadcast(Tensor::from_data(
                        TensorData::new(zps.iter().map(|&z| z as f32).collect(), [zps.len()]),
                        device,
                    ));
                    let data = TensorData::new(codes_f, meta.shape.clone());
                    let w: Tensor<1> = if meta.shape.len() == 2 {
                        let v = layout.view(Tensor::<2>::from_data(data, device));
                        layout.unview::<2>((v - z) * s).reshape([n])
                    } else {
                        let v = layout.view(Tensor::<4>::from_data(data, device));
                        layout.unview::<4>((v - z) * s).reshape([n])
                    };
                    w.into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| export_err(path, format!("{name}: {e:?}")))?
                }
                _ => {
                    // Ternary / binary: one per-tensor scale, code·γ.
                    let g = scales.first().copied().unwrap_or(0.0);
                    let c = Tensor::<1>::from_data(
                        TensorData::new(codes.iter().map(|&c| c as f32).collect(), [n]),
                        device,
                    );
                    (c * Tensor::<1>::from_data(TensorData::new(vec![g], [1]), device))
                        .into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| export_err(path, format!("{name}: {e:?}")))?
                }
            }
        };
        if values.len() != n {
            return Err(export_err(
                path,
                format!("{name}: {} weights, shape needs {n}", values.len()),
            ));
        }
        let data = TensorData::new(values, meta.shape.clone());
        let (weight2, weight4) = if meta.op == "linear" {
            (Some(Tensor::<2>::from_data(data, device)), None)
        } else {
            (None, Some(Tensor::<4>::from_data(data, device)))
        };
        let bias = match st.tensor(&format!("{name}.bias")) {
            Ok(_) => {
                let b = read_f32(st, &format!("{name}.bias"), path)?;
                let len = b.len();
                Some(Tensor::<1>::from_data(TensorData::new(b, [len]), device))
            }
            Err(_) => None,
        };
        let input = match meta.input.as_str() {
            "float" => InputQuant::Float,
            "static" => {
                let s = read_f32(st, &format!("{name}.input.scale"), path)?;
                let z = read_i32(st, &format!("{name}.input.zero_point"), path)?;
                let (qmin, qmax) = meta.input_qrange.ok_or_else(|| {
                    export_err(path, format!("{name}: static input without range"))
                })?;
                InputQuant::Static {
                    scale: s.first().copied().unwrap_or(1.0),
                    zero_point: z.first().copied().unwrap_or(0) as f32,
                    qmin,
                    qmax,
                    pact: meta.input_pact,
                }
            }
            "per_token" => match &meta.kind {
                LayerQuant::Qat {
                    input: Some(spec), ..
                } => InputQuant::PerToken(spec.clone()),
                _ => {
                    return Err(export_err(
                        path,
                        format!("{name}: per_token input without spec"),
                    ));
                }
            },
            "absmax8" => {
                let norm = match meta.norm_eps {
                    Some(eps) => {
                        // burn's RmsNorm asserts ε > 0; a file saying otherwise is corrupt.
                        if !(eps > 0.0 && eps.is_finite()) {
                            return Err(export_err(
                                path,
                                format!("{name}: norm_eps = {eps}, must be a positive number"),
                            ));
                        }
                        let g = read_f32(st, &format!("{name}.input.norm"), path)?;
                        let len = g.len();
                        if len == 0 {
                            return Err(export_err(path, format!("{name}.input.norm: no values")));
                        }
                        let mut n = RmsNormConfig::new(len).with_epsilon(eps).init(device);
                        n.gamma = Param::from_tensor(Tensor::from_data(
                            TensorData::new(g, [len]),
                            device,
                        ));
                        Some(n)
                    }
                    None => None,
                };
                InputQuant::Absmax8(norm)
            }
            other => {
                return Err(export_err(
                    path,
                    format!("{name}: unknown input mode {other}"),
                ));
            }
        };
        Ok(PackedLayer {
            meta,
            weight2,
            weight4,
            bias,
            input,
            ternary,
        })
    }

    fn quant_input<const D: usize>(
        &self,
        l: &PackedLayer,
        x: Tensor<D>,
        feature_dim: usize,
    ) -> Tensor<D> {
        quant_input(l, x, feature_dim, &self.device)
    }

    fn linear_layer(&self, l: &PackedLayer, x: Tensor<2>, integer: bool) -> Tensor<2> {
        packed_linear(l, x, integer, &self.device)
    }
    fn forward_impl(&self, x: Tensor<2>, integer: bool) -> Tensor<2> {
        let relu = Relu::new();
        let x = x.to_device(&self.device);
        let mut iter = self.layers.iter().peekable();
        let mut x2 = x;
        if matches!(
            self.model,
            ClassifierConfig::Lenet5 | ClassifierConfig::Cnn { .. }
        ) {
            let pool: MaxPool2d = MaxPool2dConfig::new([2, 2]).init();
            let [b, _] = x2.dims();
            let mut x4 = x2.reshape([b, 1, 28, 28]);
            for _ in 0..2 {
                let Some(l) = iter.next() else { break };
                let p = l.meta.padding.unwrap_or(0);
                let options = ConvOptions::new_with_padding([1, 1], [(p, p), (p, p)], [1, 1], 1);
                let xq = self.quant_input(l, x4, 1);
                let w = l
                    .weight4
                    .clone()
                    .unwrap_or_else(|| Tensor::zeros([1, 1, 1, 1], &self.device));
                x4 = pool.forward(relu.forward(conv2d(xq, w, l.bias.clone(), options)));
            }
            let [b, c, h, w] = x4.dims();
            x2 = x4.reshape([b, c * h * w]);
        }
        while let Some(l) = iter.next() {
            x2 = self.linear_layer(l, x2, integer);
            if iter.peek().is_some() {
                x2 = relu.forward(x2);
            }
        }
        x2
    }

    /// Logits from the dequantized integer weights — equal to the trained fake-quant model's.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_impl(x, false)
    }

    /// Logits with ternary Linear layers on the integer kernel (int8 × 2-bit, i32 accumulate).
    pub fn forward_integer(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_impl(x, true)
    }

    /// Number of layers that run on the integer ternary kernel in [`Self::forward_integer`].
    pub fn integer_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.ternary.is_some()).count()
    }
}

/// Applies a packed layer's input quantization to `x` (`feature_dim`: the channel axis).
pub(crate) fn quant_input<const D: usize>(
    l: &PackedLayer,
    x: Tensor<D>,
    feature_dim: usize,
    device: &Device,
) -> Tensor<D> {
    match &l.input {
        InputQuant::Float => x,
        InputQuant::Static {
            scale,
            zero_point,
            qmin,
            qmax,
            pact,
        } => {
            let x = match pact {
                Some((a, true)) => x.clamp(-a, *a),
                Some((a, false)) => x.clamp(0.0, *a),
                None => x,
            };
            let s = Tensor::<D>::from_data(TensorData::new(vec![*scale], [1; D]), device);
            let z = Tensor::<D>::from_data(TensorData::new(vec![*zero_point], [1; D]), device);
            fake_quantize(x, s, z, *qmin, *qmax)
        }
        InputQuant::PerToken(spec) => {
            let dims = x.dims();
            let Ok(layout) = QuantLayout::new(&dims, Granularity::PerToken, 0, None) else {
                return x;
            };
            let (min, max) = layout.min_max(x.clone());
            let (s, z) = qparams_from_range(min, max, spec);
            let (qmin, qmax) = spec.qrange();
            layout.unview(fake_quantize(
                layout.view(x),
                layout.broadcast(s),
                layout.broadcast(z),
                qmin,
                qmax,
            ))
        }
        InputQuant::Absmax8(norm) => {
            let last = D - 1;
            let x = match norm {
                Some(n) if feature_dim == last => n.forward(x),
                Some(n) => n
                    .forward(x.swap_dims(feature_dim, last))
                    .swap_dims(feature_dim, last),
                None => x,
            };
            if feature_dim == last {
                absmax_quant_activation(x, 8)
            } else {
                absmax_quant_activation(x.swap_dims(feature_dim, last), 8)
                    .swap_dims(feature_dim, last)
            }
        }
    }
}

/// A packed Linear on `[rows, d_in]`; `integer` runs ternary layers on the integer kernel.
pub(crate) fn packed_linear(
    l: &PackedLayer,
    x: Tensor<2>,
    integer: bool,
    device: &Device,
) -> Tensor<2> {
    if integer && let (Some(m), InputQuant::Absmax8(norm)) = (&l.ternary, &l.input) {
        // Integer path: int8 absmax activations × 2-bit ternary codes, i32 accumulation.
        let x = match norm {
            Some(n) => n.forward(x),
            None => x,
        };
        let [b, din] = x.dims();
        let host = x
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        let y = m.forward_f32(&host, b);
        let dout = m.out_features();
        let mut y = Tensor::<2>::from_data(TensorData::new(y, [b, dout]), device);
        debug_assert_eq!(din, m.in_features());
        if let Some(bias) = &l.bias {
            y = y + bias.clone().unsqueeze();
        }
        return y;
    }
    let x = quant_input(l, x, 1, device);
    let w = l
        .weight2
        .clone()
        .unwrap_or_else(|| Tensor::zeros([1, 1], device));
    linear(x, w, l.bias.clone())
}

/// The result of checking an export file against its checkpoint on the test set.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Test samples compared.
    pub samples: usize,
    /// Samples whose argmax differs between the checkpoint's fake-quant model and the file.
    pub argmax_mismatches: usize,
    /// Largest |logit difference| between them.
    pub max_abs_logit_diff: f32,
    /// Test accuracy of the checkpoint model and of the file.
    pub accuracy_checkpoint: f64,
    /// Test accuracy of the packed model.
    pub accuracy_packed: f64,
    /// Ternary Linear layers run on the integer kernel in the integer pass.
    pub integer_layers: usize,
    /// Test-set inference samples/s of the checkpoint's model (batches of 1000, Flex).
    pub samples_per_sec_checkpoint: f64,
    /// The same for the exported model.
    pub samples_per_sec_packed: f64,
    /// Argmax mismatches of the integer-kernel pass (when it has integer layers).
    pub integer_argmax_mismatches: usize,
    /// Largest |logit difference| of the integer-kernel pass.
    pub integer_max_abs_logit_diff: f32,
}

fn argmax_rows(v: &[f32], classes: usize) -> Vec<usize> {
    v.chunks(classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    if x > bv { (i, x) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

/// Runs the recipe's test set through the checkpoint's model and through the export file.
pub fn verify_export(ckpt_path: &Path, file: &Path) -> Result<VerifyReport, TrainError> {
    let ckpt = Checkpoint::read(ckpt_path)?;
    let exp = Experiment::from_toml_str(&ckpt.meta.experiment_toml, ckpt_path, &[])?;
    let device = Device::flex();
    let model = model_from_checkpoint(&exp, &ckpt, ckpt_path, &device)?;
    let packed = PackedModel::load(file)?;
    let data = crate::run::load_image_data(&exp)?;
    let test = &data.test;
    let mut r = VerifyReport {
        samples: test.len(),
        argmax_mismatches: 0,
        max_abs_logit_diff: 0.0,
        accuracy_checkpoint: 0.0,
        accuracy_packed: 0.0,
        integer_layers: packed.integer_layers(),
        samples_per_sec_checkpoint: 0.0,
        samples_per_sec_packed: 0.0,
        integer_argmax_mismatches: 0,
        integer_max_abs_logit_diff: 0.0,
    };
    let (mut ok_a, mut ok_b) = (0usize, 0usize);
    let (mut t_model, mut t_packed) = (0.0f64, 0.0f64);
    let order: Vec<usize> = (0..test.len()).collect();
    let host = |t: Tensor<2>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    };
    for idx in order.chunks(1000) {
        let batch = test.batch(idx, &device);
        let t0 = std::time::Instant::now();
        let a = host(model.forward(batch.images.clone()));
        let t1 = std::time::Instant::now();
        let b = host(packed.forward(batch.images.clone()));
        t_model += (t1 - t0).as_secs_f64();
        t_packed += t1.elapsed().as_secs_f64();
        let (aa, ab) = (argmax_rows(&a, 10), argmax_rows(&b, 10));
        for (k, &i) in idx.iter().enumerate() {
            let label = test.labels[i] as usize;
            ok_a += usize::from(aa[k] == label);
            ok_b += usize::from(ab[k] == label);
            r.argmax_mismatches += usize::from(aa[k] != ab[k]);
        }
        for (x, y) in a.iter().zip(&b) {
            r.max_abs_logit_diff = r.max_abs_logit_diff.max((x - y).abs());
        }
        if r.integer_layers > 0 {
            let c = host(packed.forward_integer(batch.images));
            let ac = argmax_rows(&c, 10);
            r.integer_argmax_mismatches += aa.iter().zip(&ac).filter(|(x, y)| x != y).count();
            for (x, y) in a.iter().zip(&c) {
                r.integer_max_abs_logit_diff = r.integer_max_abs_logit_diff.max((x - y).abs());
            }
        }
    }
    r.samples_per_sec_checkpoint = test.len() as f64 / t_model.max(1e-9);
    r.samples_per_sec_packed = test.len() as f64 / t_packed.max(1e-9);
    r.accuracy_checkpoint = ok_a as f64 / test.len().max(1) as f64;
    r.accuracy_packed = ok_b as f64 / test.len().max(1) as f64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs the `packed` fuzz target (`fuzz/`) found to panic; each must now be an error that
    /// names the file and the problem.
    #[test]
    fn fuzz_found_exports_are_errors_not_panics() {
        let path = Path::new("crash.safetensors");
        // A GPT export whose `h0.mlp.fc` op reads `lrnear`: the layer was built as a 4-d conv
        // weight from a 2-d shape (burn panicked in `Tensor::from_data`).
        let bytes = include_bytes!("../tests/data/fuzz/packed-unknown-op.safetensors");
        let err = PackedModel::from_bytes(bytes, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("crash.safetensors"), "{err}");
        assert!(err.contains("h0.mlp.fc: unknown op `lrnear`"), "{err}");
        assert!(crate::lm_export::PackedGpt::from_bytes(bytes, path).is_err());

        // A GPT export whose `h0.attn.proj` says `norm_eps: 0.0`: burn's RmsNorm panicked.
        let bytes = include_bytes!("../tests/data/fuzz/packed-zero-norm-eps.safetensors");
        for err in [
            PackedModel::from_bytes(bytes, path)
                .unwrap_err()
                .to_string(),
            crate::lm_export::PackedGpt::from_bytes(bytes, path)
                .unwrap_err()
                .to_string(),
        ] {
            assert!(err.contains("crash.safetensors"), "{err}");
            assert!(err.contains("h0.attn.proj: norm_eps = 0"), "{err}");
        }
    }
}

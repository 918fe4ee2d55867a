//! `quench export` of a char-GPT checkpoint, and the model read back from that file.
//!
//! The file is the classifier export format (see [`crate::export`]): every Linear as
//! `<layer>.weight.codes` + `.weight.scale` (ternary 2-bit or base-3, int4/int8 …) with its input
//! quantizer, plus the float parts a transformer needs — `tok_emb.weight`, `pos_emb.weight`,
//! `blocks.N.ln1.{gamma,beta}`, `blocks.N.ln2.{gamma,beta}`, `ln_f.{gamma,beta}` — and the
//! vocabulary as metadata `quench.vocab`. [`PackedGpt`] runs the model from the file alone:
//! either from the dequantized codes (the fake-quant forward's values) or with the ternary
//! Linears on the integer kernel (int8 activations × 2-bit codes, i32 accumulation).

use std::path::Path;
use std::time::Instant;

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use quench_models::{CharGpt, GptConfig, LayerQuant};
use safetensors::tensor::Dtype;
use serde::Serialize;

use crate::TrainError;
use crate::export::{
    ExportReport, LayerMeta, PackedLayer, PackedModel, TensorBytes, TernaryPacking, export_err,
    f32_bytes, open_export, pack_layer, packed_linear, read_f32, write_export,
};
use crate::lm::{SampleOptions, generate_with, load_corpus, load_lm_checkpoint};
use crate::recipe::Experiment;

/// Windows of validation text compared by [`verify_lm_export`].
const VERIFY_WINDOWS: usize = 64;

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

fn f32_tensor(name: String, shape: Vec<usize>, t: Tensor<1>) -> TensorBytes {
    (name, Dtype::F32, shape, f32_bytes(&host(t)))
}

fn layer_norm_tensors(prefix: &str, ln: &LayerNorm) -> Vec<TensorBytes> {
    let d = ln.gamma.dims()[0];
    let mut out = vec![f32_tensor(
        format!("{prefix}.gamma"),
        vec![d],
        ln.gamma.val(),
    )];
    if let Some(beta) = &ln.beta {
        out.push(f32_tensor(format!("{prefix}.beta"), vec![d], beta.val()));
    }
    out
}

/// The float tensors of a GPT (embeddings and LayerNorms) as written to the export file.
fn float_tensors(model: &CharGpt) -> Vec<TensorBytes> {
    let mut out = Vec::new();
    for (name, w) in [
        ("tok_emb.weight", model.tok_emb.weight.val()),
        ("pos_emb.weight", model.pos_emb.weight.val()),
    ] {
        let shape = w.dims().to_vec();
        let n: usize = shape.iter().product();
        out.push(f32_tensor(name.into(), shape, w.reshape([n])));
    }
    for (i, b) in model.blocks.iter().enumerate() {
        out.extend(layer_norm_tensors(&format!("blocks.{i}.ln1"), &b.ln1));
        out.extend(layer_norm_tensors(&format!("blocks.{i}.ln2"), &b.ln2));
    }
    out.extend(layer_norm_tensors("ln_f", &model.ln_f));
    out
}

/// Writes the packed model of the language-model checkpoint at `ckpt_path` to `out`.
pub fn export_lm_checkpoint(
    ckpt_path: &Path,
    out: &Path,
    ternary: TernaryPacking,
) -> Result<ExportReport, TrainError> {
    let device = Device::flex();
    let ck = load_lm_checkpoint(ckpt_path, &device)?;
    let layers = ck.model.export_layers();
    if layers.iter().all(|l| matches!(l.kind, LayerQuant::Float)) {
        return Err(export_err(
            ckpt_path,
            "the checkpoint has no quantized layer (its recipe has no [[quant.layers]] rule), so \
             there are no integers to export; nothing was written",
        ));
    }
    let mut tensors = float_tensors(&ck.model);
    let mut metas = Vec::new();
    let mut report_layers = vec![(
        "embeddings+norms".to_string(),
        "float".to_string(),
        tensors.iter().map(|t| t.3.len()).sum::<usize>(),
    )];
    for l in &layers {
        let (t, meta) = pack_layer(l, ternary, ckpt_path)?;
        tensors.extend(t);
        report_layers.push((meta.name.clone(), meta.packing.clone(), meta.bytes));
        metas.push(meta);
    }
    let vocab: String = ck.vocab.iter().collect();
    let bytes = write_export(
        out,
        &tensors,
        ck.exp.to_toml(),
        &metas,
        &[("quench.vocab", vocab)],
    )?;
    Ok(ExportReport {
        path: out.to_path_buf(),
        file_bytes: bytes.len() as u64,
        payload_bytes: tensors.iter().map(|t| t.3.len()).sum(),
        fp32_bytes: 4 * ck.model.config().num_params(),
        layers: report_layers,
    })
}

/// A pre-norm block read from an export file.
#[derive(Debug)]
struct PackedBlock {
    ln1: LayerNorm,
    qkv: PackedLayer,
    attn_proj: PackedLayer,
    ln2: LayerNorm,
    fc: PackedLayer,
    mlp_proj: PackedLayer,
}

/// A char GPT read back from a `quench export` file, runnable without the checkpoint.
#[derive(Debug)]
pub struct PackedGpt {
    /// The sizes.
    pub config: GptConfig,
    /// The vocabulary (token id → character).
    pub vocab: Vec<char>,
    tok_emb: Tensor<2>,
    pos_emb: Tensor<2>,
    blocks: Vec<PackedBlock>,
    ln_f: LayerNorm,
    lm_head: PackedLayer,
    device: Device,
}

impl PackedGpt {
    /// Reads an export file of a GPT; every inconsistency is an error naming file and tensor.
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
        let get = |key: &str| {
            info.get(key)
                .ok_or_else(|| export_err(path, format!("metadata has no {key}")))
        };
        let exp = Experiment::from_toml_str(get("quench.recipe")?, path, &[])?;
        if !exp.model.is_language_model() {
            return Err(TrainError::Config(format!(
                "{} is an export of a classifier, not of a language model",
                path.display()
            )));
        }
        let vocab: Vec<char> = get("quench.vocab")?.chars().collect();
        let config = exp.model.gpt(vocab.len()).ok_or_else(|| {
            export_err(
                path,
                "its recipe is not a language model (model.arch = \"gpt\")",
            )
        })?;
        config
            .validate()
            .map_err(|e| export_err(path, format!("recipe: {e}")))?;
        let metas: Vec<LayerMeta> = serde_json::from_str(get("quench.layers")?)
            .map_err(|e| export_err(path, format!("quench.layers: {e}")))?;
        let expected: Vec<String> = config.layer_infos().into_iter().map(|i| i.name).collect();
        let got: Vec<String> = metas.iter().map(|m| m.name.clone()).collect();
        if expected != got {
            return Err(export_err(
                path,
                format!("layers {got:?} do not match the architecture's {expected:?}"),
            ));
        }
        for (m, i) in metas.iter().zip(config.layer_infos()) {
            if m.shape != i.weight_shape || m.op != "linear" {
                return Err(export_err(
                    path,
                    format!(
                        "{}: {} weight of shape {:?}, the architecture needs a linear {:?}",
                        m.name, m.op, m.shape, i.weight_shape
                    ),
                ));
            }
        }
        let device = Device::flex();
        let matrix = |name: &str, shape: [usize; 2]| -> Result<Tensor<2>, TrainError> {
            let v = read_f32(&st, name, path)?;
            if v.len() != shape[0] * shape[1] {
                return Err(export_err(
                    path,
                    format!(
                        "{name}: {} values, shape {shape:?} needs {}",
                        v.len(),
                        shape[0] * shape[1]
                    ),
                ));
            }
            Ok(Tensor::from_data(TensorData::new(v, shape), &device))
        };
        let w = config.width;
        let norm = |prefix: &str| -> Result<LayerNorm, TrainError> {
            let mut ln = LayerNormConfig::new(w).init(&device);
            for (what, slot) in [("gamma", Some(&mut ln.gamma)), ("beta", ln.beta.as_mut())] {
                let Some(slot) = slot else { continue };
                let name = format!("{prefix}.{what}");
                let v = read_f32(&st, &name, path)?;
                if v.len() != w {
                    return Err(export_err(
                        path,
                        format!("{name}: {} values, width is {w}", v.len()),
                    ));
                }
                *slot = Param::from_tensor(Tensor::from_data(TensorData::new(v, [w]), &device));
            }
            Ok(ln)
        };
        let mut layers = metas
            .into_iter()
            .map(|m| PackedModel::load_layer(&st, m, path, &device))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let mut next = || {
            layers
                .next()
                .ok_or_else(|| export_err(path, "fewer layers than the architecture"))
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            blocks.push(PackedBlock {
                ln1: norm(&format!("blocks.{i}.ln1"))?,
                qkv: next()?,
                attn_proj: next()?,
                ln2: norm(&format!("blocks.{i}.ln2"))?,
                fc: next()?,
                mlp_proj: next()?,
            });
        }
        let lm_head = next()?;
        Ok(Self {
            tok_emb: matrix("tok_emb.weight", [config.vocab, w])?,
            pos_emb: matrix("pos_emb.weight", [config.context, w])?,
            ln_f: norm("ln_f")?,
            blocks,
            lm_head,
            config,
            vocab,
            device,
        })
    }

    /// Ternary Linears that run on the integer kernel in the integer forward.
    pub fn integer_layers(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.attn_proj, &b.fc, &b.mlp_proj])
            .chain([&self.lm_head])
            .filter(|l| l.ternary.is_some())
            .count()
    }

    /// Logits `[batch, tokens, vocab]` for ids `[batch, tokens]`; `integer` runs the ternary
    /// Linears on the integer kernel, otherwise on the dequantized codes.
    pub fn forward(&self, ids: Tensor<2, Int>, integer: bool) -> Tensor<3> {
        let ids = ids.to_device(&self.device);
        let [b, t] = ids.dims();
        let c = self.config.width;
        let h = self.config.heads;
        let d = &self.device;
        let lin = |l: &PackedLayer, x: Tensor<3>| -> Tensor<3> {
            let [b, t, din] = x.dims();
            let y = packed_linear(l, x.reshape([b * t, din]), integer, d);
            let dout = y.dims()[1];
            y.reshape([b, t, dout])
        };
        let pos = Tensor::<1, Int>::arange(0..t as i64, d).unsqueeze::<2>();
        let mut x = embedding(self.tok_emb.clone(), ids) + embedding(self.pos_emb.clone(), pos);
        for blk in &self.blocks {
            let qkv = lin(&blk.qkv, blk.ln1.forward(x.clone()));
            let split = |i: usize| {
                qkv.clone()
                    .narrow(2, i * c, c)
                    .reshape([b, t, h, c / h])
                    .swap_dims(1, 2)
            };
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            };
            let y = attention(split(0), split(1), split(2), None, None, options)
                .swap_dims(1, 2)
                .reshape([b, t, c]);
            x = x + lin(&blk.attn_proj, y);
            let m = lin(
                &blk.mlp_proj,
                gelu(lin(&blk.fc, blk.ln2.forward(x.clone()))),
            );
            x = x + m;
        }
        lin(&self.lm_head, self.ln_f.forward(x))
    }

    /// Continues `prompt` from the file alone (integer kernel where the layers allow it).
    pub fn generate(
        &self,
        prompt: &str,
        opts: SampleOptions,
        integer: bool,
    ) -> Result<String, TrainError> {
        generate_with(&self.vocab, self.config.context, prompt, opts, |w| {
            let t = w.len();
            let x = Tensor::<2, Int>::from_data(TensorData::new(w.to_vec(), [1, t]), &self.device);
            Ok(host(
                self.forward(x, integer)
                    .narrow(1, t - 1, 1)
                    .reshape([self.vocab.len()]),
            ))
        })
    }
}

/// `quench export --verify` of a language model: the checkpoint's model against the file.
#[derive(Debug, Clone, Serialize)]
pub struct LmVerifyReport {
    /// Validation windows compared (each `context` characters).
    pub windows: usize,
    /// Characters (positions) compared.
    pub positions: usize,
    /// Positions whose argmax differs between the checkpoint's model and the file (dequantized
    /// codes).
    pub argmax_mismatches: usize,
    /// Largest |logit difference| between them.
    pub max_abs_logit_diff: f32,
    /// Ternary Linears run on the integer kernel in the integer pass.
    pub integer_layers: usize,
    /// Argmax mismatches of the integer-kernel pass.
    pub integer_argmax_mismatches: usize,
    /// Largest |logit difference| of the integer-kernel pass.
    pub integer_max_abs_logit_diff: f32,
    /// Mean cross-entropy (nats/char) over those windows: checkpoint, file, file on the integer
    /// kernel.
    pub loss_checkpoint: f64,
    /// Loss of the file's dequantized forward.
    pub loss_packed: f64,
    /// Loss of the integer-kernel forward.
    pub loss_integer: f64,
    /// 300 characters sampled (prompt "ROMEO:", temperature 0.8, seed 0) from the checkpoint …
    pub sample_checkpoint: String,
    /// … from the file's dequantized codes (must be identical to the checkpoint's) …
    pub sample_packed: String,
    /// … from the file on the integer kernel …
    pub sample_integer: String,
    /// Whether the file's dequantized forward samples the checkpoint's text exactly.
    pub samples_identical_packed: bool,
    /// Whether the integer kernel samples the checkpoint's text exactly (its logits differ in
    /// the last bits — exact i32 sums instead of f32 — so a long text can part ways where two
    /// characters are nearly equally likely).
    pub samples_identical: bool,
    /// Leading characters the integer kernel's text shares with the checkpoint's.
    pub integer_common_prefix_chars: usize,
    /// Tokens/s of the checkpoint model and of the integer path over those windows.
    pub tokens_per_sec_checkpoint: f64,
    /// Tokens/s of the integer path.
    pub tokens_per_sec_integer: f64,
}

fn nll_sum(logits: &[f32], targets: &[u32], vocab: usize) -> f64 {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &y)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            lse - row.get(y as usize).copied().unwrap_or(0.0) as f64
        })
        .sum()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

/// Compares the checkpoint's model and the export file on validation windows and sampled text.
pub fn verify_lm_export(ckpt_path: &Path, file: &Path) -> Result<LmVerifyReport, TrainError> {
    let device = Device::flex();
    let ck = load_lm_checkpoint(ckpt_path, &device)?;
    let packed = PackedGpt::load(file)?;
    if packed.vocab != ck.vocab || packed.config != ck.model.config() {
        return Err(export_err(
            file,
            format!(
                "was not exported from {} (vocabulary or sizes differ)",
                ckpt_path.display()
            ),
        ));
    }
    let (_, corpus) = load_corpus(&ck.exp)?;
    let (_, val_ids) = corpus.split(ck.exp.data.val_fraction);
    let context = packed.config.context;
    let vocab = packed.vocab.len();
    let windows = VERIFY_WINDOWS.min(val_ids.len().saturating_sub(1) / context);
    let stride = (val_ids.len().saturating_sub(context + 1) / windows.max(1)).max(1);
    let mut r = LmVerifyReport {
        windows,
        positions: windows * context,
        argmax_mismatches: 0,
        max_abs_logit_diff: 0.0,
        integer_layers: packed.integer_layers(),
        integer_argmax_mismatches: 0,
        integer_max_abs_logit_diff: 0.0,
        loss_checkpoint: 0.0,
        loss_packed: 0.0,
        loss_integer: 0.0,
        sample_checkpoint: String::new(),
        sample_packed: String::new(),
        sample_integer: String::new(),
        samples_identical_packed: false,
        samples_identical: false,
        integer_common_prefix_chars: 0,
        tokens_per_sec_checkpoint: 0.0,
        tokens_per_sec_integer: 0.0,
    };
    let (mut t_ck, mut t_int) = (0.0f64, 0.0f64);
    for k in 0..windows {
        let start = k * stride;
        let x: Vec<i64> = val_ids[start..start + context]
            .iter()
            .map(|&v| v as i64)
            .collect();
        let y = &val_ids[start + 1..start + context + 1];
        let ids = || Tensor::<2, Int>::from_data(TensorData::new(x.clone(), [1, context]), &device);
        let t0 = Instant::now();
        let a = host(ck.model.forward(ids()));
        let t1 = Instant::now();
        let c = host(packed.forward(ids(), true));
        t_int += t1.elapsed().as_secs_f64();
        t_ck += (t1 - t0).as_secs_f64();
        let b = host(packed.forward(ids(), false));
        r.loss_checkpoint += nll_sum(&a, y, vocab);
        r.loss_packed += nll_sum(&b, y, vocab);
        r.loss_integer += nll_sum(&c, y, vocab);
        for ((ra, rb), rc) in a.chunks(vocab).zip(b.chunks(vocab)).zip(c.chunks(vocab)) {
            r.argmax_mismatches += usize::from(argmax(ra) != argmax(rb));
            r.integer_argmax_mismatches += usize::from(argmax(ra) != argmax(rc));
        }
        for ((va, vb), vc) in a.iter().zip(&b).zip(&c) {
            r.max_abs_logit_diff = r.max_abs_logit_diff.max((va - vb).abs());
            r.integer_max_abs_logit_diff = r.integer_max_abs_logit_diff.max((va - vc).abs());
        }
    }
    let n = r.positions.max(1) as f64;
    r.loss_checkpoint /= n;
    r.loss_packed /= n;
    r.loss_integer /= n;
    r.tokens_per_sec_checkpoint = r.positions as f64 / t_ck.max(1e-9);
    r.tokens_per_sec_integer = r.positions as f64 / t_int.max(1e-9);
    let opts = SampleOptions {
        tokens: 300,
        temperature: 0.8,
        top_k: 0,
        seed: 0,
    };
    // The prompt falls back to "\n" for a corpus without the characters of "ROMEO:".
    let prompt = if "ROMEO:".chars().all(|ch| packed.vocab.contains(&ch)) {
        "ROMEO:"
    } else {
        ""
    };
    r.sample_checkpoint = crate::lm::generate(&ck.model, &ck.vocab, prompt, opts, &device)?;
    r.sample_packed = packed.generate(prompt, opts, false)?;
    r.sample_integer = packed.generate(prompt, opts, true)?;
    r.samples_identical_packed = r.sample_checkpoint == r.sample_packed;
    r.samples_identical = r.sample_checkpoint == r.sample_integer;
    r.integer_common_prefix_chars = r
        .sample_checkpoint
        .chars()
        .zip(r.sample_integer.chars())
        .take_while(|(a, b)| a == b)
        .count();
    Ok(r)
}

//! A character-level GPT (nanoGPT's shape): token + position embeddings, pre-norm blocks of
//! causal self-attention and an MLP, a final LayerNorm and a language-model head. Every Linear is
//! a [`QuantLinear`], so each one is float / QAT / ternary / binary by recipe, addressed by the
//! stable names `h0.attn.qkv`, `h0.attn.proj`, `h0.mlp.fc`, `h0.mlp.proj`, … and `lm_head`.
//! Embeddings and LayerNorms stay float (as in BitNet b1.58).

use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use quench_quant::layer::{LayerQuant, LayerReport, QuantLinear};

use crate::ModelError;
use crate::classifier::{ExportedLayer, export_linear};
use crate::names::{LayerInfo, LayerKind, LayerPlan};

/// Sizes of a char GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptConfig {
    /// Distinct tokens (characters of the corpus).
    pub vocab: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block (`width` must be a multiple).
    pub heads: usize,
    /// Embedding width.
    pub width: usize,
    /// Context length (tokens the model sees at once).
    pub context: usize,
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// LayerNorm before attention.
    pub ln1: LayerNorm,
    /// Query, key and value projections in one `[width, 3·width]` layer (`hN.attn.qkv`).
    pub qkv: QuantLinear,
    /// Attention output projection (`hN.attn.proj`).
    pub attn_proj: QuantLinear,
    /// LayerNorm before the MLP.
    pub ln2: LayerNorm,
    /// MLP up-projection `width → 4·width` (`hN.mlp.fc`).
    pub fc: QuantLinear,
    /// MLP down-projection `4·width → width` (`hN.mlp.proj`).
    pub mlp_proj: QuantLinear,
    heads: usize,
}

/// The char-level GPT.
#[derive(Module, Debug)]
pub struct CharGpt {
    /// Token embedding `[vocab, width]`.
    pub tok_emb: Embedding,
    /// Learned position embedding `[context, width]`.
    pub pos_emb: Embedding,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// Output projection to the vocabulary (`lm_head`, no bias).
    pub lm_head: QuantLinear,
    context: usize,
}

/// nanoGPT's initialization: N(0, 0.02) everywhere, residual projections N(0, 0.02/√(2L)).
fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

impl GptConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |s: String| Err(ModelError::Invalid(s));
        if self.layers == 0 || self.heads == 0 || self.width == 0 || self.context == 0 {
            return bad(format!(
                "model.layers ({}), heads ({}), width ({}) and context ({}) must all be ≥ 1",
                self.layers, self.heads, self.width, self.context
            ));
        }
        if !self.width.is_multiple_of(self.heads) {
            return bad(format!(
                "model.width = {} is not a multiple of model.heads = {}",
                self.width, self.heads
            ));
        }
        if self.vocab < 2 {
            return bad(format!(
                "the vocabulary has {} token(s), need ≥ 2",
                self.vocab
            ));
        }
        Ok(())
    }

    /// The quantizable layers (names, module paths, burn weight shapes `[d_in, d_out]`).
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let w = self.width;
        let mut infos = Vec::with_capacity(4 * self.layers + 1);
        for i in 0..self.layers {
            for (name, field, shape) in [
                ("attn.qkv", "qkv", [w, 3 * w]),
                ("attn.proj", "attn_proj", [w, w]),
                ("mlp.fc", "fc", [w, 4 * w]),
                ("mlp.proj", "mlp_proj", [4 * w, w]),
            ] {
                infos.push(LayerInfo::new(
                    format!("h{i}.{name}"),
                    format!("blocks.{i}.{field}"),
                    LayerKind::Linear,
                    shape.to_vec(),
                ));
            }
        }
        infos.push(LayerInfo::new(
            "lm_head".into(),
            "lm_head".into(),
            LayerKind::Linear,
            vec![w, self.vocab],
        ));
        infos
    }

    /// Parameters of the model (embeddings, norms, linears; quantizer state excluded).
    pub fn num_params(&self) -> usize {
        let (w, l) = (self.width, self.layers);
        let ln = 2 * w;
        (self.vocab + self.context) * w + l * (2 * ln + 12 * w * w) + ln + w * self.vocab
    }

    /// Builds the model on `device`, each Linear as `plan` says.
    pub fn init(&self, plan: &LayerPlan, device: &Device) -> Result<CharGpt, ModelError> {
        self.validate()?;
        let w = self.width;
        let proj_std = 0.02 / ((2 * self.layers) as f64).sqrt();
        let linear = |name: &str, d_in: usize, d_out: usize, std: f64| {
            let inner = LinearConfig::new(d_in, d_out)
                .with_bias(false)
                .with_initializer(normal(std))
                .init(device);
            QuantLinear::from_linear(inner, &plan.get(name))
                .map_err(|e| ModelError::Quant(name.to_string(), e))
        };
        let blocks = (0..self.layers)
            .map(|i| {
                Ok(Block {
                    ln1: LayerNormConfig::new(w).init(device),
                    qkv: linear(&format!("h{i}.attn.qkv"), w, 3 * w, 0.02)?,
                    attn_proj: linear(&format!("h{i}.attn.proj"), w, w, proj_std)?,
                    ln2: LayerNormConfig::new(w).init(device),
                    fc: linear(&format!("h{i}.mlp.fc"), w, 4 * w, 0.02)?,
                    mlp_proj: linear(&format!("h{i}.mlp.proj"), 4 * w, w, proj_std)?,
                    heads: self.heads,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(CharGpt {
            tok_emb: EmbeddingConfig::new(self.vocab, w)
                .with_initializer(normal(0.02))
                .init(device),
            pos_emb: EmbeddingConfig::new(self.context, w)
                .with_initializer(normal(0.02))
                .init(device),
            blocks,
            ln_f: LayerNormConfig::new(w).init(device),
            lm_head: linear("lm_head", w, self.vocab, 0.02)?,
            context: self.context,
        })
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let h = self.heads;
        let qkv = self.qkv.forward(self.ln1.forward(x.clone()));
        // [b, t, 3c] → q, k, v as [b, heads, t, c/heads]
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
        let x = x + self.attn_proj.forward(y);
        let m = self
            .mlp_proj
            .forward(gelu(self.fc.forward(self.ln2.forward(x.clone()))));
        x + m
    }
}

impl CharGpt {
    /// Logits `[batch, tokens, vocab]` for token ids `[batch, tokens]` (tokens ≤ context).
    ///
    /// # Panics
    /// If there are more tokens than the context length (callers crop).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, t] = ids.dims();
        assert!(
            t <= self.context,
            "{t} tokens exceed the model's context of {}",
            self.context
        );
        let device = ids.device();
        let pos = Tensor::<1, Int>::arange(0..t as i64, &device).unsqueeze::<2>();
        let mut x = self.tok_emb.forward(ids) + self.pos_emb.forward(pos);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.lm_head.forward(self.ln_f.forward(x))
    }

    /// The context length.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The sizes this model was built with.
    pub fn config(&self) -> GptConfig {
        let [width, vocab] = self.lm_head.inner.weight.dims();
        GptConfig {
            vocab,
            layers: self.blocks.len(),
            heads: self.blocks.first().map_or(1, |b| b.heads),
            width,
            context: self.context,
        }
    }

    /// The quantizable layers' names, paths and shapes (as [`GptConfig::layer_infos`]).
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        self.config().layer_infos()
    }

    /// Per-layer quantization numbers (scales, error, ternary fractions), as for classifiers.
    pub fn quant_reports(&self) -> Vec<(LayerInfo, LayerQuant, LayerReport)> {
        self.layer_infos()
            .into_iter()
            .zip(self.linears())
            .map(|(i, (_, l))| (i, l.ops.kind().clone(), l.ops.report(l.inner.weight.val())))
            .collect()
    }

    /// Every Linear as exported (integer codes where quantized); embeddings and norms are not
    /// included (they stay f32).
    pub fn export_layers(&self) -> Vec<ExportedLayer> {
        self.layer_infos()
            .into_iter()
            .zip(self.linears())
            .map(|(info, (_, l))| export_linear(info, l))
            .collect()
    }

    /// The quantizable layers, in order, with the modules themselves.
    pub fn linears(&self) -> Vec<(String, &QuantLinear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            out.push((format!("h{i}.attn.qkv"), &b.qkv));
            out.push((format!("h{i}.attn.proj"), &b.attn_proj));
            out.push((format!("h{i}.mlp.fc"), &b.fc));
            out.push((format!("h{i}.mlp.proj"), &b.mlp_proj));
        }
        out.push(("lm_head".into(), &self.lm_head));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn config() -> GptConfig {
        GptConfig {
            vocab: 11,
            layers: 2,
            heads: 2,
            width: 8,
            context: 6,
        }
    }

    fn ids(v: &[i64], b: usize, t: usize, d: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [b, t]), d)
    }

    #[test]
    fn param_count_matches_the_module() {
        let d = Device::flex();
        let c = config();
        let m = c.init(&LayerPlan::float(), &d).unwrap();
        assert_eq!(m.num_params(), c.num_params());
        // 11·8 + 6·8 + 2·(2·16 + 12·64) + 16 + 8·11
        assert_eq!(c.num_params(), 88 + 48 + 2 * (32 + 768) + 16 + 88);
    }

    #[test]
    fn attention_is_causal() {
        // Changing a later token must not change the logits at earlier positions.
        let d = Device::flex();
        let m = config().init(&LayerPlan::float(), &d).unwrap();
        let a = m.forward(ids(&[1, 2, 3, 4, 5], 1, 5, &d));
        let b = m.forward(ids(&[1, 2, 3, 9, 0], 1, 5, &d));
        let first = |t: Tensor<3>| t.narrow(1, 0, 3).into_data().try_into_vec::<f32>().unwrap();
        let last = |t: Tensor<3>| t.narrow(1, 3, 2).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(first(a.clone()), first(b.clone()));
        assert_ne!(last(a), last(b));
    }

    #[test]
    fn names_shapes_and_plan_reach_the_layers() {
        let d = Device::flex();
        let c = config();
        let infos = c.layer_infos();
        assert_eq!(infos.len(), 9);
        assert_eq!(infos[0].name, "h0.attn.qkv");
        assert_eq!(infos[0].weight_path(), "blocks.0.qkv.inner.weight");
        assert_eq!(infos[7].name, "h1.mlp.proj");
        assert_eq!(infos[7].weight_shape, vec![32, 8]);
        assert_eq!(infos[8].weight_shape, vec![8, 11]);
        let mut plan = LayerPlan::float();
        for i in &infos[..8] {
            plan.layers
                .insert(i.name.clone(), LayerQuant::Ternary { norm: false });
        }
        let m = c.init(&plan, &d).unwrap();
        let linears = m.linears();
        for ((name, l), info) in linears.iter().zip(&infos) {
            assert_eq!(name, &info.name);
            assert_eq!(l.inner.weight.dims().to_vec(), info.weight_shape);
        }
        assert_eq!(
            linears[3].1.ops.kind(),
            &LayerQuant::Ternary { norm: false }
        );
        assert_eq!(linears[8].1.ops.kind(), &LayerQuant::Float);
        // ternary weights in the forward: three values per layer (times γ)
        let w = linears[0].1.effective_weight();
        let mut v = w.into_data().try_into_vec::<f32>().unwrap();
        v.sort_by(f32::total_cmp);
        v.dedup();
        assert!(v.len() <= 3, "{v:?}");
    }

    #[test]
    fn gradients_reach_every_parameter_and_loss_falls() {
        use burn::nn::loss::CrossEntropyLossConfig;
        use burn::optim::{AdamConfig, GradientsParams};
        let d = Device::flex().autodiff();
        let mut plan = LayerPlan::float();
        plan.layers
            .insert("h0.mlp.fc".into(), LayerQuant::Ternary { norm: true });
        let mut m = config().init(&plan, &d).unwrap();
        let x = ids(&[1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 7], 2, 6, &d);
        let y = ids(&[2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 8], 2, 6, &d);
        let loss_fn = CrossEntropyLossConfig::new().init(&d);
        let mut optim = AdamConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..30 {
            let logits = m.forward(x.clone()).reshape([12, 11]);
            let loss = loss_fn.forward(logits, y.clone().reshape([12]));
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = loss.backward();
            let gp = GradientsParams::from_grads(grads, &m);
            assert_eq!(
                gp.len(),
                m.num_params_tensors(),
                "every parameter gets a gradient"
            );
            m = optim.step(1e-2, m, gp);
        }
        assert!(losses[29] < losses[0] * 0.5, "{losses:?}");
        let _ = m.valid();
    }

    trait CountTensors {
        fn num_params_tensors(&self) -> usize;
    }
    impl CountTensors for CharGpt {
        fn num_params_tensors(&self) -> usize {
            // embeddings 2, per block: 2 LN × 2 + 4 linears (no bias) = 8; ln_f 2; lm_head 1;
            // the ternary-with-norm layer's RMSNorm γ 1
            2 + 8 * self.blocks.len() + 2 + 1 + 1
        }
    }
}

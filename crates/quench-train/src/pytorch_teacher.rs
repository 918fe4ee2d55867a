//! Teachers trained in PyTorch: a safetensors (or `.pt`/`.pth` pickle) state dict with PyTorch
//! naming, for an MLP / LeNet-5 / CNN whose shape the recipe gives (`[distill.teacher_model]`),
//! loaded through burn-store (`PyTorchToBurnAdapter` transposes Linear weights to burn's
//! `[d_in, d_out]`) with key remapping.
//!
//! Canonical names are quench's layer names: `fc1.weight`, `fc1.bias`, `conv1.weight`, … A file
//! with other names (`net.0.weight` from an `nn.Sequential`, `classifier.2.weight`, …) is mapped
//! by `distill.teacher_key_map = [["^net\\.0\\.", "fc1."], …]` (regex → replacement, applied in
//! order). Every tensor must land on a layer and every layer must be filled, with the right
//! shape; otherwise the error names the first offending tensor.

use std::collections::HashMap;
use std::path::Path;

use burn::store::{
    ApplyError, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::Device;
use quench_models::{Classifier, ModelConfig};

use crate::TrainError;

/// Input features and classes of the image data sets a teacher is distilled on.
const INPUT: usize = 28 * 28;
const CLASSES: usize = 10;

fn teacher_err(path: &Path, detail: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("teacher {}: {detail}", path.display()))
}

/// Builds the float classifier `model` and fills it from the PyTorch state dict at `path`.
pub fn load_pytorch_teacher(
    path: &Path,
    model: &ModelConfig,
    key_map: &[(String, String)],
    device: &Device,
) -> Result<Classifier, TrainError> {
    if model.is_language_model() {
        return Err(teacher_err(
            path,
            "distill.teacher_model must be an image classifier (mlp, lenet5, cnn)",
        ));
    }
    std::fs::metadata(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let infos = model.layer_infos(INPUT, CLASSES);
    let mut remapper = KeyRemapper::new();
    for (i, (from, to)) in key_map.iter().enumerate() {
        remapper = remapper.add_pattern(from, to.as_str()).map_err(|e| {
            TrainError::Config(format!(
                "distill.teacher_key_map[{i}]: `{from}` is not a valid regex: {e}"
            ))
        })?;
    }
    // Module path (as burn-store names it) → canonical PyTorch name, for messages.
    let mut canonical: HashMap<String, String> = HashMap::new();
    for info in &infos {
        let escaped = info.name.replace('.', r"\.");
        remapper = remapper
            .add_pattern(
                format!(r"^{escaped}\.(weight|bias)$"),
                format!("{}.$1", info.param_path),
            )
            .map_err(|e| teacher_err(path, format!("layer name {}: {e}", info.name)))?;
        canonical.insert(info.weight_path(), format!("{}.weight", info.name));
        canonical.insert(info.bias_path(), format!("{}.bias", info.name));
    }
    let name_of = |p: &str| canonical.get(p).cloned().unwrap_or_else(|| p.to_string());
    let mut teacher = model.init_float(INPUT, CLASSES, device);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Partial loads and shape errors come back in the result (not as one opaque error), so the
    // message can name the first offending tensor in PyTorch's naming.
    let result = if matches!(ext.as_str(), "pt" | "pth" | "bin") {
        // Our remapped names carry the model's enum variant (`Mlp.layers.0…`), as the
        // safetensors store expects; the PyTorch store would strip it unless told not to.
        let mut store = PytorchStore::from_file(path)
            .remap(remapper)
            .skip_enum_variants(false)
            .allow_partial(true)
            .validate(false);
        teacher
            .load_from(&mut store)
            .map_err(|e| teacher_err(path, format!("not a readable PyTorch file: {e}")))?
    } else {
        let mut store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .remap(remapper)
            .allow_partial(true)
            .validate(false);
        teacher
            .load_from(&mut store)
            .map_err(|e| teacher_err(path, format!("not a readable safetensors file: {e}")))?
    };
    let arch = model.describe(INPUT, CLASSES);
    if let Some(e) = result.errors.first() {
        return Err(teacher_err(
            path,
            match e {
                ApplyError::ShapeMismatch {
                    path: p,
                    expected,
                    found,
                } => format!(
                    "tensor `{}` has shape {:?} (burn layout, after transposing PyTorch's Linear \
                     weights) but the recipe's teacher ({arch}) needs {:?}",
                    name_of(p),
                    found,
                    expected
                ),
                other => format!("{other:?}"),
            },
        ));
    }
    if let Some(p) = result.unused.first() {
        return Err(teacher_err(
            path,
            format!(
                "tensor `{p}` matches no layer of the recipe's teacher ({arch}: layers {}); name \
                 the file's tensors like quench's layers or map them with \
                 distill.teacher_key_map",
                infos
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if let Some((p, _)) = result.missing.first() {
        return Err(teacher_err(
            path,
            format!(
                "the file has no tensor for `{}` of the recipe's teacher ({arch})",
                name_of(p)
            ),
        ));
    }
    Ok(teacher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};
    use safetensors::tensor::{Dtype, TensorView};

    /// Deterministic "PyTorch" values: Linear weights `[out, in]`.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .map(|v| v * 0.1)
            .collect()
    }

    fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn mlp_tensors(names: [&str; 4]) -> Vec<(&str, Vec<usize>, Vec<f32>)> {
        vec![
            (names[0], vec![8, 784], values(8 * 784, 1)),
            (names[1], vec![8], values(8, 2)),
            (names[2], vec![10, 8], values(80, 3)),
            (names[3], vec![10], values(10, 4)),
        ]
    }

    fn mlp() -> ModelConfig {
        ModelConfig::Mlp { hidden: vec![8] }
    }

    /// relu(x·W1ᵀ + b1)·W2ᵀ + b2 by hand, PyTorch layout.
    fn reference(x: &[f32], t: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<f32> {
        let (w1, b1, w2, b2) = (&t[0].2, &t[1].2, &t[2].2, &t[3].2);
        let h: Vec<f32> = (0..8)
            .map(|o| {
                let s: f32 = (0..784).map(|i| x[i] * w1[o * 784 + i]).sum::<f32>() + b1[o];
                s.max(0.0)
            })
            .collect();
        (0..10)
            .map(|o| (0..8).map(|i| h[i] * w2[o * 8 + i]).sum::<f32>() + b2[o])
            .collect()
    }

    fn logits(m: &Classifier, x: &[f32]) -> Vec<f32> {
        let d = Device::flex();
        let t = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [1, 784]), &d);
        m.forward(t).into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn pytorch_mlp_loads_with_transposed_weights_and_key_maps() {
        let dir = tempfile::tempdir().unwrap();
        let d = Device::flex();
        let x = values(784, 9)
            .iter()
            .map(|v| v.abs() * 10.0)
            .collect::<Vec<_>>();
        // Canonical names.
        let t = mlp_tensors(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
        let p = dir.path().join("teacher.safetensors");
        write(&p, &t);
        let m = load_pytorch_teacher(&p, &mlp(), &[], &d).unwrap();
        let want = reference(&x, &t);
        for (a, b) in logits(&m, &x).iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // nn.Sequential names, mapped by the recipe.
        let t2 = mlp_tensors(["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]);
        let p2 = dir.path().join("seq.safetensors");
        write(&p2, &t2);
        let map = vec![
            (r"^net\.0\.".to_string(), "fc1.".to_string()),
            (r"^net\.2\.".to_string(), "fc2.".to_string()),
        ];
        let m2 = load_pytorch_teacher(&p2, &mlp(), &map, &d).unwrap();
        assert_eq!(logits(&m2, &x), logits(&m, &x));
        // Without the map: the first unmatched tensor is named.
        let err = load_pytorch_teacher(&p2, &mlp(), &[], &d)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("net.") && err.contains("teacher_key_map"),
            "{err}"
        );
        let bad = vec![("[".to_string(), "x".to_string())];
        let err = load_pytorch_teacher(&p2, &mlp(), &bad, &d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("teacher_key_map[0]"), "{err}");
    }

    #[test]
    fn files_written_by_pytorch_give_pytorchs_logits() {
        // tests/data/make_torch_teacher.py: an nn.Sequential MLP 784-8-10 saved by torch.save
        // and by safetensors.torch, with the logits PyTorch computed for one input.
        // Read when the test runs: `env!` bakes in the compiling checkout's path.
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(
                || env!("CARGO_MANIFEST_DIR").into(),
                std::path::PathBuf::from,
            )
            .join("../../tests/data");
        let fixture: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("teacher_mlp8.json")).unwrap()).unwrap();
        let floats = |k: &str| -> Vec<f32> {
            fixture[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        let (x, want) = (floats("input"), floats("logits"));
        let map = vec![
            (r"^0\.".to_string(), "fc1.".to_string()),
            (r"^2\.".to_string(), "fc2.".to_string()),
        ];
        let d = Device::flex();
        for file in ["teacher_mlp8.pt", "teacher_mlp8.safetensors"] {
            let m = load_pytorch_teacher(&dir.join(file), &mlp(), &map, &d).unwrap();
            let got = logits(&m, &x);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{file}: {got:?} vs PyTorch {want:?}");
            }
        }
    }

    #[test]
    fn mismatching_missing_and_corrupt_teachers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = Device::flex();
        // A 5-class head where the recipe says 10: the error names fc2.weight.
        let mut t = mlp_tensors(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
        t[2] = ("fc2.weight", vec![5, 8], values(40, 3));
        t[3] = ("fc2.bias", vec![5], values(5, 4));
        let p = dir.path().join("five.safetensors");
        write(&p, &t);
        let err = load_pytorch_teacher(&p, &mlp(), &[], &d)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`fc2.weight`") && err.contains("five.safetensors"),
            "{err}"
        );
        // A missing bias.
        let mut t = mlp_tensors(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
        t.pop();
        let p = dir.path().join("nobias.safetensors");
        write(&p, &t);
        let err = load_pytorch_teacher(&p, &mlp(), &[], &d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tensor for `fc2.bias`"), "{err}");
        // Garbage and a missing file.
        let p = dir.path().join("junk.safetensors");
        std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......").unwrap();
        let err = load_pytorch_teacher(&p, &mlp(), &[], &d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("junk.safetensors"), "{err}");
        let err = load_pytorch_teacher(&dir.path().join("none.safetensors"), &mlp(), &[], &d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.safetensors"), "{err}");
    }
}

//! End-to-end tests of the techniques through the `quench` binary on the real Fashion-MNIST
//! files: QAT + exact integer export, ternary (BitNet) + packed export on the integer kernel,
//! pruning (masks stay zero, resume keeps them), distillation (live teacher = cached logits),
//! and their bad-input errors. Models are tiny so each run takes seconds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quench::train::Checkpoint;
use quench::train::tb_reader::{read_event_dir, scalars};
use serde_json::Value;

#[path = "support/kills.rs"]
mod kills;
use kills::{KillAt, Lcg, kill_at, report};

const BIN: &str = env!("CARGO_BIN_EXE_quench");

/// The checkout's root, read when the test runs (cargo sets it): `env!` bakes in the path of
/// the checkout that compiled the test, stale when a target dir is reused by another clone.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
}

fn quench(args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(root())
        .args(args)
        .output()
        .expect("spawn quench")
}

fn ok(args: &[&str]) -> String {
    let out = quench(args);
    assert!(
        out.status.success(),
        "quench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fails(args: &[&str]) -> String {
    let out = quench(args);
    assert_eq!(out.status.code(), Some(1), "quench {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    err.lines().last().unwrap_or_default().to_string()
}

/// `quench run experiments/<recipe> --out <out> --progress quiet --set ...`.
fn run(recipe: &str, out: &Path, sets: &[&str]) -> Value {
    run_with(recipe, out, sets, &[])
}

/// The same with `--resume`.
fn resume(recipe: &str, out: &Path, sets: &[&str]) -> Value {
    run_with(recipe, out, sets, &["--resume"])
}

fn run_with(recipe: &str, out: &Path, sets: &[&str], flags: &[&str]) -> Value {
    let recipe = format!("experiments/{recipe}");
    let out_s = out.to_string_lossy().to_string();
    let mut args = vec![
        "run",
        recipe.as_str(),
        "--out",
        out_s.as_str(),
        "--progress",
        "quiet",
    ];
    args.extend_from_slice(flags);
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    ok(&args);
    serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn json_tail(stdout: &str) -> Value {
    // `quench export --verify` prints two JSON documents; the verify report is the last one.
    let start = stdout.rfind("\n{").map_or(0, |i| i + 1);
    serde_json::from_str(&stdout[start..]).unwrap()
}

#[test]
fn qat_w4a8_exports_integers_that_reproduce_the_model_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w4a8");
    let s = run(
        "fashion_mlp_w4a8.toml",
        &out,
        &["train.epochs=1", "model.hidden=[32]", "log.every_steps=200"],
    );
    assert_eq!(s["layer_bits"]["fc1"], "w4a8");
    assert_eq!(s["layer_bits"]["fc2"], "w4a8");
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.75, "W4A8 784-32-10 after one epoch: {acc}");
    // int4 codes (half a byte per weight) + one f32 scale per output channel + f32 biases.
    let expected = (784 * 32usize).div_ceil(2)
        + 4 * 32
        + 4 * 32
        + (32 * 10usize).div_ceil(2)
        + 4 * 10
        + 4 * 10;
    let packed = s["model_bytes_packed"].as_u64().unwrap() as usize;
    // + the static input scale / zero-point of each layer (8 bytes each).
    assert_eq!(packed, expected + 2 * 8, "packed bytes");
    assert!(packed * 6 < s["model_bytes_fp32"].as_u64().unwrap() as usize);

    // TensorBoard: per-layer scales and quantization error over training.
    let events = read_event_dir(&out.join("tb")).unwrap();
    for tag in [
        "quant/fc1/weight_scale",
        "quant/fc1/weight_error",
        "quant/fc1/input_scale",
        "quant/fc2/weight_error",
    ] {
        let v = scalars(&events, tag);
        assert!(v.len() >= 2, "{tag}: {v:?}");
        assert!(v.iter().all(|(_, x)| x.is_finite() && *x > 0.0), "{tag}");
    }
    let err = scalars(&events, "quant/fc1/weight_error");
    assert!(
        err.iter().all(|(_, e)| *e < 0.5),
        "int4 relative error {err:?}"
    );

    // Export and check against the checkpoint on the whole test set.
    let ckpt = s["checkpoint"].as_str().unwrap().to_string();
    let file = tmp.path().join("w4a8.safetensors");
    let f = file.to_string_lossy().to_string();
    let stdout = ok(&["export", &ckpt, "--out", &f, "--verify"]);
    let v = json_tail(&stdout);
    assert_eq!(v["samples"], 10000);
    assert_eq!(v["argmax_mismatches"], 0, "{v}");
    assert_eq!(v["max_abs_logit_diff"].as_f64().unwrap(), 0.0, "{v}");
    assert_eq!(v["accuracy_packed"], s["test_accuracy"]);
    let size = fs::metadata(&file).unwrap().len() as usize;
    assert!(size < packed + 4096, "file {size} vs payload {packed}");

    // A float checkpoint has nothing to export; nothing is written.
    let fp = run(
        "quickstart.toml",
        &tmp.path().join("fp"),
        &["train.epochs=1", "model.hidden=[16]"],
    );
    let none = tmp.path().join("none.safetensors");
    let err = fails(&[
        "export",
        fp["checkpoint"].as_str().unwrap(),
        "--out",
        &none.to_string_lossy(),
    ]);
    assert!(err.contains("no quantized layer"), "{err}");
    assert!(!none.exists());
}

#[test]
fn ternary_mlp_packs_2_bit_and_base3_and_runs_on_the_integer_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ternary");
    let s = run(
        "fashion_mlp_ternary.toml",
        &out,
        &["train.epochs=1", "model.hidden=[64]", "log.every_steps=200"],
    );
    assert_eq!(s["layer_bits"]["fc1"], "ternary");
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.7);
    let events = read_event_dir(&out.join("tb")).unwrap();
    let fr: Vec<f32> = ["frac_neg", "frac_zero", "frac_pos"]
        .iter()
        .map(|f| {
            scalars(&events, &format!("ternary/fc1/{f}"))
                .last()
                .unwrap()
                .1
        })
        .collect();
    assert!((fr.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{fr:?}");
    assert!(
        fr.iter().all(|f| *f > 0.05),
        "all three codes in use: {fr:?}"
    );

    let ckpt = s["checkpoint"].as_str().unwrap().to_string();
    let mut sizes = Vec::new();
    for packing in ["bits2", "base3"] {
        let file = tmp.path().join(format!("t-{packing}.safetensors"));
        let f = file.to_string_lossy().to_string();
        let stdout = ok(&[
            "export",
            &ckpt,
            "--out",
            &f,
            "--ternary-packing",
            packing,
            "--verify",
        ]);
        let v = json_tail(&stdout);
        assert_eq!(v["argmax_mismatches"], 0, "{packing}: {v}");
        assert_eq!(
            v["max_abs_logit_diff"].as_f64().unwrap(),
            0.0,
            "{packing}: {v}"
        );
        // Both Linear layers on the integer kernel (int8 activations × 2-bit codes, i32 sums).
        assert_eq!(v["integer_layers"], 2);
        let mism = v["integer_argmax_mismatches"].as_u64().unwrap();
        assert!(
            mism <= 10,
            "{packing}: integer kernel changed {mism} of 10000 predictions"
        );
        assert!(
            v["integer_max_abs_logit_diff"].as_f64().unwrap() < 0.05,
            "{v}"
        );
        sizes.push(fs::metadata(&file).unwrap().len());
        let err = fails(&["sample", &f]);
        assert!(err.contains("export of a classifier"), "{err}");
    }
    // 784·64 + 64·10 weights: 2 bits → 12,704 bytes; base 3 → 10,164 bytes.
    assert!(sizes[1] + 2000 < sizes[0], "base-3 file smaller: {sizes:?}");
}

#[test]
fn pruning_keeps_masked_weights_zero_and_resume_restores_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "train.epochs=2",
        "model.hidden=[64]",
        "prune.start_step=100",
        "prune.end_step=700",
        "log.every_steps=100",
    ];
    let full = run(
        "fashion_lenet300_gradual90.toml",
        &tmp.path().join("full"),
        &sets,
    );
    assert!(
        (full["sparsity"].as_f64().unwrap() - 0.9).abs() < 1e-3,
        "{full}"
    );
    assert!(full["test_accuracy"].as_f64().unwrap() > 0.75);
    let nz = full["nonzero_params"].as_u64().unwrap() as usize;
    let dense = 784 * 64 + 64 + 64 * 10 + 10;
    assert!(nz < dense / 5, "{nz} of {dense}");
    assert!(
        full["model_bytes_sparse"].as_u64().unwrap()
            < full["model_bytes_fp32"].as_u64().unwrap() / 3
    );

    // The target schedule and the achieved sparsity in TensorBoard.
    let events = read_event_dir(&tmp.path().join("full/tb")).unwrap();
    let target = scalars(&events, "prune/target_sparsity");
    let actual = scalars(&events, "prune/sparsity");
    assert!(target.first().unwrap().1 < 0.5 && (target.last().unwrap().1 - 0.9).abs() < 1e-6);
    assert!((actual.last().unwrap().1 - 0.9).abs() < 1e-3);
    assert!(!scalars(&events, "prune/fc1/sparsity").is_empty());

    // Stopped after epoch 1 (mid-schedule) and resumed: identical final weights.
    let cut = tmp.path().join("cut");
    let mut one = sets.to_vec();
    one[0] = "train.epochs=1";
    run("fashion_lenet300_gradual90.toml", &cut, &one);
    let resumed = resume("fashion_lenet300_gradual90.toml", &cut, &sets);
    assert_eq!(resumed["resumed_from_epoch"], 1);
    assert_eq!(resumed["test_loss"], full["test_loss"]);
    assert_eq!(resumed["nonzero_params"], full["nonzero_params"]);
    let a = Checkpoint::read(Path::new(full["checkpoint"].as_str().unwrap())).unwrap();
    let b = Checkpoint::read(Path::new(resumed["checkpoint"].as_str().unwrap())).unwrap();
    assert_eq!(a.meta.global_step, b.meta.global_step);
}

#[test]
fn distillation_live_teacher_equals_cached_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = run(
        "quickstart.toml",
        &tmp.path().join("teacher"),
        &["train.epochs=1", "model.hidden=[48]"],
    );
    let tpath = teacher["checkpoint"].as_str().unwrap().to_string();
    let tset = format!("distill.teacher=\"{tpath}\"");
    let student_sets = [
        "train.epochs=1",
        "model.hidden=[16]",
        "distill.cache_logits=false",
        tset.as_str(),
    ];
    let live = run(
        "fashion_distill_mlp.toml",
        &tmp.path().join("live"),
        &student_sets,
    );
    assert_eq!(live["teacher_test_accuracy"], teacher["test_accuracy"]);
    assert_eq!(live["distill"]["soft_weight"], 0.9);
    assert!(live["test_accuracy"].as_f64().unwrap() > 0.7);
    let events = read_event_dir(&tmp.path().join("live/tb")).unwrap();
    for tag in [
        "distill/soft_loss",
        "distill/hard_loss",
        "distill/agreement",
        "distill/temperature",
    ] {
        assert!(!scalars(&events, tag).is_empty(), "{tag}");
    }
    let agree = scalars(&events, "distill/agreement");
    assert!(agree.last().unwrap().1 > 0.6, "{agree:?}");

    // The cache: same logits, so the very same run.
    let recipe = "experiments/fashion_distill_mlp.toml";
    ok(&["distill-cache", recipe, "--set", &tset]);
    let mut cached_sets = student_sets.to_vec();
    cached_sets.push("distill.cache_logits=true");
    let cached = run(
        "fashion_distill_mlp.toml",
        &tmp.path().join("cached"),
        &cached_sets,
    );
    assert_eq!(cached["test_loss"], live["test_loss"]);
    assert_eq!(cached["distill"]["cached_logits"], true);

    // cache_logits without a cache: the first run writes it (one teacher pass), same result.
    let copy = tmp.path().join("copy.qck");
    fs::copy(&tpath, &copy).unwrap();
    let cset = format!("distill.teacher=\"{}\"", copy.display());
    let mut auto_sets = cached_sets.clone();
    auto_sets[3] = cset.as_str();
    assert!(!copy.with_extension("logits").exists());
    let auto = run(
        "fashion_distill_mlp.toml",
        &tmp.path().join("auto"),
        &auto_sets,
    );
    assert!(copy.with_extension("logits").exists());
    assert_eq!(auto["test_loss"], live["test_loss"]);

    // A cache made by another teacher is refused.
    let other = run(
        "quickstart.toml",
        &tmp.path().join("teacher2"),
        &["train.epochs=1", "model.hidden=[8]"],
    );
    let other_ckpt = PathBuf::from(other["checkpoint"].as_str().unwrap());
    fs::copy(
        Path::new(&tpath).with_extension("logits"),
        other_ckpt.with_extension("logits"),
    )
    .unwrap();
    let oset = format!("distill.teacher=\"{}\"", other_ckpt.display());
    let out2 = tmp.path().join("refused").to_string_lossy().to_string();
    let err = fails(&[
        "run",
        recipe,
        "--out",
        &out2,
        "--set",
        "train.epochs=1",
        "--set",
        &oset,
        "--set",
        "distill.cache_logits=true",
    ]);
    assert!(err.contains("refused") || err.contains("teacher"), "{err}");

    // A corrupt teacher file names the file.
    let bad = tmp.path().join("bad.qck");
    let bytes = fs::read(&tpath).unwrap();
    fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let bset = format!("distill.teacher=\"{}\"", bad.display());
    let out3 = tmp.path().join("bad").to_string_lossy().to_string();
    let err = fails(&["run", recipe, "--out", &out3, "--set", &bset]);
    assert!(err.contains("bad.qck"), "{err}");
}

#[test]
fn technique_recipes_reject_bad_values_naming_the_key() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "fashion_mlp_w4a8.toml",
            "quant.layers.0.weight.bits=1",
            &["bits"],
        ),
        (
            "fashion_mlp_w4a8.toml",
            "quant.layers.0.weight.bits=9",
            &["bits"],
        ),
        (
            "fashion_mlp_w4a8.toml",
            "quant.layers.0.weight={bits=4, granularity=\"per_group\", group_size=5}",
            &["group_size", "784"],
        ),
        (
            "fashion_mlp_w4a8.toml",
            "quant.layers.0.input={bits=8, estimator=\"percentile\", percentile=0.0}",
            &["percentile"],
        ),
        (
            "fashion_mlp_w4a8.toml",
            "quant.layers.0.pattern=\"fc9\"",
            &["fc9", "fc1, fc2, fc3"],
        ),
        (
            "fashion_mlp_w4a8.toml",
            "quant.layers.0.weight.bitz=4",
            &["bitz"],
        ),
        (
            "fashion_lenet300_gradual90.toml",
            "prune.target_sparsity=1.0",
            &["target_sparsity"],
        ),
        (
            "fashion_lenet300_gradual90.toml",
            "prune.end_step=10",
            &["end_step"],
        ),
        (
            "fashion_lenet300_gradual90.toml",
            "prune.layers=[\"conv9\"]",
            &["conv9", "fc1"],
        ),
        ("fashion_mlp_2of4.toml", "prune.n=4", &["prune.n"]),
        ("fashion_mlp_2of4.toml", "prune.m=5", &["prune.m"]),
        (
            "fashion_lenet5_structured50.toml",
            "prune.target_sparsity=0.999",
            &["target_sparsity"],
        ),
        (
            "fashion_distill_mlp.toml",
            "distill.temperature=0",
            &["distill.temperature"],
        ),
        (
            "fashion_distill_mlp.toml",
            "distill.alpha=1.5",
            &["distill.alpha"],
        ),
    ];
    for (recipe, set, needles) in cases {
        let path = format!("experiments/{recipe}");
        let err = fails(&["check", &path, "--set", set]);
        for n in *needles {
            assert!(err.contains(n), "{recipe} --set {set}: `{n}` not in: {err}");
        }
    }
}

#[test]
fn a_float_checkpoint_is_fine_tuned_with_qat() {
    let tmp = tempfile::tempdir().unwrap();
    let fp = run(
        "quickstart.toml",
        &tmp.path().join("fp"),
        &["train.epochs=1", "model.hidden=[32]"],
    );
    let init = format!("train.init_from=\"{}\"", fp["checkpoint"].as_str().unwrap());
    let sets = [
        "train.epochs=1",
        "model.hidden=[32]",
        "log.every_steps=10",
        init.as_str(),
    ];
    let qat = run("fashion_mlp_w4a8.toml", &tmp.path().join("qat"), &sets);
    // The first logged loss is already that of a trained model (fresh init starts near ln 10).
    let events = read_event_dir(&tmp.path().join("qat/tb")).unwrap();
    let first = scalars(&events, "train/loss")[0].1;
    assert!(
        first < 0.8,
        "first QAT loss {first}: the float weights were not loaded"
    );
    assert!(qat["test_accuracy"].as_f64().unwrap() > fp["test_accuracy"].as_f64().unwrap() - 0.02);
    // A checkpoint of another architecture is refused, naming the tensor.
    let recipe = "experiments/fashion_mlp_w4a8.toml";
    let out = tmp.path().join("bad").to_string_lossy().to_string();
    let err = fails(&[
        "run",
        recipe,
        "--out",
        &out,
        "--set",
        "model.hidden=[16]",
        "--set",
        &init,
    ]);
    assert!(err.contains("Mlp.layers.0.inner.weight"), "{err}");
}

#[test]
fn pruned_models_export_smaller_with_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    // Structured: half of conv2's channels and fc1/fc2's neurons go away physically.
    let s = run(
        "fashion_lenet5_structured50.toml",
        &tmp.path().join("st"),
        &[
            "train.epochs=1",
            "prune.start_step=50",
            "prune.end_step=300",
        ],
    );
    assert!(
        (s["layer_sparsity"]["conv2"].as_f64().unwrap() - 0.5).abs() < 1e-9,
        "{s}"
    );
    let file = tmp.path().join("st.safetensors");
    let stdout = ok(&[
        "export",
        s["checkpoint"].as_str().unwrap(),
        "--out",
        &file.to_string_lossy(),
        "--verify",
    ]);
    let v = json_tail(&stdout);
    assert_eq!(v["argmax_mismatches"], 0, "{v}");
    assert!(v["max_abs_logit_diff"].as_f64().unwrap() < 1e-4, "{v}");
    let bytes = fs::read(&file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let shape = |n: &str| meta.tensors()[n].shape.clone();
    assert_eq!(shape("conv2.weight"), vec![8, 6, 5, 5]);
    assert_eq!(shape("fc1.weight"), vec![8 * 25, 60]);
    assert_eq!(shape("fc2.weight"), vec![60, 42]);
    assert_eq!(shape("fc3.weight"), vec![42, 10]);
    assert!(bytes.len() * 3 < 61_706 * 4, "{} bytes", bytes.len());

    // Unstructured: bitmask + nonzero values.
    let g = run(
        "fashion_lenet300_gradual90.toml",
        &tmp.path().join("g"),
        &[
            "train.epochs=1",
            "model.hidden=[64]",
            "prune.start_step=50",
            "prune.end_step=300",
        ],
    );
    let file = tmp.path().join("g.safetensors");
    let stdout = ok(&[
        "export",
        g["checkpoint"].as_str().unwrap(),
        "--out",
        &file.to_string_lossy(),
        "--verify",
    ]);
    let v = json_tail(&stdout);
    assert_eq!(v["argmax_mismatches"], 0, "{v}");
    assert_eq!(v["max_abs_logit_diff"].as_f64().unwrap(), 0.0, "{v}");
    let size = fs::metadata(&file).unwrap().len();
    let sparse = g["model_bytes_sparse"].as_u64().unwrap();
    assert!(
        size < sparse + 4096 && size * 3 < g["model_bytes_fp32"].as_u64().unwrap(),
        "{size}"
    );
}

#[test]
fn sensitivity_prunes_one_layer_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let s = run(
        "quickstart.toml",
        &tmp.path().join("fp"),
        &["train.epochs=1", "model.hidden=[32]"],
    );
    let tb = tmp.path().join("sens");
    let out = ok(&[
        "sensitivity",
        s["checkpoint"].as_str().unwrap(),
        "--sparsities",
        "0,0.5,0.99",
        "--tb",
        &tb.to_string_lossy(),
    ]);
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(
        out.contains(&format!("baseline test accuracy {acc:.4}")),
        "{out}"
    );
    let events = read_event_dir(&tb).unwrap();
    for layer in ["fc1", "fc2"] {
        let v = scalars(&events, &format!("sensitivity/{layer}"));
        let steps: Vec<i64> = v.iter().map(|p| p.0).collect();
        assert_eq!(steps, vec![0, 50, 99], "{layer}");
        // 0 % pruned is the baseline; 99 % of one layer pruned must hurt.
        assert!((v[0].1 as f64 - acc).abs() < 1e-6, "{layer}: {v:?}");
        assert!((v[2].1 as f64) < acc - 0.1, "{layer}: {v:?}");
    }
    let err = fails(&[
        "sensitivity",
        s["checkpoint"].as_str().unwrap(),
        "--sparsities",
        "1.0",
    ]);
    assert!(err.contains("1"), "{err}");
}

#[test]
fn qat_resume_restores_observer_ranges_and_lsq_steps() {
    let tmp = tempfile::tempdir().unwrap();
    // LSQ weights (learned steps) + moving-average input observers: all quantizer state.
    let sets = [
        "train.epochs=2",
        "model.hidden=[16]",
        "log.every_steps=1000",
    ];
    let full = run("fashion_mlp_w2a8_lsq.toml", &tmp.path().join("full"), &sets);
    let cut = tmp.path().join("cut");
    run(
        "fashion_mlp_w2a8_lsq.toml",
        &cut,
        &[
            "train.epochs=1",
            "model.hidden=[16]",
            "log.every_steps=1000",
        ],
    );
    let resumed = resume("fashion_mlp_w2a8_lsq.toml", &cut, &sets);
    assert_eq!(resumed["resumed_from_epoch"], 1);
    assert_eq!(
        resumed["test_loss"], full["test_loss"],
        "quantizer state lost on resume"
    );
    assert_eq!(resumed["test_accuracy"], full["test_accuracy"]);
}

/// A char GPT small enough to train in seconds: 1 block of width 32, context 16.
const TINY_GPT: &[&str] = &[
    "train.iterations=40",
    "model.layers=1",
    "model.heads=2",
    "model.width=32",
    "model.context=16",
    "train.batch_size=8",
    "train.warmup_steps=5",
    "train.lr=1e-2",
    "train.min_lr=1e-3",
    "train.eval_interval=20",
    "train.eval_iters=2",
    "log.every_steps=10",
    "checkpoint.keep=5",
];

/// Every float parameter of a language-model checkpoint (records also hold per-process
/// parameter ids, so their bytes are not comparable).
fn gpt_weights(path: &str) -> Vec<quench::train::params::ParamValues> {
    let device = burn::tensor::Device::flex();
    let ck = quench::train::lm::load_lm_checkpoint(Path::new(path), &device).unwrap();
    quench::train::params::float_params(&ck.model)
}

#[test]
fn ternary_char_gpt_trains_resumes_samples_and_exports_integers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gpt");
    let s = run("shakespeare_char_ternary.toml", &out, TINY_GPT);
    assert_eq!(s["iterations"], 40);
    assert_eq!(
        s["vocab_size"], 65,
        "TinyShakespeare has 65 distinct characters"
    );
    let val = s["val_loss"].as_f64().unwrap();
    // Uniform over 65 characters is ln 65 = 4.17 nats; 40 steps learn letter frequencies (the
    // unigram entropy of the text is 3.3 nats).
    assert!(val.is_finite() && val < 3.4, "val_loss {val}");
    assert!(s["tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(s["layer_bits"]["h0.attn.qkv"], "ternary");
    assert_eq!(s["layer_bits"]["h0.mlp.proj"], "ternary");
    assert_eq!(s["layer_bits"]["lm_head"], "float");
    let fp32 = s["model_bytes_fp32"].as_u64().unwrap();
    let packed = s["model_bytes_packed"].as_u64().unwrap();
    assert!(packed < fp32, "{packed} < {fp32}");
    assert_eq!(s["sample"].as_str().unwrap().chars().count(), 200);

    // TensorBoard: LM losses per iteration, ternary fractions and γ per layer.
    let events = read_event_dir(&out.join("tb")).unwrap();
    for tag in [
        "train/loss",
        "eval/loss",
        "val/loss",
        "throughput/tokens_per_sec",
        "ternary/h0.mlp.fc/frac_zero",
        "ternary/h0.mlp.fc/frac_pos",
        "quant/h0.mlp.fc/weight_scale",
    ] {
        assert!(!scalars(&events, tag).is_empty(), "missing {tag}");
    }
    let fracs: Vec<f32> = ["neg", "zero", "pos"]
        .iter()
        .map(|w| {
            scalars(&events, &format!("ternary/h0.attn.qkv/frac_{w}"))
                .last()
                .unwrap()
                .1
        })
        .collect();
    assert!((fracs.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{fracs:?}");

    // A run that stopped after the iteration-20 checkpoint resumes to the very same weights.
    let out2 = tmp.path().join("gpt-resumed");
    run("shakespeare_char_ternary.toml", &out2, TINY_GPT);
    let last = out2.join("checkpoints/iter-00000040.qck");
    fs::remove_file(&last).unwrap();
    let r = resume("shakespeare_char_ternary.toml", &out2, TINY_GPT);
    assert_eq!(r["resumed_from_iteration"], 20);
    let ckpt = s["checkpoint"].as_str().unwrap().to_string();
    let (a, b) = (
        gpt_weights(&ckpt),
        gpt_weights(r["checkpoint"].as_str().unwrap()),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 10, "{} parameters", a.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.path, y.path);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(&x.values) == bits(&y.values), "{} differs", x.path);
    }
    assert_eq!(r["val_loss"], s["val_loss"]);
    assert_eq!(r["sample"], s["sample"]);

    // Sampling: the prompt comes first, a seed fixes the text, another seed changes it.
    let sample = |seed: &str| {
        ok(&[
            "sample", &ckpt, "--prompt", "ROMEO:", "--tokens", "60", "--seed", seed,
        ])
    };
    let a = sample("3");
    assert!(a.starts_with("ROMEO:"), "{a}");
    assert_eq!(a.trim_end_matches('\n').chars().count(), 66, "{a:?}");
    assert_eq!(a, sample("3"));
    assert_ne!(a, sample("4"));
    let err = fails(&["sample", &ckpt, "--prompt", "ROMEO€ü"]);
    assert!(err.contains("'€'") && err.contains("'ü'"), "{err}");

    // Packed export: 2-bit and base-3 ternary codes; the file alone reproduces the model.
    let mut sizes = Vec::new();
    for packing in ["bits2", "base3"] {
        let file = tmp.path().join(format!("gpt-{packing}.safetensors"));
        let f = file.to_string_lossy().to_string();
        let stdout = ok(&[
            "export",
            &ckpt,
            "--out",
            &f,
            "--ternary-packing",
            packing,
            "--verify",
        ]);
        let v = json_tail(&stdout);
        assert_eq!(v["argmax_mismatches"], 0, "{packing}: {v}");
        assert!(v["max_abs_logit_diff"].as_f64().unwrap() < 1e-4, "{v}");
        assert_eq!(v["integer_layers"], 4, "{v}");
        assert!(
            v["integer_max_abs_logit_diff"].as_f64().unwrap() < 0.05,
            "{v}"
        );
        let positions = v["positions"].as_u64().unwrap();
        assert!(positions >= 512, "{v}");
        assert!(
            v["integer_argmax_mismatches"].as_u64().unwrap() * 100 <= positions,
            "{v}"
        );
        let (lc, li) = (
            v["loss_checkpoint"].as_f64().unwrap(),
            v["loss_integer"].as_f64().unwrap(),
        );
        assert!((lc - li).abs() < 0.01, "{v}");
        assert_eq!(v["samples_identical_packed"], true, "{v}");
        sizes.push(fs::metadata(&file).unwrap().len());
        // `quench sample` runs from the export file too.
        let from_file = ok(&["sample", &f, "--prompt", "ROMEO:", "--tokens", "20"]);
        assert!(from_file.starts_with("ROMEO:"), "{from_file}");
    }
    // 4 ternary layers of 32·96 + 32·32 + 32·128 + 128·32 = 12,288 weights: 2 bits → 3,072
    // bytes, base 3 → 2,458 bytes.
    assert!(sizes[1] + 500 < sizes[0], "base-3 file smaller: {sizes:?}");
}

#[test]
fn language_model_bad_input_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = "experiments/shakespeare_char_fp32.toml";
    // Epochs on a language model, a pruning section, a text shorter than the context.
    let err = fails(&["check", recipe, "--set", "train.epochs=3"]);
    assert!(err.contains("train.epochs"), "{err}");
    let err = fails(&["check", recipe, "--set", "train.iterations=0"]);
    assert!(err.contains("train.iterations"), "{err}");
    let short = tmp.path().join("short.txt");
    fs::write(&short, "to be or not").unwrap();
    let out = tmp.path().join("short");
    let err = fails(&[
        "run",
        recipe,
        "--out",
        &out.to_string_lossy(),
        "--set",
        &format!("data.path={:?}", short.to_string_lossy()),
    ]);
    assert!(
        err.contains("short.txt") && err.contains("context"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written for a failed start");
    let empty = tmp.path().join("empty.txt");
    fs::write(&empty, "").unwrap();
    let err = fails(&[
        "run",
        recipe,
        "--out",
        &out.to_string_lossy(),
        "--set",
        &format!("data.path={:?}", empty.to_string_lossy()),
    ]);
    assert!(err.contains("empty.txt"), "{err}");
    // A loss that turns NaN (test-only fault hook) stops the run at that iteration, naming the
    // checkpoint that stays.
    let nan_out = tmp.path().join("nan");
    let mut args = vec![
        "run".to_string(),
        recipe.to_string(),
        "--out".to_string(),
        nan_out.to_string_lossy().to_string(),
    ];
    for s in TINY_GPT {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let out = Command::new(BIN)
        .current_dir(root())
        .args(&args)
        .env("QUENCH_FAULT_NAN_AT_STEPS", "25")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("iteration 25") && err.contains("iter-00000020.qck"),
        "{err}"
    );
    assert!(err.contains("every weight is finite"), "{err}");

    // Sampling from a classifier checkpoint.
    let teacher = "checkpoints/fashion_cnn_teacher.qck";
    let err = fails(&["sample", teacher]);
    assert!(err.contains("not of a language model"), "{err}");
}

#[test]
fn pytorch_state_dict_teacher_equals_the_quench_teacher_it_was_written_from() {
    // The shipped CNN teacher re-saved as a PyTorch state dict: Linear weights transposed to
    // PyTorch's [out, in], tensors named `nn.Sequential` style (`features.0.weight`, …) and mapped
    // back by the recipe's `distill.teacher_key_map`.
    use safetensors::tensor::{Dtype, TensorView};
    let tmp = tempfile::tempdir().unwrap();
    let device = burn::tensor::Device::flex();
    let teacher = quench::train::distill::load_teacher(
        Path::new("checkpoints/fashion_cnn_teacher.qck"),
        &device,
    )
    .unwrap();
    let params = quench::train::params::float_params(&teacher);
    let value = |path: &str| params.iter().find(|p| p.path == path).unwrap().clone();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (k, info) in teacher.layer_infos().iter().enumerate() {
        let w = value(&info.weight_path());
        let (shape, vals) = if w.dims.len() == 2 {
            let (din, dout) = (w.dims[0], w.dims[1]);
            let t: Vec<f32> = (0..dout * din)
                .map(|j| w.values[(j % din) * dout + j / din])
                .collect();
            (vec![dout, din], t)
        } else {
            (w.dims.clone(), w.values.clone())
        };
        tensors.push((format!("features.{}.weight", 2 * k), shape, bytes(&vals)));
        let b = value(&info.bias_path());
        tensors.push((
            format!("features.{}.bias", 2 * k),
            b.dims.clone(),
            bytes(&b.values),
        ));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let file = tmp.path().join("teacher_torch.safetensors");
    fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
    let names: Vec<String> = teacher
        .layer_infos()
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let key_map = names
        .iter()
        .enumerate()
        .map(|(k, n)| format!(r#"['^features\.{}\.', '{n}.']"#, 2 * k))
        .collect::<Vec<_>>()
        .join(", ");
    let teacher_set = format!("distill.teacher={:?}", file.to_string_lossy());
    let model_set =
        r#"distill.teacher_model={ arch = "cnn", channels = [32, 64], kernel = 3, fc = [256] }"#;
    let map_set = format!("distill.teacher_key_map=[{key_map}]");
    let sets = [
        "train.epochs=1",
        "model.hidden=[16]",
        "log.every_steps=200",
        teacher_set.as_str(),
        model_set,
        map_set.as_str(),
    ];
    let s = run("fashion_distill_mlp.toml", &tmp.path().join("torch"), &sets);
    let reference: Value =
        serde_json::from_str(&ok(&["eval", "checkpoints/fashion_cnn_teacher.qck"])).unwrap();
    assert!(
        (s["teacher_test_accuracy"].as_f64().unwrap() - 0.9232).abs() < 0.002,
        "{}",
        s["teacher_test_accuracy"]
    );
    assert_eq!(
        s["teacher_test_accuracy"], reference["test_accuracy"],
        "the PyTorch-layout file computes what the quench checkpoint computes"
    );

    // Without the architecture, or with a wrong one: one clear error.
    let recipe = "experiments/fashion_distill_mlp.toml";
    let none = tmp.path().join("none");
    let err = fails(&[
        "run",
        recipe,
        "--set",
        &teacher_set,
        "--out",
        &none.to_string_lossy(),
    ]);
    assert!(err.contains("distill.teacher_model"), "{err}");
    let wrong =
        r#"distill.teacher_model={ arch = "cnn", channels = [16, 64], kernel = 3, fc = [256] }"#;
    let out = tmp.path().join("wrong");
    let err = fails(&[
        "run",
        recipe,
        "--out",
        &out.to_string_lossy(),
        "--set",
        &teacher_set,
        "--set",
        wrong,
        "--set",
        &map_set,
    ]);
    assert!(err.contains("`conv1.weight`"), "{err}");
}

/// The char GPT killed (SIGKILL) at random offsets into each phase — loading the corpus,
/// training, evaluating, inside a slowed checkpoint write — and resumed each time ends with the
/// uninterrupted run's validation loss and weights, bit for bit.
#[test]
fn repeated_sigkills_of_the_char_gpt_resume_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let cut = tmp.path().join("cut");
    let phase_file = tmp.path().join("phase");
    let recipe = "shakespeare_char_ternary.toml";
    // A checkpoint every 10 iterations: more resume points for the kills to hit.
    let mut sets = TINY_GPT.to_vec();
    sets.push("train.eval_interval=10");
    let a = run(recipe, &full, &sets);

    let mut rng = Lcg(0x9e37);
    let plan = [
        KillAt::InPhase("train", 1, rng.below(30)),
        // After the first checkpoint (iteration 10) is complete: progress.
        KillAt::InPhase("train", 2, rng.below(30)),
        KillAt::InPhase("checkpoint", 1, rng.below(400)),
        KillAt::InPhase("load-data", 1, 0),
        KillAt::InPhase("eval", 1, rng.below(5)),
        KillAt::InPhase("train", 3, rng.below(30)),
        KillAt::Delay(200 + rng.below(1500)),
        KillAt::InPhase("checkpoint", 1, rng.below(400)),
    ];
    let mut per_phase = std::collections::BTreeMap::new();
    for (attempt, at) in plan.into_iter().enumerate() {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(root())
            .args(["run", &format!("experiments/{recipe}"), "--out"])
            .arg(&cut)
            .args(["--progress", "quiet"])
            .env("QUENCH_TEST_SLOW_WRITE_MS", "40");
        for s in &sets {
            cmd.args(["--set", s]);
        }
        if attempt > 0 {
            cmd.arg("--resume");
        }
        let Some(phase) = kill_at(cmd, &phase_file, at) else {
            break; // finished before this kill point
        };
        *per_phase.entry(phase).or_insert(0usize) += 1;
        for (_, p) in quench::train::checkpoint::list_checkpoints(&cut.join("checkpoints"))
            .unwrap_or_default()
        {
            Checkpoint::read(&p).unwrap_or_else(|e| panic!("after {per_phase:?}: {e}"));
        }
    }
    report("char GPT", &per_phase);
    for phase in ["train", "checkpoint"] {
        assert!(
            per_phase.contains_key(phase),
            "no kill landed in {phase}: {per_phase:?}"
        );
    }
    let b = resume(recipe, &cut, &sets);
    assert_eq!(b["iterations"], 40);
    assert!(b["resumed_from_iteration"].is_u64(), "{b}");
    assert_eq!(a["val_loss"], b["val_loss"]);
    assert_eq!(a["val_loss_estimate"], b["val_loss_estimate"]);
    assert_eq!(a["sample"], b["sample"]);
    let (wa, wb) = (
        gpt_weights(a["checkpoint"].as_str().unwrap()),
        gpt_weights(b["checkpoint"].as_str().unwrap()),
    );
    assert_eq!(wa.len(), wb.len());
    for (x, y) in wa.iter().zip(&wb) {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(&x.values) == bits(&y.values), "{} differs", x.path);
    }
}

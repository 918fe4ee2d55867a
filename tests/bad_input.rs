//! Every kind of bad input a user can hand quench, through the CLI, in one table: each must end
//! with exit code 1 and one `error:` line that names the file, key or value, never a panic, a
//! hang or an allocation sized by a lying header. The unit tests of each reader cover the same
//! cases closer to the code (`quench-data` idx/text, `checkpoint.rs`, `export.rs`, the recipe);
//! this is the user's view, and the count of cases covered.
//!
//! Cases (22): IDX — truncated gzip, zero-length file, wrong magic, wrong number of dimensions,
//! a header claiming 2^32−1 images in a tiny file, label count ≠ image count, a `.gz` that is
//! not gzip; text — invalid UTF-8, an empty corpus; recipes — unknown key, wrong type, bits out
//! of range, sparsity ≥ 1, temperature ≤ 0; checkpoints — a flipped byte, truncated,
//! zero-length, from another model (`train.init_from`), a teacher that is not a classifier; exports —
//! truncated classifier export, truncated GPT export, zero-length export.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_quench");
const FMNIST: &str = "/usr/share/datasets/fashion-mnist";
const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// The checkout's root, read when the test runs (cargo sets it): `env!` bakes in the path of
/// the checkout that compiled the test, stale when a target dir is reused by another clone.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
}

fn quench(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(root())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn quench: {e}"))
}

fn ok(args: &[&str]) {
    let o = quench(args);
    assert!(
        o.status.success(),
        "quench {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs one bad-input case: exit code 1, no panic, the last stderr line an `error:` naming
/// every one of `needles`.
#[track_caller]
fn case(n: &mut usize, what: &str, args: &[&str], needles: &[&str]) {
    *n += 1;
    let o = quench(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "case {what}: a panic\n{err}");
    assert_eq!(o.status.code(), Some(1), "case {what}: exit code\n{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "case {what}: {err}");
    for needle in needles {
        assert!(
            last.contains(needle),
            "case {what}: `{needle}` not in: {last}"
        );
    }
    eprintln!("ok {n:2} {what}: {last}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
    e.finish().unwrap_or_else(|e| panic!("{e}"))
}

/// An IDX header + payload (u8 data).
fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

/// A copy of the Fashion-MNIST directory with `name` replaced by `bytes`.
fn data_dir_with(tmp: &Path, tag: &str, name: &str, bytes: &[u8]) -> String {
    let dir = tmp.join(format!("data-{tag}"));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    for f in IDX_FILES {
        fs::copy(Path::new(FMNIST).join(f), dir.join(f)).unwrap_or_else(|e| panic!("{e}"));
    }
    fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{e}"));
    format!("data.path={:?}", dir.to_string_lossy())
}

fn write(path: &Path, bytes: &[u8]) -> String {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().to_string()
}

#[test]
fn every_bad_input_is_one_clear_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let t = tmp.path();
    let s = |p: &Path| p.to_string_lossy().to_string();
    let mut n = 0;

    // Good artifacts to damage: a ternary classifier checkpoint + export, a tiny GPT checkpoint + export.
    let cls_run = t.join("cls");
    ok(&[
        "run",
        "experiments/fashion_mlp_ternary.toml",
        "--out",
        &s(&cls_run),
        "--progress",
        "quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "model.hidden=[16]",
    ]);
    let cls_ckpt = cls_run.join("checkpoints/epoch-00001.qck");
    let cls_export = t.join("cls.safetensors");
    ok(&["export", &s(&cls_ckpt), "--out", &s(&cls_export)]);
    let gpt_run = t.join("gpt");
    let mut gpt_args = vec![
        "run".to_string(),
        "experiments/shakespeare_char_ternary.toml".into(),
        "--out".into(),
        s(&gpt_run),
        "--progress".into(),
        "quiet".into(),
    ];
    for set in [
        "train.iterations=4",
        "model.layers=1",
        "model.heads=2",
        "model.width=16",
        "model.context=8",
        "train.batch_size=2",
        "train.warmup_steps=1",
        "train.eval_interval=4",
        "train.eval_iters=1",
    ] {
        gpt_args.push("--set".into());
        gpt_args.push(set.into());
    }
    ok(&gpt_args.iter().map(String::as_str).collect::<Vec<_>>());
    let gpt_ckpt = gpt_run.join("checkpoints/iter-00000004.qck");
    let gpt_export = t.join("gpt.safetensors");
    ok(&["export", &s(&gpt_ckpt), "--out", &s(&gpt_export)]);

    // ---- IDX files (quench run on a copy of the data with one file damaged) ----
    let run_on = |set: &str, out: &str| -> Vec<String> {
        [
            "run",
            "experiments/quickstart.toml",
            "--progress",
            "quiet",
            "--out",
            out,
            "--set",
            set,
        ]
        .map(String::from)
        .to_vec()
    };
    let images = fs::read(Path::new(FMNIST).join(IDX_FILES[0])).unwrap_or_else(|e| panic!("{e}"));
    let idx_cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "IDX truncated gzip",
            IDX_FILES[0],
            images[..images.len() / 2].to_vec(),
        ),
        ("IDX zero-length file", IDX_FILES[1], Vec::new()),
        (
            "IDX wrong magic",
            IDX_FILES[3],
            gzip(&[7, 7, 8, 1, 0, 0, 0, 1, 3]),
        ),
        (
            "IDX images with 2 dimensions",
            IDX_FILES[2],
            gzip(&idx(&[2, 784], &[0; 2 * 784])),
        ),
        (
            "IDX header claims 2^32-1 images",
            IDX_FILES[0],
            gzip(&idx(&[u32::MAX, 28, 28], &[0; 64])),
        ),
        (
            "IDX 10 labels for 60000 images",
            IDX_FILES[1],
            gzip(&idx(&[10], &[1; 10])),
        ),
        (
            "IDX .gz that is not gzip",
            IDX_FILES[3],
            b"this is not gzip".to_vec(),
        ),
    ];
    for (i, (what, name, bytes)) in idx_cases.into_iter().enumerate() {
        let set = data_dir_with(t, &i.to_string(), name, &bytes);
        let out = s(&t.join(format!("idx-run-{i}")));
        let args = run_on(&set, &out);
        case(
            &mut n,
            what,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[name],
        );
    }

    // ---- Text corpora ----
    let gpt_on = |corpus: &str, out: &str| -> Vec<String> {
        [
            "run",
            "experiments/shakespeare_char_fp32.toml",
            "--progress",
            "quiet",
            "--out",
            out,
            "--set",
            &format!("data.path={corpus:?}"),
        ]
        .map(String::from)
        .to_vec()
    };
    let bad_utf8 = write(
        &t.join("latin1.txt"),
        b"caf\xe9 au lait, encore du caf\xe9\n",
    );
    let args = gpt_on(&bad_utf8, &s(&t.join("text-1")));
    case(
        &mut n,
        "text corpus with invalid UTF-8",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["latin1.txt"],
    );
    let empty = write(&t.join("empty.txt"), b"");
    let args = gpt_on(&empty, &s(&t.join("text-2")));
    case(
        &mut n,
        "empty text corpus",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["empty.txt"],
    );

    // ---- Recipes (quench check) ----
    let check = |recipe: &str, set: &str| -> Vec<String> {
        ["check", recipe, "--set", set].map(String::from).to_vec()
    };
    for (what, recipe, set, needle) in [
        (
            "recipe unknown key",
            "experiments/quickstart.toml",
            "train.epoch=2",
            "train.epoch",
        ),
        (
            "recipe wrong type",
            "experiments/quickstart.toml",
            "train.epochs=\"three\"",
            "train.epochs",
        ),
        (
            "recipe sparsity 1.0",
            "experiments/fashion_lenet300_gradual90.toml",
            "prune.target_sparsity=1.0",
            "target_sparsity",
        ),
        (
            "recipe temperature 0",
            "experiments/fashion_distill_mlp.toml",
            "distill.temperature=0.0",
            "temperature",
        ),
    ] {
        let args = check(recipe, set);
        case(
            &mut n,
            what,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[needle],
        );
    }
    let w4a8 = fs::read_to_string(root().join("experiments/fashion_mlp_w4a8.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let bits9 = write(
        &t.join("bits9.toml"),
        w4a8.replace("bits = 4", "bits = 9").as_bytes(),
    );
    case(
        &mut n,
        "recipe weight bits 9",
        &["check", &bits9],
        &["bits9.toml", "bits", "9"],
    );

    // ---- Checkpoints ----
    let good = fs::read(&cls_ckpt).unwrap_or_else(|e| panic!("{e}"));
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    let flipped = write(&t.join("flipped.qck"), &flipped);
    case(
        &mut n,
        "checkpoint with a flipped byte",
        &["eval", &flipped],
        &["flipped.qck"],
    );
    let cut = write(&t.join("cut.qck"), &good[..good.len() * 2 / 3]);
    case(
        &mut n,
        "truncated checkpoint",
        &["eval", &cut],
        &["cut.qck"],
    );
    let zero = write(&t.join("zero.qck"), b"");
    case(
        &mut n,
        "zero-length checkpoint",
        &["eval", &zero],
        &["zero.qck"],
    );
    case(
        &mut n,
        "init_from a checkpoint of another model",
        &[
            "run",
            "experiments/quickstart.toml",
            "--out",
            &s(&t.join("init")),
            "--progress",
            "quiet",
            "--set",
            &format!("train.init_from={:?}", s(&cls_ckpt)),
        ],
        &["epoch-00001.qck"],
    );
    case(
        &mut n,
        "a GPT checkpoint as a classifier's teacher",
        &[
            "run",
            "experiments/fashion_distill_mlp.toml",
            "--out",
            &s(&t.join("distill")),
            "--progress",
            "quiet",
            "--set",
            &format!("distill.teacher={:?}", s(&gpt_ckpt)),
            "--set",
            "distill.cache_logits=false",
        ],
        &["iter-00000004.qck"],
    );

    // ---- Exports ----
    let cls_bytes = fs::read(&cls_export).unwrap_or_else(|e| panic!("{e}"));
    let cls_cut = write(
        &t.join("cls-cut.safetensors"),
        &cls_bytes[..cls_bytes.len() / 2],
    );
    case(
        &mut n,
        "truncated classifier export",
        &["sample", &cls_cut, "--tokens", "5"],
        &["cls-cut.safetensors"],
    );
    let gpt_bytes = fs::read(&gpt_export).unwrap_or_else(|e| panic!("{e}"));
    let gpt_cut = write(
        &t.join("gpt-cut.safetensors"),
        &gpt_bytes[..gpt_bytes.len() - 100],
    );
    case(
        &mut n,
        "truncated GPT export",
        &["sample", &gpt_cut, "--tokens", "5"],
        &["gpt-cut.safetensors"],
    );
    let empty_export = write(&t.join("empty.safetensors"), b"");
    case(
        &mut n,
        "zero-length export",
        &["sample", &empty_export, "--tokens", "5"],
        &["empty.safetensors"],
    );

    assert_eq!(n, 22, "the module doc lists 22 cases");
}

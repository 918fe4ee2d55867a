//! End-to-end tests of the `quench` binary on the real Fashion-MNIST files
//! (`apt-get install dataset-fashion-mnist`; `.ci/run` installs it).
//!
//! Every run here is a small MLP (784-32-10), so an epoch takes well under a second.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use quench::train::Checkpoint;
use quench::train::tb_reader::{histograms, read_event_dir, scalars};
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

fn quickstart() -> PathBuf {
    root().join("experiments/quickstart.toml")
}

/// `quench run quickstart --out OUT --progress plain` with a tiny model plus `extra` overrides.
fn run_cmd(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(root())
        .arg("run")
        .arg(quickstart())
        .arg("--out")
        .arg(out)
        .args(["--progress", "plain", "--set", "model.hidden=[32]"]);
    for s in extra {
        cmd.args(["--set", s]);
    }
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.output().expect("spawn quench")
}

fn ok(cmd: Command) -> Output {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "quench failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail; returns its stderr (one `error:` line) after checking the exit code.
fn fails(cmd: Command) -> String {
    let out = output(cmd);
    assert!(!out.status.success(), "quench unexpectedly succeeded");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "no error line in: {err}");
    last
}

fn summary(out: &Path) -> Value {
    let text = fs::read_to_string(out.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary.json parses")
}

/// Every file under `dir` with its bytes, to show that a failed command changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    files
}

/// The final model's float parameters of a finished run.
fn weights(summary: &Value) -> Vec<quench::train::params::ParamValues> {
    let path = PathBuf::from(summary["checkpoint"].as_str().unwrap());
    let ckpt = Checkpoint::read(&path).unwrap();
    let exp: quench::train::Experiment = toml::from_str(&ckpt.meta.experiment_toml).unwrap();
    let device = burn::tensor::Device::flex();
    let model = quench::train::run::model_from_checkpoint(&exp, &ckpt, &path, &device).unwrap();
    quench::train::params::float_params(&model)
}

#[test]
fn one_epoch_run_writes_summary_checkpoint_and_tensorboard() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(run_cmd(&out, &["train.epochs=1", "log.every_steps=100"]));

    let s = summary(&out);
    assert_eq!(s["experiment"], "quickstart");
    assert_eq!(s["epochs_completed"], 1);
    assert_eq!(s["steps"], 469); // ceil(60000 / 128)
    assert_eq!(s["params"], 784 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(s["model_bytes_fp32"], 4 * (784 * 32 + 32 + 32 * 10 + 10));
    assert_eq!(s["device"], "flex");
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(
        (0.75..0.90).contains(&acc),
        "one epoch of a 784-32-10 MLP: {acc}"
    );
    let loss = s["test_loss"].as_f64().unwrap();
    assert!(loss > 0.2 && loss < 0.8, "test loss {loss}");
    assert!(s["train_samples_per_sec"].as_f64().unwrap() > 100.0);

    // The checkpoint is readable and `quench eval` reproduces the summary's test metrics.
    let ckpt = PathBuf::from(s["checkpoint"].as_str().unwrap());
    let c = Checkpoint::read(&ckpt).expect("checkpoint reads");
    assert_eq!(c.meta.epoch, 1);
    assert_eq!(c.meta.global_step, 469);
    for section in ["model", "optimizer", "scheduler"] {
        assert!(
            c.section(section).is_some_and(|b| !b.is_empty()),
            "{section}"
        );
    }
    let mut eval = Command::new(BIN);
    eval.arg("eval").arg(&ckpt);
    let e = ok(eval);
    let report: Value = serde_json::from_slice(&e.stdout).expect("eval prints JSON");
    assert_eq!(report["test_accuracy"], s["test_accuracy"]);
    let eval_loss = report["test_loss"].as_f64().unwrap();
    assert!((eval_loss - loss).abs() < 1e-9, "{eval_loss} vs {loss}");

    // TensorBoard: parse the event files ourselves (framing, masked CRC32C, protobuf).
    let tb = PathBuf::from(s["tensorboard_dir"].as_str().unwrap());
    assert_eq!(tb, out.join("tb"));
    let events = read_event_dir(&tb).expect("event files parse");
    for tag in [
        "train/loss",
        "train/accuracy",
        "lr",
        "throughput/samples_per_sec",
    ] {
        let v = scalars(&events, tag);
        // Logged every 100 steps and at the epoch's last step: 100..400 and 469.
        let steps: Vec<i64> = v.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![100, 200, 300, 400, 469], "{tag}");
        assert!(v.iter().all(|(_, x)| x.is_finite()), "{tag}");
    }
    let lr = scalars(&events, "lr");
    assert!(lr.iter().all(|(_, x)| (*x - 1e-3).abs() < 1e-9));
    for tag in ["eval/loss", "eval/accuracy", "test/accuracy", "test/loss"] {
        let v = scalars(&events, tag);
        assert_eq!(v.len(), 1, "{tag}");
    }
    let eval_acc = scalars(&events, "eval/accuracy")[0].1 as f64;
    assert!((eval_acc - acc).abs() < 1e-6);
    for layer in ["fc1", "fc2"] {
        for p in ["weight", "bias"] {
            let tag = format!("params/{layer}/{p}");
            let h = histograms(&events, &tag);
            assert_eq!(h.len(), 1, "{tag}");
            let n = if p == "weight" {
                if layer == "fc1" { 784 * 32 } else { 32 * 10 }
            } else if layer == "fc1" {
                32
            } else {
                10
            };
            assert_eq!(h[0].1.num as usize, n, "{tag}");
        }
    }
}

/// Runs 3 epochs uninterrupted; then the same recipe killed (SIGKILL) while it writes the
/// epoch-2 checkpoint, and resumed. The resumed run must end bit-identical.
#[test]
fn run_killed_mid_checkpoint_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let cut = tmp.path().join("cut");
    let extra = ["train.epochs=3", "log.every_steps=200"];
    ok(run_cmd(&full, &extra));

    let mut cmd = run_cmd(&cut, &extra);
    cmd.env("QUENCH_TEST_SLOW_WRITE_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let ckpts = cut.join("checkpoints");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait until epoch 1 is complete and the epoch-2 temporary is being written, then kill.
    loop {
        assert!(
            Instant::now() < deadline,
            "run never reached the epoch-2 write"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it was killed"
        );
        let names: Vec<String> = fs::read_dir(&ckpts)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if names.iter().any(|n| n == "epoch-00001.qck")
            && names.iter().any(|n| n.starts_with(".epoch-00002.qck.tmp"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!cut.join("summary.json").exists());
    assert!(!ckpts.join("epoch-00002.qck").exists());

    // Resuming without --resume is refused; with it, training continues from epoch 1.
    let err = fails(run_cmd(&cut, &extra));
    assert!(err.contains("--resume"), "{err}");
    let mut resume = run_cmd(&cut, &extra);
    resume.arg("--resume");
    ok(resume);

    let a = summary(&full);
    let b = summary(&cut);
    assert_eq!(b["resumed_from_epoch"], 1);
    assert_eq!(b["epochs_completed"], 3);
    assert_eq!(a["steps"], b["steps"]);
    assert_eq!(a["test_loss"], b["test_loss"], "final test loss differs");
    assert_eq!(a["test_accuracy"], b["test_accuracy"]);
    // Per-epoch metrics are identical except the measured throughput.
    let strip = |v: &Value| {
        let mut h = v["history"].as_array().unwrap().clone();
        for e in &mut h {
            e.as_object_mut().unwrap().remove("samples_per_sec");
        }
        h
    };
    assert_eq!(strip(&a), strip(&b), "per-epoch metrics differ");
    // Every weight bit-identical. (The record bytes themselves differ: burn's ParamIds are
    // random per process. Adam's state is keyed by them, so it is not compared byte-wise; two
    // more epochs ending on identical weights show it was restored.)
    let (wa, wb) = (weights(&a), weights(&b));
    assert_eq!(wa.len(), 4);
    for (x, y) in wa.iter().zip(&wb) {
        assert_eq!(x.path, y.path);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(&x.values) == bits(&y.values), "{} differs", x.path);
    }
    // The killed write left no temporary behind after the resumed run.
    let leftovers: Vec<_> = fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_input_is_one_clear_error_and_overwrites_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(run_cmd(&out, &["train.epochs=1", "log.every_steps=1000"]));
    let before = snapshot(&out);

    // Unknown key (by --set and in a recipe file), out-of-range value, wrong type.
    let err = fails(run_cmd(&out, &["train.epoch=2"]));
    assert!(err.contains("train.epoch"), "{err}");
    let bad_recipe = tmp.path().join("bad.toml");
    let text = fs::read_to_string(quickstart()).unwrap();
    fs::write(
        &bad_recipe,
        text.replace("[train]", "[train]\nlearning_rate = 0.1"),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["check"]).arg(&bad_recipe);
    let err = fails(cmd);
    assert!(
        err.contains("learning_rate") && err.contains("bad.toml"),
        "{err}"
    );
    let err = fails(run_cmd(&out, &["train.lr=-1"]));
    assert!(err.contains("train.lr"), "{err}");
    let err = fails(run_cmd(&out, &["train.batch_size=0"]));
    assert!(err.contains("train.batch_size"), "{err}");
    let err = fails(run_cmd(&out, &["train.epochs=\"three\""]));
    assert!(err.contains("train.epochs"), "{err}");
    let err = fails(run_cmd(&out, &["data.val_fraction=1.0"]));
    assert!(err.contains("data.val_fraction"), "{err}");

    // An --out holding another experiment, or this one without --resume.
    let err = fails(run_cmd(&out, &["name=\"other\""]));
    assert!(err.contains("quickstart"), "{err}");
    let err = fails(run_cmd(&out, &["train.epochs=1"]));
    assert!(err.contains("--resume"), "{err}");
    // --resume with a recipe whose model differs from the checkpoint's.
    let mut cmd = run_cmd(&out, &["model.hidden=[16]"]);
    cmd.arg("--resume");
    let err = fails(cmd);
    assert!(err.contains("different"), "{err}");

    // Missing and corrupt data files, named in the error.
    let err = fails(run_cmd(
        &tmp.path().join("other1"),
        &["data.path=\"/nonexistent/fmnist\""],
    ));
    assert!(err.contains("/nonexistent/fmnist"), "{err}");
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    let src = Path::new("/usr/share/datasets/fashion-mnist");
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        fs::copy(src.join(f), data.join(f)).unwrap();
    }
    let labels = data.join("train-labels-idx1-ubyte.gz");
    let bytes = fs::read(&labels).unwrap();
    fs::write(&labels, &bytes[..bytes.len() / 2]).unwrap();
    let set = format!("data.path=\"{}\"", data.display());
    let err = fails(run_cmd(&tmp.path().join("other2"), &[&set]));
    assert!(err.contains("train-labels-idx1-ubyte.gz"), "{err}");

    // `quench eval` on something that is not a checkpoint.
    let mut cmd = Command::new(BIN);
    cmd.arg("eval").arg(out.join("summary.json"));
    let err = fails(cmd);
    assert!(err.contains("summary.json"), "{err}");

    assert_eq!(
        snapshot(&out),
        before,
        "a failed command changed the run directory"
    );
}

#[test]
fn check_validates_every_shipped_recipe() {
    for entry in fs::read_dir(root().join("experiments")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let mut cmd = Command::new(BIN);
            cmd.arg("check").arg(&path);
            ok(cmd);
        }
    }
}

#[test]
fn nonfinite_loss_stops_with_the_step_or_skips_the_batch_and_lowers_the_lr() {
    // QUENCH_FAULT_NAN_AT_STEPS poisons the loss of the named optimizer steps (test-only hook).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stop");
    let mut cmd = run_cmd(&out, &["train.epochs=2"]);
    cmd.env("QUENCH_FAULT_NAN_AT_STEPS", "480");
    let err = fails(cmd);
    // 469 steps per epoch: step 480 is in epoch 2, after the epoch-1 checkpoint.
    assert!(err.contains("step 480") && err.contains("epoch 2"), "{err}");
    assert!(err.contains("every weight is finite"), "{err}");
    assert!(err.contains("the loss itself is non-finite"), "{err}");
    assert!(
        err.contains("epoch-00001.qck") && err.contains("kept"),
        "{err}"
    );
    assert!(err.contains("on_nonfinite"), "{err}");
    let ckpts = quench::train::checkpoint::list_checkpoints(&out.join("checkpoints")).unwrap();
    assert_eq!(
        ckpts.len(),
        1,
        "the last good checkpoint stays, nothing newer"
    );
    Checkpoint::read(&ckpts[0].1).unwrap();

    // Skip: the run finishes, two batches skipped, the LR quartered — and a resume from the
    // epoch-1 checkpoint (which saved the factor) ends bit-identical.
    let skip_sets = ["train.epochs=2", "train.on_nonfinite=\"skip\""];
    let out = tmp.path().join("skip");
    let mut cmd = run_cmd(&out, &skip_sets);
    cmd.env("QUENCH_FAULT_NAN_AT_STEPS", "100,200");
    ok(cmd);
    let s = summary(&out);
    assert_eq!(s["skipped_batches"], 2);
    assert_eq!(s["lr_factor"], 0.25);
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.8, "{s}");
    let out2 = tmp.path().join("skip-resumed");
    let mut cmd = run_cmd(&out2, &skip_sets);
    cmd.env("QUENCH_FAULT_NAN_AT_STEPS", "100,200");
    ok(cmd);
    fs::remove_file(out2.join("checkpoints/epoch-00002.qck")).unwrap();
    let mut cmd = run_cmd(&out2, &skip_sets);
    cmd.arg("--resume")
        .env("QUENCH_FAULT_NAN_AT_STEPS", "100,200");
    ok(cmd);
    let r = summary(&out2);
    assert_eq!(r["lr_factor"], 0.25);
    assert_eq!(r["test_accuracy"], s["test_accuracy"]);
    assert_eq!(r["test_loss"], s["test_loss"]);
}

#[test]
fn repeated_sigkills_at_arbitrary_points_resume_to_the_uninterrupted_result() {
    // Kill the run at pseudo-random moments and at random offsets into chosen phases (loading
    // data, training, evaluating, inside a slowed checkpoint write), resume, kill again…, then
    // let it finish: the result must be the uninterrupted run's, bit for bit. The binary records
    // its phase (QUENCH_TEST_PHASE_FILE), so the test knows where each kill landed. Delays come
    // from a fixed LCG so a failure reproduces.
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let cut = tmp.path().join("cut");
    let phase_file = tmp.path().join("phase");
    let extra = ["train.epochs=3", "log.every_steps=100", "checkpoint.keep=2"];
    ok(run_cmd(&full, &extra));
    let mut rng = Lcg(0x5eed);
    let plan = [
        KillAt::Delay(300 + rng.below(2500)),
        KillAt::InPhase("checkpoint", 1, rng.below(400)),
        // Into the second epoch: the first checkpoint is complete, so the run makes progress.
        // Within 50 ms of its start, so it lands in training however fast an epoch runs (this
        // model's epoch is a few hundred ms).
        KillAt::InPhase("train", 2, rng.below(300) % 50),
        KillAt::InPhase("load-data", 1, 0),
        KillAt::InPhase("prepare", 1, 0),
        KillAt::InPhase("eval", 1, rng.below(20)),
        KillAt::Delay(300 + rng.below(2500)),
        KillAt::InPhase("checkpoint", 1, rng.below(400)),
    ];
    let mut per_phase: BTreeMap<String, usize> = BTreeMap::new();
    let mut kills = 0;
    for (attempt, at) in plan.into_iter().enumerate() {
        let mut cmd = run_cmd(&cut, &extra);
        if attempt > 0 {
            cmd.arg("--resume");
        }
        cmd.env("QUENCH_TEST_SLOW_WRITE_MS", "40");
        let Some(phase) = kill_at(cmd, &phase_file, at) else {
            break; // it finished before this kill point
        };
        *per_phase.entry(phase).or_default() += 1;
        kills += 1;
        // Never a half-written checkpoint under a final name.
        for (_, p) in quench::train::checkpoint::list_checkpoints(&cut.join("checkpoints"))
            .unwrap_or_default()
        {
            Checkpoint::read(&p).unwrap_or_else(|e| panic!("kill {kills}: {e}"));
        }
    }
    report("classifier", &per_phase);
    assert!(kills >= 3, "only {kills} kill points landed");
    for phase in ["train", "checkpoint"] {
        assert!(
            per_phase.contains_key(phase),
            "no kill landed in {phase}: {per_phase:?}"
        );
    }
    let mut last = run_cmd(&cut, &extra);
    last.arg("--resume");
    ok(last);
    let (a, b) = (summary(&full), summary(&cut));
    assert!(
        b["resumed_from_epoch"].is_u64(),
        "never resumed from a checkpoint: {b}"
    );
    assert_eq!(a["test_loss"], b["test_loss"], "after {kills} kills");
    assert_eq!(a["test_accuracy"], b["test_accuracy"]);
    let (wa, wb) = (weights(&a), weights(&b));
    for (x, y) in wa.iter().zip(&wb) {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(&x.values) == bits(&y.values), "{} differs", x.path);
    }
}

/// An output directory that cannot be created or written fails the run before training, and
/// the error names the path.
#[test]
fn unwritable_output_directory_fails_before_training_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    // Works as root too: a directory cannot be created under a regular file.
    let file = tmp.path().join("a-file");
    fs::write(&file, "not a directory").unwrap();
    let out = file.join("run");
    let o = output(run_cmd(&out, &["train.epochs=1"]));
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let err = stderr.lines().last().unwrap_or_default();
    assert!(err.starts_with("error: "), "{stderr}");
    assert!(err.contains(&*out.to_string_lossy()), "{err}");
    assert!(err.contains("Not a directory"), "{err}");
    assert!(!stdout.contains("epoch"), "trained anyway: {stdout}");

    // A read-only directory: only meaningful where permissions bind (not as root).
    use std::os::unix::fs::PermissionsExt;
    let ro = tmp.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    if fs::write(ro.join("probe"), "x").is_ok() {
        eprintln!("skipping the read-only sub-case: this user can write into a 0555 directory");
        return;
    }
    let o = output(run_cmd(&ro, &["train.epochs=1"]));
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let err = stderr.lines().last().unwrap_or_default();
    assert!(err.contains(&*ro.to_string_lossy()), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("epoch"));
}

/// The disk fills up while the epoch-3 checkpoint is written (test hook): the run fails naming
/// the checkpoint and the OS error, leaves no temporary and no partial file, earlier
/// checkpoints stay intact, and `--resume` ends exactly where an uninterrupted run does.
#[test]
fn disk_full_during_a_checkpoint_write_fails_cleanly_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let cut = tmp.path().join("cut");
    let extra = ["train.epochs=3", "log.every_steps=200", "checkpoint.keep=5"];
    ok(run_cmd(&full, &extra));
    let size = |p: PathBuf| fs::metadata(p).unwrap().len();
    let ck = full.join("checkpoints");
    // Bytes written through the atomic writer before the failure: run.toml, epochs 1 and 2,
    // then half of epoch 3.
    let budget = size(full.join("run.toml"))
        + size(ck.join("epoch-00001.qck"))
        + size(ck.join("epoch-00002.qck"))
        + size(ck.join("epoch-00003.qck")) / 2;

    let mut cmd = run_cmd(&cut, &extra);
    cmd.env("QUENCH_TEST_FAIL_WRITE_AFTER_BYTES", budget.to_string());
    let err = fails(cmd);
    let third = cut.join("checkpoints/epoch-00003.qck");
    assert!(err.contains(&*third.to_string_lossy()), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let names: Vec<String> = fs::read_dir(cut.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    assert!(!third.exists());
    assert!(!cut.join("summary.json").exists());
    let kept = quench::train::checkpoint::list_checkpoints(&cut.join("checkpoints")).unwrap();
    assert_eq!(kept.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [1, 2]);
    for (_, p) in &kept {
        Checkpoint::read(p).unwrap_or_else(|e| panic!("{e}"));
    }

    let mut resume = run_cmd(&cut, &extra);
    resume.arg("--resume");
    ok(resume);
    let (a, b) = (summary(&full), summary(&cut));
    assert_eq!(b["resumed_from_epoch"], 2);
    assert_eq!(a["test_loss"], b["test_loss"]);
    assert_eq!(a["test_accuracy"], b["test_accuracy"]);
    let (wa, wb) = (weights(&a), weights(&b));
    assert_eq!(wa.len(), wb.len());
    for (x, y) in wa.iter().zip(&wb) {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(&x.values) == bits(&y.values), "{} differs", x.path);
    }
}

/// A run killed while it wrote `run.toml` into a new output directory leaves only the hidden
/// temporary; the next run must take that directory, not refuse it as foreign.
#[test]
fn run_toml_temporary_of_a_killed_run_does_not_block_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    fs::create_dir(&out).unwrap();
    fs::write(out.join(".run.toml.tmp-4242"), "name = \"quick").unwrap();
    let mut cmd = run_cmd(&out, &["train.epochs=1", "log.every_steps=1000"]);
    cmd.arg("--resume");
    ok(cmd);
    assert!(!out.join(".run.toml.tmp-4242").exists());
    assert_eq!(summary(&out)["epochs_completed"], 1);
    // Anything else still makes the directory foreign.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("notes.txt"), "mine").unwrap();
    let err = fails(run_cmd(&other, &["train.epochs=1"]));
    assert!(err.contains("not a quench run directory"), "{err}");
}

//! End-to-end tests of `quench bench` on the real Fashion-MNIST files
//! (`apt-get install dataset-fashion-mnist`; `.ci/run` installs it).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_quench");

/// The checkout's root, read when the test runs (cargo sets it): `env!` bakes in the path of
/// the checkout that compiled the test, stale when a target dir is reused by another clone.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
}

#[test]
fn bench_prints_one_json_line_per_workload() {
    let out = Command::new(BIN)
        .current_dir(root())
        .args([
            "bench",
            "--workloads",
            "mlp-fp32,mlp-ternary",
            "--steps",
            "5",
            "--warmup",
            "2",
            "--batch-size",
            "32",
        ])
        .output()
        .expect("spawn quench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quench bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|v| v["workload"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["mlp-fp32", "mlp-ternary"]);
    for v in &lines {
        let sps = v["samples_per_s"].as_f64().unwrap_or(0.0);
        assert!(sps > 0.0 && sps.is_finite(), "{v}");
        assert_eq!(v["steps"], 5, "{v}");
        assert_eq!(v["device"], "flex", "{v}");
        assert_eq!(v["batch_size"], 32, "{v}");
        assert!(v["peak_rss_mb"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
        let (start, max, end) = (
            v["rss_mb_after_warmup"].as_f64().unwrap_or(0.0),
            v["rss_mb_max_timed"].as_f64().unwrap_or(0.0),
            v["rss_mb_end"].as_f64().unwrap_or(0.0),
        );
        assert!(start > 0.0 && end > 0.0 && max >= end, "{v}");
    }
}

#[test]
fn unknown_workload_is_one_clear_error() {
    let out = Command::new(BIN)
        .current_dir(root())
        .args(["bench", "--workloads", "mlp-fp32,resnet-50", "--steps", "1"])
        .output()
        .expect("spawn quench");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing is measured before the check"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains("`resnet-50`"), "{err}");
    for w in quench::train::bench::WORKLOADS {
        assert!(lines[0].contains(w), "{err}");
    }

    let out = Command::new(BIN)
        .current_dir(root())
        .args(["bench", "--workloads", "mlp-fp32", "--batch-size", "0"])
        .output()
        .expect("spawn quench");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--batch-size") && err.contains('0'), "{err}");
}

#[test]
fn interleaved_bench_times_workloads_in_turns() {
    let out = Command::new(BIN)
        .current_dir(root())
        .args([
            "bench",
            "--workloads",
            "mlp-fp32,mlp-qat",
            "--steps",
            "5",
            "--warmup",
            "1",
            "--batch-size",
            "32",
            "--interleave",
            "2",
        ])
        .output()
        .expect("spawn quench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quench bench --interleave failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (v, name) in lines.iter().zip(["mlp-fp32", "mlp-qat"]) {
        assert_eq!(v["workload"], name, "{v}");
        assert_eq!(v["interleave"], 2, "{v}");
        assert_eq!(v["steps"], 5, "{v}");
        // Turns of 2, 2 and 1 steps; their times add up to the reported total.
        let blocks: Vec<f64> = v["block_seconds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        assert_eq!(blocks.len(), 3, "{v}");
        assert!(blocks.iter().all(|s| *s > 0.0), "{v}");
        let total = v["seconds"].as_f64().unwrap_or(0.0);
        assert!((blocks.iter().sum::<f64>() - total).abs() < 1e-9, "{v}");
        let sps = v["samples_per_s"].as_f64().unwrap_or(0.0);
        assert!((sps - 5.0 * 32.0 / total).abs() < 1e-6 * sps, "{v}");
    }

    let out = Command::new(BIN)
        .current_dir(root())
        .args(["bench", "--workloads", "mlp-fp32", "--interleave", "0"])
        .output()
        .expect("spawn quench");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interleave"), "{err}");
}

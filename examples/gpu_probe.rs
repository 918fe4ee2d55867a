//! Which burn kernels a GPU driver can compile and run: each op runs in its own child process,
//! so a driver that crashes (lavapipe does, on the SPIR-V path) marks that op `CRASH` and the
//! probe goes on. Used to write the crash list in docs/gpu.md.
//!
//! ```sh
//! cargo run --features vulkan --example gpu_probe -- vulkan      # every op
//! cargo run --features wgpu --example gpu_probe -- wgpu matmul   # one op
//! ```

use std::process::{Command, ExitCode};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

const OPS: &[&str] = &[
    "upload",
    "add",
    "mul_scalar",
    "div",
    "exp",
    "abs",
    "round",
    "clamp",
    "greater",
    "equal",
    "mask_fill",
    "sum_dim",
    "mean_dim",
    "max_dim",
    "max",
    "mean",
    "sum",
    "argmax",
    "cat",
    "transpose",
    "log_softmax",
    "matmul",
];

fn run(op: &str, d: &Device) -> Option<Vec<f32>> {
    let v: Vec<f32> = (0..64).map(|i| i as f32 / 7.0 - 4.0).collect();
    let x = Tensor::<2>::from_data(TensorData::new(v, [8, 8]), d);
    let scalar = |t: Tensor<1>| t.reshape([1, 1]);
    let out: Tensor<2> = match op {
        "upload" => x,
        "add" => x.clone() + x,
        "mul_scalar" => x.mul_scalar(2.0),
        "div" => x.clone() / x.add_scalar(10.0),
        "exp" => x.exp(),
        "abs" => x.abs(),
        "round" => x.round(),
        "clamp" => x.clamp(-1.0, 1.0),
        "greater" => x.greater_elem(0.5).float(),
        "equal" => x.clone().equal(x.round()).float(),
        "mask_fill" => x.clone().mask_fill(x.greater_elem(0.0), 0.0),
        "sum_dim" => x.sum_dim(1),
        "mean_dim" => x.mean_dim(1),
        "max_dim" => x.max_dim(1),
        "max" => scalar(x.max()),
        "mean" => scalar(x.abs().mean()),
        "sum" => scalar(x.sum()),
        "argmax" => x.argmax(1).float(),
        "cat" => Tensor::cat(vec![x.clone(), x], 0),
        "transpose" => x.transpose().add_scalar(0.0),
        "log_softmax" => log_softmax(x, 1),
        "matmul" => x.clone().matmul(x),
        _ => return None,
    };
    out.into_data().try_into_vec::<f32>().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(device) = args.first() else {
        eprintln!("usage: gpu_probe DEVICE [OP...]; ops: {}", OPS.join(" "));
        return ExitCode::FAILURE;
    };
    let d = match quench::train::device::resolve_device(device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let [_, op] = args.as_slice() {
        // Child: run one op; a crash in the driver kills only this process.
        return match run(op, &d) {
            Some(v) => {
                println!("{op}: ok {:?}", &v[..v.len().min(3)]);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("unknown op `{op}`; ops: {}", OPS.join(" "));
                ExitCode::FAILURE
            }
        };
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot find this program: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ops: Vec<&str> = if args.len() > 2 {
        args[1..].iter().map(String::as_str).collect()
    } else {
        OPS.to_vec()
    };
    for op in ops {
        let status = Command::new(&exe).args([device.as_str(), op]).output();
        let verdict = match status {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Ok(o) => format!("{op}: CRASH ({})", o.status),
            Err(e) => format!("{op}: cannot run: {e}"),
        };
        println!("{verdict}");
    }
    ExitCode::SUCCESS
}

//! The `quench` command line: parse, load the recipe, call the crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use quench::train::{Experiment, ProgressMode, RunOptions};

/// Train neural networks that come out small.
#[derive(Parser)]
#[command(name = "quench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Plain,
    Quiet,
}

#[derive(Clone, Copy, ValueEnum)]
enum TernaryArg {
    Bits2,
    Base3,
}

#[derive(Subcommand)]
enum Command {
    /// Train a recipe: `quench run experiments/quickstart.toml --out runs/quick`.
    Run {
        /// The recipe (TOML).
        recipe: PathBuf,
        /// Output directory (default: runs/<experiment name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override a recipe value by dotted path, e.g. `--set train.epochs=1` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue from the newest valid checkpoint in --out.
        #[arg(long)]
        resume: bool,
        /// Device: flex (CPU), wgpu, vulkan, cuda (overrides the recipe's `device`).
        #[arg(long)]
        device: Option<String>,
        /// Terminal output.
        #[arg(long, value_enum, default_value = "auto")]
        progress: ProgressArg,
    },
    /// Evaluate a checkpoint on the test set of the recipe stored in it.
    Eval {
        /// A checkpoint file (`DIR/checkpoints/epoch-00005.qck`, or `summary.json`'s `checkpoint`).
        checkpoint: PathBuf,
        /// Override a value of the stored recipe (e.g. `data.path=DIR`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Device (overrides the stored recipe's).
        #[arg(long)]
        device: Option<String>,
    },
    /// Write a checkpoint's quantized layers as packed integers (safetensors).
    Export {
        /// A checkpoint of a recipe with `[[quant.layers]]`.
        checkpoint: PathBuf,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Ternary packing: 2 bits per weight, or base 3 (1.6 bits).
        #[arg(long, value_enum, default_value = "bits2")]
        ternary_packing: TernaryArg,
        /// Also check the file: run the test set through it and compare with the checkpoint.
        #[arg(long)]
        verify: bool,
    },
    /// Run a distillation recipe's teacher over its training set once and cache the logits
    /// (used when the recipe sets `distill.cache_logits = true`).
    DistillCache {
        /// A recipe with a [distill] section.
        recipe: PathBuf,
        /// Overrides, as for `run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Keep only the model of a checkpoint (drop optimizer/scheduler state): a smaller file to
    /// ship as a teacher or to `quench eval` / `quench export`; it cannot be resumed from.
    Strip {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prune one layer at a time at several sparsities (no retraining) and report test accuracy.
    Sensitivity {
        /// A trained checkpoint (e.g. `runs/NAME/checkpoints/epoch-00005.qck`).
        checkpoint: PathBuf,
        /// Sparsities to try, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0.3,0.5,0.7,0.8,0.9,0.95"
        )]
        sparsities: Vec<f64>,
        /// Write `sensitivity/<layer>` curves here for TensorBoard.
        #[arg(long)]
        tb: Option<PathBuf>,
    },
    /// Generate text from a language-model checkpoint (`arch = "gpt"`), or from its `quench
    /// export` file (ternary layers on the integer kernel).
    Sample {
        /// A checkpoint of a char-level GPT recipe.
        checkpoint: PathBuf,
        /// Text to continue (every character must be in the model's vocabulary).
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// Characters to generate.
        #[arg(long, default_value_t = 300)]
        tokens: usize,
        /// Softmax temperature (> 0).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sample only from the k most likely characters (0 = all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Random seed; the same seed gives the same text.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Measure steady-state training throughput (samples/s) and peak memory of reference
    /// workloads on real Fashion-MNIST batches; prints one JSON line per workload.
    Bench {
        /// Device: flex (CPU), wgpu, vulkan, cuda.
        #[arg(long, default_value = "flex")]
        device: String,
        /// Workloads, comma-separated (default: all of mlp-fp32, mlp-qat, mlp-ternary,
        /// lenet-fp32, lenet-qat, distill).
        #[arg(long, value_delimiter = ',')]
        workloads: Option<Vec<String>>,
        /// Timed optimizer steps per workload (batch 128).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Untimed warm-up steps before the timed ones.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Samples per step (128 for the comparison with PyTorch; small batches and many
        /// steps make a memory soak: see rss_mb_after_warmup / rss_mb_end).
        #[arg(long, default_value_t = quench::train::bench::BATCH_SIZE)]
        batch_size: usize,
        /// Time the workloads side by side: build them all, then let them take turns, this
        /// many timed steps each (after one untimed step that rewarms the caches), until each
        /// has done --steps (each line then lists its blocks' seconds; benches/overhead.sh
        /// turns them into paired ratios).
        #[arg(long, value_name = "STEPS")]
        interleave: Option<usize>,
    },
    /// The backends compiled into this build and the GPU adapters found (wgpu builds).
    Devices,
    /// Validate a recipe without running it.
    Check {
        /// The recipe (TOML).
        recipe: PathBuf,
        /// Overrides, as for `run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

fn with_device(mut set: Vec<String>, device: Option<String>) -> Vec<String> {
    if let Some(d) = device {
        set.push(format!("device=\"{d}\""));
    }
    set
}

fn main() -> ExitCode {
    tune_allocator();
    // Every command runs on a rayon worker, so the parallel ops of a training step are local
    // joins instead of jobs injected from outside the pool (see `quench_train::pool`).
    match quench_train::pool::in_compute_pool(real_main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes glibc keep freed memory for reuse instead of handing it back to the kernel.
///
/// A training step allocates and frees the same few large tensor buffers (activations,
/// gradients, optimizer moments: 0.1–10 MB each) every step. With glibc's defaults, blocks
/// above the dynamic mmap threshold are `mmap`ed and unmapped each time and the heap top is
/// trimmed, so every step page-faults its buffers in again (zeroed by the kernel): `perf` put
/// about 20 % of a LeNet-5 step in page-fault handling. A fixed 32 MiB mmap threshold (glibc's maximum on
/// 64-bit) and a 1 GiB trim threshold keep those blocks in the heap. Memory stays bounded by the
/// step's peak (the `rss_mb_*` figures of `quench bench` stay flat over 10 000 steps); it is just
/// not returned between steps.
///
/// A 64 MiB top pad: the step runs on a pool worker, whose allocations come from a per-thread
/// arena made of 64 MiB sub-heaps, and glibc unmaps a sub-heap that becomes wholly free unless
/// the pad it keeps is larger than a sub-heap (the trim threshold does not count there). Where a
/// step's peak crossed a sub-heap boundary (which depends on how the process's earlier
/// allocations fell), every step mapped a sub-heap again and faulted its pages in: up to 1.5
/// million page faults in a 1 600-step `quench bench` run instead of 77 000, and QAT/ternary MLP
/// steps 20–45 % slower than fp32's in those processes (docs/performance.md, item 31). The pad
/// is address space, not memory: pages are only backed once touched. (One arena,
/// `M_ARENA_MAX = 1`, also fixes it, with every thread then allocating under one lock.)
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            recipe,
            out,
            set,
            resume,
            device,
            progress,
        } => {
            let set = with_device(set, device);
            let exp = Experiment::load(&recipe, &set)?;
            let out_dir = out.unwrap_or_else(|| PathBuf::from("runs").join(&exp.name));
            let progress = match progress {
                ProgressArg::Auto => ProgressMode::Auto,
                ProgressArg::Bar => ProgressMode::Bar,
                ProgressArg::Plain => ProgressMode::Plain,
                ProgressArg::Quiet => ProgressMode::Quiet,
            };
            let opts = RunOptions {
                out_dir: out_dir.clone(),
                resume,
                progress,
            };
            let context = || format!("running {} into {}", recipe.display(), out_dir.display());
            if exp.model.is_language_model() {
                quench::train::lm::run_lm(&exp, &opts).with_context(context)?;
            } else {
                quench::train::run(&exp, &opts).with_context(context)?;
            }
        }
        Command::Eval {
            checkpoint,
            set,
            device,
        } => {
            let set = with_device(set, device);
            let context = || format!("evaluating {}", checkpoint.display());
            if quench::train::lm::is_lm_checkpoint(&checkpoint).with_context(context)? {
                let report = quench::train::lm::eval_lm_checkpoint(&checkpoint, &set)
                    .with_context(context)?;
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let report = quench::train::eval::eval_checkpoint(&checkpoint, &set)
                    .with_context(context)?;
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
        Command::Export {
            checkpoint,
            out,
            ternary_packing,
            verify,
        } => {
            let packing = match ternary_packing {
                TernaryArg::Bits2 => quench::train::export::TernaryPacking::Bits2,
                TernaryArg::Base3 => quench::train::export::TernaryPacking::Base3,
            };
            let lm = quench::train::lm::is_lm_checkpoint(&checkpoint)
                .with_context(|| format!("reading {}", checkpoint.display()))?;
            let report = if lm {
                quench::train::lm_export::export_lm_checkpoint(&checkpoint, &out, packing)
            } else {
                quench::train::export::export_checkpoint(&checkpoint, &out, packing)
            }
            .with_context(|| format!("exporting {}", checkpoint.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if verify && lm {
                let v = quench::train::lm_export::verify_lm_export(&checkpoint, &out)
                    .with_context(|| format!("verifying {}", out.display()))?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if verify {
                let v = quench::train::export::verify_export(&checkpoint, &out)
                    .with_context(|| format!("verifying {}", out.display()))?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        Command::DistillCache { recipe, set } => {
            let exp = Experiment::load(&recipe, &set)?;
            let (path, n) = quench::train::distill::build_cache(&exp)
                .with_context(|| format!("caching teacher logits for {}", recipe.display()))?;
            println!(
                "wrote teacher logits of {n} training samples to {}",
                path.display()
            );
        }
        Command::Strip { checkpoint, out } => {
            let mut c = quench::train::Checkpoint::read(&checkpoint)
                .with_context(|| format!("reading {}", checkpoint.display()))?;
            c.sections.retain(|(name, _)| name == "model");
            c.write(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{} → {} ({} bytes, model only)",
                checkpoint.display(),
                out.display(),
                std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)
            );
        }
        Command::Sensitivity {
            checkpoint,
            sparsities,
            tb,
        } => {
            let r =
                quench::train::sensitivity::sensitivity(&checkpoint, &sparsities, tb.as_deref())
                    .with_context(|| format!("sensitivity of {}", checkpoint.display()))?;
            print!("{}", r.table());
        }
        Command::Sample {
            checkpoint,
            prompt,
            tokens,
            temperature,
            top_k,
            seed,
        } => {
            let text = quench::train::lm::sample_checkpoint(
                &checkpoint,
                &prompt,
                quench::train::lm::SampleOptions {
                    tokens,
                    temperature,
                    top_k,
                    seed,
                },
            )
            .with_context(|| format!("sampling from {}", checkpoint.display()))?;
            println!("{text}");
        }
        Command::Bench {
            device,
            workloads,
            steps,
            warmup,
            batch_size,
            interleave,
        } => {
            use quench::train::bench::{BenchOptions, WORKLOADS, bench};
            let opts = BenchOptions {
                device,
                workloads: workloads
                    .unwrap_or_else(|| WORKLOADS.iter().map(|w| w.to_string()).collect()),
                steps,
                warmup,
                batch_size,
                interleave,
            };
            bench(&opts, |r| {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            })
            .context("quench bench")?;
        }
        Command::Devices => {
            for line in quench::train::device::describe_devices() {
                println!("{line}");
            }
        }
        Command::Check { recipe, set } => {
            let exp = Experiment::load(&recipe, &set)?;
            let (model, budget) = if exp.model.is_language_model() {
                (
                    exp.model.describe(0, 0).replace(" vocab0", ""),
                    format!("{} iterations", exp.train.iterations),
                )
            } else {
                (
                    exp.model.describe(28 * 28, 10),
                    format!("{} epochs", exp.train.epochs),
                )
            };
            println!(
                "{}: ok — experiment `{}`, {model} on {}, {budget}",
                recipe.display(),
                exp.name,
                exp.data.dataset.name(),
            );
        }
    }
    Ok(())
}

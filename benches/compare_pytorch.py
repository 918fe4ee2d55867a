#!/usr/bin/env python3
"""The six `quench bench` workloads in PyTorch, for a side-by-side throughput comparison.

Same shapes, batch (128), optimizer (Adam, lr 1e-3), data (the Fashion-MNIST IDX gz training
files, read with gzip + numpy, pixels scaled to [0, 1], a fresh seeded permutation per epoch,
full batches only) and quantizer semantics as quench's bench recipes:

  mlp-fp32     MLP 784-512-512-10 (ReLU)
  mlp-qat      same MLP; every Linear: W4 per-channel symmetric (scale = max|W| per output
               channel / 7, codes [-8, 7]) + A8 per-tensor asymmetric input (scale and zero-point
               from the batch min/max, codes [-128, 127]); ranges recomputed every step,
               torch.fake_quantize_per_{channel,tensor}_affine (their STE gradients)
  mlp-ternary  same MLP; BitNet b1.58 Linear: W = RoundClip(W/(γ+ε), -1, 1)·γ, γ = mean|W|, and
               8-bit absmax per-token input, both with straight-through gradients
  lenet-fp32   LeNet-5: conv 1→6 5x5 pad 2, ReLU, maxpool 2; conv 6→16 5x5, ReLU, maxpool 2;
               Linear 400-120-84-10 (ReLU between)
  lenet-qat    same LeNet-5, W4A8 as mlp-qat on every conv and Linear
  distill      frozen LeNet-5 teacher forward (no grad; untrained, which does not change its
               cost) + MLP 784-512-512-10 student step; loss α·KL(p_t^T ‖ p_s^T)·T² + (1-α)·CE,
               T = 4, α = 0.7

Each step also reads the loss and the number of correct predictions back (`.item()`), as quench's
step does. Every workload is timed with 1 and 2 threads (`torch.set_num_threads`); the best is
reported, one JSON line per workload:
  {"workload": NAME, "samples_per_s": X, "threads": T, ...}

Usage: python3 benches/compare_pytorch.py [--workloads a,b] [--steps N] [--warmup N]
                                          [--threads 1,2] [--data DIR]
"""

import argparse
import gzip
import json
import os
import sys
import time

WORKLOADS = ["mlp-fp32", "mlp-qat", "mlp-ternary", "lenet-fp32", "lenet-qat", "distill"]
BATCH = 128
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the machine
    print(
        f"compare_pytorch.py needs PyTorch and numpy ({e}).\n"
        "Install them with:  pip install torch numpy\n"
        "(CPU-only, smaller wheel:  pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu)",
        file=sys.stderr,
    )
    sys.exit(2)


# ---------------------------------------------------------------- data

def read_idx(path):
    """An IDX file (gzip) as a numpy array of its declared shape."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_train(data_dir):
    """Training images [N, 784] float32 in [0, 1] and labels [N] int64."""
    images = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def batches(x, y, seed=0):
    """Endless full batches: a fresh seeded permutation each epoch, gathered into new tensors."""
    n = len(x)
    epoch = 0
    while True:
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        for b in range(n // BATCH):
            idx = order[b * BATCH:(b + 1) * BATCH]
            yield x.index_select(0, idx), y.index_select(0, idx)
        epoch += 1


# ---------------------------------------------------------------- quantizers

def fq_weight_w4(w):
    """W4 per-output-channel symmetric fake-quant, scale = max|W| / 7 computed this step."""
    dims = tuple(range(1, w.dim()))
    amax = w.detach().abs().amax(dim=dims).clamp_min(1e-8)
    scale = (amax / 7.0).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -8, 7)


def fq_act_a8(x):
    """A8 per-tensor asymmetric fake-quant from this batch's min/max (range includes 0)."""
    xd = x.detach()
    lo = xd.min().clamp_max(0.0)
    hi = xd.max().clamp_min(0.0)
    scale = ((hi - lo) / 255.0).clamp_min(1e-8).reshape(1)
    zero = (-128 - torch.round(lo / scale)).clamp(-128, 127).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)


EPS = 1e-5


def ternary_weight(w):
    """BitNet b1.58: RoundClip(W/(γ+ε), -1, 1)·γ, γ = mean|W|, straight-through gradient."""
    gamma = w.detach().abs().mean()
    q = (w.detach() / (gamma + EPS)).round().clamp(-1, 1) * gamma
    return w + (q - w).detach()


def absmax_act_8bit(x):
    """BitNet 8-bit absmax per-token activations (over the last dim), straight-through."""
    xd = x.detach()
    scale = 127.0 / xd.abs().amax(dim=-1, keepdim=True).clamp_min(EPS)
    q = (xd * scale).round().clamp(-128, 127) / scale
    return x + (q - x).detach()


class QLinear(nn.Linear):
    """nn.Linear with a quantization mode: fp32, qat (W4A8) or ternary (BitNet b1.58)."""

    def __init__(self, d_in, d_out, mode):
        super().__init__(d_in, d_out)
        self.mode = mode

    def forward(self, x):
        if self.mode == "qat":
            return F.linear(fq_act_a8(x), fq_weight_w4(self.weight), self.bias)
        if self.mode == "ternary":
            return F.linear(absmax_act_8bit(x), ternary_weight(self.weight), self.bias)
        return super().forward(x)


class QConv2d(nn.Conv2d):
    """nn.Conv2d with an optional W4A8 fake-quant (qat)."""

    def __init__(self, c_in, c_out, k, padding, mode):
        super().__init__(c_in, c_out, k, padding=padding)
        self.mode = mode

    def forward(self, x):
        if self.mode == "qat":
            return self._conv_forward(fq_act_a8(x), fq_weight_w4(self.weight), self.bias)
        return super().forward(x)


# ---------------------------------------------------------------- models

class Mlp(nn.Module):
    """MLP 784-512-512-10, ReLU between layers."""

    def __init__(self, mode="fp32"):
        super().__init__()
        self.layers = nn.ModuleList(
            [QLinear(784, 512, mode), QLinear(512, 512, mode), QLinear(512, 10, mode)]
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = F.relu(x)
        return x


class LeNet5(nn.Module):
    """LeNet-5 as quench builds it: padded conv1, ReLU, max-pool; fc 400-120-84-10."""

    def __init__(self, mode="fp32"):
        super().__init__()
        self.conv1 = QConv2d(1, 6, 5, 2, mode)
        self.conv2 = QConv2d(6, 16, 5, 0, mode)
        self.fcs = nn.ModuleList(
            [QLinear(400, 120, mode), QLinear(120, 84, mode), QLinear(84, 10, mode)]
        )

    def forward(self, x):
        x = x.reshape(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i + 1 < len(self.fcs):
                x = F.relu(x)
        return x


def kd_loss(student, teacher, y, t=4.0, alpha=0.7):
    """α·KL(softmax(t/T) ‖ softmax(s/T))·T² + (1 − α)·CE(s, y)."""
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student, y)


def build(name):
    """(model, teacher or None) of a workload."""
    if name == "mlp-fp32":
        return Mlp("fp32"), None
    if name == "mlp-qat":
        return Mlp("qat"), None
    if name == "mlp-ternary":
        return Mlp("ternary"), None
    if name == "lenet-fp32":
        return LeNet5("fp32"), None
    if name == "lenet-qat":
        return LeNet5("qat"), None
    if name == "distill":
        # An untrained teacher: its weights do not change the cost of its forward pass.
        teacher = LeNet5("fp32").eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return Mlp("fp32"), teacher
    raise ValueError(name)


# ---------------------------------------------------------------- timing

def run(name, x, y, steps, warmup):
    """Samples/s of `steps` timed training steps after `warmup` untimed ones."""
    torch.manual_seed(0)
    model, teacher = build(name)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batches(x, y)
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        xb, yb = next(data)
        logits = model(xb)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(xb)
            loss = kd_loss(logits, t_logits, yb)
        else:
            loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        _correct = (logits.detach().argmax(1) == yb).sum().item()
        if loss_value != loss_value:
            raise RuntimeError(f"{name}: loss is NaN at step {step + 1}")
    seconds = time.perf_counter() - start
    return steps * BATCH / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--data", default=DEFAULT_DATA)
    args = ap.parse_args()

    names = [w for w in args.workloads.split(",") if w]
    bad = [w for w in names if w not in WORKLOADS]
    if bad or not names:
        print(
            f"unknown workload {bad[0] if bad else '(none)'!r}; valid: {', '.join(WORKLOADS)}",
            file=sys.stderr,
        )
        return 1
    if args.steps < 1:
        print("--steps must be at least 1", file=sys.stderr)
        return 1
    threads = [int(t) for t in args.threads.split(",") if t]
    try:
        x, y = load_train(args.data)
    except (OSError, ValueError) as e:
        print(f"cannot read Fashion-MNIST from {args.data}: {e}", file=sys.stderr)
        return 1

    for name in names:
        per_threads = {}
        for t in threads:
            torch.set_num_threads(t)
            per_threads[t] = run(name, x, y, args.steps, args.warmup)
        best = max(per_threads, key=per_threads.get)
        print(
            json.dumps(
                {
                    "workload": name,
                    "samples_per_s": per_threads[best],
                    "threads": best,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "per_threads": {str(k): v for k, v in per_threads.items()},
                    "torch": torch.__version__,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

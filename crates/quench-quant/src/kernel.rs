//! A fast CPU kernel for ternary weights × int8 activations, the inference path of BitNet b1.58
//! layers: weights are {-1, 0, +1}·γ, so a dot product needs only additions and subtractions.
//!
//! # Weight layout
//!
//! [`TernaryMatrix`] stores the `[out_features, in_features]` matrix row by row. Each row is cut
//! into blocks of [`BLOCK_INPUTS`] = 128 inputs; a block is 32 bytes (32-byte aligned), and byte
//! `j` of block `b` holds, in bit pair `k` (bits `2k, 2k+1`), the weight of input
//! `128·b + 32·k + j`. So one block unpacks into four 32-byte vectors of consecutive inputs with
//! one shift and two masks, instead of de-interleaving four weights per byte. The code in each bit
//! pair is [`crate::pack`]'s ternary 2-bit code (`0b00` = 0, `0b01` = +1, `0b10` = −1). The tail
//! of the last block of a row is zero weights. A 4096×4096 matrix is exactly 4 MiB.
//!
//! # Arithmetic
//!
//! `y[o] = Σ_{w[o,i]=+1} x[i] − Σ_{w[o,i]=−1} x[i]`, accumulated exactly in `i32`: no
//! multiplication by a weight anywhere. The AVX2 path (`std::arch`, runtime-detected) turns each
//! 32-input chunk of codes into bytes {−1, 0, +1} with a `pshufb` lookup, applies them with
//! `_mm256_sign_epi8` (a conditional negate/zero of `x`, i.e. the ternary semantics), and sums byte
//! pairs with `_mm256_maddubs_epi16` against a vector of ones (a widening add), accumulating in
//! `i16` for 2048 inputs at a time before widening to `i32`. Several batch rows share the decoded
//! weights. The portable scalar path uses masks and add/sub only, is always compiled, and is
//! tested against the AVX2 one. Large products are split over output rows with rayon.
//!
//! `_mm256_sign_epi8` cannot negate −128, so an activation buffer containing `i8::MIN` is routed
//! to the scalar path (still exact, just slower); the activation quantizer here never emits it.
//!
//! # Activation quantization
//!
//! [`quantize_activations_i8`] quantizes each row (token) with its own absmax scale:
//! `scale = 127 / max(max|x|, ACTIVATION_EPS)`, `q = clamp(round_half_even(x·scale), −127, 127)`,
//! and [`TernaryMatrix::forward_f32`] rescales `y = acc · γ / scale` — the same convention as the
//! training side's BitNet activation fake-quant.

use std::borrow::Cow;

use rayon::prelude::*;
use thiserror::Error;

use crate::pack::{self, PackError, TERNARY_MINUS, TERNARY_PLUS};

/// Inputs per packed weight block (32 bytes × 4 codes per byte).
pub const BLOCK_INPUTS: usize = 128;

/// Bytes per packed weight block.
pub const BLOCK_BYTES: usize = 32;

/// Lower bound on a row's absmax in activation quantization, so all-zero rows do not divide by 0.
pub const ACTIVATION_EPS: f32 = 1e-5;

/// Blocks summed in `i16` before widening: 16 blocks · 64 pair-sums · ≤254 < 32767.
const SEGMENT_BLOCKS: usize = 16;

/// Batch rows that share one decode of the weights in the AVX2 path.
const BATCH_TILE: usize = 4;

/// Below this many weight·batch additions a product runs on the calling thread only.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// One 32-byte block of 128 packed ternary weights, aligned for aligned vector loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, align(32))]
struct Block([u8; BLOCK_BYTES]);

/// Why a [`TernaryMatrix`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KernelError {
    /// The number of codes does not match `out_features · in_features`.
    #[error(
        "expected {expected} weight codes for a {out_features}x{in_features} matrix, got {got}"
    )]
    ShapeMismatch {
        /// `out_features · in_features`.
        expected: usize,
        /// Codes given.
        got: usize,
        /// Rows of the matrix.
        out_features: usize,
        /// Columns of the matrix.
        in_features: usize,
    },
    /// A weight code is not one of -1, 0, 1.
    #[error("weight code {value} at index {index} is not one of -1, 0, 1")]
    NotTernary {
        /// Row-major position of the code.
        index: usize,
        /// The offending value.
        value: i8,
    },
    /// The packed 2-bit buffer is short or holds an invalid pattern.
    #[error("invalid packed ternary weights: {0}")]
    Pack(#[from] PackError),
}

/// Which implementation runs a product; [`KernelPath::detect`] picks the fastest available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable scalar code (add/sub with masks), available everywhere.
    Scalar,
    /// x86_64 AVX2 (`sign_epi8` + `maddubs_epi16`); falls back to scalar where unavailable.
    Avx2,
}

impl KernelPath {
    /// The fastest path this CPU supports.
    pub fn detect() -> Self {
        if Self::Avx2.is_available() {
            Self::Avx2
        } else {
            Self::Scalar
        }
    }

    /// Whether this path can run on this CPU.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 => false,
        }
    }
}

/// A ternary weight matrix `[out_features, in_features]` with a scale γ, packed for fast products.
#[derive(Debug, Clone, PartialEq)]
pub struct TernaryMatrix {
    out_features: usize,
    in_features: usize,
    blocks_per_row: usize,
    gamma: f32,
    blocks: Vec<Block>,
}

impl TernaryMatrix {
    /// Builds from row-major codes in {-1, 0, 1} of shape `[out_features, in_features]` and scale γ.
    pub fn from_codes(
        codes: &[i8],
        out_features: usize,
        in_features: usize,
        gamma: f32,
    ) -> Result<Self, KernelError> {
        check_shape(codes.len(), out_features, in_features)?;
        if let Some((index, &value)) = codes
            .iter()
            .enumerate()
            .find(|(_, c)| !(-1..=1).contains(*c))
        {
            return Err(KernelError::NotTernary { index, value });
        }
        Ok(Self::build(out_features, in_features, gamma, |idx| {
            pack::ternary_code(codes[idx]).unwrap_or(0)
        }))
    }

    /// Builds from [`pack::pack_ternary_2bit`] bytes of the row-major `[out_features, in_features]` codes.
    pub fn from_packed_2bit(
        bytes: &[u8],
        out_features: usize,
        in_features: usize,
        gamma: f32,
    ) -> Result<Self, KernelError> {
        let len = out_features * in_features;
        let needed = len.div_ceil(4);
        if bytes.len() < needed {
            return Err(PackError::ShortBuffer {
                needed,
                got: bytes.len(),
                len,
                format: "ternary 2-bit".to_string(),
            }
            .into());
        }
        let code = |idx: usize| (bytes[idx / 4] >> (2 * (idx % 4))) & 0b11;
        if let Some(index) = (0..len).find(|&i| code(i) == 0b11) {
            return Err(PackError::InvalidTernary2Bit { index }.into());
        }
        Ok(Self::build(out_features, in_features, gamma, code))
    }

    /// Lays out the matrix from a function giving the 2-bit code of row-major element `idx`.
    fn build(
        out_features: usize,
        in_features: usize,
        gamma: f32,
        code: impl Fn(usize) -> u8,
    ) -> Self {
        let blocks_per_row = in_features.div_ceil(BLOCK_INPUTS);
        let mut blocks = vec![Block::default(); out_features * blocks_per_row];
        for o in 0..out_features {
            let row = &mut blocks[o * blocks_per_row..(o + 1) * blocks_per_row];
            for i in 0..in_features {
                let (b, within) = (i / BLOCK_INPUTS, i % BLOCK_INPUTS);
                let (k, j) = (within / 32, within % 32);
                row[b].0[j] |= code(o * in_features + i) << (2 * k);
            }
        }
        Self {
            out_features,
            in_features,
            blocks_per_row,
            gamma,
            blocks,
        }
    }

    /// Number of output features (rows).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Number of input features (columns).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The weight scale γ applied by [`Self::forward_f32`].
    pub fn gamma(&self) -> f32 {
        self.gamma
    }

    /// Bytes of packed weights one product reads (rows padded to 128 inputs).
    pub fn weight_bytes(&self) -> usize {
        self.blocks.len() * BLOCK_BYTES
    }

    /// The weight code (-1, 0, 1) at row `o`, column `i`.
    pub fn code(&self, o: usize, i: usize) -> i8 {
        assert!(
            o < self.out_features && i < self.in_features,
            "index ({o}, {i}) out of bounds"
        );
        let (b, within) = (i / BLOCK_INPUTS, i % BLOCK_INPUTS);
        let byte = self.blocks[o * self.blocks_per_row + b].0[within % 32];
        pack::ternary_from_code(byte >> (2 * (within / 32))).unwrap_or(0)
    }

    /// All weight codes, row-major `[out_features, in_features]`.
    pub fn to_codes(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.out_features * self.in_features);
        for o in 0..self.out_features {
            out.extend((0..self.in_features).map(|i| self.code(o, i)));
        }
        out
    }

    /// The packed weights in [`pack::pack_ternary_2bit`] format (row-major), for export.
    pub fn to_packed_2bit(&self) -> Vec<u8> {
        // Codes are valid by construction, so packing cannot fail.
        pack::pack_ternary_2bit(&self.to_codes()).unwrap_or_default()
    }

    /// `out[o] = Σ_i w[o,i]·x[i]` for one int8 vector `x` (`in_features` long), exact in `i32`.
    ///
    /// # Panics
    /// If `x.len() != in_features` or `out.len() != out_features`.
    pub fn gemv_i8(&self, x: &[i8], out: &mut [i32]) {
        self.gemm_i8(x, 1, out);
    }

    /// `out[b, o] = Σ_i w[o,i]·x[b, i]` for `batch` row-major int8 rows, exact in `i32`.
    ///
    /// # Panics
    /// If `x.len() != batch · in_features` or `out.len() != batch · out_features`.
    pub fn gemm_i8(&self, x: &[i8], batch: usize, out: &mut [i32]) {
        self.gemm_i8_with(KernelPath::detect(), x, batch, out);
    }

    /// [`Self::gemm_i8`] on a chosen implementation (for tests and benchmarks).
    ///
    /// # Panics
    /// As [`Self::gemm_i8`].
    pub fn gemm_i8_with(&self, path: KernelPath, x: &[i8], batch: usize, out: &mut [i32]) {
        let (o_n, i_n) = (self.out_features, self.in_features);
        assert_eq!(
            x.len(),
            batch * i_n,
            "x must be batch ({batch}) x in_features ({i_n})"
        );
        assert_eq!(
            out.len(),
            batch * o_n,
            "out must be batch ({batch}) x out_features ({o_n})"
        );
        if batch == 0 || o_n == 0 {
            return;
        }
        let path = if path == KernelPath::Avx2 && path.is_available() && !x.contains(&i8::MIN) {
            KernelPath::Avx2
        } else {
            KernelPath::Scalar
        };
        // Rows are read in whole blocks: pad them with zeros (the weights there are zero anyway).
        let stride = self.blocks_per_row * BLOCK_INPUTS;
        let x: Cow<[i8]> = if stride == i_n {
            Cow::Borrowed(x)
        } else {
            let mut padded = vec![0i8; batch * stride];
            for (dst, src) in padded
                .chunks_exact_mut(stride)
                .zip(x.chunks_exact(i_n.max(1)))
            {
                dst[..i_n].copy_from_slice(src);
            }
            Cow::Owned(padded)
        };
        if batch == 1 {
            self.rows_parallel(path, &x, stride, 1, out);
        } else {
            // Kernels write [out_features, batch] so each thread owns contiguous rows.
            let mut t = vec![0i32; o_n * batch];
            self.rows_parallel(path, &x, stride, batch, &mut t);
            for (o, row) in t.chunks_exact(batch).enumerate() {
                for (b, &v) in row.iter().enumerate() {
                    out[b * o_n + o] = v;
                }
            }
        }
    }

    /// Runs the row kernel over all output rows, split over threads when the product is large.
    fn rows_parallel(
        &self,
        path: KernelPath,
        x: &[i8],
        stride: usize,
        batch: usize,
        dst: &mut [i32],
    ) {
        let work = self.out_features * stride * batch;
        let threads = rayon::current_num_threads();
        if work < PARALLEL_MIN_WORK || threads <= 1 {
            self.rows(path, 0, x, stride, batch, dst);
            return;
        }
        let rows_per_task = self.out_features.div_ceil(threads * 4).max(16);
        dst.par_chunks_mut(rows_per_task * batch)
            .enumerate()
            .for_each(|(t, d)| self.rows(path, t * rows_per_task, x, stride, batch, d));
    }

    /// Computes `dst[r, b]` for output rows `o0 .. o0 + dst.len() / batch`.
    fn rows(
        &self,
        path: KernelPath,
        o0: usize,
        x: &[i8],
        stride: usize,
        batch: usize,
        dst: &mut [i32],
    ) {
        let n_rows = dst.len() / batch;
        let bpr = self.blocks_per_row;
        let blocks = &self.blocks[o0 * bpr..(o0 + n_rows) * bpr];
        match path {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => {
                // SAFETY: `gemm_i8_with` only selects Avx2 after runtime detection of AVX2.
                unsafe { avx2::rows(blocks, bpr, x, stride, batch, dst) }
            }
            _ => scalar_rows(blocks, bpr, x, stride, batch, dst),
        }
    }

    /// `y[b, o] = γ · (W · q_b)[o] / scale_b` for `batch` f32 rows, quantizing activations per row.
    ///
    /// # Panics
    /// If `x.len() != batch · in_features`.
    pub fn forward_f32(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let (q, scales) = quantize_activations_i8(x, batch, self.in_features);
        let mut acc = vec![0i32; batch * self.out_features];
        self.gemm_i8(&q, batch, &mut acc);
        let mut y = vec![0f32; acc.len()];
        for ((y_row, acc_row), &scale) in y
            .chunks_exact_mut(self.out_features.max(1))
            .zip(acc.chunks_exact(self.out_features.max(1)))
            .zip(&scales)
        {
            let factor = self.gamma / scale;
            for (y, &a) in y_row.iter_mut().zip(acc_row) {
                *y = a as f32 * factor;
            }
        }
        y
    }
}

fn check_shape(got: usize, out_features: usize, in_features: usize) -> Result<(), KernelError> {
    let expected = out_features * in_features;
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch {
            expected,
            got,
            out_features,
            in_features,
        })
    }
}

/// Per-row absmax int8 quantization: returns codes in -127..=127 and each row's scale `127 / absmax`.
///
/// `scale = 127 / max(max|x_row|, ACTIVATION_EPS)`, `q = clamp(round_half_even(x·scale), −127, 127)`;
/// dequantize with `q / scale`. NaN inputs quantize to 0.
///
/// # Panics
/// If `x.len() != batch · features`.
pub fn quantize_activations_i8(x: &[f32], batch: usize, features: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(
        x.len(),
        batch * features,
        "x must be batch ({batch}) x features ({features})"
    );
    let mut q = vec![0i8; x.len()];
    let mut scales = Vec::with_capacity(batch);
    if features == 0 {
        scales.resize(batch, 127.0 / ACTIVATION_EPS);
        return (q, scales);
    }
    for (x_row, q_row) in x.chunks_exact(features).zip(q.chunks_exact_mut(features)) {
        // A plain compare (not `f32::max`) lets this vectorize; NaN never wins it.
        let absmax = x_row
            .iter()
            .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let scale = 127.0 / absmax.max(ACTIVATION_EPS);
        for (q, &v) in q_row.iter_mut().zip(x_row) {
            *q = round_half_even_i8((v * scale).clamp(-127.0, 127.0));
        }
        scales.push(scale);
    }
    (q, scales)
}

/// Rounds `t` (already within ±127, or NaN) half to even, exactly like `f32::round_ties_even`.
///
/// Adding and subtracting 1.5·2^23 rounds to an integer in the FPU's round-to-nearest-even mode
/// (exact for |t| < 2^22); unlike `round_ties_even`, which is a libm call on baseline x86_64,
/// this vectorizes. `as` maps NaN to 0.
#[inline]
fn round_half_even_i8(t: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((t + MAGIC) - MAGIC) as i8
}

/// Portable row kernel: add where the plus bit is set, subtract where the minus bit is set.
fn scalar_rows(
    blocks: &[Block],
    bpr: usize,
    x: &[i8],
    stride: usize,
    batch: usize,
    dst: &mut [i32],
) {
    let mut acc = vec![0i32; batch];
    for (row, d) in blocks
        .chunks_exact(bpr.max(1))
        .zip(dst.chunks_exact_mut(batch))
    {
        acc.fill(0);
        if bpr > 0 {
            for (b, block) in row.iter().enumerate() {
                for (j, &byte) in block.0.iter().enumerate() {
                    for k in 0..4 {
                        let code = byte >> (2 * k);
                        // All-ones masks select x; negation of a bit is not a multiplication.
                        let plus = -(((code & TERNARY_PLUS) != 0) as i32);
                        let minus = -(((code & TERNARY_MINUS) != 0) as i32);
                        if plus | minus == 0 {
                            continue;
                        }
                        let i = b * BLOCK_INPUTS + 32 * k + j;
                        for (n, a) in acc.iter_mut().enumerate() {
                            let v = x[n * stride + i] as i32;
                            *a += (v & plus) - (v & minus);
                        }
                    }
                }
            }
        }
        d.copy_from_slice(&acc);
    }
    if bpr == 0 {
        dst.fill(0);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The AVX2 row kernel; see the module docs of `kernel` for the approach.

    use std::arch::x86_64::*;

    use super::{BATCH_TILE, BLOCK_INPUTS, Block, SEGMENT_BLOCKS};

    /// Computes `dst[r, b]` for all rows of `blocks` (`bpr` blocks each) and `batch` rows of `x`
    /// (row stride `stride = bpr · 128`, no `i8::MIN`).
    #[target_feature(enable = "avx2")]
    pub(super) fn rows(
        blocks: &[Block],
        bpr: usize,
        x: &[i8],
        stride: usize,
        batch: usize,
        dst: &mut [i32],
    ) {
        assert!(stride == bpr * BLOCK_INPUTS && x.len() >= batch * stride);
        if bpr == 0 {
            dst.fill(0);
            return;
        }
        for (w, d) in blocks.chunks_exact(bpr).zip(dst.chunks_exact_mut(batch)) {
            let mut b = 0;
            while batch - b >= BATCH_TILE {
                dot::<BATCH_TILE>(w, &x[b * stride..], stride, &mut d[b..b + BATCH_TILE]);
                b += BATCH_TILE;
            }
            let x = &x[b * stride..];
            match batch - b {
                3 => dot::<3>(w, x, stride, &mut d[b..]),
                2 => dot::<2>(w, x, stride, &mut d[b..]),
                1 => dot::<1>(w, x, stride, &mut d[b..]),
                _ => {}
            }
        }
    }

    /// `out[n] = Σ w·x_n` for `N` activation rows starting at `x` (stride `stride`) and one weight row.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn dot<const N: usize>(w: &[Block], x: &[i8], stride: usize, out: &mut [i32]) {
        assert!(x.len() >= (N - 1) * stride + w.len() * BLOCK_INPUTS && out.len() >= N);
        // pshufb tables: code in index bits 0-1 (`LO`) or bits 2-3 (`HI`) → trit as a byte.
        #[rustfmt::skip]
        let lut_lo = _mm256_setr_epi8(
            0, 1, -1, 0, 0, 1, -1, 0, 0, 1, -1, 0, 0, 1, -1, 0,
            0, 1, -1, 0, 0, 1, -1, 0, 0, 1, -1, 0, 0, 1, -1, 0,
        );
        #[rustfmt::skip]
        let lut_hi = _mm256_setr_epi8(
            0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1, 0, 0, 0, 0,
            0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1, 0, 0, 0, 0,
        );
        let nibble = _mm256_set1_epi8(0x0F);
        let ones8 = _mm256_set1_epi8(1);
        let ones16 = _mm256_set1_epi16(1);
        let xp = x.as_ptr();
        let mut acc32 = [_mm256_setzero_si256(); N];
        for (s, seg) in w.chunks(SEGMENT_BLOCKS).enumerate() {
            let mut acc16 = [_mm256_setzero_si256(); N];
            for (j, block) in seg.iter().enumerate() {
                let base = (s * SEGMENT_BLOCKS + j) * BLOCK_INPUTS;
                // SAFETY: `Block` is 32 bytes, 32-byte aligned.
                let v = unsafe { _mm256_load_si256(block.0.as_ptr().cast()) };
                let lo = _mm256_and_si256(v, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
                let ws = [
                    _mm256_shuffle_epi8(lut_lo, lo),
                    _mm256_shuffle_epi8(lut_hi, lo),
                    _mm256_shuffle_epi8(lut_lo, hi),
                    _mm256_shuffle_epi8(lut_hi, hi),
                ];
                for (n, acc) in acc16.iter_mut().enumerate() {
                    let mut sums = [_mm256_setzero_si256(); 4];
                    for (k, (sum, wk)) in sums.iter_mut().zip(ws).enumerate() {
                        // SAFETY: base + 32k + 32 <= w.len()·128, and the assert above bounds
                        // row n's start (n·stride) plus that within x.
                        let xv = unsafe {
                            _mm256_loadu_si256(xp.add(n * stride + base + 32 * k).cast())
                        };
                        *sum = _mm256_maddubs_epi16(ones8, _mm256_sign_epi8(xv, wk));
                    }
                    // Pair-sums ≤ 254, four of them ≤ 1016: no i16 overflow within a segment.
                    let t = _mm256_add_epi16(
                        _mm256_add_epi16(sums[0], sums[1]),
                        _mm256_add_epi16(sums[2], sums[3]),
                    );
                    *acc = _mm256_add_epi16(*acc, t);
                }
            }
            for (a32, a16) in acc32.iter_mut().zip(acc16) {
                *a32 = _mm256_add_epi32(*a32, _mm256_madd_epi16(a16, ones16));
            }
        }
        for (o, a) in out.iter_mut().zip(acc32) {
            *o = hsum_epi32(a);
        }
    }

    /// Sum of the eight `i32` lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic generator (SplitMix64) so tests need no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn trits(&mut self, n: usize) -> Vec<i8> {
            (0..n).map(|_| (self.next() % 3) as i8 - 1).collect()
        }
        fn i8s(&mut self, n: usize, lo: i8) -> Vec<i8> {
            (0..n)
                .map(|_| {
                    let span = 128 + (-(lo as i32)) as u64;
                    (lo as i64 + (self.next() % span) as i64) as i8
                })
                .collect()
        }
        fn f32s(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|_| (self.next() % 2_000_001) as f32 / 1e6 - 1.0)
                .collect()
        }
    }

    fn naive(codes: &[i8], o_n: usize, i_n: usize, x: &[i8], batch: usize) -> Vec<i32> {
        let mut y = vec![0i32; batch * o_n];
        for b in 0..batch {
            for o in 0..o_n {
                y[b * o_n + o] = (0..i_n)
                    .map(|i| codes[o * i_n + i] as i32 * x[b * i_n + i] as i32)
                    .sum();
            }
        }
        y
    }

    const SHAPES: &[(usize, usize)] = &[
        (1, 1),
        (3, 31),
        (5, 32),
        (7, 33),
        (2, 64),
        (9, 100),
        (4, 127),
        (6, 128),
        (3, 129),
        (17, 200),
        (8, 2048),
        (5, 2049),
        (3, 4100),
        (33, 300),
    ];

    #[test]
    fn scalar_and_simd_match_naive_reference() {
        let mut rng = Rng(42);
        let simd = KernelPath::Avx2.is_available();
        if !simd {
            eprintln!("AVX2 not available: only the scalar path is checked");
        }
        for &(o_n, i_n) in SHAPES {
            let codes = rng.trits(o_n * i_n);
            let m = TernaryMatrix::from_codes(&codes, o_n, i_n, 1.0).unwrap();
            for batch in [1, 2, 3, 4, 5, 8] {
                let x = rng.i8s(batch * i_n, -127);
                let want = naive(&codes, o_n, i_n, &x, batch);
                let mut got = vec![i32::MIN; batch * o_n];
                m.gemm_i8_with(KernelPath::Scalar, &x, batch, &mut got);
                assert_eq!(got, want, "scalar {o_n}x{i_n} batch {batch}");
                if simd {
                    got.fill(i32::MIN);
                    m.gemm_i8_with(KernelPath::Avx2, &x, batch, &mut got);
                    assert_eq!(got, want, "avx2 {o_n}x{i_n} batch {batch}");
                }
                got.fill(i32::MIN);
                m.gemm_i8(&x, batch, &mut got);
                assert_eq!(got, want, "default {o_n}x{i_n} batch {batch}");
            }
            let x = rng.i8s(i_n, -127);
            let mut got = vec![0i32; o_n];
            m.gemv_i8(&x, &mut got);
            assert_eq!(got, naive(&codes, o_n, i_n, &x, 1), "gemv {o_n}x{i_n}");
        }
    }

    #[test]
    fn extreme_activations_and_minus_128_are_exact() {
        let (o_n, i_n) = (6, 4096);
        // All +1 / all -1 / all 0 rows with saturated inputs stress the i16 partial sums.
        let mut codes = vec![1i8; i_n];
        codes.extend(vec![-1i8; i_n]);
        codes.extend(vec![0i8; i_n]);
        let mut rng = Rng(7);
        codes.extend(rng.trits(3 * i_n));
        let m = TernaryMatrix::from_codes(&codes, o_n, i_n, 1.0).unwrap();
        for fill in [127i8, -127, -128] {
            for batch in [1, 3, 8] {
                let x = vec![fill; batch * i_n];
                let want = naive(&codes, o_n, i_n, &x, batch);
                for path in [KernelPath::Scalar, KernelPath::Avx2] {
                    let mut got = vec![0i32; batch * o_n];
                    m.gemm_i8_with(path, &x, batch, &mut got);
                    assert_eq!(got, want, "{path:?} fill {fill} batch {batch}");
                }
            }
        }
        // Random inputs including -128 take the exact fallback.
        let x = rng.i8s(2 * i_n, -128);
        let mut got = vec![0i32; 2 * o_n];
        m.gemm_i8(&x, 2, &mut got);
        assert_eq!(got, naive(&codes, o_n, i_n, &x, 2));
    }

    #[test]
    fn large_parallel_product_matches() {
        let (o_n, i_n) = (300, 1000);
        let mut rng = Rng(9);
        let codes = rng.trits(o_n * i_n);
        let m = TernaryMatrix::from_codes(&codes, o_n, i_n, 1.0).unwrap();
        for batch in [1, 8] {
            let x = rng.i8s(batch * i_n, -127);
            let want = naive(&codes, o_n, i_n, &x, batch);
            for path in [KernelPath::Scalar, KernelPath::Avx2] {
                let mut got = vec![0i32; batch * o_n];
                m.gemm_i8_with(path, &x, batch, &mut got);
                assert_eq!(got, want, "{path:?} batch {batch}");
            }
        }
    }

    #[test]
    fn layout_round_trips_and_matches_packed_format() {
        let mut rng = Rng(3);
        for &(o_n, i_n) in SHAPES {
            let codes = rng.trits(o_n * i_n);
            let m = TernaryMatrix::from_codes(&codes, o_n, i_n, 0.5).unwrap();
            assert_eq!(m.to_codes(), codes);
            assert_eq!(m.weight_bytes(), o_n * i_n.div_ceil(128) * 32);
            let packed = pack::pack_ternary_2bit(&codes).unwrap();
            assert_eq!(m.to_packed_2bit(), packed);
            let m2 = TernaryMatrix::from_packed_2bit(&packed, o_n, i_n, 0.5).unwrap();
            assert_eq!(m2, m);
        }
        // Block layout: input 128b + 32k + j sits in bit pair k of byte j of block b.
        let mut codes = vec![0i8; 256];
        codes[32 + 5] = 1; // k = 1, j = 5
        codes[128 + 96 + 31] = -1; // block 1, k = 3, j = 31
        let m = TernaryMatrix::from_codes(&codes, 1, 256, 1.0).unwrap();
        assert_eq!(m.blocks[0].0[5], TERNARY_PLUS << 2);
        assert_eq!(m.blocks[1].0[31], TERNARY_MINUS << 6);
        assert_eq!(
            m.blocks
                .iter()
                .flat_map(|b| b.0)
                .filter(|&v| v != 0)
                .count(),
            2
        );
        assert_eq!(m.weight_bytes(), 64);
    }

    #[test]
    fn constructor_errors() {
        assert!(matches!(
            TernaryMatrix::from_codes(&[0; 5], 2, 3, 1.0),
            Err(KernelError::ShapeMismatch {
                expected: 6,
                got: 5,
                ..
            })
        ));
        assert_eq!(
            TernaryMatrix::from_codes(&[0, 1, 2, 0], 2, 2, 1.0),
            Err(KernelError::NotTernary { index: 2, value: 2 })
        );
        assert!(matches!(
            TernaryMatrix::from_packed_2bit(&[0], 2, 3, 1.0),
            Err(KernelError::Pack(PackError::ShortBuffer { .. }))
        ));
        assert!(matches!(
            TernaryMatrix::from_packed_2bit(&[0b1100_0000], 1, 4, 1.0),
            Err(KernelError::Pack(PackError::InvalidTernary2Bit {
                index: 3
            }))
        ));
        // Empty shapes are fine.
        let m = TernaryMatrix::from_codes(&[], 3, 0, 1.0).unwrap();
        let mut out = vec![5i32; 6];
        m.gemm_i8(&[], 2, &mut out);
        assert_eq!(out, vec![0; 6]);
        assert_eq!(m.forward_f32(&[], 2), vec![0.0; 6]);
    }

    #[test]
    fn activation_quantization_convention() {
        let (q, s) = quantize_activations_i8(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0], 2, 3);
        assert_eq!(s[0], 127.0);
        // 0.5·127 = 63.5 → 64 (half to even), 0.25·127 = 31.75 → 32.
        assert_eq!(q, vec![64, -127, 32, 0, 0, 0]);
        assert_eq!(s[1], 127.0 / ACTIVATION_EPS);
        // Ties go to even: with absmax 127 the scale is 1.
        let (q, _) = quantize_activations_i8(&[2.5, -3.5, 127.0, 1.5], 1, 4);
        assert_eq!(q, vec![2, -4, 127, 2]);
        let (q, _) = quantize_activations_i8(&[f32::NAN, 1.0], 1, 2);
        assert_eq!(q, vec![0, 127]);
        // The fast rounding agrees with `round_ties_even` on every quarter step in range.
        for i in -127 * 8..=127 * 8 {
            let t = i as f32 / 8.0;
            assert_eq!(round_half_even_i8(t), t.round_ties_even() as i8, "{t}");
        }
        let t = 126.5001f32;
        assert_eq!(round_half_even_i8(t), 127);
    }

    #[test]
    fn forward_f32_matches_float_reference() {
        let mut rng = Rng(11);
        for &(o_n, i_n) in &[(16, 64), (10, 333), (64, 1024)] {
            let codes = rng.trits(o_n * i_n);
            let gamma = 0.037;
            let m = TernaryMatrix::from_codes(&codes, o_n, i_n, gamma).unwrap();
            for batch in [1, 3, 8] {
                let x = rng.f32s(batch * i_n);
                let y = m.forward_f32(&x, batch);
                assert_eq!(y.len(), batch * o_n);
                // Exact reference for the quantized activations, and the float one.
                let (q, scales) = quantize_activations_i8(&x, batch, i_n);
                for b in 0..batch {
                    let row = &x[b * i_n..(b + 1) * i_n];
                    let absmax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for o in 0..o_n {
                        let w = &codes[o * i_n..(o + 1) * i_n];
                        let exact: f32 =
                            w.iter().zip(row).map(|(&c, &v)| c as f32 * v).sum::<f32>() * gamma;
                        let acc: i32 = w
                            .iter()
                            .zip(&q[b * i_n..(b + 1) * i_n])
                            .map(|(&c, &v)| c as i32 * v as i32)
                            .sum();
                        let dq = acc as f32 * gamma / scales[b];
                        let got = y[b * o_n + o];
                        assert!(
                            (got - dq).abs() <= 1e-5 * dq.abs().max(1.0),
                            "{got} vs {dq}"
                        );
                        // Quantization error: ≤ half a step per input, summed.
                        let tol = gamma * absmax / 127.0 * 0.5 * i_n as f32 + 1e-4;
                        assert!((got - exact).abs() <= tol, "{got} vs {exact} (tol {tol})");
                        // And in practice far tighter than the worst case (errors cancel).
                        assert!((got - exact).abs() <= tol * 0.25, "{got} vs {exact}");
                    }
                }
            }
        }
    }
}

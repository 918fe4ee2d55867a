//! Exporting pruned weights: a compact bitmask + nonzero-values format, and the "physical
//! shrink" that removes structurally pruned neurons / channels from the tensors altogether.
//!
//! **Sparse format** (`to_bytes`, all little-endian):
//! `b"QSP1"` · rank `u32` · each dim `u64` · nnz `u64` · bitmask `ceil(numel/8)` bytes
//! (element `i` is bit `i % 8` of byte `i / 8`, LSB first) · nnz values `f32`.
//! "Nonzero" means any bit pattern other than `+0.0`, so `-0.0` and NaN payloads survive and
//! `decode(encode(x))` is bit-identical to `x`.

use crate::error::PruneError;
use crate::mask::split_axis;

const MAGIC: &[u8; 4] = b"QSP1";

/// A tensor stored as a packed bitmask of nonzero positions plus the nonzero values.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseTensor {
    shape: Vec<usize>,
    bitmask: Vec<u8>,
    values: Vec<f32>,
}

impl SparseTensor {
    /// Encodes `values` (row-major, of `shape`).
    pub fn encode(values: &[f32], shape: &[usize]) -> Result<Self, PruneError> {
        if values.len() != shape.iter().product::<usize>() {
            return Err(PruneError::ShapeMismatch {
                what: "sparse encode".into(),
                expected: shape.to_vec(),
                got: vec![values.len()],
            });
        }
        let mut bitmask = vec![0u8; values.len().div_ceil(8)];
        let mut nonzero = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            if v.to_bits() != 0 {
                bitmask[i / 8] |= 1 << (i % 8);
                nonzero.push(v);
            }
        }
        Ok(Self {
            shape: shape.to_vec(),
            bitmask,
            values: nonzero,
        })
    }

    /// The dense values, row-major (bit-identical to what was encoded).
    pub fn decode(&self) -> Vec<f32> {
        let numel: usize = self.shape.iter().product();
        let mut out = vec![0.0f32; numel];
        let mut next = self.values.iter();
        for (i, o) in out.iter_mut().enumerate() {
            if self.bitmask[i / 8] >> (i % 8) & 1 == 1 {
                // `from_bytes` / `encode` guarantee one value per set bit.
                *o = *next.next().expect("one value per set bit");
            }
        }
        out
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of stored (nonzero) values.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The packed bitmask.
    pub fn bitmask(&self) -> &[u8] {
        &self.bitmask
    }

    /// The stored nonzero values, in row-major order.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Size of the serialized form in bytes (exactly `to_bytes().len()`).
    pub fn encoded_bytes(&self) -> usize {
        4 + 4 + 8 * self.shape.len() + 8 + self.bitmask.len() + 4 * self.values.len()
    }

    /// Serializes to the format in the module docs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_bytes());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.shape.len() as u32).to_le_bytes());
        for &d in &self.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.bitmask);
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses [`SparseTensor::to_bytes`] output, checking lengths and the bit count.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PruneError> {
        let mut r = Cursor { bytes, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(PruneError::Corrupt("bad magic (expected QSP1)".into()));
        }
        let rank = u32::from_le_bytes(r.array()?) as usize;
        let mut shape = Vec::with_capacity(rank.min(16));
        let mut numel: usize = 1;
        for _ in 0..rank {
            let d = usize::try_from(u64::from_le_bytes(r.array()?))
                .map_err(|_| PruneError::Corrupt("dimension too large".into()))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| PruneError::Corrupt("element count overflows".into()))?;
            shape.push(d);
        }
        let nnz = usize::try_from(u64::from_le_bytes(r.array()?))
            .map_err(|_| PruneError::Corrupt("nnz too large".into()))?;
        let bitmask = r.take(numel.div_ceil(8))?.to_vec();
        let set: usize = bitmask.iter().map(|b| b.count_ones() as usize).sum();
        let padding_bits = !numel.is_multiple_of(8) && bitmask[numel / 8] >> (numel % 8) != 0;
        if set != nnz || padding_bits {
            return Err(PruneError::Corrupt(format!(
                "bitmask has {set} set bits (padding set: {padding_bits}) but nnz = {nnz}"
            )));
        }
        let raw = r.take(
            nnz.checked_mul(4)
                .ok_or_else(|| PruneError::Corrupt("nnz too large".into()))?,
        )?;
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if r.pos != bytes.len() {
            return Err(PruneError::Corrupt(format!(
                "{} trailing bytes",
                bytes.len() - r.pos
            )));
        }
        Ok(Self {
            shape,
            bitmask,
            values,
        })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PruneError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                PruneError::Corrupt(format!(
                    "truncated: need {n} bytes at offset {}, have {}",
                    self.pos,
                    self.bytes.len()
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PruneError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

/// Keeps the indices `keep` (ascending) along `axis` of a row-major tensor; returns the new
/// values and shape. The building block of every physical shrink.
pub fn select_along_axis(
    values: &[f32],
    shape: &[usize],
    axis: usize,
    keep: &[usize],
) -> Result<(Vec<f32>, Vec<usize>), PruneError> {
    if values.len() != shape.iter().product::<usize>() {
        return Err(PruneError::ShapeMismatch {
            what: "select_along_axis".into(),
            expected: shape.to_vec(),
            got: vec![values.len()],
        });
    }
    let (outer, size, inner) = split_axis(shape, axis, "select_along_axis")?;
    if let Some(&bad) = keep.iter().find(|&&k| k >= size) {
        return Err(PruneError::BadAxis {
            layer: format!("index {bad} along axis {axis}"),
            axis,
            shape: shape.to_vec(),
        });
    }
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let base = (o * size + k) * inner;
            out.extend_from_slice(&values[base..base + inner]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[axis] = keep.len();
    Ok((out, new_shape))
}

/// A Linear layer with its pruned output neurons physically removed.
#[derive(Debug, Clone, PartialEq)]
pub struct ShrunkLinear {
    /// Weight `[d_in, kept.len()]`, row-major.
    pub weight: Vec<f32>,
    /// Its shape.
    pub weight_shape: Vec<usize>,
    /// Bias `[kept.len()]`, if the layer had one.
    pub bias: Option<Vec<f32>>,
    /// The original output indices that were kept, ascending.
    pub kept: Vec<usize>,
}

/// Removes the output neurons (columns of burn's `[d_in, d_out]` weight, bias entries) whose
/// `keep_columns` flag is false.
///
/// Outputs of the kept neurons are unchanged; the removed ones must have been fully masked
/// (weight column and bias zero) for the next layer's output to be unchanged after
/// [`shrink_next_inputs`]. At least one neuron must stay.
pub fn shrink_linear_outputs(
    weight: &[f32],
    weight_shape: &[usize],
    bias: Option<&[f32]>,
    keep_columns: &[bool],
) -> Result<ShrunkLinear, PruneError> {
    if weight_shape.len() != 2 {
        return Err(PruneError::ShapeMismatch {
            what: "Linear weight [d_in, d_out]".into(),
            expected: vec![0, 0],
            got: weight_shape.to_vec(),
        });
    }
    let d_out = weight_shape[1];
    if keep_columns.len() != d_out {
        return Err(PruneError::ShapeMismatch {
            what: "column flags".into(),
            expected: vec![d_out],
            got: vec![keep_columns.len()],
        });
    }
    let kept: Vec<usize> = (0..d_out).filter(|&j| keep_columns[j]).collect();
    if kept.is_empty() {
        return Err(PruneError::AllUnitsPruned {
            layer: "Linear".into(),
            sparsity: 1.0,
            units: d_out,
        });
    }
    let (weight, weight_shape) = select_along_axis(weight, weight_shape, 1, &kept)?;
    let bias = match bias {
        None => None,
        Some(b) => Some(select_along_axis(b, &[d_out], 0, &kept)?.0),
    };
    Ok(ShrunkLinear {
        weight,
        weight_shape,
        bias,
        kept,
    })
}

/// Slices the next layer's input rows to the kept units of the previous layer.
///
/// For a Linear `[d_in, d_out]` after a Linear: `features_per_unit = 1`. After a conv whose
/// output `[c, h, w]` is flattened: `features_per_unit = h·w` (each kept channel keeps its block
/// of `h·w` consecutive rows). For a following Conv2d `[out, in, kh, kw]`, use
/// [`select_along_axis`] with axis 1 instead.
pub fn shrink_next_inputs(
    weight: &[f32],
    weight_shape: &[usize],
    kept_units: &[usize],
    features_per_unit: usize,
) -> Result<(Vec<f32>, Vec<usize>), PruneError> {
    let rows: Vec<usize> = kept_units
        .iter()
        .flat_map(|&u| u * features_per_unit..(u + 1) * features_per_unit)
        .collect();
    select_along_axis(weight, weight_shape, 0, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criteria::{Norm, WeightRef, structured_mask, units_to_mask};
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::activation::relu;
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn encode_decode_round_trip_and_size() {
        let v = [
            0.0, 1.5, 0.0, 0.0, -2.0, 0.0, 0.0, 0.25, 0.0, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0,
        ];
        let s = SparseTensor::encode(&v, &[4, 4]).unwrap();
        // -0.0 counts as stored: 5 values.
        assert_eq!(s.nnz(), 5);
        // bits 1, 4, 7 → 0b1001_0010; bits 9, 15 → 0b1000_0010.
        assert_eq!(s.bitmask(), &[0b1001_0010, 0b1000_0010]);
        // magic 4 + rank 4 + dims 2·8 + nnz 8 + bitmask 2 + values 5·4 = 54.
        assert_eq!(s.encoded_bytes(), 54);
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), 54);
        let back = SparseTensor::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        let d = back.decode();
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&d), bits(&v));
        assert_eq!(back.shape(), &[4, 4]);
        // A dense f32 copy would be 64 bytes of values alone.
        assert!(s.encoded_bytes() < 16 * 4);
    }

    #[test]
    fn ragged_length_and_corruption() {
        let v = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let s = SparseTensor::encode(&v, &[10]).unwrap();
        assert_eq!(s.encoded_bytes(), 4 + 4 + 8 + 8 + 2 + 8);
        let bytes = s.to_bytes();
        assert_eq!(
            SparseTensor::from_bytes(&bytes).unwrap().decode(),
            v.to_vec()
        );
        assert!(SparseTensor::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(SparseTensor::from_bytes(&extra).is_err());
        let mut bad_bits = bytes.clone();
        bad_bits[24] |= 0b100; // one more set bit than nnz
        assert!(SparseTensor::from_bytes(&bad_bits).is_err());
        let mut padding = bytes;
        padding[25] |= 0b1000_0000; // a bit past element 9
        assert!(SparseTensor::from_bytes(&padding).is_err());
        assert!(SparseTensor::encode(&v, &[3, 3]).is_err());
    }

    #[test]
    fn select_and_shrink_shapes() {
        // [2, 3] weight, keep column 0 and 2.
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let s = shrink_linear_outputs(&w, &[2, 3], Some(&[0.1, 0.2, 0.3]), &[true, false, true])
            .unwrap();
        assert_eq!(s.weight, vec![1.0, 3.0, 4.0, 6.0]);
        assert_eq!(s.weight_shape, vec![2, 2]);
        assert_eq!(s.bias, Some(vec![0.1, 0.3]));
        assert_eq!(s.kept, vec![0, 2]);
        assert!(shrink_linear_outputs(&w, &[2, 3], None, &[false; 3]).is_err());
        // Conv → flatten → Linear: channels 0 and 2 of 3, 2 features each.
        let next: Vec<f32> = (0..12).map(|x| x as f32).collect(); // [6, 2]
        let (v, sh) = shrink_next_inputs(&next, &[6, 2], &[0, 2], 2).unwrap();
        assert_eq!(sh, vec![4, 2]);
        assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]);
        assert!(select_along_axis(&w, &[2, 3], 1, &[3]).is_err());
    }

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn linear(w: Vec<f32>, shape: [usize; 2], b: Vec<f32>, dev: &Device) -> Linear {
        let mut l = LinearConfig::new(shape[0], shape[1]).init(dev);
        l.weight = Param::from_data(TensorData::new(w, shape), dev);
        l.bias = Some(Param::from_data(TensorData::new(b, [shape[1]]), dev));
        l
    }

    /// Masked 2-layer MLP vs the physically shrunk one: identical outputs.
    #[test]
    fn shrink_gives_identical_outputs() {
        let dev = Device::flex();
        let (d_in, hidden, d_out) = (5usize, 6usize, 3usize);
        // Dyadic values (multiples of 1/8): every sum is exact, so equality is bit-exact
        // whatever order the matmul kernel adds in.
        let w1: Vec<f32> = (0..d_in * hidden)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0)
            .collect();
        let b1: Vec<f32> = (0..hidden).map(|j| (j as f32 - 2.0) / 4.0).collect();
        let w2: Vec<f32> = (0..hidden * d_out)
            .map(|i| ((i * 5 % 9) as f32 - 4.0) / 8.0)
            .collect();
        let b2 = vec![0.5, -0.25, 0.125];
        // Structured L1: remove half of the hidden neurons, masking weight columns and biases.
        let mask = structured_mask(
            WeightRef::new("fc1.weight", &w1, &[d_in, hidden]).unwrap(),
            Norm::L1,
            1,
            0.5,
            None,
        )
        .unwrap();
        let keep_cols = mask.kept_units(1).unwrap();
        assert_eq!(keep_cols.iter().filter(|&&k| !k).count(), 3);
        let bias_mask = units_to_mask(&[hidden], 0, &keep_cols).unwrap();
        let (mut w1m, mut b1m) = (w1.clone(), b1.clone());
        mask.apply_to(&mut w1m).unwrap();
        bias_mask.apply_to(&mut b1m).unwrap();

        let x = Tensor::<2>::from_data(
            TensorData::new(
                (0..4 * d_in)
                    .map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0)
                    .collect::<Vec<_>>(),
                [4, d_in],
            ),
            &dev,
        );
        let fc1 = linear(w1m.clone(), [d_in, hidden], b1m.clone(), &dev);
        let fc2 = linear(w2.clone(), [hidden, d_out], b2.clone(), &dev);
        let masked_out = host(fc2.forward(relu(fc1.forward(x.clone()))));

        let s1 = shrink_linear_outputs(&w1m, &[d_in, hidden], Some(&b1m), &keep_cols).unwrap();
        assert_eq!(s1.weight_shape, vec![d_in, 3]);
        let (w2s, w2s_shape) = shrink_next_inputs(&w2, &[hidden, d_out], &s1.kept, 1).unwrap();
        assert_eq!(w2s_shape, vec![3, d_out]);
        let fc1s = linear(s1.weight, [d_in, 3], s1.bias.unwrap(), &dev);
        let fc2s = linear(w2s, [3, d_out], b2, &dev);
        let shrunk_out = host(fc2s.forward(relu(fc1s.forward(x))));
        assert_eq!(masked_out, shrunk_out);
        // And the test can fail: dropping a kept neuron instead changes the output.
        let mut wrong = keep_cols.clone();
        let first_kept = wrong.iter().position(|&k| k).unwrap();
        wrong[first_kept] = false;
        let first_pruned = keep_cols.iter().position(|&k| !k).unwrap();
        wrong[first_pruned] = true;
        let s1w = shrink_linear_outputs(&w1m, &[d_in, hidden], Some(&b1m), &wrong).unwrap();
        let (w2w, _) = shrink_next_inputs(&w2, &[hidden, d_out], &s1w.kept, 1).unwrap();
        let fc1w = linear(s1w.weight, [d_in, 3], s1w.bias.unwrap(), &dev);
        let fc2w = linear(w2w, [3, d_out], vec![0.5, -0.25, 0.125], &dev);
        let x2 = Tensor::<2>::from_data(
            TensorData::new(
                (0..4 * d_in)
                    .map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0)
                    .collect::<Vec<_>>(),
                [4, d_in],
            ),
            &dev,
        );
        assert_ne!(host(fc2w.forward(relu(fc1w.forward(x2)))), masked_out);
    }
}

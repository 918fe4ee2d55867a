//! Packing of real low-bit integer codes into bytes, for exporting quantized weights.
//!
//! # Formats
//!
//! * **Generic `bits`-wide codes** ([`pack_signed`], [`pack_unsigned`]): the codes form one
//!   little-endian bit stream. Code `i` occupies bits `[i·bits, (i+1)·bits)` of the stream, where
//!   bit `k` of the stream is bit `k % 8` of byte `k / 8`. So the first code sits in the *lowest*
//!   bits of the first byte; a code may straddle two bytes for widths 3, 5, 6, 7. The buffer is
//!   `ceil(len·bits / 8)` bytes, the unused high bits of the last byte are zero.
//!   Signed codes are stored as `bits`-wide two's complement (range `-2^(bits-1) ..= 2^(bits-1)-1`),
//!   unsigned codes as plain binary (range `0 ..= 2^bits - 1`).
//! * **int8** ([`pack_int8`]): one `i8` per byte, two's complement (the generic format at 8 bits).
//! * **int4** ([`pack_int4`]): two signed codes per byte, low nibble first, two's complement
//!   nibbles: `[1, -1, 7, -8]` → `[0xF1, 0x87]`. An odd length pads the last high nibble with 0.
//! * **int2** ([`pack_int2`]): four signed codes per byte, lowest bit pair first, 2-bit two's
//!   complement (`-2 → 0b10`, `-1 → 0b11`, `0 → 0b00`, `1 → 0b01`). Unsigned 2-bit codes
//!   `0..=3` use [`pack_unsigned`] with `bits = 2` (plain binary, same bit order).
//! * **Ternary 2-bit** ([`pack_ternary_2bit`]): four trits per byte, lowest bit pair first, with
//!   `0 → 0b00`, `+1 → 0b01`, `-1 → 0b10`; `0b11` is invalid. Bit 0 of a pair is "plus", bit 1 is
//!   "minus", which is what the ternary kernel ([`crate::kernel`]) decodes.
//! * **Ternary base-3** ([`pack_ternary_base3`]): five trits per byte, byte = `Σ (t_i + 1)·3^i`
//!   for the byte's trits `t_0..t_4` in order (max 242), i.e. 1.6 bits per weight. Missing trits
//!   in the last byte contribute 0 (digit 0), so a lone trailing trit `t` packs to `t + 1`.
//!
//! Unpacking reads only the bytes it needs: a longer buffer is accepted (trailing bytes are
//! ignored), a shorter one is a [`PackError::ShortBuffer`].

use thiserror::Error;

/// 2-bit ternary code of a zero weight.
pub const TERNARY_ZERO: u8 = 0b00;
/// 2-bit ternary code of a `+1` weight (the "plus" bit).
pub const TERNARY_PLUS: u8 = 0b01;
/// 2-bit ternary code of a `-1` weight (the "minus" bit).
pub const TERNARY_MINUS: u8 = 0b10;

/// Why codes could not be packed or bytes could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PackError {
    /// The bit width is not one this packer supports.
    #[error("unsupported bit width {bits} for {kind} codes (supported: {min}..=8)")]
    UnsupportedBits {
        /// The requested width.
        bits: u32,
        /// "signed" or "unsigned".
        kind: &'static str,
        /// The smallest supported width for this kind.
        min: u32,
    },
    /// A code does not fit in the requested width.
    #[error(
        "code {value} at index {index} does not fit in {bits}-bit {kind} (range {min}..={max})"
    )]
    CodeOutOfRange {
        /// Position of the offending code.
        index: usize,
        /// The offending value.
        value: i64,
        /// The requested width.
        bits: u32,
        /// "signed" or "unsigned".
        kind: &'static str,
        /// Smallest representable value.
        min: i64,
        /// Largest representable value.
        max: i64,
    },
    /// A ternary code is not one of -1, 0, 1.
    #[error("ternary code {value} at index {index} is not one of -1, 0, 1")]
    NotTernary {
        /// Position of the offending code.
        index: usize,
        /// The offending value.
        value: i64,
    },
    /// The buffer is too short for the requested number of codes.
    #[error(
        "buffer of {got} bytes is too short for {len} codes in {format}: {needed} bytes needed"
    )]
    ShortBuffer {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
        /// Number of codes requested.
        len: usize,
        /// The format, e.g. "4-bit signed" or "ternary base-3".
        format: String,
    },
    /// A 2-bit ternary buffer holds the unused pattern `0b11`.
    #[error("invalid 2-bit ternary pattern 0b11 for code {index}")]
    InvalidTernary2Bit {
        /// Position of the offending code.
        index: usize,
    },
    /// A base-3 ternary byte is above 242 (3^5 - 1).
    #[error("invalid base-3 ternary byte {value} at byte {index} (max 242)")]
    InvalidBase3Byte {
        /// Position of the offending byte.
        index: usize,
        /// The offending byte.
        value: u8,
    },
}

/// Bytes needed for `len` codes of `bits` bits each in the generic bit-stream format.
pub fn packed_len(len: usize, bits: u32) -> usize {
    (len * bits as usize).div_ceil(8)
}

/// Bytes needed for `len` trits in the base-3 format (five per byte).
pub fn ternary_base3_len(len: usize) -> usize {
    len.div_ceil(5)
}

/// Inclusive value range of a `bits`-wide signed (two's complement) code.
pub fn signed_range(bits: u32) -> (i64, i64) {
    let half = 1i64 << (bits - 1);
    (-half, half - 1)
}

/// Inclusive value range of a `bits`-wide unsigned code.
pub fn unsigned_range(bits: u32) -> (i64, i64) {
    (0, (1i64 << bits) - 1)
}

fn check_bits(bits: u32, signed: bool) -> Result<(), PackError> {
    let min = if signed { 2 } else { 1 };
    if (min..=8).contains(&bits) {
        Ok(())
    } else {
        Err(PackError::UnsupportedBits {
            bits,
            kind: kind_name(signed),
            min,
        })
    }
}

fn kind_name(signed: bool) -> &'static str {
    if signed { "signed" } else { "unsigned" }
}

fn check_len(
    bytes: &[u8],
    needed: usize,
    len: usize,
    format: impl FnOnce() -> String,
) -> Result<(), PackError> {
    if bytes.len() < needed {
        Err(PackError::ShortBuffer {
            needed,
            got: bytes.len(),
            len,
            format: format(),
        })
    } else {
        Ok(())
    }
}

/// Writes `fields` (already masked to `bits` bits) as a little-endian bit stream.
fn pack_fields(fields: impl Iterator<Item = u32>, len: usize, bits: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed_len(len, bits));
    let mut acc: u32 = 0;
    let mut filled: u32 = 0;
    for f in fields {
        acc |= f << filled;
        filled += bits;
        while filled >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out.push(acc as u8);
    }
    out
}

/// Reads `len` raw `bits`-wide fields from a little-endian bit stream (length already checked).
fn unpack_fields(bytes: &[u8], bits: u32, len: usize) -> impl Iterator<Item = u32> + '_ {
    let mask = (1u32 << bits) - 1;
    (0..len).map(move |i| {
        let bit = i * bits as usize;
        let byte = bit / 8;
        let shift = (bit % 8) as u32;
        let lo = bytes[byte] as u32;
        let hi = if shift + bits > 8 {
            (bytes[byte + 1] as u32) << 8
        } else {
            0
        };
        ((lo | hi) >> shift) & mask
    })
}

fn pack_checked(codes: &[i64], bits: u32, signed: bool) -> Result<Vec<u8>, PackError> {
    check_bits(bits, signed)?;
    let (min, max) = if signed {
        signed_range(bits)
    } else {
        unsigned_range(bits)
    };
    if let Some((index, &value)) = codes
        .iter()
        .enumerate()
        .find(|(_, v)| !(min..=max).contains(*v))
    {
        return Err(PackError::CodeOutOfRange {
            index,
            value,
            bits,
            kind: kind_name(signed),
            min,
            max,
        });
    }
    let mask = (1u32 << bits) - 1;
    Ok(pack_fields(
        codes.iter().map(|&v| (v as u32) & mask),
        codes.len(),
        bits,
    ))
}

/// Packs signed codes as `bits`-wide two's complement (`bits` in 2..=8), first code in the lowest bits.
pub fn pack_signed(codes: &[i32], bits: u32) -> Result<Vec<u8>, PackError> {
    let wide: Vec<i64> = codes.iter().map(|&v| v as i64).collect();
    pack_checked(&wide, bits, true)
}

/// Unpacks `len` signed `bits`-wide two's complement codes written by [`pack_signed`].
pub fn unpack_signed(bytes: &[u8], bits: u32, len: usize) -> Result<Vec<i32>, PackError> {
    check_bits(bits, true)?;
    check_len(bytes, packed_len(len, bits), len, || {
        format!("{bits}-bit signed")
    })?;
    let sign_shift = 32 - bits;
    Ok(unpack_fields(bytes, bits, len)
        .map(|f| ((f << sign_shift) as i32) >> sign_shift)
        .collect())
}

/// Packs unsigned codes as `bits`-wide binary (`bits` in 1..=8), first code in the lowest bits.
pub fn pack_unsigned(codes: &[u32], bits: u32) -> Result<Vec<u8>, PackError> {
    let wide: Vec<i64> = codes.iter().map(|&v| v as i64).collect();
    pack_checked(&wide, bits, false)
}

/// Unpacks `len` unsigned `bits`-wide codes written by [`pack_unsigned`].
pub fn unpack_unsigned(bytes: &[u8], bits: u32, len: usize) -> Result<Vec<u32>, PackError> {
    check_bits(bits, false)?;
    check_len(bytes, packed_len(len, bits), len, || {
        format!("{bits}-bit unsigned")
    })?;
    Ok(unpack_fields(bytes, bits, len).collect())
}

/// Packs int8 codes one per byte (two's complement); infallible.
pub fn pack_int8(codes: &[i8]) -> Vec<u8> {
    codes.iter().map(|&v| v as u8).collect()
}

/// Unpacks `len` int8 codes written by [`pack_int8`].
pub fn unpack_int8(bytes: &[u8], len: usize) -> Result<Vec<i8>, PackError> {
    check_len(bytes, len, len, || "8-bit signed".to_string())?;
    Ok(bytes[..len].iter().map(|&b| b as i8).collect())
}

fn pack_small_signed(codes: &[i8], bits: u32) -> Result<Vec<u8>, PackError> {
    let wide: Vec<i64> = codes.iter().map(|&v| v as i64).collect();
    pack_checked(&wide, bits, true)
}

fn unpack_small_signed(bytes: &[u8], bits: u32, len: usize) -> Result<Vec<i8>, PackError> {
    Ok(unpack_signed(bytes, bits, len)?
        .into_iter()
        .map(|v| v as i8)
        .collect())
}

/// Packs int4 codes (-8..=7) two per byte, low nibble first; an odd length pads with a zero nibble.
pub fn pack_int4(codes: &[i8]) -> Result<Vec<u8>, PackError> {
    pack_small_signed(codes, 4)
}

/// Unpacks `len` int4 codes written by [`pack_int4`].
pub fn unpack_int4(bytes: &[u8], len: usize) -> Result<Vec<i8>, PackError> {
    unpack_small_signed(bytes, 4, len)
}

/// Packs int2 codes (-2..=1, 2-bit two's complement) four per byte, lowest bit pair first.
pub fn pack_int2(codes: &[i8]) -> Result<Vec<u8>, PackError> {
    pack_small_signed(codes, 2)
}

/// Unpacks `len` int2 codes written by [`pack_int2`].
pub fn unpack_int2(bytes: &[u8], len: usize) -> Result<Vec<i8>, PackError> {
    unpack_small_signed(bytes, 2, len)
}

/// The 2-bit ternary code (`0b00`/`0b01`/`0b10`) of a trit, or `None` if it is not -1, 0, 1.
pub fn ternary_code(trit: i8) -> Option<u8> {
    match trit {
        0 => Some(TERNARY_ZERO),
        1 => Some(TERNARY_PLUS),
        -1 => Some(TERNARY_MINUS),
        _ => None,
    }
}

/// The trit of a 2-bit ternary code, or `None` for the invalid pattern `0b11` (only the low 2 bits are read).
pub fn ternary_from_code(code: u8) -> Option<i8> {
    match code & 0b11 {
        TERNARY_ZERO => Some(0),
        TERNARY_PLUS => Some(1),
        TERNARY_MINUS => Some(-1),
        _ => None,
    }
}

fn check_ternary(trits: &[i8]) -> Result<(), PackError> {
    match trits
        .iter()
        .enumerate()
        .find(|(_, t)| !(-1..=1).contains(*t))
    {
        Some((index, &value)) => Err(PackError::NotTernary {
            index,
            value: value as i64,
        }),
        None => Ok(()),
    }
}

/// Packs trits (-1, 0, 1) four per byte as `0 → 0b00, +1 → 0b01, -1 → 0b10`, lowest bit pair first.
pub fn pack_ternary_2bit(trits: &[i8]) -> Result<Vec<u8>, PackError> {
    check_ternary(trits)?;
    Ok(trits
        .chunks(4)
        .map(|c| {
            c.iter().enumerate().fold(0u8, |byte, (k, &t)| {
                // `check_ternary` passed, so every trit has a code.
                byte | (ternary_code(t).unwrap_or(TERNARY_ZERO) << (2 * k))
            })
        })
        .collect())
}

/// Unpacks `len` trits written by [`pack_ternary_2bit`]; the pattern `0b11` is an error.
pub fn unpack_ternary_2bit(bytes: &[u8], len: usize) -> Result<Vec<i8>, PackError> {
    check_len(bytes, len.div_ceil(4), len, || "ternary 2-bit".to_string())?;
    (0..len)
        .map(|i| {
            let code = bytes[i / 4] >> (2 * (i % 4));
            ternary_from_code(code).ok_or(PackError::InvalidTernary2Bit { index: i })
        })
        .collect()
}

/// Packs trits (-1, 0, 1) five per byte as `Σ (t_i + 1)·3^i` (1.6 bits per weight).
pub fn pack_ternary_base3(trits: &[i8]) -> Result<Vec<u8>, PackError> {
    check_ternary(trits)?;
    Ok(trits
        .chunks(5)
        .map(|c| {
            c.iter()
                .rev()
                .fold(0u8, |byte, &t| byte * 3 + (t + 1) as u8)
        })
        .collect())
}

/// Unpacks `len` trits written by [`pack_ternary_base3`]; a byte above 242 is an error.
pub fn unpack_ternary_base3(bytes: &[u8], len: usize) -> Result<Vec<i8>, PackError> {
    let needed = ternary_base3_len(len);
    check_len(bytes, needed, len, || "ternary base-3".to_string())?;
    let mut out = Vec::with_capacity(len);
    for (index, &value) in bytes[..needed].iter().enumerate() {
        if value > 242 {
            return Err(PackError::InvalidBase3Byte { index, value });
        }
        let mut v = value;
        for _ in 0..(len - index * 5).min(5) {
            out.push((v % 3) as i8 - 1);
            v /= 3;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_hand_example() {
        assert_eq!(pack_int4(&[1, -1, 7, -8]).unwrap(), vec![0xF1, 0x87]);
        assert_eq!(pack_signed(&[1, -1, 7, -8], 4).unwrap(), vec![0xF1, 0x87]);
        assert_eq!(unpack_int4(&[0xF1, 0x87], 4).unwrap(), vec![1, -1, 7, -8]);
        // Odd length: the last high nibble is zero padding.
        assert_eq!(pack_int4(&[-2, 3, -1]).unwrap(), vec![0x3E, 0x0F]);
        assert_eq!(unpack_int4(&[0x3E, 0x0F], 3).unwrap(), vec![-2, 3, -1]);
    }

    #[test]
    fn int2_and_uint2_hand_examples() {
        // -2 → 10, -1 → 11, 0 → 00, 1 → 01, lowest pair first: 0b01_00_11_10.
        assert_eq!(pack_int2(&[-2, -1, 0, 1]).unwrap(), vec![0b0100_1110]);
        assert_eq!(unpack_int2(&[0b0100_1110], 4).unwrap(), vec![-2, -1, 0, 1]);
        assert_eq!(
            pack_unsigned(&[0, 1, 2, 3, 3], 2).unwrap(),
            vec![0b1110_0100, 0b11]
        );
        assert_eq!(
            unpack_unsigned(&[0b1110_0100, 0b11], 2, 5).unwrap(),
            vec![0, 1, 2, 3, 3]
        );
    }

    #[test]
    fn int8_and_odd_widths_hand_examples() {
        assert_eq!(pack_int8(&[0, -1, 127, -128]), vec![0x00, 0xFF, 0x7F, 0x80]);
        assert_eq!(
            unpack_int8(&[0x00, 0xFF, 0x7F, 0x80], 4).unwrap(),
            vec![0, -1, 127, -128]
        );
        assert_eq!(
            pack_signed(&[-1, 0, 127, -128], 8).unwrap(),
            vec![0xFF, 0x00, 0x7F, 0x80]
        );
        // 3-bit: 3 → 011, -4 → 100, -1 → 111: stream bits 0..9 = 011 | 100<<3 | 111<<6.
        assert_eq!(
            pack_signed(&[3, -4, -1], 3).unwrap(),
            vec![0b1110_0011, 0b1]
        );
        // 5-bit unsigned 31, 1: 11111 | 00001<<5 → 0x3F, 0x00.
        assert_eq!(pack_unsigned(&[31, 1], 5).unwrap(), vec![0x3F, 0x00]);
    }

    #[test]
    fn round_trip_every_width_every_value() {
        for bits in 2..=8u32 {
            let (min, max) = signed_range(bits);
            // Every representable value, in two phases so codes straddle bytes differently.
            let codes: Vec<i32> = (min..=max)
                .chain((min..=max).rev())
                .map(|v| v as i32)
                .collect();
            for skip in 0..3 {
                let c = &codes[skip..];
                let bytes = pack_signed(c, bits).unwrap();
                assert_eq!(bytes.len(), packed_len(c.len(), bits));
                assert_eq!(
                    unpack_signed(&bytes, bits, c.len()).unwrap(),
                    c,
                    "signed {bits}"
                );
            }
            let (umin, umax) = unsigned_range(bits);
            let ucodes: Vec<u32> = (umin..=umax)
                .chain((umin..=umax).rev())
                .map(|v| v as u32)
                .collect();
            for skip in 0..3 {
                let c = &ucodes[skip..];
                let bytes = pack_unsigned(c, bits).unwrap();
                assert_eq!(bytes.len(), packed_len(c.len(), bits));
                assert_eq!(
                    unpack_unsigned(&bytes, bits, c.len()).unwrap(),
                    c,
                    "unsigned {bits}"
                );
            }
        }
        let all: Vec<i8> = (i8::MIN..=i8::MAX).collect();
        assert_eq!(unpack_int8(&pack_int8(&all), all.len()).unwrap(), all);
    }

    #[test]
    fn out_of_range_codes_are_named() {
        let err = pack_signed(&[0, 8], 4).unwrap_err();
        assert_eq!(
            err,
            PackError::CodeOutOfRange {
                index: 1,
                value: 8,
                bits: 4,
                kind: "signed",
                min: -8,
                max: 7
            }
        );
        let msg = err.to_string();
        assert!(msg.contains('8') && msg.contains("4-bit"), "{msg}");
        assert!(pack_signed(&[-3], 2).is_err());
        assert!(pack_unsigned(&[4], 2).is_err());
        assert!(pack_int4(&[-9]).is_err());
        assert!(pack_int2(&[2]).is_err());
        assert!(matches!(
            pack_signed(&[0], 9),
            Err(PackError::UnsupportedBits { bits: 9, .. })
        ));
        assert!(matches!(
            pack_signed(&[0], 1),
            Err(PackError::UnsupportedBits { bits: 1, .. })
        ));
        assert!(matches!(
            pack_unsigned(&[0], 0),
            Err(PackError::UnsupportedBits { .. })
        ));
        assert_eq!(
            pack_ternary_2bit(&[0, 2]),
            Err(PackError::NotTernary { index: 1, value: 2 })
        );
        assert_eq!(
            pack_ternary_base3(&[-2]),
            Err(PackError::NotTernary {
                index: 0,
                value: -2
            })
        );
    }

    #[test]
    fn short_buffers_are_errors() {
        assert!(matches!(
            unpack_signed(&[0xFF], 4, 3),
            Err(PackError::ShortBuffer {
                needed: 2,
                got: 1,
                len: 3,
                ..
            })
        ));
        assert!(matches!(
            unpack_unsigned(&[], 1, 1),
            Err(PackError::ShortBuffer { .. })
        ));
        assert!(matches!(
            unpack_int8(&[1, 2], 3),
            Err(PackError::ShortBuffer { .. })
        ));
        assert!(matches!(
            unpack_ternary_2bit(&[0], 5),
            Err(PackError::ShortBuffer { .. })
        ));
        assert!(matches!(
            unpack_ternary_base3(&[0], 6),
            Err(PackError::ShortBuffer { .. })
        ));
        // Longer buffers are fine: trailing bytes are ignored.
        assert_eq!(unpack_int4(&[0xF1, 0x87, 0xAA], 3).unwrap(), vec![1, -1, 7]);
    }

    #[test]
    fn ternary_2bit_format() {
        assert_eq!(
            pack_ternary_2bit(&[0, 1, -1, 0]).unwrap(),
            vec![0b00_10_01_00]
        );
        assert_eq!(
            pack_ternary_2bit(&[-1, -1, -1, -1, 1]).unwrap(),
            vec![0xAA, 0x01]
        );
        assert_eq!(
            unpack_ternary_2bit(&[0b1111_0000], 4),
            Err(PackError::InvalidTernary2Bit { index: 2 })
        );
        let trits: Vec<i8> = (0..1001).map(|i| ((i * 7 + i / 3) % 3) as i8 - 1).collect();
        for n in [0, 1, 3, 4, 5, 1000, 1001] {
            let t = &trits[..n];
            let bytes = pack_ternary_2bit(t).unwrap();
            assert_eq!(bytes.len(), n.div_ceil(4));
            assert_eq!(unpack_ternary_2bit(&bytes, n).unwrap(), t);
        }
    }

    #[test]
    fn ternary_base3_format() {
        // (t+1) digits 2,1,0,2,0 → 2 + 1·3 + 0·9 + 2·27 + 0·81 = 59.
        assert_eq!(pack_ternary_base3(&[1, 0, -1, 1, -1]).unwrap(), vec![59]);
        assert_eq!(pack_ternary_base3(&[1; 5]).unwrap(), vec![242]);
        assert_eq!(pack_ternary_base3(&[-1; 5]).unwrap(), vec![0]);
        // A lone trailing trit packs to t + 1.
        assert_eq!(
            pack_ternary_base3(&[0, 0, 0, 0, 0, 1]).unwrap(),
            vec![121, 2]
        );
        assert_eq!(
            unpack_ternary_base3(&[243], 5),
            Err(PackError::InvalidBase3Byte {
                index: 0,
                value: 243
            })
        );
        // Every byte value 0..=242 decodes and re-encodes to itself.
        let all: Vec<u8> = (0..=242).collect();
        let trits = unpack_ternary_base3(&all, all.len() * 5).unwrap();
        assert_eq!(pack_ternary_base3(&trits).unwrap(), all);
        let trits: Vec<i8> = (0..1003).map(|i| ((i * 5 + i / 7) % 3) as i8 - 1).collect();
        for n in [0, 1, 4, 5, 6, 10, 1003] {
            let t = &trits[..n];
            let bytes = pack_ternary_base3(t).unwrap();
            assert_eq!(bytes.len(), ternary_base3_len(n));
            assert_eq!(bytes.len(), n.div_ceil(5));
            assert_eq!(unpack_ternary_base3(&bytes, n).unwrap(), t);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(packed_len(0, 4), 0);
        assert_eq!(packed_len(3, 4), 2);
        assert_eq!(packed_len(5, 2), 2);
        assert_eq!(packed_len(3, 3), 2);
        assert_eq!(packed_len(7, 8), 7);
        assert_eq!(ternary_base3_len(11), 3);
        assert_eq!(pack_int2(&[0; 9]).unwrap().len(), 3);
        assert_eq!(pack_signed(&[0; 9], 6).unwrap().len(), 7);
    }
}

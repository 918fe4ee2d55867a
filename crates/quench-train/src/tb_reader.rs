//! An independent reader of TensorBoard event files, so tests can check what the TensorBoard
//! sink wrote would open in TensorBoard without trusting the writer's own code.
//!
//! It shares nothing with `tensorboard-rs` or any protobuf crate: record framing, the masked
//! CRC32C checks and the protobuf wire format are decoded by hand here.
//!
//! Record framing (TFRecord): `u64` LE data length, `u32` LE masked CRC32C of those 8 bytes,
//! the data, `u32` LE masked CRC32C of the data. Each record's data is one `tensorflow.Event`.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// One `tensorflow.Event` record, reduced to the fields quench writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    pub wall_time: f64,
    /// The global step (0 when absent).
    pub step: i64,
    /// Set on the first event of a file (`"brain.Event:2"`).
    pub file_version: Option<String>,
    /// The summary values of a summary event (empty otherwise).
    pub values: Vec<Value>,
}

/// One `Summary.Value`: a tagged scalar or histogram (other kinds leave both `None`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Value {
    /// The tag, e.g. `train/loss`.
    pub tag: String,
    /// The scalar, for `simple_value` summaries.
    pub simple_value: Option<f32>,
    /// The histogram, for `histo` summaries.
    pub histo: Option<Histogram>,
}

/// A `HistogramProto`: bucket `i` counts values in `(bucket_limit[i-1], bucket_limit[i]]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub num: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Sum of the squared values.
    pub sum_squares: f64,
    /// Right edges of the buckets.
    pub bucket_limit: Vec<f64>,
    /// Count per bucket.
    pub bucket: Vec<f64>,
}

/// Why an event file could not be read.
#[derive(Debug, Error)]
pub enum TbReadError {
    /// The file or directory could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file ends inside a record.
    #[error("{}: truncated record at byte {offset}: {detail}", .path.display())]
    Truncated {
        /// The event file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is missing.
        detail: String,
    },
    /// A stored CRC does not match the bytes it covers.
    #[error(
        "{}: bad {what} CRC in record at byte {offset}: stored {stored:#010x}, computed {computed:#010x}",
        .path.display()
    )]
    BadCrc {
        /// The event file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// `"length"` or `"data"`.
        what: &'static str,
        /// The masked CRC in the file.
        stored: u32,
        /// The masked CRC of the bytes read.
        computed: u32,
    },
    /// A record's data is not a valid `Event` protobuf.
    #[error("{}: record at byte {offset} is not a valid Event: {detail}", .path.display())]
    Protobuf {
        /// The event file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong, with the position inside the record data.
        detail: String,
    },
    /// A directory holds no event file.
    #[error("no events.out.tfevents.* file in {}", .dir.display())]
    NoEventFiles {
        /// The directory.
        dir: PathBuf,
    },
}

/// Reads every event of one event file, checking both CRCs of every record.
pub fn read_event_file(path: &Path) -> Result<Vec<Event>, TbReadError> {
    let bytes = fs::read(path).map_err(|source| TbReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_records(&bytes, path)
}

/// Reads all `events.out.tfevents.*` files of `dir` in name order (as TensorBoard does) and
/// concatenates their events; a directory without one is an error.
pub fn read_event_dir(dir: &Path) -> Result<Vec<Event>, TbReadError> {
    let io_err = |source| TbReadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let is_event_file = entry
            .file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.");
        if is_event_file && entry.file_type().map_err(io_err)?.is_file() {
            files.push(entry.path());
        }
    }
    if files.is_empty() {
        return Err(TbReadError::NoEventFiles {
            dir: dir.to_path_buf(),
        });
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut events = Vec::new();
    for file in &files {
        events.extend(read_event_file(file)?);
    }
    Ok(events)
}

/// The `(step, value)` pairs of the scalar `tag`, in file order.
pub fn scalars(events: &[Event], tag: &str) -> Vec<(i64, f32)> {
    events
        .iter()
        .flat_map(|e| {
            e.values
                .iter()
                .filter(|v| v.tag == tag)
                .filter_map(move |v| v.simple_value.map(|x| (e.step, x)))
        })
        .collect()
}

/// The `(step, histogram)` pairs of the histogram `tag`, in file order.
pub fn histograms<'a>(events: &'a [Event], tag: &str) -> Vec<(i64, &'a Histogram)> {
    events
        .iter()
        .flat_map(|e| {
            e.values
                .iter()
                .filter(|v| v.tag == tag)
                .filter_map(move |v| v.histo.as_ref().map(|h| (e.step, h)))
        })
        .collect()
}

/// TFRecord's CRC mask: rotate right by 15 bits, then add `0xa282ead8` (wrapping).
pub fn mask_crc(crc: u32) -> u32 {
    // (crc >> 15) | (crc << 17)
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The masked CRC32C (Castagnoli) of `data`, as stored in TFRecord framing.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask_crc(crc32c::crc32c(data))
}

/// Splits `bytes` (the whole file `path`) into records and decodes each one.
fn parse_records(bytes: &[u8], path: &Path) -> Result<Vec<Event>, TbReadError> {
    let mut events = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let at = off as u64;
        let truncated = |detail: String| TbReadError::Truncated {
            path: path.to_path_buf(),
            offset: at,
            detail,
        };
        let rest = &bytes[off..];
        if rest.len() < 12 {
            return Err(truncated(format!(
                "the 12-byte header has only {} bytes",
                rest.len()
            )));
        }
        let len_bytes = &rest[..8];
        let stored = u32_le(&rest[8..12]);
        let computed = masked_crc32c(len_bytes);
        if stored != computed {
            return Err(TbReadError::BadCrc {
                path: path.to_path_buf(),
                offset: at,
                what: "length",
                stored,
                computed,
            });
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let available = rest.len() - 12;
        let data_len = match usize::try_from(len) {
            Ok(n) if n.checked_add(4).is_some_and(|end| end <= available) => n,
            _ => {
                return Err(truncated(format!(
                    "{len} data bytes and a 4-byte CRC announced, {available} bytes left"
                )));
            }
        };
        let data = &rest[12..12 + data_len];
        let stored = u32_le(&rest[12 + data_len..16 + data_len]);
        let computed = masked_crc32c(data);
        if stored != computed {
            return Err(TbReadError::BadCrc {
                path: path.to_path_buf(),
                offset: at,
                what: "data",
                stored,
                computed,
            });
        }
        let event = decode_event(data).map_err(|detail| TbReadError::Protobuf {
            path: path.to_path_buf(),
            offset: at,
            detail,
        })?;
        events.push(event);
        off += 16 + data_len;
    }
    Ok(events)
}

/// Reads a little-endian `u32` from exactly four bytes.
fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A cursor over one protobuf message; `base` is where the message starts inside the record
/// data, so error positions are relative to the record.
struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// An error message located at the cursor.
    fn err(&self, what: &str) -> String {
        format!("{what} at byte {} of the record data", self.base + self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.err(&format!("{n} bytes needed, message ends"))),
        }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                self.pos = start;
                return Err(self.err("varint runs past the end"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                self.pos = start;
                return Err(self.err("varint longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.pos = start;
        Err(self.err("varint longer than 10 bytes"))
    }

    fn fixed64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn fixed32(&mut self) -> Result<u32, String> {
        Ok(u32_le(self.take(4)?))
    }

    fn f64(&mut self) -> Result<f64, String> {
        self.fixed64().map(f64::from_bits)
    }

    /// A length-delimited field's payload, as a cursor positioned inside the record.
    fn sub(&mut self) -> Result<Wire<'a>, String> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.err("length does not fit in usize"))?;
        let base = self.base + self.pos;
        Ok(Wire::new(self.take(len)?, base))
    }

    fn string(&mut self) -> Result<String, String> {
        let at = self.err("invalid UTF-8 in string field");
        let bytes = self.sub()?.buf;
        String::from_utf8(bytes.to_vec()).map_err(|_| at)
    }

    /// The next field number and wire type.
    fn key(&mut self) -> Result<(u64, u8), String> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        Ok((field, (key & 7) as u8))
    }

    /// Skips the value of a field this reader does not need.
    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.sub().map(drop),
            FIXED32 => self.take(4).map(drop),
            3 | 4 => Err(self.err("group fields (wire types 3, 4) are not supported")),
            w => Err(self.err(&format!("invalid wire type {w}"))),
        }
    }

    /// The error for a known field with an unexpected wire type.
    fn wrong_wire(&self, message: &str, field: u64, wire: u8) -> String {
        self.err(&format!("{message} field {field} has wire type {wire}"))
    }
}

/// Decodes a `tensorflow.Event`.
fn decode_event(data: &[u8]) -> Result<Event, String> {
    let mut w = Wire::new(data, 0);
    let mut e = Event::default();
    while !w.done() {
        match w.key()? {
            (1, FIXED64) => e.wall_time = w.f64()?,
            (2, VARINT) => e.step = w.varint()? as i64, // int64: two's complement
            (3, LEN) => {
                // `file_version` and `summary` are members of the oneof `what`.
                e.file_version = Some(w.string()?);
                e.values.clear();
            }
            (5, LEN) => {
                e.file_version = None;
                decode_summary(w.sub()?, &mut e.values)?;
            }
            (f @ (1 | 2 | 3 | 5), wire) => return Err(w.wrong_wire("Event", f, wire)),
            (_, wire) => w.skip(wire)?,
        }
    }
    Ok(e)
}

/// Decodes a `Summary`, appending its values (a repeated message field merges by appending).
fn decode_summary(mut w: Wire<'_>, values: &mut Vec<Value>) -> Result<(), String> {
    while !w.done() {
        match w.key()? {
            (1, LEN) => values.push(decode_value(w.sub()?)?),
            (1, wire) => return Err(w.wrong_wire("Summary", 1, wire)),
            (_, wire) => w.skip(wire)?,
        }
    }
    Ok(())
}

/// Decodes a `Summary.Value`.
fn decode_value(mut w: Wire<'_>) -> Result<Value, String> {
    let mut v = Value::default();
    while !w.done() {
        match w.key()? {
            (1, LEN) => v.tag = w.string()?,
            (2, FIXED32) => {
                v.simple_value = Some(f32::from_bits(w.fixed32()?));
                v.histo = None;
            }
            (5, LEN) => {
                v.simple_value = None;
                // A message field seen twice merges into the first.
                decode_histogram(w.sub()?, v.histo.get_or_insert_with(Histogram::default))?;
            }
            (f @ (1 | 2 | 5), wire) => return Err(w.wrong_wire("Summary.Value", f, wire)),
            (f, wire) => {
                // Other members of the oneof `value` (old-style histo 3, image 4, audio 6,
                // tensor 8) replace a scalar or histogram; node_name 7, metadata 9 do not.
                if matches!(f, 3 | 4 | 6 | 8) {
                    v.simple_value = None;
                    v.histo = None;
                }
                w.skip(wire)?;
            }
        }
    }
    Ok(v)
}

/// Decodes a `HistogramProto` into `h`; repeated doubles may be packed or not.
fn decode_histogram(mut w: Wire<'_>, h: &mut Histogram) -> Result<(), String> {
    while !w.done() {
        match w.key()? {
            (1, FIXED64) => h.min = w.f64()?,
            (2, FIXED64) => h.max = w.f64()?,
            (3, FIXED64) => h.num = w.f64()?,
            (4, FIXED64) => h.sum = w.f64()?,
            (5, FIXED64) => h.sum_squares = w.f64()?,
            (f @ (6 | 7), FIXED64) => {
                let x = w.f64()?;
                let out = if f == 6 {
                    &mut h.bucket_limit
                } else {
                    &mut h.bucket
                };
                out.push(x);
            }
            (f @ (6 | 7), LEN) => {
                let mut packed = w.sub()?;
                if packed.buf.len() % 8 != 0 {
                    return Err(packed.err(&format!(
                        "packed doubles of {} bytes (not a multiple of 8)",
                        packed.buf.len()
                    )));
                }
                let out = if f == 6 {
                    &mut h.bucket_limit
                } else {
                    &mut h.bucket
                };
                while !packed.done() {
                    out.push(packed.f64()?);
                }
            }
            (f @ 1..=7, wire) => return Err(w.wrong_wire("HistogramProto", f, wire)),
            (_, wire) => w.skip(wire)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `data` as one TFRecord, computing both masked CRCs.
    fn record(data: &[u8]) -> Vec<u8> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = len.to_vec();
        out.extend(masked_crc32c(&len).to_le_bytes());
        out.extend(data);
        out.extend(masked_crc32c(data).to_le_bytes());
        out
    }

    /// Hand-encoded Event: wall_time 1.0, step 7, summary { value { tag "a", simple_value
    /// 1.5, metadata (field 9, skipped) } }, plus an unknown varint field 15 on the Event.
    fn step7_event_bytes() -> Vec<u8> {
        let value = [
            0x0a, 0x01, b'a', // tag (1, LEN) = "a"
            0x4a, 0x02, 0x0a, 0x00, // metadata (9, LEN), 2 bytes, skipped
            0x15, 0x00, 0x00, 0xc0, 0x3f, // simple_value (2, FIXED32) = 1.5f32
        ];
        let mut summary = vec![0x0a, value.len() as u8]; // value (1, LEN)
        summary.extend(value);
        let mut event = vec![0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]; // wall_time (1, FIXED64) = 1.0
        event.extend([0x10, 0x07]); // step (2, VARINT) = 7
        event.extend([0x78, 0x96, 0x01]); // unknown field 15 (VARINT) = 150, skipped
        event.extend([0x2a, summary.len() as u8]); // summary (5, LEN)
        event.extend(summary);
        event
    }

    fn write_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.out.tfevents.1.test");
        fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn crc32c_check_value_and_mask_are_pinned() {
        // The CRC-32C (Castagnoli) check value from the catalogue of CRC parameters.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // By hand: 0xe3069283 >> 15 = 0x0001c60d; its low 15 bits 0x1283 << 17 = 0x25060000;
        // rotated = 0x2507c60d; + 0xa282ead8 = 0xc78ab0e5.
        assert_eq!(mask_crc(0xe306_9283), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        // Rotation of all-ones is all-ones, and the add wraps: 0xffffffff + 0xa282ead8.
        assert_eq!(mask_crc(0xffff_ffff), 0xa282_ead7);
        assert_eq!(mask_crc(0), 0xa282_ead8);
        // 1 << 17 after rotating right by 15.
        assert_eq!(mask_crc(1), 0xa284_ead8);
    }

    #[test]
    fn hand_encoded_event_decodes() {
        let (_dir, path) = write_file(&record(&step7_event_bytes()));
        let events = read_event_file(&path).unwrap();
        assert_eq!(
            events,
            vec![Event {
                wall_time: 1.0,
                step: 7,
                file_version: None,
                values: vec![Value {
                    tag: "a".into(),
                    simple_value: Some(1.5),
                    histo: None,
                }],
            }]
        );
        assert_eq!(scalars(&events, "a"), vec![(7, 1.5)]);
        assert!(scalars(&events, "b").is_empty());
    }

    #[test]
    fn file_version_and_negative_step_decode() {
        let mut event = vec![0x1a, 13]; // file_version (3, LEN)
        event.extend(b"brain.Event:2");
        // step (2, VARINT) = -2: two's complement in ten bytes.
        event.extend([
            0x10, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        let e = decode_event(&event).unwrap();
        assert_eq!(e.file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(e.step, -2);
        assert_eq!(e.wall_time, 0.0);
    }

    #[test]
    fn histogram_decodes_packed_and_unpacked() {
        let d = |x: f64| x.to_le_bytes();
        let mut histo = Vec::new();
        for (field, x) in [(1u8, -1.0), (2, 2.0), (3, 3.0), (4, 1.5), (5, 5.25)] {
            histo.push(field << 3 | FIXED64);
            histo.extend(d(x));
        }
        // bucket_limit (6) packed: [-1.0, 0.0, 2.0]
        histo.extend([0x32, 24]);
        for x in [-1.0, 0.0, 2.0] {
            histo.extend(d(x));
        }
        // bucket (7) unpacked: 0, 1, 2
        for x in [0.0, 1.0, 2.0] {
            histo.push(0x39);
            histo.extend(d(x));
        }
        let mut value = vec![0x0a, 1, b'h', 0x2a, histo.len() as u8];
        value.extend(&histo);
        let mut summary = vec![0x0a, value.len() as u8];
        summary.extend(&value);
        let mut event = vec![0x10, 3, 0x2a, summary.len() as u8];
        event.extend(&summary);
        let (_dir, path) = write_file(&record(&event));
        let events = read_event_file(&path).unwrap();
        let hs = histograms(&events, "h");
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].0, 3);
        assert_eq!(
            hs[0].1,
            &Histogram {
                min: -1.0,
                max: 2.0,
                num: 3.0,
                sum: 1.5,
                sum_squares: 5.25,
                bucket_limit: vec![-1.0, 0.0, 2.0],
                bucket: vec![0.0, 1.0, 2.0],
            }
        );
        assert_eq!(events[0].values[0].simple_value, None);
    }

    #[test]
    fn corrupted_data_crc_is_an_error() {
        let mut bytes = record(&step7_event_bytes());
        bytes.extend(record(&step7_event_bytes()));
        // Flip one bit in the data of the second record.
        let second = bytes.len() / 2;
        bytes[second + 14] ^= 0x01;
        let (_dir, path) = write_file(&bytes);
        match read_event_file(&path) {
            Err(TbReadError::BadCrc { what, offset, .. }) => {
                assert_eq!(what, "data");
                assert_eq!(offset, second as u64);
            }
            other => panic!("expected a data CRC error, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_length_crc_is_an_error() {
        let mut bytes = record(&step7_event_bytes());
        bytes[9] ^= 0x80;
        let (_dir, path) = write_file(&bytes);
        let err = read_event_file(&path).unwrap_err();
        assert!(matches!(
            err,
            TbReadError::BadCrc {
                what: "length",
                offset: 0,
                ..
            }
        ));
        assert!(
            err.to_string().contains("events.out.tfevents.1.test"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_an_error() {
        let one = record(&step7_event_bytes());
        let mut two = one.clone();
        two.extend(&one);
        // Cut inside the data, inside the footer CRC, and inside the header.
        for cut in [one.len() + 20, two.len() - 1, one.len() + 5] {
            let (_dir, path) = write_file(&two[..cut]);
            match read_event_file(&path) {
                Err(e @ TbReadError::Truncated { offset, .. }) => {
                    assert_eq!(offset, one.len() as u64, "cut at {cut}");
                    assert!(
                        e.to_string().contains(&format!("byte {}", one.len())),
                        "{e}"
                    );
                }
                other => panic!("cut at {cut}: expected truncation error, got {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_protobuf_is_an_error() {
        // summary (5, LEN) announcing 9 bytes, only 2 present.
        let (_dir, path) = write_file(&record(&[0x2a, 0x09, 0x0a, 0x00]));
        assert!(matches!(
            read_event_file(&path),
            Err(TbReadError::Protobuf { offset: 0, .. })
        ));
        // step with a length-delimited wire type.
        assert!(decode_event(&[0x12, 0x00]).is_err());
        // Packed doubles whose length is not a multiple of 8.
        assert!(
            decode_histogram(
                Wire::new(&[0x32, 0x03, 1, 2, 3], 0),
                &mut Histogram::default()
            )
            .is_err()
        );
        // Field number 0 and a varint that never ends.
        assert!(decode_event(&[0x00, 0x00]).is_err());
        assert!(decode_event(&[0x10, 0x80, 0x80]).is_err());
    }

    #[test]
    fn dir_reader_concatenates_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let event_at = |step: u8| {
            let mut e = step7_event_bytes();
            e[10] = step; // the step varint's value byte
            record(&e)
        };
        fs::write(dir.path().join("events.out.tfevents.2.b"), event_at(2)).unwrap();
        fs::write(dir.path().join("events.out.tfevents.1.a"), event_at(1)).unwrap();
        fs::write(dir.path().join("not-an-event-file"), b"garbage").unwrap();
        let events = read_event_dir(dir.path()).unwrap();
        assert_eq!(scalars(&events, "a"), vec![(1, 1.5), (2, 1.5)]);

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_event_dir(empty.path()),
            Err(TbReadError::NoEventFiles { .. })
        ));
    }
}

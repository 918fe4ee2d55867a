//! In-memory image classification sets read from IDX files (MNIST, Fashion-MNIST).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DataError;
use crate::batch::{ImageBatch, TAG_SPLIT, seeded_permutation};
use crate::idx::read_idx;

/// Where the Debian/Ubuntu package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Number of classes in MNIST and Fashion-MNIST.
const MNIST_CLASSES: usize = 10;

/// How to obtain the datasets; appended to every "missing" error so users need not search.
const HOW_TO_GET: &str = "Fashion-MNIST: `apt-get install -y dataset-fashion-mnist` \
    (installs to /usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, \
    train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from \
    https://github.com/zalandoresearch/fashion-mnist; MNIST: the same four file names from \
    http://yann.lecun.com/exdb/mnist/. Files may be gzip-compressed (.gz) or not; pass their \
    directory explicitly";

/// A labelled set of grayscale images, held in memory as normalized floats.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// All images back to back, row-major, values `x / 255` in `[0, 1]`; `len() * image_len()`.
    pub pixels: Vec<f32>,
    /// One class label per image, each `< num_classes`.
    pub labels: Vec<u8>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Number of classes the labels index into.
    pub num_classes: usize,
}

/// Which half of a standard IDX dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training files (`train-*`).
    Train,
    /// The test files (`t10k-*`).
    Test,
}

impl Split {
    /// File name prefix of this split in the standard MNIST naming.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    /// Standard file names (without `.gz`) of the images and labels of this split.
    pub fn file_names(self) -> (String, String) {
        let p = self.file_prefix();
        (
            format!("{p}-images-idx3-ubyte"),
            format!("{p}-labels-idx1-ubyte"),
        )
    }
}

/// Finds `dir/name` or `dir/name.gz` (uncompressed first, as a user who unpacked the files
/// expects those to be used).
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Some(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    gz.is_file().then_some(gz)
}

/// Whether `dir` holds both files of `split`.
fn has_split(dir: &Path, split: Split) -> bool {
    let (img, lbl) = split.file_names();
    find_file(dir, &img).is_some() && find_file(dir, &lbl).is_some()
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image (`rows * cols`), the feature size of a flattened batch.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The normalized pixels of image `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let d = self.image_len();
        &self.pixels[i * d..(i + 1) * d]
    }

    /// How many images each class has, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Loads an image IDX file (`[n, rows, cols]`) and its label IDX file (`[n]`).
    pub fn load_idx_pair(
        images: &Path,
        labels: &Path,
        num_classes: usize,
    ) -> Result<ImageSet, DataError> {
        let img = read_idx(images)?;
        let lbl = read_idx(labels)?;
        let &[n, rows, cols] = img.dims.as_slice() else {
            return Err(DataError::BadDims {
                path: images.to_path_buf(),
                detail: format!(
                    "an image file needs 3 dimensions [count, rows, cols], found {:?}",
                    img.dims
                ),
            });
        };
        if n == 0 || rows == 0 || cols == 0 {
            return Err(DataError::BadDims {
                path: images.to_path_buf(),
                detail: format!("no images: dimensions are {:?}", img.dims),
            });
        }
        let &[n_labels] = lbl.dims.as_slice() else {
            return Err(DataError::BadDims {
                path: labels.to_path_buf(),
                detail: format!(
                    "a label file needs 1 dimension [count], found {:?}",
                    lbl.dims
                ),
            });
        };
        if n_labels != n {
            return Err(DataError::Mismatch {
                detail: format!(
                    "{} has {n} images but {} has {n_labels} labels",
                    images.display(),
                    labels.display()
                ),
            });
        }
        if let Some((index, &label)) = lbl
            .data
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::BadLabel {
                path: labels.to_path_buf(),
                index,
                label,
                num_classes,
            });
        }
        let pixels = img.data.iter().map(|&b| f32::from(b) / 255.0).collect();
        Ok(ImageSet {
            pixels,
            labels: lbl.data,
            rows,
            cols,
            num_classes,
        })
    }

    /// Loads one split of an MNIST-style directory (standard file names, `.gz` optional).
    pub fn load_split(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
        let (img, lbl) = split.file_names();
        let missing = |what: &str| DataError::Missing {
            dir: dir.to_path_buf(),
            detail: format!(
                "{what} (expected {img}[.gz] and {lbl}[.gz] for the {split:?} split). {HOW_TO_GET}"
            ),
        };
        if !dir.is_dir() {
            return Err(missing("the directory does not exist"));
        }
        let images = find_file(dir, &img).ok_or_else(|| missing(&format!("{img} is missing")))?;
        let labels = find_file(dir, &lbl).ok_or_else(|| missing(&format!("{lbl} is missing")))?;
        ImageSet::load_idx_pair(&images, &labels, MNIST_CLASSES)
    }

    /// A new set holding the given images, in the given order.
    ///
    /// # Panics
    /// If an index is `>= len()`.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let d = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            rows: self.rows,
            cols: self.cols,
            num_classes: self.num_classes,
        }
    }

    /// Splits into `(train, validation)`: a seeded shuffle, the last `round(n * val_fraction)`
    /// images of it become validation. Deterministic in `seed`; `val_fraction = 0` gives an empty
    /// validation set.
    ///
    /// # Panics
    /// If `val_fraction` is not within `[0, 1]` (validate recipes before calling).
    pub fn split_validation(self, val_fraction: f64, seed: u64) -> (ImageSet, ImageSet) {
        assert!(
            (0.0..=1.0).contains(&val_fraction),
            "val_fraction must be within [0, 1], got {val_fraction}"
        );
        let n = self.len();
        let n_val = ((n as f64) * val_fraction).round() as usize;
        let order = seeded_permutation(n, seed, TAG_SPLIT, 0);
        let (train_idx, val_idx) = order.split_at(n - n_val);
        (self.subset(train_idx), self.subset(val_idx))
    }

    /// Builds one batch on `device`: images `[B, rows * cols]` and labels `[B]`.
    ///
    /// Pixels are gathered into one preallocated buffer and uploaded once, so batching costs one
    /// allocation and one host-to-device copy regardless of the batch size.
    ///
    /// # Panics
    /// If an index is `>= len()`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> ImageBatch {
        let d = self.image_len();
        let b = indices.len();
        // Appended image by image: one copy, no zero-filling pass first.
        let mut pixels = Vec::with_capacity(b * d);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        let labels: Vec<i64> = indices.iter().map(|&i| i64::from(self.labels[i])).collect();
        ImageBatch {
            images: Tensor::<2>::from_data(TensorData::new(pixels, [b, d]), device),
            labels: Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), device),
        }
    }
}

/// Finds the directory of a known dataset (`"fashion-mnist"` or `"mnist"`).
///
/// `explicit` wins when given. Otherwise Fashion-MNIST is looked for in
/// [`FASHION_MNIST_DEBIAN_DIR`], then in `../shared/datasets/fashion-mnist`; MNIST in
/// `../shared/datasets/mnist`, then `../shared/datasets/mnist-t10k` (test split only). The
/// `../shared/datasets` candidates are tried relative to the current directory and each of its
/// parents, so the same lookup works from the workspace root and from a crate's test. A
/// directory qualifies when it holds at least the test (`t10k-*`) files.
pub fn locate_dataset(name: &str, explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    let (local_names, debian): (&[&str], Option<&str>) = match name {
        "fashion-mnist" => (&["fashion-mnist"], Some(FASHION_MNIST_DEBIAN_DIR)),
        "mnist" => (&["mnist", "mnist-t10k"], None),
        other => {
            return Err(DataError::BadArgument {
                detail: format!(
                    "unknown dataset {other:?}; known IDX datasets are \"fashion-mnist\" and \"mnist\""
                ),
            });
        }
    };
    if let Some(dir) = explicit {
        if has_split(dir, Split::Test) {
            return Ok(dir.to_path_buf());
        }
        let (img, lbl) = Split::Test.file_names();
        return Err(DataError::Missing {
            dir: dir.to_path_buf(),
            detail: format!(
                "{name}: {} does not hold {img}[.gz] and {lbl}[.gz]. {HOW_TO_GET}",
                if dir.is_dir() {
                    "the directory"
                } else {
                    "no such directory; it"
                },
            ),
        });
    }

    let mut candidates: Vec<PathBuf> = debian.iter().map(PathBuf::from).collect();
    if let Ok(cwd) = std::env::current_dir() {
        for local in local_names {
            for base in cwd.ancestors() {
                candidates.push(base.join("../shared/datasets").join(local));
            }
        }
    }
    if let Some(found) = candidates.iter().find(|d| has_split(d, Split::Test)) {
        return Ok(found.clone());
    }
    let first = candidates
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("../shared/datasets").join(local_names[0]));
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(DataError::Missing {
        dir: first,
        detail: format!(
            "{name} not found; looked in {}. {HOW_TO_GET}",
            tried.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::testutil::{gzip, idx_bytes, write};

    /// Writes a tiny dataset: `n` images of 2x3 with pixel values `(i*6 + p) % 256` and labels
    /// `i % classes`, into `dir` with the given split's standard names.
    fn write_split(dir: &Path, split: Split, n: u32, classes: u8, gz: bool) {
        let pixels: Vec<u8> = (0..n * 6).map(|v| (v % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % u32::from(classes)) as u8).collect();
        let (img, lbl) = split.file_names();
        let enc = |b: Vec<u8>| if gz { gzip(&b) } else { b };
        let sfx = if gz { ".gz" } else { "" };
        write(
            dir,
            &format!("{img}{sfx}"),
            &enc(idx_bytes(&[n, 2, 3], &pixels)),
        );
        write(dir, &format!("{lbl}{sfx}"), &enc(idx_bytes(&[n], &labels)));
    }

    fn tiny(n: u32) -> (tempfile::TempDir, ImageSet) {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), Split::Train, n, 10, false);
        let set = ImageSet::load_split(dir.path(), Split::Train).unwrap();
        (dir, set)
    }

    #[test]
    fn loads_split_raw_and_gz() {
        for gz in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_split(dir.path(), Split::Test, 7, 10, gz);
            let set = ImageSet::load_split(dir.path(), Split::Test).unwrap();
            assert_eq!(
                (set.len(), set.rows, set.cols, set.image_len()),
                (7, 2, 3, 6)
            );
            assert_eq!(set.labels, vec![0, 1, 2, 3, 4, 5, 6]);
            assert_eq!(set.pixels.len(), 42);
            assert_eq!(set.image(1)[0], 6.0 / 255.0);
            assert_eq!(set.pixels[41], 41.0 / 255.0);
            // The other split is not there, and the error says so.
            let e = ImageSet::load_split(dir.path(), Split::Train).unwrap_err();
            assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
            assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
        }
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let i = write(dir.path(), "imgs", &idx_bytes(&[3, 1, 1], &[1, 2, 3]));
        let l = write(dir.path(), "lbls", &idx_bytes(&[2], &[0, 1]));
        let e = ImageSet::load_idx_pair(&i, &l, 10).unwrap_err();
        assert!(matches!(e, DataError::Mismatch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("imgs") && msg.contains("lbls"), "{msg}");
    }

    #[test]
    fn label_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let i = write(dir.path(), "imgs", &idx_bytes(&[3, 1, 1], &[1, 2, 3]));
        let l = write(dir.path(), "lbls", &idx_bytes(&[3], &[0, 9, 10]));
        let e = ImageSet::load_idx_pair(&i, &l, 10).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadLabel {
                    index: 2,
                    label: 10,
                    num_classes: 10,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(ImageSet::load_idx_pair(&i, &l, 11).is_ok());
    }

    #[test]
    fn wrong_dimensionality() {
        let dir = tempfile::tempdir().unwrap();
        let i = write(dir.path(), "imgs", &idx_bytes(&[3], &[1, 2, 3]));
        let l = write(dir.path(), "lbls", &idx_bytes(&[3], &[0, 1, 2]));
        let e = ImageSet::load_idx_pair(&i, &l, 10).unwrap_err();
        assert!(
            matches!(&e, DataError::BadDims { path, .. } if path == &i),
            "{e:?}"
        );
        // Swapped: labels given a 3-D file.
        let i3 = write(dir.path(), "imgs3", &idx_bytes(&[3, 1, 1], &[1, 2, 3]));
        let e = ImageSet::load_idx_pair(&i3, &i3, 10).unwrap_err();
        assert!(
            matches!(&e, DataError::BadDims { path, .. } if path == &i3),
            "{e:?}"
        );
        // Zero images.
        let z = write(dir.path(), "zero", &idx_bytes(&[0, 28, 28], &[]));
        let zl = write(dir.path(), "zl", &idx_bytes(&[0], &[]));
        let e = ImageSet::load_idx_pair(&z, &zl, 10).unwrap_err();
        assert!(matches!(e, DataError::BadDims { .. }), "{e:?}");
    }

    #[test]
    fn missing_directory_says_how_to_get_the_data() {
        let e = ImageSet::load_split(Path::new("/nonexistent/fmnist"), Split::Train).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/fmnist"), "{msg}");
        assert!(msg.contains("dataset-fashion-mnist"), "{msg}");
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");

        let e = locate_dataset("fashion-mnist", Some(Path::new("/nonexistent/x"))).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
        assert!(e.to_string().contains("dataset-fashion-mnist"));
        assert!(e.to_string().contains("zalandoresearch"));
    }

    #[test]
    fn locate_explicit_and_unknown() {
        let dir = tempfile::tempdir().unwrap();
        // An existing but empty directory is rejected.
        assert!(matches!(
            locate_dataset("mnist", Some(dir.path())),
            Err(DataError::Missing { .. })
        ));
        write_split(dir.path(), Split::Test, 2, 10, true);
        assert_eq!(
            locate_dataset("mnist", Some(dir.path())).unwrap(),
            dir.path()
        );
        assert!(matches!(
            locate_dataset("cifar-100", None),
            Err(DataError::BadArgument { .. })
        ));
    }

    #[test]
    fn locate_finds_shared_mnist_t10k() {
        // Tests run in the crate directory; the lookup walks up to find ../shared/datasets.
        let dir = locate_dataset("mnist", None).unwrap();
        assert!(
            dir.join("t10k-images-idx3-ubyte.gz").is_file(),
            "{}",
            dir.display()
        );
        // Only the test split exists there: loading train fails clearly.
        if !has_split(&dir, Split::Train) {
            let e = ImageSet::load_split(&dir, Split::Train).unwrap_err();
            assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
        }
    }

    #[test]
    fn subset_and_split_validation() {
        let (_d, set) = tiny(20);
        let sub = set.subset(&[3, 0]);
        assert_eq!(sub.labels, vec![3, 0]);
        assert_eq!(sub.image(0), set.image(3));
        assert_eq!(sub.image(1), set.image(0));

        let (tr, va) = set.clone().split_validation(0.25, 9);
        assert_eq!((tr.len(), va.len()), (15, 5));
        // Together they are the original images, each once (pixel value identifies the image).
        let mut firsts: Vec<u32> = tr
            .pixels
            .chunks(6)
            .chain(va.pixels.chunks(6))
            .map(|c| (c[0] * 255.0).round() as u32)
            .collect();
        firsts.sort_unstable();
        assert_eq!(firsts, (0..20).map(|i| (i * 6) % 256).collect::<Vec<_>>());
        // Deterministic by seed, different for another seed.
        let (tr2, va2) = set.clone().split_validation(0.25, 9);
        assert_eq!((&tr.pixels, &va.labels), (&tr2.pixels, &va2.labels));
        let (tr3, _) = set.clone().split_validation(0.25, 10);
        assert_ne!(tr.pixels, tr3.pixels);
        // Zero fraction: everything trains.
        let (tr0, va0) = set.split_validation(0.0, 1);
        assert_eq!((tr0.len(), va0.len()), (20, 0));
        assert!(va0.is_empty());
    }

    #[test]
    fn batch_tensors_equal_source_pixels() {
        let (_d, set) = tiny(9);
        let device = Device::flex();
        let idx = [4, 0, 8];
        let b = set.batch(&idx, &device);
        assert_eq!(b.images.dims(), [3, 6]);
        assert_eq!(b.labels.dims(), [3]);
        let px: Vec<f32> = b.images.into_data().try_into_vec_as::<f32>().unwrap();
        let want: Vec<f32> = idx.iter().flat_map(|&i| set.image(i).to_vec()).collect();
        assert_eq!(px, want);
        let lb: Vec<i64> = b.labels.into_data().try_into_vec_as::<i64>().unwrap();
        assert_eq!(lb, vec![4, 0, 8]);
    }

    #[test]
    fn real_mnist_t10k() {
        let set = ImageSet::load_split(&crate::shared_dataset("mnist-t10k"), Split::Test).unwrap();
        assert_eq!(
            (set.len(), set.rows, set.cols, set.num_classes),
            (10_000, 28, 28, 10)
        );
        assert_eq!(set.pixels.len(), 10_000 * 784);
        assert_eq!(&set.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        assert!(set.pixels.iter().all(|&p| (0.0..=1.0).contains(&p)));
        // Real digits: mostly black background, some full-white strokes.
        let max = set.image(0).iter().copied().fold(0.0f32, f32::max);
        assert_eq!(max, 1.0);
        assert_eq!(set.image(0)[0], 0.0);
        assert!(set.class_counts().iter().all(|&c| c > 800));
    }

    #[test]
    fn real_fashion_mnist() {
        let dir = locate_dataset("fashion-mnist", None).unwrap();
        let train = ImageSet::load_split(&dir, Split::Train).unwrap();
        let test = ImageSet::load_split(&dir, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        assert_eq!((train.rows, train.cols, train.num_classes), (28, 28, 10));
        assert_eq!(train.class_counts(), vec![6000; 10]);
        assert_eq!(test.class_counts(), vec![1000; 10]);
    }
}

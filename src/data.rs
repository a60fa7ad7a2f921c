//! CIFAR-10 data: the official binary batches and image folders, decoded once into compact u8
//! storage, with seeded batching and augmentation (random crop with 4-pixel zero padding and
//! horizontal flip).
//!
//! Images leave this module as NCHW f32 tensors in [0, 1]; labels as i64.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::Rng as _;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::seed::{Rng, Seed, Stream};

mod jpeg;

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes of one CHW image.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Which split of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split.
    Train,
    /// The test split.
    Test,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// A labelled image set held as u8 CHW pixels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `len * 3 * 32 * 32` bytes, image after image, each CHW.
    pixels: Vec<u8>,
    /// One label per image.
    labels: Vec<u8>,
    /// Class names, by label.
    pub classes: Vec<String>,
}

/// The default data location: `EIO_DATA`, else `../shared/data/cifar10-jpeg` when present.
pub fn default_data_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EIO_DATA") {
        return Ok(PathBuf::from(dir));
    }
    let shared = PathBuf::from("../shared/data/cifar10-jpeg");
    if shared.is_dir() {
        return Ok(shared);
    }
    Err(Error::config(
        "no data given: pass --data DIR (or set EIO_DATA) pointing to CIFAR-10, either the official \
         binary version (folder with data_batch_1.bin .. data_batch_5.bin and test_batch.bin, from \
         cifar-10-binary.tar.gz) or an image folder with train/<class>/*.png|jpg and test/<class>/...",
    ))
}

impl Dataset {
    /// Builds a data set from raw CHW pixels and labels.
    pub fn from_raw(pixels: Vec<u8>, labels: Vec<u8>, classes: Vec<String>) -> Result<Self> {
        if pixels.len() != labels.len() * IMAGE_BYTES {
            return Err(Error::config(format!(
                "{} pixel bytes for {} labels (expected {} per image)",
                pixels.len(),
                labels.len(),
                IMAGE_BYTES
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(Error::config(format!("label {bad} but only {} classes", classes.len())));
        }
        Ok(Dataset { pixels, labels, classes })
    }

    /// Loads `split` from `dir`, which holds either the official CIFAR-10 binary batches
    /// (directly or in `cifar-10-batches-bin/`) or an image folder `split/<class>/*`. The labels
    /// of an image folder follow `classes` when given, else the class folders of `train/` (or of
    /// the split when there is no `train/`) sorted by name, so both splits share one label order.
    pub fn load(dir: &Path, split: Split, classes: Option<&[String]>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::data(dir, "data folder not found"));
        }
        for bin_dir in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
            if bin_dir.join("data_batch_1.bin").is_file()
                || bin_dir.join("test_batch.bin").is_file()
            {
                return Self::load_cifar_bin(&bin_dir, split);
            }
        }
        let split_dir = dir.join(split.name());
        if !split_dir.is_dir() {
            return Err(Error::data(
                dir,
                format!(
                    "neither CIFAR-10 binary files (data_batch_1.bin, test_batch.bin) nor an image \
                     folder '{}/<class>/' found",
                    split.name()
                ),
            ));
        }
        let classes = match classes {
            Some(c) => c.to_vec(),
            None => {
                let train = dir.join(Split::Train.name());
                class_folders(if train.is_dir() { &train } else { &split_dir })?
            }
        };
        if let Some(extra) = class_folders(&split_dir)?.into_iter().find(|c| !classes.contains(c)) {
            return Err(Error::data(
                split_dir.join(&extra),
                format!("not one of the classes {}", classes.join(",")),
            ));
        }
        Self::load_image_folder(&split_dir, Some(&classes))
    }

    /// Reads the official binary batches: records of 1 label byte + 3072 pixel bytes (R, G, B planes).
    pub fn load_cifar_bin(dir: &Path, split: Split) -> Result<Self> {
        let files: Vec<String> = match split {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".to_string()],
        };
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for f in files {
            let path = dir.join(&f);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let rec = IMAGE_BYTES + 1;
            if bytes.is_empty() || bytes.len() % rec != 0 {
                return Err(Error::data(
                    &path,
                    format!(
                        "truncated or corrupt CIFAR-10 batch: {} bytes is not a multiple of {rec} \
                         (1 label byte + 3072 pixel bytes per image)",
                        bytes.len()
                    ),
                ));
            }
            for r in bytes.chunks_exact(rec) {
                if r[0] >= 10 {
                    return Err(Error::data(&path, format!("label byte {} is not in 0..10", r[0])));
                }
                labels.push(r[0]);
                pixels.extend_from_slice(&r[1..]);
            }
        }
        let classes = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
        Self::from_raw(pixels, labels, classes)
    }

    /// Reads `dir/<class>/*.{png,jpg,jpeg}` with 32x32 images; classes are the sub-folders sorted
    /// by name, unless `class_order` gives them; files are read in name order.
    pub fn load_image_folder(dir: &Path, class_order: Option<&[String]>) -> Result<Self> {
        let classes: Vec<String> = match class_order {
            Some(c) => c.to_vec(),
            None => class_folders(dir)?,
        };
        if classes.is_empty() {
            return Err(Error::data(dir, "no class sub-folders found"));
        }
        if classes.len() > 256 {
            return Err(Error::data(
                dir,
                format!("{} classes; at most 256 are supported", classes.len()),
            ));
        }
        let mut files = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let cdir = dir.join(class);
            let images: Vec<PathBuf> = read_dir_sorted(&cdir)?
                .into_iter()
                .filter(|p| {
                    let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase());
                    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
                })
                .collect();
            if images.is_empty() {
                return Err(Error::data(&cdir, "class folder holds no .png/.jpg images"));
            }
            files.extend(images.into_iter().map(|p| (p, label as u8)));
        }
        let pixels = decode_all(&files)?;
        let labels = files.iter().map(|(_, l)| *l).collect();
        Self::from_raw(pixels, labels, classes)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Labels, one per image.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The images at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(idx.len() * IMAGE_BYTES);
        for &i in idx {
            pixels.extend_from_slice(&self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]);
        }
        let labels = idx.iter().map(|&i| self.labels[i]).collect();
        Dataset { pixels, labels, classes: self.classes.clone() }
    }

    /// Indices of the first `n` images of each class (in storage order).
    pub fn first_per_class_index(&self, n: usize) -> Vec<usize> {
        let mut count = vec![0usize; self.classes.len()];
        (0..self.len())
            .filter(|&i| {
                let c = &mut count[self.labels[i] as usize];
                *c += 1;
                *c <= n
            })
            .collect()
    }

    /// The first `n` images of each class (in storage order).
    pub fn first_per_class(&self, n: usize) -> Dataset {
        self.select(&self.first_per_class_index(n))
    }

    /// Indices of `n` images drawn without replacement by a seeded generator, increasing.
    pub fn random_index(&self, n: usize, seed: Seed) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut seed.rng(Stream::Eval, 0, 0));
        idx.truncate(n.min(self.len()));
        idx.sort_unstable();
        idx
    }

    /// `n` images drawn without replacement by a seeded generator, in increasing index order.
    pub fn random_subset(&self, n: usize, seed: Seed) -> Dataset {
        self.select(&self.random_index(n, seed))
    }

    /// Images `idx` as a `[B, 3, 32, 32]` f32 tensor in [0, 1] and labels `[B]` i64, augmented
    /// (random crop with 4-pixel zero padding, horizontal flip with probability 1/2) when `aug`
    /// gives a generator.
    pub fn batch(&self, idx: &[usize], aug: Option<&mut Rng>) -> (Tensor, Tensor) {
        let mut out = vec![0u8; idx.len() * IMAGE_BYTES];
        match aug {
            None => {
                for (o, &i) in out.chunks_exact_mut(IMAGE_BYTES).zip(idx) {
                    o.copy_from_slice(&self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]);
                }
            }
            Some(rng) => {
                for (o, &i) in out.chunks_exact_mut(IMAGE_BYTES).zip(idx) {
                    let [dy, dx, flip] = draw_augment(rng);
                    crop_flip(
                        &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES],
                        o,
                        dy as isize,
                        dx as isize,
                        flip == 1,
                    );
                }
            }
        }
        let images = Tensor::from_slice(&out)
            .view([idx.len() as i64, 3, SIDE as i64, SIDE as i64])
            .to_kind(tch::Kind::Float)
            / 255.0;
        let labels: Vec<i64> = idx.iter().map(|&i| self.labels[i] as i64).collect();
        (images, Tensor::from_slice(&labels))
    }

    /// The images in order, `batch_size` at a time, as [`Dataset::batch`] makes them: cropped
    /// and flipped by a generator from `augment` when given.
    pub fn batches(
        &self,
        batch_size: usize,
        augment: Option<Seed>,
    ) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
        let mut rng = augment.map(|s| s.rng(Stream::Augment, 0, 0));
        let (n, bs) = (self.len(), batch_size.max(1));
        (0..n).step_by(bs).map(move |lo| {
            let idx: Vec<usize> = (lo..(lo + bs).min(n)).collect();
            self.batch(&idx, rng.as_mut())
        })
    }

    /// All images as one `[N, 3, 32, 32]` f32 tensor in [0, 1] and labels `[N]`.
    pub fn tensors(&self) -> (Tensor, Tensor) {
        let idx: Vec<usize> = (0..self.len()).collect();
        self.batch(&idx, None)
    }
}

/// The augmentation draws of one image, in the order [`Dataset::batch`] makes them: shifts
/// `dy`, `dx` in -4..=4 and a flip.
pub fn draw_augment(rng: &mut Rng) -> [i64; 3] {
    let dy = rng.gen_range(0..=8) as i64 - 4;
    let dx = rng.gen_range(0..=8) as i64 - 4;
    [dy, dx, rng.gen_bool(0.5) as i64]
}

/// A data set held on the compute device (u8 pixels, labels): batches are gathered and augmented
/// there, so a training step on a GPU moves nothing from the host. With the same draws it gives
/// exactly what [`Dataset::batch`] gives.
#[derive(Debug)]
pub struct DeviceData {
    /// `[N, 3, 32, 32]` u8.
    pixels: Tensor,
    /// `[N]` i64.
    labels: Tensor,
}

impl DeviceData {
    /// Copies `ds` to `device` (150 MB for CIFAR-10's training set).
    pub fn new(ds: &Dataset, device: tch::Device) -> Self {
        let n = ds.len() as i64;
        let pixels =
            Tensor::from_slice(&ds.pixels).view([n, 3, SIDE as i64, SIDE as i64]).to_device(device);
        let labels: Vec<i64> = ds.labels.iter().map(|&l| l as i64).collect();
        DeviceData { pixels, labels: Tensor::from_slice(&labels).to_device(device) }
    }

    /// Images `idx` (`[B]` i64 on the device) as `[B, 3, 32, 32]` f32 in [0, 1] and their labels;
    /// `aug` (`[B, 3]` i64: dy, dx, flip from [`draw_augment`]) crops the 4-pixel zero-padded
    /// image at (4 + dy, 4 + dx) and mirrors it where flip is 1.
    pub fn batch(&self, idx: &Tensor, aug: Option<&Tensor>) -> (Tensor, Tensor) {
        let x = self.pixels.index_select(0, idx);
        let x = match aug {
            None => x,
            Some(a) => {
                let (b, s) = (idx.size()[0], SIDE as i64);
                let ar = Tensor::arange(s, (tch::Kind::Int64, x.device())).unsqueeze(0);
                let (dy, dx, flip) = (a.select(1, 0), a.select(1, 1), a.select(1, 2));
                // out[y][x] = padded[4 + dy + y][4 + dx + (flip ? 31 - x : x)]
                let rows = (dy + 4).unsqueeze(1) + &ar;
                let xs = &ar + flip.unsqueeze(1) * (ar.neg() * 2 + (s - 1));
                let cols = (dx + 4).unsqueeze(1) + xs;
                let padded = x.constant_pad_nd([4, 4, 4, 4]);
                let rows = rows.view([b, 1, s, 1]).expand([b, 3, s, s + 8], false);
                let cols = cols.view([b, 1, 1, s]).expand([b, 3, s, s], false);
                padded.gather(2, &rows, false).gather(3, &cols, false)
            }
        };
        (x.to_kind(tch::Kind::Float) / 255.0, self.labels.index_select(0, idx))
    }
}

/// Copies `src` shifted by (`dy`, `dx`) with zero fill, mirrored left-right when `flip`.
fn crop_flip(src: &[u8], dst: &mut [u8], dy: isize, dx: isize, flip: bool) {
    let s = SIDE as isize;
    for c in 0..3 {
        let plane = &src[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
        let out = &mut dst[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
        for y in 0..s {
            let sy = y + dy;
            for x in 0..s {
                let xx = if flip { s - 1 - x } else { x };
                let sx = xx + dx;
                out[(y * s + x) as usize] = if (0..s).contains(&sy) && (0..s).contains(&sx) {
                    plane[(sy * s + sx) as usize]
                } else {
                    0
                };
            }
        }
    }
}

/// The names of the sub-folders of `dir`, sorted.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        v.push(e.map_err(|e| Error::io(dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

/// Decodes an image file to HWC RGB bytes: `(width, height, pixels)`. Baseline JPEGs decode
/// exactly as PIL / libjpeg-turbo decode them (see `data/jpeg.rs`); other JPEGs and PNGs go
/// through the `image` crate (PNG is lossless, so its pixels agree with PIL's too).
pub fn decode_image(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    // A FIFO or device named like an image would block or never end: regular files only.
    if !std::fs::metadata(path).map_err(|e| Error::io(path, e))?.is_file() {
        return Err(Error::data(path, "not a regular file (expected a .png/.jpg image)"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        // Corrupt files fall through to the `image` crate, which reports what is wrong.
        if let Ok(Some(img)) = jpeg::decode(&bytes) {
            return Ok(img);
        }
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::data(path, format!("cannot decode image: {e}")))?
        .to_rgb8();
    Ok((img.width() as usize, img.height() as usize, img.into_raw()))
}

fn decode_one(path: &Path, out: &mut [u8]) -> Result<()> {
    let (w, h, rgb) = decode_image(path)?;
    if w != SIDE || h != SIDE {
        return Err(Error::data(path, format!("image is {w}x{h}, expected 32x32")));
    }
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * SIDE * SIDE + i] = p[c];
        }
    }
    Ok(())
}

/// Decodes every file into CHW bytes, on all cores.
fn decode_all(files: &[(PathBuf, u8)]) -> Result<Vec<u8>> {
    let mut pixels = vec![0u8; files.len() * IMAGE_BYTES];
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
    let per = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = pixels
            .chunks_mut(per * IMAGE_BYTES)
            .zip(files.chunks(per))
            .map(|(out, fs)| {
                s.spawn(move || {
                    for (o, (p, _)) in out.chunks_exact_mut(IMAGE_BYTES).zip(fs) {
                        decode_one(p, o)?;
                    }
                    Ok::<(), Error>(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("decoder thread panicked"))
    })?;
    Ok(pixels)
}

/// The order in which an epoch visits `n` examples: a seeded permutation per (`stream`, `epoch`).
pub fn epoch_order(n: usize, seed: Seed, stream: Stream, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut seed.rng(stream, epoch, 0));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        let pixels: Vec<u8> = (0..2 * IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
        Dataset::from_raw(pixels, vec![0, 1], vec!["a".into(), "b".into()]).unwrap()
    }

    #[test]
    fn crop_shift_and_flip() {
        let d = tiny();
        let src = &d.pixels[..IMAGE_BYTES];
        let mut out = vec![0u8; IMAGE_BYTES];
        crop_flip(src, &mut out, 0, 0, false);
        assert_eq!(&out[..], src);
        crop_flip(src, &mut out, 1, 2, false);
        assert_eq!(out[0], src[SIDE + 2]);
        assert_eq!(out[(SIDE - 1) * SIDE], 0, "row 31 reads row 32: zero padding");
        crop_flip(src, &mut out, 0, 0, true);
        assert_eq!(out[0], src[SIDE - 1]);
    }

    #[test]
    fn batch_is_unit_range_and_augmentation_seeded() {
        let d = tiny();
        let (x, y) = d.batch(&[1, 0], None);
        assert_eq!(x.size(), vec![2, 3, 32, 32]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![1, 0]);
        assert!(x.max().double_value(&[]) <= 1.0 && x.min().double_value(&[]) >= 0.0);
        let s = Seed(3);
        let (a, _) = d.batch(&[0, 1], Some(&mut s.rng(Stream::Augment, 0, 0)));
        let (b, _) = d.batch(&[0, 1], Some(&mut s.rng(Stream::Augment, 0, 0)));
        assert!(a.equal(&b));
    }

    /// The device loader gives, bit for bit, what the host loader gives with the same draws:
    /// every shift in -4..=4 on both axes, with and without the flip, and plain batches.
    #[test]
    fn device_batches_equal_host_batches() {
        let pixels: Vec<u8> = (0..3 * IMAGE_BYTES).map(|i| (i * 7 % 253) as u8).collect();
        let d = Dataset::from_raw(pixels, vec![0, 1, 2], vec!["a".into(); 3]).unwrap();
        let dev = DeviceData::new(&d, tch::Device::Cpu);
        let idx = [2usize, 0, 1, 2];
        let it = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let (hx, hy) = d.batch(&idx, None);
        let (dx, dy) = dev.batch(&it, None);
        assert!(hx.equal(&dx) && hy.equal(&dy));
        for seed in 0..40 {
            let s = Seed(seed);
            let (hx, _) = d.batch(&idx, Some(&mut s.rng(Stream::Augment, 0, 0)));
            let mut rng = s.rng(Stream::Augment, 0, 0);
            let draws: Vec<i64> = (0..idx.len()).flat_map(|_| draw_augment(&mut rng)).collect();
            let aug = Tensor::from_slice(&draws).view([-1, 3]);
            let (dx, _) = dev.batch(&it, Some(&aug));
            assert!(hx.equal(&dx), "seed {seed}: draws {draws:?}");
        }
    }

    #[test]
    fn first_per_class_keeps_order() {
        let pixels = vec![0u8; 5 * IMAGE_BYTES];
        let d =
            Dataset::from_raw(pixels, vec![0, 1, 0, 1, 0], vec!["a".into(), "b".into()]).unwrap();
        assert_eq!(d.first_per_class(1).labels(), &[0, 1]);
        assert_eq!(d.first_per_class(2).labels(), &[0, 1, 0, 1]);
    }
}

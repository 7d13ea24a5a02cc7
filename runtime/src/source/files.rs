//! Image files: one file, a directory or a glob pattern.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{alphanumeric_cmp, has_extension, Capture, Pacer, Repeat, Source};
use crate::preprocess::Image;

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Plays a fixed list of image files, in order, [`Repeat`] times.
pub(crate) struct ImageFiles {
    uri: String,
    paths: Vec<PathBuf>,
    next: usize,
    repeat: Repeat,
    pacer: Pacer,
}

impl ImageFiles {
    /// One image file.
    pub(crate) fn single(uri: &str, path: &Path, repeat: Repeat, pacer: Pacer) -> ImageFiles {
        ImageFiles::new(uri, vec![path.to_path_buf()], repeat, pacer)
    }

    /// The `.png`, `.jpg` and `.jpeg` files directly in `dir`.
    pub(crate) fn dir(uri: &str, dir: &Path, repeat: Repeat, pacer: Pacer) -> Result<ImageFiles> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("input {uri}: cannot list the directory"))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.with_context(|| format!("input {uri}: cannot list the directory"))?.path();
            if has_extension(&path, &IMAGE_EXTENSIONS) && path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            bail!("input {uri}: expected .png, .jpg or .jpeg files but the directory has none");
        }
        Ok(ImageFiles::new(uri, paths, repeat, pacer))
    }

    /// The `.png`, `.jpg` and `.jpeg` files a glob pattern matches.
    pub(crate) fn glob(uri: &str, pattern: &str, repeat: Repeat, pacer: Pacer) -> Result<ImageFiles> {
        let matches = glob::glob(pattern).with_context(|| format!("input {uri}: bad glob pattern"))?;
        let mut paths = Vec::new();
        for m in matches {
            let path = m.with_context(|| format!("input {uri}"))?;
            if has_extension(&path, &IMAGE_EXTENSIONS) && path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            bail!("input {uri}: expected .png, .jpg or .jpeg files but the pattern matches none");
        }
        Ok(ImageFiles::new(uri, paths, repeat, pacer))
    }

    fn new(uri: &str, mut paths: Vec<PathBuf>, repeat: Repeat, pacer: Pacer) -> ImageFiles {
        paths.sort_by(|a, b| alphanumeric_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
        ImageFiles { uri: uri.to_string(), paths, next: 0, repeat, pacer }
    }
}

impl Source for ImageFiles {
    fn capture(&mut self) -> Result<Capture> {
        if self.next == self.paths.len() {
            if !self.repeat.take() {
                return Ok(Capture::End);
            }
            self.next = 0;
        }
        if !self.pacer.ready() {
            return Ok(Capture::NotYet);
        }
        let img = Image::open(&self.paths[self.next])?;
        self.next += 1;
        Ok(Capture::Frame(img))
    }

    fn describe(&self) -> String {
        match self.paths.len() {
            1 => self.uri.clone(),
            n => format!("{} ({n} images)", self.uri),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{open, SourceArgs};
    use super::*;
    use crate::preprocess::PixelFormat;

    /// Writes a 2x2 gray PNG whose pixels are all `value`.
    fn png(dir: &Path, name: &str, value: u8) {
        image::GrayImage::from_pixel(2, 2, image::Luma([value])).save(dir.join(name)).unwrap();
    }

    /// Captures until `End`, returning the first pixel of every frame.
    fn drain(uri: &str, args: &SourceArgs) -> Result<Vec<u8>> {
        let mut source = open(uri, args)?;
        let mut seen = Vec::new();
        loop {
            match source.capture()? {
                Capture::Frame(img) => {
                    assert_eq!(img.format, PixelFormat::Gray8);
                    seen.push(img.data[0]);
                }
                Capture::NotYet => {}
                Capture::End => break,
            }
            assert!(seen.len() < 100, "no End");
        }
        // End is sticky.
        assert!(matches!(source.capture()?, Capture::End));
        Ok(seen)
    }

    fn fixture_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        png(dir.path(), "frame10.png", 10);
        png(dir.path(), "frame2.png", 2);
        png(dir.path(), "frame1.jpg.png", 1);
        png(dir.path(), "a.PNG", 0);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        std::fs::create_dir(dir.path().join("sub.png")).unwrap();
        dir
    }

    #[test]
    fn directory_plays_images_in_alphanumeric_order_then_ends() {
        let dir = fixture_dir();
        let uri = format!("file://{}/", dir.path().display());
        assert_eq!(drain(&uri, &SourceArgs::default()).unwrap(), [0, 1, 2, 10]);
        let source = open(&uri, &SourceArgs::default()).unwrap();
        assert_eq!(source.describe(), format!("{uri} (4 images)"));
    }

    #[test]
    fn input_loop_plays_again() {
        let dir = fixture_dir();
        let uri = format!("file://{}", dir.path().display());
        let args = SourceArgs { input_loop: 1, ..SourceArgs::default() };
        assert_eq!(drain(&uri, &args).unwrap(), [0, 1, 2, 10, 0, 1, 2, 10]);
        let args = SourceArgs { input_loop: -1, ..SourceArgs::default() };
        let mut source = open(&uri, &args).unwrap();
        for _ in 0..13 {
            assert!(matches!(source.capture().unwrap(), Capture::Frame(_)));
        }
    }

    #[test]
    fn glob_selects_and_orders() {
        let dir = fixture_dir();
        let uri = format!("file://{}/frame*.png", dir.path().display());
        assert_eq!(drain(&uri, &SourceArgs::default()).unwrap(), [1, 2, 10]);
        let uri = format!("file://{}/nothing*.png", dir.path().display());
        let err = open(&uri, &SourceArgs::default()).err().unwrap();
        assert_eq!(
            format!("{err:#}"),
            format!("input {uri}: expected .png, .jpg or .jpeg files but the pattern matches none")
        );
    }

    #[test]
    fn relative_paths_and_plain_paths() {
        // The crate's own test data, relative to the test's working directory (the crate root).
        let uri = "file://../tests/data/capture/source-64x48.png";
        let mut source = open(uri, &SourceArgs::default()).unwrap();
        let Capture::Frame(img) = source.capture().unwrap() else { panic!("no frame") };
        assert_eq!((img.width, img.height, img.format), (64, 48, PixelFormat::Rgb8));
        assert!(matches!(source.capture().unwrap(), Capture::End));
        let source = open("../tests/data/capture/source-64x48.png", &SourceArgs::default()).unwrap();
        assert_eq!(source.describe(), "../tests/data/capture/source-64x48.png");
    }

    #[test]
    fn empty_directory_and_bad_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}/", dir.path().display());
        let err = open(&uri, &SourceArgs::default()).err().unwrap();
        assert_eq!(
            format!("{err:#}"),
            format!("input {uri}: expected .png, .jpg or .jpeg files but the directory has none")
        );

        png(dir.path(), "1.png", 1);
        std::fs::write(dir.path().join("2.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
        let mut source = open(&uri, &SourceArgs::default()).unwrap();
        assert!(matches!(source.capture().unwrap(), Capture::Frame(_)));
        let err = format!("{:#}", source.capture().err().unwrap());
        let bad = dir.path().join("2.png");
        assert!(err.starts_with(&format!("image {}: ", bad.display())), "{err}");
    }
}

//! YUV4MPEG2 clips (`.y4m`), 8-bit 4:2:0 and 4:4:4.
//!
//! The format: one header line `YUV4MPEG2 W<w> H<h> [F<n>:<d>] [I..] [A..]
//! [C<colourspace>] [X<extension>]...`, then per frame a line starting with
//! `FRAME` and the Y, Cb, Cr planes. A missing `C` means `420jpeg`. The
//! frame rate, interlacing and aspect tags are read but not used: frames go
//! out as fast as they are taken unless `--input-rate` paces them.
//! `XCOLORRANGE=FULL` (as FFmpeg writes for `yuvj*` formats) selects
//! full-range conversion; anything else is limited range.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::convert::{planar_to_rgb, Range};
use super::{Capture, Pacer, Repeat, Source};
use crate::preprocess::{Image, PixelFormat, MAX_IMAGE_ALLOC, MAX_IMAGE_SIDE};

/// Longest header or `FRAME` line read before giving up on the file.
const MAX_LINE: usize = 4096;

const EXPECTED_C: &str = "expected C420jpeg, C420, C420paldv, C420mpeg2 or C444 (8-bit)";

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Header {
    pub width: u32,
    pub height: u32,
    /// Chroma subsampling: (2, 2) for 4:2:0, (1, 1) for 4:4:4.
    pub subsampling: (usize, usize),
    /// The `C` tag as written, `420jpeg` when absent.
    pub colourspace: String,
    pub range: Range,
    /// Frames per second from the `F` tag.
    pub rate: Option<(u32, u32)>,
}

impl Header {
    /// Parses the header line (without its `\n`).
    pub(crate) fn parse(line: &[u8]) -> Result<Header> {
        let Some(params) = line.strip_prefix(b"YUV4MPEG2") else {
            bail!("expected a YUV4MPEG2 header but the file starts with {:?}", preview(line));
        };
        let params = std::str::from_utf8(params).context("expected an ASCII YUV4MPEG2 header")?;
        let (mut width, mut height, mut rate) = (None, None, None);
        let mut colourspace = "420jpeg".to_string();
        let mut range = Range::Limited;
        for tag in params.split(' ').filter(|t| !t.is_empty()) {
            // The key is one character, which need not be one byte.
            let (key, value) = tag.split_at(tag.chars().next().map_or(0, char::len_utf8));
            match key {
                "W" => width = Some(parse_side("W (width)", value)?),
                "H" => height = Some(parse_side("H (height)", value)?),
                "F" => rate = parse_ratio(value),
                "C" => colourspace = value.to_string(),
                "X" if value == "COLORRANGE=FULL" => range = Range::Full,
                _ => {}
            }
        }
        let (Some(width), Some(height)) = (width, height) else {
            bail!("expected W (width) and H (height) in the YUV4MPEG2 header");
        };
        let subsampling = match colourspace.as_str() {
            "420jpeg" | "420" | "420paldv" | "420mpeg2" => (2, 2),
            "444" => (1, 1),
            other => bail!("colourspace C{other} is not supported: {EXPECTED_C}"),
        };
        let header = Header { width, height, subsampling, colourspace, range, rate };
        if width as u64 * height as u64 * 3 > MAX_IMAGE_ALLOC {
            bail!("{width}x{height} frames are larger than the {} MiB limit", MAX_IMAGE_ALLOC >> 20);
        }
        Ok(header)
    }

    fn chroma_len(&self) -> usize {
        let (w, h) = (self.width as usize, self.height as usize);
        w.div_ceil(self.subsampling.0) * h.div_ceil(self.subsampling.1)
    }

    /// Bytes of one frame's planes.
    pub(crate) fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize + 2 * self.chroma_len()
    }

    /// Converts one frame's planes to an RGB image.
    pub(crate) fn to_rgb(&self, planes: &[u8]) -> Image {
        let (y, c) = planes.split_at(self.width as usize * self.height as usize);
        let (u, v) = c.split_at(self.chroma_len());
        let mut data = vec![0; self.width as usize * self.height as usize * 3];
        planar_to_rgb([y, u, v], self.width, self.height, self.subsampling, self.range, &mut data);
        Image { width: self.width, height: self.height, format: PixelFormat::Rgb8, data }
    }
}

fn parse_side(name: &str, value: &str) -> Result<u32> {
    match value.parse::<u32>() {
        Ok(v) if (1..=MAX_IMAGE_SIDE).contains(&v) => Ok(v),
        _ => bail!("expected {name} between 1 and {MAX_IMAGE_SIDE} in the YUV4MPEG2 header, found {value:?}"),
    }
}

fn parse_ratio(value: &str) -> Option<(u32, u32)> {
    let (n, d) = value.split_once(':')?;
    Some((n.parse().ok()?, d.parse().ok()?)).filter(|&(n, d)| n > 0 && d > 0)
}

fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned()
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes, without the
/// `\n`. `Ok(None)` at a clean end of file.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<Option<()>> {
    buf.clear();
    let n = r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n > MAX_LINE {
            bail!("expected a line of at most {MAX_LINE} bytes, found a longer one");
        }
        bail!("expected a line ending in a newline, found {:?} at the end of the file", preview(buf));
    }
    buf.pop();
    Ok(Some(()))
}

/// Plays a `.y4m` file frame by frame, [`Repeat`] times.
pub(crate) struct Y4m {
    path: PathBuf,
    reader: BufReader<File>,
    header: Header,
    data_start: u64,
    /// Frame number within the current pass, for error messages.
    frame: u64,
    repeat: Repeat,
    pacer: Pacer,
    ended: bool,
    line: Vec<u8>,
    planes: Vec<u8>,
}

impl Y4m {
    pub(crate) fn open(path: &Path, repeat: Repeat, pacer: Pacer) -> Result<Y4m> {
        let name = path.display();
        let (file, _) = crate::fsutil::open_regular(path, "y4m")?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let header = match read_line(&mut reader, &mut line) {
            Ok(Some(())) => Header::parse(&line),
            Ok(None) => Err(anyhow::anyhow!("expected a YUV4MPEG2 header but the file is empty")),
            Err(e) => Err(e),
        }
        .with_context(|| format!("y4m {name}"))?;
        let data_start = reader.stream_position()?;
        let planes = vec![0; header.frame_len()];
        Ok(Y4m {
            path: path.to_path_buf(),
            reader,
            header,
            data_start,
            frame: 0,
            repeat,
            pacer,
            ended: false,
            line,
            planes,
        })
    }

    /// Reads the next frame's planes into `self.planes`; `false` at the end of the file.
    fn read_frame(&mut self) -> Result<bool> {
        let name = self.path.display();
        let n = self.frame + 1;
        match read_line(&mut self.reader, &mut self.line).with_context(|| format!("y4m {name}: frame {n}"))? {
            None => return Ok(false),
            Some(()) if self.line.starts_with(b"FRAME") => {}
            Some(()) => {
                bail!("y4m {name}: frame {n}: expected a FRAME line, found {:?}", preview(&self.line))
            }
        }
        let mut got = 0;
        while got < self.planes.len() {
            match self.reader.read(&mut self.planes[got..]) {
                Ok(0) => bail!(
                    "y4m {name}: frame {n} is truncated: expected {} bytes of {}x{} C{} data, found {got}",
                    self.planes.len(),
                    self.header.width,
                    self.header.height,
                    self.header.colourspace
                ),
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("y4m {name}: frame {n}: cannot read")),
            }
        }
        self.frame += 1;
        Ok(true)
    }
}

impl Source for Y4m {
    fn capture(&mut self) -> Result<Capture> {
        if self.ended {
            return Ok(Capture::End);
        }
        if !self.pacer.ready() {
            return Ok(Capture::NotYet);
        }
        while !self.read_frame()? {
            // A pass without frames would loop forever: end instead.
            if self.frame == 0 || !self.repeat.take() {
                self.ended = true;
                return Ok(Capture::End);
            }
            self.reader.seek(SeekFrom::Start(self.data_start))?;
            self.frame = 0;
        }
        Ok(Capture::Frame(self.header.to_rgb(&self.planes)))
    }

    fn describe(&self) -> String {
        let h = &self.header;
        let rate = h.rate.map(|(n, d)| format!(", {:.2} fps", n as f64 / d as f64)).unwrap_or_default();
        format!("{} ({}x{} C{}{rate})", self.path.display(), h.width, h.height, h.colourspace)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{open, SourceArgs};
    use super::*;

    fn fixture_path(name: &str) -> String {
        format!("{}/../tests/data/capture/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Found by the `y4m` fuzz target: splitting a tag after its first byte
    /// panicked when that byte began a multi-byte character.
    #[test]
    fn regression_tag_split_inside_a_utf8_character() {
        let header = Header::parse("YUV4MPEG2 W16 H16 F30:A Ϗ XCOLORRANGE=FULL".as_bytes()).unwrap();
        assert_eq!((header.width, header.height, header.range), (16, 16, Range::Full));
    }

    fn read(name: &str) -> Vec<u8> {
        let path = fixture_path(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn frames(path: &str, args: &SourceArgs) -> Result<Vec<Image>> {
        let mut source = open(path, args)?;
        let mut out = Vec::new();
        loop {
            match source.capture()? {
                Capture::Frame(img) => out.push(img),
                Capture::NotYet => {}
                Capture::End => return Ok(out),
            }
        }
    }

    /// See `convert::tests::YUV_TOLERANCE`: FFmpeg's table-driven 4:2:0
    /// converter is up to 2 levels off the exact formula here, its 4:4:4 path
    /// matches exactly; 3 leaves room for neither.
    const TOLERANCE: u8 = 3;

    fn check_against_ffmpeg(name: &str, count: usize) {
        let imgs = frames(&fixture_path(name), &SourceArgs::default()).unwrap();
        let want = read(&format!("{name}.rgb"));
        assert_eq!(imgs.len(), count, "{name}: frame count");
        let frame_len = want.len() / count;
        for (k, img) in imgs.iter().enumerate() {
            assert_eq!((img.width, img.height, img.format), (32, 24, PixelFormat::Rgb8));
            let want = &want[k * frame_len..][..frame_len];
            let (d, i) = img.data.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).zip(0..).max().unwrap();
            assert!(
                d <= TOLERANCE,
                "{name} frame {k}: worst at byte {i} (pixel {}, {}): ours {} ffmpeg {}",
                i / 3 % 32,
                i / 3 / 32,
                img.data[i],
                want[i]
            );
        }
        assert_ne!(imgs[0].data, imgs[1].data, "{name}: frames should differ");
    }

    #[test]
    fn y4m_420_matches_ffmpeg() {
        check_against_ffmpeg("clip-32x24-420.y4m", 3);
    }

    #[test]
    fn y4m_444_matches_ffmpeg() {
        check_against_ffmpeg("clip-32x24-444.y4m", 3);
    }

    #[test]
    fn y4m_full_range_matches_ffmpeg() {
        let name = "full-32x24-444.y4m";
        let imgs = frames(&fixture_path(name), &SourceArgs::default()).unwrap();
        let want = read(&format!("{name}.rgb"));
        assert_eq!(imgs.len(), 1);
        let d = imgs[0].data.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(d <= TOLERANCE, "{name}: max difference {d}");
    }

    #[test]
    fn describe_names_the_clip() {
        let path = fixture_path("clip-32x24-420.y4m");
        let source = open(&path, &SourceArgs::default()).unwrap();
        assert_eq!(source.describe(), format!("{path} (32x24 C420jpeg, 25.00 fps)"));
    }

    #[test]
    fn input_loop_replays_the_clip() {
        let args = SourceArgs { input_loop: 1, ..SourceArgs::default() };
        let imgs = frames(&fixture_path("clip-32x24-420.y4m"), &args).unwrap();
        assert_eq!(imgs.len(), 6);
        assert_eq!(imgs[0], imgs[3]);
        assert_eq!(imgs[2], imgs[5]);
    }

    #[test]
    fn header_tags() {
        let h = Header::parse(b"YUV4MPEG2 W32 H24 F30000:1001 Ip A1:1 C420mpeg2 XYSCSS=420MPEG2").unwrap();
        assert_eq!((h.width, h.height, h.subsampling, h.rate), (32, 24, (2, 2), Some((30000, 1001))));
        assert_eq!(h.frame_len(), 32 * 24 + 2 * 16 * 12);
        let h = Header::parse(b"YUV4MPEG2 W31 H23").unwrap();
        assert_eq!(
            (h.colourspace.as_str(), h.range, h.frame_len()),
            ("420jpeg", Range::Limited, 31 * 23 + 2 * 16 * 12)
        );
        let h = Header::parse(b"YUV4MPEG2 W2 H2 C444 XCOLORRANGE=FULL").unwrap();
        assert_eq!((h.subsampling, h.range), ((1, 1), Range::Full));
    }

    #[test]
    fn bad_headers_say_what_was_expected() {
        let cases: [(&[u8], &str); 6] = [
            (b"YUV4MPEG2 W32 H24 C422", "colourspace C422 is not supported: expected C420jpeg, C420, C420paldv, C420mpeg2 or C444 (8-bit)"),
            (b"YUV4MPEG2 W32 H24 C420p10", "colourspace C420p10 is not supported"),
            (b"YUV4MPEG2 H24", "expected W (width) and H (height)"),
            (b"YUV4MPEG2 W0 H24", "expected W (width) between 1 and 16384"),
            (b"YUV4MPEG2 W99999 H24", "expected W (width) between 1 and 16384"),
            (b"\x89PNG\r\n\x1a", "expected a YUV4MPEG2 header but the file starts with"),
        ];
        for (line, want) in cases {
            let err = format!("{:#}", Header::parse(line).unwrap_err());
            assert!(err.starts_with(want), "{:?}: {err}", String::from_utf8_lossy(line));
        }
        let err = format!("{:#}", Header::parse(b"YUV4MPEG2 W16384 H16384 C444").unwrap_err());
        assert!(err.contains("larger than the 512 MiB limit"), "{err}");
    }

    #[test]
    fn bad_files_name_the_file_and_the_frame() {
        let dir = tempfile::tempdir().unwrap();
        let clip = read("clip-32x24-420.y4m");
        let frame_len = 32 * 24 * 3 / 2;
        let header_len = clip.iter().position(|&b| b == b'\n').unwrap() + 1;

        // Cut in the middle of the second frame's planes.
        let path = dir.path().join("cut.y4m");
        let cut = header_len + (6 + frame_len) + 6 + 100;
        std::fs::write(&path, &clip[..cut]).unwrap();
        let mut source = open(path.to_str().unwrap(), &SourceArgs::default()).unwrap();
        assert!(matches!(source.capture().unwrap(), Capture::Frame(_)));
        let err = format!("{:#}", source.capture().err().unwrap());
        let want = format!(
            "y4m {}: frame 2 is truncated: expected 1152 bytes of 32x24 C420jpeg data, found 100",
            path.display()
        );
        assert_eq!(err, want);

        // A broken FRAME marker.
        let path = dir.path().join("marker.y4m");
        let mut bad = clip.clone();
        bad[header_len..header_len + 5].copy_from_slice(b"FRAMX");
        std::fs::write(&path, &bad).unwrap();
        let mut source = open(path.to_str().unwrap(), &SourceArgs::default()).unwrap();
        let err = format!("{:#}", source.capture().err().unwrap());
        assert_eq!(err, format!("y4m {}: frame 1: expected a FRAME line, found \"FRAMX\"", path.display()));

        // Not a y4m at all, and an empty file.
        let path = dir.path().join("png.y4m");
        std::fs::copy(fixture_path("source-64x48.png"), &path).unwrap();
        let err = format!("{:#}", open(path.to_str().unwrap(), &SourceArgs::default()).err().unwrap());
        assert!(err.starts_with(&format!("y4m {}: expected a YUV4MPEG2 header", path.display())), "{err}");
        let path = dir.path().join("empty.y4m");
        std::fs::write(&path, b"").unwrap();
        let err = format!("{:#}", open(path.to_str().unwrap(), &SourceArgs::default()).err().unwrap());
        assert_eq!(err, format!("y4m {}: expected a YUV4MPEG2 header but the file is empty", path.display()));

        // A header without frames ends at once, even when looping forever.
        let path = dir.path().join("none.y4m");
        std::fs::write(&path, b"YUV4MPEG2 W2 H2 C444\n").unwrap();
        let args = SourceArgs { input_loop: -1, ..SourceArgs::default() };
        assert!(frames(path.to_str().unwrap(), &args).unwrap().is_empty());
    }

    #[test]
    fn odd_sizes_round_chroma_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.y4m");
        // 3x1 4:2:0: chroma 2x1. Grey then red chroma.
        let mut clip = b"YUV4MPEG2 W3 H1 F25:1 C420\nFRAME\n".to_vec();
        clip.extend_from_slice(&[235, 235, 81, 128, 90, 128, 240]);
        std::fs::write(&path, &clip).unwrap();
        let imgs = frames(path.to_str().unwrap(), &SourceArgs::default()).unwrap();
        assert_eq!(imgs.len(), 1);
        assert_eq!(&imgs[0].data[..6], &[255; 6]);
        assert!(imgs[0].data[6] >= 254 && imgs[0].data[7] <= 1, "{:?}", imgs[0].data);
    }
}

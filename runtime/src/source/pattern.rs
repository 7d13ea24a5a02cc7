//! `pattern://`: a synthetic test card for running without a camera.

use anyhow::Result;

use super::{Capture, Pacer, Source};
use crate::preprocess::{Image, PixelFormat};

/// The eight full-intensity bars: white, yellow, cyan, green, magenta, red, blue, black.
const BARS: [[u8; 3]; 8] = [
    [255, 255, 255],
    [255, 255, 0],
    [0, 255, 255],
    [0, 255, 0],
    [255, 0, 255],
    [255, 0, 0],
    [0, 0, 255],
    [0, 0, 0],
];

/// Frame `index` of the test card, `width x height` RGB8 (both at least 16).
///
/// The top three quarters hold eight vertical colour bars, the bottom
/// quarter a grey ramp from black to white. A square, `height / 6` pixels on a
/// side (at most half the width), inverts the colours under it and moves back and forth across the
/// bars by an odd number of pixels per frame, so two consecutive frames always
/// differ. The picture depends on nothing but the arguments.
pub fn test_pattern(width: u32, height: u32, index: u64) -> Image {
    assert!(width >= 16 && height >= 16, "test pattern {width}x{height} is smaller than 16x16");
    let (w, h) = (width as usize, height as usize);
    let bars_h = h * 3 / 4;
    let mut data = vec![0u8; w * h * 3];
    for (y, row) in data.chunks_exact_mut(w * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            if y < bars_h {
                px.copy_from_slice(&BARS[x * 8 / w]);
            } else {
                px.fill((x * 255 / (w - 1)) as u8);
            }
        }
    }
    let side = (h / 6).clamp(2, w / 2);
    let travel = (w - side) as u64;
    // An odd step never lands twice on the same place in a row: positions
    // t and t + step mirror each other only when 2 t + step is a multiple of
    // 2 * travel, which is even.
    let step = (w as u64 / 80) | 1;
    let t = index.wrapping_mul(step) % (2 * travel);
    let x0 = if t <= travel { t } else { 2 * travel - t } as usize;
    let y0 = (bars_h - side) / 2;
    for row in data.chunks_exact_mut(w * 3).skip(y0).take(side) {
        for v in &mut row[x0 * 3..(x0 + side) * 3] {
            *v = 255 - *v;
        }
    }
    Image { width, height, format: PixelFormat::Rgb8, data }
}

/// Plays [`test_pattern`] frames 0, 1, 2, ... forever.
pub(crate) struct Pattern {
    width: u32,
    height: u32,
    index: u64,
    pacer: Pacer,
}

impl Pattern {
    pub(crate) fn new(width: u32, height: u32, pacer: Pacer) -> Pattern {
        Pattern { width, height, index: 0, pacer }
    }
}

impl Source for Pattern {
    fn capture(&mut self) -> Result<Capture> {
        if !self.pacer.ready() {
            return Ok(Capture::NotYet);
        }
        let img = test_pattern(self.width, self.height, self.index);
        self.index += 1;
        Ok(Capture::Frame(img))
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("pattern:// {}x{}", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{open, SourceArgs};
    use super::*;

    #[test]
    fn frames_differ_and_are_deterministic() {
        let mut source = open("pattern://", &SourceArgs::default()).unwrap();
        assert_eq!(source.describe(), "pattern:// 640x480");
        let mut frames = Vec::new();
        for _ in 0..200 {
            match source.capture().unwrap() {
                Capture::Frame(img) => frames.push(img),
                other => panic!("pattern:// gave {other:?}"),
            }
        }
        for (k, pair) in frames.windows(2).enumerate() {
            assert_ne!(pair[0], pair[1], "frames {k} and {} are the same", k + 1);
        }
        assert_eq!(frames[0], test_pattern(640, 480, 0));
        assert_eq!(frames[137], test_pattern(640, 480, 137));
        assert_eq!((frames[0].width, frames[0].height, frames[0].format), (640, 480, PixelFormat::Rgb8));
    }

    #[test]
    fn small_and_odd_sizes_still_move() {
        for (w, h) in [(16, 16), (17, 23), (33, 16), (16, 400), (1920, 1080)] {
            let mut prev = test_pattern(w, h, 0);
            // One full sweep there and back, plus a little.
            let frames = 2 * w as u64 / ((w as u64 / 80) | 1) + 3;
            for i in 1..frames {
                let next = test_pattern(w, h, i);
                assert_ne!(prev, next, "{w}x{h}: frames {} and {i}", i - 1);
                prev = next;
            }
        }
    }

    #[test]
    fn layout() {
        let img = test_pattern(640, 480, 0);
        let px = |x: usize, y: usize| &img.data[(y * 640 + x) * 3..][..3];
        // Bars below the moving square, the ramp at the bottom.
        assert_eq!(px(40, 350), [255, 255, 255]);
        assert_eq!(px(120, 350), [255, 255, 0]);
        assert_eq!(px(600, 350), [0, 0, 0]);
        assert_eq!(px(0, 479), [0, 0, 0]);
        assert_eq!(px(639, 479), [255, 255, 255]);
        // Frame 0 has the square at the left edge: inverted white.
        assert_eq!(px(0, 180), [0, 0, 0]);
        let size = open(
            "pattern://",
            &SourceArgs { input_width: Some(320), input_height: Some(200), ..SourceArgs::default() },
        )
        .unwrap()
        .describe();
        assert_eq!(size, "pattern:// 320x200");
    }
}

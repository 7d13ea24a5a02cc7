//! The overlay: what the classifier says, drawn over the frame with
//! embedded-graphics on any `DrawTarget<Color = Rgb888>`.
//!
//! Two opaque boxes, so the text reads over any frame:
//!
//! - a panel at the top-left corner with the top-k classes as `NN.NN% label`
//!   lines, best first (the format of jetson-inference's `imagenet`), and a
//!   confidence bar for the best class under its line;
//! - a status bar across the bottom edge: `model vN | backend | NN FPS`.
//!
//! The font depends only on the target size, so it never changes between
//! frames: the largest of embedded-graphics' ASCII mono fonts (4x6 up to
//! 10x20; mono fonts do not scale) that fits [`MIN_COLUMNS`] characters across
//! and [`MIN_ROWS`] lines down, or 4x6 when none does (128x64 gets 4x6,
//! 320x240 8x13, 640x480 and larger 10x20). The panel holds as many class
//! lines as fit above the status bar; the best class line and its bar are
//! always drawn. Text longer than a line ends in `...`; the status line
//! shortens the model name first so version, backend and FPS stay visible.
//!
//! Drawing is solid fills and text only (a `DrawTarget` cannot read pixels
//! back, so there is no blending), and the layout stays inside the target
//! when it is at least as tall as the status bar and one class line.

use std::borrow::Cow;

use embedded_graphics::mono_font::ascii::{
    FONT_10X20, FONT_4X6, FONT_5X8, FONT_6X10, FONT_7X13, FONT_8X13, FONT_9X15,
};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use embedded_graphics::text::{Baseline, Text};

/// What the overlay shows.
#[derive(Clone, Copy, Debug)]
pub struct OverlayContent<'a> {
    /// `(score, label)` with scores in 0..1, best first; may be empty.
    pub top: &'a [(f32, &'a str)],
    /// Model name, as in the bundle manifest.
    pub model: &'a str,
    /// Bundle version.
    pub version: u64,
    /// Backend name (`cpu`, `cuda`).
    pub backend: &'a str,
    /// Frames per second; not finite or negative shows `--`.
    pub fps: f32,
}

/// Characters a line should hold at the chosen font.
pub const MIN_COLUMNS: u32 = 40;
/// Lines of text the target should hold at the chosen font.
pub const MIN_ROWS: u32 = 8;
/// Narrowest panel, in characters, so the bar stays readable.
const MIN_PANEL_COLUMNS: usize = 16;

/// Candidate fonts, smallest first.
const FONTS: [&MonoFont<'static>; 7] =
    [&FONT_4X6, &FONT_5X8, &FONT_6X10, &FONT_7X13, &FONT_8X13, &FONT_9X15, &FONT_10X20];

/// Box backgrounds.
pub const BACKGROUND: Rgb888 = Rgb888::new(0, 0, 0);
/// The best class line.
pub const TEXT_BEST: Rgb888 = Rgb888::new(255, 255, 255);
/// The other class lines and the status line.
pub const TEXT: Rgb888 = Rgb888::new(200, 200, 200);
/// The filled part of the confidence bar.
pub const BAR: Rgb888 = Rgb888::new(0, 200, 0);
/// The empty part of the confidence bar.
pub const BAR_TRACK: Rgb888 = Rgb888::new(70, 70, 70);

/// The font for a `width x height` target: the largest that fits
/// [`MIN_COLUMNS`] x [`MIN_ROWS`] characters, else the smallest.
pub fn font_for(width: u32, height: u32) -> &'static MonoFont<'static> {
    FONTS
        .iter()
        .rev()
        .find(|f| {
            f.character_size.width * MIN_COLUMNS <= width && f.character_size.height * MIN_ROWS <= height
        })
        .copied()
        .unwrap_or(FONTS[0])
}

/// Spacing derived from the glyph size.
struct Metrics {
    char_w: u32,
    char_h: u32,
    /// Inner margin of the boxes.
    pad: u32,
    /// Space between lines and around the bar.
    gap: u32,
    bar_h: u32,
}

impl Metrics {
    fn new(font: &MonoFont) -> Metrics {
        let Size { width: char_w, height: char_h } = font.character_size;
        Metrics {
            char_w,
            char_h,
            pad: (char_h / 4).max(1),
            gap: (char_h / 6).max(1),
            bar_h: (char_h / 3).max(2),
        }
    }
}

/// Draws the overlay for `content` over whatever `target` holds.
pub fn draw<D: DrawTarget<Color = Rgb888>>(target: &mut D, content: &OverlayContent) -> Result<(), D::Error> {
    let area = target.bounding_box();
    let Size { width, height } = area.size;
    if width == 0 || height == 0 {
        return Ok(());
    }
    let font = font_for(width, height);
    let m = Metrics::new(font);
    let at = |x: u32, y: u32| area.top_left + Point::new(x as i32, y as i32);
    let columns = (width.saturating_sub(2 * m.pad) / m.char_w).max(1) as usize;

    let status_h = m.char_h + 2 * m.pad;
    let status_y = height.saturating_sub(status_h);

    let lines: Vec<String> = if content.top.is_empty() {
        vec!["(no class)".to_string()]
    } else {
        content.top.iter().map(|&(score, label)| format!("{:05.2}% {label}", percent(score))).collect()
    };
    // The best line and its bar always; then each further line that ends
    // above the status bar.
    let below_bar = m.pad + m.char_h + m.gap + m.bar_h;
    let mut bottom = below_bar;
    let mut shown = 1;
    while shown < lines.len() && bottom + m.gap + m.char_h + m.pad <= status_y {
        bottom += m.gap + m.char_h;
        shown += 1;
    }
    let longest = lines[..shown].iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let panel_cols = longest.clamp(MIN_PANEL_COLUMNS.min(columns), columns);
    let inner_w = panel_cols as u32 * m.char_w;
    target.fill_solid(
        &Rectangle::new(at(0, 0), Size::new((inner_w + 2 * m.pad).min(width), bottom + m.pad)),
        BACKGROUND,
    )?;

    let best_style = MonoTextStyle::new(font, TEXT_BEST);
    let style = MonoTextStyle::new(font, TEXT);
    Text::with_baseline(&fit(&lines[0], panel_cols), at(m.pad, m.pad), best_style, Baseline::Top)
        .draw(target)?;
    let bar_y = m.pad + m.char_h + m.gap;
    let score = content.top.first().map_or(0.0, |&(s, _)| percent(s) / 100.0);
    let filled = (score * inner_w as f32).round() as u32;
    target.fill_solid(&Rectangle::new(at(m.pad, bar_y), Size::new(inner_w, m.bar_h)), BAR_TRACK)?;
    target.fill_solid(&Rectangle::new(at(m.pad, bar_y), Size::new(filled, m.bar_h)), BAR)?;
    for (i, line) in lines[1..shown].iter().enumerate() {
        let y = below_bar + m.gap + i as u32 * (m.char_h + m.gap);
        Text::with_baseline(&fit(line, panel_cols), at(m.pad, y), style, Baseline::Top).draw(target)?;
    }

    target.fill_solid(&Rectangle::new(at(0, status_y), Size::new(width, status_h)), BACKGROUND)?;
    Text::with_baseline(&status_line(content, columns), at(m.pad, status_y + m.pad), style, Baseline::Top)
        .draw(target)?;
    Ok(())
}

/// `score` as a percentage in 0..=100; not-a-number is 0.
fn percent(score: f32) -> f32 {
    if score.is_nan() {
        0.0
    } else {
        score.clamp(0.0, 1.0) * 100.0
    }
}

/// `model vN | backend | NN FPS` in at most `columns` characters: the model
/// name shrinks first, then the line is cut from its end.
fn status_line(content: &OverlayContent, columns: usize) -> String {
    let fps = if content.fps.is_finite() && content.fps >= 0.0 {
        format!("{:.0} FPS", content.fps)
    } else {
        "-- FPS".to_string()
    };
    let tail = format!(" v{} | {} | {fps}", content.version, content.backend);
    let tail_len = tail.chars().count();
    let model_len = content.model.chars().count();
    if model_len + tail_len <= columns {
        format!("{}{tail}", content.model)
    } else if columns >= tail_len + 4 {
        format!("{}{tail}", fit(content.model, columns - tail_len))
    } else {
        fit(tail.trim_start(), columns).into_owned()
    }
}

/// `text` in at most `columns` characters, ending in `...` when cut; control
/// characters become spaces so a label never breaks the line.
fn fit(text: &str, columns: usize) -> Cow<'_, str> {
    let count = text.chars().count();
    if count <= columns && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    if count <= columns {
        return Cow::Owned(text.chars().map(clean).collect());
    }
    let (keep, dots) = if columns >= 4 { (columns - 3, "...") } else { (columns, "") };
    let mut out: String = text.chars().take(keep).map(clean).collect();
    if !dots.is_empty() {
        out.truncate(out.trim_end().len());
    }
    out.push_str(dots);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::PathBuf;

    use super::*;
    use crate::display::Canvas;

    static TOP: [(f32, &str); 2] = [(0.9731, "Ankle boot"), (0.0150, "Sandal")];

    fn content(top: &'static [(f32, &'static str)]) -> OverlayContent<'static> {
        OverlayContent { top, model: "fmnist-vit-ggem", version: 1, backend: "cpu", fps: 123.4 }
    }

    fn golden_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/overlay")
    }

    fn bless() -> bool {
        std::env::var_os("EDGEVIT_BLESS").is_some_and(|v| v == "1")
    }

    /// The frame under the 128x64 golden: a color the overlay never uses.
    const FRAME: Rgb888 = Rgb888::new(255, 0, 255);

    /// One character per pixel: frame ' ', box background '.', text '#',
    /// bar '=', bar track '-'.
    fn ascii_grid(canvas: &Canvas) -> String {
        let mut out = String::new();
        for y in 0..canvas.height() {
            out.push('|');
            for x in 0..canvas.width() {
                out.push(match canvas.pixel(x, y) {
                    FRAME => ' ',
                    BACKGROUND => '.',
                    TEXT | TEXT_BEST => '#',
                    BAR => '=',
                    BAR_TRACK => '-',
                    _ => '?',
                });
            }
            out.push_str("|\n");
        }
        out
    }

    const ASCII_HEADER: &str =
        "# generated by `EDGEVIT_BLESS=1 cargo test -p edgevit --lib overlay::tests::golden` \
         (runtime/src/overlay.rs, golden_128x64_ascii); see README.md\n";

    #[test]
    fn golden_128x64_ascii() {
        let mut canvas = Canvas::new(128, 64);
        canvas.fill(FRAME);
        let Ok(()) = draw(&mut canvas, &content(&TOP));
        let actual = format!("{ASCII_HEADER}{}", ascii_grid(&canvas));
        let path = golden_dir().join("128x64.txt");
        if bless() {
            std::fs::write(&path, &actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with EDGEVIT_BLESS=1 to create it", path.display()));
        if actual != expected {
            let diff: Vec<String> = expected
                .lines()
                .zip(actual.lines())
                .enumerate()
                .filter(|(_, (e, a))| e != a)
                .map(|(i, (e, a))| format!("line {}:\n  expected {e}\n  actual   {a}", i + 1))
                .collect();
            panic!(
                "128x64 overlay differs from {} (EDGEVIT_BLESS=1 to accept):\n{}\nactual grid:\n{actual}",
                path.display(),
                diff.join("\n")
            );
        }
    }

    /// A gradient frame, so the golden shows the boxes are opaque.
    fn gradient(width: u32, height: u32) -> Canvas {
        let mut canvas = Canvas::new(width, height);
        for y in 0..height {
            for x in 0..width {
                canvas.set_pixel(x, y, Rgb888::new((x * 255 / width) as u8, (y * 255 / height) as u8, 128));
            }
        }
        canvas
    }

    #[test]
    fn golden_320x240_png() {
        let mut canvas = gradient(320, 240);
        let Ok(()) = draw(&mut canvas, &content(&TOP));
        let path = golden_dir().join("320x240.png");
        if bless() {
            let mut png = Vec::new();
            canvas.encode_png(&mut png).unwrap();
            std::fs::write(&path, png).unwrap();
            return;
        }
        let expected = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with EDGEVIT_BLESS=1 to create it", path.display()))
            .to_rgb8();
        assert_eq!((expected.width(), expected.height()), (320, 240), "{}", path.display());
        let diffs: Vec<(u32, u32)> = (0..240)
            .flat_map(|y| (0..320).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = expected.get_pixel(x, y).0;
                canvas.pixel(x, y) != Rgb888::new(p[0], p[1], p[2])
            })
            .collect();
        if let Some(&(x, y)) = diffs.first() {
            let actual = std::env::temp_dir().join("edgevit-overlay-320x240.actual.png");
            let mut png = Vec::new();
            canvas.encode_png(&mut png).unwrap();
            std::fs::write(&actual, png).unwrap();
            let e = expected.get_pixel(x, y).0;
            panic!(
                "320x240 overlay differs from {} in {} pixels, first at ({x}, {y}): expected {e:?}, actual {:?}; \
                 actual image written to {} (EDGEVIT_BLESS=1 to accept)",
                path.display(),
                diffs.len(),
                canvas.pixel(x, y),
                actual.display()
            );
        }
    }

    #[test]
    fn font_is_the_largest_that_fits() {
        let size = |w, h| font_for(w, h).character_size;
        assert_eq!(size(128, 64), Size::new(4, 6));
        assert_eq!(size(160, 128), Size::new(4, 6));
        assert_eq!(size(240, 240), Size::new(6, 10));
        assert_eq!(size(320, 240), Size::new(8, 13));
        assert_eq!(size(640, 480), Size::new(10, 20));
        assert_eq!(size(1920, 1080), Size::new(10, 20));
        assert_eq!(size(800, 100), Size::new(6, 10), "short and wide: the height decides");
        assert_eq!(size(10, 10), Size::new(4, 6), "nothing fits: the smallest");
    }

    #[test]
    fn lines_are_cut_with_an_ellipsis() {
        assert_eq!(fit("Ankle boot", 10), "Ankle boot");
        assert_eq!(fit("Ankle boot", 9), "Ankle...");
        assert_eq!(fit("Ankle boot", 3), "Ank");
        assert_eq!(fit("two\nlines", 20), "two lines");
        assert_eq!(fit("crème brûlée", 8), "crème...");
    }

    #[test]
    fn status_keeps_version_backend_and_fps() {
        let c = content(&TOP);
        assert_eq!(status_line(&c, 40), "fmnist-vit-ggem v1 | cpu | 123 FPS");
        assert_eq!(status_line(&c, 31), "fmnist-vi... v1 | cpu | 123 FPS");
        assert_eq!(status_line(&c, 20), "v1 | cpu | 123 FPS");
        assert_eq!(status_line(&c, 10), "v1 | cp...");
        let c = OverlayContent { fps: f32::NAN, ..c };
        assert_eq!(status_line(&c, 40), "fmnist-vit-ggem v1 | cpu | -- FPS");
    }

    /// Fails the test on any pixel outside the target.
    struct Strict(Canvas);

    impl OriginDimensions for Strict {
        fn size(&self) -> Size {
            self.0.size()
        }
    }

    impl DrawTarget for Strict {
        type Color = Rgb888;
        type Error = Infallible;

        fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Infallible> {
            let Size { width, height } = self.0.size();
            for Pixel(p, c) in pixels {
                assert!(
                    p.x >= 0 && p.y >= 0 && (p.x as u32) < width && (p.y as u32) < height,
                    "pixel {p:?} outside {width}x{height}"
                );
                self.0.set_pixel(p.x as u32, p.y as u32, c);
            }
            Ok(())
        }
    }

    static TOP5: [(f32, &str); 5] = [
        (0.61, "a label far longer than any line on a small display could ever hold"),
        (0.2, "Sandal"),
        (0.1, "Sneaker"),
        (0.05, "Bag"),
        (0.04, "Shirt"),
    ];

    #[test]
    fn stays_inside_the_target_at_any_size() {
        for (w, h) in [(128, 64), (64, 32), (33, 17), (160, 128), (320, 240), (800, 100), (1920, 1080)] {
            for top in [&TOP5[..], &TOP[..], &[]] {
                let mut target = Strict(Canvas::new(w, h));
                let Ok(()) = draw(&mut target, &content(top));
            }
        }
    }

    #[test]
    fn tiny_targets_do_not_panic() {
        for (w, h) in [(1, 1), (3, 200), (200, 3), (0, 0), (0, 10)] {
            let Ok(()) = draw(&mut Canvas::new(w, h), &content(&TOP5));
        }
    }

    /// Rows of `canvas` holding `color` between columns `x0..x1`.
    fn rows_with(canvas: &Canvas, x0: u32, x1: u32, color: Rgb888) -> Vec<u32> {
        (0..canvas.height()).filter(|&y| (x0..x1).any(|x| canvas.pixel(x, y) == color)).collect()
    }

    #[test]
    fn large_targets_show_all_five_classes() {
        let mut canvas = Canvas::new(1920, 1080);
        canvas.fill(FRAME);
        let Ok(()) = draw(&mut canvas, &content(&TOP5));
        let m = Metrics::new(&FONT_10X20);
        // Best line, bar, four more lines, then the status bar.
        let text_rows = rows_with(&canvas, 0, 1920, TEXT);
        let first = m.pad + m.char_h + m.gap + m.bar_h + m.gap;
        let last_line = first + 3 * (m.char_h + m.gap);
        assert!(text_rows.iter().any(|&y| (last_line..last_line + m.char_h).contains(&y)), "fifth line");
        assert!(text_rows.iter().any(|&y| y >= 1080 - m.char_h - m.pad), "status line");
        // The bar is 61% filled.
        let bar_y = m.pad + m.char_h + m.gap;
        let filled = (0..1920).filter(|&x| canvas.pixel(x, bar_y) == BAR).count() as f32;
        let track = (0..1920).filter(|&x| canvas.pixel(x, bar_y) == BAR_TRACK).count() as f32;
        assert!((filled / (filled + track) - 0.61).abs() < 0.01, "{filled} / {track}");
        // The frame stays visible outside the boxes.
        assert_eq!(canvas.pixel(960, 540), FRAME);
    }

    #[test]
    fn small_targets_show_the_best_class_and_the_status() {
        let mut canvas = Canvas::new(128, 64);
        canvas.fill(FRAME);
        let Ok(()) = draw(&mut canvas, &content(&TOP5));
        let best_rows = rows_with(&canvas, 0, 128, TEXT_BEST);
        assert!(!best_rows.is_empty() && best_rows.iter().all(|&y| y < 8), "{best_rows:?}");
        assert!(rows_with(&canvas, 0, 128, TEXT).iter().any(|&y| y >= 56), "status line");
        assert!(rows_with(&canvas, 0, 128, BAR).iter().all(|&y| (8..10).contains(&y)));
    }

    #[test]
    fn no_classes_still_draws_the_panel() {
        let mut canvas = Canvas::new(320, 240);
        canvas.fill(FRAME);
        let Ok(()) = draw(&mut canvas, &content(&[]));
        assert!(!rows_with(&canvas, 0, 320, TEXT_BEST).is_empty());
        assert!(rows_with(&canvas, 0, 320, BAR).is_empty());
        assert!(!rows_with(&canvas, 0, 320, BAR_TRACK).is_empty());
    }
}

//! `fb://DEVICE`: a Linux framebuffer (`/dev/fbN`).
//!
//! The device's geometry comes from the `FBIOGET_VSCREENINFO` and
//! `FBIOGET_FSCREENINFO` ioctls; its memory is mapped. Pixels are written in
//! the device's own layout: 16 or 32 bits per pixel, in CPU byte order, each
//! channel where its bitfield says (RGB565, XRGB8888, ARGB8888, XBGR8888,
//! BGRX8888, ... all follow from the offsets), `line_length` bytes from one
//! line to the next. An alpha channel, if present, is written opaque.
//!
//! Frames are drawn into a buffer in memory with the device's layout and
//! copied to the device by [`Display::present`], so the screen never shows a
//! frame without its overlay. [`FbCanvas`] is the pixel writer for both, over
//! any `&mut [u8]`: tests use it on plain memory or on a mapped regular file
//! ([`Framebuffer::from_file`]).

use std::convert::Infallible;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use memmap2::{MmapMut, MmapOptions};

use super::{letterbox, Display, Raster};
use crate::overlay::{self, OverlayContent};
use crate::preprocess::Image;

/// Where one channel sits in a pixel value, as in `struct fb_bitfield`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bitfield {
    /// Lowest bit of the channel.
    pub offset: u32,
    /// Bits in the channel; 0 means absent (alpha only).
    pub length: u32,
}

impl Bitfield {
    pub const fn new(offset: u32, length: u32) -> Bitfield {
        Bitfield { offset, length }
    }
}

/// Layout of framebuffer memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FbGeometry {
    /// Visible pixels per line (`xres`).
    pub width: u32,
    /// Visible lines (`yres`).
    pub height: u32,
    /// 16 or 32.
    pub bits_per_pixel: u32,
    /// Bytes from one line to the next (`line_length`), at least a line of pixels.
    pub line_length: u32,
    /// Byte offset of the visible top-left pixel (from `xoffset` and `yoffset`).
    pub offset: usize,
    pub red: Bitfield,
    pub green: Bitfield,
    pub blue: Bitfield,
    /// Alpha (`transp`), length 0 when absent.
    pub transp: Bitfield,
}

impl FbGeometry {
    /// 16 bits per pixel, red in bits 11..16, green 5..11, blue 0..5.
    #[cfg(test)]
    pub fn rgb565(width: u32, height: u32, line_length: u32) -> FbGeometry {
        FbGeometry {
            width,
            height,
            bits_per_pixel: 16,
            line_length,
            offset: 0,
            red: Bitfield::new(11, 5),
            green: Bitfield::new(5, 6),
            blue: Bitfield::new(0, 5),
            transp: Bitfield::default(),
        }
    }

    /// 32 bits per pixel, red in bits 16..24, green 8..16, blue 0..8, bits
    /// 24..32 unused: bytes B, G, R, X in memory on a little-endian CPU.
    #[cfg(test)]
    pub fn xrgb8888(width: u32, height: u32, line_length: u32) -> FbGeometry {
        FbGeometry {
            width,
            height,
            bits_per_pixel: 32,
            line_length,
            offset: 0,
            red: Bitfield::new(16, 8),
            green: Bitfield::new(8, 8),
            blue: Bitfield::new(0, 8),
            transp: Bitfield::default(),
        }
    }

    pub fn bytes_per_pixel(&self) -> usize {
        self.bits_per_pixel as usize / 8
    }

    /// Bytes from the start of the memory to the end of the last visible pixel.
    pub fn required_len(&self) -> usize {
        self.offset
            + self.height.saturating_sub(1) as usize * self.line_length as usize
            + self.width as usize * self.bytes_per_pixel()
    }

    /// Checks that pixels can be written in this layout.
    pub fn validate(&self) -> Result<()> {
        if self.bits_per_pixel != 16 && self.bits_per_pixel != 32 {
            bail!("{} bits per pixel is not supported (expected 16 or 32)", self.bits_per_pixel);
        }
        if self.width == 0 || self.height == 0 {
            bail!("expected a visible area but it is {}x{}", self.width, self.height);
        }
        let row = self.width as u64 * self.bytes_per_pixel() as u64;
        if (self.line_length as u64) < row {
            bail!(
                "expected line_length of at least {row} bytes for {} pixels but it is {}",
                self.width,
                self.line_length
            );
        }
        for (name, field, min) in [
            ("red", self.red, 1),
            ("green", self.green, 1),
            ("blue", self.blue, 1),
            ("transp", self.transp, 0),
        ] {
            if field.length < min || field.length > 16 || field.offset + field.length > self.bits_per_pixel {
                bail!(
                    "{name} bitfield (offset {}, length {}) does not fit a {} bit pixel",
                    field.offset,
                    field.length,
                    self.bits_per_pixel
                );
            }
        }
        Ok(())
    }

    /// The DRM name of the layout (`RGB565`, `XRGB8888`, ...), or its bitfields.
    pub fn format_name(&self) -> String {
        let f = |b: Bitfield| (b.offset, b.length);
        let a = if self.transp.length > 0 { 'A' } else { 'X' };
        let opaque_at = |offset| self.transp.length == 0 || f(self.transp) == (offset, 8);
        match (self.bits_per_pixel, f(self.red), f(self.green), f(self.blue)) {
            (16, (11, 5), (5, 6), (0, 5)) if self.transp.length == 0 => "RGB565".to_string(),
            (16, (0, 5), (5, 6), (11, 5)) if self.transp.length == 0 => "BGR565".to_string(),
            (32, (16, 8), (8, 8), (0, 8)) if opaque_at(24) => format!("{a}RGB8888"),
            (32, (0, 8), (8, 8), (16, 8)) if opaque_at(24) => format!("{a}BGR8888"),
            (32, (24, 8), (16, 8), (8, 8)) if opaque_at(0) => format!("RGB{a}8888"),
            (32, (8, 8), (16, 8), (24, 8)) if opaque_at(0) => format!("BGR{a}8888"),
            _ => format!(
                "r{}:{} g{}:{} b{}:{} a{}:{}",
                self.red.offset,
                self.red.length,
                self.green.offset,
                self.green.length,
                self.blue.offset,
                self.blue.length,
                self.transp.offset,
                self.transp.length
            ),
        }
    }
}

impl fmt::Display for FbGeometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}, {} bpp {}, {} bytes per line",
            self.width,
            self.height,
            self.bits_per_pixel,
            self.format_name(),
            self.line_length
        )
    }
}

/// Turns a color into a pixel value of a validated geometry, by table.
#[derive(Clone, Debug)]
struct Encoder {
    /// Each 8-bit red, green and blue value in place, alpha bits set in red.
    tables: [[u32; 256]; 3],
}

impl Encoder {
    fn new(g: &FbGeometry) -> Encoder {
        let opaque = (((1u64 << g.transp.length) - 1) << g.transp.offset) as u32;
        let table =
            |field: Bitfield, extra: u32| std::array::from_fn(|v| Self::channel(v as u8, field) | extra);
        Encoder { tables: [table(g.red, opaque), table(g.green, 0), table(g.blue, 0)] }
    }

    /// An 8-bit value in `field`: the top bits when narrower, the bits
    /// repeated when wider.
    fn channel(v: u8, field: Bitfield) -> u32 {
        let v = u32::from(v);
        let scaled = if field.length <= 8 {
            v >> (8 - field.length)
        } else {
            (v << (field.length - 8)) | (v >> (16 - field.length))
        };
        scaled << field.offset
    }

    #[inline]
    fn encode(&self, c: Rgb888) -> u32 {
        let [r, g, b] = &self.tables;
        r[usize::from(c.r())] | g[usize::from(c.g())] | b[usize::from(c.b())]
    }
}

/// Draws into memory laid out as an [`FbGeometry`]: the device's mapping or
/// a buffer. Pixels outside the visible area are dropped; bytes between the
/// end of a line and `line_length` are never written.
pub struct FbCanvas<'a> {
    buf: &'a mut [u8],
    geometry: FbGeometry,
    encoder: Encoder,
}

impl<'a> FbCanvas<'a> {
    /// Errors when the geometry is not supported or `buf` is shorter than
    /// [`FbGeometry::required_len`].
    #[cfg(test)]
    pub fn new(buf: &'a mut [u8], geometry: FbGeometry) -> Result<FbCanvas<'a>> {
        geometry.validate()?;
        if buf.len() < geometry.required_len() {
            bail!(
                "expected at least {} bytes for {geometry} but the buffer has {}",
                geometry.required_len(),
                buf.len()
            );
        }
        Ok(FbCanvas::checked(buf, geometry))
    }

    /// For a geometry already validated against `buf`.
    fn checked(buf: &'a mut [u8], geometry: FbGeometry) -> FbCanvas<'a> {
        debug_assert!(geometry.validate().is_ok() && buf.len() >= geometry.required_len());
        FbCanvas { buf, encoder: Encoder::new(&geometry), geometry }
    }
}

impl FbCanvas<'_> {
    /// Byte index of pixel `(x, y)`.
    #[inline]
    fn index(&self, x: u32, y: u32) -> usize {
        let g = &self.geometry;
        g.offset + y as usize * g.line_length as usize + x as usize * g.bytes_per_pixel()
    }

    /// Sets one pixel; `(x, y)` is in the visible area.
    #[inline]
    fn put(&mut self, x: u32, y: u32, color: Rgb888) {
        self.write_row(x, y, std::iter::once(color));
    }
}

impl Raster for FbCanvas<'_> {
    fn raster_size(&self) -> (u32, u32) {
        (self.geometry.width, self.geometry.height)
    }

    fn write_row(&mut self, x0: u32, y: u32, colors: impl Iterator<Item = Rgb888>) {
        let (start, end) = (self.index(x0, y), self.index(self.geometry.width, y));
        let FbCanvas { buf, geometry, encoder } = self;
        let line = &mut buf[start..end];
        if geometry.bits_per_pixel == 16 {
            for (px, c) in line.chunks_exact_mut(2).zip(colors) {
                px.copy_from_slice(&(encoder.encode(c) as u16).to_ne_bytes());
            }
        } else {
            for (px, c) in line.chunks_exact_mut(4).zip(colors) {
                px.copy_from_slice(&encoder.encode(c).to_ne_bytes());
            }
        }
    }

    fn copy_row(&mut self, x0: u32, width: u32, from: u32, to: u32) {
        let from = self.index(x0, from);
        let len = width as usize * self.geometry.bytes_per_pixel();
        let to = self.index(x0, to);
        self.buf.copy_within(from..from + len, to);
    }

    fn fill_rect(&mut self, x0: u32, y0: u32, width: u32, height: u32, color: Rgb888) {
        let value = self.encoder.encode(color);
        let bpp = self.geometry.bytes_per_pixel();
        let (wide, narrow) = (value.to_ne_bytes(), (value as u16).to_ne_bytes());
        let pixel: &[u8] = if bpp == 2 { &narrow } else { &wide };
        for y in y0..y0 + height {
            let start = self.index(x0, y);
            for px in self.buf[start..start + width as usize * bpp].chunks_exact_mut(bpp) {
                px.copy_from_slice(pixel);
            }
        }
    }
}

impl OriginDimensions for FbCanvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.geometry.width, self.geometry.height)
    }
}

impl DrawTarget for FbCanvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Infallible> {
        let (w, h) = (self.geometry.width, self.geometry.height);
        for Pixel(p, color) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.put(p.x as u32, p.y as u32, color);
            }
        }
        Ok(())
    }
}

/// A mapped framebuffer and the buffer frames are drawn into.
pub struct Framebuffer {
    path: PathBuf,
    geometry: FbGeometry,
    map: MmapMut,
    /// The visible area in the device's layout, starting at offset 0.
    back: Vec<u8>,
}

impl fmt::Debug for Framebuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framebuffer").field("path", &self.path).field("geometry", &self.geometry).finish()
    }
}

impl Framebuffer {
    /// Opens a framebuffer device (`/dev/fb0`), reads its geometry and maps it.
    pub fn open(path: &Path) -> Result<Framebuffer> {
        let name = path.display();
        let file = open_rw(path)?;
        let (var, fix) = screen_info(&file).with_context(|| format!("framebuffer {name}"))?;
        if fix.type_ != FB_TYPE_PACKED_PIXELS {
            bail!("framebuffer {name}: expected packed pixels but the device has type {}", fix.type_);
        }
        if fix.visual != FB_VISUAL_TRUECOLOR && fix.visual != FB_VISUAL_DIRECTCOLOR {
            bail!(
                "framebuffer {name}: expected a true-color visual but the device has visual {}",
                fix.visual
            );
        }
        if [var.red, var.green, var.blue, var.transp].iter().any(|b| b.msb_right != 0) {
            bail!(
                "framebuffer {name}: bitfields with the most significant bit on the right are not supported"
            );
        }
        let bitfield = |b: FbBitfield| Bitfield::new(b.offset, b.length);
        let geometry = FbGeometry {
            width: var.xres,
            height: var.yres,
            bits_per_pixel: var.bits_per_pixel,
            line_length: fix.line_length,
            offset: var.yoffset as usize * fix.line_length as usize
                + var.xoffset as usize * var.bits_per_pixel as usize / 8,
            red: bitfield(var.red),
            green: bitfield(var.green),
            blue: bitfield(var.blue),
            transp: bitfield(var.transp),
        };
        Framebuffer::map(path, &file, geometry, fix.smem_len as usize)
    }

    /// Maps a regular file as a framebuffer of `geometry`: for tests and for
    /// drawing into memory that something else displays.
    #[cfg(test)]
    pub fn from_file(path: &Path, geometry: FbGeometry) -> Result<Framebuffer> {
        let file = open_rw(path)?;
        let len =
            file.metadata().with_context(|| format!("framebuffer {}: cannot stat", path.display()))?.len();
        Framebuffer::map(path, &file, geometry, len as usize)
    }

    fn map(path: &Path, file: &File, geometry: FbGeometry, len: usize) -> Result<Framebuffer> {
        let name = path.display();
        geometry.validate().with_context(|| format!("framebuffer {name}"))?;
        if len < geometry.required_len() {
            bail!(
                "framebuffer {name}: expected at least {} bytes for {geometry} but it has {len}",
                geometry.required_len()
            );
        }
        // SAFETY: the mapping is shared with the device (or file) and other
        // processes may write it at any time. It is only ever written to in
        // `present` and through `FbCanvas`, as bytes, and never read into
        // values whose validity depends on its contents.
        let map = unsafe { MmapOptions::new().len(len).map_mut(file) }
            .with_context(|| format!("framebuffer {name}: cannot map {len} bytes"))?;
        let back = vec![0; FbGeometry { offset: 0, ..geometry }.required_len()];
        Ok(Framebuffer { path: path.to_path_buf(), geometry, map, back })
    }

    /// Draws straight onto the mapped memory, visible at once.
    #[cfg(test)]
    pub fn mapped(&mut self) -> FbCanvas<'_> {
        FbCanvas::checked(&mut self.map, self.geometry)
    }

    fn back_canvas(&mut self) -> FbCanvas<'_> {
        FbCanvas::checked(&mut self.back, FbGeometry { offset: 0, ..self.geometry })
    }
}

impl Display for Framebuffer {
    fn render(&mut self, frame: &Image, content: &OverlayContent) -> Result<()> {
        let mut canvas = self.back_canvas();
        letterbox(&mut canvas, frame)?;
        let Ok(()) = overlay::draw(&mut canvas, content);
        Ok(())
    }

    /// Copies the visible pixels of each line; line padding is left alone.
    fn present(&mut self) -> Result<()> {
        let g = self.geometry;
        let (line, row) = (g.line_length as usize, g.width as usize * g.bytes_per_pixel());
        for y in 0..g.height as usize {
            let dst = g.offset + y * line;
            self.map[dst..dst + row].copy_from_slice(&self.back[y * line..y * line + row]);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("fb://{} ({})", self.path.display(), self.geometry)
    }
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            " (is the user in the video group?)"
        } else {
            ""
        };
        anyhow::anyhow!("framebuffer {}: cannot open: {e}{hint}", path.display())
    })
}

// From <linux/fb.h>.
const FBIOGET_VSCREENINFO: u32 = 0x4600;
const FBIOGET_FSCREENINFO: u32 = 0x4602;
const FB_TYPE_PACKED_PIXELS: u32 = 0;
const FB_VISUAL_TRUECOLOR: u32 = 2;
const FB_VISUAL_DIRECTCOLOR: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// `struct fb_var_screeninfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

/// `struct fb_fix_screeninfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

fn screen_info(file: &File) -> Result<(FbVarScreeninfo, FbFixScreeninfo)> {
    let fd = file.as_raw_fd();
    let mut var = FbVarScreeninfo::default();
    // SAFETY: FBIOGET_VSCREENINFO writes one `struct fb_var_screeninfo` to the
    // pointer; `FbVarScreeninfo` has its layout (size checked in the tests)
    // and lives for the call.
    if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var as *mut FbVarScreeninfo) } < 0 {
        let e = io::Error::last_os_error();
        bail!("FBIOGET_VSCREENINFO failed: {e} (not a framebuffer device?)");
    }
    let mut fix = FbFixScreeninfo::default();
    // SAFETY: as above, for FBIOGET_FSCREENINFO and `struct fb_fix_screeninfo`.
    if unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix as *mut FbFixScreeninfo) } < 0 {
        let e = io::Error::last_os_error();
        bail!("FBIOGET_FSCREENINFO failed: {e}");
    }
    Ok((var, fix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::Canvas;
    use crate::preprocess::PixelFormat;

    fn content() -> OverlayContent<'static> {
        static TOP: [(f32, &str); 2] = [(0.9731, "Ankle boot"), (0.0150, "Sandal")];
        OverlayContent { top: &TOP, model: "fmnist-vit-ggem", version: 1, backend: "cpu", fps: 123.4 }
    }

    /// 4x2 RGB frame of distinct colors: each becomes a block on screen.
    fn frame() -> Image {
        #[rustfmt::skip]
        let data = vec![
            255, 0, 0,     0, 255, 0,     0, 0, 255,     255, 255, 255,
            16, 32, 64,    200, 100, 50,  1, 2, 3,       128, 128, 128,
        ];
        Image { width: 4, height: 2, format: PixelFormat::Rgb8, data }
    }

    /// A file of `len` bytes of `fill`.
    fn fb_file(dir: &tempfile::TempDir, len: usize, fill: u8) -> PathBuf {
        let path = dir.path().join("fb");
        std::fs::write(&path, vec![fill; len]).unwrap();
        path
    }

    /// Renders the frame and overlay through a file-backed framebuffer and
    /// returns the file's bytes.
    fn render_to_file(geometry: FbGeometry, len: usize, fill: u8) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = fb_file(&dir, len, fill);
        let mut fb = Framebuffer::from_file(&path, geometry).unwrap();
        fb.render(&frame(), &content()).unwrap();
        fb.present().unwrap();
        drop(fb);
        std::fs::read(&path).unwrap()
    }

    /// The same picture on an RGB canvas.
    fn reference(width: u32, height: u32) -> Canvas {
        let mut canvas = Canvas::new(width, height);
        letterbox(&mut canvas, &frame()).unwrap();
        let Ok(()) = overlay::draw(&mut canvas, &content());
        canvas
    }

    fn u16_at(bytes: &[u8], g: &FbGeometry, x: usize, y: usize) -> u16 {
        let i = g.offset + y * g.line_length as usize + x * 2;
        u16::from_ne_bytes([bytes[i], bytes[i + 1]])
    }

    fn bytes4_at(bytes: &[u8], g: &FbGeometry, x: usize, y: usize) -> [u8; 4] {
        let i = g.offset + y * g.line_length as usize + x * 4;
        bytes[i..i + 4].try_into().unwrap()
    }

    #[test]
    fn rgb565_800x480() {
        let g = FbGeometry::rgb565(800, 480, 1600);
        let bytes = render_to_file(g, 1600 * 480, 0xAB);
        // 4x2 on 800x480: 800x400 at y 40, blocks of 200x200.
        assert_eq!(u16_at(&bytes, &g, 700, 20), 0x0000, "letterbox bar");
        assert_eq!(u16_at(&bytes, &g, 300, 100), 0x07E0, "green block");
        assert_eq!(u16_at(&bytes, &g, 500, 100), 0x001F, "blue block");
        assert_eq!(u16_at(&bytes, &g, 700, 100), 0xFFFF, "white block");
        // (200, 100, 50) -> r 25, g 25, b 6.
        assert_eq!(u16_at(&bytes, &g, 300, 300), (25 << 11) | (25 << 5) | 6);
        assert_eq!(u16_at(&bytes, &g, 0, 0), 0x0000, "panel background");
        // Every pixel is the RGB picture in RGB565.
        let reference = reference(800, 480);
        for y in 0..480 {
            for x in 0..800 {
                let c = reference.pixel(x, y);
                let want =
                    (u16::from(c.r() >> 3) << 11) | (u16::from(c.g() >> 2) << 5) | u16::from(c.b() >> 3);
                assert_eq!(u16_at(&bytes, &g, x as usize, y as usize), want, "pixel ({x}, {y})");
            }
        }
        // The overlay is there: white text in the panel, gray in the status bar.
        let white_in_panel = (0..20).any(|y| (0..120).any(|x| u16_at(&bytes, &g, x, y) == 0xFFFF));
        assert!(white_in_panel);
        let gray = (200 >> 3 << 11) | (200 >> 2 << 5) | (200 >> 3);
        assert!((460..480).any(|y| (0..400).any(|x| u16_at(&bytes, &g, x, y) == gray)));
    }

    fn check_xrgb8888(line_length: u32) {
        let g = FbGeometry::xrgb8888(1920, 1080, line_length);
        let len = line_length as usize * 1080;
        let bytes = render_to_file(g, len, 0xAB);
        // 4x2 on 1920x1080: 1920x960 at y 60, blocks of 480x480. Memory: B, G, R, X.
        assert_eq!(bytes4_at(&bytes, &g, 1800, 30), [0, 0, 0, 0], "letterbox bar");
        assert_eq!(bytes4_at(&bytes, &g, 200, 300), [0, 0, 255, 0], "red block");
        assert_eq!(bytes4_at(&bytes, &g, 1000, 300), [255, 0, 0, 0], "blue block");
        assert_eq!(bytes4_at(&bytes, &g, 600, 800), [50, 100, 200, 0]);
        assert_eq!(bytes4_at(&bytes, &g, 1500, 800), [128, 128, 128, 0]);
        let reference = reference(1920, 1080);
        for y in 0..1080 {
            for x in 0..1920 {
                let c = reference.pixel(x, y);
                assert_eq!(
                    bytes4_at(&bytes, &g, x as usize, y as usize),
                    [c.b(), c.g(), c.r(), 0],
                    "({x}, {y})"
                );
            }
            let row = y as usize * line_length as usize;
            assert!(
                bytes[row + 1920 * 4..row + line_length as usize].iter().all(|&b| b == 0xAB),
                "padding {y}"
            );
        }
        assert!((0..30).any(|y| (0..200).any(|x| bytes4_at(&bytes, &g, x, y) == [255, 255, 255, 0])));
    }

    #[test]
    fn xrgb8888_1920x1080() {
        check_xrgb8888(7680);
    }

    #[test]
    fn xrgb8888_1920x1080_padded_lines() {
        check_xrgb8888(7744);
    }

    #[test]
    fn alpha_is_written_opaque() {
        // Red in the lowest byte, alpha in the highest: R, G, B, A in memory.
        let g = FbGeometry {
            red: Bitfield::new(0, 8),
            blue: Bitfield::new(16, 8),
            transp: Bitfield::new(24, 8),
            ..FbGeometry::xrgb8888(8, 2, 32)
        };
        assert_eq!(g.format_name(), "ABGR8888");
        let mut buf = vec![0u8; 64];
        let mut canvas = FbCanvas::new(&mut buf, g).unwrap();
        canvas.put(1, 1, Rgb888::new(10, 20, 30));
        assert_eq!(&buf[36..40], [10, 20, 30, 255]);
    }

    #[test]
    fn wide_channels_repeat_their_bits() {
        // 30-bit color: 10 bits per channel.
        let g = FbGeometry {
            red: Bitfield::new(20, 10),
            green: Bitfield::new(10, 10),
            blue: Bitfield::new(0, 10),
            ..FbGeometry::xrgb8888(1, 1, 4)
        };
        let mut buf = vec![0u8; 4];
        FbCanvas::new(&mut buf, g).unwrap().put(0, 0, Rgb888::new(255, 0, 0b1000_0001));
        assert_eq!(u32::from_ne_bytes(buf.try_into().unwrap()), (0x3FF << 20) | 0b10_0000_0110);
    }

    #[test]
    fn pixels_outside_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let g = FbGeometry::rgb565(800, 480, 1664);
        let path = fb_file(&dir, 1664 * 480, 0xAB);
        let mut fb = Framebuffer::from_file(&path, g).unwrap();
        let before = std::fs::read(&path).unwrap();
        let outside =
            [(-1, 0), (0, -1), (800, 0), (0, 480), (831, 10), (10_000, 10_000), (i32::MIN, i32::MAX)];
        let Ok(()) = fb.mapped().draw_iter(outside.map(|(x, y)| Pixel(Point::new(x, y), Rgb888::WHITE)));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // A rectangle over the right edge: its visible part only, never the line padding.
        let area = embedded_graphics::primitives::Rectangle::new(Point::new(790, 470), Size::new(50, 50));
        let Ok(()) = fb.mapped().fill_solid(&area, Rgb888::WHITE);
        drop(fb);
        let after = std::fs::read(&path).unwrap();
        let changed: Vec<usize> = (0..after.len()).filter(|&i| after[i] != before[i]).collect();
        assert_eq!(changed.len(), 10 * 10 * 2);
        assert!(changed.iter().all(|&i| {
            let (y, x) = (i / 1664, i % 1664 / 2);
            (470..480).contains(&y) && (790..800).contains(&x)
        }));
    }

    #[test]
    fn unsupported_layouts_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = fb_file(&dir, 800 * 480 * 3, 0);
        let g = FbGeometry { bits_per_pixel: 24, ..FbGeometry::xrgb8888(800, 480, 2400) };
        let err = Framebuffer::from_file(&path, g).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("framebuffer {}: 24 bits per pixel is not supported (expected 16 or 32)", path.display())
        );
        let err = Framebuffer::from_file(&path, FbGeometry::xrgb8888(800, 480, 3200)).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "framebuffer {}: expected at least 1536000 bytes for 800x480, 32 bpp XRGB8888, \
                 3200 bytes per line but it has 1152000",
                path.display()
            )
        );
        let err = FbGeometry::rgb565(800, 480, 1598).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected line_length of at least 1600 bytes for 800 pixels but it is 1598"
        );
        let g = FbGeometry { green: Bitfield::new(12, 6), ..FbGeometry::rgb565(8, 8, 16) };
        assert_eq!(
            g.validate().unwrap_err().to_string(),
            "green bitfield (offset 12, length 6) does not fit a 16 bit pixel"
        );
    }

    #[test]
    fn a_regular_file_is_not_a_framebuffer_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = fb_file(&dir, 16, 0);
        let uri = format!("fb://{}", path.display());
        let err = crate::display::open(&uri, &Default::default()).err().unwrap();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "framebuffer {}: FBIOGET_VSCREENINFO failed: Inappropriate ioctl for device (os error 25) \
                 (not a framebuffer device?)",
                path.display()
            )
        );
        let err = crate::display::open("fb:///nonexistent/fb9", &Default::default()).err().unwrap();
        assert_eq!(
            format!("{err:#}"),
            "framebuffer /nonexistent/fb9: cannot open: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn describe_names_device_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = fb_file(&dir, 1600 * 480, 0);
        let fb = Framebuffer::from_file(&path, FbGeometry::rgb565(800, 480, 1600)).unwrap();
        assert_eq!(
            fb.describe(),
            format!("fb://{} (800x480, 16 bpp RGB565, 1600 bytes per line)", path.display())
        );
    }

    #[test]
    fn visible_area_offset_is_honoured() {
        // Panned to the second of two buffers (yoffset = height).
        let g = FbGeometry { offset: 16 * 4, ..FbGeometry::rgb565(8, 4, 16) };
        let mut buf = vec![0xABu8; g.required_len()];
        assert_eq!(buf.len(), 128);
        let mut canvas = FbCanvas::new(&mut buf, g).unwrap();
        canvas.fill_rect(0, 0, 8, 4, Rgb888::WHITE);
        assert!(buf[..64].iter().all(|&b| b == 0xAB));
        assert!(buf[64..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn kernel_struct_sizes() {
        assert_eq!(std::mem::size_of::<FbVarScreeninfo>(), 160);
        let fix = if cfg!(target_pointer_width = "64") { 80 } else { 68 };
        assert_eq!(std::mem::size_of::<FbFixScreeninfo>(), fix);
    }
}

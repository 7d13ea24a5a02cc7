//! A camera buffer as the driver hands it over: the first bytes choose the
//! format, size and stride, the rest is the frame.
#![no_main]

use edgevit::{camera_frame, Pixels};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [kind, w, h, pad, frame @ ..] = data else { return };
    let pixels = if kind & 1 == 0 { Pixels::Yuyv } else { Pixels::Mjpeg };
    let (width, height) = (u32::from(*w) + 1, u32::from(*h) + 1);
    let stride = width as usize * 2 + usize::from(*pad % 16);
    let _ = camera_frame(pixels, width, height, stride, frame);
});

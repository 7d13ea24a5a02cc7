//! Image files (PNG, JPEG) through decode and preprocessing to both input
//! shapes the runtime meets: 28x28 luma and 224x224 RGB.
#![no_main]

use edgevit::{preprocess, Image, InputSpec, Layout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Image::decode(data) else { return };
    for (side, channels, layout) in [(28, 1, Layout::Nchw), (224, 3, Layout::Nhwc)] {
        let spec = InputSpec {
            width: side,
            height: side,
            channels,
            mean: vec![0.5; channels as usize],
            std: vec![0.25; channels as usize],
            layout,
        };
        let mut out = vec![0.0; spec.len()];
        preprocess(&spec, image.view(), &mut out);
    }
});

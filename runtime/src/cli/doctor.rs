//! `edgevit doctor`: what this machine offers each backend, and which one
//! `auto` picks.

use std::fmt;

use anyhow::Result;
use edgevit_kernels::driver::{Driver, LibraryProbe};
use edgevit_kernels::KernelStore;

use crate::backend::cpu::{Kernel, QKernel};
use crate::board::{Board, BoardArgs, DEVICE_BOARD_FILE};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub board: BoardArgs,
}

pub fn doctor(args: &DoctorArgs) -> Result<()> {
    print!("{}", Doctor::probe(args.board.current()?));
    Ok(())
}

/// What was found, probe by probe; each failure in its own words.
struct Doctor {
    driver: Result<Driver, String>,
    /// NVRTC's version and the architectures it compiles for.
    nvrtc: Result<((i32, i32), Vec<u32>), String>,
    board: Option<Board>,
    libraries: Vec<LibraryProbe>,
    kernels: KernelStore,
    /// Why `auto` does not take CUDA; none when it does.
    not_cuda: Option<String>,
    /// GStreamer's version and, for each element the URIs use, whether it
    /// is installed.
    gstreamer: Result<GstFound, String>,
}

/// GStreamer's version and, per element of [`GST_ELEMENTS`], whether it is installed.
type GstFound = ((u32, u32, u32), Vec<(&'static str, bool)>);

/// The elements `csi://`, `rtsp://` and video files need, and the encoders
/// recording uses: NVIDIA's on a Jetson, the generic ones elsewhere.
const GST_ELEMENTS: [&str; 9] = [
    "nvarguscamerasrc",
    "nvvidconv",
    "nvv4l2decoder",
    "rtspsrc",
    "decodebin",
    "videoconvert",
    "avdec_h264",
    "x264enc",
    "nvv4l2h264enc",
];

impl Doctor {
    fn probe(board: Option<Board>) -> Doctor {
        let nvrtc = edgevit_kernels::Nvrtc::load().map(|n| (n.version(), n.supported_archs().to_vec()));
        Doctor {
            driver: edgevit_kernels::driver::probe().map_err(|e| e.to_string()),
            nvrtc: nvrtc.map_err(|e| e.to_string()),
            not_cuda: crate::backend::why_not_cuda(board.as_ref()),
            board,
            libraries: edgevit_kernels::driver::probe_runtime_libraries(),
            kernels: KernelStore::from_env(),
            gstreamer: crate::gst::version()
                .map(|v| (v, GST_ELEMENTS.map(|e| (e, crate::gst::has_element(e).unwrap_or(false))).to_vec()))
                .map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Display for Doctor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.driver {
            Ok(driver) => {
                writeln!(f, "driver    CUDA {}.{}", driver.cuda.0, driver.cuda.1)?;
                for d in &driver.devices {
                    writeln!(
                        f,
                        "device {}  {}, compute capability {}.{}, {:.1} GiB",
                        d.ordinal,
                        d.name,
                        d.compute.0,
                        d.compute.1,
                        d.memory_bytes as f64 / (1u64 << 30) as f64
                    )?;
                }
            }
            Err(e) => writeln!(f, "driver    {e}")?,
        }
        match &self.nvrtc {
            Ok(((major, minor), archs)) => {
                let archs: Vec<String> = archs.iter().map(|a| format!("compute_{a}")).collect();
                writeln!(f, "nvrtc     {major}.{minor}, {}", archs.join(" "))?
            }
            Err(e) => writeln!(f, "nvrtc     {e}")?,
        }
        match &self.board {
            Some(b) => {
                writeln!(f, "board     {} (backend {})", b.name, format!("{:?}", b.backend).to_lowercase())?
            }
            None => {
                writeln!(f, "board     none (pass --board or --board-file, or install {DEVICE_BOARD_FILE})")?
            }
        }
        for library in &self.libraries {
            writeln!(f, "library   {}", library.summary())?;
        }
        let store = &self.kernels;
        let cache = store.cache.as_ref().map_or("none (no HOME)".into(), |c| c.display().to_string());
        writeln!(f, "kernels   prebuilt {}, cache {cache}", store.prebuilt.display())?;
        let cpu: Vec<&str> = Kernel::available().iter().map(|k| k.name()).collect();
        writeln!(
            f,
            "cpu       {} products and attention (this CPU runs: {})",
            Kernel::detect().name(),
            cpu.join(", ")
        )?;
        match QKernel::detect() {
            Some(kernel) => {
                let int8: Vec<&str> = QKernel::available().iter().map(|k| k.name()).collect();
                writeln!(f, "int8      {} products (this CPU runs: {})", kernel.name(), int8.join(", "))?
            }
            None => writeln!(
                f,
                "int8      none: no fast int8 dot product on this CPU (arm64 asimddp, x86 AVX2 or VNNI); \
                 int8 models run f32 products"
            )?,
        }
        match &self.gstreamer {
            Ok(((major, minor, micro), elements)) => {
                let list = |found: bool| -> String {
                    let names: Vec<&str> = elements.iter().filter(|e| e.1 == found).map(|e| e.0).collect();
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(" ")
                    }
                };
                writeln!(f, "gstreamer {major}.{minor}.{micro}; has {}; lacks {}", list(true), list(false))?
            }
            Err(e) => writeln!(f, "gstreamer {e}: csi://, rtsp://, gst:// and video files need it")?,
        }
        match &self.not_cuda {
            None => writeln!(f, "auto      cuda"),
            Some(why) => writeln!(f, "auto      cpu: {why}"),
        }
    }
}

//! `edgevit run`: the main job.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};

use crate::board::{Board, BoardArgs};
use crate::display::DisplayArgs;
use crate::engine::EngineArgs;
use crate::pipeline::LoopOptions;
use crate::postprocess::PostprocessArgs;
use crate::source::SourceArgs;
use crate::update::{BundleArgs, RunUpdateArgs};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where frames come from: `v4l2:///dev/video0`, `file://DIR/`, `file://GLOB`,
    /// `file://clip.y4m`, `pattern://`; through GStreamer, loaded when needed:
    /// `file://clip.mp4` (.mkv, .avi, .mov, .webm), `csi://0`,
    /// `rtsp://[user:pass@]host[:port]/path`, `gst://PIPELINE` (raw video out).
    /// A `csi://` or `rtsp://` input that gives no first frame within 10 s fails.
    /// Default: `/dev/video0` when it exists.
    #[arg(value_name = "INPUT_URI")]
    pub input: Option<String>,
    /// Where results are shown: `fb:///dev/fb0`, `png://DIR`, `null://`;
    /// `http://ADDR:PORT/`, a live view (page, `/stream.mjpg`, `/stats.json`,
    /// `/metrics`; `127.0.0.1` for this machine only); through GStreamer:
    /// `file://out.mp4` (.mkv, .mov) records, `gst://appsrc name=edgevit ! ...`
    /// feeds any pipeline. Default: the framebuffer when it exists, else PNGs
    /// in `out/run/`.
    #[arg(value_name = "OUTPUT_URI")]
    pub output: Option<String>,
    /// Show nothing (`null://`), only classify.
    #[arg(long, conflicts_with = "output")]
    pub headless: bool,
    /// Print the per-stage timing table every `--profile-every` frames.
    #[arg(long)]
    pub profile: bool,
    /// Frames between two `--profile` tables.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub profile_every: u64,
    /// Stop after N frames.
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,
    /// Average class probabilities over the last N frames (1: none).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub smoothing: u64,
    /// One JSON line per frame on stdout (the prediction schema of `classify --json`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub board: BoardArgs,
    #[command(flatten)]
    pub update: RunUpdateArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub display: DisplayArgs,
    #[command(flatten)]
    pub bundle: BundleArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub post: PostprocessArgs,
}

/// The input URI: as given, else the board's camera, else the first camera
/// when there is one.
fn input_uri(given: Option<String>, board: Option<&Board>) -> Result<String> {
    match (given, board) {
        (Some(uri), _) => Ok(uri),
        (None, Some(b)) => Ok(b.camera.clone()),
        (None, None) if Path::new("/dev/video0").exists() => Ok("v4l2:///dev/video0".into()),
        (None, None) => bail!("no input: pass an INPUT_URI (there is no camera at /dev/video0)"),
    }
}

/// The output URI: as given, `null://` when headless, else the board's
/// display, else the framebuffer when there is one, else PNG snapshots in
/// `out/run/`.
fn output_uri(given: Option<String>, headless: bool, board: Option<&Board>) -> String {
    match (given, board) {
        (Some(uri), _) => uri,
        _ if headless => "null://".into(),
        (None, Some(b)) => b.display.clone(),
        (None, None) if Path::new("/dev/fb0").exists() => "fb:///dev/fb0".into(),
        (None, None) => {
            log::warn!("no framebuffer: writing overlay PNGs to out/run/");
            "png://out/run/".into()
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let board = args.board.current()?;
    let input = input_uri(args.input, board.as_ref())?;
    let output = output_uri(args.output, args.headless, board.as_ref());
    let engine_options = args.engine.options_on(board.as_ref())?;
    let (bundle, mut engine) = args.bundle.load(&engine_options)?;
    if let Some(b) = &board {
        b.check_fits(&bundle)?;
    }
    let source = crate::source::open(&input, &args.source)?;
    let mut display = crate::display::open(&output, &args.display)?;
    log::info!(
        "run: {} -> {} ({})",
        source.describe(),
        display.describe(),
        if source.is_live() { "live: newest frame wins" } else { "every frame" }
    );
    let opts = LoopOptions {
        top_k: args.post.top_k,
        threshold: args.post.threshold,
        smoothing: args.smoothing as usize,
        profile_every: args.profile.then_some(args.profile_every),
        json: args.json,
        max_frames: args.frames,
    };
    let updates = args.update.poll(&args.bundle, board, engine_options)?;
    let mut stdout = std::io::stdout().lock();
    let stats =
        crate::pipeline::run(source, &mut engine, display.as_mut(), &opts, updates.as_ref(), &mut stdout)?;
    let int8 = engine.cpu.and_then(|cpu| cpu.int8()).map_or(String::new(), |int8| format!("int8: {int8}\n"));
    // With --json, stdout is the predictions' alone.
    if args.json {
        eprint!("{stats}{int8}");
    } else {
        write!(stdout, "{stats}{int8}")?;
    }
    Ok(())
}

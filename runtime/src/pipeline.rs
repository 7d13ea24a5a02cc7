//! The main loop of `edgevit run`: capture on its own thread, then
//! preprocess, network, postprocess, overlay and display on this one.
//!
//! Between the two sits a slot of capacity one. A live source (camera,
//! pattern) never waits: a frame the consumer has not taken yet is replaced
//! by the newer one and counted as dropped, so memory stays flat however slow
//! the consumer is. A file source is not live: it waits until its frame has
//! been taken, so every file is classified.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::display::Display;
use crate::engine::Engine;
use crate::overlay::OverlayContent;
use crate::postprocess::{Prediction, Ranked, Scored, TopK};
use crate::preprocess::Image;
use crate::source::{Capture, Source};

/// One captured frame and its place in the stream.
#[derive(Debug)]
pub struct Frame {
    pub image: Image,
    /// 0-based capture index; gaps are dropped frames.
    pub index: u64,
}

#[derive(Default)]
struct SlotState {
    frame: Option<Frame>,
    ended: bool,
    error: Option<anyhow::Error>,
}

/// The hand-off between capture and the consumer: capacity one.
pub struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
    dropped: AtomicU64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot { state: Mutex::new(SlotState::default()), changed: Condvar::new(), dropped: AtomicU64::new(0) }
    }
}

impl Slot {
    /// Puts a frame. `live`: replace an untaken frame (counted as dropped).
    /// Otherwise wait until the slot is empty or `stop` is set.
    pub fn put(&self, frame: Frame, live: bool, stop: &AtomicBool) {
        let mut state = self.state.lock().expect("slot lock");
        if !live {
            while state.frame.is_some() && !stop.load(Ordering::Relaxed) {
                state = self.changed.wait_timeout(state, Duration::from_millis(50)).expect("slot lock").0;
            }
        }
        if state.frame.replace(frame).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_all();
    }

    /// Marks the end of the stream, with the error that ended it if any.
    pub fn end(&self, error: Option<anyhow::Error>) {
        let mut state = self.state.lock().expect("slot lock");
        state.ended = true;
        state.error = error;
        self.changed.notify_all();
    }

    /// Takes the next frame, waiting for one. `Ok(None)` at the end of the
    /// stream or when `stop` is set; the source's error if it failed.
    pub fn take(&self, stop: &AtomicBool) -> Result<Option<Frame>> {
        let mut state = self.state.lock().expect("slot lock");
        loop {
            if let Some(frame) = state.frame.take() {
                self.changed.notify_all();
                return Ok(Some(frame));
            }
            if let Some(e) = state.error.take() {
                return Err(e);
            }
            if state.ended || stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            state = self.changed.wait_timeout(state, Duration::from_millis(50)).expect("slot lock").0;
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Frames waiting in the slot: 0 or 1, by construction.
    pub fn depth(&self) -> usize {
        usize::from(self.state.lock().expect("slot lock").frame.is_some())
    }
}

/// Runs `source` until it ends, fails or `stop` is set, putting frames in
/// `slot` (replacing untaken ones when the source is live).
pub fn capture(mut source: Box<dyn Source>, slot: &Slot, stop: &AtomicBool) {
    let live = source.is_live();
    let mut index = 0;
    let error = loop {
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        match source.capture() {
            Ok(Capture::Frame(image)) => {
                slot.put(Frame { image, index }, live, stop);
                index += 1;
            }
            Ok(Capture::NotYet) => {}
            Ok(Capture::End) => break None,
            Err(e) => break Some(e),
        }
    };
    slot.end(error);
}

/// The stages timed per frame.
pub const STAGES: [&str; 5] = ["Preprocess", "Network", "Postprocess", "Overlay", "Total"];

/// Latency distribution of one stage in fixed log-spaced bins (2% wide, from
/// 1 us to about 10 min): constant memory however long the run.
#[derive(Clone, Debug)]
pub struct Histogram {
    bins: Vec<u64>,
    count: u64,
}

const BIN_BASE: f64 = 1.02;
const BINS: usize = 1400;

impl Default for Histogram {
    fn default() -> Self {
        Histogram { bins: vec![0; BINS], count: 0 }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let bin = if us <= 1.0 { 0 } else { (us.ln() / BIN_BASE.ln()) as usize + 1 };
        self.bins[bin.min(BINS - 1)] += 1;
        self.count += 1;
    }

    /// The `q` quantile (0..=1) as the upper edge of its bin, in ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bin, &n) in self.bins.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return BIN_BASE.powi(bin as i32) / 1e3;
            }
        }
        0.0
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Averages class probabilities over the last `window` frames.
struct Smoother {
    window: usize,
    history: VecDeque<Vec<f32>>,
    sum: Vec<f32>,
    log_mean: Vec<f32>,
}

impl Smoother {
    fn new(window: usize, classes: usize) -> Smoother {
        Smoother {
            window,
            history: VecDeque::with_capacity(window + 1),
            sum: vec![0.0; classes],
            log_mean: vec![0.0; classes],
        }
    }

    /// Adds this frame's logits and returns logits whose softmax is the
    /// windowed mean of the probabilities.
    fn push(&mut self, logits: &[f32]) -> &[f32] {
        let mut probs = if self.history.len() == self.window {
            let old = self.history.pop_front().expect("window is full");
            self.sum.iter_mut().zip(&old).for_each(|(s, o)| *s -= o);
            old
        } else {
            vec![0.0; logits.len()]
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = logits.iter().map(|v| (v - max).exp()).sum();
        for (p, v) in probs.iter_mut().zip(logits) {
            *p = (v - max).exp() / total;
        }
        self.sum.iter_mut().zip(&probs).for_each(|(s, p)| *s += p);
        self.history.push_back(probs);
        let n = self.history.len() as f32;
        for (l, s) in self.log_mean.iter_mut().zip(&self.sum) {
            *l = (s.max(0.0) / n).max(f32::MIN_POSITIVE).ln();
        }
        &self.log_mean
    }
}

/// How the loop reports and ranks.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    pub top_k: usize,
    pub threshold: f32,
    /// Average probabilities over this many frames (1: none).
    pub smoothing: usize,
    /// Print the stage table every this many frames (and at exit); 0: only at exit.
    pub profile_every: Option<u64>,
    /// One JSON line per frame on stdout.
    pub json: bool,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
}

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    pub frames: u64,
    pub dropped: u64,
    pub seconds: f64,
    pub stages: [Histogram; 5],
}

impl Summary {
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// The per-stage table, one line per stage.
    pub fn table(&self) -> String {
        let mut s = format!("{:<12} {:>10} {:>10}\n", "stage", "p50 ms", "p99 ms");
        for (name, h) in STAGES.iter().zip(&self.stages) {
            s += &format!("{name:<12} {:>10.3} {:>10.3}\n", h.quantile_ms(0.5), h.quantile_ms(0.99));
        }
        s
    }
}

/// Consumes frames from `slot` until the stream ends or `stop` is set.
/// An engine arriving on `updates` replaces `engine` between two frames.
pub fn consume(
    engine: &mut Engine,
    display: &mut dyn Display,
    slot: &Slot,
    stop: &AtomicBool,
    opts: &LoopOptions,
    updates: Option<&Receiver<Engine>>,
    out: &mut dyn Write,
) -> Result<Summary> {
    let mut topk = TopK::default();
    let mut ranked: Vec<Scored> = Vec::new();
    // The frame's logits, for `--json`.
    let mut raw: Vec<f32> = Vec::new();
    let mut smoother = Smoother::new(opts.smoothing.max(1), engine.labels.len());
    let mut stages: [Histogram; 5] = Default::default();
    let mut frames = 0u64;
    let mut fps = 0.0f32;
    let start = Instant::now();
    let mut last = start;
    while let Some(frame) = slot.take(stop)? {
        if let Some(new) = updates.and_then(|rx| rx.try_recv().ok()) {
            log::info!("now running {} v{} (was v{})", new.name, new.version, engine.version);
            drop(std::mem::replace(engine, new));
            release_free_memory();
            smoother = Smoother::new(opts.smoothing.max(1), engine.labels.len());
        }
        let backend = engine.backend.name();
        let t0 = Instant::now();
        engine.set_image(frame.image.view());
        let t1 = Instant::now();
        let logits = engine.run()?;
        let t2 = Instant::now();
        if opts.json {
            raw.clear();
            raw.extend_from_slice(logits);
        }
        let smoothed = smoother.push(logits);
        topk.rank(smoothed, opts.top_k, opts.threshold, &mut ranked);
        let t3 = Instant::now();
        let top: Vec<(f32, &str)> =
            ranked.iter().map(|s| (s.score, engine.labels[s.class].as_str())).collect();
        let content =
            OverlayContent { top: &top, model: &engine.name, version: engine.version, backend, fps };
        display.render(&frame.image, &content)?;
        display.present()?;
        let t4 = Instant::now();
        for (h, d) in stages.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]) {
            h.record(d);
        }
        frames += 1;
        crate::watchdog::alive();
        let dt = (t4 - last).as_secs_f32();
        last = t4;
        fps = if frames == 1 { 1.0 / dt.max(1e-6) } else { 0.9 * fps + 0.1 / dt.max(1e-6) };
        if opts.json {
            let prediction = Prediction {
                image: None,
                frame: Some(frame.index),
                model: &engine.name,
                version: engine.version,
                backend,
                top_k: Ranked::named(&ranked, &engine.labels),
                logits: &raw,
            };
            writeln!(out, "{}", serde_json::to_string(&prediction)?)?;
        }
        if let Some(every) = opts.profile_every.filter(|&n| n > 0 && frames.is_multiple_of(n)) {
            let summary = Summary {
                frames,
                dropped: slot.dropped(),
                seconds: start.elapsed().as_secs_f64(),
                stages: stages.clone(),
            };
            writeln!(out, "after {every} frames:\n{}", summary.table())?;
        }
        if opts.max_frames.is_some_and(|m| frames >= m) {
            stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    Ok(Summary { frames, dropped: slot.dropped(), seconds: start.elapsed().as_secs_f64(), stages })
}

/// Hands the heap pages freed by a dropped engine back to the kernel. The
/// new engine was built on the update thread, in another allocator arena
/// than the one being freed, and glibc keeps freed pages resident: without
/// this, RSS grew by most of a model per swap (`tools/soak.sh`).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens the pieces and runs the loop: capture thread plus consumer.
/// SIGINT and SIGTERM stop it cleanly.
pub fn run(
    source: Box<dyn Source>,
    engine: &mut Engine,
    display: &mut dyn Display,
    opts: &LoopOptions,
    updates: Option<&Receiver<Engine>>,
    out: &mut dyn Write,
) -> Result<Summary> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot install signal handlers")?;
    }
    let slot = Arc::new(Slot::default());
    let producer = {
        let (slot, stop) = (slot.clone(), stop.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture(source, &slot, &stop))
            .context("cannot start the capture thread")?
    };
    let result = consume(engine, display, &slot, &stop, opts, updates, out);
    stop.store(true, Ordering::Relaxed);
    let _ = producer.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::PixelFormat;

    fn frame(index: u64) -> Frame {
        Frame { image: Image { width: 1, height: 1, format: PixelFormat::Gray8, data: vec![0] }, index }
    }

    #[test]
    fn live_slot_keeps_the_newest_and_counts_drops() {
        let (slot, stop) = (Slot::default(), AtomicBool::new(false));
        for i in 0..5 {
            slot.put(frame(i), true, &stop);
            assert_eq!(slot.depth(), 1);
        }
        assert_eq!(slot.take(&stop).unwrap().unwrap().index, 4);
        assert_eq!(slot.dropped(), 4);
        slot.end(None);
        assert!(slot.take(&stop).unwrap().is_none());
    }

    #[test]
    fn file_slot_waits_for_the_consumer() {
        let slot = Arc::new(Slot::default());
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (slot, stop) = (slot.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    slot.put(frame(i), false, &stop);
                }
                slot.end(None);
            })
        };
        let mut seen = Vec::new();
        while let Some(f) = slot.take(&stop).unwrap() {
            seen.push(f.index);
        }
        producer.join().unwrap();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(slot.dropped(), 0);
    }

    #[test]
    fn a_source_error_reaches_the_consumer_after_its_frames() {
        let (slot, stop) = (Slot::default(), AtomicBool::new(false));
        slot.put(frame(0), false, &stop);
        slot.end(Some(anyhow::anyhow!("camera gone")));
        assert!(slot.take(&stop).unwrap().is_some());
        assert_eq!(slot.take(&stop).unwrap_err().to_string(), "camera gone");
    }

    #[test]
    fn histogram_quantiles_land_in_the_right_bin() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((50.0..=51.1).contains(&p50), "{p50}");
        assert!((99.0..=101.0).contains(&p99), "{p99}");
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn smoothing_averages_probabilities() {
        let mut s = Smoother::new(2, 2);
        let a = s.push(&[0.0, 0.0]).to_vec(); // p = (0.5, 0.5)
        assert!((a[0].exp() - 0.5).abs() < 1e-6);
        let b = s.push(&[10.0, -10.0]).to_vec(); // p ~ (1, 0): mean (0.75, 0.25)
        assert!((b[0].exp() - 0.75).abs() < 1e-4 && (b[1].exp() - 0.25).abs() < 1e-4, "{b:?}");
        let c = s.push(&[10.0, -10.0]).to_vec(); // window of 2: mean (1, 0)
        assert!((c[0].exp() - 1.0).abs() < 1e-4, "{c:?}");
    }
}

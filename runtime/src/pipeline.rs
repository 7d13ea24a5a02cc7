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
use crate::stats::Stats;

/// One captured frame and its place in the stream.
#[derive(Debug)]
pub struct Frame {
    pub image: Image,
    /// 0-based capture index; gaps are dropped frames.
    pub index: u64,
    /// CPU time the capture thread spent on it since the frame before.
    pub capture_cpu: Duration,
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; this clock exists on every
    // Linux this runs on, and a failure leaves it zero.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
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
    #[cfg(any(test, feature = "testing"))]
    pub fn depth(&self) -> usize {
        usize::from(self.state.lock().expect("slot lock").frame.is_some())
    }
}

/// Runs `source` until it ends, fails or `stop` is set, putting frames in
/// `slot` (replacing untaken ones when the source is live).
pub fn capture(mut source: Box<dyn Source>, slot: &Slot, stop: &AtomicBool) {
    let live = source.is_live();
    let mut index = 0;
    let mut spent = thread_cpu();
    let error = loop {
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        match source.capture() {
            Ok(Capture::Frame(image)) => {
                let now = thread_cpu();
                let capture_cpu = now.saturating_sub(spent);
                spent = now;
                slot.put(Frame { image, index, capture_cpu }, live, stop);
                index += 1;
            }
            Ok(Capture::NotYet) => {}
            Ok(Capture::End) => break None,
            Err(e) => break Some(e),
        }
    };
    slot.end(error);
}

/// Averages class probabilities over the last `window` frames.
struct Smoother {
    window: usize,
    history: VecDeque<Vec<f32>>,
    sum: Vec<f32>,
    mean: Vec<f32>,
}

impl Smoother {
    fn new(window: usize) -> Smoother {
        Smoother { window, history: VecDeque::with_capacity(window + 1), sum: Vec::new(), mean: Vec::new() }
    }

    /// Adds this frame's probabilities and returns their mean over the window.
    fn push(&mut self, probs: &[f32]) -> &[f32] {
        let mut slot = if self.history.len() == self.window {
            let old = self.history.pop_front().expect("window is full");
            self.sum.iter_mut().zip(&old).for_each(|(s, o)| *s -= o);
            old
        } else {
            Vec::with_capacity(probs.len())
        };
        slot.clear();
        slot.extend_from_slice(probs);
        self.sum.resize(probs.len(), 0.0);
        self.sum.iter_mut().zip(&slot).for_each(|(s, p)| *s += p);
        self.history.push_back(slot);
        let n = self.history.len() as f32;
        self.mean.clear();
        self.mean.extend(self.sum.iter().map(|s| s.max(0.0) / n));
        &self.mean
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

/// What the consumer keeps from frame to frame: the ranking buffers and the
/// smoother.
struct Classifier {
    topk: TopK,
    ranked: Vec<Scored>,
    smoother: Smoother,
    /// The frame's logits, for `--json`.
    logits: Vec<f32>,
}

impl Classifier {
    fn new(smoothing: usize) -> Classifier {
        Classifier {
            topk: TopK::default(),
            ranked: Vec::new(),
            smoother: Smoother::new(smoothing.max(1)),
            logits: Vec::new(),
        }
    }

    /// Runs the network on `image` and ranks the classes by their
    /// probabilities averaged over the smoothing window. Returns when each
    /// step ended: input written, network run, classes ranked.
    fn classify(&mut self, engine: &mut Engine, image: &Image, opts: &LoopOptions) -> Result<[Instant; 3]> {
        engine.set_image(image.view());
        let input = Instant::now();
        let logits = engine.run()?;
        let network = Instant::now();
        if opts.json {
            self.logits.clear();
            self.logits.extend_from_slice(logits);
        }
        let mean = self.smoother.push(self.topk.probabilities(logits));
        self.topk.rank_probabilities(mean, opts.top_k, opts.threshold, &mut self.ranked);
        Ok([input, network, Instant::now()])
    }
}

/// Swaps in the engine an update delivered, if any, between two frames.
fn swap(
    engine: &mut Engine,
    updates: Option<&Receiver<Engine>>,
    classifier: &mut Classifier,
    opts: &LoopOptions,
) {
    let Some(new) = updates.and_then(|rx| rx.try_recv().ok()) else { return };
    log::info!("now running {} v{} (was v{})", new.name, new.version, engine.version);
    drop(std::mem::replace(engine, new));
    release_free_memory();
    // The new model may have other classes: start the average afresh.
    *classifier = Classifier::new(opts.smoothing);
}

/// Draws the frame with its classes and the FPS, and shows it.
fn overlay_and_present(
    display: &mut dyn Display,
    engine: &Engine,
    frame: &Frame,
    ranked: &[Scored],
    fps: f32,
) -> Result<()> {
    let top: Vec<(f32, &str)> = ranked.iter().map(|s| (s.score, engine.labels[s.class].as_str())).collect();
    let backend = engine.backend.name();
    let content = OverlayContent { top: &top, model: &engine.name, version: engine.version, backend, fps };
    display.render(&frame.image, &content)?;
    display.present()
}

/// Writes what `--json` and `--profile` ask for after a frame.
fn report(
    out: &mut dyn Write,
    engine: &Engine,
    display: &dyn Display,
    frame: &Frame,
    classifier: &Classifier,
    stats: &mut Stats,
    opts: &LoopOptions,
) -> Result<()> {
    if opts.json {
        let prediction = Prediction {
            image: None,
            frame: Some(frame.index),
            model: &engine.name,
            version: engine.version,
            backend: engine.backend.name(),
            top_k: Ranked::named(&classifier.ranked, &engine.labels),
            logits: &classifier.logits,
        };
        writeln!(out, "{}", serde_json::to_string(&prediction)?)?;
    }
    if let Some(every) = opts.profile_every.filter(|&n| n > 0 && stats.frames.is_multiple_of(n)) {
        stats.output_stage = display.profile();
        writeln!(out, "after {every} frames:\n{}", stats.table())?;
    }
    Ok(())
}

/// Consumes frames from `slot` until the stream ends or `stop` is set:
/// take, swap in an update, classify, overlay and present, record.
/// An engine arriving on `updates` replaces `engine` between two frames.
pub fn consume(
    engine: &mut Engine,
    display: &mut dyn Display,
    slot: &Slot,
    stop: &AtomicBool,
    opts: &LoopOptions,
    updates: Option<&Receiver<Engine>>,
    out: &mut dyn Write,
) -> Result<Stats> {
    let mut classifier = Classifier::new(opts.smoothing);
    let mut stats = Stats::new();
    while let Some(frame) = slot.take(stop)? {
        swap(engine, updates, &mut classifier, opts);
        let taken = Instant::now();
        let [input, network, ranked] = classifier.classify(engine, &frame.image, opts)?;
        overlay_and_present(display, engine, &frame, &classifier.ranked, stats.live_fps())?;
        let shown = Instant::now();
        stats
            .record([input - taken, network - input, ranked - network, shown - ranked, shown - taken], shown);
        stats.capture.record(frame.capture_cpu);
        crate::watchdog::alive();
        stats.dropped = slot.dropped();
        display.observe(&stats);
        report(out, engine, display, &frame, &classifier, &mut stats, opts)?;
        if opts.max_frames.is_some_and(|m| stats.frames >= m) {
            stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    stats.dropped = slot.dropped();
    stats.end();
    stats.output_stage = display.profile();
    Ok(stats)
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

/// Opens the pieces and runs the loop: capture thread plus consumer, then
/// finishes the output. SIGINT and SIGTERM stop it cleanly.
pub fn run(
    source: Box<dyn Source>,
    engine: &mut Engine,
    display: &mut dyn Display,
    opts: &LoopOptions,
    updates: Option<&Receiver<Engine>>,
    out: &mut dyn Write,
) -> Result<Stats> {
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
    // What was shown so far is kept (a recording is finished) even when
    // the source failed; the source's error comes first.
    let finished = display.finish();
    let stats = result?;
    finished?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::PixelFormat;

    fn frame(index: u64) -> Frame {
        let image = Image { width: 1, height: 1, format: PixelFormat::Gray8, data: vec![0] };
        Frame { image, index, capture_cpu: Duration::ZERO }
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
    fn smoothing_averages_probabilities() {
        let mut s = Smoother::new(2);
        assert_eq!(s.push(&[0.5, 0.5]), [0.5, 0.5]);
        assert_eq!(s.push(&[1.0, 0.0]), [0.75, 0.25]);
        // A window of 2: the first frame has left it.
        assert_eq!(s.push(&[1.0, 0.0]), [1.0, 0.0]);
    }
}

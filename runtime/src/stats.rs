//! What a run measures: per-stage latency histograms of constant size and
//! the counters and FPS of [`Stats`], which the summary prints and the
//! live view serves.

use std::fmt;
use std::time::{Duration, Instant};

/// The stages timed per frame.
pub const STAGES: [&str; 5] = ["Preprocess", "Network", "Postprocess", "Overlay", "Total"];

/// Latency distribution of one stage in fixed log-spaced bins (2% wide, from
/// 1 us to about 10 min): constant memory however long the run.
#[derive(Clone, Debug)]
pub struct Histogram {
    bins: Vec<u64>,
    count: u64,
    /// Of all recorded durations, in seconds.
    sum: f64,
}

const BIN_BASE: f64 = 1.02;
const BINS: usize = 1400;

impl Default for Histogram {
    fn default() -> Self {
        Histogram { bins: vec![0; BINS], count: 0, sum: 0.0 }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let bin = if us <= 1.0 { 0 } else { (us.ln() / BIN_BASE.ln()) as usize + 1 };
        self.bins[bin.min(BINS - 1)] += 1;
        self.count += 1;
        self.sum += d.as_secs_f64();
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the recorded durations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum
    }

    /// How many durations were at most `seconds`, to the bins' 2%: those
    /// of the bins whose upper edge is not above it.
    pub fn count_at_most(&self, seconds: f64) -> u64 {
        let us = seconds * 1e6;
        self.bins
            .iter()
            .enumerate()
            .take_while(|(bin, _)| BIN_BASE.powi(*bin as i32) <= us)
            .map(|(_, &n)| n)
            .sum()
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
}

/// What a run did and how fast: frames, drops, the stage histograms and
/// the FPS the overlay shows. Printed, it is the summary `run` ends with.
#[derive(Clone, Debug)]
pub struct Stats {
    pub frames: u64,
    pub dropped: u64,
    /// From the loop's start to its last frame (to its end, once finished).
    pub seconds: f64,
    pub stages: [Histogram; 5],
    /// The capture thread's CPU time per frame (decoding a file, converting
    /// a camera's pixels, copying a GStreamer frame out).
    pub capture: Histogram,
    /// The output's own stage, off the loop (the JPEG encoder of `http://`).
    pub output_stage: Option<(&'static str, Histogram)>,
    /// Frames per second, smoothed over the last few frames.
    live_fps: f32,
    start: Instant,
    last: Instant,
}

impl Stats {
    pub fn new() -> Stats {
        let now = Instant::now();
        Stats {
            frames: 0,
            dropped: 0,
            seconds: 0.0,
            stages: Default::default(),
            capture: Histogram::default(),
            output_stage: None,
            live_fps: 0.0,
            start: now,
            last: now,
        }
    }

    /// Counts a frame whose stages took `times` (in [`STAGES`] order) and
    /// that was on screen at `shown`.
    pub fn record(&mut self, times: [Duration; 5], shown: Instant) {
        for (h, d) in self.stages.iter_mut().zip(times) {
            h.record(d);
        }
        self.frames += 1;
        let rate = 1.0 / (shown - self.last).as_secs_f32().max(1e-6);
        self.live_fps = if self.frames == 1 { rate } else { 0.9 * self.live_fps + 0.1 * rate };
        self.last = shown;
        self.seconds = (shown - self.start).as_secs_f64();
    }

    /// Frames per second, smoothed over the last few frames.
    pub fn live_fps(&self) -> f32 {
        self.live_fps
    }

    /// Marks the end of the run: the time it took, to now.
    pub fn end(&mut self) {
        self.seconds = self.start.elapsed().as_secs_f64();
    }

    /// Mean frames per second over the run.
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// The per-stage table, one line per stage.
    pub fn table(&self) -> String {
        let mut s = format!("{:<12} {:>10} {:>10}\n", "stage", "p50 ms", "p99 ms");
        for (name, h) in STAGES.iter().zip(&self.stages) {
            s += &format!("{name:<12} {:>10.3} {:>10.3}\n", h.quantile_ms(0.5), h.quantile_ms(0.99));
        }
        let off_loop = [
            Some(("Capture", &self.capture, "capture thread CPU")),
            self.output_stage.as_ref().map(|(n, h)| (*n, h, "output thread")),
        ];
        for (name, h, what) in off_loop.into_iter().flatten().filter(|(_, h, _)| h.count() > 0) {
            s += &format!(
                "{name:<12} {:>10.3} {:>10.3}   ({what}, {} frames)\n",
                h.quantile_ms(0.5),
                h.quantile_ms(0.99),
                h.count()
            );
        }
        s
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} frames, {} dropped, {:.1} FPS over {:.2} s",
            self.frames,
            self.dropped,
            self.fps(),
            self.seconds
        )?;
        f.write_str(&self.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

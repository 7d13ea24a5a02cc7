//! `edgevit bench`: latency percentiles, throughput, cold start and peak memory
//! of one engine, measured in-process. Comparisons with peers live in `tools/`.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::engine::{Engine, EngineInfo, OpTime};

#[derive(Debug, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub engine: EngineInfo,
    pub threads: usize,
    /// Images per run.
    pub batch: usize,
    pub iterations: usize,
    /// Latency of one run (one batch), milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Images per second over the timed runs.
    pub throughput: f64,
    /// From `main` to the first classification result, milliseconds.
    pub cold_start_ms: f64,
    /// Peak resident set size of the process, MiB.
    pub peak_rss_mib: f64,
    /// The CPU backend's micro-kernel for products and attention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_kernel: Option<&'static str>,
    /// Where the model's weights are int8 (CPU backend): the int8 kernel's
    /// name, or `f32` on a CPU without a fast one; and that in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8_kernel: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8: Option<String>,
    /// Time per run by kind of op, when asked for (`--ops`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<OpTime>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({} thread(s)), batch {}, {} iterations",
            self.engine, self.threads, self.batch, self.iterations
        )?;
        writeln!(
            f,
            "  latency      p50 {:.3} ms   p99 {:.3} ms   mean {:.3} ms",
            self.p50_ms, self.p99_ms, self.mean_ms
        )?;
        writeln!(f, "  throughput   {:.1} images/s", self.throughput)?;
        writeln!(f, "  cold start   {:.1} ms (main to first result)", self.cold_start_ms)?;
        writeln!(f, "  peak RSS     {:.1} MiB", self.peak_rss_mib)?;
        if let Some(kernel) = self.cpu_kernel {
            writeln!(f, "  cpu kernel   {kernel} (products and attention)")?;
        }
        if let Some(int8) = &self.int8 {
            writeln!(f, "  int8         {int8}")?;
        }
        if !self.ops.is_empty() {
            writeln!(f, "  by op (ms per run, nodes):")?;
            for op in &self.ops {
                writeln!(f, "    {:>9.3}  {:>4}  {}", op.ms, op.count, op.op)?;
            }
        }
        Ok(())
    }
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Peak resident set size of this process in bytes (`VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `iterations` runs of the engine on the input already in place, after
/// `warmup` untimed ones. `first_result` is how long the process took from
/// `main` to its first classification.
pub fn run(
    engine: &mut Engine,
    warmup: usize,
    iterations: usize,
    first_result: Duration,
) -> Result<BenchReport> {
    for _ in 0..warmup {
        engine.run()?;
    }
    let mut samples = Vec::with_capacity(iterations);
    let start = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        engine.run()?;
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() / iterations.max(1) as f64;
    Ok(BenchReport {
        engine: engine.info(),
        threads: engine.threads,
        batch: engine.batch,
        iterations,
        p50_ms: ms(quantile(&samples, 0.5)),
        p99_ms: ms(quantile(&samples, 0.99)),
        mean_ms: mean * 1e3,
        throughput: (iterations * engine.batch) as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE),
        cold_start_ms: ms(first_result),
        peak_rss_mib: peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
        cpu_kernel: engine.cpu.map(|c| c.kernels.f32.name()),
        int8_kernel: engine.cpu.and_then(|c| c.int8_kernel()),
        int8: engine.cpu.and_then(|c| c.int8()),
        ops: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&s, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&s[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        assert!(peak_rss_bytes().unwrap() > 0);
    }
}

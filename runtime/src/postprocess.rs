//! Logits to the answer: softmax, top-k above a threshold, and the
//! [`Prediction`] that `classify --json` and `run --json` print.

use serde::Serialize;

/// One ranked class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub class: usize,
    /// Softmax probability in [0, 1].
    pub score: f32,
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best
}

/// How logits become the answer: the flags of `run` and `classify`.
#[derive(Debug, clap::Args)]
pub struct PostprocessArgs {
    /// Number of classes to report per image (0: all).
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Report only classes whose score is at least this (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub threshold: f32,
}

/// Ranks classes by softmax score; reuses its buffers between calls.
#[derive(Debug, Default)]
pub struct TopK {
    probs: Vec<f32>,
    order: Vec<usize>,
}

impl TopK {
    /// The softmax of `logits`, in a buffer kept for the next call.
    pub fn probabilities(&mut self, logits: &[f32]) -> &[f32] {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        self.probs.extend(logits.iter().map(|v| (v - max).exp()));
        let sum: f32 = self.probs.iter().sum();
        self.probs.iter_mut().for_each(|p| *p /= sum);
        &self.probs
    }

    /// Writes into `out` the `k` best classes whose score is at least
    /// `threshold`, best first. `k = 0` keeps every class.
    pub fn rank(&mut self, logits: &[f32], k: usize, threshold: f32, out: &mut Vec<Scored>) {
        self.probabilities(logits);
        rank_into(&mut self.order, &self.probs, k, threshold, out);
    }

    /// [`TopK::rank`] of classes whose probabilities are already known
    /// (e.g. averaged over frames).
    pub fn rank_probabilities(&mut self, probs: &[f32], k: usize, threshold: f32, out: &mut Vec<Scored>) {
        rank_into(&mut self.order, probs, k, threshold, out);
    }
}

fn rank_into(order: &mut Vec<usize>, probs: &[f32], k: usize, threshold: f32, out: &mut Vec<Scored>) {
    out.clear();
    order.clear();
    order.extend(0..probs.len());
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let k = if k == 0 { probs.len() } else { k };
    out.extend(
        order
            .iter()
            .take(k)
            .map(|&class| Scored { class, score: probs[class] })
            .filter(|s| s.score >= threshold),
    );
}

/// One classification, as `classify --json` (per image) and `run --json`
/// (per frame) print it: one JSON object a line, the schema of
/// doc/pipeline.md.
#[derive(Debug, Serialize)]
pub struct Prediction<'a> {
    /// The image file (`classify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The frame's index in the stream (`run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    pub model: &'a str,
    pub version: u64,
    pub backend: &'a str,
    /// The best classes, best first: at most `--top-k`, none under
    /// `--threshold` (in `run`, of the probabilities `--smoothing` averaged).
    pub top_k: Vec<Ranked<'a>>,
    /// The network's logits for this image, one per class.
    pub logits: &'a [f32],
}

/// The text form: the image (or frame), then one `NN.NN% label` line per
/// ranked class.
impl std::fmt::Display for Prediction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.image, self.frame) {
            (Some(image), _) => writeln!(f, "{image}")?,
            (None, Some(frame)) => writeln!(f, "frame {frame}")?,
            (None, None) => {}
        }
        for r in &self.top_k {
            writeln!(f, "{:6.2}% {}", r.score * 100.0, r.label)?;
        }
        Ok(())
    }
}

/// A class of [`Prediction::top_k`].
#[derive(Debug, Serialize)]
pub struct Ranked<'a> {
    pub class: usize,
    pub label: &'a str,
    /// Softmax probability in [0, 1].
    pub score: f32,
}

impl<'a> Ranked<'a> {
    /// `ranked`, named by `labels`.
    pub fn named(ranked: &[Scored], labels: &'a [String]) -> Vec<Ranked<'a>> {
        ranked.iter().map(|s| Ranked { class: s.class, label: &labels[s.class], score: s.score }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_softmax_and_applies_k_and_threshold() {
        let mut topk = TopK::default();
        let mut out = Vec::new();
        let logits = [1.0, 3.0, 2.0, 3.0];
        topk.rank(&logits, 3, 0.0, &mut out);
        assert_eq!(out.iter().map(|s| s.class).collect::<Vec<_>>(), [1, 3, 2]);
        let total: f32 = {
            let mut all = Vec::new();
            topk.rank(&logits, 0, 0.0, &mut all);
            all.iter().map(|s| s.score).sum()
        };
        assert!((total - 1.0).abs() < 1e-6);
        topk.rank(&logits, 0, 0.3, &mut out);
        assert_eq!(out.iter().map(|s| s.class).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(argmax(&logits), 1);
    }
}

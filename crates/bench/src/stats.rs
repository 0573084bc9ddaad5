//! Latency summaries.

use std::time::{Duration, Instant};

/// p50/p95/max of one operation's samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p95: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut s = samples.to_vec();
        s.sort_unstable();
        Summary {
            n: s.len(),
            p50: percentile(&s, 50),
            p95: percentile(&s, 95),
            max: s.last().copied().unwrap_or_default(),
        }
    }
}

/// Nearest-rank percentile of sorted samples: an observed value, never an
/// interpolation between two.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bounds a measurement loop by count and by wall time, so a slow size
/// still finishes with however many samples fitted.
pub struct Budget {
    iterations: usize,
    limit: Duration,
    start: Instant,
}

impl Budget {
    pub fn new(iterations: usize, limit: Duration) -> Self {
        Budget {
            iterations,
            limit,
            start: Instant::now(),
        }
    }

    /// Whether to take another sample, having taken `taken`. At least one
    /// is always taken so every row has a figure.
    pub fn more(&self, taken: usize) -> bool {
        taken == 0 || (taken < self.iterations && self.start.elapsed() < self.limit)
    }
}

/// VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc.
pub fn process_memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    use anyhow::Context;
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let sum = Summary::of(&s);
        assert_eq!(sum.p50, Duration::from_millis(50));
        assert_eq!(sum.p95, Duration::from_millis(95));
        assert_eq!(sum.max, Duration::from_millis(100));
        let one = Summary::of(&[Duration::from_millis(7)]);
        assert_eq!(
            (one.p50, one.p95, one.n),
            (Duration::from_millis(7), Duration::from_millis(7), 1)
        );
        assert_eq!(Summary::of(&[]).n, 0);
    }
}

//! Latency and outcome counting.

use std::sync::Mutex;
use std::time::Duration;

/// Collects every request's outcome and latency.
#[derive(Default)]
pub struct Recorder {
    samples: Mutex<Vec<(bool, Duration)>>,
}

/// Throughput and latency of a run.
pub struct Summary {
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
}

impl Recorder {
    pub fn record(&self, ok: bool, latency: Duration) {
        self.samples.lock().unwrap().push((ok, latency));
    }

    /// Adds every sample of `other` (one measurement made of several runs).
    pub fn absorb(&self, other: &Recorder) {
        let theirs = other.samples.lock().unwrap().clone();
        self.samples.lock().unwrap().extend(theirs);
    }

    /// Requests recorded, successful or not.
    pub fn count(&self) -> u64 {
        self.samples.lock().unwrap().len() as u64
    }

    /// Successful requests.
    pub fn ok(&self) -> u64 {
        self.samples.lock().unwrap().iter().filter(|s| s.0).count() as u64
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        let samples = self.samples.lock().unwrap();
        let mut latencies: Vec<Duration> = samples.iter().filter(|s| s.0).map(|s| s.1).collect();
        latencies.sort();
        let pick = |q: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i].as_secs_f64() * 1000.0
        };
        Summary {
            throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
            errors: samples.iter().filter(|s| !s.0).count() as u64,
        }
    }
}

/// The `q` quantile of `values` (nearest rank).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// CPU time the hypervisor gave to other guests ("steal" in `/proc/stat`) since a moment,
/// as a share of all CPU time: on a shared virtual machine, what makes one window slower
/// than the next with no change of ours. Zero where `/proc/stat` is not there.
pub struct Steal {
    steal: u64,
    total: u64,
}

impl Steal {
    pub fn now() -> Self {
        let line = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu  user nice system idle iowait irq softirq steal guest guest_nice
        let fields: Vec<u64> = line
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|f| f.parse().ok())
            .collect();
        Self {
            steal: fields.get(7).copied().unwrap_or(0),
            total: fields.iter().sum(),
        }
    }

    /// Percent of the CPU time since `self` that was stolen (NaN when none passed).
    pub fn percent_since(&self) -> f64 {
        let now = Self::now();
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return f64::NAN;
        }
        100.0 * now.steal.saturating_sub(self.steal) as f64 / total as f64
    }
}

//! Salesforce's daily API allocation, as each response's `Sforce-Limit-Info`
//! (`api-usage=USED/LIMIT`) reports it, turned into what callers may still do: everything
//! below `SALESFORCE_SLOW_BACKGROUND_PERCENT` (80 by default), only a slowed share for
//! background work (imports, reconciles) above it, and only live writes from
//! [`LIVE_WRITES_ONLY_AT`] percent. Each crossing is logged once, up or down.

use std::sync::atomic::{AtomicU8, Ordering};

/// Usage, in percent of the daily allocation, from which nothing but live writes may call.
pub const LIVE_WRITES_ONLY_AT: u64 = 95;

/// What the allocation still allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Allowance {
    /// Below [`SLOW_BACKGROUND_AT`]: every kind of call.
    Everything = 0,
    /// Background work takes a reduced share; live writes as usual.
    SlowBackground = 1,
    /// Only live writes (the changes users make).
    LiveWritesOnly = 2,
}

impl Allowance {
    fn of(used: u64, limit: u64, slow_background_at: u64) -> Self {
        let percent = used.saturating_mul(100) / limit.max(1);
        if percent >= LIVE_WRITES_ONLY_AT {
            Allowance::LiveWritesOnly
        } else if percent >= slow_background_at {
            Allowance::SlowBackground
        } else {
            Allowance::Everything
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Allowance::Everything,
            1 => Allowance::SlowBackground,
            _ => Allowance::LiveWritesOnly,
        }
    }
}

/// `(used, limit)` from a `Sforce-Limit-Info` value such as `api-usage=25/15000`.
pub fn parse_usage(header: &str) -> Option<(u64, u64)> {
    let usage = header
        .split(',')
        .find_map(|part| part.trim().strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    let limit: u64 = limit.trim().parse().ok().filter(|l| *l > 0)?;
    Some((used.trim().parse().ok()?, limit))
}

/// The org's allowance as last reported, shared by every call of one client.
#[derive(Debug)]
pub struct Allocation {
    level: AtomicU8,
    slow_background_at: u64,
}

impl Allocation {
    /// Tracks an org whose background work slows past `slow_background_at` percent.
    pub fn new(slow_background_at: u64) -> Self {
        Self {
            level: AtomicU8::new(Allowance::Everything as u8),
            slow_background_at,
        }
    }

    /// What the last report allows.
    pub fn allowance(&self) -> Allowance {
        Allowance::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Notes a response's `Sforce-Limit-Info`; returns the new allowance when this report
    /// crossed a threshold (and logs it), `None` otherwise.
    pub fn report(&self, header: &str) -> Option<Allowance> {
        let (used, limit) = parse_usage(header)?;
        let now = Allowance::of(used, limit, self.slow_background_at);
        let before = Allowance::from_u8(self.level.swap(now as u8, Ordering::Relaxed));
        if now == before {
            return None;
        }
        match now {
            Allowance::Everything => tracing::info!(used, limit, "Salesforce API usage back under {}% of the daily allocation: every call resumes", self.slow_background_at),
            Allowance::SlowBackground => tracing::warn!(used, limit, "Salesforce API usage past {}% of the daily allocation: background work slows down", self.slow_background_at),
            Allowance::LiveWritesOnly => tracing::warn!(used, limit, "Salesforce API usage past {LIVE_WRITES_ONLY_AT}% of the daily allocation: only live writes call Salesforce"),
        }
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_the_header_and_garbage_is_ignored() {
        assert_eq!(parse_usage("api-usage=25/15000"), Some((25, 15000)));
        assert_eq!(
            parse_usage("per-app-api-usage=1/10, api-usage=7/100"),
            Some((7, 100))
        );
        assert_eq!(parse_usage("api-usage=7/0"), None);
        assert_eq!(parse_usage("api-usage=x/100"), None);
        assert_eq!(parse_usage("nonsense"), None);
    }

    #[test]
    fn each_crossing_is_reported_once_in_either_direction() {
        let allocation = Allocation::new(80);
        assert_eq!(allocation.report("api-usage=100/1000"), None);
        assert_eq!(allocation.report("api-usage=799/1000"), None);
        assert_eq!(
            allocation.report("api-usage=800/1000"),
            Some(Allowance::SlowBackground)
        );
        assert_eq!(allocation.report("api-usage=900/1000"), None);
        assert_eq!(
            allocation.report("api-usage=950/1000"),
            Some(Allowance::LiveWritesOnly)
        );
        assert_eq!(allocation.allowance(), Allowance::LiveWritesOnly);
        assert_eq!(allocation.report("api-usage=999/1000"), None);
        // The rolling 24 hours bring usage down again.
        assert_eq!(
            allocation.report("api-usage=10/1000"),
            Some(Allowance::Everything)
        );
        assert_eq!(allocation.report("garbage"), None);
        assert_eq!(allocation.allowance(), Allowance::Everything);
    }
}

//! A client-side rate limit shared by every call of one provider in this process.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces calls evenly at `per_second`, allowing a burst of one second's worth.
pub struct RateLimiter {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `per_second` calls.
    pub fn new(per_second: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        Self {
            interval,
            burst: Duration::from_secs(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            // Unused capacity accrues up to one second's worth, no more.
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            let slot = (*next).max(earliest);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_burst_are_spaced_at_the_rate() {
        let limiter = RateLimiter::new(10);
        // Let a full burst accrue, as after an idle second.
        tokio::time::advance(Duration::from_secs(2)).await;
        let start = Instant::now();
        for _ in 0..30 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        // 10 from the burst at once, then 20 at 100 ms apart (the first one immediately).
        assert!(elapsed >= Duration::from_millis(1_900), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(2_100), "{elapsed:?}");
    }
}

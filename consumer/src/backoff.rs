//! Exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// The wait before attempt `attempts + 1`: 0.5 s doubling to at most `max`, times a random
/// factor in [0.5, 1] so that many failing tasks do not retry in step; never shorter than
/// the provider's `Retry-After`.
pub fn delay(attempts: i32, retry_after: Option<Duration>, max: Duration) -> Duration {
    let exponent = attempts.clamp(1, 16) as u32 - 1;
    let base = (0.5 * 2f64.powi(exponent as i32)).min(max.as_secs_f64());
    let jittered = base * rand::thread_rng().gen_range(0.5..=1.0);
    let computed = Duration::from_secs_f64(jittered);
    match retry_after {
        Some(after) if after > computed => after.min(Duration::from_secs(600)),
        _ => computed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_honour_retry_after() {
        let max = Duration::from_secs(60);
        for attempts in 1..30 {
            let d = delay(attempts, None, max);
            let base = (0.5 * 2f64.powi(attempts.min(16) - 1)).min(60.0);
            assert!(d.as_secs_f64() >= base * 0.5 - 1e-9 && d.as_secs_f64() <= base + 1e-9);
        }
        assert_eq!(
            delay(1, Some(Duration::from_secs(7)), max),
            Duration::from_secs(7)
        );
        assert!(delay(1, Some(Duration::from_millis(1)), max) >= Duration::from_millis(250));
        assert!(delay(20, None, Duration::from_millis(100)) <= Duration::from_millis(100));
    }
}

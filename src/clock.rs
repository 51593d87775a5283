//! Deadlines that cannot overflow: a deadline too far to represent is simply far away.

use std::time::{Duration, Instant};

/// Further than any deadline baton sets on purpose, close enough never to overflow.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d`, or a century from now when that cannot be represented: a huge timeout
/// means "practically never", not a crash of the supervisor in the middle of a stop.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_are_far_away_not_a_panic() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(50 * 365 * 24 * 3600));
        assert_eq!(far.saturating_duration_since(now), FAR);
    }
}

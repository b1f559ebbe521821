//! Asking a pass to stop consuming (SIGINT/SIGTERM on the command line). The Lambda's stop
//! never fires: its pass ends on its budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How long the batches in hand get to finish once a pass is stopped: their claims, sends,
/// receipts and confirms. After it they are dropped as in a crash, which the dedup protocol
/// makes safe: nothing is confirmed before its receipt, so TMC redelivers what was left.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// A stop signal shared by a pass and whoever may stop it. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Stop {
    fired: Arc<watch::Sender<bool>>,
    /// The time the batches in hand get once it fires.
    grace: Duration,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new(STOP_GRACE)
    }
}

impl Stop {
    /// A stop with `grace` for the batches in hand.
    pub fn new(grace: Duration) -> Self {
        Self {
            fired: Arc::new(watch::channel(false).0),
            grace,
        }
    }

    /// A stop nobody fires (the Lambda's).
    pub fn never() -> Self {
        Self::default()
    }

    /// Stops the pass: no more consumes; the batches in hand finish within the grace.
    pub fn fire(&self) {
        self.fired.send_replace(true);
    }

    pub fn is_fired(&self) -> bool {
        *self.fired.borrow()
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Resolves once the stop fires (never, for a stop nobody fires).
    pub async fn fired(&self) {
        let mut rx = self.fired.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|fired| *fired).await;
    }

    /// Sleeps for `pause`, or less if the stop fires meanwhile.
    pub async fn sleep(&self, pause: Duration) {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = self.fired() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sleep ends when the stop fires, not when its pause is over; a fired stop stays fired.
    #[tokio::test(start_paused = true)]
    async fn sleep_wakes_when_fired() {
        let stop = Stop::default();
        let started = tokio::time::Instant::now();
        let firing = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            firing.fire();
        });
        stop.sleep(Duration::from_secs(3600)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(stop.is_fired());
        stop.fired().await;
    }

    /// A stop nobody fires lets a sleep run its full pause.
    #[tokio::test(start_paused = true)]
    async fn never_fires() {
        let stop = Stop::never();
        let started = tokio::time::Instant::now();
        stop.sleep(Duration::from_secs(60)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(!stop.is_fired());
    }
}

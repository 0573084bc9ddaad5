use std::time::Duration;

use crate::{PowerAction, PowerDriver, PowerError, PowerState};

/// How often and how patiently [`run_with_retries`] retries transient errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, including the first; 0 is treated as 1.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Sleep before retry number `retry` (1-based): initial doubled each time, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Runs `action`, retrying transient errors with exponential back-off; fatal,
/// invalid-parameter and unsupported errors return at once.
///
/// Returns the queried state for [`PowerAction::Query`]; for On/Off, the state
/// the machine is in afterwards when the driver's action is synchronous
/// ([`PowerDriver::confirms_state`]), else `None`.
pub async fn run_with_retries(
    driver: &dyn PowerDriver,
    action: PowerAction,
    policy: &RetryPolicy,
) -> Result<Option<PowerState>, PowerError> {
    let attempts = policy.attempts.max(1);
    let mut attempt = 1;
    loop {
        let result = match action {
            PowerAction::On => driver.power_on().await.map(|()| PowerState::On),
            PowerAction::Off => driver.power_off().await.map(|()| PowerState::Off),
            PowerAction::Query => driver.power_query().await,
        };
        match result {
            Ok(state) => {
                let known = action == PowerAction::Query || driver.confirms_state();
                return Ok(known.then_some(state));
            }
            Err(err) if err.is_transient() && attempt < attempts => {
                let wait = policy.backoff(attempt);
                tracing::warn!(
                    power_type = driver.power_type(),
                    ?action,
                    attempt,
                    attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %err,
                    "transient power error, retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tokio::time::Instant;

    /// Fails `failures` times with the given kind of error, then succeeds.
    struct Flaky {
        failures: u32,
        fatal: bool,
        calls: Arc<AtomicU32>,
    }

    impl Flaky {
        fn fail(&self) -> Result<(), PowerError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                Err(if self.fatal {
                    PowerError::fatal("flaky", "authentication failed")
                } else {
                    PowerError::transient("flaky", "timed out")
                })
            } else {
                Ok(())
            }
        }
    }

    #[async_trait::async_trait]
    impl PowerDriver for Flaky {
        fn power_type(&self) -> &'static str {
            "flaky"
        }
        fn confirms_state(&self) -> bool {
            true
        }
        async fn power_on(&self) -> Result<(), PowerError> {
            self.fail()
        }
        async fn power_off(&self) -> Result<(), PowerError> {
            self.fail()
        }
        async fn power_query(&self) -> Result<PowerState, PowerError> {
            self.fail().map(|()| PowerState::On)
        }
    }

    fn flaky(failures: u32, fatal: bool) -> (Flaky, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        (
            Flaky {
                failures,
                fatal,
                calls: calls.clone(),
            },
            calls,
        )
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        let got: Vec<u64> = (1..=7).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_backoff() {
        let (d, calls) = flaky(3, false);
        let start = Instant::now();
        let got = run_with_retries(&d, PowerAction::On, &RetryPolicy::default()).await;
        assert_eq!(got.unwrap(), Some(PowerState::On));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 500 + 1000 + 2000 ms of (virtual) back-off.
        assert_eq!(start.elapsed(), Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_attempts_with_last_error() {
        let (d, calls) = flaky(10, false);
        let start = Instant::now();
        let err = run_with_retries(&d, PowerAction::Query, &RetryPolicy::default())
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_error_is_not_retried() {
        let (d, calls) = flaky(10, true);
        let start = Instant::now();
        let err = run_with_retries(&d, PowerAction::Off, &RetryPolicy::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PowerError::Fatal { .. }), "{err:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn query_returns_state() {
        let (d, _) = flaky(0, false);
        let got = run_with_retries(&d, PowerAction::Query, &RetryPolicy::default()).await;
        assert_eq!(got.unwrap(), Some(PowerState::On));
    }
}

use crate::{PowerDriver, PowerError, PowerState};

/// The operator powers the machine by hand; actions only log.
#[derive(Debug, Default, Clone, Copy)]
pub struct ManualDriver;

#[async_trait::async_trait]
impl PowerDriver for ManualDriver {
    fn power_type(&self) -> &'static str {
        "manual"
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        tracing::info!("manual power: power the machine on by hand");
        Ok(())
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        tracing::info!("manual power: power the machine off by hand");
        Ok(())
    }

    async fn power_query(&self) -> Result<PowerState, PowerError> {
        Ok(PowerState::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{run_with_retries, PowerAction, RetryPolicy};

    #[tokio::test]
    async fn manual_does_nothing_and_knows_nothing() {
        let d = ManualDriver;
        let p = RetryPolicy::default();
        assert_eq!(
            run_with_retries(&d, PowerAction::On, &p).await.unwrap(),
            None
        );
        assert_eq!(
            run_with_retries(&d, PowerAction::Off, &p).await.unwrap(),
            None
        );
        assert_eq!(
            run_with_retries(&d, PowerAction::Query, &p).await.unwrap(),
            Some(PowerState::Unknown)
        );
    }
}

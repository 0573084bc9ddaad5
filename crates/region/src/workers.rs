//! The region's workers: power jobs and the watchdog. Each pass reads its
//! work from the store, so a region restarted mid-action picks up exactly
//! where the dead one stopped; every step is idempotent.

use std::time::Duration;

use kumo_model::lifecycle::Action;
use kumo_model::{Machine, MachineStatus, Millis, PowerState};
use kumo_power::{PowerAction, PowerError};
use kumo_store::{NewEvent, PowerJob, StoreError};
use tokio::sync::watch;

use crate::metrics::PowerLabels;
use crate::{Actor, Outcome, Region, RegionError};

fn to_model(s: kumo_power::PowerState) -> PowerState {
    match s {
        kumo_power::PowerState::On => PowerState::On,
        kumo_power::PowerState::Off => PowerState::Off,
        kumo_power::PowerState::Unknown => PowerState::Unknown,
    }
}

/// One query, no retries: a best-effort follow-up to an asynchronous action.
async fn query_state(driver: &dyn kumo_power::PowerDriver) -> PowerState {
    driver
        .power_query()
        .await
        .map(to_model)
        .unwrap_or(PowerState::Unknown)
}

/// How long a busy machine may be seen off before it fails: long enough
/// for a reboot that passes through off, short against any watchdog.
const POWERED_OFF_GRACE_MS: i64 = 4_000;

impl Region {
    /// Runs one power operation against the machine's driver, with retries.
    pub(crate) async fn run_power_op(
        &self,
        m: &Machine,
        op: &str,
    ) -> Result<PowerState, RegionError> {
        let params = self.power_parameters(m).await?;
        let driver = kumo_power::driver_for(&m.power_type, &params)?;
        let policy = &self.inner.config.power_retry;
        let result = async {
            match op {
                "on" | "off" => {
                    let action = if op == "on" {
                        PowerAction::On
                    } else {
                        PowerAction::Off
                    };
                    let state =
                        kumo_power::run_with_retries(driver.as_ref(), action, policy).await?;
                    Ok::<_, PowerError>(match state {
                        Some(s) => to_model(s),
                        None if driver.confirms_state() => {
                            if op == "on" {
                                PowerState::On
                            } else {
                                PowerState::Off
                            }
                        }
                        // Asynchronous peers: ask rather than assume.
                        None => query_state(driver.as_ref()).await,
                    })
                }
                "cycle" => {
                    // A machine that is on must go through off to boot afresh.
                    let now =
                        kumo_power::run_with_retries(driver.as_ref(), PowerAction::Query, policy)
                            .await;
                    if matches!(now, Ok(Some(kumo_power::PowerState::On))) {
                        kumo_power::run_with_retries(driver.as_ref(), PowerAction::Off, policy)
                            .await?;
                    }
                    let s = kumo_power::run_with_retries(driver.as_ref(), PowerAction::On, policy)
                        .await?;
                    Ok(match s {
                        Some(s) => to_model(s),
                        None if driver.confirms_state() => PowerState::On,
                        None => query_state(driver.as_ref()).await,
                    })
                }
                _ => Ok(
                    kumo_power::run_with_retries(driver.as_ref(), PowerAction::Query, policy)
                        .await?
                        .map(to_model)
                        .unwrap_or(PowerState::Unknown),
                ),
            }
        }
        .await;
        let label = PowerLabels {
            op: op.to_owned(),
            result: if result.is_ok() {
                "ok".into()
            } else {
                "error".into()
            },
        };
        self.inner
            .metrics
            .power_operations
            .get_or_create(&label)
            .inc();
        Ok(result?)
    }

    async fn run_power_job(&self, job: &PowerJob) -> Result<(), RegionError> {
        let m = match self.store().get_machine(&job.system_id).await {
            Ok(m) => m,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let sid = m.system_id.to_string();
        match self.run_power_op(&m, &job.op).await {
            Ok(state) => {
                let ev = NewEvent {
                    kind: "power",
                    message: format!("power {}: done, machine is {}", job.op, state.as_str()),
                };
                let m = self.record_power_state(&sid, state, Some(ev)).await?;
                if job.complete_status == Some(m.status) {
                    self.transition(&Actor::system(), &sid, Action::Succeeded, move |m| {
                        Ok(Some(m.status) == job.complete_status)
                    })
                    .await?;
                }
            }
            Err(e) => {
                let reason = format!("power {} failed: {e}", job.op);
                tracing::warn!(machine = %sid, "{reason}");
                let ev = NewEvent {
                    kind: "error",
                    message: reason.clone(),
                };
                let m = self
                    .record_power_state(&sid, PowerState::Error, Some(ev))
                    .await?;
                // A machine that cannot be powered cannot finish its task.
                if m.status.is_in_progress() {
                    self.transition(&Actor::system(), &sid, Action::Failed { reason }, |m| {
                        Ok(m.status.is_in_progress())
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Starts a task per machine with queued power jobs; one machine's jobs
    /// run in order, different machines in parallel.
    pub async fn dispatch_power_jobs(
        &self,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, RegionError> {
        let jobs = self.store().power_jobs().await?;
        let mut by_machine: std::collections::BTreeMap<String, Vec<PowerJob>> = Default::default();
        for j in jobs {
            by_machine.entry(j.system_id.clone()).or_default().push(j);
        }
        let mut handles = Vec::new();
        for (sid, jobs) in by_machine {
            if !self
                .inner
                .power_in_flight
                .lock()
                .expect("in-flight set")
                .insert(sid.clone())
            {
                continue;
            }
            let region = self.clone();
            handles.push(tokio::spawn(async move {
                for job in jobs {
                    if let Err(e) = region.run_power_job(&job).await {
                        tracing::error!(machine = %job.system_id, op = %job.op, "power job: {e}");
                    }
                    // Done, or failed and recorded: either way it must not run again.
                    if let Err(e) = region.store().delete_power_job(job.id).await {
                        tracing::error!(job = job.id, "deleting power job: {e}");
                    }
                }
                region
                    .inner
                    .power_in_flight
                    .lock()
                    .expect("in-flight set")
                    .remove(&sid);
                // Jobs queued while this batch ran are picked up promptly.
                region.inner.power_wakeup.notify_one();
            }));
        }
        Ok(handles)
    }

    /// Runs power jobs until none are queued or running (for tests and
    /// one-shot tools).
    pub async fn drain_power_jobs(&self) -> Result<(), RegionError> {
        loop {
            let handles = self.dispatch_power_jobs().await?;
            let busy = !self
                .inner
                .power_in_flight
                .lock()
                .expect("in-flight set")
                .is_empty();
            if handles.is_empty() && !busy && self.store().power_jobs().await?.is_empty() {
                return Ok(());
            }
            for h in handles {
                let _ = h.await;
            }
            if busy {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Fails every machine whose watchdog deadline has passed.
    pub async fn run_watchdog(&self) -> Result<usize, RegionError> {
        let now = self.now();
        let mut failed = 0;
        for m in self.store().machines_past_deadline(now).await? {
            let outcome = self
                .transition(
                    &Actor::system(),
                    m.system_id.as_str(),
                    Action::WatchdogExpired,
                    move |m| Ok(m.status.is_in_progress() && m.deadline.is_some_and(|d| d < now)),
                )
                .await;
            match outcome {
                Ok(Outcome::Applied(m)) => {
                    failed += 1;
                    self.inner.metrics.watchdog_expiries.inc();
                    tracing::warn!(machine = %m.system_id, status = %m.status, "watchdog expired");
                }
                Ok(Outcome::Skipped(_)) => {}
                Err(e) => tracing::error!(machine = %m.system_id, "watchdog: {e}"),
            }
        }
        Ok(failed)
    }

    /// Machines whose task runs in the network-booted environment and that
    /// are found powered off for longer than `grace_ms` cannot finish it:
    /// they fail now, saying so, instead of at the watchdog's deadline.
    /// Machines with manual power, and those with power jobs queued or
    /// running (a power cycle passes through off), are not judged.
    pub async fn check_busy_machines_power(&self, grace_ms: Millis) -> Result<usize, RegionError> {
        let busy = self
            .store()
            .list_machines(&kumo_store::MachineQuery {
                statuses: vec![
                    MachineStatus::Commissioning,
                    MachineStatus::Testing,
                    MachineStatus::Deploying,
                    MachineStatus::DiskErasing,
                    MachineStatus::EnteringRescueMode,
                ],
                ..Default::default()
            })
            .await?;
        let queued: std::collections::HashSet<String> = self
            .store()
            .power_jobs()
            .await?
            .into_iter()
            .map(|j| j.system_id)
            .collect();
        let mut failed = 0;
        let mut still_off = std::collections::HashSet::new();
        for m in busy {
            let sid = m.system_id.to_string();
            let in_flight = self
                .inner
                .power_in_flight
                .lock()
                .expect("in-flight set")
                .contains(&sid);
            if m.power_type == "manual" || in_flight || queued.contains(&sid) {
                continue;
            }
            let Ok(params) = self.power_parameters(&m).await else {
                continue;
            };
            let Ok(driver) = kumo_power::driver_for(&m.power_type, &params) else {
                continue;
            };
            if query_state(driver.as_ref()).await != PowerState::Off {
                continue;
            }
            let now = self.now();
            let since = *self
                .inner
                .seen_off
                .lock()
                .expect("seen-off map")
                .entry(sid.clone())
                .or_insert(now);
            still_off.insert(sid.clone());
            if now - since < grace_ms {
                continue;
            }
            let status = m.status;
            let reason = format!("machine powered off while {status}");
            let outcome = self
                .transition(
                    &Actor::system(),
                    &sid,
                    Action::Failed { reason },
                    move |m| Ok(m.status == status),
                )
                .await;
            if let Ok(Outcome::Applied(_)) = outcome {
                failed += 1;
                tracing::warn!(machine = %sid, %status, "machine powered off mid-task");
            }
        }
        self.inner
            .seen_off
            .lock()
            .expect("seen-off map")
            .retain(|sid, _| still_off.contains(sid));
        Ok(failed)
    }

    /// Refreshes the per-status machine gauges.
    pub async fn refresh_gauges(&self) -> Result<(), RegionError> {
        let machines = self.store().list_machines(&Default::default()).await?;
        for s in MachineStatus::ALL {
            let n = machines.iter().filter(|m| m.status == s).count() as i64;
            self.inner
                .metrics
                .machines
                .get_or_create(&crate::metrics::StatusLabels {
                    status: s.as_str().into(),
                })
                .set(n);
        }
        Ok(())
    }

    /// Runs the workers until `shutdown` turns true.
    pub fn spawn_workers(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let region = self.clone();
        tokio::spawn(async move {
            let interval = region.inner.config.poll_interval;
            loop {
                if let Err(e) = region.dispatch_power_jobs().await {
                    tracing::error!("power worker: {e}");
                }
                if let Err(e) = region.run_watchdog().await {
                    tracing::error!("watchdog: {e}");
                }
                if let Err(e) = region.check_busy_machines_power(POWERED_OFF_GRACE_MS).await {
                    tracing::error!("power check: {e}");
                }
                tokio::select! {
                    _ = region.inner.power_wakeup.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        })
    }
}

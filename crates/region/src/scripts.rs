//! Commissioning and testing scripts: the region keeps them, a commission
//! or test picks which ones its task runs (stored on the machine with the
//! transition that starts it), the booted machine fetches them and uploads
//! each run, and the region keeps the latest run of each script per
//! machine, with one event line each.

use kumo_model::lifecycle::MachineStatus;
use kumo_model::scripts::{
    self, NewScript, Script, ScriptInfo, ScriptResult, ScriptResultOutput, ScriptResultReport,
    ScriptTask, ScriptType, TaskScripts,
};
use kumo_model::Machine;
use kumo_store::{MachineQuery, NewEvent, StoreError};

use crate::{Actor, Region, RegionError};

impl Region {
    pub async fn scripts(&self) -> Result<Vec<ScriptInfo>, RegionError> {
        Ok(self.store().list_scripts().await?)
    }

    pub async fn script(&self, name: &str) -> Result<Script, RegionError> {
        Ok(self.store().get_script(name).await?)
    }

    pub async fn add_script(
        &self,
        actor: &Actor,
        req: NewScript,
    ) -> Result<ScriptInfo, RegionError> {
        Self::require_admin(actor, "adding a script")?;
        let script = Script::new(req, self.now())?;
        self.store().add_script(&script).await?;
        self.record_audit(
            actor,
            "add-script",
            format!("script/{}", script.info.name),
            format!(
                "{} ({} bytes, sha256 {})",
                script.info.script_type, script.info.size, script.info.sha256
            ),
        )
        .await?;
        Ok(script.info)
    }

    /// Deletes a script; one a running task still has to run stays.
    pub async fn delete_script(&self, actor: &Actor, name: &str) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a script")?;
        self.script(name).await?;
        let running = self
            .store()
            .list_machines(&MachineQuery {
                statuses: vec![MachineStatus::Commissioning, MachineStatus::Testing],
                ..Default::default()
            })
            .await?
            .into_iter()
            .filter(|m| {
                m.script_task
                    .as_ref()
                    .is_some_and(|t| t.scripts.iter().any(|s| s == name))
            })
            .count();
        if running > 0 {
            return Err(RegionError::InUse {
                what: "script",
                id: name.to_owned(),
                count: running as i64,
            });
        }
        self.store().delete_script(name).await?;
        self.record_audit(actor, "delete-script", format!("script/{name}"), "")
            .await
    }

    /// Chooses a task's scripts before anything moves, so an unknown name
    /// is refused before the machine is powered on.
    pub(crate) async fn plan_scripts(
        &self,
        script_type: ScriptType,
        requested: Option<&[String]>,
    ) -> Result<ScriptTask, RegionError> {
        let available = self.scripts().await?;
        Ok(ScriptTask {
            script_type,
            scripts: scripts::select(&available, script_type, requested)?,
            started_at: self.now(),
        })
    }

    /// The latest run of each script on a machine: commissioning first,
    /// then testing, each in the order they ran.
    pub async fn machine_script_results(&self, id: &str) -> Result<Vec<ScriptResult>, RegionError> {
        let m = self.machine(id).await?;
        let mut results = self.store().script_results(m.system_id.as_str()).await?;
        results.sort_by(|a, b| {
            (a.script_type, a.started_at, &a.name).cmp(&(b.script_type, b.started_at, &b.name))
        });
        Ok(results)
    }

    pub async fn machine_script_result(
        &self,
        id: &str,
        name: &str,
    ) -> Result<ScriptResultOutput, RegionError> {
        let m = self.machine(id).await?;
        self.store()
            .script_result(m.system_id.as_str(), name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => RegionError::NotFound {
                    what: "script result",
                    id: format!("{name} on machine {}", m.hostname),
                },
                other => other.into(),
            })
    }

    /// The machine's task and its type, for the machine-facing calls.
    async fn scripting_machine(&self, token: &str) -> Result<(Machine, ScriptType), RegionError> {
        let m = self.machine_for_token(token).await?;
        match ScriptType::for_status(m.status) {
            Some(t) => Ok((m, t)),
            None => Err(RegionError::invalid(
                "status",
                format!(
                    "machine {} is {}, not commissioning or testing",
                    m.system_id, m.status
                ),
            )),
        }
    }

    /// The scripts a commissioning or testing machine runs, in order.
    pub async fn task_scripts(&self, token: &str) -> Result<TaskScripts, RegionError> {
        let (m, script_type) = self.scripting_machine(token).await?;
        let names = match &m.script_task {
            Some(t) if t.script_type == script_type => t.scripts.clone(),
            // A task begun before the region knew scripts runs none.
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for name in names {
            out.push(self.script(&name).await.map_err(|e| match e {
                RegionError::NotFound { .. } => RegionError::invalid(
                    "scripts",
                    format!(
                        "script {name} of machine {}'s task was deleted; start the task again",
                        m.system_id
                    ),
                ),
                other => other,
            })?);
        }
        Ok(TaskScripts {
            system_id: m.system_id.to_string(),
            hostname: m.hostname.to_string(),
            script_type,
            scripts: out,
        })
    }

    /// A machine uploads one run of one of its task's scripts. It is kept
    /// as the machine's latest run of that script, recorded as an event
    /// and, being a report, pushes the watchdog's deadline out.
    pub async fn report_script_result(
        &self,
        token: &str,
        report: ScriptResultReport,
    ) -> Result<ScriptResult, RegionError> {
        let (m, script_type) = self.scripting_machine(token).await?;
        let task = match &m.script_task {
            Some(t) if t.script_type == script_type => t.clone(),
            _ => {
                return Err(RegionError::invalid(
                    "name",
                    format!(
                        "machine {}'s {script_type} task runs no scripts",
                        m.system_id
                    ),
                ))
            }
        };
        let sha256 = match self.store().get_script(&report.name).await {
            Ok(s) => s.info.sha256,
            Err(StoreError::NotFound { .. }) => String::new(),
            Err(e) => return Err(e.into()),
        };
        let stored = ScriptResultOutput::from_report(report, &task, &sha256, self.now())?;
        let result = stored.result.clone();
        let event = result.event_message();
        self.write_machine(m.system_id.as_str(), |m, w, _| {
            // The task may have ended or been replaced since it was read.
            if m.script_task.as_ref() != Some(&task) || !m.status.is_in_progress() {
                return Err(RegionError::invalid(
                    "status",
                    format!(
                        "machine {} is {}; its {script_type} task is over",
                        m.system_id, m.status
                    ),
                ));
            }
            m.deadline = self.timeout_ms(m.status).map(|t| w.now + t);
            w.script_result = Some(stored.clone());
            w.events.push(NewEvent {
                kind: "script",
                message: event.clone(),
            });
            Ok(())
        })
        .await?;
        Ok(result)
    }

    /// Why the machine's running task failed by its scripts' results, if
    /// it did: a machine that reports success must have passed them all.
    pub(crate) async fn script_failures(&self, m: &Machine) -> Result<Option<String>, RegionError> {
        let Some(script_type) = ScriptType::for_status(m.status) else {
            return Ok(None);
        };
        let Some(task) = m
            .script_task
            .as_ref()
            .filter(|t| t.script_type == script_type)
        else {
            return Ok(None);
        };
        let results = self.store().script_results(m.system_id.as_str()).await?;
        let runs: Vec<_> = results
            .iter()
            .filter(|r| r.script_type == script_type && r.task_started_at == task.started_at)
            .map(|r| (r.name.as_str(), r.outcome, r.exit_status))
            .collect();
        Ok(scripts::failure_summary(task, &runs))
    }
}

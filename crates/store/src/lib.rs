//! kumo's region store: one interface, two engines.
//!
//! Every query goes through sqlx's `Any` driver with portable SQL, so
//! SQLite (the zero-set-up default, one file in the data directory) and
//! PostgreSQL (for several region processes sharing state) run the same
//! code; only the auto-increment key in the DDL differs. Machines are one
//! row each: indexed columns for filtering plus the full record as JSON,
//! written with compare-and-swap on `version` so concurrent writers never
//! lose each other's changes.

mod schema;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::BTreeMap;
use std::str::FromStr;

use kumo_model::api::{AuditEvent, Group, MachineEvent, Tag, User};
use kumo_model::deploy::{Image, SshKey};
use kumo_model::scripts::{Script, ScriptInfo, ScriptResult, ScriptResultOutput};
use kumo_model::{Machine, MachineStatus, Millis};
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url {0:?}: expected sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("{what} {value:?} already exists")]
    Duplicate { what: &'static str, value: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("machine {0} was changed by another writer")]
    Conflict(String),
    #[error("{what} {id:?} is in use by {count} machines")]
    InUse {
        what: &'static str,
        id: String,
        count: i64,
    },
    #[error("corrupt stored {what} {id}")]
    Corrupt {
        what: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("migration {version} ({name}) failed")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
}

/// Filters for [`Store::list_machines`]; every set field must match.
#[derive(Clone, Debug, Default)]
pub struct MachineQuery {
    pub statuses: Vec<MachineStatus>,
    pub hostname: Option<String>,
    pub zone: Option<String>,
    pub pool: Option<String>,
    pub owner: Option<String>,
    pub arch: Option<String>,
    /// Machines carrying every one of these tags.
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAudit {
    pub username: String,
    pub action: String,
    pub object: String,
    pub detail: String,
}

/// Power work queued with a state change, so a region that dies between
/// the two resumes the work from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPowerJob {
    /// `on`, `off`, `cycle` or `query`.
    pub op: String,
    /// When set, the job's success completes the machine's in-progress
    /// status, if the machine is still in this status.
    pub complete_status: Option<MachineStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerJob {
    pub id: i64,
    pub system_id: String,
    pub op: String,
    pub complete_status: Option<MachineStatus>,
    pub created_at: Millis,
}

/// One atomic machine change: the new record (its `version` is the one
/// read; the store bumps it) and what must be written with it.
#[derive(Clone, Debug)]
pub struct MachineWrite<'a> {
    pub machine: &'a Machine,
    pub now: Millis,
    /// New sealed (encrypted) secret power parameters, if they changed.
    pub sealed_secrets: Option<&'a str>,
    pub replace_macs: bool,
    pub events: Vec<NewEvent>,
    pub jobs: Vec<NewPowerJob>,
    pub audit: Option<NewAudit>,
    /// Drop every machine-API token of this machine.
    pub revoke_tokens: bool,
    /// Store this token hash for the machine (after any revocation).
    pub new_token_hash: Option<String>,
    /// A script run to keep as the machine's latest of that script.
    pub script_result: Option<ScriptResultOutput>,
}

impl<'a> MachineWrite<'a> {
    pub fn new(machine: &'a Machine, now: Millis) -> Self {
        MachineWrite {
            machine,
            now,
            sealed_secrets: None,
            replace_macs: false,
            events: Vec::new(),
            jobs: Vec::new(),
            audit: None,
            revoke_tokens: false,
            new_token_hash: None,
            script_result: None,
        }
    }
}

/// A user's stored credentials.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub username: String,
    pub password_hash: String,
    pub admin: bool,
}

fn q(sql: &str) -> Query<'_, Any, AnyArguments<'_>> {
    sqlx::query(sql)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn b(v: bool) -> i64 {
    v as i64
}

impl Store {
    /// Opens (creating if needed) the database at `url` and migrates it.
    /// `sqlite:PATH` and `postgres://…` are understood.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (engine, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let url = if path.contains('?') {
                format!("sqlite://{path}")
            } else {
                format!("sqlite://{path}?mode=rwc")
            };
            (Engine::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Engine::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let opts = match engine {
            // SQLite serialises writers anyway; one connection means a
            // writer never meets SQLITE_BUSY from another of our own.
            Engine::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                // Callers queue for the one connection. On a loaded host (a
                // slow disk during a WAL checkpoint, a busy wait on another
                // process's lock) the queue can take longer than sqlx's 30 s
                // default, and a request should then wait, not fail with a
                // 500: seen once in metal_e2e while two TCG machines booted.
                .acquire_timeout(std::time::Duration::from_secs(300))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in [
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                }),
            Engine::Postgres => AnyPoolOptions::new().max_connections(16),
        };
        let pool = opts.connect(&url).await?;
        let store = Store { pool, engine };
        store.migrate().await?;
        Ok(store)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.engine == Engine::Postgres {
            // Several regions may start at once; one migrates, the rest wait.
            q("SELECT pg_advisory_lock(71530)")
                .execute(&mut *conn)
                .await?;
        }
        let result = async {
            q("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL)")
                .execute(&mut *conn)
                .await?;
            let applied: Vec<i64> = q("SELECT version FROM schema_migrations")
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| r.get::<i64, _>(0))
                .collect();
            let serial = match self.engine {
                Engine::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
                Engine::Postgres => "BIGSERIAL PRIMARY KEY",
            };
            for (version, name, sql) in schema::MIGRATIONS {
                if applied.contains(version) {
                    continue;
                }
                let sql = sql.replace("{serial}", serial);
                let run = async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                        q(stmt).execute(&mut *tx).await?;
                    }
                    q("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
                        .bind(*version)
                        .bind(*name)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await
                };
                run.await.map_err(|source| StoreError::Migration {
                    version: *version,
                    name,
                    source,
                })?;
                tracing::info!(version, name, "applied migration");
            }
            Ok::<_, StoreError>(())
        }
        .await;
        if self.engine == Engine::Postgres {
            q("SELECT pg_advisory_unlock(71530)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    // ---- machines -------------------------------------------------------

    fn machine_from_row(row: &AnyRow) -> Result<Machine, StoreError> {
        let id: String = row.get("system_id");
        let body: String = row.get("body");
        let mut m: Machine = serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
            what: "machine",
            id: id.clone(),
            source,
        })?;
        m.version = row.get("version");
        Ok(m)
    }

    fn body_of(m: &Machine) -> String {
        // Tags live in machine_tags; the body never carries a stale copy.
        let mut copy = m.clone();
        copy.tags.clear();
        serde_json::to_string(&copy).expect("a machine always serialises")
    }

    async fn tags_of(&self, ids: &[&str]) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let rows = if ids.len() == 1 {
            q("SELECT system_id, tag FROM machine_tags WHERE system_id = $1 ORDER BY tag")
                .bind(ids[0].to_owned())
                .fetch_all(&self.pool)
                .await?
        } else {
            q("SELECT system_id, tag FROM machine_tags ORDER BY tag")
                .fetch_all(&self.pool)
                .await?
        };
        for r in rows {
            out.entry(r.get("system_id"))
                .or_default()
                .push(r.get("tag"));
        }
        Ok(out)
    }

    pub async fn insert_machine(
        &self,
        m: &Machine,
        sealed_secrets: &str,
        audit: Option<NewAudit>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if q("SELECT 1 FROM machines WHERE hostname = $1")
            .bind(m.hostname.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::Duplicate {
                what: "hostname",
                value: m.hostname.to_string(),
            });
        }
        let res = q("INSERT INTO machines (system_id, hostname, status, owner, zone, pool, arch, deadline, version, body, sealed_secrets, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
            .bind(m.system_id.to_string())
            .bind(m.hostname.to_string())
            .bind(m.status.as_str())
            .bind(m.owner.clone())
            .bind(m.zone.to_string())
            .bind(m.pool.to_string())
            .bind(m.arch.clone())
            .bind(m.deadline)
            .bind(m.version)
            .bind(Self::body_of(m))
            .bind(sealed_secrets.to_owned())
            .bind(m.created_at)
            .bind(m.updated_at)
            .execute(&mut *tx)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    what: "machine",
                    value: m.hostname.to_string(),
                })
            }
            r => r?,
        };
        insert_macs(&mut tx, m).await?;
        for tag in &m.tags {
            ensure_tag(&mut tx, tag).await?;
            put_machine_tag(&mut tx, m.system_id.as_str(), tag, false).await?;
        }
        insert_event(
            &mut tx,
            m.system_id.as_str(),
            m.created_at,
            &NewEvent {
                kind: "status",
                message: format!("added as {}", m.status),
            },
        )
        .await?;
        if let Some(a) = audit {
            insert_audit(&mut tx, m.created_at, &a).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_machine(&self, system_id: &str) -> Result<Machine, StoreError> {
        let row = q("SELECT system_id, version, body FROM machines WHERE system_id = $1")
            .bind(system_id.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "machine",
                id: system_id.to_owned(),
            })?;
        let mut m = Self::machine_from_row(&row)?;
        m.tags = self
            .tags_of(&[system_id])
            .await?
            .remove(system_id)
            .unwrap_or_default();
        Ok(m)
    }

    /// Finds a machine by system id or hostname.
    pub async fn find_machine(&self, id_or_hostname: &str) -> Result<Machine, StoreError> {
        let row = q("SELECT system_id FROM machines WHERE system_id = $1 OR hostname = $2")
            .bind(id_or_hostname.to_owned())
            .bind(id_or_hostname.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "machine",
                id: id_or_hostname.to_owned(),
            })?;
        self.get_machine(&row.get::<String, _>(0)).await
    }

    pub async fn find_machine_by_mac(&self, mac: &str) -> Result<Option<Machine>, StoreError> {
        let row = q("SELECT system_id FROM machine_macs WHERE mac = $1")
            .bind(mac.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(self.get_machine(&r.get::<String, _>(0)).await?)),
            None => Ok(None),
        }
    }

    pub async fn list_machines(&self, query: &MachineQuery) -> Result<Vec<Machine>, StoreError> {
        let mut sql = String::from("SELECT system_id, version, body FROM machines WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut push = |sql: &mut String, col: &str, v: &str| {
            args.push(v.to_owned());
            sql.push_str(&format!(" AND {col} = ${}", args.len()));
        };
        if let Some(v) = &query.hostname {
            push(&mut sql, "hostname", &v.to_ascii_lowercase());
        }
        if let Some(v) = &query.zone {
            push(&mut sql, "zone", v);
        }
        if let Some(v) = &query.pool {
            push(&mut sql, "pool", v);
        }
        if let Some(v) = &query.owner {
            push(&mut sql, "owner", v);
        }
        if let Some(v) = &query.arch {
            push(&mut sql, "arch", v);
        }
        if !query.statuses.is_empty() {
            let list: Vec<String> = query
                .statuses
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            // Statuses come from a closed enum, so inlining them is safe.
            sql.push_str(&format!(" AND status IN ({})", list.join(", ")));
        }
        for t in &query.tags {
            args.push(t.clone());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM machine_tags mt WHERE mt.system_id = machines.system_id AND mt.tag = ${})",
                args.len()
            ));
        }
        sql.push_str(" ORDER BY hostname");
        let mut query_ = q(&sql);
        for a in &args {
            query_ = query_.bind(a.clone());
        }
        let rows = query_.fetch_all(&self.pool).await?;
        let mut machines = rows
            .iter()
            .map(Self::machine_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&str> = if machines.len() == 1 {
            vec![machines[0].system_id.as_str()]
        } else {
            vec![]
        };
        let mut tags = if machines.is_empty() {
            BTreeMap::new()
        } else {
            self.tags_of(&ids).await?
        };
        for m in &mut machines {
            m.tags = tags.remove(m.system_id.as_str()).unwrap_or_default();
        }
        Ok(machines)
    }

    pub async fn count_machines(&self) -> Result<i64, StoreError> {
        Ok(q("SELECT COUNT(*) FROM machines")
            .fetch_one(&self.pool)
            .await?
            .get(0))
    }

    /// Writes a changed machine and everything that goes with it in one
    /// transaction. Fails with [`StoreError::Conflict`] when the machine was
    /// changed since it was read; the caller re-reads and re-applies.
    pub async fn update_machine(&self, w: MachineWrite<'_>) -> Result<Machine, StoreError> {
        let mut m = w.machine.clone();
        let expected = m.version;
        m.version += 1;
        m.updated_at = w.now;
        let id = m.system_id.to_string();
        let mut tx = self.pool.begin().await?;
        let sql = if w.sealed_secrets.is_some() {
            "UPDATE machines SET hostname = $1, status = $2, owner = $3, zone = $4, pool = $5, arch = $6, deadline = $7, version = $8, body = $9, updated_at = $10, sealed_secrets = $13 WHERE system_id = $11 AND version = $12"
        } else {
            "UPDATE machines SET hostname = $1, status = $2, owner = $3, zone = $4, pool = $5, arch = $6, deadline = $7, version = $8, body = $9, updated_at = $10 WHERE system_id = $11 AND version = $12"
        };
        let mut query = q(sql)
            .bind(m.hostname.to_string())
            .bind(m.status.as_str())
            .bind(m.owner.clone())
            .bind(m.zone.to_string())
            .bind(m.pool.to_string())
            .bind(m.arch.clone())
            .bind(m.deadline)
            .bind(m.version)
            .bind(Self::body_of(&m))
            .bind(m.updated_at)
            .bind(id.clone())
            .bind(expected);
        if let Some(s) = w.sealed_secrets {
            query = query.bind(s.to_owned());
        }
        let res = match query.execute(&mut *tx).await {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    what: "hostname",
                    value: m.hostname.to_string(),
                })
            }
            r => r?,
        };
        if res.rows_affected() == 0 {
            let exists = q("SELECT 1 FROM machines WHERE system_id = $1")
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict(id),
                None => StoreError::NotFound {
                    what: "machine",
                    id,
                },
            });
        }
        if w.replace_macs {
            q("DELETE FROM machine_macs WHERE system_id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            insert_macs(&mut tx, &m).await?;
        }
        for e in &w.events {
            insert_event(&mut tx, &id, w.now, e).await?;
        }
        for j in &w.jobs {
            q("INSERT INTO power_jobs (system_id, op, complete_status, created_at) VALUES ($1, $2, $3, $4)")
                .bind(id.clone())
                .bind(j.op.clone())
                .bind(j.complete_status.map(|s| s.as_str()))
                .bind(w.now)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(a) = &w.audit {
            insert_audit(&mut tx, w.now, a).await?;
        }
        if w.revoke_tokens {
            q("DELETE FROM machine_tokens WHERE system_id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(h) = &w.new_token_hash {
            q("INSERT INTO machine_tokens (token_hash, system_id, created_at) VALUES ($1, $2, $3)")
                .bind(h.clone())
                .bind(id.clone())
                .bind(w.now)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(r) = &w.script_result {
            put_script_result(&mut tx, &id, r).await?;
        }
        tx.commit().await?;
        Ok(m)
    }

    pub async fn delete_machine(
        &self,
        system_id: &str,
        now: Millis,
        audit: Option<NewAudit>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let res = q("DELETE FROM machines WHERE system_id = $1")
            .bind(system_id.to_owned())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "machine",
                id: system_id.to_owned(),
            });
        }
        insert_event(
            &mut tx,
            system_id,
            now,
            &NewEvent {
                kind: "status",
                message: "deleted".into(),
            },
        )
        .await?;
        if let Some(a) = audit {
            insert_audit(&mut tx, now, &a).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn sealed_secrets(&self, system_id: &str) -> Result<String, StoreError> {
        let row = q("SELECT sealed_secrets FROM machines WHERE system_id = $1")
            .bind(system_id.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "machine",
                id: system_id.to_owned(),
            })?;
        Ok(row.get(0))
    }

    /// Machines in an in-progress status whose watchdog deadline passed.
    pub async fn machines_past_deadline(&self, now: Millis) -> Result<Vec<Machine>, StoreError> {
        let rows = q("SELECT system_id, version, body FROM machines WHERE deadline IS NOT NULL AND deadline < $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::machine_from_row).collect()
    }

    pub async fn machine_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<Machine>, StoreError> {
        let row = q("SELECT system_id FROM machine_tokens WHERE token_hash = $1")
            .bind(token_hash.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(self.get_machine(&r.get::<String, _>(0)).await?)),
            None => Ok(None),
        }
    }

    // ---- events ---------------------------------------------------------

    pub async fn add_machine_event(
        &self,
        system_id: &str,
        now: Millis,
        e: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, system_id, now, e).await
    }

    /// The newest `limit` events, oldest first; all machines when `system_id` is None.
    pub async fn machine_events(
        &self,
        system_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<MachineEvent>, StoreError> {
        let rows = match system_id {
            Some(id) => q("SELECT id, system_id, at, kind, message FROM machine_events WHERE system_id = $1 ORDER BY id DESC LIMIT $2")
                .bind(id.to_owned())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
            None => q("SELECT id, system_id, at, kind, message FROM machine_events ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        };
        let mut out: Vec<MachineEvent> = rows
            .iter()
            .map(|r| MachineEvent {
                id: r.get("id"),
                system_id: r.get("system_id"),
                at: r.get("at"),
                kind: r.get("kind"),
                message: r.get("message"),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    pub async fn add_audit(&self, now: Millis, a: &NewAudit) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, now, a).await
    }

    pub async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = q("SELECT id, at, username, action, object, detail FROM audit_events ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<AuditEvent> = rows
            .iter()
            .map(|r| AuditEvent {
                id: r.get("id"),
                at: r.get("at"),
                username: r.get("username"),
                action: r.get("action"),
                object: r.get("object"),
                detail: r.get("detail"),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    // ---- power jobs -----------------------------------------------------

    pub async fn power_jobs(&self) -> Result<Vec<PowerJob>, StoreError> {
        let rows =
            q("SELECT id, system_id, op, complete_status, created_at FROM power_jobs ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| PowerJob {
                id: r.get("id"),
                system_id: r.get("system_id"),
                op: r.get("op"),
                complete_status: r
                    .get::<Option<String>, _>("complete_status")
                    .and_then(|s| MachineStatus::parse(&s).ok()),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    pub async fn delete_power_job(&self, id: i64) -> Result<(), StoreError> {
        q("DELETE FROM power_jobs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- tags -----------------------------------------------------------

    pub async fn create_tag(&self, tag: &Tag) -> Result<(), StoreError> {
        let res = q("INSERT INTO tags (name, definition, comment) VALUES ($1, $2, $3)")
            .bind(tag.name.clone())
            .bind(tag.definition.clone())
            .bind(tag.comment.clone())
            .execute(&self.pool)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "tag",
                value: tag.name.clone(),
            }),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn update_tag(&self, tag: &Tag) -> Result<(), StoreError> {
        let res = q("UPDATE tags SET definition = $1, comment = $2 WHERE name = $3")
            .bind(tag.definition.clone())
            .bind(tag.comment.clone())
            .bind(tag.name.clone())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "tag",
                id: tag.name.clone(),
            });
        }
        Ok(())
    }

    pub async fn get_tag(&self, name: &str) -> Result<Tag, StoreError> {
        let r = q("SELECT name, definition, comment FROM tags WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "tag",
                id: name.to_owned(),
            })?;
        Ok(Tag {
            name: r.get(0),
            definition: r.get(1),
            comment: r.get(2),
        })
    }

    pub async fn list_tags(&self) -> Result<Vec<Tag>, StoreError> {
        let rows = q("SELECT name, definition, comment FROM tags ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Tag {
                name: r.get(0),
                definition: r.get(1),
                comment: r.get(2),
            })
            .collect())
    }

    pub async fn delete_tag(&self, name: &str) -> Result<(), StoreError> {
        let res = q("DELETE FROM tags WHERE name = $1")
            .bind(name.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "tag",
                id: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Adds and removes manual tags on machines (the tag must exist).
    pub async fn tag_machines(
        &self,
        tag: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if q("SELECT 1 FROM tags WHERE name = $1")
            .bind(tag.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound {
                what: "tag",
                id: tag.to_owned(),
            });
        }
        for id in add {
            if q("SELECT 1 FROM machines WHERE system_id = $1")
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
            {
                return Err(StoreError::NotFound {
                    what: "machine",
                    id: id.clone(),
                });
            }
            put_machine_tag(&mut tx, id, tag, false).await?;
        }
        for id in remove {
            remove_machine_tag(&mut tx, id, tag).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets the machines an automatic tag applies to, replacing the previous set.
    pub async fn set_auto_tag_members(
        &self,
        tag: &str,
        system_ids: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        q("DELETE FROM machine_tags WHERE tag = $1")
            .bind(tag.to_owned())
            .execute(&mut *tx)
            .await?;
        for id in system_ids {
            put_machine_tag(&mut tx, id, tag, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets which automatic tags apply to one machine; manual tags stay.
    pub async fn set_machine_auto_tags(
        &self,
        system_id: &str,
        tags: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        q("DELETE FROM machine_tags WHERE system_id = $1 AND auto = $2")
            .bind(system_id.to_owned())
            .bind(b(true))
            .execute(&mut *tx)
            .await?;
        for t in tags {
            put_machine_tag(&mut tx, system_id, t, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- zones and pools --------------------------------------------------

    fn group_table(kind: GroupKind) -> (&'static str, &'static str) {
        match kind {
            GroupKind::Zone => ("zones", "zone"),
            GroupKind::Pool => ("pools", "pool"),
        }
    }

    pub async fn create_group(&self, kind: GroupKind, g: &Group) -> Result<(), StoreError> {
        let (table, what) = Self::group_table(kind);
        let res = q(&format!(
            "INSERT INTO {table} (name, description) VALUES ($1, $2)"
        ))
        .bind(g.name.clone())
        .bind(g.description.clone())
        .execute(&self.pool)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what,
                value: g.name.clone(),
            }),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// Creates the group unless it exists (used for the `default` ones).
    pub async fn ensure_group(
        &self,
        kind: GroupKind,
        name: &str,
        description: &str,
    ) -> Result<(), StoreError> {
        match self
            .create_group(
                kind,
                &Group {
                    name: name.into(),
                    description: description.into(),
                },
            )
            .await
        {
            Err(StoreError::Duplicate { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn get_group(&self, kind: GroupKind, name: &str) -> Result<Group, StoreError> {
        let (table, what) = Self::group_table(kind);
        let r = q(&format!(
            "SELECT name, description FROM {table} WHERE name = $1"
        ))
        .bind(name.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what,
            id: name.to_owned(),
        })?;
        Ok(Group {
            name: r.get(0),
            description: r.get(1),
        })
    }

    pub async fn list_groups(&self, kind: GroupKind) -> Result<Vec<Group>, StoreError> {
        let (table, _) = Self::group_table(kind);
        let rows = q(&format!(
            "SELECT name, description FROM {table} ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Group {
                name: r.get(0),
                description: r.get(1),
            })
            .collect())
    }

    /// Deletes an unused group; a group machines are in is refused.
    pub async fn delete_group(&self, kind: GroupKind, name: &str) -> Result<(), StoreError> {
        let (table, what) = Self::group_table(kind);
        let mut tx = self.pool.begin().await?;
        let count: i64 = q(&format!("SELECT COUNT(*) FROM machines WHERE {what} = $1"))
            .bind(name.to_owned())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        if count > 0 {
            return Err(StoreError::InUse {
                what,
                id: name.to_owned(),
                count,
            });
        }
        let res = q(&format!("DELETE FROM {table} WHERE name = $1"))
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what,
                id: name.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- users and keys ---------------------------------------------------

    pub async fn create_user(&self, u: &UserRecord) -> Result<(), StoreError> {
        let res = q("INSERT INTO users (username, password_hash, admin) VALUES ($1, $2, $3)")
            .bind(u.username.clone())
            .bind(u.password_hash.clone())
            .bind(b(u.admin))
            .execute(&self.pool)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "user",
                value: u.username.clone(),
            }),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn get_user(&self, username: &str) -> Result<UserRecord, StoreError> {
        let r = q("SELECT username, password_hash, admin FROM users WHERE username = $1")
            .bind(username.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "user",
                id: username.to_owned(),
            })?;
        Ok(UserRecord {
            username: r.get(0),
            password_hash: r.get(1),
            admin: r.get::<i64, _>(2) != 0,
        })
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = q("SELECT username, admin FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| User {
                username: r.get(0),
                admin: r.get::<i64, _>(1) != 0,
            })
            .collect())
    }

    pub async fn add_api_key(
        &self,
        key_id: &str,
        username: &str,
        secret_hash: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        q("INSERT INTO api_keys (key_id, username, secret_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(key_id.to_owned())
            .bind(username.to_owned())
            .bind(secret_hash.to_owned())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The user and stored secret hash of an API key id.
    pub async fn api_key(&self, key_id: &str) -> Result<Option<(UserRecord, String)>, StoreError> {
        let r = q("SELECT u.username, u.password_hash, u.admin, k.secret_hash FROM api_keys k JOIN users u ON u.username = k.username WHERE k.key_id = $1")
            .bind(key_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| {
            (
                UserRecord {
                    username: r.get(0),
                    password_hash: r.get(1),
                    admin: r.get::<i64, _>(2) != 0,
                },
                r.get(3),
            )
        }))
    }
}

fn static_ip_from_row(r: &AnyRow) -> StaticIp {
    StaticIp {
        ip: r.get(0),
        subnet: r.get(1),
        system_id: r.get(2),
        mac: r.get(3),
    }
}

/// A static address held by a machine's interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaticIp {
    pub ip: String,
    pub subnet: String,
    pub system_id: String,
    pub mac: String,
}

impl Store {
    // ---- network objects ------------------------------------------------
    //
    // Fabrics, VLANs, subnets, ranges, domains and records are few and
    // change rarely; each is one JSON document keyed by (kind, key). The
    // region validates them against each other before writing.

    /// Stores a network object; `create` refuses to replace an existing one.
    pub async fn put_network_object(
        &self,
        kind: &'static str,
        key: &str,
        body: &serde_json::Value,
        create: bool,
    ) -> Result<(), StoreError> {
        let text = body.to_string();
        if create {
            let res = q("INSERT INTO network_objects (kind, key, body) VALUES ($1, $2, $3)")
                .bind(kind)
                .bind(key.to_owned())
                .bind(text)
                .execute(&self.pool)
                .await;
            return match res {
                Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                    what: kind,
                    value: key.to_owned(),
                }),
                r => r.map(|_| ()).map_err(Into::into),
            };
        }
        let res = q("UPDATE network_objects SET body = $1 WHERE kind = $2 AND key = $3")
            .bind(text)
            .bind(kind)
            .bind(key.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: kind,
                id: key.to_owned(),
            });
        }
        Ok(())
    }

    pub async fn get_network_object(
        &self,
        kind: &'static str,
        key: &str,
    ) -> Result<serde_json::Value, StoreError> {
        let row = q("SELECT body FROM network_objects WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: kind,
                id: key.to_owned(),
            })?;
        let body: String = row.get(0);
        serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
            what: kind,
            id: key.to_owned(),
            source,
        })
    }

    pub async fn list_network_objects(
        &self,
        kind: &'static str,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows = q("SELECT key, body FROM network_objects WHERE kind = $1 ORDER BY key")
            .bind(kind)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.get(1);
                serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
                    what: kind,
                    id: r.get(0),
                    source,
                })
            })
            .collect()
    }

    pub async fn delete_network_object(
        &self,
        kind: &'static str,
        key: &str,
    ) -> Result<(), StoreError> {
        let res = q("DELETE FROM network_objects WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: kind,
                id: key.to_owned(),
            });
        }
        Ok(())
    }

    // ---- images and SSH keys ----------------------------------------------

    /// Records an image, replacing one of the same name (a rebuilt image).
    pub async fn put_image(&self, image: &Image) -> Result<(), StoreError> {
        let body = serde_json::to_string(image).expect("an image serialises");
        let mut tx = self.pool.begin().await?;
        q("DELETE FROM images WHERE name = $1")
            .bind(image.name.clone())
            .execute(&mut *tx)
            .await?;
        q("INSERT INTO images (name, body) VALUES ($1, $2)")
            .bind(image.name.clone())
            .bind(body)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_image(&self, name: &str) -> Result<Image, StoreError> {
        let row = q("SELECT body FROM images WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "image",
                id: name.to_owned(),
            })?;
        json_body("image", name, row.get(0))
    }

    pub async fn list_images(&self) -> Result<Vec<Image>, StoreError> {
        let rows = q("SELECT name, body FROM images ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| json_body("image", &r.get::<String, _>(0), r.get(1)))
            .collect()
    }

    pub async fn delete_image(&self, name: &str) -> Result<(), StoreError> {
        let res = q("DELETE FROM images WHERE name = $1")
            .bind(name.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "image",
                id: name.to_owned(),
            });
        }
        Ok(())
    }

    pub async fn add_ssh_key(&self, username: &str, key: &SshKey) -> Result<(), StoreError> {
        let res = q("INSERT INTO ssh_keys (username, fingerprint, body) VALUES ($1, $2, $3)")
            .bind(username.to_owned())
            .bind(key.fingerprint.clone())
            .bind(serde_json::to_string(key).expect("a key serialises"))
            .execute(&self.pool)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "ssh key",
                value: key.fingerprint.clone(),
            }),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn ssh_keys(&self, username: &str) -> Result<Vec<SshKey>, StoreError> {
        let rows =
            q("SELECT fingerprint, body FROM ssh_keys WHERE username = $1 ORDER BY fingerprint")
                .bind(username.to_owned())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| json_body("ssh key", &r.get::<String, _>(0), r.get(1)))
            .collect()
    }

    pub async fn delete_ssh_key(
        &self,
        username: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let res = q("DELETE FROM ssh_keys WHERE username = $1 AND fingerprint = $2")
            .bind(username.to_owned())
            .bind(fingerprint.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "ssh key",
                id: fingerprint.to_owned(),
            });
        }
        Ok(())
    }

    // ---- scripts and their results ----------------------------------------

    /// Adds a script; a name already taken is refused (scripts are never
    /// replaced in place, so a result's checksum always names what ran).
    pub async fn add_script(&self, script: &Script) -> Result<(), StoreError> {
        let res = q("INSERT INTO scripts (name, info, body) VALUES ($1, $2, $3)")
            .bind(script.info.name.clone())
            .bind(serde_json::to_string(&script.info).expect("a script serialises"))
            .bind(script.body.clone())
            .execute(&self.pool)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "script",
                value: script.info.name.clone(),
            }),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn get_script(&self, name: &str) -> Result<Script, StoreError> {
        let row = q("SELECT info, body FROM scripts WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "script",
                id: name.to_owned(),
            })?;
        Ok(Script {
            info: json_body("script", name, row.get(0))?,
            body: row.get(1),
        })
    }

    /// Every script, by name, without bodies.
    pub async fn list_scripts(&self) -> Result<Vec<ScriptInfo>, StoreError> {
        let rows = q("SELECT name, info FROM scripts ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| json_body("script", &r.get::<String, _>(0), r.get(1)))
            .collect()
    }

    pub async fn delete_script(&self, name: &str) -> Result<(), StoreError> {
        let res = q("DELETE FROM scripts WHERE name = $1")
            .bind(name.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "script",
                id: name.to_owned(),
            });
        }
        Ok(())
    }

    /// The latest run of each script on a machine, without output, by name.
    pub async fn script_results(&self, system_id: &str) -> Result<Vec<ScriptResult>, StoreError> {
        let rows = q("SELECT name, info FROM script_results WHERE system_id = $1 ORDER BY name")
            .bind(system_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| json_body("script result", &r.get::<String, _>(0), r.get(1)))
            .collect()
    }

    pub async fn script_result(
        &self,
        system_id: &str,
        name: &str,
    ) -> Result<ScriptResultOutput, StoreError> {
        let row = q(
            "SELECT info, stdout, stderr FROM script_results WHERE system_id = $1 AND name = $2",
        )
        .bind(system_id.to_owned())
        .bind(name.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "script result",
            id: name.to_owned(),
        })?;
        Ok(ScriptResultOutput {
            result: json_body("script result", name, row.get(0))?,
            stdout: row.get(1),
            stderr: row.get(2),
        })
    }

    // ---- static addresses -------------------------------------------------

    /// Records a static address; an address held by anyone is refused.
    pub async fn add_static_ip(&self, s: &StaticIp, now: Millis) -> Result<(), StoreError> {
        let res = q("INSERT INTO static_ips (ip, subnet, system_id, mac, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(s.ip.clone())
            .bind(s.subnet.clone())
            .bind(s.system_id.clone())
            .bind(s.mac.clone())
            .bind(now)
            .execute(&self.pool)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "ip",
                value: s.ip.clone(),
            }),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// Static addresses, of one subnet or all.
    pub async fn static_ips(&self, subnet: Option<&str>) -> Result<Vec<StaticIp>, StoreError> {
        let rows = match subnet {
            Some(sn) => q(
                "SELECT ip, subnet, system_id, mac FROM static_ips WHERE subnet = $1 ORDER BY ip",
            )
            .bind(sn.to_owned())
            .fetch_all(&self.pool)
            .await?,
            None => {
                q("SELECT ip, subnet, system_id, mac FROM static_ips ORDER BY ip")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(static_ip_from_row).collect())
    }

    pub async fn machine_static_ips(&self, system_id: &str) -> Result<Vec<StaticIp>, StoreError> {
        let rows = q(
            "SELECT ip, subnet, system_id, mac FROM static_ips WHERE system_id = $1 ORDER BY ip",
        )
        .bind(system_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(static_ip_from_row).collect())
    }

    pub async fn remove_static_ip(&self, ip: &str) -> Result<(), StoreError> {
        let res = q("DELETE FROM static_ips WHERE ip = $1")
            .bind(ip.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "ip",
                id: ip.to_owned(),
            });
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    Zone,
    Pool,
}

async fn insert_macs(conn: &mut sqlx::AnyConnection, m: &Machine) -> Result<(), StoreError> {
    for mac in &m.macs {
        let res = q("INSERT INTO machine_macs (mac, system_id) VALUES ($1, $2)")
            .bind(mac.to_string())
            .bind(m.system_id.to_string())
            .execute(&mut *conn)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    what: "mac_address",
                    value: mac.to_string(),
                })
            }
            r => r?,
        };
    }
    Ok(())
}

/// Puts a tag on a machine, replacing a manual mark with an automatic one
/// or the reverse.
async fn put_machine_tag(
    conn: &mut sqlx::AnyConnection,
    system_id: &str,
    tag: &str,
    auto: bool,
) -> Result<(), StoreError> {
    remove_machine_tag(conn, system_id, tag).await?;
    q("INSERT INTO machine_tags (system_id, tag, auto) VALUES ($1, $2, $3)")
        .bind(system_id.to_owned())
        .bind(tag.to_owned())
        .bind(b(auto))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn remove_machine_tag(
    conn: &mut sqlx::AnyConnection,
    system_id: &str,
    tag: &str,
) -> Result<(), StoreError> {
    q("DELETE FROM machine_tags WHERE system_id = $1 AND tag = $2")
        .bind(system_id.to_owned())
        .bind(tag.to_owned())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn ensure_tag(conn: &mut sqlx::AnyConnection, tag: &str) -> Result<(), StoreError> {
    if q("SELECT 1 FROM tags WHERE name = $1")
        .bind(tag.to_owned())
        .fetch_optional(&mut *conn)
        .await?
        .is_none()
    {
        q("INSERT INTO tags (name, definition, comment) VALUES ($1, '', '')")
            .bind(tag.to_owned())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    system_id: &str,
    now: Millis,
    e: &NewEvent,
) -> Result<(), StoreError> {
    q("INSERT INTO machine_events (system_id, at, kind, message) VALUES ($1, $2, $3, $4)")
        .bind(system_id.to_owned())
        .bind(now)
        .bind(e.kind)
        .bind(e.message.clone())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Keeps `r` as the machine's latest run of its script.
async fn put_script_result(
    conn: &mut sqlx::AnyConnection,
    system_id: &str,
    r: &ScriptResultOutput,
) -> Result<(), StoreError> {
    q("DELETE FROM script_results WHERE system_id = $1 AND name = $2")
        .bind(system_id.to_owned())
        .bind(r.result.name.clone())
        .execute(&mut *conn)
        .await?;
    q("INSERT INTO script_results (system_id, name, info, stdout, stderr) VALUES ($1, $2, $3, $4, $5)")
        .bind(system_id.to_owned())
        .bind(r.result.name.clone())
        .bind(serde_json::to_string(&r.result).expect("a result serialises"))
        .bind(r.stdout.clone())
        .bind(r.stderr.clone())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_audit(
    conn: &mut sqlx::AnyConnection,
    now: Millis,
    a: &NewAudit,
) -> Result<(), StoreError> {
    q("INSERT INTO audit_events (at, username, action, object, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(now)
        .bind(a.username.clone())
        .bind(a.action.clone())
        .bind(a.object.clone())
        .bind(a.detail.clone())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl FromStr for GroupKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "zone" | "zones" => Ok(GroupKind::Zone),
            "pool" | "pools" => Ok(GroupKind::Pool),
            _ => Err(()),
        }
    }
}

fn json_body<T: serde::de::DeserializeOwned>(
    what: &'static str,
    id: &str,
    body: String,
) -> Result<T, StoreError> {
    serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
        what,
        id: id.to_owned(),
        source,
    })
}

// ---- orchestration ---------------------------------------------------------
// The controller keeps each model as JSON documents keyed by (model, kind,
// key) — the model itself, its units, machines, actions — and writes all
// documents one change touches, with its log lines, in one transaction.

/// A stored model document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDoc {
    pub model: String,
    pub kind: String,
    pub key: String,
    pub body: String,
}

/// One line of a model's log (`kumo debug-log`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelLog {
    pub id: i64,
    pub entity: String,
    pub at: Millis,
    pub level: String,
    pub message: String,
}

/// Documents to write (`Some` body) or delete (`None`), and log lines, for
/// one model in one transaction.
#[derive(Debug, Default)]
pub struct ModelWrite {
    pub docs: Vec<(String, String, Option<String>)>,
    pub logs: Vec<(String, Millis, String, String)>,
}

impl Store {
    pub async fn write_model(&self, model: &str, w: &ModelWrite) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (kind, key, body) in &w.docs {
            match body {
                Some(body) => {
                    q(
                        "INSERT INTO model_docs (model, kind, key, body) VALUES ($1, $2, $3, $4) \
                       ON CONFLICT (model, kind, key) DO UPDATE SET body = excluded.body",
                    )
                    .bind(model.to_owned())
                    .bind(kind.clone())
                    .bind(key.clone())
                    .bind(body.clone())
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    q("DELETE FROM model_docs WHERE model = $1 AND kind = $2 AND key = $3")
                        .bind(model.to_owned())
                        .bind(kind.clone())
                        .bind(key.clone())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for (entity, at, level, message) in &w.logs {
            q("INSERT INTO model_logs (model, entity, at, level, message) VALUES ($1, $2, $3, $4, $5)")
                .bind(model.to_owned())
                .bind(entity.clone())
                .bind(*at)
                .bind(level.clone())
                .bind(message.clone())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every model document, for a controller starting up.
    pub async fn model_docs(&self) -> Result<Vec<ModelDoc>, StoreError> {
        let rows = q("SELECT model, kind, key, body FROM model_docs ORDER BY model, kind, key")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| ModelDoc {
                model: r.get(0),
                kind: r.get(1),
                key: r.get(2),
                body: r.get(3),
            })
            .collect())
    }

    /// Forgets a model: its documents and its log.
    pub async fn delete_model(&self, model: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        q("DELETE FROM model_docs WHERE model = $1")
            .bind(model.to_owned())
            .execute(&mut *tx)
            .await?;
        q("DELETE FROM model_logs WHERE model = $1")
            .bind(model.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Log lines after `after` (an id), oldest first, at most `limit`.
    pub async fn model_logs(
        &self,
        model: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ModelLog>, StoreError> {
        let rows = q("SELECT id, entity, at, level, message FROM model_logs \
                      WHERE model = $1 AND id > $2 ORDER BY id LIMIT $3")
        .bind(model.to_owned())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ModelLog {
                id: r.get(0),
                entity: r.get(1),
                at: r.get(2),
                level: r.get(3),
                message: r.get(4),
            })
            .collect())
    }

    /// The id of the newest log line of a model (0 when none).
    pub async fn last_model_log(&self, model: &str) -> Result<i64, StoreError> {
        let row = q("SELECT MAX(id) FROM model_logs WHERE model = $1")
            .bind(model.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0).ok().flatten().unwrap_or(0))
    }
}

//! Schema migrations. One list for both engines; `{serial}` stands for the
//! engine's auto-increment key, the only DDL difference kumo needs.
//! Migrations are append-only: never edit one that has shipped.

pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial region schema",
        r#"
CREATE TABLE machines (
    system_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    owner TEXT,
    zone TEXT NOT NULL,
    pool TEXT NOT NULL,
    arch TEXT NOT NULL,
    deadline BIGINT,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    sealed_secrets TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX machines_status ON machines (status);
CREATE INDEX machines_deadline ON machines (deadline);
CREATE TABLE machine_macs (
    mac TEXT PRIMARY KEY,
    system_id TEXT NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE
);
CREATE INDEX machine_macs_machine ON machine_macs (system_id);
CREATE TABLE tags (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    comment TEXT NOT NULL
);
CREATE TABLE machine_tags (
    system_id TEXT NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    tag TEXT NOT NULL REFERENCES tags (name) ON DELETE CASCADE,
    auto BIGINT NOT NULL,
    PRIMARY KEY (system_id, tag)
);
CREATE INDEX machine_tags_tag ON machine_tags (tag);
CREATE TABLE zones (name TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE pools (name TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE machine_events (
    id {serial},
    system_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX machine_events_machine ON machine_events (system_id, id);
CREATE TABLE audit_events (
    id {serial},
    at BIGINT NOT NULL,
    username TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin BIGINT NOT NULL
);
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE machine_tokens (
    token_hash TEXT PRIMARY KEY,
    system_id TEXT NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE TABLE power_jobs (
    id {serial},
    system_id TEXT NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    op TEXT NOT NULL,
    complete_status TEXT,
    created_at BIGINT NOT NULL
);
"#,
    ),
    (
        2,
        "network model and static addresses",
        r#"
CREATE TABLE network_objects (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE static_ips (
    ip TEXT PRIMARY KEY,
    subnet TEXT NOT NULL,
    system_id TEXT NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    mac TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX static_ips_machine ON static_ips (system_id);
CREATE INDEX static_ips_subnet ON static_ips (subnet);
"#,
    ),
    (
        3,
        "OS images and users' SSH keys",
        r#"
CREATE TABLE images (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE ssh_keys (
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (username, fingerprint)
);
"#,
    ),
    (
        4,
        "commissioning and testing scripts and their results",
        r#"
CREATE TABLE scripts (
    name TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE script_results (
    system_id TEXT NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    info TEXT NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    PRIMARY KEY (system_id, name)
);
"#,
    ),
    (
        5,
        "orchestration: models as documents, and their logs",
        r#"
CREATE TABLE model_docs (
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (model, kind, key)
);
CREATE TABLE model_logs (
    id {serial},
    model TEXT NOT NULL,
    entity TEXT NOT NULL,
    at BIGINT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX model_logs_model ON model_logs (model, id);
"#,
    ),
];

//! Fresh stores for tests, on either engine.
//!
//! PostgreSQL tests need a server: set `KUMO_TEST_PG_URL` to a base URL
//! whose user may create databases (`scripts/pg-test-server.sh start`
//! starts one and prints it). Each call creates its own database, so tests
//! run in parallel without seeing each other.

use rand::Rng;

use crate::Store;

/// A store on a SQLite file in a temporary directory that lives as long as
/// the returned guard.
pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    (Store::open(&url).await.expect("open sqlite store"), dir)
}

/// The base URL of the test PostgreSQL server. Panics with instructions
/// when it is not configured, so a PostgreSQL test can never pass unrun.
pub fn postgres_base_url() -> String {
    std::env::var("KUMO_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "KUMO_TEST_PG_URL is not set: run `scripts/pg-test-server.sh start` and export the URL it prints \
             (scripts/test.sh does both)"
        )
    })
}

/// A store on a new, empty PostgreSQL database; returns its URL too.
pub async fn postgres() -> (Store, String) {
    let base = postgres_base_url();
    let name = format!("kumo_t_{:016x}", rand::thread_rng().gen::<u64>());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("connect to test PostgreSQL at {base}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let url = format!("{base}/{name}");
    (Store::open(&url).await.expect("open postgres store"), url)
}

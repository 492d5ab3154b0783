//! Persistence for sealroom: users, devices, enrolments, sessions, meetings, invitations, and
//! the tamper-evident audit log.
//!
//! Owns the SQL and nothing else: no policy decisions, no HTTP. Every security decision is
//! written inside one [`Tx`] together with its audit entry ([`Tx::audit`]), so a decision that
//! cannot be audited is never made. SQLite (through sqlx) by default; the SQL is kept portable.

#![forbid(unsafe_code)]

pub mod audit;
mod models;

pub use audit::{AuditEntry, AuditKey, VerifyError, VerifyReport};
pub use models::*;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that must exist (by an invariant of the caller) does not.
    #[error("not found")]
    NotFound,
    /// A unique value (name, credential id, key) is already taken.
    #[error("already exists")]
    Conflict,
    /// A stored value does not parse (the database was edited by hand or is corrupt).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The write waited its limit behind other writes, or the database stayed locked by
    /// another process: nothing was written. Worth trying again.
    #[error("busy: the write waited too long behind others")]
    Busy,
}

impl StoreError {
    /// The database or its writers were too busy: nothing was written, try again. SQLite's
    /// `SQLITE_BUSY` (any extended code) counts, as does [`StoreError::Busy`].
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Busy => true,
            StoreError::Db(sqlx::Error::Database(db)) => db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 5),
            StoreError::Db(sqlx::Error::PoolTimedOut) => true,
            _ => false,
        }
    }
}

impl StoreError {
    /// Map unique-constraint violations to [`StoreError::Conflict`].
    fn from_write(e: sqlx::Error) -> StoreError {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return StoreError::Conflict;
            }
        }
        StoreError::Db(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The database handle.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    audit_key: AuditKey,
    /// This process's writers take turns here, first come first served, before SQLite's
    /// write lock. Left to SQLite alone they poll for the lock with sleeps (its busy
    /// handler), in no order: with dozens of joins at once on a starved CPU, an unlucky one
    /// waited out `busy_timeout` and its join failed ("database is locked") while the
    /// others went through. Other processes (the CLI) still meet SQLite's busy handler.
    writers: Arc<tokio::sync::Mutex<()>>,
    /// The longest a write waits for its turn before [`StoreError::Busy`].
    write_wait: Duration,
}

/// A write transaction; every decision and its audit entry go through one.
pub struct Tx {
    // Dropped in this order: the transaction ends before the next writer's turn.
    inner: Transaction<'static, Sqlite>,
    audit_key: AuditKey,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// How long a connection waits for SQLite's lock held by another process (the CLI).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write waits for its turn behind this process's other writes. An overloaded
/// server is slow: 58 joining at once with the SFU's core full queued writes for seconds.
const WRITE_WAIT: Duration = Duration::from_secs(20);

impl Store {
    /// Open (creating if needed) the SQLite database at `path` and apply migrations.
    pub async fn open(path: &Path, audit_key: AuditKey) -> Result<Store> {
        Store::open_with(path, audit_key, BUSY_TIMEOUT).await
    }

    /// [`Store::open`] with SQLite's busy timeout (how long a connection waits for a lock
    /// another connection or process holds) set.
    async fn open_with(path: &Path, audit_key: AuditKey, busy_timeout: Duration) -> Result<Store> {
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            audit_key,
            writers: Arc::new(tokio::sync::Mutex::new(())),
            write_wait: WRITE_WAIT,
        })
    }

    /// This process's turn to write, first come first served; [`StoreError::Busy`] after
    /// waiting [`WRITE_WAIT`].
    async fn write_turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        tokio::time::timeout(self.write_wait, self.writers.clone().lock_owned())
            .await
            .map_err(|_| StoreError::Busy)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn audit_key(&self) -> &AuditKey {
        &self.audit_key
    }

    /// Begin a write transaction. It takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// concurrent writers (the server and the CLI) queue instead of failing on upgrade.
    pub async fn begin(&self) -> Result<Tx> {
        let turn = self.write_turn().await?;
        let inner = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Tx {
            inner,
            audit_key: self.audit_key.clone(),
            _turn: turn,
        })
    }
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        self.inner.commit().await?;
        Ok(())
    }

    pub fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.inner
    }

    /// Append an audit entry in this transaction (and a signed checkpoint when due).
    pub async fn audit(&mut self, entry: AuditEntry) -> Result<i64> {
        let key = self.audit_key.clone();
        audit::append(&mut self.inner, &key, entry).await
    }
}

/// A random url-safe id of 128 bits.
pub fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random secret of 256 bits (tokens, session ids), url-safe.
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a secret, hex: secrets are stored only this way.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &tempfile::TempDir, busy_timeout: Duration) -> Store {
        Store::open_with(
            &dir.path().join("db.sqlite"),
            AuditKey::generate(),
            busy_timeout,
        )
        .await
        .expect("open")
    }

    /// A write that holds the lock `hold` long, as a join does whose task the CPU starves.
    async fn slow_write(store: Store, i: usize, hold: Duration) -> Result<()> {
        let mut tx = store.begin().await?;
        tokio::time::sleep(hold).await;
        tx.insert_user(
            NewUser {
                name: &format!("user{i}"),
                display_name: "User",
                role: sealroom_proto::Role::Member,
            },
            1_700_000_000,
        )
        .await?;
        tx.commit().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_queued_past_sqlite_s_busy_timeout_all_get_their_turn() {
        // 12 writers at once, each holding the lock 60 ms: the last waits about 0.7 s, far
        // past a 150 ms busy timeout. Left to SQLite's busy handler, writers wait in no order
        // and some fail with "database is locked"; in turn, none does.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir, Duration::from_millis(150)).await;
        let tasks: Vec<_> = (0..12)
            .map(|i| tokio::spawn(slow_write(store.clone(), i, Duration::from_millis(60))))
            .collect();
        for t in tasks {
            t.await.expect("task").expect("every writer gets its turn");
        }
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(store.pool())
            .await
            .expect("count");
        assert_eq!(users, 12);
    }

    #[tokio::test]
    async fn a_write_that_waits_too_long_is_busy_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(&dir, BUSY_TIMEOUT).await;
        store.write_wait = Duration::from_millis(100);
        let held = store.begin().await.expect("first writer");
        let e = slow_write(store.clone(), 1, Duration::ZERO)
            .await
            .expect_err("waited past its limit");
        assert!(matches!(e, StoreError::Busy) && e.is_busy(), "{e:?}");
        drop(held);
        slow_write(store.clone(), 2, Duration::ZERO)
            .await
            .expect("its turn came");
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(store.pool())
            .await
            .expect("count");
        assert_eq!(users, 1, "the busy write wrote nothing");
    }
}

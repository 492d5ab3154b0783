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
}

/// A write transaction; every decision and its audit entry go through one.
pub struct Tx {
    inner: Transaction<'static, Sqlite>,
    audit_key: AuditKey,
}

impl Store {
    /// Open (creating if needed) the SQLite database at `path` and apply migrations.
    pub async fn open(path: &Path, audit_key: AuditKey) -> Result<Store> {
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, audit_key })
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
        let inner = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Tx {
            inner,
            audit_key: self.audit_key.clone(),
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

//! The tamper-evident audit log (DESIGN.md T7): a hash chain with signed checkpoints.
//!
//! Entry `n` stores `hash_n = SHA-256("sealroom-audit-v1" ‖ len-prefixed fields of n ‖ hash_{n-1})`
//! with `hash_0` all zeros. Editing, deleting, inserting or reordering an entry breaks the chain
//! at that entry. Every [`CHECKPOINT_EVERY`] entries the head (seq, hash) is signed with the
//! server's Ed25519 audit key, so a rewritten tail that recomputes hashes still fails against the
//! signatures, and truncation below the last checkpoint is detected.

use crate::{Result, StoreError};
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection, SqlitePool};
use std::sync::Arc;

/// Entries between two signed checkpoints.
pub const CHECKPOINT_EVERY: i64 = 16;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The server's audit signing key.
#[derive(Clone)]
pub struct AuditKey(Arc<SigningKey>);

impl AuditKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> AuditKey {
        AuditKey(Arc::new(SigningKey::from_bytes(bytes)))
    }
    pub fn generate() -> AuditKey {
        AuditKey(Arc::new(SigningKey::generate(&mut rand::rngs::OsRng)))
    }
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }
}

/// What is recorded about one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// What happened, e.g. `join.refused`, `device.revoked`.
    pub kind: String,
    /// Who did it (`user:<name>/device:<id>`, `cli`, `anonymous`, `server`).
    pub actor: String,
    /// What it was done to (a user, a device, a meeting, or an HMAC of a requested id).
    pub subject: String,
    /// Source address, or empty.
    pub source: String,
    /// JSON object with the details (reason, level, ...).
    pub detail: String,
}

/// An entry as stored.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub seq: i64,
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

fn entry_hash(seq: i64, e: &AuditEntry, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"sealroom-audit-v1");
    h.update(seq.to_be_bytes());
    h.update(e.at.to_be_bytes());
    for field in [&e.kind, &e.actor, &e.subject, &e.source, &e.detail] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev_hash.as_bytes());
    hex::encode(h.finalize())
}

fn checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    let mut m = b"sealroom-audit-checkpoint-v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m
}

pub(crate) async fn append(
    conn: &mut SqliteConnection,
    key: &AuditKey,
    e: AuditEntry,
) -> Result<i64> {
    let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, prev) = match head {
        Some(row) => (row.try_get::<i64, _>(0)? + 1, row.try_get::<String, _>(1)?),
        None => (1, GENESIS.to_string()),
    };
    let hash = entry_hash(seq, &e, &prev);
    sqlx::query(
        "INSERT INTO audit (seq, at, kind, actor, subject, source, detail, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(e.at)
    .bind(&e.kind)
    .bind(&e.actor)
    .bind(&e.subject)
    .bind(&e.source)
    .bind(&e.detail)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    if seq % CHECKPOINT_EVERY == 0 {
        write_checkpoint(conn, key, seq, &hash, e.at).await?;
    }
    Ok(seq)
}

async fn write_checkpoint(
    conn: &mut SqliteConnection,
    key: &AuditKey,
    seq: i64,
    hash: &str,
    at: i64,
) -> Result<()> {
    let sig = key.0.sign(&checkpoint_message(seq, hash));
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, at, signature) VALUES (?, ?, ?, ?) \
         ON CONFLICT (seq) DO NOTHING",
    )
    .bind(seq)
    .bind(hash)
    .bind(at)
    .bind(base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sign the current head now (at shutdown and before `audit verify` on a live database).
pub async fn checkpoint_head(store: &crate::Store, at: i64) -> Result<Option<i64>> {
    let mut tx = store.begin().await?;
    let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(tx.conn())
        .await?;
    let Some(row) = head else {
        return Ok(None);
    };
    let seq: i64 = row.try_get(0)?;
    let hash: String = row.try_get(1)?;
    let key = store.audit_key().clone();
    write_checkpoint(tx.conn(), &key, seq, &hash, at).await?;
    tx.commit().await?;
    Ok(Some(seq))
}

/// Read entries in order, optionally only those whose subject or detail mention `filter`.
pub async fn entries(pool: &SqlitePool) -> Result<Vec<StoredEntry>> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, actor, subject, source, detail, prev_hash, hash FROM audit ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(StoredEntry {
                seq: r.try_get(0)?,
                entry: AuditEntry {
                    at: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    actor: r.try_get(3)?,
                    subject: r.try_get(4)?,
                    source: r.try_get(5)?,
                    detail: r.try_get(6)?,
                },
                prev_hash: r.try_get(7)?,
                hash: r.try_get(8)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(StoreError::Db)
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: i64,
    pub checkpoints: i64,
    pub head_hash: String,
}

/// The first problem verification found.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// Sequence numbers are not 1, 2, 3, ...: an entry was deleted or inserted.
    #[error(
        "entry {expected}: missing (the next entry present is {found}): deleted, or entries inserted"
    )]
    Gap { expected: i64, found: i64 },
    /// The entry's stored previous hash is not the hash of the entry before it.
    #[error("entry {seq}: does not link to the entry before it (deleted, inserted or reordered)")]
    BrokenLink { seq: i64 },
    /// The entry's content does not match its hash.
    #[error("entry {seq}: content does not match its hash (edited)")]
    Edited { seq: i64 },
    /// A checkpoint signature does not verify with the audit key.
    #[error("checkpoint at entry {seq}: bad signature")]
    BadCheckpointSignature { seq: i64 },
    /// A signed checkpoint disagrees with the chain.
    #[error(
        "checkpoint at entry {seq}: chain hash differs from the signed one (rewritten history)"
    )]
    CheckpointMismatch { seq: i64 },
    /// A signed checkpoint names an entry that no longer exists.
    #[error("checkpoint at entry {seq}: the log ends at entry {last} (truncated)")]
    Truncated { seq: i64, last: i64 },
}

impl VerifyError {
    /// The sequence number of the first bad entry.
    pub fn seq(&self) -> i64 {
        match self {
            VerifyError::Gap { expected, .. } => *expected,
            VerifyError::BrokenLink { seq }
            | VerifyError::Edited { seq }
            | VerifyError::BadCheckpointSignature { seq }
            | VerifyError::CheckpointMismatch { seq } => *seq,
            VerifyError::Truncated { last, .. } => *last,
        }
    }
}

/// Recompute the whole chain and check every signed checkpoint.
pub async fn verify(
    pool: &SqlitePool,
    key: &VerifyingKey,
) -> Result<std::result::Result<VerifyReport, VerifyError>> {
    let all = entries(pool).await?;
    let checkpoints =
        sqlx::query("SELECT seq, hash, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(pool)
            .await?;
    let mut checkpoint_list = Vec::with_capacity(checkpoints.len());
    for r in checkpoints {
        let seq: i64 = r.try_get(0)?;
        let hash: String = r.try_get(1)?;
        let sig: String = r.try_get(2)?;
        checkpoint_list.push((seq, hash, sig));
    }
    Ok(verify_entries(&all, &checkpoint_list, key))
}

fn verify_entries(
    all: &[StoredEntry],
    checkpoints: &[(i64, String, String)],
    key: &VerifyingKey,
) -> std::result::Result<VerifyReport, VerifyError> {
    let mut prev = GENESIS.to_string();
    for (i, e) in all.iter().enumerate() {
        let expected = i as i64 + 1;
        if e.seq != expected {
            return Err(VerifyError::Gap {
                expected,
                found: e.seq,
            });
        }
        if e.prev_hash != prev {
            return Err(VerifyError::BrokenLink { seq: e.seq });
        }
        if entry_hash(e.seq, &e.entry, &e.prev_hash) != e.hash {
            return Err(VerifyError::Edited { seq: e.seq });
        }
        prev = e.hash.clone();
    }
    let last = all.len() as i64;
    for (seq, hash, sig) in checkpoints {
        let ok = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .map(|s| key.verify(&checkpoint_message(*seq, hash), &s).is_ok())
            .unwrap_or(false);
        if !ok {
            return Err(VerifyError::BadCheckpointSignature { seq: *seq });
        }
        if *seq > last {
            return Err(VerifyError::Truncated { seq: *seq, last });
        }
        // seq >= 1 and <= last: index is in range.
        if all[(*seq - 1) as usize].hash != *hash {
            return Err(VerifyError::CheckpointMismatch { seq: *seq });
        }
    }
    Ok(VerifyReport {
        entries: last,
        checkpoints: checkpoints.len() as i64,
        head_hash: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    async fn store_with(n: i64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.sqlite"), AuditKey::generate())
            .await
            .expect("open");
        for i in 0..n {
            let mut tx = store.begin().await.expect("begin");
            tx.audit(AuditEntry {
                at: 1_700_000_000 + i,
                kind: "test.event".into(),
                actor: format!("user:{i}"),
                subject: "s".into(),
                source: "127.0.0.1".into(),
                detail: format!("{{\"i\":{i}}}"),
            })
            .await
            .expect("append");
            tx.commit().await.expect("commit");
        }
        (dir, store)
    }

    async fn check(store: &Store) -> std::result::Result<VerifyReport, VerifyError> {
        verify(store.pool(), &store.audit_key().verifying_key())
            .await
            .expect("read")
    }

    async fn exec(store: &Store, sql: &str) {
        sqlx::query(sql).execute(store.pool()).await.expect(sql);
    }

    #[tokio::test]
    async fn intact_chain_verifies() {
        let (_d, s) = store_with(40).await;
        let r = check(&s).await.expect("intact");
        assert_eq!(r.entries, 40);
        assert_eq!(r.checkpoints, 2);
    }

    #[tokio::test]
    async fn edited_entry_is_named() {
        let (_d, s) = store_with(20).await;
        exec(&s, "UPDATE audit SET actor = 'user:mallory' WHERE seq = 7").await;
        assert_eq!(check(&s).await, Err(VerifyError::Edited { seq: 7 }));
    }

    #[tokio::test]
    async fn deleted_entry_is_named() {
        let (_d, s) = store_with(20).await;
        exec(&s, "DELETE FROM audit WHERE seq = 5").await;
        assert_eq!(
            check(&s).await,
            Err(VerifyError::Gap {
                expected: 5,
                found: 6
            })
        );
    }

    #[tokio::test]
    async fn swapped_entries_are_named() {
        let (_d, s) = store_with(20).await;
        // Swap the content (and hashes) of entries 3 and 4, keeping sequence numbers.
        exec(&s, "UPDATE audit SET seq = -3 WHERE seq = 3").await;
        exec(&s, "UPDATE audit SET seq = 3 WHERE seq = 4").await;
        exec(&s, "UPDATE audit SET seq = 4 WHERE seq = -3").await;
        let err = check(&s).await.expect_err("swap detected");
        assert_eq!(err.seq(), 3, "{err}");
    }

    #[tokio::test]
    async fn rewritten_tail_with_recomputed_hashes_fails_the_checkpoint() {
        let (_d, s) = store_with(20).await;
        // Rewrite entry 10 and recompute every hash after it, as an attacker without the key would.
        let mut all = entries(s.pool()).await.expect("read");
        all[9].entry.actor = "user:mallory".into();
        let mut prev = all[8].hash.clone();
        for e in all.iter_mut().skip(9) {
            e.prev_hash = prev.clone();
            e.hash = entry_hash(e.seq, &e.entry, &e.prev_hash);
            prev = e.hash.clone();
        }
        for e in &all[9..] {
            sqlx::query("UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?")
                .bind(&e.entry.actor)
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(e.seq)
                .execute(s.pool())
                .await
                .expect("rewrite");
        }
        assert_eq!(
            check(&s).await,
            Err(VerifyError::CheckpointMismatch { seq: 16 })
        );
    }

    #[tokio::test]
    async fn truncation_below_a_checkpoint_is_detected() {
        let (_d, s) = store_with(20).await;
        exec(&s, "DELETE FROM audit WHERE seq > 12").await;
        assert_eq!(
            check(&s).await,
            Err(VerifyError::Truncated { seq: 16, last: 12 })
        );
    }

    #[tokio::test]
    async fn forged_checkpoint_signature_is_detected() {
        let (_d, s) = store_with(20).await;
        exec(
            &s,
            "UPDATE audit_checkpoints SET signature = 'AAAA' WHERE seq = 16",
        )
        .await;
        assert_eq!(
            check(&s).await,
            Err(VerifyError::BadCheckpointSignature { seq: 16 })
        );
    }
}

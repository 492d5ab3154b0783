//! Rows and the queries on them. Reads take the pool; writes take a [`Tx`] so that they are
//! audited in the same transaction.

use crate::{random_id, Result, Store, StoreError, Tx};
use sealroom_proto::{DeviceKind, Level, Role};
use sqlx::{FromRow, Row};

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: i64,
}

impl UserRow {
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Member)
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct DeviceRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub kind: String,
    pub credential_id: Option<String>,
    pub passkey: Option<String>,
    pub public_key: Option<String>,
    pub backup_eligible: bool,
    pub restricted_ok: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

impl DeviceRow {
    pub fn kind(&self) -> DeviceKind {
        DeviceKind::parse(&self.kind).unwrap_or(DeviceKind::Software)
    }
    pub fn revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct EnrolmentRow {
    pub id: String,
    pub user_id: String,
    pub token_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub first_admin: bool,
}

impl EnrolmentRow {
    pub fn state(&self, now: i64) -> &'static str {
        if self.used_at.is_some() {
            "used"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "pending"
        }
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id_hash: String,
    pub user_id: String,
    pub device_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct MeetingRow {
    pub id: String,
    pub title: String,
    pub level: String,
    pub organiser_id: String,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub lobby: bool,
    pub capacity: i64,
    pub locked: bool,
    pub created_at: i64,
}

impl MeetingRow {
    pub fn level(&self) -> Level {
        // Unknown levels fail closed to the strictest one.
        Level::parse(&self.level).unwrap_or(Level::Restricted)
    }
}

/// The meeting and one user's invitation, from one keyed lookup.
#[derive(Debug, Clone, FromRow)]
pub struct InvitedMeeting {
    #[sqlx(flatten)]
    pub meeting: MeetingRow,
    pub host: bool,
}

const MEETING_COLS: &str = "m.id, m.title, m.level, m.organiser_id, m.starts_at, m.ends_at, \
    m.lobby, m.capacity, m.locked, m.created_at";

impl Store {
    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?
            .try_get(0)?)
    }

    pub async fn admin_exists(&self) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM users u JOIN devices d ON d.user_id = u.id \
             WHERE u.role = 'admin' AND u.disabled = FALSE AND d.revoked_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users ORDER BY name")
            .fetch_all(self.pool())
            .await?)
    }

    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>> {
        Ok(sqlx::query_as("SELECT * FROM devices WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn device_by_credential(&self, credential_id: &str) -> Result<Option<DeviceRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM devices WHERE credential_id = ?")
                .bind(credential_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM devices WHERE user_id = ? ORDER BY created_at, id")
                .bind(user_id)
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Active passkeys of a user (for discoverable login).
    pub async fn enrolment_by_token_hash(&self, token_hash: &str) -> Result<Option<EnrolmentRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM enrolments WHERE token_hash = ?")
                .bind(token_hash)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn enrolments(&self) -> Result<Vec<(EnrolmentRow, String)>> {
        let rows = sqlx::query(
            "SELECT e.id, e.user_id, e.token_hash, e.created_at, e.expires_at, e.used_at, \
             e.revoked_at, e.first_admin, u.name FROM enrolments e JOIN users u ON u.id = e.user_id \
             ORDER BY e.created_at DESC",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| Ok((EnrolmentRow::from_row(&r)?, r.try_get::<String, _>("name")?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(StoreError::Db)
    }

    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>> {
        Ok(sqlx::query_as("SELECT * FROM sessions WHERE id_hash = ?")
            .bind(id_hash)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Keep a session alive (idle timeout). Not audited: it decides nothing.
    pub async fn touch_session(&self, id_hash: &str, now: i64) -> Result<()> {
        let _turn = self.write_turn().await?;
        sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?")
            .bind(now)
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The one keyed lookup of (meeting, invitation) that every join starts with.
    pub async fn invited_meeting(
        &self,
        meeting_id: &str,
        user_id: &str,
    ) -> Result<Option<InvitedMeeting>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {MEETING_COLS}, i.host FROM meetings m JOIN invitations i \
             ON i.meeting_id = m.id WHERE m.id = ? AND i.user_id = ?"
        ))
        .bind(meeting_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn meeting(&self, id: &str) -> Result<Option<MeetingRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {MEETING_COLS} FROM meetings m WHERE m.id = ?"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn meetings_of(&self, user_id: &str) -> Result<Vec<InvitedMeeting>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {MEETING_COLS}, i.host FROM meetings m JOIN invitations i \
             ON i.meeting_id = m.id WHERE i.user_id = ? ORDER BY m.created_at DESC"
        ))
        .bind(user_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn all_meetings(&self) -> Result<Vec<MeetingRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {MEETING_COLS} FROM meetings m ORDER BY m.created_at DESC"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// (user name, host) of every invitee.
    pub async fn invitees(&self, meeting_id: &str) -> Result<Vec<(String, bool)>> {
        let rows = sqlx::query(
            "SELECT u.name, i.host FROM invitations i JOIN users u ON u.id = i.user_id \
             WHERE i.meeting_id = ? ORDER BY u.name",
        )
        .bind(meeting_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(StoreError::Db)
    }
}

/// A new user.
pub struct NewUser<'a> {
    pub name: &'a str,
    pub display_name: &'a str,
    pub role: Role,
}

/// A new device.
pub struct NewDevice<'a> {
    pub user_id: &'a str,
    pub name: &'a str,
    pub kind: DeviceKind,
    pub credential_id: Option<&'a str>,
    pub passkey: Option<&'a str>,
    pub public_key: Option<&'a str>,
    pub backup_eligible: bool,
}

/// A new meeting.
pub struct NewMeeting<'a> {
    pub title: &'a str,
    pub level: Level,
    pub organiser_id: &'a str,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub lobby: bool,
    pub capacity: u32,
    /// (user id, host)
    pub invitations: &'a [(String, bool)],
}

impl Tx {
    pub async fn insert_user(&mut self, u: NewUser<'_>, now: i64) -> Result<UserRow> {
        let id = random_id();
        sqlx::query(
            "INSERT INTO users (id, name, display_name, role, disabled, created_at) VALUES (?, ?, ?, ?, FALSE, ?)",
        )
        .bind(&id)
        .bind(u.name)
        .bind(u.display_name)
        .bind(u.role.as_str())
        .bind(now)
        .execute(self.conn())
        .await
        .map_err(StoreError::from_write)?;
        Ok(UserRow {
            id,
            name: u.name.into(),
            display_name: u.display_name.into(),
            role: u.role.as_str().into(),
            disabled: false,
            created_at: now,
        })
    }

    pub async fn disable_user(&mut self, user_id: &str, now: i64) -> Result<()> {
        let n = sqlx::query("UPDATE users SET disabled = TRUE WHERE id = ?")
            .bind(user_id)
            .execute(self.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(user_id)
            .execute(self.conn())
            .await?;
        sqlx::query("UPDATE enrolments SET revoked_at = ? WHERE user_id = ? AND used_at IS NULL AND revoked_at IS NULL")
            .bind(now)
            .bind(user_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    pub async fn insert_enrolment(
        &mut self,
        user_id: &str,
        token_hash: &str,
        now: i64,
        expires_at: i64,
        first_admin: bool,
    ) -> Result<EnrolmentRow> {
        let id = random_id();
        sqlx::query(
            "INSERT INTO enrolments (id, user_id, token_hash, created_at, expires_at, first_admin) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(token_hash)
        .bind(now)
        .bind(expires_at)
        .bind(first_admin)
        .execute(self.conn())
        .await
        .map_err(StoreError::from_write)?;
        Ok(EnrolmentRow {
            id,
            user_id: user_id.into(),
            token_hash: token_hash.into(),
            created_at: now,
            expires_at,
            used_at: None,
            revoked_at: None,
            first_admin,
        })
    }

    /// Consume a pending, unexpired enrolment atomically. `None` if it is not usable (any reason).
    pub async fn consume_enrolment(
        &mut self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<EnrolmentRow>> {
        let row: Option<EnrolmentRow> = sqlx::query_as(
            "UPDATE enrolments SET used_at = ? WHERE token_hash = ? AND used_at IS NULL \
             AND revoked_at IS NULL AND expires_at > ? RETURNING *",
        )
        .bind(now)
        .bind(token_hash)
        .bind(now)
        .fetch_optional(self.conn())
        .await?;
        Ok(row)
    }

    pub async fn revoke_enrolment(&mut self, id: &str, now: i64) -> Result<bool> {
        Ok(sqlx::query("UPDATE enrolments SET revoked_at = ? WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(self.conn())
            .await?
            .rows_affected()
            > 0)
    }

    /// Revoke every other unused first-admin link (the first admin exists now).
    pub async fn revoke_first_admin_links(&mut self, now: i64) -> Result<()> {
        sqlx::query("UPDATE enrolments SET revoked_at = ? WHERE first_admin = TRUE AND used_at IS NULL AND revoked_at IS NULL")
            .bind(now)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    pub async fn insert_device(&mut self, d: NewDevice<'_>, now: i64) -> Result<DeviceRow> {
        let id = random_id();
        sqlx::query(
            "INSERT INTO devices (id, user_id, name, kind, credential_id, passkey, public_key, \
             backup_eligible, restricted_ok, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, FALSE, ?)",
        )
        .bind(&id)
        .bind(d.user_id)
        .bind(d.name)
        .bind(d.kind.as_str())
        .bind(d.credential_id)
        .bind(d.passkey)
        .bind(d.public_key)
        .bind(d.backup_eligible)
        .bind(now)
        .execute(self.conn())
        .await
        .map_err(StoreError::from_write)?;
        Ok(DeviceRow {
            id,
            user_id: d.user_id.into(),
            name: d.name.into(),
            kind: d.kind.as_str().into(),
            credential_id: d.credential_id.map(Into::into),
            passkey: d.passkey.map(Into::into),
            public_key: d.public_key.map(Into::into),
            backup_eligible: d.backup_eligible,
            restricted_ok: false,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
        })
    }

    /// Record a successful login: the updated passkey (counter) and last use.
    pub async fn device_used(
        &mut self,
        device_id: &str,
        passkey: Option<&str>,
        backup_eligible: Option<bool>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET last_used_at = ?, passkey = COALESCE(?, passkey), \
             backup_eligible = COALESCE(?, backup_eligible) WHERE id = ?",
        )
        .bind(now)
        .bind(passkey)
        .bind(backup_eligible)
        .bind(device_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Revoke a device and end its sessions. Returns false if it was already revoked.
    pub async fn revoke_device(&mut self, device_id: &str, reason: &str, now: i64) -> Result<bool> {
        let n = sqlx::query("UPDATE devices SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(reason)
            .bind(device_id)
            .execute(self.conn())
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE sessions SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(device_id)
        .execute(self.conn())
        .await?;
        Ok(n > 0)
    }

    pub async fn set_device_restricted(&mut self, device_id: &str, allowed: bool) -> Result<()> {
        let n = sqlx::query("UPDATE devices SET restricted_ok = ? WHERE id = ?")
            .bind(allowed)
            .bind(device_id)
            .execute(self.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn insert_session(
        &mut self,
        id_hash: &str,
        user_id: &str,
        device_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, device_id, created_at, last_seen_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(device_id)
        .bind(now)
        .bind(now)
        .bind(expires_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    pub async fn end_session(&mut self, id_hash: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id_hash = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(id_hash)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    pub async fn insert_meeting(&mut self, m: NewMeeting<'_>, now: i64) -> Result<String> {
        let id = random_id();
        sqlx::query(
            "INSERT INTO meetings (id, title, level, organiser_id, starts_at, ends_at, lobby, capacity, locked, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, FALSE, ?)",
        )
        .bind(&id)
        .bind(m.title)
        .bind(m.level.as_str())
        .bind(m.organiser_id)
        .bind(m.starts_at)
        .bind(m.ends_at)
        .bind(m.lobby)
        .bind(m.capacity as i64)
        .bind(now)
        .execute(self.conn())
        .await?;
        for (user_id, host) in m.invitations {
            sqlx::query("INSERT INTO invitations (meeting_id, user_id, host) VALUES (?, ?, ?)")
                .bind(&id)
                .bind(user_id)
                .bind(host)
                .execute(self.conn())
                .await
                .map_err(StoreError::from_write)?;
        }
        Ok(id)
    }

    pub async fn set_meeting_locked(&mut self, meeting_id: &str, locked: bool) -> Result<()> {
        let n = sqlx::query("UPDATE meetings SET locked = ? WHERE id = ?")
            .bind(locked)
            .bind(meeting_id)
            .execute(self.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

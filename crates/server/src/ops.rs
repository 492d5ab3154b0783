//! Administrative operations shared by the web API and the CLI, each one transaction with its
//! audit entry. The caller tells the live server (directly, or through the admin socket).

use crate::http::Error;
use crate::state::unix_now;
use sealroom_proto::{CreateMeeting, EnrolmentLink, EnrolmentView, Level, Role};
use sealroom_store::{
    hash_secret, random_secret, AuditEntry, EnrolmentRow, NewMeeting, NewUser, Store, UserRow,
};
use serde_json::json;

fn entry(kind: &str, actor: &str, subject: &str, detail: serde_json::Value) -> AuditEntry {
    AuditEntry {
        at: unix_now(),
        kind: kind.into(),
        actor: actor.into(),
        subject: subject.into(),
        source: String::new(),
        detail: detail.to_string(),
    }
}

/// User names: 1 to 32 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_user_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "bad_user_name",
            "A user name has 1 to 32 characters: lowercase letters, digits, '.', '_' or '-'."
                .into(),
        ))
    }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<String, Error> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "bad_text",
            format!("The {field} must have 1 to {max} printable characters."),
        ));
    }
    Ok(s.to_string())
}

pub fn enrolment_view(e: &EnrolmentRow, user_name: &str) -> EnrolmentView {
    EnrolmentView {
        id: e.id.clone(),
        user_name: user_name.into(),
        created_at: e.created_at,
        expires_at: e.expires_at,
        state: e.state(unix_now()).into(),
    }
}

/// Create an enrolment link for a user.
pub async fn new_enrolment(
    store: &Store,
    origin: &str,
    user: &UserRow,
    expiry_secs: i64,
    first_admin: bool,
    actor: &str,
) -> Result<EnrolmentLink, Error> {
    let token = random_secret();
    let now = unix_now();
    let mut tx = store.begin().await?;
    let e = tx
        .insert_enrolment(
            &user.id,
            &hash_secret(&token),
            now,
            now + expiry_secs,
            first_admin,
        )
        .await?;
    tx.audit(entry(
        "enrolment.created",
        actor,
        &format!("user:{}", user.name),
        json!({"enrolment": e.id, "expires_at": e.expires_at, "first_admin": first_admin}),
    ))
    .await?;
    tx.commit().await?;
    Ok(EnrolmentLink {
        enrolment: enrolment_view(&e, &user.name),
        url: format!("{origin}/enrol#{token}"),
    })
}

pub fn expiry_for(cfg: &crate::config::EnrolmentLimits, role: Role) -> i64 {
    if role == Role::Admin {
        cfg.admin_expiry_secs
    } else {
        cfg.expiry_secs
    }
}

/// Create a user and its first enrolment link.
pub async fn create_user(
    store: &Store,
    cfg: &crate::config::Config,
    origin: &str,
    name: &str,
    display_name: &str,
    role: Role,
    actor: &str,
) -> Result<EnrolmentLink, Error> {
    check_user_name(name)?;
    let display_name = check_text("display name", display_name, 64)?;
    let mut tx = store.begin().await?;
    let user = tx
        .insert_user(
            NewUser {
                name,
                display_name: &display_name,
                role,
            },
            unix_now(),
        )
        .await
        .map_err(|e| match e {
            sealroom_store::StoreError::Conflict => Error::Conflict(
                "user_exists",
                format!("A user named {name} already exists."),
            ),
            e => e.into(),
        })?;
    tx.audit(entry(
        "user.created",
        actor,
        &format!("user:{name}"),
        json!({"role": role.as_str()}),
    ))
    .await?;
    tx.commit().await?;
    new_enrolment(
        store,
        origin,
        &user,
        expiry_for(&cfg.enrolment, role),
        false,
        actor,
    )
    .await
}

/// Revoke a device and end its sessions (the caller closes its sockets).
pub async fn revoke_device(
    store: &Store,
    device_id: &str,
    actor: &str,
    reason: &str,
) -> Result<bool, Error> {
    if store.device(device_id).await?.is_none() {
        return Err(Error::NotFound);
    }
    let mut tx = store.begin().await?;
    let changed = tx.revoke_device(device_id, reason, unix_now()).await?;
    if changed {
        tx.audit(entry(
            "device.revoked",
            actor,
            &format!("device:{device_id}"),
            json!({"reason": reason}),
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(changed)
}

pub async fn disable_user(store: &Store, user: &UserRow, actor: &str) -> Result<(), Error> {
    let mut tx = store.begin().await?;
    tx.disable_user(&user.id, unix_now()).await?;
    tx.audit(entry(
        "user.disabled",
        actor,
        &format!("user:{}", user.name),
        json!({}),
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Create a meeting. The organiser is always invited and a host.
pub async fn create_meeting(
    store: &Store,
    organiser: &UserRow,
    req: &CreateMeeting,
    actor: &str,
) -> Result<String, Error> {
    let title = check_text("title", &req.title, 120)?;
    if req.capacity == 0 || req.capacity > 1000 {
        return Err(Error::BadRequest(
            "bad_capacity",
            "Capacity must be between 1 and 1000.".into(),
        ));
    }
    if let (Some(s), Some(e)) = (req.starts_at, req.ends_at) {
        if e <= s {
            return Err(Error::BadRequest(
                "bad_window",
                "The meeting must end after it starts.".into(),
            ));
        }
    }
    if req.invitees.len() + req.hosts.len() > 2000 {
        return Err(Error::BadRequest(
            "too_many_invitees",
            "Too many invitees.".into(),
        ));
    }
    let mut invitations: Vec<(String, bool)> = vec![(organiser.id.clone(), true)];
    let mut names: Vec<(&String, bool)> = req.invitees.iter().map(|n| (n, false)).collect();
    names.extend(req.hosts.iter().map(|n| (n, true)));
    for (name, host) in names {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let Some(u) = store.user_by_name(name).await? else {
            return Err(Error::BadRequest(
                "unknown_user",
                format!("There is no user named {name}."),
            ));
        };
        match invitations.iter_mut().find(|(id, _)| *id == u.id) {
            Some(inv) => inv.1 |= host,
            None => invitations.push((u.id, host)),
        }
    }
    let mut tx = store.begin().await?;
    let id = tx
        .insert_meeting(
            NewMeeting {
                title: &title,
                level: req.level,
                organiser_id: &organiser.id,
                starts_at: req.starts_at,
                ends_at: req.ends_at,
                lobby: req.lobby,
                capacity: req.capacity,
                invitations: &invitations,
            },
            unix_now(),
        )
        .await?;
    tx.audit(entry(
        "meeting.created",
        actor,
        &format!("meeting:{id}"),
        json!({"level": req.level.as_str(), "lobby": req.lobby, "capacity": req.capacity, "invited": invitations.len(),
               "hosts": invitations.iter().filter(|i| i.1).count(), "starts_at": req.starts_at, "ends_at": req.ends_at}),
    ))
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Parse a level name for the CLI.
pub fn parse_level(s: &str) -> Result<Level, Error> {
    Level::parse(s).ok_or_else(|| {
        Error::BadRequest(
            "bad_level",
            format!("Unknown level {s}: use open, internal or restricted."),
        )
    })
}

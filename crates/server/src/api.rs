//! REST handlers for meetings, devices and administration.

use crate::http::{ApiResult, Authed, Error, JsonBody};
use crate::ops;
use crate::state::AppRef;
use axum::extract::{Path, State};
use axum::Json;
use sealroom_proto::*;
use sealroom_store::DeviceRow;
use serde_json::{json, Value};

fn device_view(d: &DeviceRow) -> DeviceView {
    DeviceView {
        id: d.id.clone(),
        name: d.name.clone(),
        kind: d.kind(),
        restricted_ok: d.restricted_ok,
        backup_eligible: d.backup_eligible,
        revoked: d.revoked(),
        created_at: d.created_at,
        last_used_at: d.last_used_at,
    }
}

fn require_admin(a: &Authed) -> ApiResult<()> {
    if a.user.role() == Role::Admin && a.device.kind() == DeviceKind::Passkey {
        Ok(())
    } else {
        Err(Error::Forbidden)
    }
}

fn require_organiser(a: &Authed) -> ApiResult<()> {
    if a.user.role().may_organise() && a.device.kind() == DeviceKind::Passkey {
        Ok(())
    } else {
        Err(Error::Forbidden)
    }
}

pub async fn my_devices(State(app): State<AppRef>, a: Authed) -> ApiResult<Json<Vec<DeviceView>>> {
    Ok(Json(
        app.store
            .devices_of(&a.user.id)
            .await?
            .iter()
            .map(device_view)
            .collect(),
    ))
}

/// Revoke a device: end its sessions in the store and its sockets now.
async fn revoke(app: &AppRef, device_id: &str, actor: &str, reason: &str) -> ApiResult<()> {
    ops::revoke_device(&app.store, device_id, actor, reason).await?;
    app.hub
        .close_device(device_id, RefusalReason::DeviceRevoked);
    Ok(())
}

pub async fn revoke_my_device(
    State(app): State<AppRef>,
    a: Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    match app.store.device(&id).await? {
        Some(d) if d.user_id == a.user.id => {}
        _ => return Err(Error::NotFound),
    }
    revoke(&app, &id, &a.actor(), "revoked by its owner").await?;
    Ok(Json(json!({})))
}

pub async fn my_meetings(
    State(app): State<AppRef>,
    a: Authed,
) -> ApiResult<Json<Vec<MeetingSummary>>> {
    let mut out = Vec::new();
    for im in app.store.meetings_of(&a.user.id).await? {
        let m = im.meeting;
        let invitees = app.store.invitees(&m.id).await?;
        let organiser = app
            .store
            .user(&m.organiser_id)
            .await?
            .map(|u| u.name)
            .unwrap_or_default();
        out.push(MeetingSummary {
            level: m.level(),
            id: m.id,
            title: m.title,
            lobby: m.lobby,
            locked: m.locked,
            capacity: m.capacity as u32,
            starts_at: m.starts_at,
            ends_at: m.ends_at,
            host: im.host,
            organiser,
            hosts: invitees
                .iter()
                .filter(|i| i.1)
                .map(|i| i.0.clone())
                .collect(),
            invitees: invitees.into_iter().map(|i| i.0).collect(),
        });
    }
    Ok(Json(out))
}

pub async fn create_meeting(
    State(app): State<AppRef>,
    a: Authed,
    JsonBody(req): JsonBody<CreateMeeting>,
) -> ApiResult<Json<MeetingCreated>> {
    require_organiser(&a)?;
    let id = ops::create_meeting(&app.store, &a.user, &req, &a.actor()).await?;
    Ok(Json(MeetingCreated {
        url: format!("{}/m/{id}", app.origin),
        id,
    }))
}

pub async fn user_refs(State(app): State<AppRef>, a: Authed) -> ApiResult<Json<Vec<UserRef>>> {
    require_organiser(&a)?;
    Ok(Json(
        app.store
            .users()
            .await?
            .into_iter()
            .filter(|u| !u.disabled)
            .map(|u| UserRef {
                name: u.name,
                display_name: u.display_name,
            })
            .collect(),
    ))
}

pub async fn admin_users(State(app): State<AppRef>, a: Authed) -> ApiResult<Json<Vec<UserView>>> {
    require_admin(&a)?;
    let mut out = Vec::new();
    for u in app.store.users().await? {
        let devices = app
            .store
            .devices_of(&u.id)
            .await?
            .iter()
            .map(device_view)
            .collect();
        out.push(UserView {
            role: u.role(),
            id: u.id,
            name: u.name,
            display_name: u.display_name,
            disabled: u.disabled,
            devices,
        });
    }
    Ok(Json(out))
}

pub async fn admin_create_user(
    State(app): State<AppRef>,
    a: Authed,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<Json<EnrolmentLink>> {
    require_admin(&a)?;
    Ok(Json(
        ops::create_user(
            &app.store,
            &app.config,
            &app.origin,
            &req.name,
            &req.display_name,
            req.role,
            &a.actor(),
        )
        .await?,
    ))
}

pub async fn admin_new_enrolment(
    State(app): State<AppRef>,
    a: Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Value>,
) -> ApiResult<Json<EnrolmentLink>> {
    require_admin(&a)?;
    let user = app.store.user(&id).await?.ok_or(Error::NotFound)?;
    if user.disabled {
        return Err(Error::BadRequest(
            "user_disabled",
            "This user is disabled.".into(),
        ));
    }
    let expiry = ops::expiry_for(&app.config.enrolment, user.role());
    Ok(Json(
        ops::new_enrolment(&app.store, &app.origin, &user, expiry, false, &a.actor()).await?,
    ))
}

pub async fn admin_disable_user(
    State(app): State<AppRef>,
    a: Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    require_admin(&a)?;
    let user = app.store.user(&id).await?.ok_or(Error::NotFound)?;
    if user.id == a.user.id {
        return Err(Error::BadRequest(
            "self_disable",
            "You cannot disable your own account.".into(),
        ));
    }
    ops::disable_user(&app.store, &user, &a.actor()).await?;
    app.hub.close_user(&user.id, RefusalReason::SessionEnded);
    Ok(Json(json!({})))
}

pub async fn admin_enrolments(
    State(app): State<AppRef>,
    a: Authed,
) -> ApiResult<Json<Vec<EnrolmentView>>> {
    require_admin(&a)?;
    Ok(Json(
        app.store
            .enrolments()
            .await?
            .iter()
            .map(|(e, name)| ops::enrolment_view(e, name))
            .collect(),
    ))
}

pub async fn admin_revoke_enrolment(
    State(app): State<AppRef>,
    a: Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    require_admin(&a)?;
    let mut tx = app.store.begin().await?;
    if !tx.revoke_enrolment(&id, crate::state::unix_now()).await? {
        return Err(Error::NotFound);
    }
    tx.audit(app.entry(
        "enrolment.revoked",
        &a.actor(),
        &format!("enrolment:{id}"),
        "",
        json!({}),
    ))
    .await?;
    tx.commit().await?;
    Ok(Json(json!({})))
}

pub async fn admin_revoke_device(
    State(app): State<AppRef>,
    a: Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    require_admin(&a)?;
    revoke(&app, &id, &a.actor(), "revoked by an administrator").await?;
    Ok(Json(json!({})))
}

pub async fn admin_device_restricted(
    State(app): State<AppRef>,
    a: Authed,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SetDeviceRestricted>,
) -> ApiResult<Json<Value>> {
    require_admin(&a)?;
    let mut tx = app.store.begin().await?;
    tx.set_device_restricted(&id, req.allowed).await?;
    tx.audit(app.entry(
        "device.restricted_approval",
        &a.actor(),
        &format!("device:{id}"),
        "",
        json!({"allowed": req.allowed}),
    ))
    .await?;
    tx.commit().await?;
    Ok(Json(json!({})))
}

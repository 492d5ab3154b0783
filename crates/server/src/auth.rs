//! Enrolment and login: passkeys (webauthn-rs, user verification required, discoverable
//! credentials) and software devices (Ed25519 challenge). Every ceremony is single-use and
//! expires; every outcome is audited in the transaction that records it.

use crate::http::{
    clear_session_cookie, session_cookie, set_session_cookie, ApiResult, Authed, ClientIp, Error,
    JsonBody,
};
use crate::state::{unix_now, AppRef, Ceremony, Limiters};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sealroom_proto::*;
use sealroom_store::{hash_secret, random_secret, DeviceRow, EnrolmentRow, NewDevice, Tx, UserRow};
use serde_json::json;
use webauthn_rs::prelude::*;
use webauthn_rs_proto::{
    AuthenticatorSelectionCriteria, ResidentKeyRequirement, UserVerificationPolicy,
};

const INVALID_LINK: &str = "This enrolment link is not valid: it was used, revoked or has expired. Ask an administrator for a new one.";
const LOGIN_FAILED: &str = "Sign-in failed.";

fn invalid_link() -> Error {
    Error::BadRequest("invalid_link", INVALID_LINK.into())
}

fn login_failed() -> Error {
    Error::BadRequest("login_failed", LOGIN_FAILED.into())
}

/// Device names: 1 to 64 printable characters.
pub fn check_device_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "bad_device_name",
            "A device name has 1 to 64 printable characters.".into(),
        ));
    }
    Ok(name.to_string())
}

/// The user id as the WebAuthn user handle.
pub fn user_uuid(user_id: &str) -> ApiResult<Uuid> {
    let bytes = URL_SAFE_NO_PAD
        .decode(user_id)
        .map_err(|_| Error::Internal("user id is not base64url".into()))?;
    Uuid::from_slice(&bytes).map_err(|_| Error::Internal("user id is not 16 bytes".into()))
}

/// A usable enrolment (pending, unexpired; first-admin links only from loopback).
async fn usable_enrolment(
    app: &AppRef,
    token: &str,
    ip: ClientIp,
) -> ApiResult<(EnrolmentRow, UserRow)> {
    let e = app
        .store
        .enrolment_by_token_hash(&hash_secret(token))
        .await?
        .ok_or_else(invalid_link)?;
    if e.state(unix_now()) != "pending"
        || (e.first_admin && (!ip.0.is_loopback() || app.store.admin_exists().await?))
    {
        return Err(invalid_link());
    }
    let user = app.store.user(&e.user_id).await?.ok_or_else(invalid_link)?;
    if user.disabled {
        return Err(invalid_link());
    }
    limited(
        app,
        "enrol",
        ip,
        Limiters::check(&app.limiters.enrol_account, &user.id).map_err(Error::RateLimited),
    )
    .await?;
    Ok((e, user))
}

fn limit(
    limiter: &governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    ip: ClientIp,
) -> ApiResult<()> {
    Limiters::check(limiter, &ip.0).map_err(Error::RateLimited)
}

/// Audit a rate-limit hit (aggregated per key and minute) and answer 429.
async fn limited(app: &AppRef, what: &str, ip: ClientIp, r: ApiResult<()>) -> ApiResult<()> {
    if let Err(Error::RateLimited(secs)) = &r {
        if let Some(folded) = app.limiters.should_audit(&format!("{what}:{}", ip.0)) {
            let e = app.entry(
                "rate_limited",
                "anonymous",
                what,
                &ip.0.to_string(),
                json!({"retry_after": secs, "earlier_hits_folded": folded}),
            );
            app.audit_alone(e).await?;
        }
    }
    r
}

pub async fn enrol_info(
    State(app): State<AppRef>,
    ip: ClientIp,
    JsonBody(req): JsonBody<EnrolInfoRequest>,
) -> ApiResult<Json<EnrolInfo>> {
    limited(&app, "enrol", ip, limit(&app.limiters.enrol_ip, ip)).await?;
    let (e, user) = usable_enrolment(&app, &req.token, ip).await?;
    Ok(Json(EnrolInfo {
        name: user.name.clone(),
        display_name: user.display_name.clone(),
        role: user.role(),
        expires_at: e.expires_at,
    }))
}

pub async fn enrol_passkey_start(
    State(app): State<AppRef>,
    ip: ClientIp,
    JsonBody(req): JsonBody<EnrolPasskeyStart>,
) -> ApiResult<Json<CeremonyStarted>> {
    limited(&app, "enrol", ip, limit(&app.limiters.enrol_ip, ip)).await?;
    let device_name = check_device_name(&req.device_name)?;
    let (e, user) = usable_enrolment(&app, &req.token, ip).await?;
    let mut exclude = Vec::new();
    for d in app.store.devices_of(&user.id).await? {
        if let Some(pk) = d
            .passkey
            .as_deref()
            .and_then(|p| serde_json::from_str::<Passkey>(p).ok())
        {
            exclude.push(pk.cred_id().clone());
        }
    }
    let (mut ccr, state) = app
        .webauthn
        .start_passkey_registration(
            user_uuid(&user.id)?,
            &user.name,
            &user.display_name,
            Some(exclude),
        )
        .map_err(|e| Error::Internal(format!("webauthn start: {e}")))?;
    // Discoverable credentials (username-less login) with user verification.
    ccr.public_key.authenticator_selection = Some(AuthenticatorSelectionCriteria {
        authenticator_attachment: None,
        resident_key: Some(ResidentKeyRequirement::Required),
        require_resident_key: true,
        user_verification: UserVerificationPolicy::Required,
    });
    let flow_id = app.put_ceremony(Ceremony::Register {
        state,
        token_hash: e.token_hash,
        device_name,
    });
    Ok(Json(CeremonyStarted {
        flow_id,
        options: serde_json::to_value(&ccr).map_err(|e| Error::Internal(e.to_string()))?,
    }))
}

/// Create a session for (user, device) in `tx`, ending the caller's previous session.
async fn new_session(
    app: &AppRef,
    tx: &mut Tx,
    headers: &HeaderMap,
    user: &UserRow,
    device: &DeviceRow,
) -> ApiResult<String> {
    let now = unix_now();
    if let Some(old) = session_cookie(headers) {
        tx.end_session(&hash_secret(&old), now).await?;
    }
    let token = random_secret();
    tx.insert_session(
        &hash_secret(&token),
        &user.id,
        &device.id,
        now,
        now + app.config.session.absolute_secs,
    )
    .await?;
    Ok(token)
}

fn me_of(user: &UserRow, device: &DeviceRow) -> Me {
    Me {
        user_id: user.id.clone(),
        name: user.name.clone(),
        display_name: user.display_name.clone(),
        role: user.role(),
        device_id: device.id.clone(),
        device_name: device.name.clone(),
        device_kind: device.kind(),
    }
}

fn logged_in(app: &AppRef, token: &str, me: Me) -> Response {
    let mut r = Json(me).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_session_cookie(token, app.config.session.absolute_secs),
    );
    r
}

pub async fn enrol_passkey_finish(
    State(app): State<AppRef>,
    ip: ClientIp,
    headers: HeaderMap,
    JsonBody(req): JsonBody<EnrolPasskeyFinish>,
) -> ApiResult<Response> {
    limited(&app, "enrol", ip, limit(&app.limiters.enrol_ip, ip)).await?;
    let Some(Ceremony::Register {
        state,
        token_hash,
        device_name,
    }) = app.take_ceremony(&req.flow_id)
    else {
        return Err(Error::BadRequest(
            "ceremony_expired",
            "This enrolment attempt expired. Start again.".into(),
        ));
    };
    if hash_secret(&req.token) != token_hash {
        return Err(invalid_link());
    }
    let (e, user) = usable_enrolment(&app, &req.token, ip).await?;
    let src = ip.0.to_string();
    let cred: RegisterPublicKeyCredential =
        serde_json::from_value(req.credential).map_err(|_| {
            Error::BadRequest(
                "bad_credential",
                "The passkey response is malformed.".into(),
            )
        })?;
    let passkey = match app.webauthn.finish_passkey_registration(&cred, &state) {
        Ok(p) => p,
        Err(err) => {
            let entry = app.entry(
                "enrolment.failed",
                &format!("user:{}", user.name),
                &format!("enrolment:{}", e.id),
                &src,
                json!({"reason": err.to_string()}),
            );
            app.audit_alone(entry).await?;
            return Err(Error::BadRequest(
                "passkey_refused",
                format!("The passkey was refused: {err}."),
            ));
        }
    };
    let cred_id = URL_SAFE_NO_PAD.encode(passkey.cred_id().as_slice());
    if app.store.device_by_credential(&cred_id).await?.is_some() {
        let entry = app.entry(
            "enrolment.failed",
            &format!("user:{}", user.name),
            &format!("enrolment:{}", e.id),
            &src,
            json!({"reason": "credential already registered"}),
        );
        app.audit_alone(entry).await?;
        return Err(Error::Conflict(
            "credential_exists",
            "This passkey is already registered.".into(),
        ));
    }
    let passkey_json =
        serde_json::to_value(&passkey).map_err(|e| Error::Internal(e.to_string()))?;
    let backup_eligible = passkey_json["cred"]["backup_eligible"]
        .as_bool()
        .unwrap_or(true);
    let now = unix_now();
    let mut tx = app.store.begin().await?;
    if tx.consume_enrolment(&e.token_hash, now).await?.is_none() {
        return Err(invalid_link());
    }
    let device = tx
        .insert_device(
            NewDevice {
                user_id: &user.id,
                name: &device_name,
                kind: DeviceKind::Passkey,
                credential_id: Some(&cred_id),
                passkey: Some(&passkey_json.to_string()),
                public_key: None,
                backup_eligible,
            },
            now,
        )
        .await?;
    if e.first_admin {
        tx.revoke_first_admin_links(now).await?;
    }
    let actor = format!("user:{}/device:{}", user.name, device.id);
    tx.audit(app.entry(
        "enrolment.completed",
        &actor,
        &format!("enrolment:{}", e.id),
        &src,
        json!({"first_admin": e.first_admin}),
    ))
    .await?;
    tx.audit(app.entry(
        "device.added",
        &actor,
        &format!("device:{}", device.id),
        &src,
        json!({"kind": "passkey", "name": device_name, "backup_eligible": backup_eligible}),
    ))
    .await?;
    let token = new_session(&app, &mut tx, &headers, &user, &device).await?;
    tx.audit(app.entry(
        "login.succeeded",
        &actor,
        &format!("user:{}", user.name),
        &src,
        json!({"method": "enrolment"}),
    ))
    .await?;
    tx.commit().await?;
    announce_device(&app, &user, &device);
    Ok(logged_in(&app, &token, me_of(&user, &device)))
}

/// A new device notifies the user's other devices and the admins (DESIGN.md section 7).
fn announce_device(app: &AppRef, user: &UserRow, device: &DeviceRow) {
    app.hub.device_added(
        &user.id,
        &device.id,
        ServerMsg::DeviceAdded {
            user_name: user.name.clone(),
            device_name: device.name.clone(),
            device_kind: device.kind(),
        },
    );
}

pub async fn enrol_software(
    State(app): State<AppRef>,
    ip: ClientIp,
    JsonBody(req): JsonBody<EnrolSoftware>,
) -> ApiResult<Json<EnrolSoftwareDone>> {
    limited(&app, "enrol", ip, limit(&app.limiters.enrol_ip, ip)).await?;
    let device_name = check_device_name(&req.device_name)?;
    let (e, user) = usable_enrolment(&app, &req.token, ip).await?;
    if user.role() != Role::Member {
        return Err(Error::BadRequest(
            "software_not_allowed",
            "Software devices are for members (bots) only; admins and organisers enrol a passkey."
                .into(),
        ));
    }
    let key: [u8; 32] = URL_SAFE_NO_PAD
        .decode(&req.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::BadRequest(
                "bad_public_key",
                "The public key must be 32 bytes of base64url.".into(),
            )
        })?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| {
        Error::BadRequest(
            "bad_public_key",
            "That is not a valid Ed25519 public key.".into(),
        )
    })?;
    let now = unix_now();
    let mut tx = app.store.begin().await?;
    if tx.consume_enrolment(&e.token_hash, now).await?.is_none() {
        return Err(invalid_link());
    }
    let device = tx
        .insert_device(
            NewDevice {
                user_id: &user.id,
                name: &device_name,
                kind: DeviceKind::Software,
                credential_id: None,
                passkey: None,
                public_key: Some(&req.public_key),
                backup_eligible: false,
            },
            now,
        )
        .await?;
    let actor = format!("user:{}/device:{}", user.name, device.id);
    let src = ip.0.to_string();
    tx.audit(app.entry(
        "enrolment.completed",
        &actor,
        &format!("enrolment:{}", e.id),
        &src,
        json!({}),
    ))
    .await?;
    tx.audit(app.entry(
        "device.added",
        &actor,
        &format!("device:{}", device.id),
        &src,
        json!({"kind": "software", "name": device_name}),
    ))
    .await?;
    tx.commit().await?;
    announce_device(&app, &user, &device);
    Ok(Json(EnrolSoftwareDone {
        device_id: device.id,
        user_name: user.name,
    }))
}

pub async fn login_passkey_start(
    State(app): State<AppRef>,
    ip: ClientIp,
) -> ApiResult<Json<CeremonyStarted>> {
    limited(&app, "login", ip, limit(&app.limiters.login_ip, ip)).await?;
    let (mut rcr, state) = app
        .webauthn
        .start_discoverable_authentication()
        .map_err(|e| Error::Internal(format!("webauthn start: {e}")))?;
    // A plain get() (the library forces conditional mediation for autofill UIs).
    rcr.mediation = None;
    let flow_id = app.put_ceremony(Ceremony::Login { state });
    Ok(Json(CeremonyStarted {
        flow_id,
        options: serde_json::to_value(&rcr).map_err(|e| Error::Internal(e.to_string()))?,
    }))
}

async fn login_refused(app: &AppRef, ip: ClientIp, subject: &str, reason: &str) -> ApiResult<()> {
    let e = app.entry(
        "login.failed",
        "anonymous",
        subject,
        &ip.0.to_string(),
        json!({"reason": reason}),
    );
    app.audit_alone(e).await?;
    Ok(())
}

pub async fn login_passkey_finish(
    State(app): State<AppRef>,
    ip: ClientIp,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LoginPasskeyFinish>,
) -> ApiResult<Response> {
    limited(&app, "login", ip, limit(&app.limiters.login_ip, ip)).await?;
    // Single use: the ceremony is gone whatever happens next (no replay of an assertion).
    let Some(Ceremony::Login { state }) = app.take_ceremony(&req.flow_id) else {
        login_refused(&app, ip, "ceremony", "unknown, used or expired challenge").await?;
        return Err(login_failed());
    };
    let Ok(cred) = serde_json::from_value::<PublicKeyCredential>(req.credential) else {
        login_refused(&app, ip, "ceremony", "malformed assertion").await?;
        return Err(login_failed());
    };
    let (uuid, raw_id) = match app.webauthn.identify_discoverable_authentication(&cred) {
        Ok(x) => x,
        Err(e) => {
            login_refused(&app, ip, "ceremony", &e.to_string()).await?;
            return Err(login_failed());
        }
    };
    let cred_id = URL_SAFE_NO_PAD.encode(raw_id);
    let device = app.store.device_by_credential(&cred_id).await?;
    let user = match &device {
        Some(d) => app.store.user(&d.user_id).await?,
        None => None,
    };
    let (Some(device), Some(user)) = (device, user) else {
        login_refused(
            &app,
            ip,
            &format!("credential:{cred_id}"),
            "unknown credential",
        )
        .await?;
        return Err(login_failed());
    };
    let subject = format!("device:{}", device.id);
    account_limit(&app, ip, &user.id).await?;
    if user_uuid(&user.id)? != uuid {
        login_refused(
            &app,
            ip,
            &subject,
            "user handle does not match the credential",
        )
        .await?;
        return Err(login_failed());
    }
    if device.revoked() || user.disabled {
        login_refused(
            &app,
            ip,
            &subject,
            if user.disabled {
                "user disabled"
            } else {
                "device revoked"
            },
        )
        .await?;
        return Err(Error::BadRequest(
            "device_revoked",
            "This device or account has been revoked. Ask an administrator.".into(),
        ));
    }
    let mut passkey: Passkey = device
        .passkey
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| Error::Internal(format!("device {} has no readable passkey", device.id)))?;
    let result = match app
        .webauthn
        .finish_discoverable_authentication_v2(&cred, state, &passkey)
    {
        Ok(r) => r,
        Err(WebauthnError::CredentialPossibleCompromise) => {
            // The signature counter went backwards: a cloned authenticator. Revoke the device.
            let now = unix_now();
            let mut tx = app.store.begin().await?;
            tx.revoke_device(
                &device.id,
                "signature counter went backwards (possible cloned passkey)",
                now,
            )
            .await?;
            tx.audit(app.entry(
                "device.revoked",
                "server",
                &subject,
                &ip.0.to_string(),
                json!({"reason": "clone_detected"}),
            ))
            .await?;
            tx.commit().await?;
            app.hub
                .close_device(&device.id, RefusalReason::DeviceRevoked);
            return Err(Error::BadRequest("device_revoked", "This passkey looks cloned (its signature counter went backwards); the device has been revoked.".into()));
        }
        Err(e) => {
            login_refused(&app, ip, &subject, &e.to_string()).await?;
            return Err(login_failed());
        }
    };
    if !result.user_verified() {
        login_refused(&app, ip, &subject, "user not verified").await?;
        return Err(login_failed());
    }
    passkey.update_credential(&result);
    let pk_json = serde_json::to_string(&passkey).map_err(|e| Error::Internal(e.to_string()))?;
    let be = result.backup_eligible();
    let detail = json!({"method": "passkey", "backup_eligible": be});
    complete_login(
        &app,
        ip,
        &headers,
        &user,
        &device,
        Some((&pk_json, be)),
        detail,
    )
    .await
}

/// Record a successful login (device use, new session, audit) in one transaction.
async fn complete_login(
    app: &AppRef,
    ip: ClientIp,
    headers: &HeaderMap,
    user: &UserRow,
    device: &DeviceRow,
    passkey: Option<(&str, bool)>,
    detail: serde_json::Value,
) -> ApiResult<Response> {
    let now = unix_now();
    let mut tx = app.store.begin().await?;
    tx.device_used(&device.id, passkey.map(|p| p.0), passkey.map(|p| p.1), now)
        .await?;
    let token = new_session(app, &mut tx, headers, user, device).await?;
    tx.audit(app.entry(
        "login.succeeded",
        &format!("user:{}/device:{}", user.name, device.id),
        &format!("user:{}", user.name),
        &ip.0.to_string(),
        detail,
    ))
    .await?;
    tx.commit().await?;
    Ok(logged_in(app, &token, me_of(user, device)))
}

/// Per-account login limit (after the account is known), audited like the per-address one.
async fn account_limit(app: &AppRef, ip: ClientIp, user_id: &str) -> ApiResult<()> {
    let r = Limiters::check(&app.limiters.login_account, &user_id.to_string())
        .map_err(Error::RateLimited);
    limited(app, "login", ip, r).await
}

pub async fn login_software_start(
    State(app): State<AppRef>,
    ip: ClientIp,
    JsonBody(req): JsonBody<SoftwareLoginStart>,
) -> ApiResult<Json<SoftwareChallenge>> {
    limited(&app, "login", ip, limit(&app.limiters.login_ip, ip)).await?;
    // The same answer for any device id: the challenge says nothing about whether it exists.
    let nonce = random_secret();
    let flow_id = app.put_ceremony(Ceremony::Software {
        nonce: nonce.clone(),
        device_id: req.device_id,
    });
    Ok(Json(SoftwareChallenge { flow_id, nonce }))
}

pub async fn login_software_finish(
    State(app): State<AppRef>,
    ip: ClientIp,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SoftwareLoginFinish>,
) -> ApiResult<Response> {
    limited(&app, "login", ip, limit(&app.limiters.login_ip, ip)).await?;
    let Some(Ceremony::Software { nonce, device_id }) = app.take_ceremony(&req.flow_id) else {
        login_refused(&app, ip, "ceremony", "unknown, used or expired challenge").await?;
        return Err(login_failed());
    };
    let subject = format!("device:{device_id}");
    if device_id != req.device_id {
        login_refused(&app, ip, &subject, "device id differs from the challenge").await?;
        return Err(login_failed());
    }
    let device = app.store.device(&device_id).await?;
    let user = match &device {
        Some(d) => app.store.user(&d.user_id).await?,
        None => None,
    };
    let (Some(device), Some(user)) = (device, user) else {
        login_refused(&app, ip, &subject, "unknown device").await?;
        return Err(login_failed());
    };
    account_limit(&app, ip, &user.id).await?;
    let key = device
        .public_key
        .as_deref()
        .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok());
    let sig = URL_SAFE_NO_PAD
        .decode(&req.signature)
        .ok()
        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
    let verified = match (key, sig) {
        (Some(k), Some(s)) => k
            .verify_strict(&software_login_message(&app.origin, &nonce, &device_id), &s)
            .is_ok(),
        _ => false,
    };
    if !verified || device.kind() != DeviceKind::Software {
        login_refused(&app, ip, &subject, "bad signature").await?;
        return Err(login_failed());
    }
    if device.revoked() || user.disabled {
        login_refused(&app, ip, &subject, "device revoked or user disabled").await?;
        return Err(Error::BadRequest(
            "device_revoked",
            "This device or account has been revoked.".into(),
        ));
    }
    complete_login(
        &app,
        ip,
        &headers,
        &user,
        &device,
        None,
        json!({"method": "software"}),
    )
    .await
}

pub async fn logout(State(app): State<AppRef>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(token) = session_cookie(&headers) {
        let hash = hash_secret(&token);
        let mut tx = app.store.begin().await?;
        tx.end_session(&hash, unix_now()).await?;
        tx.commit().await?;
        app.hub.close_session(&hash, RefusalReason::SessionEnded);
    }
    let mut r = Json(json!({})).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, clear_session_cookie());
    Ok(r)
}

pub async fn me(a: Authed) -> Json<Me> {
    Json(me_of(&a.user, &a.device))
}

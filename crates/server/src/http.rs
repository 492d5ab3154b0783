//! The HTTP edge: router, the error type that maps to status codes, Host/Origin/JSON checks,
//! security headers, the session extractor and the embedded web client.

use crate::state::{unix_now, AppRef};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sealroom_proto::{ApiError, RefusalReason};
use sealroom_store::{hash_secret, DeviceRow, SessionRow, UserRow};
use std::net::{IpAddr, SocketAddr};

/// Name of the session cookie (`__Host-`: Secure, Path=/, no Domain).
pub const COOKIE: &str = "__Host-sealroom";

/// Every error a handler can answer with. Messages are for users; details go to the log.
#[derive(Debug)]
pub enum Error {
    BadRequest(&'static str, String),
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict(&'static str, String),
    RateLimited(u64),
    /// The database's writers were too busy (an overloaded server): nothing was changed.
    Busy,
    Internal(String),
}

/// What a client is told when its request met a busy database.
pub const BUSY_MESSAGE: &str = "The server is busy; nothing was changed. Try again in a moment.";

impl From<sealroom_store::StoreError> for Error {
    fn from(e: sealroom_store::StoreError) -> Self {
        match e {
            sealroom_store::StoreError::Conflict => {
                Error::Conflict("conflict", "That already exists.".into())
            }
            sealroom_store::StoreError::NotFound => Error::NotFound,
            e if e.is_busy() => {
                tracing::warn!(error = %e, "database busy: a request was turned away");
                Error::Busy
            }
            e => Error::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Error::BadRequest(code, m) => (StatusCode::BAD_REQUEST, code, m),
            Error::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Sign in first.".into(),
            ),
            Error::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "You are not allowed to do that.".into(),
            ),
            Error::NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found.".into()),
            Error::Conflict(code, m) => (StatusCode::CONFLICT, code, m),
            Error::RateLimited(secs) => {
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(ApiError {
                        code: "rate_limited".into(),
                        message: format!("Too many attempts. Try again in {secs} s."),
                    }),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return r;
            }
            Error::Busy => {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(ApiError {
                        code: "busy".into(),
                        message: BUSY_MESSAGE.into(),
                    }),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
                return r;
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Something went wrong on the server; nothing was changed.".into(),
                )
            }
        };
        (
            status,
            Json(ApiError {
                code: code.into(),
                message,
            }),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, Error>;

/// JSON body extractor whose rejections are `ApiError`s (and never echo internals).
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(Error::BadRequest(
                "bad_request",
                format!("Malformed request: {}", e.body_text()),
            )),
        }
    }
}

/// The client's address (TCP peer, or forwarded-for from a trusted proxy).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppRef> for ClientIp {
    type Rejection = Error;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppRef,
    ) -> Result<Self, Error> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| Error::Internal("no peer address".into()))?;
        let xff = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        sealroom_policy::client_address(&app.config.networks, peer, xff)
            .map(ClientIp)
            .map_err(|e| Error::BadRequest("bad_forwarded_for", e.to_string()))
    }
}

/// A valid session with its user and device, re-read from the store on every request.
#[derive(Debug, Clone)]
pub struct Authed {
    pub session_hash: String,
    pub user: UserRow,
    pub device: DeviceRow,
}

impl Authed {
    /// Actor label for the audit log.
    pub fn actor(&self) -> String {
        format!("user:{}/device:{}", self.user.name, self.device.id)
    }
}

/// The session cookie's value, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Check a session token against the store: not revoked, not idle or past its lifetime, on a
/// device that is not revoked, for a user who is not disabled.
pub async fn validate_session(app: &AppRef, token: &str) -> ApiResult<Option<Authed>> {
    let hash = hash_secret(token);
    let Some(s): Option<SessionRow> = app.store.session(&hash).await? else {
        return Ok(None);
    };
    let now = unix_now();
    if s.revoked_at.is_some()
        || now >= s.expires_at
        || now - s.last_seen_at >= app.config.session.idle_secs
    {
        return Ok(None);
    }
    let (Some(user), Some(device)) = (
        app.store.user(&s.user_id).await?,
        app.store.device(&s.device_id).await?,
    ) else {
        return Ok(None);
    };
    if user.disabled || device.revoked() {
        return Ok(None);
    }
    if now - s.last_seen_at >= 30 {
        app.store.touch_session(&hash, now).await?;
    }
    Ok(Some(Authed {
        session_hash: hash,
        user,
        device,
    }))
}

/// Why a session token that `validate_session` refuses was valid once: `DeviceRevoked` for a
/// session on a revoked device, `SessionEnded` for any other (signed out, expired, idle, user
/// disabled). `None` for a token the store does not know, which must look like no token at all.
/// Only the holder of the token learns this, about their own session.
pub async fn session_end(
    app: &AppRef,
    token: &str,
) -> ApiResult<Option<(SessionRow, RefusalReason)>> {
    let Some(s): Option<SessionRow> = app.store.session(&hash_secret(token)).await? else {
        return Ok(None);
    };
    let revoked = app
        .store
        .device(&s.device_id)
        .await?
        .is_some_and(|d| d.revoked());
    let reason = if revoked {
        RefusalReason::DeviceRevoked
    } else {
        RefusalReason::SessionEnded
    };
    Ok(Some((s, reason)))
}

impl FromRequestParts<AppRef> for Authed {
    type Rejection = Error;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppRef,
    ) -> Result<Self, Error> {
        let token = session_cookie(&parts.headers).ok_or(Error::Unauthorized)?;
        validate_session(app, &token)
            .await?
            .ok_or(Error::Unauthorized)
    }
}

/// `Set-Cookie` for a new session.
pub fn set_session_cookie(token: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("token is url-safe base64")
}

pub fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-sealroom=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

/// Host check (421), Origin check on state-changing requests and the WebSocket (403),
/// JSON-only bodies (415), and security headers on every response.
async fn edge(State(app): State<AppRef>, req: Request, next: Next) -> Response {
    // HTTP/1.1 names the host in `Host`; HTTP/2 in the `:authority` pseudo-header (the URI).
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let host_ok = host.is_some_and(|h| h.eq_ignore_ascii_case(&app.host));
    if !host_ok {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            Json(ApiError {
                code: "wrong_host".into(),
                message: "This server does not answer for that host name.".into(),
            }),
        )
            .into_response();
    }
    let state_changing = !matches!(*req.method(), Method::GET | Method::HEAD);
    let is_ws = req.uri().path() == "/api/ws";
    if state_changing || is_ws {
        let origin_ok = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|o| o == app.origin);
        if !origin_ok {
            return (
                StatusCode::FORBIDDEN,
                Json(ApiError {
                    code: "bad_origin".into(),
                    message: "Requests must come from this server's own pages.".into(),
                }),
            )
                .into_response();
        }
    }
    if state_changing {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|c| {
                c.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(ApiError {
                    code: "json_only".into(),
                    message: "Request bodies must be JSON (Content-Type: application/json).".into(),
                }),
            )
                .into_response();
        }
    }
    let api = req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; media-src 'self' blob:; worker-src 'self'; object-src 'none'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'; \
             require-trusted-types-for 'script'; trusted-types sealroom-worker",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static(
            "camera=(self), microphone=(self), display-capture=(self), geolocation=()",
        ),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if app.tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    res
}

#[derive(rust_embed::RustEmbed)]
#[folder = "../../web/dist"]
struct WebAssets;

/// Serve the embedded web client: a file if it exists, else `index.html` (client routing).
async fn web(uri: axum::http::Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("api/") || path == "api" {
        return Error::NotFound.into_response();
    }
    let (file, name) = match WebAssets::get(path) {
        Some(f) if !path.is_empty() => (f, path),
        _ => match WebAssets::get("index.html") {
            Some(f) => (f, "index.html"),
            None => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The web client was not built into this binary: run `npm --prefix web ci && npm --prefix web run build`, then rebuild.",
                )
                    .into_response()
            }
        },
    };
    let mime = file.metadata.mimetype().to_string();
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, cache.to_string()),
        ],
        file.data.into_owned(),
    )
        .into_response()
}

pub fn router(app: AppRef) -> Router {
    use crate::{api, auth, ws};
    Router::new()
        .route("/api/enrol/info", post(auth::enrol_info))
        .route("/api/enrol/passkey/start", post(auth::enrol_passkey_start))
        .route(
            "/api/enrol/passkey/finish",
            post(auth::enrol_passkey_finish),
        )
        .route("/api/enrol/software", post(auth::enrol_software))
        .route("/api/login/passkey/start", post(auth::login_passkey_start))
        .route(
            "/api/login/passkey/finish",
            post(auth::login_passkey_finish),
        )
        .route(
            "/api/login/software/start",
            post(auth::login_software_start),
        )
        .route(
            "/api/login/software/finish",
            post(auth::login_software_finish),
        )
        .route("/api/logout", post(auth::logout))
        .route("/api/me", get(auth::me))
        .route("/api/me/devices", get(api::my_devices))
        .route("/api/me/devices/{id}/revoke", post(api::revoke_my_device))
        .route(
            "/api/meetings",
            get(api::my_meetings).post(api::create_meeting),
        )
        .route("/api/users", get(api::user_refs))
        .route(
            "/api/admin/users",
            get(api::admin_users).post(api::admin_create_user),
        )
        .route(
            "/api/admin/users/{id}/enrolments",
            post(api::admin_new_enrolment),
        )
        .route(
            "/api/admin/users/{id}/disable",
            post(api::admin_disable_user),
        )
        .route("/api/admin/enrolments", get(api::admin_enrolments))
        .route(
            "/api/admin/enrolments/{id}/revoke",
            post(api::admin_revoke_enrolment),
        )
        .route(
            "/api/admin/devices/{id}/revoke",
            post(api::admin_revoke_device),
        )
        .route(
            "/api/admin/devices/{id}/restricted",
            post(api::admin_device_restricted),
        )
        .route("/api/ws", get(ws::upgrade))
        .fallback(web)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn_with_state(app.clone(), edge))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_database_is_a_retryable_503_not_an_internal_error() {
        let e = Error::from(sealroom_store::StoreError::Busy);
        assert!(matches!(e, Error::Busy), "{e:?}");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(1))
        );
        let e = Error::from(sealroom_store::StoreError::Corrupt("x".into()));
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
    }
}

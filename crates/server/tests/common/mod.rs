//! A real server on port 0 with a temporary data directory, and native clients that speak to
//! it over loopback: HTTP with explicit cookies and Origin, WebSocket, software devices.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use sealroom_proto::*;
use sealroom_server::config::Config;
use sealroom_server::server::{start, Running};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

pub async fn server_with(edit: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::test_config(dir.path().to_path_buf());
    edit(&mut cfg);
    let running = start(cfg).await.expect("server starts");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    TestServer { running, dir, http }
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

/// A logged-in (or not) client.
#[derive(Clone)]
pub struct Client {
    pub origin: String,
    pub cookie: Option<String>,
    pub http: reqwest::Client,
    pub device_id: String,
    pub key: Option<SigningKey>,
}

impl TestServer {
    pub fn origin(&self) -> &str {
        &self.running.origin
    }

    pub fn anonymous(&self) -> Client {
        Client {
            origin: self.origin().into(),
            cookie: None,
            http: self.http.clone(),
            device_id: String::new(),
            key: None,
        }
    }

    /// Create a user directly through the shared operations (as an admin would).
    pub async fn user(&self, name: &str, role: Role) -> String {
        let link = sealroom_server::ops::create_user(
            &self.running.app.store,
            &self.running.app.config,
            self.origin(),
            name,
            name,
            role,
            "test",
        )
        .await
        .expect("create user");
        link.url
            .split_once('#')
            .expect("token in fragment")
            .1
            .to_string()
    }

    /// Create a member with an enrolled software device, logged in.
    pub async fn member(&self, name: &str) -> Client {
        let token = self.user(name, Role::Member).await;
        let mut c = self.anonymous();
        c.enrol_software(&token, &format!("{name}-bot")).await;
        c.login_software().await.expect("login");
        c
    }

    pub async fn meeting(&self, organiser: &str, req: CreateMeeting) -> String {
        let store = &self.running.app.store;
        let org = store
            .user_by_name(organiser)
            .await
            .expect("db")
            .expect("organiser exists");
        sealroom_server::ops::create_meeting(store, &org, &req, "test")
            .await
            .expect("meeting")
    }
}

pub fn meeting_req(level: Level, invitees: &[&str], hosts: &[&str], lobby: bool) -> CreateMeeting {
    CreateMeeting {
        title: "Quarterly review".into(),
        level,
        invitees: invitees.iter().map(|s| s.to_string()).collect(),
        hosts: hosts.iter().map(|s| s.to_string()).collect(),
        starts_at: None,
        ends_at: None,
        lobby,
        capacity: 10,
    }
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.origin, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        let mut r = self
            .http
            .post(self.url(path))
            .header("Origin", &self.origin)
            .json(&body);
        if let Some(c) = &self.cookie {
            r = r.header("Cookie", format!("__Host-sealroom={c}"));
        }
        r.send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(c) = &self.cookie {
            r = r.header("Cookie", format!("__Host-sealroom={c}"));
        }
        r.send().await.expect("request")
    }

    fn take_cookie(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().expect("ascii");
            if let Some(rest) = v.strip_prefix("__Host-sealroom=") {
                let val = rest.split(';').next().unwrap_or("");
                self.cookie = (!val.is_empty()).then(|| val.to_string());
            }
        }
    }

    pub async fn enrol_software(&mut self, token: &str, name: &str) -> reqwest::StatusCode {
        let key = SigningKey::from_bytes(&rand_bytes());
        let r = self
            .post(
                "/api/enrol/software",
                json!({"token": token, "device_name": name, "public_key": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes())}),
            )
            .await;
        let status = r.status();
        if status.is_success() {
            let done: EnrolSoftwareDone = r.json().await.expect("json");
            self.device_id = done.device_id;
            self.key = Some(key);
        }
        status
    }

    /// Log in with the software key; returns the error body on failure.
    pub async fn login_software(&mut self) -> Result<Me, (reqwest::StatusCode, Value)> {
        let r = self
            .post(
                "/api/login/software/start",
                json!({"device_id": self.device_id}),
            )
            .await;
        if !r.status().is_success() {
            return Err((r.status(), r.json().await.unwrap_or_default()));
        }
        let ch: SoftwareChallenge = r.json().await.expect("json");
        let sig = self
            .key
            .as_ref()
            .expect("enrolled")
            .sign(&software_login_message(
                &self.origin,
                &ch.nonce,
                &self.device_id,
            ));
        let body = json!({"flow_id": ch.flow_id, "device_id": self.device_id, "signature": URL_SAFE_NO_PAD.encode(sig.to_bytes())});
        let r = self.post("/api/login/software/finish", body).await;
        let status = r.status();
        if !status.is_success() {
            return Err((status, r.json().await.unwrap_or_default()));
        }
        self.take_cookie(&r);
        Ok(r.json().await.expect("json"))
    }

    pub async fn ws(&self) -> Ws {
        let ws_url = self.origin.replacen("http", "ws", 1) + "/api/ws";
        let mut req = ws_url.into_client_request().expect("request");
        req.headers_mut()
            .insert("Origin", self.origin.parse().expect("header"));
        if let Some(c) = &self.cookie {
            req.headers_mut().insert(
                "Cookie",
                format!("__Host-sealroom={c}").parse().expect("header"),
            );
        }
        let (stream, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connects");
        let mut ws = Ws { stream };
        match ws.next().await {
            ServerMsg::Hello { .. } => {}
            other => panic!("expected hello, got {other:?}"),
        }
        ws
    }
}

pub fn rand_bytes() -> [u8; 32] {
    rand::random()
}

pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    pub async fn send(&mut self, m: &ClientMsg) {
        self.send_raw(&serde_json::to_string(m).expect("json"))
            .await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Next server message (skipping pongs), within 5 s.
    pub async fn next(&mut self) -> ServerMsg {
        self.try_next(Duration::from_secs(5))
            .await
            .expect("a message within 5 s")
    }

    /// Next message, or `None` on timeout or close.
    pub async fn try_next(&mut self, within: Duration) -> Option<ServerMsg> {
        loop {
            let m = tokio::time::timeout(within, self.stream.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server message parses"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Wait for a message matching `pred`, skipping others.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next(left).await {
                Some(m) if pred(&m) => return m,
                Some(_) => continue,
                None => panic!("no {what} within 5 s"),
            }
        }
    }

    pub async fn join(&mut self, meeting_id: &str) -> ServerMsg {
        self.send(&ClientMsg::Join {
            meeting_id: meeting_id.into(),
        })
        .await;
        self.expect("join answer", |m| {
            matches!(
                m,
                ServerMsg::Refused { .. } | ServerMsg::Lobby | ServerMsg::Admitted { .. }
            )
        })
        .await
    }

    /// Whether the server closed the socket within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

pub fn refused_reason(m: &ServerMsg) -> Option<RefusalReason> {
    match m {
        ServerMsg::Refused { reason, .. } => Some(*reason),
        _ => None,
    }
}

impl TestServer {
    /// A user with a passkey-kind device and a session, written straight to the store. Used
    /// where a test needs a host (hosts must be passkey devices) but is not about WebAuthn,
    /// which the browser tests cover with a virtual authenticator.
    pub async fn passkey_user(&self, name: &str, role: Role) -> Client {
        let store = &self.running.app.store;
        let now = sealroom_server::state::unix_now();
        let mut tx = store.begin().await.expect("begin");
        let user = tx
            .insert_user(
                sealroom_store::NewUser {
                    name,
                    display_name: name,
                    role,
                },
                now,
            )
            .await
            .expect("user");
        let cred = sealroom_store::random_id();
        let device = tx
            .insert_device(
                sealroom_store::NewDevice {
                    user_id: &user.id,
                    name: "laptop",
                    kind: DeviceKind::Passkey,
                    credential_id: Some(&cred),
                    passkey: None,
                    public_key: None,
                    backup_eligible: false,
                },
                now,
            )
            .await
            .expect("device");
        let token = sealroom_store::random_secret();
        tx.insert_session(
            &sealroom_store::hash_secret(&token),
            &user.id,
            &device.id,
            now,
            now + 3600,
        )
        .await
        .expect("session");
        tx.commit().await.expect("commit");
        Client {
            origin: self.origin().into(),
            cookie: Some(token),
            http: self.http.clone(),
            device_id: device.id,
            key: None,
        }
    }

    /// Run the CLI against this server's data directory.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sealroom"))
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .output()
            .await
            .expect("cli runs")
    }
}

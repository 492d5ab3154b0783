//! A real server on port 0 with a temporary data directory, and native clients that speak to
//! it over loopback: HTTP with explicit cookies and Origin, WebSocket, software devices.
#![allow(dead_code)]

use sealroom_proto::*;
use sealroom_server::config::Config;
use sealroom_server::server::{start, Running};
use serde_json::Value;
use std::time::Duration;

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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    TestServer { running, dir, http }
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

/// A logged-in (or not) client: the native client crate plus raw HTTP for probing.
#[derive(Clone)]
pub struct Client {
    pub origin: String,
    pub cookie: Option<String>,
    pub http: reqwest::Client,
    pub device_id: String,
    pub identity: Option<sealroom_client::Identity>,
}

impl TestServer {
    pub fn origin(&self) -> &str {
        &self.running.origin
    }

    pub fn native(&self) -> sealroom_client::Client {
        sealroom_client::Client::new(self.origin(), None).expect("client")
    }

    pub fn anonymous(&self) -> Client {
        Client {
            origin: self.origin().into(),
            cookie: None,
            http: self.http.clone(),
            device_id: String::new(),
            identity: None,
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
        assert_eq!(c.enrol_software(&token, &format!("{name}-bot")).await, 200);
        c.login_software().await.expect("login");
        c
    }

    /// hana (organiser) hosts an open meeting that invites bob (`lobby`: he waits there):
    /// hana's socket is admitted, bob's is open but has not joined.
    pub async fn hana_hosts_bob(&self, lobby: bool) -> Hosted {
        let host = self.passkey_user("hana", Role::Organiser).await;
        let bob = self.member("bob").await;
        let id = self
            .meeting("hana", meeting_req(Level::Open, &["bob"], &[], lobby))
            .await;
        let mut h = host.ws().await;
        assert!(matches!(h.join(&id).await, ServerMsg::Admitted { .. }));
        let b = bob.ws().await;
        Hosted {
            host,
            bob,
            id,
            h,
            b,
        }
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

    pub fn native(&self) -> sealroom_client::Client {
        sealroom_client::Client::new(&self.origin, None).expect("client")
    }

    pub fn key(&self) -> ed25519_dalek::SigningKey {
        self.identity
            .as_ref()
            .expect("enrolled")
            .key()
            .expect("key")
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

    /// As an admin: revokes `device_id` through the admin API (panics unless it succeeds).
    pub async fn revoke_device(&self, device_id: &str) {
        let r = self
            .post(
                &format!("/api/admin/devices/{device_id}/revoke"),
                serde_json::json!({}),
            )
            .await;
        assert!(r.status().is_success(), "revoke: {}", r.status());
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(c) = &self.cookie {
            r = r.header("Cookie", format!("__Host-sealroom={c}"));
        }
        r.send().await.expect("request")
    }

    /// Enrol a software device through the native client; the HTTP status it got.
    pub async fn enrol_software(&mut self, token: &str, name: &str) -> u16 {
        match self.native().enrol_software(token, name).await {
            Ok(id) => {
                self.device_id = id.device_id.clone();
                self.identity = Some(id);
                200
            }
            Err(sealroom_client::Error::Api { status, .. }) => status,
            Err(e) => panic!("enrolment failed oddly: {e}"),
        }
    }

    /// Log in with the software key.
    pub async fn login_software(&mut self) -> Result<Me, sealroom_client::Error> {
        let session = self
            .native()
            .login(self.identity.as_ref().expect("enrolled"))
            .await?;
        self.cookie = Some(session.cookie().to_string());
        Ok(session.me)
    }

    pub async fn ws(&self) -> Ws {
        let native = self.native();
        let sig = match &self.cookie {
            Some(_) => {
                // Reuse this client's session cookie.
                let session = sealroom_client::Session::from_cookie(
                    native,
                    self.cookie.clone().expect("cookie"),
                );
                session.signaling().await
            }
            None => native.signaling_unauthenticated().await,
        };
        Ws {
            sig: sig.expect("ws connects"),
        }
    }
}

pub fn rand_bytes() -> [u8; 32] {
    rand::random()
}

/// [`TestServer::hana_hosts_bob`]: the two people, the meeting and their sockets.
pub struct Hosted {
    pub host: Client,
    pub bob: Client,
    pub id: String,
    pub h: Ws,
    pub b: Ws,
}

pub struct Ws {
    pub sig: sealroom_client::Signaling,
}

impl Ws {
    pub async fn send(&mut self, m: &ClientMsg) {
        self.sig.send(m).await.expect("send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.sig.send_text(text).await.expect("send");
    }

    /// Next server message, within 5 s.
    pub async fn next(&mut self) -> ServerMsg {
        self.try_next(Duration::from_secs(5))
            .await
            .expect("a message within 5 s")
    }

    /// Next message, or `None` on timeout or close.
    pub async fn try_next(&mut self, within: Duration) -> Option<ServerMsg> {
        self.sig.next(within).await.expect("server message parses")
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
        self.sig.closed_within(within).await
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
            identity: None,
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

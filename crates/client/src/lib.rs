//! The native sealroom client: enrols a software (Ed25519) device from an enrolment link, logs
//! in by signing the server's challenge, and speaks the signaling WebSocket — the same
//! admission path a browser takes. Bots, load generators and tests use it; [`media`] adds a
//! str0m media session that publishes synthetic audio and video and counts what it receives,
//! end to end encrypted by [`e2ee`] (an MLS member of the meeting's group, SFrame on every
//! frame; nothing is sent without a group key).
//!
//! It never trusts the server with its key: the key file stays on this machine (mode 0600)
//! and only signatures over domain-separated challenges leave it.

#![forbid(unsafe_code)]

pub mod assets;
pub mod e2ee;
pub mod media;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use sealroom_proto::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// What went wrong, and whose fault it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error.
    #[error("server refused ({status}): {message} [{code}]")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The network or TLS failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The server sent something that is not a sealroom message.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server no longer accepts our session and says why (`device_revoked`, or
    /// `session_ended` for one signed out, expired or of a disabled user).
    #[error("session ended: {message} [{code}]")]
    SessionEnded { code: String, message: String },
    /// The caller gave a link, URL or file we cannot use.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing the identity file failed.
    #[error("identity file: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An enrolled software device: which server, which device, and its private key.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub origin: String,
    pub device_id: String,
    pub user_name: String,
    /// Ed25519 secret key, base64url.
    secret: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("origin", &self.origin)
            .field("device_id", &self.device_id)
            .field("user_name", &self.user_name)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The device's signing key.
    pub fn key(&self) -> Result<SigningKey> {
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&self.secret)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Usage("the identity file holds no valid key".into()))?;
        Ok(SigningKey::from_bytes(&bytes))
    }

    /// Write to `path`, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(
            serde_json::to_string_pretty(self)
                .map_err(|e| Error::Usage(e.to_string()))?
                .as_bytes(),
        )?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Identity> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
    }
}

/// Split an enrolment link `https://host/enrol#token` into (origin, token).
pub fn parse_enrolment_link(link: &str) -> Result<(String, String)> {
    let url = url::Url::parse(link).map_err(|e| Error::Usage(format!("not a URL: {e}")))?;
    let token = url
        .fragment()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Usage("the enrolment link has no token after '#'".into()))?;
    Ok((url.origin().ascii_serialization(), token.to_string()))
}

/// Split a meeting URL `https://host/m/<id>` into (origin, meeting id); a bare id is returned as is.
pub fn parse_meeting(arg: &str) -> (Option<String>, String) {
    match url::Url::parse(arg) {
        Ok(u) => {
            let id = u
                .path()
                .trim_start_matches("/m/")
                .trim_matches('/')
                .to_string();
            (Some(u.origin().ascii_serialization()), id)
        }
        Err(_) => (None, arg.to_string()),
    }
}

/// An HTTP client for one sealroom server.
#[derive(Clone)]
pub struct Client {
    origin: String,
    http: reqwest::Client,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client for `origin` (`http://localhost:port` or `https://host`). For https, `ca_pem`
    /// is the certificate authority to trust (for example the server's self-signed CA).
    pub fn new(origin: &str, ca_pem: Option<&[u8]>) -> Result<Client> {
        let origin = origin.trim_end_matches('/').to_string();
        // reqwest is built without a default crypto provider; ring is the one we ship.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        let mut tls = None;
        if origin.starts_with("https://") {
            let pem = ca_pem.ok_or_else(|| {
                Error::Usage("an https server needs --ca <file> (its CA certificate)".into())
            })?;
            let mut roots = rustls::RootCertStore::empty();
            let certs = pem_certificates(pem)?;
            for c in &certs {
                roots
                    .add(rustls::pki_types::CertificateDer::from(c.clone()))
                    .map_err(|e| Error::Usage(format!("CA certificate: {e}")))?;
            }
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let config = Arc::new(config);
            builder = builder.use_preconfigured_tls((*config).clone());
            tls = Some(config);
        }
        Ok(Client {
            origin,
            http: builder
                .build()
                .map_err(|e| Error::Transport(e.to_string()))?,
            tls,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        cookie: Option<&str>,
    ) -> Result<(T, Option<String>)> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.origin))
            .header("Origin", &self.origin)
            .json(body);
        if let Some(c) = cookie {
            req = req.header("Cookie", format!("__Host-sealroom={c}"));
        }
        let res = req
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = res.status();
        let cookie = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("__Host-sealroom="))
            .filter_map(|v| v.split(';').next())
            .find(|v| !v.is_empty())
            .map(str::to_string);
        if !status.is_success() {
            let err: ApiError = res.json().await.unwrap_or(ApiError {
                code: "unknown".into(),
                message: status.to_string(),
            });
            return Err(Error::Api {
                status: status.as_u16(),
                code: err.code,
                message: err.message,
            });
        }
        let value = res
            .json()
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok((value, cookie))
    }

    /// Enrol a new software device with the token of an enrolment link.
    pub async fn enrol_software(&self, token: &str, device_name: &str) -> Result<Identity> {
        let key = SigningKey::from_bytes(&rand::random());
        let body = EnrolSoftware {
            token: token.into(),
            device_name: device_name.into(),
            public_key: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
        };
        let (done, _): (EnrolSoftwareDone, _) =
            self.post("/api/enrol/software", &body, None).await?;
        Ok(Identity {
            origin: self.origin.clone(),
            device_id: done.device_id,
            user_name: done.user_name,
            secret: URL_SAFE_NO_PAD.encode(key.to_bytes()),
        })
    }

    /// Log in: sign the server's challenge with the device key.
    pub async fn login(&self, id: &Identity) -> Result<Session> {
        let (ch, _): (SoftwareChallenge, _) = self
            .post(
                "/api/login/software/start",
                &SoftwareLoginStart {
                    device_id: id.device_id.clone(),
                },
                None,
            )
            .await?;
        let sig = id.key()?.sign(&software_login_message(
            &self.origin,
            &ch.nonce,
            &id.device_id,
        ));
        let finish = SoftwareLoginFinish {
            flow_id: ch.flow_id,
            device_id: id.device_id.clone(),
            signature: URL_SAFE_NO_PAD.encode(sig.to_bytes()),
        };
        let (me, cookie): (Me, _) = self
            .post("/api/login/software/finish", &finish, None)
            .await?;
        let cookie = cookie
            .ok_or_else(|| Error::Protocol("login succeeded without a session cookie".into()))?;
        Ok(Session {
            client: self.clone(),
            cookie,
            me,
        })
    }
}

fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>> {
    let text =
        std::str::from_utf8(pem).map_err(|_| Error::Usage("CA file is not PEM text".into()))?;
    let mut out = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body = block
            .split("-----END CERTIFICATE-----")
            .next()
            .ok_or_else(|| Error::Usage("unterminated PEM certificate".into()))?;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| Error::Usage("bad base64 in PEM certificate".into()))?,
        );
    }
    if out.is_empty() {
        return Err(Error::Usage("no certificate in the CA file".into()));
    }
    Ok(out)
}

/// A logged-in session.
#[derive(Clone)]
pub struct Session {
    client: Client,
    cookie: String,
    pub me: Me,
}

impl Session {
    /// A session from a cookie obtained elsewhere (`me` is filled in lazily by the caller).
    pub fn from_cookie(client: Client, cookie: String) -> Session {
        Session {
            client,
            cookie,
            me: Me {
                user_id: String::new(),
                name: String::new(),
                display_name: String::new(),
                role: Role::Member,
                device_id: String::new(),
                device_name: String::new(),
                device_kind: DeviceKind::Software,
            },
        }
    }

    /// The session cookie's value (for callers making their own requests).
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Open the signaling WebSocket; the server's `hello` has been read.
    pub async fn signaling(&self) -> Result<Signaling> {
        self.client
            .connect(Some(&self.cookie), SocketState::Authenticated)
            .await
    }
}

impl Client {
    /// A signaling socket without a session (it can only be refused; for probing tests).
    pub async fn signaling_unauthenticated(&self) -> Result<Signaling> {
        self.connect(None, SocketState::Unauthenticated).await
    }

    async fn connect(&self, cookie: Option<&str>, expect: SocketState) -> Result<Signaling> {
        let ws_url = self.origin.replacen("http", "ws", 1) + "/api/ws";
        let mut req = ws_url
            .into_client_request()
            .map_err(|e| Error::Usage(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(
            "Origin",
            self.origin
                .parse()
                .map_err(|_| Error::Usage("origin".into()))?,
        );
        if let Some(c) = cookie {
            h.insert(
                "Cookie",
                format!("__Host-sealroom={c}")
                    .parse()
                    .map_err(|_| Error::Usage("cookie".into()))?,
            );
        }
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        // `true`: TCP_NODELAY (no Nagle delay behind an unacknowledged message), as browsers do.
        let (stream, _) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector)
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
        let mut s = Signaling {
            stream,
            origin: self.origin.clone(),
            admission: None,
        };
        let since = tokio::time::Instant::now();
        match s.answer(since, ANSWER_WITHIN, "the server's hello").await? {
            ServerMsg::Hello { ended: Some(e), .. } => Err(Error::SessionEnded {
                code: e.reason.as_str().into(),
                message: e.message,
            }),
            ServerMsg::Hello { state, .. } if state == expect => Ok(s),
            other => Err(Error::Protocol(format!(
                "expected hello({expect:?}), got {other:?}"
            ))),
        }
    }
}

/// How long the client waits for the server's hello, and for the answer to a join. An
/// overloaded server is slow, not silent: 16 joining a video meeting of 44, at well over the
/// SFU's capacity on the bench's machine, waited 6 s at the median for their first frame
/// (`sealroom-bench --scenarios join-load --join-load-n 44 --join-n 16`).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The signaling WebSocket. It remembers the admission it has seen pass (meeting, who we
/// are, who else is there), so a media session started on it knows which meeting's MLS group
/// to join.
pub struct Signaling {
    stream: WsStream,
    origin: String,
    admission: Option<Admission>,
}

/// What the server told this socket about the meeting it is admitted to.
#[derive(Debug, Clone)]
pub struct Admission {
    pub meeting: MeetingInfo,
    /// Our participant id.
    pub you: String,
    /// The latest participant list (ours included).
    pub participants: Vec<Participant>,
}

/// How a join ended.
#[derive(Debug, Clone)]
pub enum JoinOutcome {
    Admitted {
        meeting: MeetingInfo,
        you: String,
        participants: Vec<Participant>,
    },
    Lobby,
    Refused(RefusalReason, String),
}

impl Signaling {
    /// The server's origin (its id in MLS bindings).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The meeting this socket is admitted to, as last seen on it.
    pub fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    /// Keeps [`Signaling::admission`] current.
    fn observe(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::Admitted {
                meeting,
                you,
                participants,
                ..
            } => {
                self.admission = Some(Admission {
                    meeting: meeting.clone(),
                    you: you.clone(),
                    participants: participants.clone(),
                })
            }
            ServerMsg::Participants { participants } => {
                if let Some(a) = &mut self.admission {
                    a.participants = participants.clone();
                }
            }
            ServerMsg::MeetingUpdate { meeting } => {
                if let Some(a) = &mut self.admission {
                    a.meeting = meeting.clone();
                }
            }
            ServerMsg::Refused { .. } | ServerMsg::Left => self.admission = None,
            _ => {}
        }
    }

    pub async fn send(&mut self, msg: &ClientMsg) -> Result<()> {
        let text = serde_json::to_string(msg).map_err(|e| Error::Protocol(e.to_string()))?;
        self.send_text(&text).await
    }

    /// Send raw text (for adversarial tests of the server).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| Error::Transport(e.to_string()))
    }

    /// Send a raw binary frame (for adversarial tests of the server).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.stream
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| Error::Transport(e.to_string()))
    }

    /// The next server message (pongs included); `None` when the socket closed or `within`
    /// passed.
    pub async fn next(&mut self, within: Duration) -> Result<Option<ServerMsg>> {
        // `recv` is cancel-safe, so a timeout loses no message.
        match tokio::time::timeout(within, self.recv()).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    /// The next server message, however long it takes; `None` when the socket closed.
    /// Cancel-safe: a message is taken from the socket only when it is returned.
    pub async fn recv(&mut self) -> Result<Option<ServerMsg>> {
        loop {
            match self.stream.next().await {
                None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Text(t))) => {
                    let msg: ServerMsg = serde_json::from_str(t.as_str())
                        .map_err(|e| Error::Protocol(format!("{e}: {t}")))?;
                    self.observe(&msg);
                    return Ok(Some(msg));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Whether the server closes the socket within `within` (messages before that are skipped).
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

    /// Ask to join and wait for the decision.
    pub async fn join(&mut self, meeting_id: &str) -> Result<JoinOutcome> {
        self.join_within(meeting_id, ANSWER_WITHIN).await
    }

    async fn join_within(&mut self, meeting_id: &str, within: Duration) -> Result<JoinOutcome> {
        self.send(&ClientMsg::Join {
            meeting_id: meeting_id.into(),
        })
        .await?;
        let since = tokio::time::Instant::now();
        loop {
            match self.answer(since, within, "the answer to the join").await? {
                ServerMsg::Admitted {
                    meeting,
                    you,
                    participants,
                    ..
                } => {
                    return Ok(JoinOutcome::Admitted {
                        meeting,
                        you,
                        participants,
                    })
                }
                ServerMsg::Lobby => return Ok(JoinOutcome::Lobby),
                ServerMsg::Refused { reason, message } => {
                    return Ok(JoinOutcome::Refused(reason, message))
                }
                ServerMsg::Error { code, message } => {
                    return Err(Error::Api {
                        status: 0,
                        code,
                        message,
                    });
                }
                _ => continue,
            }
        }
    }

    /// The next server message within `within` of `since`. The error says which went wrong:
    /// the socket closed, or `what` did not come in time (a slow server is not a closed one).
    async fn answer(
        &mut self,
        since: tokio::time::Instant,
        within: Duration,
        what: &str,
    ) -> Result<ServerMsg> {
        match tokio::time::timeout_at(since + within, self.recv()).await {
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) => Err(Error::Transport(format!("the socket closed before {what}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Transport(format!(
                "{what} did not come within {} s",
                within.as_secs_f64()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signaling socket to a fake server on loopback that says hello and then does
    /// `then` with the server's end.
    async fn fake_server<F, Fut>(then: F) -> Signaling
    where
        F: FnOnce(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp)
                .await
                .expect("handshake");
            let hello = ServerMsg::Hello {
                state: SocketState::Authenticated,
                ended: None,
            };
            let text = serde_json::to_string(&hello).expect("json");
            ws.send(Message::Text(text.into())).await.expect("hello");
            then(ws).await;
        });
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
            .await
            .expect("connect");
        let mut s = Signaling {
            stream,
            origin: format!("http://{addr}"),
            admission: None,
        };
        let hello = s
            .answer(tokio::time::Instant::now(), ANSWER_WITHIN, "the hello")
            .await
            .expect("hello");
        assert!(matches!(hello, ServerMsg::Hello { .. }), "{hello:?}");
        s
    }

    #[tokio::test]
    async fn a_join_unanswered_in_time_is_not_called_a_closed_socket() {
        // The server reads the join and says nothing (an overloaded server is slow).
        let mut s = fake_server(|mut ws| async move {
            let _join = ws.next().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let e = s
            .join_within("m", Duration::from_millis(200))
            .await
            .expect_err("no answer");
        assert_eq!(
            e.to_string(),
            Error::Transport("the answer to the join did not come within 0.2 s".into()).to_string()
        );

        // The server closes the socket instead of answering.
        let mut s = fake_server(|mut ws| async move {
            let _join = ws.next().await;
            let _ = ws.close(None).await;
        })
        .await;
        let e = s
            .join_within("m", Duration::from_secs(5))
            .await
            .expect_err("closed");
        assert!(
            e.to_string()
                .contains("the socket closed before the answer to the join"),
            "{e}"
        );
    }

    #[test]
    fn enrolment_links_and_meeting_urls_parse() {
        let (o, t) =
            parse_enrolment_link("https://meet.example:8443/enrol#abc_DEF-1").expect("link");
        assert_eq!(
            (o.as_str(), t.as_str()),
            ("https://meet.example:8443", "abc_DEF-1")
        );
        assert!(parse_enrolment_link("https://meet.example/enrol").is_err());
        assert!(parse_enrolment_link("not a link").is_err());
        assert_eq!(
            parse_meeting("http://localhost:8443/m/XYZ"),
            (Some("http://localhost:8443".into()), "XYZ".into())
        );
        assert_eq!(parse_meeting("XYZ"), (None, "XYZ".into()));
    }

    #[test]
    fn identity_files_are_private_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("sealroom-id-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let id = Identity {
            origin: "http://localhost:1".into(),
            device_id: "d".into(),
            user_name: "u".into(),
            secret: URL_SAFE_NO_PAD.encode([7u8; 32]),
        };
        let path = dir.join("id.json");
        id.save(&path).expect("save");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let back = Identity::load(&path).expect("load");
        assert_eq!(back.key().expect("key").to_bytes(), [7u8; 32]);
        assert!(
            !format!("{back:?}").contains(&back.secret),
            "Debug leaks the key"
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}

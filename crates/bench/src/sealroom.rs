//! The sealroom side: start `sealroom serve` with a temporary data directory where the SFU
//! lives, provision people and a meeting with its CLI, enrol a software device per load
//! participant, and join through the real admission path (crates/client's signaling). Media
//! then runs in a [`crate::peer`] without MLS: the SFU forwards opaque bytes. The encrypted
//! join ([`Sealroom::join_e2ee`]) instead runs the native client's whole media session: an
//! MLS member with SFrame on every frame, as a user's client is.

use crate::peer::{PeerConfig, PeerHandle};
use crate::system::Net;
use crate::Participant;
use anyhow::{bail, Context};
use sealroom_client::media::{MediaOptions, MediaSession};
use sealroom_client::{Client, JoinOutcome, Session, Signaling};
use sealroom_proto::{ClientMsg, MediaSource, ServerMsg, Source};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `sealroom serve`.
pub struct Sealroom {
    child: tokio::process::Child,
    pub pid: u32,
    dir: tempfile::TempDir,
    bin: PathBuf,
    client: Client,
    rooms: u32,
}

/// A meeting and one logged-in software device per participant.
pub struct Room {
    pub meeting: String,
    sessions: Vec<Session>,
}

impl Room {
    /// Participant `index`'s logged-in session and the meeting id.
    fn participant(&self, index: usize) -> anyhow::Result<(Session, String)> {
        let session = self
            .sessions
            .get(index)
            .context("no such participant in the room")?;
        Ok((session.clone(), self.meeting.clone()))
    }
}

impl Sealroom {
    /// Start the server where `net` puts the SFU, pinned to `cpu`, with `shards` media
    /// shards; returns once it answers.
    pub async fn start(
        bin: &Path,
        net: &Net,
        cpu: Option<&str>,
        shards: usize,
    ) -> anyhow::Result<Sealroom> {
        let bin = std::fs::canonicalize(bin)
            .with_context(|| format!("no sealroom binary at {}", bin.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("sealroom-bench-")
            .tempdir()?;
        // The load logs in, enrols and joins far faster than people do.
        std::fs::write(
            dir.path().join("sealroom.toml"),
            "[rate_limits]\nlogin_per_ip = 1000000\nenrol_per_ip = 1000000\n\
             join_per_ip = 1000000\njoin_per_account = 1000000\n\
             login_per_account = 1000000\nenrol_per_account = 1000000\n",
        )?;
        // Local mode: plain HTTP on loopback (the signaling path is not what is measured);
        // media on the run's media address.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let origin = format!("http://localhost:{port}");
        let log = std::fs::File::create(dir.path().join("serve.log"))?;
        let mut cmd = net.command(cpu, &bin.to_string_lossy());
        cmd.arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--listen", &listen.to_string()])
            .args([
                "--media-listen",
                &SocketAddr::new(net.media_ip(), 0).to_string(),
                "--media-shards",
                &shards.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting sealroom serve")?;
        let pid = child.id().context("sealroom exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "sealroom serve exited ({status}): {}",
                    tail(&dir.path().join("serve.log"))
                );
            }
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("sealroom serve did not listen on {listen} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = Client::new(&origin, None)?;
        Ok(Sealroom {
            child,
            pid,
            dir,
            bin,
            client,
            rooms: 0,
        })
    }

    /// `sealroom --json <args>` on this server's data directory.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = tokio::process::Command::new(&self.bin)
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running the sealroom CLI")?;
        if !out.status.success() {
            bail!(
                "sealroom {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("sealroom {} printed no JSON", args.join(" ")))
    }

    /// A meeting for `n` participants: an organiser hosts it, each participant is a member
    /// with one enrolled, logged-in software device. Nothing here is timed.
    pub async fn room(&mut self, n: usize) -> anyhow::Result<Room> {
        self.rooms += 1;
        let r = self.rooms;
        let host = format!("host{r}");
        self.cli(&["user", "add", &host, "--role", "organiser"])
            .await?;
        let mut names = Vec::new();
        let mut sessions = Vec::new();
        for i in 0..n {
            let name = format!("r{r}p{i}");
            let v = self.cli(&["user", "add", &name]).await?;
            let link = v["enrolment_url"]
                .as_str()
                .context("`user add` printed no enrolment_url")?;
            let (_, token) = sealroom_client::parse_enrolment_link(link)?;
            let id = self
                .client
                .enrol_software(&token, &format!("load {i}"))
                .await
                .with_context(|| format!("enrolling {name}"))?;
            sessions.push(
                self.client
                    .login(&id)
                    .await
                    .with_context(|| format!("logging {name} in"))?,
            );
            names.push(name);
        }
        let capacity = (n + 1).to_string();
        let invite = names.join(",");
        let v = self
            .cli(&[
                "meeting",
                "create",
                "--title",
                "bench",
                "--level",
                "open",
                "--invite",
                &invite,
                "--host",
                &host,
                "--capacity",
                &capacity,
            ])
            .await?;
        let meeting = v["id"]
            .as_str()
            .context("`meeting create` printed no id")?
            .to_string();
        Ok(Room { meeting, sessions })
    }

    /// Start participant `index` joining now: signaling, admission, then media.
    pub fn join(&self, room: &Room, index: usize, cfg: PeerConfig) -> anyhow::Result<Participant> {
        let (session, meeting) = room.participant(index)?;
        let error = Arc::new(Mutex::new(None));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (e, p) = (error.clone(), peers.clone());
        let driver = tokio::spawn(async move {
            if let Err(err) = drive(session, meeting, cfg, p).await {
                *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            }
        });
        Ok(Participant::new(started, peers, error, driver))
    }

    /// Start participant `index` joining now with end-to-end encryption: signaling,
    /// admission, then the native client's media session (it joins the meeting's MLS group
    /// and encrypts and decrypts every frame), bound to `bind`.
    pub fn join_e2ee(
        &self,
        room: &Room,
        index: usize,
        bind: SocketAddr,
    ) -> anyhow::Result<E2eeParticipant> {
        let (session, meeting) = room.participant(index)?;
        let media = Arc::new(Mutex::new(None));
        let error = Arc::new(Mutex::new(None));
        let (m, e) = (media.clone(), error.clone());
        let task = tokio::spawn(async move {
            let since = Instant::now();
            let started = async {
                let sig = admitted(&session, &meeting).await?;
                let opts = MediaOptions {
                    bind,
                    since,
                    ..MediaOptions::default()
                };
                MediaSession::start(sig, opts)
                    .await
                    .map_err(|e| e.to_string())
            };
            match started.await {
                Ok(s) => *m.lock().unwrap_or_else(|p| p.into_inner()) = Some(s),
                Err(err) => *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(err),
            }
        });
        Ok(E2eeParticipant { media, error, task })
    }

    pub fn describe(&self) -> String {
        format!("sealroom ({})", self.bin.display())
    }

    /// The last lines of the server's log (warnings and errors), for a failure's report.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("serve.log"))
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A participant joining with end-to-end encryption ([`Sealroom::join_e2ee`]).
pub struct E2eeParticipant {
    media: Arc<Mutex<Option<MediaSession>>>,
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl E2eeParticipant {
    /// From the start of the join to the first frame from anyone that decrypted.
    pub fn first_decrypted_frame(&self) -> Option<Duration> {
        let media = self.media.lock().unwrap_or_else(|p| p.into_inner());
        media.as_ref()?.stats().first_remote_frame_after
    }

    /// Media connected and in the MLS group: what a later participant joins.
    pub fn settled(&self) -> bool {
        let media = self.media.lock().unwrap_or_else(|p| p.into_inner());
        media.as_ref().is_some_and(|m| {
            let st = m.stats();
            st.connected_after.is_some() && st.e2ee.state == "active"
        })
    }

    /// Why it failed, if it did (the join, or the media session ending by itself).
    pub fn failure(&self) -> Option<String> {
        if let Some(e) = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(e);
        }
        let media = self.media.lock().unwrap_or_else(|p| p.into_inner());
        media.as_ref()?.stats().ended
    }
}

impl Drop for E2eeParticipant {
    fn drop(&mut self) {
        // Dropping the media session stops its task and closes the signaling socket.
        self.task.abort();
    }
}

/// Opens `session`'s signaling and joins `meeting`; the socket once admitted.
async fn admitted(session: &Session, meeting: &str) -> Result<Signaling, String> {
    let mut sig = session.signaling().await.map_err(|e| e.to_string())?;
    match sig.join(meeting).await.map_err(|e| e.to_string())? {
        JoinOutcome::Admitted { .. } => Ok(sig),
        JoinOutcome::Lobby => Err("held in the lobby".into()),
        JoinOutcome::Refused(reason, message) => Err(format!("refused ({reason:?}): {message}")),
    }
}

/// One participant's signaling: join, offer our media, answer every renegotiation.
async fn drive(
    session: Session,
    meeting: String,
    cfg: PeerConfig,
    peers: Arc<Mutex<Vec<PeerHandle>>>,
) -> Result<(), String> {
    let mut sig = admitted(&session, &meeting).await?;
    let peer = PeerHandle::spawn(cfg).await?;
    peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(peer.clone());
    let offer = peer.offer().await?;
    let mut sources = Vec::new();
    if let Some(mid) = offer.audio_mid {
        sources.push(MediaSource {
            mid,
            source: Source::Microphone,
        });
    }
    if let Some(mid) = offer.video_mid {
        sources.push(MediaSource {
            mid,
            source: Source::Camera,
        });
    }
    sig.send(&ClientMsg::MediaOffer {
        sdp: offer.sdp,
        sources,
    })
    .await
    .map_err(|e| e.to_string())?;
    loop {
        match sig.recv().await.map_err(|e| e.to_string())? {
            None => return Err("the server closed the signaling socket".into()),
            Some(ServerMsg::MediaAnswer { sdp }) => peer.accept_answer(sdp).await?,
            Some(ServerMsg::MediaOffer { sdp }) => {
                let answer = peer.accept_offer(sdp).await?;
                sig.send(&ClientMsg::MediaAnswer { sdp: answer })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(ServerMsg::Refused { reason, message }) => {
                return Err(format!("removed ({reason:?}): {message}"))
            }
            Some(ServerMsg::Error { code, message }) if code.starts_with("media") => {
                return Err(format!("{code}: {message}"))
            }
            // Participant lists, MLS delivery (we are no MLS member), errors about it.
            Some(_) => {}
        }
    }
}

/// The end of a log file, for an error message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

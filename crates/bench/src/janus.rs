//! The Janus side: write a minimal configuration (core, VideoRoom, HTTP transport; nothing
//! else loaded), start Janus Gateway in the SFU's network namespace, and drive the same load
//! peers through its HTTP API, the way its own `janus.js` VideoRoom client does: one session
//! per participant, a publisher handle (`join`, `publish` with our offer) and one multistream
//! subscriber handle for every other feed (`join` as subscriber, Janus offers, we `start`
//! with our answer; later feeds are added with `subscribe`, one renegotiation at a time).
//!
//! Janus gathers no ICE candidates on loopback interfaces, so it needs [`Net::Netns`]; its
//! `ice_enforce_list` names the veth interface inside the namespace.

use crate::peer::{PeerConfig, PeerHandle};
use crate::sealroom::tail;
use crate::system::Net;
use crate::Participant;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the harness needs to know about the installed Janus.
#[derive(Debug, Clone)]
pub struct JanusOptions {
    pub bin: PathBuf,
    /// Where Debian puts plugins/, transports/, events/, loggers/.
    pub lib_dir: PathBuf,
    /// `event_loops`: handles share this many media loop threads (0: a thread per handle).
    pub event_loops: u32,
}

/// A running Janus.
pub struct Janus {
    child: tokio::process::Child,
    pub pid: u32,
    dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    rooms: u64,
    version: String,
}

/// A VideoRoom room.
pub struct Room {
    pub id: u64,
}

/// Plugins, transports, loggers and event handlers in `dir` other than `keep`, as Janus's
/// `disable` lists name them (file names of the unversioned `.so`).
fn others(dir: &Path, keep: &[&str]) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".so") && !keep.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

/// The three configuration files.
fn write_config(dir: &Path, opts: &JanusOptions, interface: &str) -> anyhow::Result<()> {
    let lib = &opts.lib_dir;
    let core = format!(
        r#"general: {{
	configs_folder = "{cfg}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 2
	debug_timestamps = false
	session_timeout = 120
	event_loops = {loops}
	server_name = "sealroom-bench"
}}
certificates: {{
}}
media: {{
	ipv6 = false
}}
nat: {{
	nice_debug = false
	ice_enforce_list = "{interface}"
	ice_ignore_list = ""
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
loggers: {{
	disable = "{loggers}"
}}
events: {{
	broadcast = false
	disable = "{events}"
}}
"#,
        cfg = dir.display(),
        lib = lib.display(),
        loops = opts.event_loops,
        plugins = others(&lib.join("plugins"), &["libjanus_videoroom.so"]),
        transports = others(&lib.join("transports"), &["libjanus_http.so"]),
        loggers = others(&lib.join("loggers"), &[]),
        events = others(&lib.join("events"), &[]),
    );
    std::fs::write(dir.join("janus.jcfg"), core)?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        "general: {\n\tjson = \"plain\"\n\tbase_path = \"/janus\"\n\thttp = true\n\
         \tport = 8088\n\thttps = false\n}\nadmin: {\n\tadmin_http = false\n\
         \tadmin_https = false\n}\ncors: {\n}\n",
    )?;
    Ok(())
}

impl Janus {
    /// Start Janus in `net`'s namespace, pinned to `cpu`; returns once its API answers.
    pub async fn start(opts: &JanusOptions, net: &Net, cpu: Option<&str>) -> anyhow::Result<Janus> {
        let Net::Netns { iface, .. } = net else {
            bail!("Janus needs a network namespace (it gathers no ICE candidates on loopback)");
        };
        let dir = tempfile::Builder::new().prefix("janus-bench-").tempdir()?;
        write_config(dir.path(), opts, iface)?;
        let log = std::fs::File::create(dir.path().join("janus.log"))?;
        let mut cmd = net.command(cpu, &opts.bin.to_string_lossy());
        cmd.arg("--config")
            .arg(dir.path().join("janus.jcfg"))
            .arg("--configs-folder")
            .arg(dir.path())
            .arg("--disable-colors")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let pid = child.id().context("janus exited at once")?;
        let base = "http://127.0.0.1:8088/janus".to_string();
        let http = reqwest::Client::builder()
            // Long polls are held up to 30 s by Janus.
            .timeout(Duration::from_secs(60))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "janus exited ({status}): {}",
                    tail(&dir.path().join("janus.log"))
                );
            }
            if let Ok(r) = http.get(format!("{base}/info")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    break v;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "janus did not answer on {base} within 30 s: {}",
                    tail(&dir.path().join("janus.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if info["plugins"]["janus.plugin.videoroom"].is_null() {
            bail!("janus started without the VideoRoom plugin: {info}");
        }
        let version = info["version_string"].as_str().unwrap_or("?").to_string();
        Ok(Janus {
            child,
            pid,
            dir,
            base,
            http,
            rooms: 0,
            version,
        })
    }

    /// A room that admits `publishers` publishers.
    pub async fn room(&mut self, publishers: usize) -> anyhow::Result<Room> {
        self.rooms += 1;
        let id = 1000 + self.rooms;
        let mut s = ApiSession::create(&self.http, &self.base)
            .await
            .map_err(anyhow::Error::msg)?;
        let h = s.attach().await.map_err(anyhow::Error::msg)?;
        let data = s
            .sync_request(
                h,
                json!({
                    "request": "create",
                    "room": id,
                    "publishers": publishers,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "notify_joining": false,
                    "bitrate": 0,
                    "fir_freq": 0,
                    "permanent": false,
                }),
            )
            .await
            .map_err(anyhow::Error::msg)?;
        if data["videoroom"] != "created" {
            bail!("janus did not create room {id}: {data}");
        }
        s.destroy().await;
        Ok(Room { id })
    }

    /// Start participant `index` joining now.
    pub fn join(&self, room: &Room, index: usize, cfg: PeerConfig) -> Participant {
        let error = Arc::new(Mutex::new(None));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (e, p) = (error.clone(), peers.clone());
        let (http, base, room) = (self.http.clone(), self.base.clone(), room.id);
        let driver = tokio::spawn(async move {
            if let Err(err) = drive(http, base, room, index, cfg, p).await {
                *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            }
        });
        Participant::new(started, peers, error, driver)
    }

    pub fn describe(&self) -> String {
        format!("Janus {}", self.version)
    }

    /// The last lines of Janus's log, for a failure's report.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("janus.log"))
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// One participant: publisher handle, then a multistream subscriber for every other feed.
async fn drive(
    http: reqwest::Client,
    base: String,
    room: u64,
    index: usize,
    cfg: PeerConfig,
    peers: Arc<Mutex<Vec<PeerHandle>>>,
) -> Result<(), String> {
    let mut s = ApiSession::create(&http, &base).await?;
    let publisher = s.attach().await?;
    let ev = s
        .async_request(
            publisher,
            json!({"request": "join", "ptype": "publisher", "room": room, "display": format!("p{index}")}),
            None,
        )
        .await?;
    let data = plugin_data(&ev)?;
    if data["videoroom"] != "joined" {
        return Err(format!("join as publisher: {data}"));
    }
    let me = data["id"].as_u64().ok_or("joined without a feed id")?;
    let private_id = data["private_id"].clone();
    let mut feeds: Vec<u64> = feed_ids(&data["publishers"]);

    let mut sub_cfg = cfg.clone();
    sub_cfg.audio = false;
    sub_cfg.video = false;
    let pub_peer = PeerHandle::spawn(cfg).await?;
    let sub_peer = PeerHandle::spawn(sub_cfg).await?;
    {
        let mut p = peers.lock().unwrap_or_else(|p| p.into_inner());
        p.push(pub_peer.clone());
        p.push(sub_peer.clone());
    }
    let offer = pub_peer.offer().await?;
    let ev = s
        .async_request(
            publisher,
            json!({"request": "publish"}),
            Some(json!({"type": "offer", "sdp": offer.sdp})),
        )
        .await?;
    let data = plugin_data(&ev)?;
    if data["configured"] != "ok" {
        return Err(format!("publish: {data}"));
    }
    let answer = jsep(&ev, "answer").ok_or("publish: no answer from janus")?;
    pub_peer.accept_answer(answer).await?;
    s.trickle_done(publisher).await?;

    let mut subscriber: Option<u64> = None;
    let mut subscribed: HashSet<u64> = HashSet::new();
    let mut trickled = false;
    loop {
        let new: Vec<u64> = feeds
            .iter()
            .copied()
            .filter(|f| *f != me && !subscribed.contains(f))
            .collect();
        if !new.is_empty() {
            let streams: Vec<Value> = new.iter().map(|f| json!({"feed": f})).collect();
            let (h, ev) = match subscriber {
                None => {
                    let h = s.attach().await?;
                    subscriber = Some(h);
                    let body = json!({"request": "join", "ptype": "subscriber", "room": room,
                        "streams": streams, "private_id": private_id});
                    (h, s.async_request(h, body, None).await?)
                }
                Some(h) => {
                    let body = json!({"request": "subscribe", "streams": streams});
                    (h, s.async_request(h, body, None).await?)
                }
            };
            plugin_data(&ev)?;
            subscribed.extend(new);
            if let Some(offer) = jsep(&ev, "offer") {
                start(&mut s, h, &sub_peer, offer).await?;
                if !trickled {
                    s.trickle_done(h).await?;
                    trickled = true;
                }
            }
            continue;
        }
        let ev = s.next_event().await?;
        let sender = ev["sender"].as_u64();
        if sender == Some(publisher) {
            if let Some(data) = ev["plugindata"]["data"].as_object() {
                if let Some(p) = data.get("publishers") {
                    feeds.extend(feed_ids(p));
                }
            }
        } else if sender.is_some() && sender == subscriber {
            // Janus renegotiates by itself when a feed goes away.
            if let (Some(h), Some(offer)) = (subscriber, jsep(&ev, "offer")) {
                start(&mut s, h, &sub_peer, offer).await?;
            }
        }
    }
}

/// Answer Janus's offer to the subscriber and send `start` with the answer.
async fn start(
    s: &mut ApiSession,
    handle: u64,
    peer: &PeerHandle,
    offer: String,
) -> Result<(), String> {
    let answer = peer.accept_offer(offer).await?;
    let ev = s
        .async_request(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
    plugin_data(&ev).map(|_| ())
}

fn feed_ids(publishers: &Value) -> Vec<u64> {
    publishers
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// The plugin's answer in an event; a plugin error becomes `Err`.
fn plugin_data(ev: &Value) -> Result<Value, String> {
    let data = &ev["plugindata"]["data"];
    if data.is_null() {
        return Err(format!("janus sent no plugin data: {ev}"));
    }
    if let Some(code) = data["error_code"].as_u64() {
        return Err(format!(
            "videoroom error {code}: {}",
            data["error"].as_str().unwrap_or("?")
        ));
    }
    Ok(data.clone())
}

/// The SDP of an event's JSEP of type `kind`.
fn jsep(ev: &Value, kind: &str) -> Option<String> {
    let j = &ev["jsep"];
    (j["type"] == kind)
        .then(|| j["sdp"].as_str().map(str::to_string))
        .flatten()
}

/// One Janus API session over HTTP: requests by POST, events by a long poll running in its
/// own task. Events answering one of our requests are matched by transaction; the rest wait
/// in order for [`ApiSession::next_event`].
struct ApiSession {
    http: reqwest::Client,
    url: String,
    events: mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    poller: tokio::task::JoinHandle<()>,
    next_tx: u64,
}

impl Drop for ApiSession {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("janus {url}: {e}"))?;
    let v: Value = r
        .json()
        .await
        .map_err(|e| format!("janus {url}: not JSON: {e}"))?;
    if v["janus"] == "error" {
        return Err(format!("janus error: {}", v["error"]));
    }
    Ok(v)
}

impl ApiSession {
    async fn create(http: &reqwest::Client, base: &str) -> Result<ApiSession, String> {
        let v = post(http, base, &json!({"janus": "create", "transaction": "c"})).await?;
        let id = v["data"]["id"]
            .as_u64()
            .ok_or("janus create: no session id")?;
        let url = format!("{base}/{id}");
        let (tx, rx) = mpsc::unbounded_channel();
        let poller = tokio::spawn(long_poll(http.clone(), url.clone(), tx));
        Ok(ApiSession {
            http: http.clone(),
            url,
            events: rx,
            backlog: VecDeque::new(),
            poller,
            next_tx: 0,
        })
    }

    fn transaction(&mut self) -> String {
        self.next_tx += 1;
        format!("t{}", self.next_tx)
    }

    async fn attach(&mut self) -> Result<u64, String> {
        let t = self.transaction();
        let v = post(
            &self.http,
            &self.url,
            &json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": t}),
        )
        .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| "janus attach: no handle id".to_string())
    }

    /// A request the plugin answers at once ("success" with plugin data).
    async fn sync_request(&mut self, handle: u64, body: Value) -> Result<Value, String> {
        let t = self.transaction();
        let v = post(
            &self.http,
            &format!("{}/{handle}", self.url),
            &json!({"janus": "message", "body": body, "transaction": t}),
        )
        .await?;
        plugin_data(&v)
    }

    /// A request the plugin acknowledges and answers later with an event (and maybe a JSEP).
    async fn async_request(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, String> {
        let t = self.transaction();
        let mut msg = json!({"janus": "message", "body": body, "transaction": t});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let v = post(&self.http, &format!("{}/{handle}", self.url), &msg).await?;
        if v["janus"] == "event" {
            return Ok(v);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = tokio::time::timeout(left, self.events.recv())
                .await
                .map_err(|_| format!("janus did not answer {} within 20 s", msg["body"]))?
                .ok_or("the janus session ended")?;
            if ev["transaction"] == t.as_str() && ev["janus"] == "event" {
                return Ok(ev);
            }
            self.backlog.push_back(ev);
        }
    }

    /// Tell Janus our candidates are all in the SDP.
    async fn trickle_done(&mut self, handle: u64) -> Result<(), String> {
        let t = self.transaction();
        post(
            &self.http,
            &format!("{}/{handle}", self.url),
            &json!({"janus": "trickle", "candidate": {"completed": true}, "transaction": t}),
        )
        .await
        .map(|_| ())
    }

    async fn next_event(&mut self) -> Result<Value, String> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(e);
        }
        self.events
            .recv()
            .await
            .ok_or_else(|| "the janus session ended".to_string())
    }

    async fn destroy(&mut self) {
        let t = self.transaction();
        let _ = post(
            &self.http,
            &self.url,
            &json!({"janus": "destroy", "transaction": t}),
        )
        .await;
    }
}

/// `GET <session>?maxev=N` in a loop; every event goes to `tx`.
async fn long_poll(http: reqwest::Client, url: String, tx: mpsc::UnboundedSender<Value>) {
    let mut rid = 0u64;
    loop {
        rid += 1;
        let Ok(r) = http.get(format!("{url}?maxev=20&rid={rid}")).send().await else {
            return;
        };
        let Ok(v) = r.json::<Value>().await else {
            return;
        };
        let events = match v {
            Value::Array(a) => a,
            other => vec![other],
        };
        for e in events {
            if e["janus"] == "keepalive" {
                continue;
            }
            if e["janus"] == "error" {
                return;
            }
            if tx.send(e).is_err() {
                return;
            }
        }
    }
}

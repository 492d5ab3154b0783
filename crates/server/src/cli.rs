//! The command line: `sealroom serve` and the admin commands (users, devices, meetings,
//! audit) that work on the data directory of a running or stopped server.

use crate::admin_socket::{notify, AdminNotice};
use crate::config::{Config, DataArgs, ServeArgs};
use crate::http::Error;
use crate::ops;
use crate::server::open_data;
use crate::state::unix_now;
use clap::{Parser, Subcommand};
use sealroom_proto::{CreateMeeting, Role};
use serde_json::json;
use std::io::IsTerminal;
use std::process::ExitCode;

/// sealroom: self-hosted, end-to-end encrypted conferences that cannot leak.
#[derive(Debug, Parser)]
#[command(name = "sealroom", version)]
pub struct Cli {
    #[command(flatten)]
    data: DataArgs,
    /// Print results as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the server (local mode on http://localhost:8443 with no configuration).
    Serve(Box<ServeArgs>),
    /// Manage people.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Manage meetings.
    #[command(subcommand)]
    Meeting(MeetingCmd),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Native client: enrol a software device, join meetings (bots, load tests).
    #[command(subcommand)]
    Client(ClientCmd),
}

#[derive(Debug, Subcommand)]
enum ClientCmd {
    /// Enrol a software device from a member's enrolment link; writes the identity file (0600).
    Enrol {
        link: String,
        /// Device name shown to others (as "software device").
        #[arg(long, default_value = "native client")]
        name: String,
        #[arg(long, default_value = "sealroom-identity.json")]
        identity: std::path::PathBuf,
        /// CA certificate to trust (https servers with a self-signed CA).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
    },
    /// Log in and join a meeting (URL or id); prints what the server says. Exit status 0 when
    /// admitted, 2 when refused.
    Join {
        /// Meeting URL or id (ids may start with `-`).
        #[arg(allow_hyphen_values = true)]
        meeting: String,
        #[arg(long, default_value = "sealroom-identity.json")]
        identity: std::path::PathBuf,
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// Stay this many seconds after the join decision, printing events (0: leave at once).
        #[arg(long, default_value_t = 0)]
        stay: u64,
        /// Once admitted, publish synthetic audio (Opus) and video (VP8) and receive the
        /// others' for --stay seconds; then print what arrived from whom.
        #[arg(long)]
        media: bool,
        /// With --media: send the video as three simulcast layers.
        #[arg(long, requires = "media")]
        simulcast: bool,
        /// With --media: local UDP address for media (advertised as the ICE host candidate).
        #[arg(long, default_value = "127.0.0.1:0", requires = "media")]
        media_bind: std::net::SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Create a user and print their single-use enrolment link.
    Add {
        name: String,
        #[arg(long, default_value = "member")]
        role: String,
        /// Name shown to others (default: the user name).
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List users and their devices.
    List,
    /// Print a new enrolment link for an existing user.
    Enrol { name: String },
    /// Disable a user: ends their sessions and closes their sockets at once.
    Disable { name: String },
}

#[derive(Debug, Subcommand)]
enum DeviceCmd {
    /// Revoke a device: ends its sessions and closes its sockets at once.
    Revoke {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Approve (or with --no, withdraw approval of) a device for restricted meetings.
    Approve {
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[arg(long)]
        no: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MeetingCmd {
    /// Create a meeting; prints its id and URL. The first host is its organiser.
    Create {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "internal")]
        level: String,
        /// Comma-separated user names to invite.
        #[arg(long, value_delimiter = ',', default_value = "")]
        invite: Vec<String>,
        /// Comma-separated user names who host (at least one; the first is the organiser).
        #[arg(long, value_delimiter = ',', required = true)]
        host: Vec<String>,
        /// Hold non-hosts in a lobby until a host admits them.
        #[arg(long)]
        lobby: bool,
        #[arg(long, default_value_t = 50)]
        capacity: u32,
        /// Start, unix seconds.
        #[arg(long)]
        starts_at: Option<i64>,
        /// End, unix seconds.
        #[arg(long)]
        ends_at: Option<i64>,
    },
    /// List meetings.
    List,
    /// Lock a meeting (no new joins).
    Lock {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Unlock a meeting.
    Unlock {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Recompute the hash chain and check signed checkpoints; exits 1 at the first bad entry.
    Verify,
    /// Print the log (for investigators); optionally only entries about one meeting.
    Show {
        #[arg(long, allow_hyphen_values = true)]
        meeting: Option<String>,
    },
    /// Verify the log, then report one meeting for an investigator (Markdown, or JSON with
    /// --json): participants with device, network and media path, refusals, key epochs, host
    /// actions, timeline. Exits 1 if the log is broken (the report then says so first).
    Report {
        /// The meeting's id.
        #[arg(allow_hyphen_values = true)]
        meeting: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEALROOM_LOG")
                .unwrap_or_else(|_| "sealroom=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // A worker looks at the sockets after every task it runs, not after every 61 (tokio's
    // default): the media task is woken by its UDP socket, and while signaling work was
    // queued on its worker (a join renegotiates with every member; each answer is an SDP
    // to parse) that wake waited for dozens of those tasks, and every meeting's forwarding
    // with it. Woken from the socket check, the media task runs next (tokio's LIFO slot).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .event_interval(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn api_err(e: Error) -> anyhow::Error {
    match e {
        Error::BadRequest(_, m) | Error::Conflict(_, m) => anyhow::anyhow!(m),
        Error::NotFound => anyhow::anyhow!("not found"),
        other => anyhow::anyhow!("{other:?}"),
    }
}

/// The public origin the CLI prints links for (as the server would compute it).
fn origin(cfg: &Config) -> String {
    let running = std::fs::read_to_string(cfg.data_dir.join("origin")).ok();
    match cfg.public_url.as_ref().or(running.as_ref()) {
        Some(u) => u.trim().trim_end_matches('/').to_string(),
        None if cfg.local_mode() => format!("http://localhost:{}", cfg.listen.port()),
        None => format!("https://{}", cfg.listen),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json_out = cli.json;
    let print = |human: String, value: serde_json::Value| {
        if json_out {
            println!("{value}");
        } else {
            println!("{human}");
        }
    };
    if let Cmd::Serve(flags) = &cli.cmd {
        return serve(Config::resolve(&cli.data, flags)?).await;
    }
    if let Cmd::Client(cmd) = cli.cmd {
        return client(cmd, json_out).await;
    }
    let cfg = Config::resolve(&cli.data, &ServeArgs::default())?;
    let (keys, store) = open_data(&cfg.data_dir).await?;
    let actor = format!(
        "cli:uid{}",
        std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(0)
    );
    match cli.cmd {
        Cmd::Serve(_) | Cmd::Client(_) => unreachable!("handled above"),
        Cmd::User(UserCmd::Add {
            name,
            role,
            display_name,
        }) => {
            let role = Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("unknown role {role}: use admin, organiser or member")
            })?;
            let link = ops::create_user(
                &store,
                &cfg,
                &origin(&cfg),
                &name,
                display_name.as_deref().unwrap_or(&name),
                role,
                &actor,
            )
            .await
            .map_err(api_err)?;
            print(
                format!(
                    "Created {name} ({}). Enrolment link (single use, expires in {} h):\n{}",
                    role.as_str(),
                    (link.enrolment.expires_at - unix_now() + 1800) / 3600,
                    link.url
                ),
                json!({"user": name, "role": role.as_str(), "enrolment_url": link.url, "expires_at": link.enrolment.expires_at}),
            );
        }
        Cmd::User(UserCmd::List) => {
            let mut rows = Vec::new();
            for u in store.users().await? {
                let devices: Vec<_> = store
                    .devices_of(&u.id)
                    .await?
                    .into_iter()
                    .map(|d| json!({"id": d.id, "name": d.name, "kind": d.kind, "revoked": d.revoked(), "restricted_ok": d.restricted_ok}))
                    .collect();
                rows.push(json!({"id": u.id, "name": u.name, "display_name": u.display_name, "role": u.role, "disabled": u.disabled, "devices": devices}));
            }
            if json_out {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in rows {
                    println!(
                        "{:<20} {:<10} {}{}",
                        r["name"].as_str().unwrap_or(""),
                        r["role"].as_str().unwrap_or(""),
                        r["display_name"].as_str().unwrap_or(""),
                        if r["disabled"] == true {
                            "  [disabled]"
                        } else {
                            ""
                        }
                    );
                    for d in r["devices"].as_array().into_iter().flatten() {
                        println!(
                            "    device {} {:<8} {}{}",
                            d["id"].as_str().unwrap_or(""),
                            d["kind"].as_str().unwrap_or(""),
                            d["name"].as_str().unwrap_or(""),
                            if d["revoked"] == true {
                                "  [revoked]"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
        Cmd::User(UserCmd::Enrol { name }) => {
            let u = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name}"))?;
            if u.disabled {
                anyhow::bail!("{name} is disabled");
            }
            let link = ops::new_enrolment(
                &store,
                &origin(&cfg),
                &u,
                ops::expiry_for(&cfg.enrolment, u.role()),
                false,
                &actor,
            )
            .await
            .map_err(api_err)?;
            print(
                link.url.clone(),
                json!({"user": name, "enrolment_url": link.url, "expires_at": link.enrolment.expires_at}),
            );
        }
        Cmd::User(UserCmd::Disable { name }) => {
            let u = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name}"))?;
            ops::disable_user(&store, &u, &actor)
                .await
                .map_err(api_err)?;
            let live = notify(
                &cfg.data_dir,
                &AdminNotice::UserDisabled {
                    user_id: u.id.clone(),
                },
            )
            .await;
            print(
                format!(
                    "Disabled {name}{}",
                    if live { " (running server told)" } else { "" }
                ),
                json!({"user": name, "disabled": true, "server_notified": live}),
            );
        }
        Cmd::Device(DeviceCmd::Revoke { id }) => {
            let changed = ops::revoke_device(&store, &id, &actor, "revoked from the command line")
                .await
                .map_err(api_err)?;
            let live = notify(
                &cfg.data_dir,
                &AdminNotice::DeviceRevoked {
                    device_id: id.clone(),
                },
            )
            .await;
            print(
                format!(
                    "{} device {id}{}",
                    if changed {
                        "Revoked"
                    } else {
                        "Already revoked:"
                    },
                    if live { " (running server told)" } else { "" }
                ),
                json!({"device": id, "revoked": true, "changed": changed, "server_notified": live}),
            );
        }
        Cmd::Device(DeviceCmd::Approve { id, no }) => {
            let mut tx = store.begin().await?;
            tx.set_device_restricted(&id, !no)
                .await
                .map_err(|_| anyhow::anyhow!("no device {id}"))?;
            tx.audit(sealroom_store::AuditEntry {
                at: unix_now(),
                kind: "device.restricted_approval".into(),
                actor: actor.clone(),
                subject: format!("device:{id}"),
                source: String::new(),
                detail: json!({"allowed": !no}).to_string(),
            })
            .await?;
            tx.commit().await?;
            print(
                format!(
                    "Device {id} {} for restricted meetings",
                    if no { "not approved" } else { "approved" }
                ),
                json!({"device": id, "restricted_ok": !no}),
            );
        }
        Cmd::Meeting(MeetingCmd::Create {
            title,
            level,
            invite,
            host,
            lobby,
            capacity,
            starts_at,
            ends_at,
        }) => {
            let level = ops::parse_level(&level).map_err(api_err)?;
            let organiser_name = host.first().cloned().unwrap_or_default();
            let organiser = store
                .user_by_name(&organiser_name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {organiser_name}"))?;
            let req = CreateMeeting {
                title,
                level,
                invitees: invite,
                hosts: host,
                starts_at,
                ends_at,
                lobby,
                capacity,
            };
            let id = ops::create_meeting(&store, &organiser, &req, &actor)
                .await
                .map_err(api_err)?;
            let url = format!("{}/m/{id}", origin(&cfg));
            print(format!("{id}\n{url}"), json!({"id": id, "url": url}));
        }
        Cmd::Meeting(MeetingCmd::List) => {
            let mut rows = Vec::new();
            for m in store.all_meetings().await? {
                let inv = store.invitees(&m.id).await?;
                rows.push(json!({"id": m.id, "title": m.title, "level": m.level, "lobby": m.lobby, "locked": m.locked, "capacity": m.capacity,
                    "starts_at": m.starts_at, "ends_at": m.ends_at,
                    "invitees": inv.iter().map(|i| &i.0).collect::<Vec<_>>(), "hosts": inv.iter().filter(|i| i.1).map(|i| &i.0).collect::<Vec<_>>()}));
            }
            if json_out {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in rows {
                    println!(
                        "{} {:<10} {}{}",
                        r["id"].as_str().unwrap_or(""),
                        r["level"].as_str().unwrap_or(""),
                        r["title"].as_str().unwrap_or(""),
                        if r["locked"] == true {
                            "  [locked]"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        Cmd::Meeting(cmd @ (MeetingCmd::Lock { .. } | MeetingCmd::Unlock { .. })) => {
            let (id, locked) = match cmd {
                MeetingCmd::Lock { id } => (id, true),
                MeetingCmd::Unlock { id } => (id, false),
                _ => unreachable!("matched above"),
            };
            let mut tx = store.begin().await?;
            tx.set_meeting_locked(&id, locked)
                .await
                .map_err(|_| anyhow::anyhow!("no meeting {id}"))?;
            tx.audit(sealroom_store::AuditEntry {
                at: unix_now(),
                kind: if locked {
                    "meeting.locked"
                } else {
                    "meeting.unlocked"
                }
                .into(),
                actor: actor.clone(),
                subject: format!("meeting:{id}"),
                source: String::new(),
                detail: "{}".into(),
            })
            .await?;
            tx.commit().await?;
            let live = notify(
                &cfg.data_dir,
                &AdminNotice::MeetingLocked {
                    meeting_id: id.clone(),
                },
            )
            .await;
            print(
                format!(
                    "Meeting {id} {}",
                    if locked { "locked" } else { "unlocked" }
                ),
                json!({"id": id, "locked": locked, "server_notified": live}),
            );
        }
        Cmd::Audit(AuditCmd::Verify) => {
            let result =
                sealroom_store::audit::verify(store.pool(), &keys.audit.verifying_key()).await?;
            return Ok(match result {
                Ok(r) => {
                    print(
                        format!(
                            "audit log OK: {} entries, {} signed checkpoints, head {}",
                            r.entries, r.checkpoints, r.head_hash
                        ),
                        json!({"ok": true, "entries": r.entries, "checkpoints": r.checkpoints, "head": r.head_hash}),
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print(
                        format!("audit log BROKEN: {e}"),
                        json!({"ok": false, "first_bad_entry": e.seq(), "error": e.to_string()}),
                    );
                    ExitCode::FAILURE
                }
            });
        }
        Cmd::Audit(AuditCmd::Report { meeting }) => {
            use crate::report;
            let verified =
                sealroom_store::audit::verify(store.pool(), &keys.audit.verifying_key()).await?;
            let log = sealroom_store::audit::entries(store.pool()).await?;
            let integrity = match &verified {
                Ok(r) => report::Integrity {
                    ok: true,
                    entries: r.entries,
                    checkpoints: r.checkpoints,
                    head: r.head_hash.clone(),
                    first_bad_entry: None,
                    error: None,
                },
                Err(e) => report::Integrity {
                    ok: false,
                    entries: i64::try_from(log.len()).unwrap_or(i64::MAX),
                    checkpoints: 0,
                    head: log.last().map(|e| e.hash.clone()).unwrap_or_default(),
                    first_bad_entry: Some(e.seq()),
                    error: Some(e.to_string()),
                },
            };
            let row = store.meeting(&meeting).await?;
            let organiser = match &row {
                Some(m) => store.user(&m.organiser_id).await?.map(|u| u.name),
                None => None,
            };
            let probe = format!("probe:{}", keys.meeting_id_hmac(&meeting));
            let r = report::build(
                &meeting,
                row.as_ref(),
                organiser.as_deref(),
                integrity,
                &log,
                &probe,
            );
            if r.meeting.is_none() && r.timeline.is_empty() {
                anyhow::bail!("no meeting {meeting} and no audit entries about it");
            }
            if json_out {
                println!("{}", serde_json::to_value(&r)?);
            } else {
                print!("{}", report::markdown(&r));
            }
            return Ok(if r.integrity.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::Audit(AuditCmd::Show { meeting }) => {
            for e in sealroom_store::audit::entries(store.pool()).await? {
                if let Some(m) = &meeting {
                    if e.entry.subject != format!("meeting:{m}") {
                        continue;
                    }
                }
                print(
                    format!(
                        "{:>6} {} {:<22} {:<40} {:<30} {} {}",
                        e.seq,
                        e.entry.at,
                        e.entry.kind,
                        e.entry.actor,
                        e.entry.subject,
                        e.entry.source,
                        e.entry.detail
                    ),
                    json!({"seq": e.seq, "at": e.entry.at, "kind": e.entry.kind, "actor": e.entry.actor, "subject": e.entry.subject, "source": e.entry.source, "detail": serde_json::from_str::<serde_json::Value>(&e.entry.detail).unwrap_or_default(), "hash": e.hash}),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn client(cmd: ClientCmd, json_out: bool) -> anyhow::Result<ExitCode> {
    use sealroom_client::media::{MediaOptions, MediaSession};
    use sealroom_client::{parse_enrolment_link, parse_meeting, Client, Identity, JoinOutcome};
    use sealroom_proto::ServerMsg;
    let read_ca = |ca: &Option<std::path::PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
        Ok(match ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?),
            None => None,
        })
    };
    match cmd {
        ClientCmd::Enrol {
            link,
            name,
            identity,
            ca,
        } => {
            let (origin, token) = parse_enrolment_link(&link)?;
            let c = Client::new(&origin, read_ca(&ca)?.as_deref())?;
            let id = c.enrol_software(&token, &name).await?;
            id.save(&identity)?;
            if json_out {
                println!(
                    "{}",
                    json!({"user": id.user_name, "device_id": id.device_id, "identity": identity})
                );
            } else {
                println!(
                    "Enrolled software device {} for {}; identity in {} (keep it private).",
                    id.device_id,
                    id.user_name,
                    identity.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCmd::Join {
            meeting,
            identity,
            ca,
            stay,
            media,
            simulcast,
            media_bind,
        } => {
            let id = Identity::load(&identity)?;
            let (origin, meeting_id) = parse_meeting(&meeting);
            if let Some(o) = &origin {
                if *o != id.origin {
                    anyhow::bail!(
                        "the meeting is on {o} but this identity is enrolled at {}",
                        id.origin
                    );
                }
            }
            let c = Client::new(&id.origin, read_ca(&ca)?.as_deref())?;
            let session = c.login(&id).await?;
            let mut sig = session.signaling().await?;
            let since = std::time::Instant::now();
            let outcome = sig.join(&meeting_id).await?;
            let code = match &outcome {
                JoinOutcome::Admitted {
                    meeting,
                    participants,
                    ..
                } => {
                    if json_out {
                        println!(
                            "{}",
                            json!({"outcome": "admitted", "title": meeting.title, "level": meeting.level, "participants": participants})
                        );
                    } else {
                        println!(
                            "admitted to \"{}\" ({:?}); {} participant(s)",
                            meeting.title,
                            meeting.level,
                            participants.len()
                        );
                    }
                    ExitCode::SUCCESS
                }
                JoinOutcome::Lobby => {
                    println!(
                        "{}",
                        if json_out {
                            json!({"outcome": "lobby"}).to_string()
                        } else {
                            "waiting in the lobby".into()
                        }
                    );
                    ExitCode::SUCCESS
                }
                JoinOutcome::Refused(reason, message) => {
                    println!(
                        "{}",
                        if json_out {
                            json!({"outcome": "refused", "reason": reason, "message": message})
                                .to_string()
                        } else {
                            format!("refused: {message} ({})", reason.as_str())
                        }
                    );
                    ExitCode::from(2)
                }
            };
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(stay);
            // Who is who, for the media report.
            let mut names: std::collections::HashMap<String, String> = match &outcome {
                JoinOutcome::Admitted { participants, .. } => participants
                    .iter()
                    .map(|p| (p.id.clone(), p.user_name.clone()))
                    .collect(),
                _ => Default::default(),
            };
            let mut admitted = matches!(outcome, JoinOutcome::Admitted { .. });
            // Without --media (or until a host admits us from the lobby): print events.
            while !(media && admitted) && tokio::time::Instant::now() < deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match sig.next(left).await? {
                    Some(m) => {
                        println!("{}", serde_json::to_string(&m)?);
                        if let ServerMsg::Admitted { participants, .. } = &m {
                            admitted = true;
                            names.extend(
                                participants
                                    .iter()
                                    .map(|p| (p.id.clone(), p.user_name.clone())),
                            );
                        }
                    }
                    None => break,
                }
            }
            if !(media && admitted) {
                return Ok(code);
            }
            let opts = MediaOptions {
                bind: media_bind,
                simulcast,
                since,
                // The server identity key is pinned per origin beside the device identity.
                server_key_pins: Some(identity.with_extension("pins.json")),
                ..MediaOptions::default()
            };
            let mut session = MediaSession::start(sig, opts).await?;
            while tokio::time::Instant::now() < deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let Some(m) = session.next_event(left).await else {
                    break;
                };
                if let ServerMsg::Participants { participants } = &m {
                    names.extend(
                        participants
                            .iter()
                            .map(|p| (p.id.clone(), p.user_name.clone())),
                    );
                }
                println!("{}", serde_json::to_string(&m)?);
            }
            let (stats, _) = session.stop().await;
            let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
            let mut remote: Vec<(String, Vec<sealroom_client::media::TrackStats>)> = Vec::new();
            for t in stats.by_source() {
                match remote.iter_mut().find(|(p, _)| *p == t.participant_id) {
                    Some((_, v)) => v.push(t),
                    None => remote.push((t.participant_id.clone(), vec![t])),
                }
            }
            if json_out {
                let remote: Vec<_> = remote
                    .iter()
                    .map(|(pid, ts)| {
                        json!({
                            "participant_id": pid,
                            "user_name": names.get(pid),
                            "first_frame_ms": ts.iter().filter_map(|t| ms(t.first_frame_after)).reduce(f64::min),
                            "sources": ts.iter().map(|t| json!({
                                "source": t.source,
                                "frames": t.frames,
                                "bytes": t.bytes,
                                "first_frame_ms": ms(t.first_frame_after),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"media": {
                        "connected_ms": ms(stats.connected_after),
                        "first_remote_frame_ms": ms(stats.first_remote_frame_after),
                        "sent": {"audio_frames": stats.audio_frames_sent, "video_frames": stats.video_frames_sent},
                        "keyframe_requests": stats.keyframe_requests,
                        "ended": stats.ended,
                        "remote": remote,
                        "e2ee": e2ee_report(&stats.e2ee),
                    }})
                );
            } else {
                let secs = |d: Option<std::time::Duration>| {
                    d.map(|d| format!("{:.3} s", d.as_secs_f64()))
                        .unwrap_or_else(|| "never".into())
                };
                println!(
                    "media: connected after {}; first remote frame after {} (from join); sent {} audio and {} video frames",
                    secs(stats.connected_after),
                    secs(stats.first_remote_frame_after),
                    stats.audio_frames_sent,
                    stats.video_frames_sent
                );
                if let Some(e) = &stats.ended {
                    println!("media ended early: {e}");
                }
                let e = &stats.e2ee;
                println!(
                    "e2ee: {}; epoch {}, security code {}, {} member(s); {} frames decrypted, {} dropped",
                    e.reason.as_deref().unwrap_or(&e.state),
                    e.epoch.map(|n| n.to_string()).unwrap_or_else(|| "none".into()),
                    e.security_code.as_deref().unwrap_or("none"),
                    e.roster.len(),
                    e.frames_decrypted,
                    e.failures.total()
                );
                for (pid, ts) in &remote {
                    let who = names.get(pid).map(String::as_str).unwrap_or("?");
                    println!("  from {who} ({pid}):");
                    for t in ts {
                        println!(
                            "    {:<12} {:>6} frames {:>9} bytes, first after {}",
                            t.source
                                .map(|s| format!("{s:?}").to_lowercase())
                                .unwrap_or_else(|| format!("mid {}", t.mid)),
                            t.frames,
                            t.bytes,
                            secs(t.first_frame_after)
                        );
                    }
                }
            }
            Ok(code)
        }
    }
}

/// The E2EE state of a `client join --media` report.
fn e2ee_report(e: &sealroom_client::e2ee::E2eeStats) -> serde_json::Value {
    json!({
        "state": e.state,
        "reason": e.reason,
        "epoch": e.epoch,
        "security_code": e.security_code,
        "members": e.roster.iter().map(|m| json!({
            "leaf": m.leaf, "user_name": m.user_name, "device_id": m.device_id,
            "verified": m.verified, "participant_id": m.participant_id,
        })).collect::<Vec<_>>(),
        "unannounced_members": e.unannounced_members.iter().map(|m| m.leaf).collect::<Vec<_>>(),
        "participants_without_leaf": e.participants_without_leaf,
        "epochs": e.epochs.iter().map(|c| json!({
            "epoch": c.epoch, "security_code": c.security_code, "check_value": c.check_value,
            "members": c.members,
        })).collect::<Vec<_>>(),
        "frames_decrypted": e.frames_decrypted,
        "frames_encrypted": e.frames_encrypted,
        "dropped": {
            "malformed": e.failures.malformed, "unknown_kid": e.failures.unknown_kid,
            "epoch_expired": e.failures.epoch_expired, "replay": e.failures.replay,
            "too_old": e.failures.too_old, "auth_failed": e.failures.auth_failed,
        },
    })
}

async fn serve(cfg: Config) -> anyhow::Result<ExitCode> {
    let local = cfg.local_mode();
    let running = crate::server::start(cfg).await?;
    println!(
        "sealroom listening on {} — open {}",
        running.addr, running.origin
    );
    let media: Vec<String> = running.media_addrs.iter().map(|a| a.to_string()).collect();
    println!(
        "Media on UDP {} ({} shard{}).",
        media.join(", "),
        media.len(),
        if media.len() == 1 { "" } else { "s" }
    );
    if local {
        println!("Local mode: plain HTTP on loopback only (browsers treat localhost as a secure context).");
    }
    if let (Some(link), Some(file)) = (&running.first_admin_link, &running.first_admin_file) {
        if std::io::stdout().is_terminal() {
            println!("\nNo admin exists yet. Enrol the first admin from this machine within 30 minutes:\n\n  {link}\n");
        } else {
            println!("\nNo admin exists yet. The first-admin enrolment link (loopback only, 30 minutes) is in {} (mode 0600).", file.display());
        }
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; }
        _ = terminate() => {}
    }
    println!("shutting down");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Meeting and device ids are base64url: one in 32 starts with `-`, which must still parse
    /// as the id wherever it stands.
    #[test]
    fn ids_starting_with_a_hyphen_parse_as_values() {
        for args in [
            &[
                "sealroom",
                "client",
                "join",
                "-nABC",
                "--identity",
                "x.json",
            ][..],
            &[
                "sealroom",
                "client",
                "join",
                "--identity",
                "x.json",
                "-nABC",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            let Cmd::Client(ClientCmd::Join { meeting, .. }) = cli.cmd else {
                panic!("not client join: {cli:?}")
            };
            assert_eq!(meeting, "-nABC");
        }
    }
}

//! Starting the server: data directory, keys, store, listener (plain on loopback, TLS
//! elsewhere), WebAuthn bound to the public origin, the first-admin link, the admin socket.

use crate::config::{Config, Tls};
use crate::live::Hub;
use crate::state::{unix_now, write_private, App, AppRef, Keys, Limiters};
use anyhow::{bail, Context};
use sealroom_proto::Role;
use sealroom_store::Store;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// Where clients send media (UDP), by media shard.
    pub media_addrs: Vec<SocketAddr>,
    pub origin: String,
    pub app: AppRef,
    /// The first-admin enrolment link, when the database had no admin.
    pub first_admin_link: Option<String>,
    /// Where that link was written (0600).
    pub first_admin_file: Option<PathBuf>,
    pub handle: axum_server::Handle,
    pub task: JoinHandle<std::io::Result<()>>,
    pub admin_socket: JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(2)));
        let _ = self.task.await;
        self.admin_socket.abort();
        let _ = sealroom_store::audit::checkpoint_head(&self.app.store, unix_now()).await;
        self.app.store.pool().close().await;
    }
}

/// Open the data directory: keys and store.
pub async fn open_data(data_dir: &std::path::Path) -> anyhow::Result<(Keys, Store)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let keys = Keys::load_or_create(data_dir)?;
    let store = Store::open(&data_dir.join("sealroom.db"), keys.audit.clone())
        .await
        .context("opening the database")?;
    Ok((keys, store))
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    let (keys, store) = open_data(&config.data_dir).await?;
    let std_listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let tls_on = !matches!(config.tls, Tls::None);
    let origin = match &config.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if tls_on => format!("https://{}", addr),
        None => format!("http://localhost:{}", addr.port()),
    };
    let url = url::Url::parse(&origin).context("public URL")?;
    let host_name = url
        .host_str()
        .context("public URL has no host")?
        .to_string();
    let host = match url.port() {
        Some(p) => format!("{host_name}:{p}"),
        None => host_name.clone(),
    };
    let rp_id = host_name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if rp_id.parse::<std::net::IpAddr>().is_ok() {
        tracing::warn!("the public URL uses an IP address; browsers refuse passkeys for IP addresses — set --public-url to a DNS name");
    }
    let webauthn = webauthn_rs::WebauthnBuilder::new(&rp_id, &url)
        .context("WebAuthn relying party")?
        .rp_name("sealroom")
        .build()
        .context("WebAuthn relying party")?;

    let rustls = match &config.tls {
        Tls::None => None,
        Tls::Files { cert, key } => Some(crate::tls::rustls_config(cert, key).await?),
        Tls::SelfSigned => {
            let ss = crate::tls::self_signed(&config.data_dir, &rp_id)?;
            println!(
                "TLS: self-signed CA for {rp_id} (name-constrained to it; its key was not kept)."
            );
            println!("  CA certificate: {}", ss.ca.display());
            println!("  CA SHA-256 fingerprint: {}", ss.ca_fingerprint);
            println!("  Trust it on each client before using passkeys, e.g. on Linux:");
            println!(
                "    certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n sealroom -i {}",
                ss.ca.display()
            );
            println!("  and compare the fingerprint shown by the browser with the one above.");
            Some(crate::tls::rustls_config(&ss.cert, &ss.key).await?)
        }
    };

    let app = Arc::new(App {
        limiters: Limiters::new(&config.rate_limits),
        origin: origin.clone(),
        host,
        tls: tls_on,
        store,
        keys: keys.clone(),
        webauthn,
        ceremonies: Mutex::new(HashMap::new()),
        hub: Hub::default(),
        delivery: Mutex::new(crate::delivery::Delivery::new(
            keys.identity.clone(),
            origin.clone(),
        )),
        config,
    });
    let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel();
    app.hub.set_gone(gone_tx);
    app.hub.set_test_ghosts(app.config.test_ghosts.clone());
    tokio::spawn(crate::ws::route_departures(app.clone(), gone_rx));

    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let media = crate::media::start(
        app.config.media_listen,
        app.config.media_advertise,
        app.config.media_shards,
        app.config.media_connect_timeout,
        events_tx,
    )
    .await
    .context("starting media (UDP)")?;
    let media_addrs = media.addresses().into_iter().map(|(_, a)| a).collect();
    app.hub.set_media(media);
    tokio::spawn(route_media_events(app.clone(), events_rx));

    let (first_admin_link, first_admin_file) = first_admin(&app).await?;
    // The CLI prints links with the origin of the running server.
    std::fs::write(app.config.data_dir.join("origin"), &app.origin)?;
    let admin_socket = crate::admin_socket::listen(app.clone())?;

    let handle = axum_server::Handle::new();
    let service =
        crate::http::router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // TCP_NODELAY on every connection: signaling is small messages, often two in a row (a
    // roster change, then the media answer). With Nagle's algorithm the second waits for the
    // ACK of the first, which the peer delays by up to 40 ms: that was most of a join.
    let nodelay = axum_server::accept::NoDelayAcceptor::new();
    let task = match rustls {
        None => {
            let server = axum_server::from_tcp(std_listener)
                .acceptor(nodelay)
                .handle(handle.clone());
            tokio::spawn(async move { server.serve(service).await })
        }
        Some(r) => {
            let server = axum_server::from_tcp_rustls(std_listener, r)
                .map(|tls| tls.acceptor(nodelay))
                .handle(handle.clone());
            tokio::spawn(async move { server.serve(service).await })
        }
    };
    Ok(Running {
        addr,
        media_addrs,
        origin,
        app,
        first_admin_link,
        first_admin_file,
        handle,
        task,
        admin_socket,
    })
}

/// On a database without an admin: create the first admin (if needed) and a fresh
/// single-use, loopback-only, 30-minute enrolment link; earlier such links are revoked.
async fn first_admin(app: &AppRef) -> anyhow::Result<(Option<String>, Option<PathBuf>)> {
    if app.store.admin_exists().await? {
        // Disabled for good once an admin exists.
        let mut tx = app.store.begin().await?;
        tx.revoke_first_admin_links(unix_now()).await?;
        tx.commit().await?;
        let _ = std::fs::remove_file(app.config.data_dir.join("first-admin-link.txt"));
        return Ok((None, None));
    }
    let name = &app.config.first_admin;
    crate::ops::check_user_name(name).map_err(|e| anyhow::anyhow!("first admin name: {e:?}"))?;
    let user = match app.store.user_by_name(name).await? {
        Some(u) if u.role() == Role::Admin && !u.disabled => u,
        Some(_) => bail!(
            "a user named {name} exists but is not an active admin; choose another --first-admin"
        ),
        None => {
            let mut tx = app.store.begin().await?;
            let u = tx
                .insert_user(
                    sealroom_store::NewUser {
                        name,
                        display_name: "Administrator",
                        role: Role::Admin,
                    },
                    unix_now(),
                )
                .await?;
            tx.audit(app.entry(
                "user.created",
                "server",
                &format!("user:{name}"),
                "",
                serde_json::json!({"role": "admin", "first_admin": true}),
            ))
            .await?;
            tx.commit().await?;
            u
        }
    };
    {
        let mut tx = app.store.begin().await?;
        tx.revoke_first_admin_links(unix_now()).await?;
        tx.commit().await?;
    }
    let link = crate::ops::new_enrolment(
        &app.store,
        &app.origin,
        &user,
        app.config.enrolment.first_admin_expiry_secs,
        true,
        "server",
    )
    .await
    .map_err(|e| anyhow::anyhow!("first admin link: {e:?}"))?;
    let file = app.config.data_dir.join("first-admin-link.txt");
    write_private(&file, format!("{}\n", link.url).as_bytes())?;
    Ok((Some(link.url), Some(file)))
}

/// Act on what the media edge reports: signaling to the participant, transport state in the
/// roster, and the network rule re-checked on every media path (DESIGN.md T1).
async fn route_media_events(
    app: AppRef,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(u64, crate::media::MediaEvent)>,
) {
    use crate::live::Notice;
    use crate::media::MediaEvent;
    use sealroom_proto::{RefusalReason, ServerMsg};
    while let Some((socket, event)) = rx.recv().await {
        match event {
            MediaEvent::Offer(offer) => app.hub.send(
                socket,
                Notice::Send(ServerMsg::MediaOffer {
                    sdp: offer.to_sdp_string(),
                }),
            ),
            MediaEvent::Tracks(tracks) => app
                .hub
                .send(socket, Notice::Send(ServerMsg::MediaTracks { tracks })),
            MediaEvent::Connected => app
                .hub
                .update_participant(socket, |p| p.media_connected = true),
            MediaEvent::PathRefused(remote) => {
                // Audited and shown; the session itself ends only if no allowed path comes up
                // within the connect timeout (a spoofed request must not end a call).
                let Some((_, info)) = app.hub.media_room(socket) else {
                    continue;
                };
                let zone = app.config.networks.zone_for(remote.ip());
                let who = app.hub.socket_actor(socket).unwrap_or_default();
                let entry = app.entry(
                    "media.path_refused",
                    &who,
                    &format!("meeting:{}", info.id),
                    &remote.ip().to_string(),
                    serde_json::json!({"zone": zone.label(), "level": info.level.as_str(), "at": "ice"}),
                );
                if let Err(e) = app.audit_alone(entry).await {
                    tracing::error!(%e, "audit of a refused media path failed");
                }
                app.hub.send(
                    socket,
                    Notice::Send(ServerMsg::Error {
                        code: "media_path_refused".into(),
                        message: format!(
                            "Media from {} ({}) is not allowed for this {} meeting; it was not used.",
                            remote.ip(),
                            zone.label(),
                            info.level.as_str()
                        ),
                    }),
                );
            }
            MediaEvent::Path(remote) => {
                let Some((_, info)) = app.hub.media_room(socket) else {
                    continue;
                };
                let zone = app.config.networks.zone_for(remote.ip());
                let allowed =
                    sealroom_policy::zone_allowed(app.config.levels.rules(info.level), &zone);
                let who = app.hub.socket_actor(socket).unwrap_or_default();
                let entry = app.entry(
                    if allowed {
                        "media.path"
                    } else {
                        "media.path_refused"
                    },
                    &who,
                    &format!("meeting:{}", info.id),
                    &remote.ip().to_string(),
                    serde_json::json!({"zone": zone.label(), "level": info.level.as_str()}),
                );
                if let Err(e) = app.audit_alone(entry).await {
                    tracing::error!(%e, "audit of a media path failed; ending that media session");
                    app.hub.drop_media(socket);
                    app.hub
                        .send(socket, Notice::Ended(RefusalReason::MediaFailed));
                    continue;
                }
                if !allowed {
                    app.hub.drop_media(socket);
                    app.hub
                        .send(socket, Notice::Ended(RefusalReason::MediaFailed));
                }
            }
            MediaEvent::Closed | MediaEvent::Ended(_) => {
                let Some((_, info)) = app.hub.media_room(socket) else {
                    continue;
                };
                let reason = match &event {
                    MediaEvent::Ended(r) => r.as_str(),
                    _ => "ClosedByPeer",
                };
                let who = app.hub.socket_actor(socket).unwrap_or_default();
                let entry = app.entry(
                    "media.ended",
                    &who,
                    &format!("meeting:{}", info.id),
                    "",
                    serde_json::json!({"reason": reason}),
                );
                let _ = app.audit_alone(entry).await;
                if matches!(event, MediaEvent::Closed) {
                    // The page closed its peer connection without leaving: it is restarting
                    // its call (its signaling dropped and a new socket is on the way, or it
                    // will be dropped as silent). Shown as media not connected; ending the
                    // participation here would race the reconnect and cost it its place.
                    app.hub
                        .update_participant(socket, |p| p.media_connected = false);
                } else {
                    app.hub
                        .send(socket, Notice::Ended(RefusalReason::MediaFailed));
                }
            }
        }
    }
}

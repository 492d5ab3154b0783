//! The admin socket: CLI commands that revoke or remove (device revoke, user disable, meeting
//! lock) write to the database and then tell the running server here, so open sockets are
//! closed at once. A Unix socket in the data directory (0600), and the peer must run as the
//! same user as the server (checked with SO_PEERCRED).

use crate::state::AppRef;
use sealroom_proto::RefusalReason;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// What changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "changed", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminNotice {
    DeviceRevoked { device_id: String },
    UserDisabled { user_id: String },
    MeetingLocked { meeting_id: String },
}

pub fn socket_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("admin.sock")
}

pub fn listen(app: AppRef) -> anyhow::Result<JoinHandle<()>> {
    let path = socket_path(&app.config.data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let me = rustix_uid();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let same_user = stream.peer_cred().map(|c| c.uid() == me).unwrap_or(false);
            if !same_user {
                tracing::warn!("admin socket: refused a peer running as another user");
                continue;
            }
            let app = app.clone();
            tokio::spawn(async move { serve(app, stream).await });
        }
    }))
}

/// Our own uid, read from /proc (no unsafe libc call needed).
fn rustix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

async fn serve(app: AppRef, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<AdminNotice>(&line) {
            Ok(n) => {
                apply(&app, n).await;
                "ok\n"
            }
            Err(_) => "error: malformed notice\n",
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            break;
        }
    }
}

async fn apply(app: &AppRef, n: AdminNotice) {
    match n {
        AdminNotice::DeviceRevoked { device_id } => {
            app.hub
                .close_device(&device_id, RefusalReason::DeviceRevoked);
        }
        AdminNotice::UserDisabled { user_id } => {
            app.hub.close_user(&user_id, RefusalReason::SessionEnded);
        }
        AdminNotice::MeetingLocked { meeting_id } => {
            if let Ok(Some(m)) = app.store.meeting(&meeting_id).await {
                app.hub.meeting_changed(sealroom_proto::MeetingInfo {
                    level: m.level(),
                    id: m.id,
                    title: m.title,
                    locked: m.locked,
                    lobby: m.lobby,
                    capacity: m.capacity as u32,
                });
            }
        }
    }
}

/// Tell a running server (if any) about a change. Returns whether a server took it.
pub async fn notify(data_dir: &Path, n: &AdminNotice) -> bool {
    let Ok(mut s) = UnixStream::connect(socket_path(data_dir)).await else {
        return false;
    };
    let mut line = serde_json::to_string(n).unwrap_or_default();
    line.push('\n');
    if s.write_all(line.as_bytes()).await.is_err() {
        return false;
    }
    let mut reply = String::new();
    let mut r = BufReader::new(s);
    r.read_line(&mut reply).await.is_ok() && reply.trim() == "ok"
}

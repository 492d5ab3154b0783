//! The command line and start-up: first-admin link, `--json` output for scripts, and CLI
//! changes reaching a running server.

mod common;
use common::*;
use sealroom_proto::*;
use serde_json::{json, Value};

fn parse(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "cli failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_admin_link_is_private_loopback_only_and_gone_once_an_admin_exists() {
    let s = server().await;
    let link = s
        .running
        .first_admin_link
        .clone()
        .expect("empty database prints a link");
    assert!(
        link.starts_with(&format!("{}/enrol#", s.origin())),
        "{link}"
    );
    let file = s.running.first_admin_file.clone().expect("file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).expect("file").permissions().mode() & 0o777,
        0o600
    );
    let token = link.split_once('#').expect("fragment").1;
    let info: EnrolInfo = s
        .anonymous()
        .post("/api/enrol/info", json!({"token": token}))
        .await
        .json()
        .await
        .expect("info");
    assert_eq!((info.name.as_str(), info.role), ("admin", Role::Admin));
    assert!(info.expires_at - sealroom_server::state::unix_now() <= 30 * 60);
    // Not usable for a software device (admins use passkeys).
    assert_eq!(s.anonymous().enrol_software(token, "bot").await, 400);

    // Once an admin with a device exists, a restart prints no link and the old one is dead.
    s.passkey_user("root", Role::Admin).await;
    let dir = s.dir.path().to_path_buf();
    let TestServer {
        running,
        dir: _keep,
        ..
    } = s;
    running.shutdown().await;
    let mut cfg = sealroom_server::config::Config::test_config(dir.clone());
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    let again = sealroom_server::server::start(cfg).await.expect("restart");
    assert!(again.first_admin_link.is_none());
    assert!(!file.exists(), "stale first-admin link file left behind");
    let r = again
        .app
        .store
        .enrolment_by_token_hash(&sealroom_store::hash_secret(token))
        .await
        .expect("db")
        .expect("row");
    assert_eq!(r.state(sealroom_server::state::unix_now()), "revoked");
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/api/enrol/info", again.origin))
        .header("Origin", &again.origin)
        .json(&json!({"token": token}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_commands_for_scripts() {
    let s = server().await;
    let v = parse(
        &s.cli(&[
            "--json",
            "user",
            "add",
            "olga",
            "--role",
            "organiser",
            "--display-name",
            "Olga O.",
        ])
        .await,
    );
    assert_eq!(v["role"], "organiser");
    assert!(v["enrolment_url"]
        .as_str()
        .expect("url")
        .contains("/enrol#"));
    let v = parse(&s.cli(&["--json", "user", "add", "bob"]).await);
    assert_eq!(v["role"], "member");
    let dup = s.cli(&["--json", "user", "add", "bob"]).await;
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = s.cli(&["user", "add", "Bad Name!"]).await;
    assert!(!bad.status.success());

    let users = parse(&s.cli(&["--json", "user", "list"]).await);
    let names: Vec<&str> = users
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(
        names.contains(&"olga") && names.contains(&"bob") && names.contains(&"admin"),
        "{names:?}"
    );

    let m = parse(
        &s.cli(&[
            "--json",
            "meeting",
            "create",
            "--title",
            "Board",
            "--level",
            "restricted",
            "--invite",
            "bob",
            "--host",
            "olga",
            "--lobby",
        ])
        .await,
    );
    let id = m["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 22, "128-bit url-safe id");
    assert_eq!(m["url"], format!("{}/m/{id}", s.origin()));
    let bad_level = s
        .cli(&[
            "meeting", "create", "--title", "x", "--level", "secret", "--host", "olga",
        ])
        .await;
    assert!(!bad_level.status.success());
    let list = parse(&s.cli(&["--json", "meeting", "list"]).await);
    let row = list
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("listed");
    assert_eq!(row["level"], "restricted");
    assert_eq!(row["hosts"], json!(["olga"]));

    // Ids are url-safe base64 and may start with '-': they are never taken for flags.
    let out = s.cli(&["device", "revoke", "-wLKo4Wl7tSzdJeAClUGnQ"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && !err.contains("unexpected argument"),
        "{err}"
    );
    let lock = parse(&s.cli(&["--json", "meeting", "lock", &id]).await);
    assert_eq!(lock["locked"], true);
    assert_eq!(lock["server_notified"], true);
    let verify = parse(&s.cli(&["--json", "audit", "verify"]).await);
    assert_eq!(verify["ok"], true);
    let shown = s.cli(&["--json", "audit", "show", "--meeting", &id]).await;
    let kinds: Vec<String> = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json line")["kind"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(kinds, vec!["meeting.created", "meeting.locked"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_client_enrols_and_joins_through_the_admission_path() {
    let s = server().await;
    s.passkey_user("hana", Role::Organiser).await;
    let v = parse(&s.cli(&["--json", "user", "add", "bot"]).await);
    let link = v["enrolment_url"].as_str().expect("url").to_string();
    let id_file = s.dir.path().join("bot.json");
    let id_path = id_file.to_str().expect("utf8");
    let enrolled = parse(
        &s.cli(&[
            "--json",
            "client",
            "enrol",
            &link,
            "--name",
            "load-bot-1",
            "--identity",
            id_path,
        ])
        .await,
    );
    assert_eq!(enrolled["user"], "bot");
    let invited = s
        .meeting("hana", meeting_req(Level::Open, &["bot"], &[], false))
        .await;
    let other = s
        .meeting("hana", meeting_req(Level::Open, &[], &[], false))
        .await;

    let url = format!("{}/m/{invited}", s.origin());
    let joined = parse(
        &s.cli(&["--json", "client", "join", &url, "--identity", id_path])
            .await,
    );
    assert_eq!(joined["outcome"], "admitted");
    assert_eq!(joined["participants"][0]["device_kind"], "software");
    assert_eq!(joined["participants"][0]["device_name"], "load-bot-1");

    let refused = s
        .cli(&["--json", "client", "join", &other, "--identity", id_path])
        .await;
    assert_eq!(refused.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&refused.stdout).expect("json");
    assert_eq!(v["reason"], "not_found");
    // The link was spent by the first enrolment.
    let again = s
        .cli(&["client", "enrol", &link, "--identity", id_path])
        .await;
    assert!(!again.status.success());
}

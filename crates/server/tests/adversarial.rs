//! An intruder tries every way in: scanning for meetings, hammering limits, forged origins and
//! hosts, replayed and forged software-device logins, spent enrolment links, malformed and
//! out-of-order WebSocket messages, and a tampered audit log.

mod common;
use common::*;
use sealroom_proto::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Two-sample Kolmogorov–Smirnov statistic.
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}

async fn timed_join(ws: &mut Ws, id: &str) -> (f64, String) {
    let t = Instant::now();
    ws.send(&ClientMsg::Join {
        meeting_id: id.into(),
    })
    .await;
    let m = ws.next().await;
    (
        t.elapsed().as_secs_f64() * 1e6,
        serde_json::to_string(&m).expect("json"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonexistent_and_not_invited_meetings_are_indistinguishable() {
    const N: usize = 1000;
    let s = server_with(|c| {
        c.rate_limits.join_per_ip = 1_000_000;
        c.rate_limits.join_per_account = 1_000_000;
    })
    .await;
    s.passkey_user("hana", Role::Organiser).await;
    let eve = s.member("eve").await;
    let mut real = Vec::with_capacity(N);
    for i in 0..N {
        let mut req = meeting_req(Level::Open, &[], &[], i % 2 == 0);
        req.title = format!("Secret {i}");
        real.push(s.meeting("hana", req).await);
    }
    let random: Vec<String> = (0..N).map(|_| sealroom_store::random_id()).collect();

    for (who, client) in [
        ("logged in, not invited", eve.clone()),
        ("not logged in", s.anonymous()),
    ] {
        let mut ws = client.ws().await;
        // Warm up, then interleave so drift hits both samples alike.
        for id in real.iter().take(20).chain(random.iter().take(20)) {
            timed_join(&mut ws, id).await;
        }
        let (mut t_real, mut t_random) = (Vec::with_capacity(N), Vec::with_capacity(N));
        let mut bodies = std::collections::BTreeSet::new();
        for i in 0..N {
            // Random order inside each pair, so neither kind always goes first.
            let ((a, body_a), (b, body_b)) = if rand::random::<bool>() {
                let a = timed_join(&mut ws, &real[i]).await;
                (a, timed_join(&mut ws, &random[i]).await)
            } else {
                let b = timed_join(&mut ws, &random[i]).await;
                (timed_join(&mut ws, &real[i]).await, b)
            };
            t_real.push(a);
            t_random.push(b);
            bodies.insert(body_a);
            bodies.insert(body_b);
        }
        assert_eq!(bodies.len(), 1, "{who}: answers differ: {bodies:?}");
        let d = ks(&t_real, &t_random);
        println!(
            "{who}: {N}+{N} joins; median real {:.0} µs / random {:.0} µs; p90 {:.0} / {:.0} µs; KS D = {d:.4} (5% critical value {:.4})",
            quantile(&t_real, 0.5),
            quantile(&t_random, 0.5),
            quantile(&t_real, 0.9),
            quantile(&t_random, 0.9),
            1.36 * (2.0 / N as f64).sqrt()
        );
        // With identical code paths the distributions differ only by noise; a path that skips
        // the audit write or takes a different query shifts the whole distribution (D near 1).
        assert!(
            d < 0.1,
            "{who}: timing distributions differ (KS D = {d:.4})"
        );
    }
    // Every probe was audited, with the requested id only as an HMAC.
    let log = sealroom_store::audit::entries(s.running.app.store.pool())
        .await
        .expect("log");
    let probes = log
        .iter()
        .filter(|e| e.entry.kind == "join.refused" && e.entry.subject.starts_with("probe:"))
        .count();
    assert!(probes >= 4 * N, "only {probes} probes audited");
    assert!(
        !log.iter().any(|e| e.entry.subject.contains(&random[0])),
        "a probed id is stored in clear"
    );
    // The meeting page itself is the same for every id.
    let a = s
        .anonymous()
        .get(&format!("/m/{}", real[0]))
        .await
        .text()
        .await
        .expect("body");
    let b = s
        .anonymous()
        .get(&format!("/m/{}", random[0]))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(a, b);
}

#[tokio::test]
async fn login_rate_limit_triggers_with_retry_after_and_recovers() {
    let s = server_with(|c| c.rate_limits.login_per_ip = 60).await;
    let anon = s.anonymous();
    let mut limited = None;
    for i in 0..70 {
        let r = anon.post("/api/login/passkey/start", json!({})).await;
        if r.status() == 429 {
            limited = Some((
                i,
                r.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            ));
            break;
        }
        assert!(r.status().is_success(), "{}", r.status());
    }
    let (after, retry) = limited.expect("429 within 70 attempts");
    println!("login limited after {after} attempts, Retry-After {retry:?}");
    assert_eq!(after, 60);
    let secs: u64 = retry
        .expect("Retry-After present")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&secs));
    tokio::time::sleep(Duration::from_millis(1100 * secs)).await;
    assert!(
        anon.post("/api/login/passkey/start", json!({}))
            .await
            .status()
            .is_success(),
        "did not recover"
    );
    let log = sealroom_store::audit::entries(s.running.app.store.pool())
        .await
        .expect("log");
    assert!(log
        .iter()
        .any(|e| e.entry.kind == "rate_limited" && e.entry.subject == "login"));
}

#[tokio::test]
async fn join_rate_limit_per_account_triggers_and_recovers() {
    let s = server_with(|c| {
        c.rate_limits.join_per_account = 60;
        c.rate_limits.join_per_ip = 1000;
    })
    .await;
    let eve = s.member("eve").await;
    let mut ws = eve.ws().await;
    for _ in 0..60 {
        assert_eq!(
            refused_reason(&ws.join("nope").await),
            Some(RefusalReason::NotFound)
        );
    }
    assert_eq!(
        refused_reason(&ws.join("nope").await),
        Some(RefusalReason::RateLimited)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        refused_reason(&ws.join("nope").await),
        Some(RefusalReason::NotFound)
    );
}

#[tokio::test]
async fn origin_host_and_content_type_are_enforced() {
    let s = server().await;
    let bob = s.member("bob").await;
    let url = bob.url("/api/logout");
    let cookie = format!("__Host-sealroom={}", bob.cookie.clone().expect("cookie"));
    let post = |origin: Option<&str>, host: Option<&str>, ctype: &str| {
        let mut r = s
            .http
            .post(&url)
            .header("Cookie", &cookie)
            .header("Content-Type", ctype)
            .body("{}");
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        if let Some(h) = host {
            r = r.header("Host", h);
        }
        r.send()
    };
    let evil = post(Some("http://evil.example"), None, "application/json")
        .await
        .expect("send");
    assert_eq!(evil.status(), 403);
    assert_eq!(
        evil.json::<ApiError>().await.expect("body").code,
        "bad_origin"
    );
    assert_eq!(
        post(None, None, "application/json")
            .await
            .expect("send")
            .status(),
        403
    );
    let rebinding = post(
        Some(s.origin()),
        Some("attacker.example:80"),
        "application/json",
    )
    .await
    .expect("send");
    assert_eq!(rebinding.status(), 421);
    let form = post(Some(s.origin()), None, "text/plain")
        .await
        .expect("send");
    assert_eq!(form.status(), 415);
    // The session survived all of that.
    assert_eq!(bob.get("/api/me").await.status(), 200);

    // WebSocket upgrade with a foreign or missing Origin is refused before upgrading.
    let ws_url = s.origin().replacen("http", "ws", 1) + "/api/ws";
    for origin in [Some("http://evil.example"), None] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = ws_url.clone().into_client_request().expect("req");
        req.headers_mut()
            .insert("Cookie", cookie.parse().expect("h"));
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().expect("h"));
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!(
                "upgrade with origin {origin:?} not refused: {:?}",
                other.map(|x| x.1)
            ),
        }
    }
}

#[tokio::test]
async fn responses_carry_security_headers_and_the_cookie_is_locked_down() {
    let s = server().await;
    let token = s.user("bob", Role::Member).await;
    let anon = s.anonymous();
    let page = anon.get("/").await;
    let h = page.headers();
    let csp = h
        .get("content-security-policy")
        .expect("CSP")
        .to_str()
        .expect("ascii");
    for part in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "object-src 'none'",
        // One Trusted Types policy, for the bundled media-transform worker URL.
        "trusted-types sealroom-worker",
    ] {
        assert!(csp.contains(part), "CSP lacks {part}: {csp}");
    }
    assert_eq!(h.get("x-content-type-options").expect("nosniff"), "nosniff");
    assert_eq!(h.get("referrer-policy").expect("referrer"), "no-referrer");

    // Log in a software device and inspect Set-Cookie.
    let mut c = s.anonymous();
    c.enrol_software(&token, "bot").await;
    let r = c
        .post(
            "/api/login/software/start",
            json!({"device_id": c.device_id}),
        )
        .await;
    let ch: SoftwareChallenge = r.json().await.expect("json");
    use ed25519_dalek::Signer;
    let sig = c
        .key()
        .sign(&software_login_message(s.origin(), &ch.nonce, &c.device_id));
    use base64::Engine;
    let body = json!({"flow_id": ch.flow_id, "device_id": c.device_id, "signature": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes())});
    let r = c.post("/api/login/software/finish", body.clone()).await;
    assert_eq!(r.status(), 200);
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .expect("cookie")
        .to_str()
        .expect("ascii")
        .to_string();
    for attr in [
        "__Host-sealroom=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=43200",
    ] {
        assert!(
            set_cookie.contains(attr),
            "cookie lacks {attr}: {set_cookie}"
        );
    }
    assert!(!set_cookie.contains("Domain"), "{set_cookie}");
    // The same signed challenge cannot be replayed.
    let replay = c.post("/api/login/software/finish", body).await;
    assert_eq!(replay.status(), 400);
    assert_eq!(
        replay.json::<ApiError>().await.expect("body").code,
        "login_failed"
    );
}

#[tokio::test]
async fn forged_software_logins_are_refused() {
    let s = server().await;
    let mut bob = s.member("bob").await;
    use base64::Engine;
    use ed25519_dalek::Signer;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    // Signed for another origin (a phishing server relaying the challenge).
    let ch: SoftwareChallenge = bob
        .post(
            "/api/login/software/start",
            json!({"device_id": bob.device_id}),
        )
        .await
        .json()
        .await
        .expect("json");
    let sig = bob.key().sign(&software_login_message(
        "https://evil.example",
        &ch.nonce,
        &bob.device_id,
    ));
    let r = bob.post("/api/login/software/finish", json!({"flow_id": ch.flow_id, "device_id": bob.device_id, "signature": b64(&sig.to_bytes())})).await;
    assert_eq!(r.status(), 400);
    // Signed by another key.
    let other = ed25519_dalek::SigningKey::from_bytes(&rand_bytes());
    let ch: SoftwareChallenge = bob
        .post(
            "/api/login/software/start",
            json!({"device_id": bob.device_id}),
        )
        .await
        .json()
        .await
        .expect("json");
    let sig = other.sign(&software_login_message(
        s.origin(),
        &ch.nonce,
        &bob.device_id,
    ));
    let r = bob.post("/api/login/software/finish", json!({"flow_id": ch.flow_id, "device_id": bob.device_id, "signature": b64(&sig.to_bytes())})).await;
    assert_eq!(r.status(), 400);
    // An unknown device gets a challenge like any other, and fails the same way.
    let ch: SoftwareChallenge = bob
        .post("/api/login/software/start", json!({"device_id": "nope"}))
        .await
        .json()
        .await
        .expect("json");
    let r = bob
        .post(
            "/api/login/software/finish",
            json!({"flow_id": ch.flow_id, "device_id": "nope", "signature": b64(&[0u8; 64])}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<ApiError>().await.expect("body").code,
        "login_failed"
    );
    // Garbage bodies are clear errors.
    let r = bob
        .post("/api/login/software/finish", json!({"flow_id": 5}))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<ApiError>().await.expect("body").code,
        "bad_request"
    );
    // The real key still works.
    assert!(bob.login_software().await.is_ok());
    let log = sealroom_store::audit::entries(s.running.app.store.pool())
        .await
        .expect("log");
    assert!(
        log.iter()
            .filter(|e| e.entry.kind == "login.failed")
            .count()
            >= 3
    );
}

#[tokio::test]
async fn enrolment_links_are_single_use_revocable_expiring_and_reading_changes_nothing() {
    let s = server_with(|c| c.enrolment.expiry_secs = 2).await;
    let token = s.user("bob", Role::Member).await;
    let anon = s.anonymous();
    for _ in 0..3 {
        let r = anon.post("/api/enrol/info", json!({"token": token})).await;
        assert_eq!(r.status(), 200);
        let info: EnrolInfo = r.json().await.expect("info");
        assert_eq!(info.name, "bob");
    }
    let mut c = s.anonymous();
    assert_eq!(c.enrol_software(&token, "bot").await, 200);
    let mut again = s.anonymous();
    assert_eq!(
        again.enrol_software(&token, "bot2").await,
        400,
        "a used link worked twice"
    );
    assert_eq!(
        anon.post("/api/enrol/info", json!({"token": token}))
            .await
            .status(),
        400
    );

    // Revoked.
    let admin = s.passkey_user("root", Role::Admin).await;
    let users: Vec<UserView> = admin
        .get("/api/admin/users")
        .await
        .json()
        .await
        .expect("users");
    let bob_id = users
        .iter()
        .find(|u| u.name == "bob")
        .expect("bob")
        .id
        .clone();
    let link: EnrolmentLink = admin
        .post(&format!("/api/admin/users/{bob_id}/enrolments"), json!({}))
        .await
        .json()
        .await
        .expect("link");
    let t2 = link.url.split_once('#').expect("fragment").1.to_string();
    assert!(admin
        .post(
            &format!("/api/admin/enrolments/{}/revoke", link.enrolment.id),
            json!({})
        )
        .await
        .status()
        .is_success());
    assert_eq!(s.anonymous().enrol_software(&t2, "bot3").await, 400);

    // Expired.
    let link: EnrolmentLink = admin
        .post(&format!("/api/admin/users/{bob_id}/enrolments"), json!({}))
        .await
        .json()
        .await
        .expect("link");
    let t3 = link.url.split_once('#').expect("fragment").1.to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(s.anonymous().enrol_software(&t3, "bot4").await, 400);

    // Admins cannot enrol a software device.
    let admin_token = s.user("root2", Role::Admin).await;
    assert_eq!(s.anonymous().enrol_software(&admin_token, "bot").await, 400);
}

#[tokio::test]
async fn malformed_oversized_and_out_of_order_messages_get_clear_errors_and_change_nothing() {
    let s = server().await;
    let Hosted {
        id, mut h, mut b, ..
    } = s.hana_hosts_bob(true).await;

    let expect_error = |code: &'static str| move |m: &ServerMsg| matches!(m, ServerMsg::Error { code: c, .. } if c == code);
    // Authenticated, not in a meeting.
    for (raw, code) in [
        ("{not json", "malformed"),
        ("{\"type\":\"fly\"}", "malformed"),
        ("{\"type\":\"join\"}", "malformed"),
        (
            "{\"type\":\"join\",\"meeting_id\":\"x\",\"extra\":1}",
            "malformed",
        ),
        ("[]", "malformed"),
        (
            "{\"type\":\"admit\",\"participant_id\":\"x\"}",
            "not_allowed",
        ),
        ("{\"type\":\"lock\",\"locked\":true}", "not_allowed"),
        ("{\"type\":\"leave\"}", "not_allowed"),
    ] {
        b.send_raw(raw).await;
        let m = b.next().await;
        assert!(expect_error(code)(&m), "{raw} → {m:?}");
    }
    let big = format!(
        "{{\"type\":\"join\",\"meeting_id\":\"{}\"}}",
        "a".repeat(MAX_WS_MESSAGE + 10)
    );
    b.send_raw(&big).await;
    assert!(expect_error("too_large")(&b.next().await));
    b.sig.send_binary(vec![1u8, 2, 3]).await.expect("send");
    assert!(expect_error("text_only")(&b.next().await));

    // In the lobby: joining again or host actions are refused; nothing reaches the host.
    assert!(matches!(b.join(&id).await, ServerMsg::Lobby));
    h.expect(
        "lobby",
        |m| matches!(m, ServerMsg::LobbyUpdate { waiting } if waiting.len() == 1),
    )
    .await;
    b.send(&ClientMsg::Join {
        meeting_id: id.clone(),
    })
    .await;
    assert!(expect_error("not_allowed")(&b.next().await));
    b.send(&ClientMsg::Admit {
        participant_id: "x".into(),
    })
    .await;
    assert!(expect_error("not_allowed")(&b.next().await));
    assert!(
        h.try_next(Duration::from_millis(200)).await.is_none(),
        "host saw a change"
    );

    // Media signaling from someone in the meeting: SDP that does not parse is refused with
    // the parser's reason (it is parsed off the media task, before the SFU sees it), an
    // answer with no offer outstanding too, and the socket goes on.
    for msg in [
        ClientMsg::MediaOffer {
            sdp: "v=0\r\nnot an offer".into(),
            sources: vec![],
        },
        ClientMsg::MediaAnswer {
            sdp: "m=audio garbage".into(),
        },
    ] {
        h.send(&msg).await;
        let m = h.next().await;
        assert!(
            matches!(&m, ServerMsg::Error { code, message } if code == "media_refused" && message.contains("malformed SDP")),
            "{m:?}"
        );
    }
    h.send(&ClientMsg::Ping).await;
    assert!(matches!(h.next().await, ServerMsg::Pong));

    // SDP costs the server CPU to parse (about 120 instructions a byte), so a socket that
    // keeps sending it runs out of its budget (2 MiB at once, then 256 KiB a second): the
    // rest is refused unread, with when to try again, and one audit entry; the socket goes on.
    let big = format!("v=0\r\n{}", "a=x-filler\r\n".repeat(25_000));
    assert!(big.len() > 300_000 && big.len() < MAX_WS_MESSAGE);
    let (mut parsed, mut limited) = (0, None);
    for _ in 0..12 {
        h.send(&ClientMsg::MediaAnswer { sdp: big.clone() }).await;
        match h.next().await {
            ServerMsg::Error { code, .. } if code == "media_refused" => parsed += 1,
            ServerMsg::Error { code, message } if code == "rate_limited" => {
                limited = Some(message);
                break;
            }
            m => panic!("unexpected reply to an oversized answer: {m:?}"),
        }
    }
    // 2 MiB holds six of them, plus what refills while the test sends.
    assert!(
        (6..=8).contains(&parsed),
        "parsed {parsed} before the limit"
    );
    let message = limited.expect("the SDP budget ran out");
    assert!(message.contains("Try again in"), "{message}");
    h.send(&ClientMsg::Ping).await;
    assert!(matches!(h.next().await, ServerMsg::Pong));
    let log = sealroom_store::audit::entries(s.running.app.store.pool())
        .await
        .expect("log");
    let hits: Vec<_> = log
        .iter()
        .filter(|e| e.entry.kind == "rate_limited" && e.entry.subject == "media")
        .collect();
    assert_eq!(hits.len(), 1, "one audit entry for the SDP limit");
    assert!(
        hits[0].entry.actor.starts_with("user:"),
        "{:?}",
        hits[0].entry
    );

    // A host acting on someone who does not exist gets a clear error.
    h.send(&ClientMsg::Remove {
        participant_id: "ghost".into(),
    })
    .await;
    assert!(expect_error("no_such_participant")(&h.next().await));
    // The socket still works and the state is as before.
    b.send(&ClientMsg::Ping).await;
    assert!(matches!(b.next().await, ServerMsg::Pong));
    assert_eq!(s.running.app.hub.participants(&id).len(), 1);
    assert_eq!(s.running.app.hub.lobby(&id).len(), 1);

    // A message over the frame limit ends that socket only.
    let huge = "x".repeat(MAX_WS_MESSAGE + 128 * 1024);
    let _ = b.sig.send_text(&huge).await;
    assert!(b.closed_within(Duration::from_secs(2)).await);
    h.expect(
        "lobby empty",
        |m| matches!(m, ServerMsg::LobbyUpdate { waiting } if waiting.is_empty()),
    )
    .await;
    h.send(&ClientMsg::Ping).await;
    assert!(matches!(h.next().await, ServerMsg::Pong));

    // Unauthenticated sockets may only ask (and always hear "not found").
    let mut anon = s.anonymous().ws().await;
    assert_eq!(
        refused_reason(&anon.join(&id).await),
        Some(RefusalReason::NotFound)
    );
    anon.send(&ClientMsg::Leave).await;
    assert!(expect_error("not_allowed")(&anon.next().await));
}

async fn verify_cli(dir: &std::path::Path) -> (bool, serde_json::Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sealroom"))
        .args(["--json", "audit", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .await
        .expect("cli");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_first_edited_deleted_or_swapped_entry() {
    let s = server().await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let id = s
        .meeting("hana", meeting_req(Level::Open, &["bob"], &[], false))
        .await;
    let mut h = host.ws().await;
    h.join(&id).await;
    let mut b = bob.ws().await;
    b.join(&id).await;
    let mut probe = bob.ws().await;
    for _ in 0..5 {
        probe.join("nope").await;
    }
    // Someone not invited tries the real meeting: audited under the id's HMAC only.
    let mallory = s.member("mallory").await;
    let mut m = mallory.ws().await;
    assert!(matches!(m.join(&id).await, ServerMsg::Refused { .. }));
    let dir = s.dir.path().to_path_buf();
    let TestServer {
        running, dir: tmp, ..
    } = s;
    running.shutdown().await;
    let (ok, v) = verify_cli(&dir).await;
    assert!(ok, "{v}");
    let n = v["entries"].as_i64().expect("entries");
    assert!(n >= 10, "{v}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sealroom"))
        .args(["--json", "audit", "report", &id, "--data-dir"])
        .arg(&dir)
        .output()
        .await
        .expect("cli");
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let refusals = report["refusals"].as_array().expect("refusals");
    assert!(
        refusals.iter().any(|f| f["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("user:mallory/"))),
        "the uninvited attempt is in the meeting's report: {report}"
    );
    let refused_joins = report["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|l| l["kind"] == "join.refused")
        .count();
    assert_eq!(
        refused_joins, 1,
        "bob's five probes of another id are not this meeting's: {report}"
    );

    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        for f in ["sealroom.db", "sealroom.db-wal", "secret.key"] {
            if dir.join(f).exists() {
                std::fs::copy(dir.join(f), d.join(f)).expect("copy");
            }
        }
        d
    };
    async fn exec(d: &std::path::Path, sql: &str) {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}",
            d.join("sealroom.db").display()
        ))
        .await
        .expect("db");
        for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
            sqlx::query(stmt).execute(&mut c).await.expect("tamper");
        }
    }
    let edited = copy("edited");
    exec(
        &edited,
        "UPDATE audit SET source = '198.18.7.7' WHERE seq = 6",
    )
    .await;
    let deleted = copy("deleted");
    exec(&deleted, "DELETE FROM audit WHERE seq = 4").await;
    let swapped = copy("swapped");
    exec(&swapped, "UPDATE audit SET seq = -1 WHERE seq = 7; UPDATE audit SET seq = 7 WHERE seq = 8; UPDATE audit SET seq = 8 WHERE seq = -1").await;
    for (d, first_bad) in [(edited, 6), (deleted, 4), (swapped, 7)] {
        let (ok, v) = verify_cli(&d).await;
        assert!(!ok, "{} verified after tampering", d.display());
        assert_eq!(v["first_bad_entry"], first_bad, "{v}");
        // The meeting's report over a tampered log says so first and exits 1.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sealroom"))
            .args(["audit", "report", &id, "--data-dir"])
            .arg(&d)
            .output()
            .await
            .expect("cli");
        let md = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{md}");
        assert!(
            md.contains(&format!("**AUDIT LOG BROKEN** at entry {first_bad}")),
            "{md}"
        );
        println!(
            "{}: {}",
            d.file_name().and_then(|x| x.to_str()).unwrap_or(""),
            v["error"]
        );
    }
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A signaling socket opened with `cookie` (none: no Cookie header) and its first message as
/// raw JSON: what anyone who can reach the port sees.
async fn raw_socket(s: &TestServer, cookie: Option<&str>) -> (RawSocket, serde_json::Value) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let ws_url = s.origin().replacen("http", "ws", 1) + "/api/ws";
    let mut req = ws_url.into_client_request().expect("req");
    req.headers_mut()
        .insert("Origin", s.origin().parse().expect("h"));
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("Cookie", format!("__Host-sealroom={c}").parse().expect("h"));
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let hello = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).expect("json"),
        other => panic!("no hello: {other:?}"),
    };
    (ws, hello)
}

async fn raw_hello(s: &TestServer, cookie: Option<&str>) -> serde_json::Value {
    raw_socket(s, cookie).await.1
}

/// Reads `ws` to its end: the text messages, then the server's Close frame (code and reason).
/// Panics if the connection ends any other way (a reset, no Close) or takes over 5 s.
async fn read_to_close(
    ws: &mut (impl futures_util::Stream<
        Item = Result<
            tokio_tungstenite::tungstenite::Message,
            tokio_tungstenite::tungstenite::Error,
        >,
    > + Unpin),
) -> (Vec<serde_json::Value>, u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                texts.push(serde_json::from_str(t.as_str()).expect("json"))
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (texts, f.code.into(), f.reason.to_string())
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "the connection ended without the server's Close after {} messages (last {:?}): {other:?}",
                texts.len(),
                texts.last()
            ),
        }
    }
}

#[tokio::test]
async fn a_dead_session_learns_why_and_an_unknown_cookie_learns_nothing() {
    let s = server().await;
    let admin = s.passkey_user("root", Role::Admin).await;
    let bob = s.member("bob").await;
    let carol = s.member("carol").await;
    let bob_cookie = bob.cookie.clone().expect("cookie");
    let carol_cookie = carol.cookie.clone().expect("cookie");

    // No cookie and a cookie the server never issued: byte-for-byte the same hello.
    let anonymous = raw_hello(&s, None).await;
    assert_eq!(
        anonymous,
        json!({"type": "hello", "state": "unauthenticated", "ended": null})
    );
    let made_up = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand_bytes())
    };
    assert_eq!(raw_hello(&s, Some(&made_up)).await, anonymous);
    assert_eq!(
        raw_hello(&s, Some(&bob_cookie)).await,
        json!({"type": "hello", "state": "authenticated", "ended": null})
    );

    // bob's device is revoked: his old cookie is told so (and only that).
    admin.revoke_device(&bob.device_id).await;
    let (mut ws, hello) = raw_socket(&s, Some(&bob_cookie)).await;
    assert_eq!(hello["state"], "unauthenticated");
    assert_eq!(hello["ended"]["reason"], "device_revoked", "{hello}");
    // ... and the server ends that socket: it has nothing else to offer a dead session.
    let (more, code, reason) = read_to_close(&mut ws).await;
    assert!(more.is_empty(), "{more:?}");
    assert_eq!((code, reason.as_str()), (4001, "device_revoked"));
    // The native client reports it as such.
    let native = sealroom_client::Session::from_cookie(bob.native(), bob_cookie.clone())
        .signaling()
        .await;
    match native {
        Err(sealroom_client::Error::SessionEnded { code, .. }) => {
            assert_eq!(code, "device_revoked")
        }
        other => panic!("expected SessionEnded, got {:?}", other.map(|_| ())),
    }

    // carol signs out: her old cookie hears that the session ended.
    let out = carol.post("/api/logout", json!({})).await;
    assert!(out.status().is_success(), "{}", out.status());
    let hello = raw_hello(&s, Some(&carol_cookie)).await;
    assert_eq!(hello["ended"]["reason"], "session_ended", "{hello}");

    // The return of a dead session is on record, with who and why: one entry per session
    // and minute (bob's second socket is folded into his next entry).
    let log = sealroom_store::audit::entries(s.running.app.store.pool())
        .await
        .expect("log");
    let refused: Vec<_> = log
        .iter()
        .filter(|e| e.entry.kind == "session.refused")
        .collect();
    assert_eq!(refused.len(), 2, "one for bob, one for carol: {refused:?}");
    assert_eq!(
        refused[0].entry.actor,
        format!("user:bob/device:{}", bob.device_id)
    );
    assert!(refused[0].entry.detail.contains("device_revoked"));
    assert_eq!(
        refused[1].entry.actor,
        format!("user:carol/device:{}", carol.device_id)
    );
    assert!(refused[1].entry.detail.contains("session_ended"));
}

/// A client that keeps talking while its device is revoked still reads why, then the server's
/// Close: the server finishes the closing handshake instead of dropping a connection with unread
/// bytes (which makes the kernel reset it, and a reset can destroy the refusal before the client
/// reads it; a browser then sees a drop and reconnects instead).
#[tokio::test]
async fn a_talking_socket_still_reads_its_refusal_and_a_clean_close() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = server().await;
    let admin = s.passkey_user("root", Role::Admin).await;
    for round in 0..5 {
        let bob = s.member(&format!("bob{round}")).await;
        let cookie = bob.cookie.clone().expect("cookie");
        let (ws, hello) = raw_socket(&s, Some(&cookie)).await;
        assert_eq!(hello["state"], "authenticated");
        let (mut tx, mut rx) = ws.split();
        // Pings as fast as the socket takes them, until the server closes it.
        let talker = tokio::spawn(async move {
            let mut sent = 0u64;
            while tx
                .send(Message::Text(r#"{"type":"ping"}"#.into()))
                .await
                .is_ok()
            {
                sent += 1;
            }
            sent
        });
        // Revoke once the pings flow (a pong came back).
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("pong") => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("no pong: {other:?}"),
            }
        }
        admin.revoke_device(&bob.device_id).await;
        let (texts, code, reason) = read_to_close(&mut rx).await;
        let last = texts.last().expect("messages after the revocation");
        assert_eq!(last["type"], "refused", "round {round}: {last}");
        assert_eq!(last["reason"], "device_revoked");
        assert_eq!((code, reason.as_str()), (4001, "device_revoked"));
        // The talker stops once the connection is gone.
        let sent = tokio::time::timeout(Duration::from_secs(5), talker)
            .await
            .expect("the talker stops")
            .expect("talker");
        assert!(sent > 1, "round {round}: only {sent} pings went out");
    }
}

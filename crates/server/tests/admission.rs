//! Admission end to end over the real server: who gets in, who waits, who is refused and why,
//! and that removal, lock-out and revocation reach open sockets at once.

mod common;
use common::*;
use sealroom_proto::*;
use std::time::{Duration, Instant};

fn participants_of(m: &ServerMsg) -> Vec<String> {
    match m {
        ServerMsg::Admitted { participants, .. } | ServerMsg::Participants { participants } => {
            participants.iter().map(|p| p.user_name.clone()).collect()
        }
        _ => vec![],
    }
}

#[tokio::test]
async fn invitee_is_admitted_and_the_participant_list_is_live() {
    let s = server().await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let id = s
        .meeting("hana", meeting_req(Level::Open, &["bob"], &[], false))
        .await;

    let mut h = host.ws().await;
    let m = h.join(&id).await;
    let ServerMsg::Admitted {
        meeting,
        host: is_host,
        ..
    } = &m
    else {
        panic!("{m:?}")
    };
    assert!(*is_host);
    assert_eq!(meeting.title, "Quarterly review");
    assert_eq!(participants_of(&m), vec!["hana"]);

    let mut b = bob.ws().await;
    let m = b.join(&id).await;
    let ServerMsg::Admitted {
        host: is_host,
        participants,
        ..
    } = &m
    else {
        panic!("{m:?}")
    };
    assert!(!is_host);
    let bob_entry = participants
        .iter()
        .find(|p| p.user_name == "bob")
        .expect("bob listed");
    assert_eq!(bob_entry.device_kind, DeviceKind::Software);
    assert_eq!(bob_entry.network, "loopback");

    let m = h
        .expect("participants with bob", |m| participants_of(m).len() == 2)
        .await;
    assert_eq!(participants_of(&m), vec!["hana", "bob"]);

    b.send(&ClientMsg::Leave).await;
    b.expect("left", |m| matches!(m, ServerMsg::Left)).await;
    h.expect("participants without bob", |m| {
        matches!(m, ServerMsg::Participants { .. }) && participants_of(m) == vec!["hana"]
    })
    .await;
}

#[tokio::test]
async fn non_invitee_is_refused_as_not_found_and_learns_nothing() {
    let s = server().await;
    s.passkey_user("hana", Role::Organiser).await;
    let eve = s.member("eve").await;
    let id = s
        .meeting("hana", meeting_req(Level::Open, &[], &[], false))
        .await;
    let mut e = eve.ws().await;
    let m = e.join(&id).await;
    assert_eq!(refused_reason(&m), Some(RefusalReason::NotFound));
    let text = serde_json::to_string(&m).expect("json");
    assert!(
        !text.contains("Quarterly"),
        "refusal leaks the title: {text}"
    );
    // Nothing about the meeting arrives afterwards either.
    assert!(e.try_next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn lobby_admit_and_refuse_by_a_host() {
    let s = server().await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let carol = s.member("carol").await;
    let id = s
        .meeting(
            "hana",
            meeting_req(Level::Open, &["bob", "carol"], &[], true),
        )
        .await;
    let mut h = host.ws().await;
    assert!(matches!(h.join(&id).await, ServerMsg::Admitted { .. }));

    let mut b = bob.ws().await;
    assert!(matches!(b.join(&id).await, ServerMsg::Lobby));
    // In the lobby bob receives no meeting data at all.
    assert!(b.try_next(Duration::from_millis(200)).await.is_none());
    let waiting = h
        .expect(
            "lobby with bob",
            |m| matches!(m, ServerMsg::LobbyUpdate { waiting } if waiting.len() == 1),
        )
        .await;
    let ServerMsg::LobbyUpdate { waiting } = waiting else {
        unreachable!()
    };
    assert_eq!(waiting[0].user_name, "bob");
    assert_eq!(waiting[0].device_kind, DeviceKind::Software);
    assert!(
        waiting[0].network.contains("127.0.0.1"),
        "{}",
        waiting[0].network
    );

    h.send(&ClientMsg::Admit {
        participant_id: waiting[0].id.clone(),
    })
    .await;
    let m = b
        .expect("admitted", |m| matches!(m, ServerMsg::Admitted { .. }))
        .await;
    assert_eq!(participants_of(&m).len(), 2);

    let mut c = carol.ws().await;
    assert!(matches!(c.join(&id).await, ServerMsg::Lobby));
    let waiting = h
        .expect(
            "lobby with carol",
            |m| matches!(m, ServerMsg::LobbyUpdate { waiting } if waiting.len() == 1),
        )
        .await;
    let ServerMsg::LobbyUpdate { waiting } = waiting else {
        unreachable!()
    };
    h.send(&ClientMsg::Refuse {
        participant_id: waiting[0].id.clone(),
    })
    .await;
    let m = c
        .expect("refused", |m| matches!(m, ServerMsg::Refused { .. }))
        .await;
    assert_eq!(refused_reason(&m), Some(RefusalReason::RefusedByHost));
}

#[tokio::test]
async fn removal_cuts_the_participant_out_at_once_and_rejoin_needs_admission() {
    let s = server().await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let id = s
        .meeting("hana", meeting_req(Level::Open, &["bob"], &[], false))
        .await;
    let mut h = host.ws().await;
    h.join(&id).await;
    let mut b = bob.ws().await;
    let ServerMsg::Admitted { you, .. } = b.join(&id).await else {
        panic!("bob admitted")
    };
    h.expect("two", |m| participants_of(m).len() == 2).await;

    let t = Instant::now();
    h.send(&ClientMsg::Remove {
        participant_id: you,
    })
    .await;
    let m = b
        .expect("removed", |m| matches!(m, ServerMsg::Refused { .. }))
        .await;
    println!("removal reached the removed socket in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(refused_reason(&m), Some(RefusalReason::RemovedByHost));
    h.expect("one", |m| {
        matches!(m, ServerMsg::Participants { .. }) && participants_of(m) == vec!["hana"]
    })
    .await;
    // A removed participant is back to "authenticated": host actions are not allowed.
    b.send(&ClientMsg::Lock { locked: true }).await;
    assert!(matches!(b.next().await, ServerMsg::Error { code, .. } if code == "not_allowed"));
    // Host locks; a rejoin is refused.
    h.send(&ClientMsg::Lock { locked: true }).await;
    h.expect(
        "locked",
        |m| matches!(m, ServerMsg::MeetingUpdate { meeting } if meeting.locked),
    )
    .await;
    assert_eq!(
        refused_reason(&b.join(&id).await),
        Some(RefusalReason::Locked)
    );
}

/// A revocation the server was not told about (written to the database by another process,
/// or before the admin-socket notice arrives) is found by the socket's periodic re-check, and
/// the socket says why: `device_revoked`, not `session_ended`.
#[tokio::test]
async fn a_revocation_the_server_was_not_told_about_still_says_device_revoked() {
    let s = server_with(|c| c.session.recheck_secs = 1).await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let id = s
        .meeting("hana", meeting_req(Level::Open, &["bob"], &[], false))
        .await;
    let mut h = host.ws().await;
    h.join(&id).await;
    let mut b = bob.ws().await;
    b.join(&id).await;
    {
        use sqlx::Connection;
        let db = s.dir.path().join("sealroom.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("db");
        for sql in [
            "UPDATE devices SET revoked_at = unixepoch(), revoked_reason = 'test' WHERE id = ?",
            "UPDATE sessions SET revoked_at = unixepoch() WHERE device_id = ?",
        ] {
            sqlx::query(sql)
                .bind(&bob.device_id)
                .execute(&mut conn)
                .await
                .expect("revoke behind the server's back");
        }
    }
    let t = Instant::now();
    let m = b
        .expect("refused", |m| matches!(m, ServerMsg::Refused { .. }))
        .await;
    assert_eq!(
        refused_reason(&m),
        Some(RefusalReason::DeviceRevoked),
        "{m:?}"
    );
    assert!(b.closed_within(Duration::from_secs(1)).await);
    println!("re-check found the revocation after {:?}", t.elapsed());
}

#[tokio::test]
async fn device_revocation_closes_open_sockets_at_once_through_the_api_and_the_cli() {
    let s = server().await;
    let admin = s.passkey_user("root", Role::Admin).await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let carol = s.member("carol").await;
    let id = s
        .meeting(
            "hana",
            meeting_req(Level::Open, &["bob", "carol"], &[], false),
        )
        .await;
    let mut h = host.ws().await;
    h.join(&id).await;
    let mut b = bob.ws().await;
    b.join(&id).await;
    let mut c = carol.ws().await;
    c.join(&id).await;
    h.expect("three", |m| participants_of(m).len() == 3).await;

    // Through the admin API.
    let t = Instant::now();
    admin.revoke_device(&bob.device_id).await;
    let m = b
        .expect("revoked", |m| matches!(m, ServerMsg::Refused { .. }))
        .await;
    assert_eq!(refused_reason(&m), Some(RefusalReason::DeviceRevoked));
    assert!(b.closed_within(Duration::from_secs(1)).await);
    println!("API revocation closed the socket in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(1));
    // The session is gone too.
    assert_eq!(bob.get("/api/me").await.status(), 401);

    // Through the CLI, which tells the running server over the admin socket.
    let t = Instant::now();
    let out = s
        .cli(&["--json", "device", "revoke", &carol.device_id])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["server_notified"], true);
    let m = c
        .expect("revoked", |m| matches!(m, ServerMsg::Refused { .. }))
        .await;
    assert_eq!(refused_reason(&m), Some(RefusalReason::DeviceRevoked));
    assert!(c.closed_within(Duration::from_secs(1)).await);
    println!("CLI revocation closed the socket in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(2));
    h.expect("alone", |m| {
        matches!(m, ServerMsg::Participants { .. }) && participants_of(m) == vec!["hana"]
    })
    .await;
    // A revoked software device cannot log in again.
    let mut again = carol.clone();
    assert!(again.login_software().await.is_err());
}

#[tokio::test]
async fn precise_reasons_for_invitees() {
    let s = server_with(|c| c.networks.local_mode = false).await;
    s.passkey_user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let carol = s.member("carol").await;
    let now = sealroom_server::state::unix_now();

    // internal: loopback is not an internal network outside local mode.
    let internal = s
        .meeting("hana", meeting_req(Level::Internal, &["bob"], &[], false))
        .await;
    // restricted: software devices are never allowed.
    let restricted = s
        .meeting("hana", meeting_req(Level::Restricted, &["bob"], &[], false))
        .await;
    let mut early = meeting_req(Level::Open, &["bob"], &[], false);
    early.starts_at = Some(now + 3600);
    let early = s.meeting("hana", early).await;
    let mut late = meeting_req(Level::Open, &["bob"], &[], false);
    late.starts_at = Some(now - 7200);
    late.ends_at = Some(now - 3600);
    let late = s.meeting("hana", late).await;
    let mut full = meeting_req(Level::Open, &["bob", "carol"], &[], false);
    full.capacity = 1;
    let full = s.meeting("hana", full).await;

    let mut b = bob.ws().await;
    assert_eq!(
        refused_reason(&b.join(&internal).await),
        Some(RefusalReason::NetworkNotAllowed)
    );
    assert_eq!(
        refused_reason(&b.join(&restricted).await),
        Some(RefusalReason::DeviceKindNotAllowed)
    );
    assert_eq!(
        refused_reason(&b.join(&early).await),
        Some(RefusalReason::TooEarly)
    );
    assert_eq!(
        refused_reason(&b.join(&late).await),
        Some(RefusalReason::TooLate)
    );
    let mut c = carol.ws().await;
    assert!(matches!(c.join(&full).await, ServerMsg::Admitted { .. }));
    assert_eq!(
        refused_reason(&b.join(&full).await),
        Some(RefusalReason::Full)
    );
    // Every refusal is in the audit log with its reason.
    let log = sealroom_store::audit::entries(s.running.app.store.pool())
        .await
        .expect("log");
    for reason in [
        "network_not_allowed",
        "device_kind_not_allowed",
        "too_early",
        "too_late",
        "full",
    ] {
        assert!(
            log.iter()
                .any(|e| e.entry.kind == "join.refused" && e.entry.detail.contains(reason)),
            "no audit entry for {reason}"
        );
    }
}

#[tokio::test]
async fn disabling_a_user_ends_their_sockets() {
    let s = server().await;
    let admin = s.passkey_user("root", Role::Admin).await;
    let bob = s.member("bob").await;
    let mut b = bob.ws().await;
    let me: Me = bob.get("/api/me").await.json().await.expect("me");
    let r = admin
        .post(
            &format!("/api/admin/users/{}/disable", me.user_id),
            serde_json::json!({}),
        )
        .await;
    assert!(r.status().is_success());
    assert!(b.closed_within(Duration::from_secs(1)).await);
    assert_eq!(bob.get("/api/me").await.status(), 401);
}

#[tokio::test]
async fn a_new_device_is_announced_to_the_users_other_devices_and_to_admins() {
    let s = server().await;
    let admin = s.passkey_user("root", Role::Admin).await;
    let bob = s.member("bob").await;
    let eve = s.member("eve").await;
    let mut a = admin.ws().await;
    let mut b = bob.ws().await;
    let mut e = eve.ws().await;
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
        .post(
            &format!("/api/admin/users/{bob_id}/enrolments"),
            serde_json::json!({}),
        )
        .await
        .json()
        .await
        .expect("link");
    let token = link.url.split_once('#').expect("fragment").1.to_string();
    let mut second = s.anonymous();
    assert_eq!(second.enrol_software(&token, "bob-second").await, 200);
    for ws in [&mut a, &mut b] {
        let m = ws
            .expect("device notice", |m| {
                matches!(m, ServerMsg::DeviceAdded { .. })
            })
            .await;
        let ServerMsg::DeviceAdded {
            user_name,
            device_name,
            device_kind,
        } = m
        else {
            unreachable!()
        };
        assert_eq!(
            (user_name.as_str(), device_name.as_str(), device_kind),
            ("bob", "bob-second", DeviceKind::Software)
        );
    }
    // Other users hear nothing.
    assert!(e.try_next(Duration::from_millis(300)).await.is_none());
}

/// A connection that dies without a close (a lost network, a sleeping laptop) must not stay
/// in the meeting for as long as TCP takes to notice: the server pings every socket, and one
/// that answers nothing for `silence_secs` is dropped, as if its connection had closed. A
/// socket that answers (its client reads, so its WebSocket library answers the pings) stays.
#[tokio::test]
async fn a_silent_connection_is_dropped_and_one_that_answers_pings_stays() {
    let s = server_with(|c| {
        c.session.ping_secs = 1;
        c.session.silence_secs = 3;
        c.reconnect_grace = Duration::from_secs(2);
    })
    .await;
    let Hosted {
        id, mut h, mut b, ..
    } = s.hana_hosts_bob(false).await;
    assert!(matches!(b.join(&id).await, ServerMsg::Admitted { .. }));
    let started = Instant::now();
    let listed = |m: &ServerMsg, name: &str, away: bool| match m {
        ServerMsg::Participants { participants } => participants
            .iter()
            .any(|p| p.user_name == name && p.away == away),
        _ => false,
    };
    // bob's client stops reading (and so answering): after the silence he is away, then,
    // after the grace, gone.
    h.expect("bob away", |m| listed(m, "bob", true)).await;
    // (The silence counts from bob's last message, his join, just before `started`.)
    let away_after = started.elapsed();
    assert!(
        away_after >= Duration::from_secs(2),
        "away after {away_after:?}, before the silence ran out"
    );
    let gone = h
        .expect(
            "bob gone",
            |m| matches!(m, ServerMsg::Participants { participants } if participants.len() == 1),
        )
        .await;
    assert!(listed(&gone, "hana", false), "{gone:?}");
    assert!(b.closed_within(Duration::from_secs(1)).await);
    // hana's client read all along: well past the silence, she is still served.
    assert!(started.elapsed() > Duration::from_secs(5));
    h.send(&ClientMsg::Ping).await;
    h.expect("pong", |m| matches!(m, ServerMsg::Pong)).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_even_while_a_reply_to_it_waits() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = server_with(|c| {
        c.session.ping_secs = 1;
        c.session.silence_secs = 3;
        c.reconnect_grace = Duration::from_secs(1);
    })
    .await;
    let Hosted {
        id, bob, mut h, b, ..
    } = s.hana_hosts_bob(false).await;
    drop(b);
    // bob's own connection, with a receive buffer so small that the server's replies fill it
    // at once when he stops reading.
    let addr = s.running.addr;
    let tcp =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("tcp");
    tcp.set_recv_buffer_size(4096).expect("rcvbuf");
    tcp.connect(&addr.into()).expect("connect");
    tcp.set_nonblocking(true).expect("nonblocking");
    let tcp = tokio::net::TcpStream::from_std(tcp.into()).expect("tokio tcp");
    let ws = signaling_over(&s, bob.cookie.as_deref().expect("cookie"), tcp).await;
    let (mut tx, mut rx) = ws.split();
    let join = serde_json::to_string(&ClientMsg::Join { meeting_id: id }).expect("json");
    tx.send(Message::text(join)).await.expect("join");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.next())
            .await
            .expect("admitted in time");
        if let Some(Ok(Message::Text(t))) = m {
            if let Ok(ServerMsg::Admitted { .. }) = serde_json::from_str(t.as_str()) {
                break;
            }
        }
    }
    // From here bob never reads again, and keeps talking (malformed messages: each reply is
    // a hundred bytes): the replies fill his buffers, then the server's, and its next send
    // waits for a reader that never comes.
    let flood = tokio::spawn(async move { while tx.send(Message::text("x")).await.is_ok() {} });
    let started = Instant::now();
    let away = |m: &ServerMsg, want: bool| match m {
        ServerMsg::Participants { participants } => participants
            .iter()
            .any(|p| p.user_name == "bob" && p.away == want),
        _ => false,
    };
    let deadline = started + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match h.try_next(left).await {
            Some(m) if away(&m, true) => break,
            Some(_) => continue,
            None => panic!(
                "bob is still shown as present after {:?}",
                started.elapsed()
            ),
        }
    }
    h.expect(
        "bob gone",
        |m| matches!(m, ServerMsg::Participants { participants } if participants.len() == 1),
    )
    .await;
    // Filling the buffers takes a moment, then a send waits the silence (3 s) and the place
    // is kept for the grace (1 s); never "when TCP gives up": a live peer that does not read
    // keeps TCP's connection up for ever.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    flood.abort();
    drop(rx);
}

/// A signaling socket with the session `cookie`, over a TCP connection the test set up itself.
async fn signaling_over(
    s: &TestServer,
    cookie: &str,
    tcp: tokio::net::TcpStream,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = (s.origin().replacen("http", "ws", 1) + "/api/ws")
        .into_client_request()
        .expect("req");
    let headers = req.headers_mut();
    headers.insert("Origin", s.origin().parse().expect("h"));
    let cookie = format!("__Host-sealroom={cookie}");
    headers.insert("Cookie", cookie.parse().expect("h"));
    let (ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade");
    ws
}

/// Signaling is small messages, often two in a row (a roster change, then the media answer).
/// With Nagle's algorithm on the server's socket the second waits for the ACK of the first,
/// which the client delays by 40 ms or more: most of a join's time before `TCP_NODELAY`. The
/// client here sets `TCP_NODELAY` itself, so only the server's setting is under test: two
/// malformed messages in one segment get two error replies, and the second must not wait for
/// an ACK. (A median over ten pairs: one slow pair on a busy machine does not decide it, and
/// with Nagle on every pair waits at least 40 ms.)
#[tokio::test]
async fn two_replies_in_a_row_are_not_held_back_for_an_ack() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = server().await;
    let Hosted { bob, b, .. } = s.hana_hosts_bob(false).await;
    drop(b);
    let tcp = tokio::net::TcpStream::connect(s.running.addr)
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut ws = signaling_over(&s, bob.cookie.as_deref().expect("cookie"), tcp).await;
    let next_error = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply in time");
        if let Some(Ok(Message::Text(t))) = m {
            if let Ok(ServerMsg::Error { .. }) = serde_json::from_str(t.as_str()) {
                return;
            }
        }
    };
    let mut pairs = Vec::new();
    for _ in 0..10 {
        // Both frames in one write, so the server reads them together and answers twice.
        ws.feed(Message::text("x")).await.expect("feed");
        ws.feed(Message::text("y")).await.expect("feed");
        let sent = Instant::now();
        ws.flush().await.expect("send");
        next_error(&mut ws).await;
        next_error(&mut ws).await;
        pairs.push(sent.elapsed());
    }
    pairs.sort();
    assert!(
        pairs[pairs.len() / 2] < Duration::from_millis(20),
        "the second reply waited for an ACK: {pairs:?}"
    );
}

#[tokio::test]
async fn a_dropped_connection_keeps_the_place_for_the_grace_period_only() {
    let s = server_with(|c| c.reconnect_grace = Duration::from_secs(2)).await;
    let Hosted {
        bob,
        id,
        mut h,
        mut b,
        ..
    } = s.hana_hosts_bob(true).await;
    assert!(matches!(b.join(&id).await, ServerMsg::Lobby));
    let ServerMsg::LobbyUpdate { waiting } = h
        .expect(
            "bob waits",
            |m| matches!(m, ServerMsg::LobbyUpdate { waiting } if waiting.len() == 1),
        )
        .await
    else {
        unreachable!()
    };
    h.send(&ClientMsg::Admit {
        participant_id: waiting[0].id.clone(),
    })
    .await;
    let ServerMsg::Admitted { you, .. } = b
        .expect("admitted", |m| matches!(m, ServerMsg::Admitted { .. }))
        .await
    else {
        unreachable!()
    };

    // The connection drops (no close frame): bob is shown as away, not gone.
    drop(b);
    let away = |m: &ServerMsg, want: bool| match m {
        ServerMsg::Participants { participants } => participants
            .iter()
            .any(|p| p.user_name == "bob" && p.away == want),
        _ => false,
    };
    h.expect("bob away", |m| away(m, true)).await;

    // Back within the grace: admitted at once (no lobby), same participant id.
    let mut b = bob.ws().await;
    let ServerMsg::Admitted { you: again, .. } = b.join(&id).await else {
        panic!("a reconnect within the grace skips the lobby")
    };
    assert_eq!(again, you);
    h.expect("bob back", |m| away(m, false)).await;

    // The grace does not bypass the other rules: while away, a lock keeps bob out.
    drop(b);
    h.expect("bob away again", |m| away(m, true)).await;
    h.send(&ClientMsg::Lock { locked: true }).await;
    h.expect(
        "locked",
        |m| matches!(m, ServerMsg::MeetingUpdate { meeting } if meeting.locked),
    )
    .await;
    let mut b = bob.ws().await;
    assert_eq!(
        refused_reason(&b.join(&id).await),
        Some(RefusalReason::Locked)
    );
    h.send(&ClientMsg::Lock { locked: false }).await;

    // Past the grace, bob has left; a rejoin is a new admission through the lobby.
    let t = Instant::now();
    h.expect("bob gone", |m| {
        matches!(m, ServerMsg::Participants { .. }) && participants_of(m) == vec!["hana"]
    })
    .await;
    println!("away participant removed {:?} after the lock", t.elapsed());
    assert!(matches!(b.join(&id).await, ServerMsg::Lobby));
    let out = s.cli(&["audit", "show", "--meeting", &id]).await;
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("participant.away"), "{log}");
    assert!(log.contains("\"resumed\":true"), "{log}");
}

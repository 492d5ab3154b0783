//! Calls end to end over the real server: native clients (str0m on real UDP sockets on
//! loopback) publish synthetic Opus and VP8 and receive each other through the SFU; a host's
//! removal cuts a participant's media; a participant who was never admitted gets no transport;
//! junk datagrams at the media port change nothing.

mod common;
use common::*;
use sealroom_client::media::{MediaOptions, MediaSession, MediaStats};
use sealroom_proto::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A member's signaling socket joined to `meeting`, with a media session started; returns the
/// session and the member's participant id.
async fn join_with_media(c: &Client, meeting: &str) -> (MediaSession, String) {
    let mut ws = c.ws().await;
    let since = Instant::now();
    let m = ws.join(meeting).await;
    let ServerMsg::Admitted { you, .. } = m else {
        panic!("not admitted: {m:?}")
    };
    let opts = MediaOptions {
        since,
        ..MediaOptions::default()
    };
    let session = MediaSession::start(ws.sig, opts)
        .await
        .expect("media starts");
    (session, you)
}

/// Frames received from every other participant, per source.
fn counts(stats: &MediaStats, others: &[&str]) -> Vec<u64> {
    others
        .iter()
        .flat_map(|p| {
            [Source::Microphone, Source::Camera]
                .into_iter()
                .map(move |s| stats.frames_from(p, s))
        })
        .collect()
}

/// Wait (polling) until `ok` holds, at most `within`.
async fn until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ok()
}

/// The next event of `session` matching `pred` within 5 s, skipping others.
async fn expect_event(
    session: &mut MediaSession,
    what: &str,
    pred: impl Fn(&ServerMsg) -> bool,
) -> ServerMsg {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match session.next_event(left).await {
            Some(m) if pred(&m) => return m,
            Some(_) => continue,
            None => panic!("no {what} within 5 s"),
        }
    }
}

fn not_allowed(m: &ServerMsg) -> bool {
    matches!(m, ServerMsg::Error { code, .. } if code == "not_allowed")
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// `t - t0` in milliseconds, negative when `t` came first.
fn signed_ms(t: Instant, t0: Instant) -> f64 {
    match t.checked_duration_since(t0) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(t0.duration_since(t).as_secs_f64() * 1e3),
    }
}

/// CRC-32 (IEEE), for the STUN FINGERPRINT attribute (RFC 8489 §14.7).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A well-formed ICE binding request (RFC 8445 §7.1.2, RFC 8489): USERNAME `ufrag`, PRIORITY,
/// ICE-CONTROLLING, a MESSAGE-INTEGRITY made of random bytes (we know no password) and a
/// correct FINGERPRINT.
fn stun_binding_request(ufrag: &str) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&rand::random::<[u8; 12]>());
    attr(&mut m, 0x0006, ufrag.as_bytes());
    attr(&mut m, 0x0024, &0x6e7f_1effu32.to_be_bytes());
    attr(&mut m, 0x802a, &rand::random::<[u8; 8]>());
    attr(&mut m, 0x0008, &rand::random::<[u8; 20]>());
    // The length covers the FINGERPRINT attribute, which is computed over what precedes it.
    let len = (m.len() - 20 + 8) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let fp = crc32(&m) ^ 0x5354_554e;
    attr(&mut m, 0x8028, &fp.to_be_bytes());
    m
}

/// Junk shaped like each protocol the media port demultiplexes (RFC 7983), plus noise.
fn junk() -> Vec<Vec<u8>> {
    let rnd = |n: usize| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
    let with = |head: &[u8], n: usize| {
        let mut v = head.to_vec();
        v.extend(rnd(n));
        v
    };
    let mut out = vec![
        vec![],
        vec![0x00],
        rnd(3),
        rnd(19),
        rnd(200),
        rnd(1_200),
        rnd(1_500),
        // STUN: a header cut short, a length beyond the datagram, an unsolicited success
        // response, and a full request with an unknown ufrag.
        vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3],
        with(&[0x00, 0x01, 0x00, 0xc8, 0x21, 0x12, 0xa4, 0x42], 16),
        with(&[0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42], 12),
        stun_binding_request("nosuchufrag:x"),
        // RTP (version 2, PT 96/111) whole and truncated.
        with(
            &[0x80, 0x60, 0x12, 0x34, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef],
            300,
        ),
        with(&[0x80, 0xef], 3),
        // RTCP: SR with a length past the end, a PLI, a truncated header.
        with(&[0x80, 0xc8, 0x00, 0x40], 20),
        with(&[0x81, 0xce, 0x00, 0x02], 8),
        vec![0x80, 0xc9],
        // DTLS 1.2 handshake (ClientHello) and application data, whole-ish and truncated.
        with(
            &[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x40, 0x01],
            60,
        ),
        with(&[0x17, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 5, 0x00, 0x20], 32),
        vec![0x16, 0xfe],
        with(&[0x15, 0xfe, 0xfd], 10),
    ];
    for first in [0x02u8, 0x13, 0x40, 0x7f, 0xc0, 0xff] {
        out.push(with(&[first], 100));
    }
    out
}

/// Whether any datagram reaches `socket` within `within`.
async fn anything_within(socket: &UdpSocket, within: Duration) -> Option<(usize, SocketAddr)> {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(within, socket.recv_from(&mut buf))
        .await
        .ok()
        .and_then(|r| r.ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_native_clients_exchange_media_and_removal_cuts_within_a_second() {
    let s = server().await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let members = [
        s.member("alice").await,
        s.member("bob").await,
        s.member("carol").await,
    ];
    let id = s
        .meeting(
            "hana",
            meeting_req(Level::Open, &["alice", "bob", "carol"], &["hana"], false),
        )
        .await;
    let mut h = host.ws().await;
    let m = h.join(&id).await;
    assert!(matches!(m, ServerMsg::Admitted { host: true, .. }), "{m:?}");

    let mut sessions = Vec::new();
    let mut pids = Vec::new();
    for c in &members {
        let (session, pid) = join_with_media(c, &id).await;
        sessions.push(session);
        pids.push(pid);
    }
    let others = |i: usize| -> Vec<&str> {
        (0..3)
            .filter(|j| *j != i)
            .map(|j| pids[j].as_str())
            .collect()
    };

    // Everyone receives both sources of both others.
    let all_flowing = |sessions: &[MediaSession]| {
        (0..3).all(|i| {
            counts(&sessions[i].stats(), &others(i))
                .iter()
                .all(|n| *n > 0)
        })
    };
    let ok = until(Duration::from_secs(10), || all_flowing(&sessions)).await;
    for (i, session) in sessions.iter().enumerate() {
        let st = session.stats();
        println!(
            "{}: connected {} after join, first remote frame {} after join, sent {} audio / {} video; from others {:?}",
            ["alice", "bob", "carol"][i],
            st.connected_after.map(ms).unwrap_or_default(),
            st.first_remote_frame_after.map(ms).unwrap_or_default(),
            st.audio_frames_sent,
            st.video_frames_sent,
            counts(&st, &others(i)),
        );
        for t in st.by_source() {
            println!(
                "    from {} {:?}: {} frames, {} bytes, first after {}",
                t.participant_id,
                t.source,
                t.frames,
                t.bytes,
                t.first_frame_after.map(ms).unwrap_or_default()
            );
        }
        assert_eq!(st.ended, None);
    }
    assert!(ok, "not every client receives both sources of both others");
    // Carol joined last: her time to first remote frame is the one a newcomer sees.
    let carol_first = sessions[2]
        .stats()
        .first_remote_frame_after
        .expect("carol received");
    println!(
        "time to first remote frame for the last joiner: {}",
        ms(carol_first)
    );
    assert!(carol_first < Duration::from_secs(5));

    // Junk from other loopback ports during the call changes nothing, and earns no answer.
    let before: Vec<Vec<u64>> = (0..3)
        .map(|i| counts(&sessions[i].stats(), &others(i)))
        .collect();
    let mut junk_sockets = Vec::new();
    for _ in 0..4 {
        junk_sockets.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    }
    let media = s.running.media_addrs[0];
    let mut sent = 0;
    for round in 0..5 {
        for (k, sock) in junk_sockets.iter().enumerate() {
            for j in junk() {
                if (sent + k + round) % 2 == 0 || j.len() < 64 {
                    sock.send_to(&j, media).await.expect("send junk");
                    sent += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!(
        "sent {sent} junk datagrams from {} ports",
        junk_sockets.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, b) in before.iter().enumerate() {
        let after = counts(&sessions[i].stats(), &others(i));
        assert!(
            after.iter().zip(b).all(|(a, b)| a > b),
            "client {i} stopped receiving during the junk: {b:?} -> {after:?}"
        );
        assert_eq!(sessions[i].stats().ended, None);
    }
    for sock in &junk_sockets {
        assert_eq!(
            anything_within(sock, Duration::from_millis(200)).await,
            None,
            "the media port answered junk"
        );
    }

    // The host removes carol: her inbound media stops within a second, the others go on.
    let carol = pids[2].clone();
    let t0 = Instant::now();
    // Carol was receiving right up to the removal, so "it stopped" says something.
    let recent = sessions[2].stats().last_frame().expect("carol received");
    assert!(t0.duration_since(recent) < Duration::from_millis(200));
    h.send(&ClientMsg::Remove {
        participant_id: carol.clone(),
    })
    .await;
    let m = expect_event(&mut sessions[2], "removal", |m| {
        matches!(m, ServerMsg::Refused { .. })
    })
    .await;
    assert_eq!(
        refused_reason(&m),
        Some(RefusalReason::RemovedByHost),
        "{m:?}"
    );
    let notice = t0.elapsed();
    tokio::time::sleep_until((t0 + Duration::from_secs(1)).into()).await;
    let at_1s: Vec<MediaStats> = sessions.iter().map(|s| s.stats()).collect();
    tokio::time::sleep_until((t0 + Duration::from_secs(2)).into()).await;
    let at_2s: Vec<MediaStats> = sessions.iter().map(|s| s.stats()).collect();

    let total = |st: &MediaStats| st.tracks.iter().map(|t| t.frames).sum::<u64>();
    let cut = at_2s[2]
        .last_frame()
        .map(|t| t.saturating_duration_since(t0))
        .unwrap_or_default();
    println!(
        "removal: notice reached carol after {}; her last inbound frame {:+.1} ms after the remove was sent",
        ms(notice),
        at_2s[2].last_frame().map(|t| signed_ms(t, t0)).unwrap_or(f64::NAN)
    );
    assert!(
        cut <= Duration::from_secs(1),
        "carol still received media {} after removal",
        ms(cut)
    );
    assert_eq!(
        total(&at_1s[2]),
        total(&at_2s[2]),
        "carol's inbound media went on after a second"
    );
    for i in 0..2 {
        let other = pids[1 - i].as_str();
        let grew = [Source::Microphone, Source::Camera]
            .iter()
            .all(|src| at_2s[i].frames_from(other, *src) > at_1s[i].frames_from(other, *src));
        assert!(
            grew,
            "client {i} stopped receiving from the other remaining client"
        );
        let from_carol = at_2s[i]
            .last_frame_from(&carol)
            .map(|t| t.saturating_duration_since(t0))
            .unwrap_or_default();
        println!(
            "{}: last frame from carol {:+.1} ms after the remove",
            ["alice", "bob"][i],
            at_2s[i]
                .last_frame_from(&carol)
                .map(|t| signed_ms(t, t0))
                .unwrap_or(f64::NAN)
        );
        assert!(
            from_carol <= Duration::from_secs(1),
            "carol's media still reached client {i}"
        );
    }
    for session in sessions {
        session.stop().await;
    }
}

/// Both participants of a two-person call receive both sources of the other.
fn pair_flowing(a: &MediaSession, pa: &str, b: &MediaSession, pb: &str) -> bool {
    counts(&a.stats(), &[pb]).iter().all(|n| *n > 0)
        && counts(&b.stats(), &[pa]).iter().all(|n| *n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meetings_spread_over_media_shards_each_on_its_own_port() {
    let s = server_with(|c| c.media_shards = 2).await;
    let addrs = s.running.media_addrs.clone();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_ne!(addrs[0], addrs[1]);
    let host = s.passkey_user("hana", Role::Organiser).await;
    let mut members = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        members.push(s.member(name).await);
    }
    let mut meetings = Vec::new();
    let mut hosts = Vec::new();
    for pair in [["alice", "bob"], ["carol", "dave"], ["erin", "frank"]] {
        let id = s
            .meeting("hana", meeting_req(Level::Open, &pair, &["hana"], false))
            .await;
        let mut h = host.ws().await;
        assert!(matches!(h.join(&id).await, ServerMsg::Admitted { .. }));
        hosts.push(h);
        meetings.push(id);
    }

    // Meeting A opens on shard 0, meeting B on the emptier shard 1.
    let (a1, pa1) = join_with_media(&members[0], &meetings[0]).await;
    let (a2, pa2) = join_with_media(&members[1], &meetings[0]).await;
    let (mut b1, pb1) = join_with_media(&members[2], &meetings[1]).await;
    let (mut b2, pb2) = join_with_media(&members[3], &meetings[1]).await;
    let ok = until(Duration::from_secs(10), || {
        pair_flowing(&a1, &pa1, &a2, &pa2) && pair_flowing(&b1, &pb1, &b2, &pb2)
    })
    .await;
    assert!(ok, "not both meetings forward media");
    for (session, shard) in [(&a1, 0), (&a2, 0), (&b1, 1), (&b2, 1)] {
        let st = session.stats();
        assert_eq!(
            st.sfu_addresses,
            vec![addrs[shard]],
            "expected shard {shard}"
        );
        assert_eq!(st.ended, None);
    }
    // Nothing crosses between the meetings.
    for p in [&pb1, &pb2] {
        assert!(counts(&a1.stats(), &[p]).iter().all(|n| *n == 0));
    }
    for p in [&pa1, &pa2] {
        assert!(counts(&b1.stats(), &[p]).iter().all(|n| *n == 0));
    }

    // Every shard's port is as closed as the one port: a stranger's STUN with guessed
    // ufrags, and junk, earn no answer from either.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for addr in &addrs {
        for ufrag in ["aaaa:bbbb", "x:y", "alice:alice", ""] {
            stranger
                .send_to(&stun_binding_request(ufrag), addr)
                .await
                .expect("send");
        }
        for j in junk() {
            stranger.send_to(&j, addr).await.expect("send junk");
        }
    }
    let got = anything_within(&stranger, Duration::from_secs(1)).await;
    assert_eq!(got, None, "a media shard answered a stranger");

    // B ends: its shard is empty, so meeting C opens there, not beside A.
    for session in [&mut b1, &mut b2] {
        session.send(ClientMsg::Leave).expect("send leave");
        expect_event(session, "left", |m| matches!(m, ServerMsg::Left)).await;
    }
    let (c1, pc1) = join_with_media(&members[4], &meetings[2]).await;
    let (c2, pc2) = join_with_media(&members[5], &meetings[2]).await;
    let ok = until(Duration::from_secs(10), || {
        pair_flowing(&c1, &pc1, &c2, &pc2)
    })
    .await;
    assert!(ok, "meeting C does not forward media");
    for session in [&c1, &c2] {
        assert_eq!(session.stats().sfu_addresses, vec![addrs[1]]);
    }
    // A goes on undisturbed on shard 0.
    let before = counts(&a1.stats(), &[&pa2]);
    let ok = until(Duration::from_secs(5), || {
        counts(&a1.stats(), &[&pa2])
            .iter()
            .zip(&before)
            .all(|(now, then)| now > then)
    })
    .await;
    assert!(ok, "meeting A stopped forwarding");
    drop(hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_never_admitted_gets_no_media_transport() {
    let s = server().await;
    let host = s.passkey_user("hana", Role::Organiser).await;
    let dora = s.member("dora").await;
    let id = s
        .meeting("hana", meeting_req(Level::Open, &["dora"], &["hana"], true))
        .await;
    let mut h = host.ws().await;
    assert!(matches!(h.join(&id).await, ServerMsg::Admitted { .. }));

    // In the lobby: the offer is not allowed.
    let mut d = dora.ws().await;
    assert!(matches!(d.join(&id).await, ServerMsg::Lobby));
    let mut session = MediaSession::start(d.sig, MediaOptions::default())
        .await
        .expect("socket and offer");
    let local = session.local_addr();
    let m = expect_event(&mut session, "an answer to the offer", |m| {
        matches!(m, ServerMsg::Error { .. } | ServerMsg::MediaAnswer { .. })
    })
    .await;
    assert!(not_allowed(&m), "{m:?}");

    // Refused by the host: still not allowed.
    let ServerMsg::LobbyUpdate { waiting } = h
        .expect(
            "dora waiting",
            |m| matches!(m, ServerMsg::LobbyUpdate { waiting } if !waiting.is_empty()),
        )
        .await
    else {
        unreachable!()
    };
    h.send(&ClientMsg::Refuse {
        participant_id: waiting[0].id.clone(),
    })
    .await;
    let m = expect_event(&mut session, "refusal", |m| {
        matches!(m, ServerMsg::Refused { .. })
    })
    .await;
    assert_eq!(refused_reason(&m), Some(RefusalReason::RefusedByHost));
    let (stats, sig) = session.stop().await;
    assert_eq!(stats.connected_after, None);
    let mut session = MediaSession::start(sig.expect("socket open"), MediaOptions::default())
        .await
        .expect("socket and offer");
    let m = expect_event(&mut session, "an answer to the offer", |m| {
        matches!(m, ServerMsg::Error { .. } | ServerMsg::MediaAnswer { .. })
    })
    .await;
    assert!(not_allowed(&m), "{m:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stats, _) = session.stop().await;
    assert_eq!(stats.connected_after, None, "a refused client got media up");

    // From its media socket, binding requests with guessed ufrags earn nothing.
    let socket = UdpSocket::bind(local).await.expect("rebind");
    for ufrag in ["aaaa:bbbb", "x:y", "dora:dora", "srvufrag1:local", ""] {
        socket
            .send_to(&stun_binding_request(ufrag), s.running.media_addrs[0])
            .await
            .expect("send");
    }
    let got = anything_within(&socket, Duration::from_secs(1)).await;
    println!("STUN from a refused participant's socket {local}: answer {got:?}");
    assert_eq!(got, None, "the media port answered a stranger's STUN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_join_with_media_reports_frames_per_remote_participant() {
    let s = server().await;
    s.passkey_user("olga", Role::Organiser).await;
    let alice = s.member("alice").await;
    let bob = s.member("bob").await;
    let id = s
        .meeting(
            "olga",
            meeting_req(Level::Open, &["alice", "bob"], &[], false),
        )
        .await;
    let (session, alice_pid) = join_with_media(&alice, &id).await;
    let file = s.dir.path().join("bob.json");
    bob.identity
        .as_ref()
        .expect("enrolled")
        .save(&file)
        .expect("save identity");
    let out = s
        .cli(&[
            "--json",
            "client",
            "join",
            &id,
            "--identity",
            file.to_str().expect("utf-8 path"),
            "--media",
            "--stay",
            "3",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("media").is_some())
        .expect("a media report");
    let remote = report["media"]["remote"].as_array().expect("remote");
    let from_alice = remote
        .iter()
        .find(|r| r["participant_id"] == alice_pid.as_str())
        .expect("frames from alice");
    assert_eq!(from_alice["user_name"], "alice");
    for source in ["microphone", "camera"] {
        let src = from_alice["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .find(|x| x["source"] == source)
            .unwrap_or_else(|| panic!("no {source} from alice"));
        assert!(src["frames"].as_u64().expect("frames") > 10, "{src}");
        assert!(src["bytes"].as_u64().expect("bytes") > 0);
    }
    assert!(report["media"]["first_remote_frame_ms"].as_f64().is_some());
    // Alice received bob too.
    assert!(session.stats().tracks.iter().any(|t| t.frames > 10));
    session.stop().await;
}

/// DESIGN §7: media from a network the level does not allow is dropped at the demux (never
/// bound, never nominated), audited, shown to the participant, and with no allowed path the
/// participation ends with `media_failed`. An allowed path in the same meeting is audited as
/// `media.path` and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_from_a_network_the_level_refuses_is_never_used_and_ends_participation() {
    let internal: ipnet::IpNet = "127.0.0.1/32".parse().expect("range");
    let s = server_with(|c| {
        c.networks.local_mode = false;
        c.levels.internal.networks = vec![internal];
        c.networks.known_ranges = vec![internal];
        c.media_connect_timeout = Duration::from_secs(3);
    })
    .await;
    s.user("hana", Role::Organiser).await;
    let bob = s.member("bob").await;
    let carol = s.member("carol").await;
    let id = s
        .meeting(
            "hana",
            meeting_req(Level::Internal, &["bob", "carol"], &[], false),
        )
        .await;

    // Carol's signaling and media both come from 127.0.0.1: allowed.
    let (carol_media, _) = join_with_media(&carol, &id).await;
    assert!(
        until(Duration::from_secs(5), || carol_media
            .stats()
            .connected_after
            .is_some())
        .await,
        "carol's allowed path connects"
    );

    // Bob's signaling comes from 127.0.0.1 (admitted), his media from 127.0.0.2.
    let mut ws = bob.ws().await;
    let since = Instant::now();
    assert!(matches!(ws.join(&id).await, ServerMsg::Admitted { .. }));
    let opts = MediaOptions {
        bind: SocketAddr::from(([127, 0, 0, 2], 0)),
        since,
        ..MediaOptions::default()
    };
    let mut bob_media = MediaSession::start(ws.sig, opts)
        .await
        .expect("media starts");
    let m = expect_event(
        &mut bob_media,
        "media_path_refused",
        |m| matches!(m, ServerMsg::Error { code, .. } if code == "media_path_refused"),
    )
    .await;
    println!("bob was told: {m:?}");
    let m = expect_event(&mut bob_media, "media_failed", |m| {
        matches!(m, ServerMsg::Refused { .. })
    })
    .await;
    println!("participation ended {:?} after join", since.elapsed());
    assert_eq!(refused_reason(&m), Some(RefusalReason::MediaFailed));
    let bob_stats = bob_media.stats();
    assert!(
        bob_stats.connected_after.is_none(),
        "the refused path never connected"
    );
    assert!(bob_stats.tracks.iter().all(|t| t.frames == 0));

    let out = s.cli(&["audit", "show", "--meeting", &id]).await;
    let log = String::from_utf8_lossy(&out.stdout);
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("media.path_refused"))
        .collect();
    assert_eq!(refused.len(), 1, "one entry per refused source:\n{log}");
    assert!(refused[0].contains("127.0.0.2"), "{}", refused[0]);
    assert!(
        log.lines()
            .any(|l| l.contains("media.path") && l.contains("127.0.0.1") && !l.contains("refused")),
        "carol's path is audited:\n{log}"
    );
    // The investigator's report of the meeting: the log verified, both people with their
    // device, network and media path, bob's refused path with its reason.
    let out = s.cli(&["--json", "audit", "report", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report json");
    assert_eq!(report["integrity"]["ok"], true, "{report}");
    assert!(report["meeting"]["organiser"].is_string(), "{report}");
    let people = report["participants"].as_array().expect("participants");
    let person = |name: &str| {
        people
            .iter()
            .find(|p| p["user"] == name)
            .unwrap_or_else(|| panic!("{name} in the report: {report}"))
    };
    assert!(
        person("carol")["media_paths"][0]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1 (")),
        "{report}"
    );
    assert_eq!(person("bob")["admitted"], 1, "{report}");
    assert_eq!(person("bob")["media_ended"], "NeverConnected", "{report}");
    assert!(person("bob")["media_paths"]
        .as_array()
        .is_some_and(|a| a.is_empty()));
    let refusals = report["refusals"].as_array().expect("refusals");
    assert!(
        refusals
            .iter()
            .any(|f| f["kind"] == "media.path_refused" && f["source"] == "127.0.0.2"),
        "{report}"
    );
    let md = s.cli(&["audit", "report", &id]).await;
    let md = String::from_utf8_lossy(&md.stdout);
    println!("{md}");
    assert!(md.contains("**Audit log verified**"), "{md}");
    assert!(md.contains("| bob |"), "{md}");
    let (carol_stats, _) = carol_media.stop().await;
    assert!(carol_stats.connected_after.is_some());
    let _ = bob_media.stop().await;
}

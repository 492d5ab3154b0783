//! The signaling WebSocket: one state machine per socket (unauthenticated → authenticated →
//! lobby → admitted) with an allowlist of message types per state. Every join goes through
//! [`join`], which calls the one admission function of `sealroom-policy`.

use crate::delivery::Outcome;
use crate::http::{
    session_cookie, session_end, validate_session, ApiResult, Authed, ClientIp, Error,
};
use crate::live::{Notice, SocketHandle, SocketId};
use crate::state::{unix_now, AppRef, Limiters};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use sealroom_policy::{decide, Decision, DeviceFacts, InvitationFacts, JoinRequest};
use sealroom_proto::*;
use serde_json::json;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::sync::mpsc;

/// SDP one socket may send, in bytes per second, and the burst it may send at once. str0m's
/// parser costs about 120 instructions a byte (5.7 M for a 46 KB SDP; the largest message,
/// 384 KB, took 17 ms of CPU here with the parser before), and a renegotiation in a meeting
/// of 50 is about 65 KB: an honest client, even in a join storm, stays far under it. Over it,
/// the SDP is refused before it is parsed.
const SDP_BYTES_PER_SECOND: u32 = 256 * 1024;
const SDP_BURST_BYTES: u32 = 2 * 1024 * 1024;

pub async fn upgrade(
    State(app): State<AppRef>,
    ip: ClientIp,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let (authed, ended) = match session_cookie(&headers) {
        Some(token) => match validate_session(&app, &token).await? {
            Some(a) => (Some((a, token)), None),
            None => (None, session_end(&app, &token).await?),
        },
        None => (None, None),
    };
    // A session that was valid once came back (a page reconnecting after its device was
    // revoked or its session ended): tell its holder why, and keep a record of the attempt
    // (one entry per session and minute; the ones in between are counted in the next).
    let ended = match ended {
        Some((s, reason)) => {
            if let Some(folded) = app
                .limiters
                .should_audit(&format!("session.refused:{}", s.id_hash))
            {
                // The actor as every other entry names a person: user name and device.
                let user = app.store.user(&s.user_id).await?;
                let name = user.map_or(s.user_id.clone(), |u| u.name);
                let e = app.entry(
                    "session.refused",
                    &format!("user:{name}/device:{}", s.device_id),
                    "socket",
                    &ip.0.to_string(),
                    json!({"reason": reason.as_str(), "earlier_hits_folded": folded}),
                );
                app.audit_alone(e).await?;
            }
            Some(reason)
        }
        None => None,
    };
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE + 64 * 1024)
        .max_frame_size(MAX_WS_MESSAGE + 64 * 1024)
        // Signaling is small and bursty: 16 KiB buffers instead of 128 KiB each way keep
        // a participant's socket cheap (larger messages still arrive, in more reads).
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| async move {
            let mut s = Socket::new(app, ip, authed);
            s.run(socket, ended).await;
        }))
}

/// Where this socket is in a meeting.
struct Current {
    meeting: MeetingInfo,
    participant: Participant,
    admitted: bool,
}

struct Socket {
    app: AppRef,
    ip: ClientIp,
    authed: Option<(Authed, String)>,
    id: Option<SocketId>,
    rx: Option<mpsc::UnboundedReceiver<Notice>>,
    current: Option<Current>,
    /// What is left of this socket's SDP budget (`SDP_BYTES_PER_SECOND`).
    sdp_budget: governor::DefaultDirectRateLimiter,
}

enum Flow {
    Continue,
    Close(RefusalReason),
}

impl Socket {
    fn new(app: AppRef, ip: ClientIp, authed: Option<(Authed, String)>) -> Socket {
        let (id, rx) = match &authed {
            Some((a, _)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let id = app.hub.register(SocketHandle {
                    user_id: a.user.id.clone(),
                    device_id: a.device.id.clone(),
                    session_hash: a.session_hash.clone(),
                    admin: a.user.role() == Role::Admin,
                    tx,
                });
                (Some(id), Some(rx))
            }
            None => (None, None),
        };
        Socket {
            app,
            ip,
            authed,
            id,
            rx,
            current: None,
            sdp_budget: governor::RateLimiter::direct(
                governor::Quota::per_second(
                    NonZeroU32::new(SDP_BYTES_PER_SECOND).unwrap_or(NonZeroU32::MIN),
                )
                .allow_burst(NonZeroU32::new(SDP_BURST_BYTES).unwrap_or(NonZeroU32::MIN)),
            ),
        }
    }

    /// Takes `sdp`'s size from the socket's SDP budget. Over budget, the client hears so (with
    /// when to try again), one audit entry per socket and minute records it (the hits in
    /// between are counted in the next), and `false` says the SDP must not be parsed.
    async fn spend_sdp(&self, ws: &mut Conn, sdp: &str) -> ApiResult<bool> {
        let bytes = u32::try_from(sdp.len()).unwrap_or(u32::MAX);
        let retry = match self
            .sdp_budget
            .check_n(NonZeroU32::new(bytes).unwrap_or(NonZeroU32::MIN))
        {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(not_until)) => Limiters::retry_after(&not_until),
            // More than the whole burst at once: cannot happen under the message limit.
            Err(_) => 60,
        };
        let app = &self.app;
        let (actor, user) = match &self.authed {
            Some((a, _)) => (a.actor(), a.user.id.clone()),
            None => ("anonymous".into(), String::new()),
        };
        let socket = self.id.unwrap_or_default();
        if let Some(folded) = app.limiters.should_audit(&format!("sdp:{user}:{socket}")) {
            app.audit_alone(app.entry(
                "rate_limited",
                &actor,
                "media",
                &self.ip.0.to_string(),
                json!({"retry_after": retry, "sdp_bytes": sdp.len(), "earlier_hits_folded": folded}),
            ))
            .await?;
        }
        send(
            ws,
            &error(
                "rate_limited",
                &format!(
                    "This connection sent more SDP than the server parses (at most {} KiB a \
                     second, {} KiB at once); this one was not read. Try again in {retry} s.",
                    SDP_BYTES_PER_SECOND / 1024,
                    SDP_BURST_BYTES / 1024
                ),
            ),
        )
        .await
        .ok();
        Ok(false)
    }

    fn state(&self) -> SocketState {
        match (&self.authed, &self.current) {
            (None, _) => SocketState::Unauthenticated,
            (Some(_), None) => SocketState::Authenticated,
            (Some(_), Some(c)) if !c.admitted => SocketState::Lobby,
            (Some(_), Some(_)) => SocketState::Admitted,
        }
    }

    fn allowed(&self, msg: &ClientMsg) -> bool {
        let host = self
            .current
            .as_ref()
            .is_some_and(|c| c.admitted && c.participant.host);
        match (self.state(), msg) {
            (_, ClientMsg::Ping) => true,
            (SocketState::Unauthenticated | SocketState::Authenticated, ClientMsg::Join { .. }) => {
                true
            }
            (SocketState::Lobby | SocketState::Admitted, ClientMsg::Leave) => true,
            (
                SocketState::Admitted,
                ClientMsg::MediaOffer { .. }
                | ClientMsg::MediaAnswer { .. }
                | ClientMsg::MediaState { .. }
                | ClientMsg::MlsBind { .. }
                | ClientMsg::MlsKeyPackage { .. }
                | ClientMsg::MlsGroupInfo { .. }
                | ClientMsg::MlsCommit { .. }
                | ClientMsg::MlsApp { .. },
            ) => true,
            (
                SocketState::Admitted,
                ClientMsg::Admit { .. }
                | ClientMsg::Refuse { .. }
                | ClientMsg::Remove { .. }
                | ClientMsg::Lock { .. },
            ) => host,
            _ => false,
        }
    }

    async fn run(&mut self, ws: WebSocket, ended: Option<RefusalReason>) {
        let limits = &self.app.config.session;
        let silence = Duration::from_secs(limits.silence_secs.max(1));
        let mut ping = tokio::time::interval(Duration::from_secs(limits.ping_secs.max(1)));
        let mut ws = Conn {
            ws,
            limit: silence,
            broken: false,
        };
        let hello = ServerMsg::Hello {
            state: self.state(),
            ended: ended.map(SessionEnd::from),
        };
        if send(&mut ws, &hello).await.is_err() {
            self.finish(false).await;
            return;
        }
        // The hello said why this session is over; the socket has nothing else to offer it.
        if let Some(reason) = ended {
            close(&mut ws, reason).await;
            self.finish(false).await;
            return;
        }
        let mut recheck = tokio::time::interval(Duration::from_secs(
            self.app.config.session.recheck_secs.max(1),
        ));
        recheck.tick().await;
        ping.tick().await;
        let mut heard = tokio::time::Instant::now();
        // A connection that ends without a normal close (code 1000) dropped: the participant
        // keeps its place for the reconnect grace.
        let mut dropped = true;
        let close_reason = loop {
            let flow = tokio::select! {
                incoming = ws.ws.recv() => { heard = tokio::time::Instant::now(); match incoming {
                    Some(Ok(Message::Text(t))) => self.on_text(&mut ws, t.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        let _ = send(&mut ws, &error("text_only", "Messages are JSON text.")).await;
                        Flow::Continue
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                    Some(Ok(Message::Close(frame))) => {
                        dropped = frame.is_none_or(|f| f.code != 1000);
                        break None;
                    }
                    None | Some(Err(_)) => break None,
                }},
                notice = recv(&mut self.rx) => self.on_notice(&mut ws, notice).await,
                _ = recheck.tick() => self.recheck().await,
                _ = ping.tick() => {
                    // A failed send marks the connection broken, handled below.
                    let _ = ws.send(Message::Ping(Default::default())).await;
                    Flow::Continue
                }
                // Not even the answer to a ping: the connection is gone, whatever TCP thinks.
                _ = tokio::time::sleep_until(heard + silence) => break None,
            };
            // An end the server decided stands, whether or not the client can still be told.
            if let Flow::Close(r) = flow {
                break Some(r);
            }
            // Gone, or it took nothing for a whole silence period: dropped.
            if ws.broken {
                break None;
            }
        };
        if let Some(reason) = close_reason {
            if send(&mut ws, &refused(reason)).await.is_ok() {
                close(&mut ws, reason).await;
            }
        }
        self.finish(dropped && close_reason.is_none()).await;
    }

    /// Leave whatever meeting this socket is in and forget it. A connection that dropped (not
    /// one the server ended) keeps an admitted participant's place for the reconnect grace.
    async fn finish(&mut self, dropped: bool) {
        if dropped {
            self.go_away().await;
        }
        self.leave_meeting("disconnected").await;
        if let Some(id) = self.id.take() {
            self.app.hub.unregister(id);
        }
    }

    /// The admitted participant's connection dropped: media stops at once, the place is kept
    /// for `reconnect_grace`; after it, the participant has left.
    async fn go_away(&mut self) {
        let (Some(c), Some(id), Some((a, _))) = (&self.current, self.id, &self.authed) else {
            return;
        };
        if !c.admitted || !self.app.hub.go_away(&c.meeting.id, id) {
            return;
        }
        let c = self.current.take().expect("checked above");
        let app = self.app.clone();
        let actor = a.actor();
        let src = self.ip.0.to_string();
        let subject = format!("meeting:{}", c.meeting.id);
        let grace = app.config.reconnect_grace;
        let e = app.entry(
            "participant.away",
            &actor,
            &subject,
            &src,
            json!({"participant": c.participant.id, "grace_secs": grace.as_secs()}),
        );
        if let Err(err) = app.audit_alone(e).await {
            tracing::error!(%err, "audit of a dropped connection failed");
        }
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if app.hub.expire_away(&c.meeting.id, id) {
                let e = app.entry(
                    "participant.left",
                    &actor,
                    &subject,
                    &src,
                    json!({"how": "disconnected", "participant": c.participant.id}),
                );
                if let Err(err) = app.audit_alone(e).await {
                    tracing::error!(%err, "audit of a departure failed");
                }
            }
        });
    }

    async fn leave_meeting(&mut self, why: &str) {
        let (Some(c), Some(id)) = (self.current.take(), self.id) else {
            return;
        };
        self.app.hub.leave(&c.meeting.id, id);
        if let Some((a, _)) = &self.authed {
            let e = self.app.entry(
                if c.admitted {
                    "participant.left"
                } else {
                    "lobby.left"
                },
                &a.actor(),
                &format!("meeting:{}", c.meeting.id),
                &self.ip.0.to_string(),
                json!({"how": why}),
            );
            if let Err(err) = self.app.audit_alone(e).await {
                tracing::error!(%err, "audit of a departure failed");
            }
        }
    }

    async fn recheck(&mut self) -> Flow {
        let Some((_, token)) = &self.authed else {
            return Flow::Continue;
        };
        match validate_session(&self.app, token).await {
            Ok(Some(a)) => {
                self.authed = Some((a, token.clone()));
                // An open socket keeps the session alive.
                let _ = self
                    .app
                    .store
                    .touch_session(
                        &self
                            .authed
                            .as_ref()
                            .map(|x| x.0.session_hash.clone())
                            .unwrap_or_default(),
                        unix_now(),
                    )
                    .await;
                Flow::Continue
            }
            Ok(None) => {
                // validate_session refuses a revoked device's session outright; say why, as
                // the notified path does (a revocation written while the server was not told,
                // or before the notice arrives).
                let ended = session_end(&self.app, token).await.ok().flatten();
                Flow::Close(ended.map_or(RefusalReason::SessionEnded, |(_, reason)| reason))
            }
            Err(_) => Flow::Continue,
        }
    }

    async fn on_notice(&mut self, ws: &mut Conn, notice: Option<Notice>) -> Flow {
        match notice {
            None => Flow::Continue,
            Some(Notice::Send(m)) => {
                if let (ServerMsg::MeetingUpdate { meeting }, Some(c)) = (&m, self.current.as_mut())
                {
                    c.meeting = meeting.clone();
                }
                let _ = send(ws, &m).await;
                Flow::Continue
            }
            Some(Notice::Admitted) => {
                let Some(c) = self.current.as_mut() else {
                    return Flow::Continue;
                };
                c.admitted = true;
                let meeting = c.meeting.clone();
                let host = c.participant.host;
                let you = c.participant.id.clone();
                let participants = self.app.hub.participants(&meeting.id);
                let _ = send(
                    ws,
                    &ServerMsg::Admitted {
                        meeting: meeting.clone(),
                        you,
                        host,
                        participants,
                    },
                )
                .await;
                if host {
                    let waiting = self.app.hub.lobby(&meeting.id);
                    let _ = send(ws, &ServerMsg::LobbyUpdate { waiting }).await;
                }
                Flow::Continue
            }
            Some(Notice::Ended(reason)) => {
                // The actor (a host, or the server) already audited the decision.
                if let (Some(c), Some(id)) = (self.current.take(), self.id) {
                    self.app.hub.leave(&c.meeting.id, id);
                }
                let _ = send(ws, &refused(reason)).await;
                Flow::Continue
            }
            Some(Notice::Close(reason)) => {
                if let (Some(c), Some(id)) = (self.current.take(), self.id) {
                    self.app.hub.leave(&c.meeting.id, id);
                    if let Some((a, _)) = &self.authed {
                        let e = self.app.entry(
                            "participant.ejected",
                            "server",
                            &format!("meeting:{}", c.meeting.id),
                            &self.ip.0.to_string(),
                            json!({"who": a.actor(), "reason": reason.as_str()}),
                        );
                        let _ = self.app.audit_alone(e).await;
                    }
                }
                Flow::Close(reason)
            }
        }
    }

    async fn on_text(&mut self, ws: &mut Conn, text: &str) -> Flow {
        if text.len() > MAX_WS_MESSAGE {
            let _ = send(
                ws,
                &error(
                    "too_large",
                    &format!("Messages are at most {MAX_WS_MESSAGE} bytes."),
                ),
            )
            .await;
            return Flow::Continue;
        }
        let msg: ClientMsg = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(_) => {
                let _ = send(
                    ws,
                    &error("malformed", "That message is not a valid sealroom message."),
                )
                .await;
                return Flow::Continue;
            }
        };
        if !self.allowed(&msg) {
            let state = self.state();
            let _ = send(
                ws,
                &error(
                    "not_allowed",
                    &format!(
                        "A {} message is not allowed while {}.",
                        msg.kind(),
                        state_name(state)
                    ),
                ),
            )
            .await;
            return Flow::Continue;
        }
        let result = match msg {
            ClientMsg::Ping => send(ws, &ServerMsg::Pong)
                .await
                .map(|_| Flow::Continue)
                .map_err(|_| Error::Internal("send".into())),
            ClientMsg::Join { meeting_id } => self.join(ws, &meeting_id).await,
            ClientMsg::Leave => {
                self.leave_meeting("left").await;
                let _ = send(ws, &ServerMsg::Left).await;
                Ok(Flow::Continue)
            }
            ClientMsg::Admit { participant_id } => self.host_admit(ws, &participant_id).await,
            ClientMsg::Refuse { participant_id } => self.host_refuse(ws, &participant_id).await,
            ClientMsg::Remove { participant_id } => self.host_remove(ws, &participant_id).await,
            ClientMsg::Lock { locked } => self.host_lock(&locked).await,
            ClientMsg::MediaOffer { sdp, sources } => self.media_offer(ws, sdp, sources).await,
            ClientMsg::MediaAnswer { sdp } => self.media_answer(ws, sdp).await,
            ClientMsg::MediaState {
                audio_muted,
                video_muted,
                screen,
            } => {
                if let Some(id) = self.id {
                    self.app.hub.update_participant(id, |p| {
                        p.audio_muted = audio_muted;
                        p.video_muted = video_muted;
                        p.screen = screen;
                    });
                }
                Ok(Flow::Continue)
            }
            ClientMsg::MlsBind { signature_key } => {
                self.mls(ws, |d, who| {
                    d.bind(who, &signature_key, unix_now().max(0) as u64)
                })
                .await
            }
            ClientMsg::MlsKeyPackage { key_package } => {
                self.mls(ws, |d, who| d.key_package(who, &key_package))
                    .await
            }
            ClientMsg::MlsGroupInfo { group_info } => {
                self.mls(ws, |d, who| d.group_info(who, &group_info)).await
            }
            ClientMsg::MlsCommit { commit, welcome } => {
                self.mls(ws, |d, who| d.commit(who, &commit, welcome.as_deref()))
                    .await
            }
            ClientMsg::MlsApp { message } => {
                self.mls(ws, |d, who| d.application(who, &message)).await
            }
        };
        match result {
            Ok(flow) => flow,
            Err(e) => {
                let (code, message) = match e {
                    Error::NotFound => (
                        "no_such_participant",
                        "Nobody with that id is in this meeting or its lobby.".to_string(),
                    ),
                    Error::Busy => ("busy", crate::http::BUSY_MESSAGE.to_string()),
                    Error::Internal(detail) => {
                        tracing::error!(%detail, "signaling error");
                        (
                            "internal",
                            "Something went wrong on the server; nothing was changed.".to_string(),
                        )
                    }
                    other => ("refused", format!("{other:?}")),
                };
                let _ = send(ws, &error(code, &message)).await;
                Flow::Continue
            }
        }
    }

    /// The one admission path. Not logged in, not invited and no such meeting take exactly the
    /// same steps: rate limit, one keyed lookup, the policy, an audit write, one answer.
    async fn join(&mut self, ws: &mut Conn, meeting_id: &str) -> ApiResult<Flow> {
        let app = self.app.clone();
        let src = self.ip.0.to_string();
        // Re-read the session: it may have been revoked since the socket opened.
        if let Some((_, token)) = &self.authed {
            match validate_session(&app, token).await? {
                Some(a) => self.authed = Some((a, token.clone())),
                None => {
                    let ended = session_end(&app, token).await?;
                    let reason = ended.map_or(RefusalReason::SessionEnded, |(_, r)| r);
                    return Ok(Flow::Close(reason));
                }
            }
        }
        let authed = self.authed.as_ref().map(|x| x.0.clone());
        let mut limit = Limiters::check(&app.limiters.join_ip, &self.ip.0);
        if let (Ok(()), Some(a)) = (&limit, &authed) {
            limit = Limiters::check(&app.limiters.join_account, &a.user.id);
        }
        if let Err(secs) = limit {
            let key = format!(
                "join:{}",
                authed
                    .as_ref()
                    .map(|a| a.user.id.clone())
                    .unwrap_or(src.clone())
            );
            if let Some(folded) = app.limiters.should_audit(&key) {
                let actor = authed
                    .as_ref()
                    .map(|a| a.actor())
                    .unwrap_or_else(|| "anonymous".into());
                app.audit_alone(app.entry(
                    "rate_limited",
                    &actor,
                    "join",
                    &src,
                    json!({"retry_after": secs, "earlier_hits_folded": folded}),
                ))
                .await?;
            }
            send(ws, &refused(RefusalReason::RateLimited)).await.ok();
            return Ok(Flow::Continue);
        }
        let user_id = authed.as_ref().map(|a| a.user.id.as_str()).unwrap_or("");
        let invited = app.store.invited_meeting(meeting_id, user_id).await?;
        let device_id = authed.as_ref().map(|a| a.device.id.as_str()).unwrap_or("");
        let facts = invited.as_ref().map(|im| InvitationFacts {
            level: im.meeting.level(),
            host: im.host,
            locked: im.meeting.locked,
            lobby: im.meeting.lobby,
            capacity: im.meeting.capacity.clamp(0, u32::MAX as i64) as u32,
            starts_at: im.meeting.starts_at,
            ends_at: im.meeting.ends_at,
            admitted_now: app.hub.admitted_count(&im.meeting.id, device_id),
        });
        let device = authed.as_ref().map(|a| DeviceFacts {
            kind: a.device.kind(),
            revoked: a.device.revoked(),
            approved: a.device.restricted_ok,
            backup_eligible: a.device.backup_eligible,
        });
        let zone = app.config.networks.zone_for(self.ip.0);
        let decision = decide(
            &app.config.levels,
            &JoinRequest {
                invitation: facts.as_ref(),
                device: device.as_ref(),
                zone: &zone,
                now: unix_now(),
                early_join_secs: app.config.early_join_secs,
            },
        );
        let actor = authed
            .as_ref()
            .map(|a| a.actor())
            .unwrap_or_else(|| "anonymous".into());
        // The same device coming back within the reconnect grace keeps its place: it skips the
        // lobby (it was admitted already); every other check above still applied.
        let resumed = match (&invited, &authed, &decision) {
            (Some(im), Some(a), Decision::Admit | Decision::Lobby) => {
                app.hub
                    .away_member(&im.meeting.id, &a.user.id, &a.device.id)
            }
            _ => None,
        };
        let decision = if resumed.is_some() {
            Decision::Admit
        } else {
            decision
        };
        let (Some(im), Some(a), Decision::Admit | Decision::Lobby) = (&invited, &authed, &decision)
        else {
            let reason = match decision {
                Decision::Refuse(r) => r,
                _ => RefusalReason::NotFound,
            };
            let subject = if reason == RefusalReason::NotFound {
                format!("probe:{}", app.keys.meeting_id_hmac(meeting_id))
            } else {
                format!("meeting:{meeting_id}")
            };
            let mut tx = app.store.begin().await?;
            tx.audit(app.entry(
                "join.refused",
                &actor,
                &subject,
                &src,
                json!({"reason": reason.as_str(), "network": zone.label()}),
            ))
            .await?;
            if reason == RefusalReason::NotFound {
                if let Some(count) = app.limiters.count_probe(self.ip.0) {
                    tx.audit(app.entry(
                        "scan.suspected",
                        &actor,
                        "meetings",
                        &src,
                        json!({"not_found_refusals": count, "window_secs": 600}),
                    ))
                    .await?;
                }
            }
            tx.commit().await?;
            send(ws, &refused(reason)).await.ok();
            return Ok(Flow::Continue);
        };
        let m = &im.meeting;
        let host = im.host && a.device.kind() == DeviceKind::Passkey;
        let info = MeetingInfo {
            id: m.id.clone(),
            title: m.title.clone(),
            level: m.level(),
            locked: m.locked,
            lobby: m.lobby,
            capacity: m.capacity as u32,
        };
        let participant = Participant {
            id: resumed
                .as_ref()
                .map(|p| p.id.clone())
                .unwrap_or_else(sealroom_store::random_id),
            user_name: a.user.name.clone(),
            display_name: a.user.display_name.clone(),
            device_name: a.device.name.clone(),
            device_kind: a.device.kind(),
            network: zone.label(),
            host,
            audio_muted: false,
            video_muted: false,
            screen: false,
            media_connected: false,
            away: false,
            device_id: a.device.id.clone(),
        };
        let lobby_entry = LobbyEntry {
            id: participant.id.clone(),
            user_name: a.user.name.clone(),
            display_name: a.user.display_name.clone(),
            device_name: a.device.name.clone(),
            device_kind: a.device.kind(),
            network: format!("{src} ({})", zone.label()),
        };
        let socket = self
            .id
            .ok_or_else(|| Error::Internal("authenticated socket without id".into()))?;
        let admitted = decision == Decision::Admit;
        app.audit_alone(app.entry(
            if admitted { "join.admitted" } else { "join.lobby" },
            &actor,
            &format!("meeting:{}", m.id),
            &src,
            json!({"participant": participant.id, "network": zone.label(), "device_kind": a.device.kind().as_str(), "host": host, "resumed": resumed.is_some()}),
        ))
        .await?;
        app.hub.replace_device(&m.id, &a.device.id, socket);
        if admitted {
            let participants = app.hub.admit(
                &m.id,
                info.clone(),
                socket,
                &a.user.id,
                participant.clone(),
                lobby_entry.clone(),
            );
            send(
                ws,
                &ServerMsg::Admitted {
                    meeting: info.clone(),
                    you: participant.id.clone(),
                    host,
                    participants,
                },
            )
            .await
            .ok();
            if host {
                send(
                    ws,
                    &ServerMsg::LobbyUpdate {
                        waiting: app.hub.lobby(&m.id),
                    },
                )
                .await
                .ok();
            }
        } else {
            app.hub.enter_lobby(
                &m.id,
                socket,
                &a.user.id,
                participant.clone(),
                lobby_entry.clone(),
            );
            send(ws, &ServerMsg::Lobby).await.ok();
        }
        self.current = Some(Current {
            meeting: info,
            participant,
            admitted,
        });
        Ok(Flow::Continue)
    }

    /// One delivery-service operation for this admitted socket: messages go out through the
    /// hub (in order, under the delivery lock), audit entries are written, an error is told.
    async fn mls(
        &mut self,
        ws: &mut Conn,
        op: impl FnOnce(&mut crate::delivery::Delivery, &crate::delivery::Who) -> Outcome,
    ) -> ApiResult<Flow> {
        let (Some(c), Some((a, _)), Some(socket)) = (&self.current, &self.authed, self.id) else {
            return Err(Error::Internal("MLS message outside a meeting".into()));
        };
        let who = crate::delivery::Who {
            socket,
            meeting_id: c.meeting.id.clone(),
            level: c.meeting.level,
            user_id: a.user.id.clone(),
            username: a.user.name.clone(),
            display_name: a.user.display_name.clone(),
            device_id: a.device.id.clone(),
            device_name: a.device.name.clone(),
            device_kind: a.device.kind().as_str().to_string(),
        };
        let outcome = {
            let mut d = self.app.delivery.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = op(&mut d, &who);
            // Sent while the lock is held, so every member sees commits in one order.
            for (to, msg) in &outcome.send {
                self.app.hub.send(*to, Notice::Send(msg.clone()));
            }
            outcome
        };
        deliver_audit(
            &self.app,
            &a.actor(),
            &who.meeting_id,
            &self.ip.0.to_string(),
            outcome.audit,
        )
        .await;
        if let Some((code, message)) = outcome.error {
            let _ = send(ws, &error(code, &message)).await;
        }
        Ok(Flow::Continue)
    }

    /// The client's offer: on the first one the SFU adds the participant with the level's
    /// network rule at its demux and the level's header-extension policy.
    async fn media_offer(
        &mut self,
        ws: &mut Conn,
        sdp: String,
        sources: Vec<MediaSource>,
    ) -> ApiResult<Flow> {
        let socket = self.id.ok_or(Error::Forbidden)?;
        if !self.spend_sdp(ws, &sdp).await? {
            return Ok(Flow::Continue);
        }
        if sources.len() > 8 || sources.iter().any(|s| s.mid.is_empty() || s.mid.len() > 32) {
            send(
                ws,
                &error(
                    "bad_sources",
                    "At most 8 sources, each with a mid of 1 to 32 characters.",
                ),
            )
            .await
            .ok();
            return Ok(Flow::Continue);
        }
        let app = self.app.clone();
        let media = app
            .hub
            .media()
            .ok_or_else(|| Error::Internal("media is not running".into()))?;
        let (room, info) = app.hub.media_room(socket).ok_or(Error::Forbidden)?;
        let participant_id = self
            .current
            .as_ref()
            .map(|c| c.participant.id.clone())
            .ok_or(Error::Forbidden)?;
        let rules = app.config.levels.rules(info.level).clone();
        let networks = app.config.networks.clone();
        let join = crate::media::Join {
            room,
            participant_id,
            // Active speaker is computed on clients at internal and restricted (DESIGN §7).
            audio_level: info.level == Level::Open,
            filter: std::sync::Arc::new(move |addr: std::net::SocketAddr| {
                sealroom_policy::zone_allowed(&rules, &networks.zone_for(addr.ip()))
            }),
        };
        let sources = sources.into_iter().map(|s| (s.mid, s.source)).collect();
        match media.offer(socket, Some(join), sdp, sources).await {
            Ok(answer) => send(ws, &ServerMsg::MediaAnswer { sdp: answer }).await.ok(),
            Err(e) => send(
                ws,
                &error(
                    "media_refused",
                    &format!("The media offer was refused: {e}"),
                ),
            )
            .await
            .ok(),
        };
        Ok(Flow::Continue)
    }

    async fn media_answer(&mut self, ws: &mut Conn, sdp: String) -> ApiResult<Flow> {
        let socket = self.id.ok_or(Error::Forbidden)?;
        if !self.spend_sdp(ws, &sdp).await? {
            return Ok(Flow::Continue);
        }
        let media = self
            .app
            .hub
            .media()
            .ok_or_else(|| Error::Internal("media is not running".into()))?;
        if let Err(e) = media.answer(socket, sdp).await {
            send(
                ws,
                &error(
                    "media_refused",
                    &format!("The media answer was refused: {e}"),
                ),
            )
            .await
            .ok();
        }
        Ok(Flow::Continue)
    }

    fn host_context(&self) -> ApiResult<(&Current, String)> {
        let c = self.current.as_ref().ok_or(Error::Forbidden)?;
        let a = self.authed.as_ref().ok_or(Error::Forbidden)?;
        Ok((c, a.0.actor()))
    }

    async fn host_admit(&mut self, ws: &mut Conn, pid: &str) -> ApiResult<Flow> {
        let (c, actor) = self.host_context()?;
        let meeting_id = c.meeting.id.clone();
        let app = self.app.clone();
        let (found, participant, lobby_entry) = app
            .hub
            .take_from_lobby(&meeting_id, pid)
            .ok_or(Error::NotFound)?;
        // Re-check what may have changed while they waited.
        let im = app
            .store
            .invited_meeting(&meeting_id, &found.user_id)
            .await?;
        let check = match &im {
            None => Err(RefusalReason::NotFound),
            Some(im) => sealroom_policy::admit_from_lobby(&InvitationFacts {
                level: im.meeting.level(),
                host: im.host,
                locked: im.meeting.locked,
                lobby: im.meeting.lobby,
                capacity: im.meeting.capacity as u32,
                starts_at: im.meeting.starts_at,
                ends_at: im.meeting.ends_at,
                admitted_now: app.hub.admitted_count(&meeting_id, &found.device_id),
            }),
        };
        let subject = format!("meeting:{meeting_id}");
        if let Err(reason) = check {
            app.audit_alone(app.entry(
                "lobby.admit_failed",
                &actor,
                &subject,
                "",
                json!({"who": found.user_name, "reason": reason.as_str()}),
            ))
            .await?;
            app.hub.send(found.socket, Notice::Ended(reason));
            send(ws, &error("admit_failed", reason.message()))
                .await
                .ok();
            return Ok(Flow::Continue);
        }
        app.audit_alone(app.entry(
            "lobby.admitted",
            &actor,
            &subject,
            "",
            json!({"who": found.user_name, "device": found.device_id, "participant": pid}),
        ))
        .await?;
        let info = self
            .current
            .as_ref()
            .map(|c| c.meeting.clone())
            .ok_or(Error::Forbidden)?;
        app.hub.admit(
            &meeting_id,
            info,
            found.socket,
            &found.user_id,
            participant,
            lobby_entry,
        );
        app.hub.send(found.socket, Notice::Admitted);
        Ok(Flow::Continue)
    }

    async fn host_refuse(&mut self, _ws: &mut Conn, pid: &str) -> ApiResult<Flow> {
        let (c, actor) = self.host_context()?;
        let meeting_id = c.meeting.id.clone();
        let (found, _, _) = self
            .app
            .hub
            .take_from_lobby(&meeting_id, pid)
            .ok_or(Error::NotFound)?;
        self.app
            .audit_alone(self.app.entry(
                "lobby.refused",
                &actor,
                &format!("meeting:{meeting_id}"),
                "",
                json!({"who": found.user_name, "device": found.device_id}),
            ))
            .await?;
        self.app
            .hub
            .send(found.socket, Notice::Ended(RefusalReason::RefusedByHost));
        Ok(Flow::Continue)
    }

    async fn host_remove(&mut self, ws: &mut Conn, pid: &str) -> ApiResult<Flow> {
        let (c, actor) = self.host_context()?;
        if c.participant.id == pid {
            send(
                ws,
                &error("remove_self", "Use leave to leave the meeting yourself."),
            )
            .await
            .ok();
            return Ok(Flow::Continue);
        }
        let meeting_id = c.meeting.id.clone();
        let found = self
            .app
            .hub
            .find_admitted(&meeting_id, pid)
            .ok_or(Error::NotFound)?;
        self.app
            .audit_alone(self.app.entry(
                "participant.removed",
                &actor,
                &format!("meeting:{meeting_id}"),
                "",
                json!({"who": found.user_name, "device": found.device_id}),
            ))
            .await?;
        // Out of the meeting first, so nothing more reaches it; then tell it.
        self.app.hub.leave(&meeting_id, found.socket);
        self.app
            .hub
            .send(found.socket, Notice::Ended(RefusalReason::RemovedByHost));
        Ok(Flow::Continue)
    }

    async fn host_lock(&mut self, locked: &bool) -> ApiResult<Flow> {
        let (c, actor) = self.host_context()?;
        let mut info = c.meeting.clone();
        let mut tx = self.app.store.begin().await?;
        tx.set_meeting_locked(&info.id, *locked).await?;
        tx.audit(self.app.entry(
            if *locked {
                "meeting.locked"
            } else {
                "meeting.unlocked"
            },
            &actor,
            &format!("meeting:{}", info.id),
            "",
            json!({}),
        ))
        .await?;
        tx.commit().await?;
        info.locked = *locked;
        self.app.hub.meeting_changed(info);
        Ok(Flow::Continue)
    }
}

async fn deliver_audit(
    app: &AppRef,
    actor: &str,
    meeting_id: &str,
    src: &str,
    entries: Vec<(&'static str, serde_json::Value)>,
) {
    for (kind, details) in entries {
        let e = app.entry(kind, actor, &format!("meeting:{meeting_id}"), src, details);
        if let Err(err) = app.audit_alone(e).await {
            tracing::error!(%err, kind, "audit of an MLS event failed");
        }
    }
}

/// Admitted sockets that left their meeting (every way out): the delivery service proposes to
/// remove their leaves.
pub async fn route_departures(app: AppRef, mut rx: mpsc::UnboundedReceiver<(String, SocketId)>) {
    while let Some((meeting_id, socket)) = rx.recv().await {
        let outcome = {
            let mut d = app.delivery.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = d.gone(&meeting_id, socket);
            for (to, msg) in &outcome.send {
                app.hub.send(*to, Notice::Send(msg.clone()));
            }
            outcome
        };
        deliver_audit(&app, "server", &meeting_id, "", outcome.audit).await;
    }
}

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<Notice>>) -> Option<Notice> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn send(ws: &mut Conn, msg: &ServerMsg) -> Result<(), axum::Error> {
    // Serialising our own enum cannot fail.
    let text = serde_json::to_string(msg).unwrap_or_default();
    ws.send(Message::Text(text.into())).await
}

/// The socket, with a bound on every send. A client that takes nothing for a whole silence
/// period is gone, whatever TCP thinks: a live peer that stops reading answers TCP's window
/// probes for ever, and a send blocked on its full buffer would keep this task (and the
/// participant's place in every roster) alive with it.
struct Conn {
    ws: WebSocket,
    /// The longest one send may wait for the client to take it.
    limit: Duration,
    /// A send failed or ran out of time: the connection counts as dropped.
    broken: bool,
}

impl Conn {
    async fn send(&mut self, m: Message) -> Result<(), axum::Error> {
        if self.broken {
            return Err(axum::Error::new("connection already broken"));
        }
        let r = match tokio::time::timeout(self.limit, self.ws.send(m)).await {
            Ok(r) => r,
            Err(_) => Err(axum::Error::new(
                "the client took nothing for a whole silence period",
            )),
        };
        self.broken = r.is_err();
        r
    }
}

/// The close code of a socket the server ended (the page does not reconnect after it).
const CLOSE_ENDED_BY_SERVER: u16 = 4001;

/// How long a client has to answer our Close before the connection is dropped anyway.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// Ends the connection with the closing handshake (RFC 6455 §7): our Close, then whatever the
/// client still sends, read and dropped, up to its Close. Dropping the connection with unread
/// bytes in the kernel's buffer would make it send a reset, and a reset can destroy the refusal
/// and our Close before the client reads them: the client would see a dropped connection and
/// reconnect instead of being told why.
async fn close(ws: &mut Conn, reason: RefusalReason) {
    let frame = CloseFrame {
        code: CLOSE_ENDED_BY_SERVER,
        reason: reason.as_str().into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(_)) = ws.ws.recv().await {}
    })
    .await;
}

fn refused(reason: RefusalReason) -> ServerMsg {
    ServerMsg::Refused {
        reason,
        message: reason.message().into(),
    }
}

fn error(code: &str, message: &str) -> ServerMsg {
    ServerMsg::Error {
        code: code.into(),
        message: message.into(),
    }
}

fn state_name(s: SocketState) -> &'static str {
    match s {
        SocketState::Unauthenticated => "not signed in",
        SocketState::Authenticated => "not in a meeting",
        SocketState::Lobby => "waiting in the lobby",
        SocketState::Admitted => "in a meeting (or not a host)",
    }
}

//! The audit report of one meeting, for an investigator: who was admitted, from which device,
//! network and media path; every refused join, probe and path; the key epochs; what the
//! hosts did; and the full timeline. It is built only from the hash-chained audit log (and
//! the meeting's row), after the log was verified, and says so at the top: a report over a
//! broken log is marked as such and the command exits 1.

use sealroom_store::audit::StoredEntry;
use sealroom_store::MeetingRow;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// What verifying the whole log found, before the report was built.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Integrity {
    pub ok: bool,
    /// Entries in the whole log (not only this meeting's).
    pub entries: i64,
    pub checkpoints: i64,
    /// Hash of the last entry: anchor it elsewhere to detect a re-signed rewrite later.
    pub head: String,
    pub first_bad_entry: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeetingInfo {
    pub id: String,
    pub title: String,
    pub level: String,
    pub organiser_id: String,
    /// The organiser's user name, if the user still exists.
    pub organiser: Option<String>,
    pub created_at: String,
    pub lobby: bool,
    pub locked: bool,
}

/// One device of one person that tried to take part.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Participant {
    /// `user:<name>/device:<id>` as audited.
    pub actor: String,
    pub user: String,
    pub device: String,
    pub device_kinds: BTreeSet<String>,
    /// Network zones the joins came from (`loopback`, `internal`, ... as the policy named them).
    pub networks: BTreeSet<String>,
    /// Addresses of the signaling connections.
    pub sources: BTreeSet<String>,
    /// Media paths the SFU bound (address and zone).
    pub media_paths: BTreeSet<String>,
    pub host: bool,
    /// Admissions (a resumed connection after a drop counts again).
    pub admitted: u32,
    pub waited_in_lobby: u32,
    pub first_admitted_at: Option<String>,
    pub last_left_at: Option<String>,
    pub last_left_how: Option<String>,
    /// Removed by a host, or ejected by the server (revoked device, disabled user).
    pub removed: bool,
    /// Why the SFU last ended this device's media session (e.g. `NeverConnected`).
    pub media_ended: Option<String>,
}

/// A refused join, probe, lobby request or media path.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub source: String,
    pub reason: String,
}

/// One accepted MLS epoch (a member added or removed, or a key update).
#[derive(Debug, Clone, Serialize)]
pub struct Epoch {
    pub seq: i64,
    pub at: String,
    pub epoch: Option<u64>,
    pub members: Option<u64>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub source: String,
    pub detail: Value,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meeting_id: String,
    /// `None` if the meeting row is gone (the log still has its history).
    pub meeting: Option<MeetingInfo>,
    pub integrity: Integrity,
    pub participants: Vec<Participant>,
    pub refusals: Vec<Refusal>,
    pub epochs: Vec<Epoch>,
    pub host_actions: Vec<Line>,
    pub timeline: Vec<Line>,
}

/// Kinds a host, the organiser, the CLI or the server's own enforcement cause.
const HOST_KINDS: &[&str] = &[
    "meeting.created",
    "meeting.locked",
    "meeting.unlocked",
    "lobby.admitted",
    "lobby.refused",
    "participant.removed",
    "participant.ejected",
];

/// Builds the report of `meeting_id` from the whole log. `probe_subject` is the subject that
/// refusals of this id as "not found" carry (an HMAC of the requested id, so that the log
/// does not hold ids of meetings that do not exist).
pub fn build(
    meeting_id: &str,
    meeting: Option<&MeetingRow>,
    organiser: Option<&str>,
    integrity: Integrity,
    log: &[StoredEntry],
    probe_subject: &str,
) -> Report {
    let subject = format!("meeting:{meeting_id}");
    let mut r = Report {
        meeting_id: meeting_id.to_string(),
        meeting: meeting.map(|m| MeetingInfo {
            id: m.id.clone(),
            title: m.title.clone(),
            level: m.level.clone(),
            organiser_id: m.organiser_id.clone(),
            organiser: organiser.map(str::to_string),
            created_at: utc(m.created_at),
            lobby: m.lobby,
            locked: m.locked,
        }),
        integrity,
        participants: Vec::new(),
        refusals: Vec::new(),
        epochs: Vec::new(),
        host_actions: Vec::new(),
        timeline: Vec::new(),
    };
    for s in log {
        let e = &s.entry;
        if e.subject != subject && e.subject != probe_subject {
            continue;
        }
        let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::Null);
        let at = utc(e.at);
        let text = |key: &str| detail.get(key).and_then(Value::as_str).map(str::to_string);
        let line = Line {
            seq: s.seq,
            at: at.clone(),
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            source: e.source.clone(),
            detail: detail.clone(),
            hash: s.hash.clone(),
        };
        match e.kind.as_str() {
            "join.admitted" | "join.lobby" => {
                let p = participant(&mut r.participants, &e.actor);
                if e.kind == "join.admitted" {
                    p.admitted += 1;
                    p.first_admitted_at.get_or_insert_with(|| at.clone());
                } else {
                    p.waited_in_lobby += 1;
                }
                p.host |= detail.get("host").and_then(Value::as_bool).unwrap_or(false);
                p.device_kinds.extend(text("device_kind"));
                p.networks.extend(text("network"));
                if !e.source.is_empty() {
                    p.sources.insert(e.source.clone());
                }
            }
            "media.path" => {
                let p = participant(&mut r.participants, &e.actor);
                let zone = text("zone").unwrap_or_default();
                p.media_paths.insert(format!("{} ({zone})", e.source));
            }
            "media.ended" => {
                participant(&mut r.participants, &e.actor).media_ended = text("reason");
            }
            "participant.left" | "lobby.left" | "participant.away" => {
                let p = participant(&mut r.participants, &e.actor);
                if e.kind == "participant.left" {
                    p.last_left_at = Some(at.clone());
                    p.last_left_how = text("how");
                }
            }
            _ => {}
        }
        if matches!(
            e.kind.as_str(),
            "participant.removed" | "participant.ejected"
        ) {
            // A host's removal names the person and device; the server's ejection (a
            // revoked device, a disabled user) names the audited actor.
            let actor = match (text("who"), text("device")) {
                (Some(who), Some(device)) => Some(format!("user:{who}/device:{device}")),
                (Some(who), None) if who.starts_with("user:") => Some(who),
                _ => None,
            };
            if let Some(actor) = actor {
                participant(&mut r.participants, &actor).removed = true;
            }
        }
        let refused = match e.kind.as_str() {
            "join.refused" | "lobby.admit_failed" | "scan.suspected" => {
                Some(text("reason").unwrap_or_default())
            }
            "media.path_refused" => Some(format!(
                "network_not_allowed ({})",
                text("zone").unwrap_or_default()
            )),
            "lobby.refused" => Some(format!(
                "refused by a host: {}",
                text("who").unwrap_or_default()
            )),
            "mls.commit_rejected" => Some(text("reason").unwrap_or_default()),
            _ => None,
        };
        if let Some(reason) = refused {
            r.refusals.push(Refusal {
                seq: s.seq,
                at: at.clone(),
                kind: e.kind.clone(),
                actor: e.actor.clone(),
                source: e.source.clone(),
                reason,
            });
        }
        if e.kind == "mls.epoch" {
            let members = |key: &str| -> Vec<String> {
                detail
                    .get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|m| match m.get("member") {
                                Some(Value::String(s)) => s.clone(),
                                Some(v) => v.to_string(),
                                None => m.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            r.epochs.push(Epoch {
                seq: s.seq,
                at: at.clone(),
                epoch: detail.get("epoch").and_then(Value::as_u64),
                members: detail.get("members").and_then(Value::as_u64),
                added: members("added"),
                removed: members("removed"),
            });
        }
        if HOST_KINDS.contains(&e.kind.as_str()) {
            r.host_actions.push(line.clone());
        }
        r.timeline.push(line);
    }
    r
}

fn participant<'a>(list: &'a mut Vec<Participant>, actor: &str) -> &'a mut Participant {
    let i = match list.iter().position(|p| p.actor == actor) {
        Some(i) => i,
        None => {
            let (user, device) = parse_actor(actor);
            list.push(Participant {
                actor: actor.to_string(),
                user,
                device,
                ..Participant::default()
            });
            list.len() - 1
        }
    };
    &mut list[i]
}

/// `user:<name>/device:<id>` → (name, id); anything else is kept whole as the user.
fn parse_actor(actor: &str) -> (String, String) {
    actor
        .strip_prefix("user:")
        .and_then(|rest| rest.rsplit_once("/device:"))
        .map(|(u, d)| (u.to_string(), d.to_string()))
        .unwrap_or_else(|| (actor.to_string(), String::new()))
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian, H. Hinnant's
/// civil-from-days).
pub fn utc(at: i64) -> String {
    let days = at.div_euclid(86_400);
    let secs = at.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Markdown cells: no line breaks or pipes from audited strings.
fn cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\|")
}

fn set(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "—".into()
    } else {
        cell(&s.iter().cloned().collect::<Vec<_>>().join(", "))
    }
}

/// A `## title (count)` section: `empty` when there are no rows, else a table. Columns whose
/// name starts with `>` are right-aligned; cells arrive escaped.
fn section(o: &mut String, title: &str, empty: &str, columns: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(o, "## {title} ({})\n", rows.len());
    if rows.is_empty() {
        let _ = writeln!(o, "{empty}\n");
        return;
    }
    let names: Vec<&str> = columns.iter().map(|c| c.trim_start_matches('>')).collect();
    let align: Vec<&str> = columns
        .iter()
        .map(|c| if c.starts_with('>') { "---:" } else { "---" })
        .collect();
    let _ = writeln!(o, "| {} |", names.join(" | "));
    let _ = writeln!(o, "|{}|", align.join("|"));
    for row in rows {
        let _ = writeln!(o, "| {} |", row.join(" | "));
    }
    let _ = writeln!(o);
}

/// The report as Markdown, for reading and printing.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Audit report: meeting {}\n", cell(&r.meeting_id));
    let i = &r.integrity;
    if i.ok {
        let _ = writeln!(
            o,
            "**Audit log verified**: {} entries, signed checkpoints: {}, head `{}`. \
             Compare the head with a copy kept elsewhere to rule out a re-signed rewrite.\n",
            i.entries, i.checkpoints, i.head
        );
    } else {
        let _ = writeln!(
            o,
            "**AUDIT LOG BROKEN** at entry {}: {}. Nothing below can be trusted.\n",
            i.first_bad_entry.map_or("?".into(), |s| s.to_string()),
            cell(i.error.as_deref().unwrap_or("unknown"))
        );
    }
    match &r.meeting {
        Some(m) => {
            let _ = writeln!(
                o,
                "Title: {}  \nLevel: {}  \nOrganiser: {}  \nCreated: {}  \nLobby: {}, locked now: {}\n",
                cell(&m.title),
                cell(&m.level),
                cell(&match &m.organiser {
                    Some(name) => format!("{name} ({})", m.organiser_id),
                    None => m.organiser_id.clone(),
                }),
                m.created_at,
                if m.lobby { "on" } else { "off" },
                if m.locked { "yes" } else { "no" }
            );
        }
        None => {
            let _ = writeln!(
                o,
                "The meeting no longer exists; its logged history follows.\n"
            );
        }
    }
    if let (Some(first), Some(last)) = (r.timeline.first(), r.timeline.last()) {
        let _ = writeln!(
            o,
            "{} entries about this meeting, {} to {}.\n",
            r.timeline.len(),
            first.at,
            last.at
        );
    }

    let participants: Vec<Vec<String>> = r
        .participants
        .iter()
        .map(|p| {
            let left = match (&p.last_left_at, &p.last_left_how) {
                (Some(at), Some(how)) => format!("{at} ({})", cell(how)),
                (Some(at), None) => at.clone(),
                _ => "—".into(),
            };
            vec![
                cell(&p.user),
                cell(&p.device),
                set(&p.device_kinds),
                if p.host { "yes" } else { "" }.into(),
                p.admitted.to_string(),
                p.waited_in_lobby.to_string(),
                set(&p.networks),
                set(&p.sources),
                set(&p.media_paths),
                cell(p.media_ended.as_deref().unwrap_or("—")),
                p.first_admitted_at
                    .clone()
                    .unwrap_or_else(|| "never".into()),
                left,
                if p.removed { "yes" } else { "" }.into(),
            ]
        })
        .collect();
    section(
        &mut o,
        "Participants",
        "Nobody joined.",
        &[
            "person",
            "device",
            "kind",
            "host",
            ">admitted",
            ">lobby",
            "networks",
            "signaling from",
            "media paths",
            "media ended",
            "first admitted",
            "last left",
            "removed",
        ],
        &participants,
    );
    let refusals: Vec<Vec<String>> = r
        .refusals
        .iter()
        .map(|f| {
            vec![
                f.seq.to_string(),
                f.at.clone(),
                cell(&f.kind),
                cell(&f.actor),
                cell(&f.source),
                cell(&f.reason),
            ]
        })
        .collect();
    section(
        &mut o,
        "Refused",
        "Nothing was refused.",
        &[">#", "when", "what", "who", "from", "reason"],
        &refusals,
    );
    let opt = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
    let epochs: Vec<Vec<String>> = r
        .epochs
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.clone(),
                opt(e.epoch),
                opt(e.members),
                cell(&e.added.join(", ")),
                cell(&e.removed.join(", ")),
            ]
        })
        .collect();
    section(
        &mut o,
        "Key epochs",
        "No end-to-end encrypted group was formed.",
        &[">#", "when", ">epoch", ">members", "added", "removed"],
        &epochs,
    );
    for (title, lines) in [
        ("Host and server decisions", &r.host_actions),
        ("Timeline", &r.timeline),
    ] {
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| {
                vec![
                    l.seq.to_string(),
                    l.at.clone(),
                    cell(&l.kind),
                    cell(&l.actor),
                    cell(&l.source),
                    cell(&l.detail.to_string()),
                ]
            })
            .collect();
        section(
            &mut o,
            title,
            "None.",
            &[">#", "when", "what", "who", "from", "detail"],
            &rows,
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealroom_store::AuditEntry;
    use serde_json::json;

    fn entry(
        seq: i64,
        kind: &str,
        actor: &str,
        subject: &str,
        source: &str,
        detail: Value,
    ) -> StoredEntry {
        StoredEntry {
            seq,
            entry: AuditEntry {
                at: 1_700_000_000 + seq,
                kind: kind.into(),
                actor: actor.into(),
                subject: subject.into(),
                source: source.into(),
                detail: detail.to_string(),
            },
            prev_hash: String::new(),
            hash: format!("h{seq}"),
        }
    }

    fn ok() -> Integrity {
        Integrity {
            ok: true,
            entries: 9,
            checkpoints: 1,
            head: "h9".into(),
            first_bad_entry: None,
            error: None,
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_398_245), "2026-11-23 01:44:05 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn participants_refusals_and_epochs_come_from_this_meetings_entries_only() {
        let alice = "user:alice/device:d1";
        let bob = "user:bob/device:d2";
        let log = vec![
            entry(
                1,
                "meeting.created",
                "user:alice/device:d1",
                "meeting:m1",
                "127.0.0.1",
                json!({}),
            ),
            entry(
                2,
                "join.admitted",
                alice,
                "meeting:m1",
                "127.0.0.1",
                json!({"network": "loopback", "device_kind": "passkey", "host": true}),
            ),
            entry(
                3,
                "join.admitted",
                bob,
                "meeting:m2",
                "127.0.0.9",
                json!({"network": "internal"}),
            ),
            entry(
                4,
                "join.refused",
                "user:eve/device:d9",
                "meeting:m1",
                "198.18.2.7",
                json!({"reason": "network_not_allowed", "network": "external"}),
            ),
            entry(
                5,
                "join.refused",
                "anonymous",
                "probe:abc",
                "203.0.113.5",
                json!({"reason": "not_found"}),
            ),
            entry(
                6,
                "join.admitted",
                bob,
                "meeting:m1",
                "127.0.0.1",
                json!({"network": "loopback", "device_kind": "software"}),
            ),
            entry(
                7,
                "media.path",
                bob,
                "meeting:m1",
                "127.0.0.1",
                json!({"zone": "loopback"}),
            ),
            entry(
                8,
                "media.path_refused",
                bob,
                "meeting:m1",
                "127.0.0.2",
                json!({"zone": "external"}),
            ),
            entry(
                9,
                "mls.epoch",
                "server",
                "meeting:m1",
                "",
                json!({"epoch": 1, "members": 2, "added": [{"leaf": 1, "member": "bob/d2"}], "removed": []}),
            ),
            entry(
                10,
                "participant.removed",
                alice,
                "meeting:m1",
                "127.0.0.1",
                json!({"who": "bob", "device": "d2", "participant": "p2"}),
            ),
            entry(
                11,
                "participant.left",
                bob,
                "meeting:m1",
                "127.0.0.1",
                json!({"how": "removed"}),
            ),
            entry(
                12,
                "participant.ejected",
                "server",
                "meeting:m1",
                "127.0.0.1",
                json!({"who": alice, "reason": "device_revoked"}),
            ),
        ];
        let r = build("m1", None, None, ok(), &log, "probe:abc");
        assert_eq!(r.timeline.len(), 11, "entry 3 is another meeting's");
        let names: Vec<&str> = r.participants.iter().map(|p| p.user.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        let (a, b) = (&r.participants[0], &r.participants[1]);
        assert!(a.host && !b.host);
        assert!(a.removed, "ejected by the server");
        assert_eq!(b.device, "d2");
        assert_eq!(
            b.networks.iter().collect::<Vec<_>>(),
            ["loopback"],
            "m2's join is not counted"
        );
        assert_eq!(
            b.media_paths.iter().collect::<Vec<_>>(),
            ["127.0.0.1 (loopback)"]
        );
        assert!(b.removed);
        assert_eq!(b.last_left_how.as_deref(), Some("removed"));
        let refused: Vec<(i64, &str)> = r
            .refusals
            .iter()
            .map(|f| (f.seq, f.reason.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                (4, "network_not_allowed"),
                (5, "not_found"),
                (8, "network_not_allowed (external)")
            ]
        );
        assert_eq!(r.epochs.len(), 1);
        assert_eq!(r.epochs[0].added, ["bob/d2"]);
        let host: Vec<i64> = r.host_actions.iter().map(|l| l.seq).collect();
        assert_eq!(host, [1, 10, 12]);

        let md = markdown(&r);
        assert!(md.contains("**Audit log verified**: 9 entries"), "{md}");
        assert!(md.contains("## Participants (2)"), "{md}");
        assert!(md.contains("| bob | d2 | software |"), "{md}");
        assert!(md.contains("198.18.2.7"), "{md}");
    }

    #[test]
    fn a_broken_log_says_so_first_and_audited_strings_cannot_break_the_tables() {
        let log = vec![entry(
            1,
            "join.refused",
            "user:x|y\n# forged/device:d",
            "meeting:m1",
            "1.2.3.4",
            json!({"reason": "not_invited"}),
        )];
        let broken = Integrity {
            ok: false,
            first_bad_entry: Some(1),
            error: Some("entry 1: hash mismatch".into()),
            ..ok()
        };
        let md = markdown(&build("m1", None, None, broken, &log, "probe:x"));
        assert!(
            md.starts_with("# Audit report: meeting m1\n\n**AUDIT LOG BROKEN** at entry 1"),
            "{md}"
        );
        assert!(!md.contains("\n# forged"), "{md}");
        assert!(md.contains("x\\|y"), "{md}");
    }
}

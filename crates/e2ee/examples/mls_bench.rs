//! MLS cost at meeting sizes 10, 50 and 100: creating an Add or Remove commit (the committer),
//! the delivery service accepting it, and another member processing it. Median of a few runs.
//!
//! `cargo run --release -p sealroom-e2ee --example mls_bench [runs]` (default 11 runs).
//!
//! Set-up: the creator adds everyone else in one commit from server proposals; one of them (the
//! observer) joins from the Welcome, the others stay idle. Their leaves are unmerged until they
//! commit themselves, which makes the committer's path encryption the worst case of a freshly
//! filled meeting.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use sealroom_e2ee::credential::{issue, Binding};
use sealroom_e2ee::ds::{DeliveryGroup, ExpectedMember};
use sealroom_e2ee::mls::{group_id, Member, MemberConfig};

const SERVER: &str = "https://bench.sealroom";
const MEETING: &str = "m-bench";

fn server_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5e; 32])
}

fn config() -> MemberConfig {
    MemberConfig {
        server_id: SERVER.into(),
        meeting_id: MEETING.into(),
        server_key: server_key().verifying_key(),
    }
}

fn identity(n: usize, key: &[u8]) -> Vec<u8> {
    let b = Binding {
        v: 1,
        server_id: SERVER.into(),
        meeting_id: MEETING.into(),
        user_id: format!("u-{n}"),
        username: format!("user{n}"),
        display_name: format!("User {n}"),
        device_id: format!("d-{n}"),
        device_name: "bench".into(),
        device_kind: "software".into(),
        signature_key: Binding::encode_signature_key(key),
        issued_at: 0,
    };
    issue(&server_key(), &b).expect("issue binding")
}

/// A fresh member with a KeyPackage, validated and proposed by the DS; returns the proposal.
fn propose(ds: &mut DeliveryGroup, n: usize) -> (Member, Vec<u8>) {
    let mut m = Member::new(config()).expect("member");
    let kp = m
        .key_package(&identity(n, &m.signature_key()))
        .expect("key package");
    let (u, d) = (format!("u-{n}"), format!("d-{n}"));
    let vkp = ds
        .validate_key_package(
            &kp,
            ExpectedMember {
                user_id: &u,
                device_id: &d,
            },
        )
        .expect("valid key package");
    let p = ds.propose_add(vkp).expect("propose add");
    (m, p)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    size: usize,
    add_create: Duration,
    add_ds: Duration,
    add_process: Duration,
    remove_create: Duration,
    remove_ds: Duration,
    remove_process: Duration,
}

fn bench(size: usize, runs: usize) -> Row {
    let gid = group_id(SERVER, MEETING, "open", 1);
    let mut creator = Member::new(config()).expect("creator");
    let info = creator
        .create_group(&identity(0, &creator.signature_key()), &gid)
        .expect("create");
    let mut ds =
        DeliveryGroup::from_group_info(&info, &gid, &server_key(), SERVER, MEETING).expect("ds");

    // Everyone else in one commit.
    let mut observer = None;
    for n in 1..size {
        let (m, p) = propose(&mut ds, n);
        creator.handle_message(&p).expect("proposal");
        if n == 1 {
            observer = Some(m);
        }
    }
    let out = creator.commit_pending().expect("fill commit");
    ds.accept_commit(&out.commit, out.welcome.as_deref())
        .expect("fill accepted");
    creator.handle_message(&out.commit).expect("own commit");
    let mut observer = observer.expect("observer");
    observer
        .join(out.welcome.as_deref().expect("welcome"), &gid)
        .expect("observer joins");
    assert_eq!(ds.members().len(), size);

    let mut row = Row {
        size,
        add_create: Duration::ZERO,
        add_ds: Duration::ZERO,
        add_process: Duration::ZERO,
        remove_create: Duration::ZERO,
        remove_ds: Duration::ZERO,
        remove_process: Duration::ZERO,
    };
    let (mut ac, mut ad, mut ap, mut rc, mut rd, mut rp) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // Add one member.
        let n = 10_000 + run;
        let (_newcomer, p) = propose(&mut ds, n);
        creator.handle_message(&p).expect("proposal");
        observer.handle_message(&p).expect("proposal");
        let t = Instant::now();
        let out = creator.commit_pending().expect("add commit");
        ac.push(t.elapsed());
        let t = Instant::now();
        let accepted = ds
            .accept_commit(&out.commit, out.welcome.as_deref())
            .expect("add accepted");
        ad.push(t.elapsed());
        creator.handle_message(&out.commit).expect("own add");
        let t = Instant::now();
        observer.handle_message(&out.commit).expect("observer add");
        ap.push(t.elapsed());
        let leaf = accepted.added[0].leaf;

        // Remove it again.
        let p = ds.propose_remove(leaf).expect("propose remove");
        creator.handle_message(&p).expect("proposal");
        observer.handle_message(&p).expect("proposal");
        let t = Instant::now();
        let out = creator.commit_pending().expect("remove commit");
        rc.push(t.elapsed());
        let t = Instant::now();
        ds.accept_commit(&out.commit, None)
            .expect("remove accepted");
        rd.push(t.elapsed());
        creator.handle_message(&out.commit).expect("own remove");
        let t = Instant::now();
        observer
            .handle_message(&out.commit)
            .expect("observer remove");
        rp.push(t.elapsed());
    }
    assert_eq!(
        creator.sframe_key().expect("k"),
        observer.sframe_key().expect("k")
    );
    row.add_create = median(ac);
    row.add_ds = median(ad);
    row.add_process = median(ap);
    row.remove_create = median(rc);
    row.remove_ds = median(rd);
    row.remove_process = median(rp);
    row
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(11)
        .max(1);
    println!(
        "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, openmls 0.9.2, median of {runs} runs{}",
        if cfg!(debug_assertions) {
            " (DEBUG build: use --release)"
        } else {
            ""
        }
    );
    println!(
        "{:>6} | {:>11} {:>11} {:>11} | {:>11} {:>11} {:>11}",
        "size", "add:create", "add:ds", "add:process", "rm:create", "rm:ds", "rm:process"
    );
    let start = Instant::now();
    for size in [10, 50, 100] {
        let r = bench(size, runs);
        println!(
            "{:>6} | {} {} {} | {} {} {}",
            r.size,
            ms(r.add_create),
            ms(r.add_ds),
            ms(r.add_process),
            ms(r.remove_create),
            ms(r.remove_ds),
            ms(r.remove_process)
        );
    }
    println!(
        "create = committer builds the commit (+ Welcome); ds = DeliveryGroup::accept_commit; \
         process = another member checks and merges it. Total {:.1} s.",
        start.elapsed().as_secs_f64()
    );
}

//! sealroom's SFrame profile (docs/E2EE.md §5) on top of the `sframe` crate (RFC 9605).
//!
//! - Suite `AES_128_GCM_SHA256_128` (0x0004) only.
//! - Keys per RFC 9605 §5.2: `base_key = MLS-Exporter("SFrame 1.0 Base Key", "", AEAD.Nk)` per
//!   epoch ([`EpochKey`], obtained from [`crate::mls::Member::sframe_key`]), then the ordinary
//!   SFrame key schedule (§4.4.2) with the KID, which carries the sender's leaf index, so every
//!   sender and source has its own key and salt.
//! - KID layout with `E = 8`, `S = 16`: `(context << 24) | (leaf << 8) | (epoch & 0xff)`, the
//!   context being the media [`Source`].
//! - Bytes left in clear ([`clear_len`]) are authenticated as SFrame metadata; the wire frame is
//!   `clear || sframe_header || ciphertext || tag`.
//!
//! [`Sender`] owns one counter per KID. [`Receiver`] holds one key per KID (the KID names the
//! key: there is no trial decryption), a 128-counter replay window per KID, and the previous
//! epoch for a short grace period. Nothing here reads a clock: the caller passes `now`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use zeroize::Zeroize as _;

use ::sframe::{
    frame::{EncryptedFrameView, MediaFrameView, SingleUseCounter},
    header::SframeHeader,
    key::{DecryptionKey, EncryptionKey},
    CipherSuite,
};

/// The only SFrame cipher suite sealroom uses: AES-128-GCM, SHA-256, 128-bit tag (0x0004).
pub const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
/// RFC 9605 §5.2 exporter label.
pub const EXPORTER_LABEL: &str = "SFrame 1.0 Base Key";
/// AEAD.Nk of [`SUITE`]: the length of the exported base key.
pub const BASE_KEY_LEN: usize = 16;
/// Epoch bits in the KID (`E`).
pub const EPOCH_BITS: u32 = 8;
/// Sender-index bits in the KID (`S`).
pub const LEAF_BITS: u32 = 16;
/// Counters per KID a receiver remembers for replay detection.
pub const REPLAY_WINDOW: u64 = 128;
/// How long a receiver keeps a sender's previous-epoch key after that sender's first frame in
/// the new epoch.
pub const GRACE_AFTER_SWITCH: Duration = Duration::from_millis(250);
/// Longest a receiver keeps the previous epoch after installing a new one.
pub const MAX_OLD_EPOCH: Duration = Duration::from_secs(1);
/// VP8 key frames keep their 10-byte header (frame tag, start code, dimensions) in clear.
pub const VP8_KEY_FRAME_CLEAR: usize = 10;
/// VP8 delta frames keep their first byte (frame tag) in clear.
pub const VP8_DELTA_FRAME_CLEAR: usize = 1;

/// The media source a KID's context id names (docs/E2EE.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Source {
    /// Context 0.
    Microphone = 0,
    /// Context 1.
    Camera = 1,
    /// Context 2.
    Screen = 2,
    /// Context 3.
    ScreenAudio = 3,
}

impl Source {
    /// All sources, in context-id order.
    pub const ALL: [Source; 4] = [
        Source::Microphone,
        Source::Camera,
        Source::Screen,
        Source::ScreenAudio,
    ];

    /// The KID context id.
    pub fn context_id(self) -> u8 {
        self as u8
    }

    /// The source of a context id, if it is one of ours.
    pub fn from_context_id(id: u64) -> Option<Source> {
        match id {
            0 => Some(Source::Microphone),
            1 => Some(Source::Camera),
            2 => Some(Source::Screen),
            3 => Some(Source::ScreenAudio),
            _ => None,
        }
    }
}

/// The codec of a frame, which decides how many leading bytes stay in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// VP8: 10 bytes on key frames, 1 on delta frames.
    Vp8,
    /// Opus: nothing in clear.
    Opus,
}

/// Errors of the sender side and of key setup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SframeError {
    /// The leaf index does not fit the 16 KID bits (caller error: group too large).
    #[error("leaf index {0} does not fit in {LEAF_BITS} bits")]
    LeafTooLarge(u32),
    /// The base key is not [`BASE_KEY_LEN`] bytes (caller error).
    #[error("base key must be {BASE_KEY_LEN} bytes, got {0}")]
    BadBaseKey(usize),
    /// The sender was asked to go back to an older epoch, which could reuse a counter.
    #[error("epoch {new} is not newer than the current epoch {current}")]
    EpochNotNewer {
        /// The epoch the sender is in.
        current: u64,
        /// The epoch asked for.
        new: u64,
    },
    /// A VP8 frame too short for its clear header (caller passed a malformed frame).
    #[error("VP8 frame of {len} bytes is shorter than its {clear} clear bytes")]
    FrameTooShort {
        /// Frame length.
        len: usize,
        /// Bytes that must stay in clear.
        clear: usize,
    },
    /// All counters of a KID are used (2^64 frames); the sender must move to a new epoch.
    #[error("counter space of KID {0:#x} is exhausted")]
    CounterExhausted(u64),
    /// The `sframe` crate failed (internal).
    #[error("sframe: {0}")]
    Internal(String),
}

/// Why a receiver dropped a frame. Each reason is counted in [`FailureCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Too short, or the SFrame header does not parse.
    #[error("malformed frame")]
    Malformed,
    /// No key for the KID: unknown epoch bits, unknown context, or a leaf that is not a member
    /// of that epoch.
    #[error("no key for the frame's KID")]
    UnknownKid,
    /// The KID names the previous epoch, whose grace period is over.
    #[error("previous epoch expired")]
    EpochExpired,
    /// The counter was already received.
    #[error("replayed counter")]
    Replay,
    /// The counter is older than the replay window.
    #[error("counter older than the replay window")]
    TooOld,
    /// The AEAD tag does not verify (tampered clear bytes, header or ciphertext, or wrong key).
    #[error("authentication failed")]
    AuthFailed,
}

/// Dropped frames by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounts {
    /// [`DropReason::Malformed`].
    pub malformed: u64,
    /// [`DropReason::UnknownKid`].
    pub unknown_kid: u64,
    /// [`DropReason::EpochExpired`].
    pub epoch_expired: u64,
    /// [`DropReason::Replay`].
    pub replay: u64,
    /// [`DropReason::TooOld`].
    pub too_old: u64,
    /// [`DropReason::AuthFailed`].
    pub auth_failed: u64,
}

impl FailureCounts {
    fn count(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Malformed => &mut self.malformed,
            DropReason::UnknownKid => &mut self.unknown_kid,
            DropReason::EpochExpired => &mut self.epoch_expired,
            DropReason::Replay => &mut self.replay,
            DropReason::TooOld => &mut self.too_old,
            DropReason::AuthFailed => &mut self.auth_failed,
        };
        *c = c.saturating_add(1);
    }

    /// All dropped frames.
    pub fn total(&self) -> u64 {
        self.malformed
            .saturating_add(self.unknown_kid)
            .saturating_add(self.epoch_expired)
            .saturating_add(self.replay)
            .saturating_add(self.too_old)
            .saturating_add(self.auth_failed)
    }
}

/// A KID split into its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KidParts {
    /// The media source (context id).
    pub source: Source,
    /// The sender's MLS leaf index.
    pub leaf: u32,
    /// The low 8 bits of the MLS epoch.
    pub epoch_low: u8,
}

/// `KID = (context << 24) | (leaf << 8) | (epoch & 0xff)` (docs/E2EE.md §5, RFC 9605 §5.2 with
/// E = 8 and S = 16).
pub fn kid(source: Source, leaf: u32, epoch: u64) -> Result<u64, SframeError> {
    if leaf >= 1 << LEAF_BITS {
        return Err(SframeError::LeafTooLarge(leaf));
    }
    Ok((u64::from(source.context_id()) << (LEAF_BITS + EPOCH_BITS))
        | (u64::from(leaf) << EPOCH_BITS)
        | (epoch & 0xff))
}

/// Splits a KID; `None` when its context id is not a [`Source`].
pub fn parse_kid(kid: u64) -> Option<KidParts> {
    let source = Source::from_context_id(kid >> (LEAF_BITS + EPOCH_BITS))?;
    let leaf = u32::try_from((kid >> EPOCH_BITS) & 0xffff).ok()?;
    let epoch_low = u8::try_from(kid & 0xff).ok()?;
    Some(KidParts {
        source,
        leaf,
        epoch_low,
    })
}

/// Leading bytes of `frame` that stay in clear (authenticated as metadata). VP8: a key frame
/// (bit 0 of byte 0 is 0) keeps 10 bytes, a delta frame 1; Opus keeps none. An empty VP8 frame
/// yields 0 and is refused by [`Sender::encrypt`].
pub fn clear_len(codec: Codec, frame: &[u8]) -> usize {
    match (codec, frame.first()) {
        (Codec::Opus, _) | (Codec::Vp8, None) => 0,
        (Codec::Vp8, Some(b)) if b & 1 == 0 => VP8_KEY_FRAME_CLEAR,
        (Codec::Vp8, Some(_)) => VP8_DELTA_FRAME_CLEAR,
    }
}

/// One epoch's SFrame base key, with the leaves that are members in that epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct EpochKey {
    epoch: u64,
    base_key: [u8; BASE_KEY_LEN],
    members: BTreeSet<u32>,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKey")
            .field("epoch", &self.epoch)
            .field("base_key", &"***")
            .field("members", &self.members)
            .finish()
    }
}

impl EpochKey {
    /// An epoch key from an exported base key (normally made by
    /// [`crate::mls::Member::sframe_key`]); `members` are the leaf indices allowed to send.
    pub fn new(
        epoch: u64,
        base_key: &[u8],
        members: impl IntoIterator<Item = u32>,
    ) -> Result<Self, SframeError> {
        let base_key: [u8; BASE_KEY_LEN] = base_key
            .try_into()
            .map_err(|_| SframeError::BadBaseKey(base_key.len()))?;
        let members: BTreeSet<u32> = members.into_iter().collect();
        if let Some(&leaf) = members.iter().find(|&&l| l >= 1 << LEAF_BITS) {
            return Err(SframeError::LeafTooLarge(leaf));
        }
        Ok(EpochKey {
            epoch,
            base_key,
            members,
        })
    }

    /// The MLS epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The leaves that are members in this epoch.
    pub fn members(&self) -> &BTreeSet<u32> {
        &self.members
    }

    fn encryption_key(&self, kid: u64) -> Result<EncryptionKey, SframeError> {
        EncryptionKey::derive_from(SUITE, kid, self.base_key)
            .map_err(|e| SframeError::Internal(e.to_string()))
    }

    fn decryption_key(&self, kid: u64) -> Result<DecryptionKey, SframeError> {
        DecryptionKey::derive_from(SUITE, kid, self.base_key)
            .map_err(|e| SframeError::Internal(e.to_string()))
    }
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        // The sframe crate zeroizes its derived secrets; do the same for the base key.
        self.base_key.zeroize();
    }
}

struct SendStream {
    kid: u64,
    key: EncryptionKey,
    next_counter: Option<u64>,
}

/// The encrypting side of one member: one key and one counter per (source, epoch).
///
/// Counters start at 0 in each epoch and are never reused within it; the sender refuses to go
/// back to an older epoch.
pub struct Sender {
    leaf: u32,
    key: EpochKey,
    streams: HashMap<Source, SendStream>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("leaf", &self.leaf)
            .field("epoch", &self.key.epoch)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender for leaf `leaf` starting in `key`'s epoch.
    pub fn new(leaf: u32, key: EpochKey) -> Result<Self, SframeError> {
        if leaf >= 1 << LEAF_BITS {
            return Err(SframeError::LeafTooLarge(leaf));
        }
        Ok(Sender {
            leaf,
            key,
            streams: HashMap::new(),
        })
    }

    /// The epoch frames are encrypted in.
    pub fn epoch(&self) -> u64 {
        self.key.epoch
    }

    /// Switches to a newer epoch (call as soon as the commit is merged). Counters restart at 0
    /// under the new KIDs. Asking for the current epoch again is a no-op; an older one is
    /// refused.
    pub fn switch_epoch(&mut self, key: EpochKey) -> Result<(), SframeError> {
        if key.epoch == self.key.epoch && key.base_key == self.key.base_key {
            return Ok(());
        }
        if key.epoch <= self.key.epoch {
            return Err(SframeError::EpochNotNewer {
                current: self.key.epoch,
                new: key.epoch,
            });
        }
        self.key = key;
        self.streams.clear();
        Ok(())
    }

    /// Encrypts one encoded frame: `clear || header || ciphertext || tag`.
    pub fn encrypt(
        &mut self,
        source: Source,
        codec: Codec,
        frame: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        let clear = clear_len(codec, frame);
        if codec == Codec::Vp8 && (frame.is_empty() || frame.len() < clear) {
            return Err(SframeError::FrameTooShort {
                len: frame.len(),
                clear,
            });
        }
        let stream = match self.streams.entry(source) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let kid = kid(source, self.leaf, self.key.epoch)?;
                let key = self.key.encryption_key(kid)?;
                v.insert(SendStream {
                    kid,
                    key,
                    next_counter: Some(0),
                })
            }
        };
        let counter = stream
            .next_counter
            .ok_or(SframeError::CounterExhausted(stream.kid))?;
        // Advance before encrypting: a counter is spent even if encryption fails.
        stream.next_counter = counter.checked_add(1);
        encrypt_with(&stream.key, counter, &frame[..clear], &frame[clear..])
    }
}

/// Encrypts `payload` under `key` with an explicit counter, `metadata` in clear and
/// authenticated. Exposed for known-answer tests; [`Sender::encrypt`] is the API.
pub fn encrypt_with(
    key: &EncryptionKey,
    counter: u64,
    metadata: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, SframeError> {
    let media =
        MediaFrameView::try_with_meta_data(&mut SingleUseCounter::new(counter), payload, metadata)
            .map_err(|e| SframeError::Internal(e.to_string()))?;
    let mut out = Vec::new();
    media
        .encrypt_into(key, &mut out)
        .map_err(|e| SframeError::Internal(e.to_string()))?;
    Ok(out)
}

/// A decrypted frame and who sent it (from the authenticated KID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// The sender's media source.
    pub source: Source,
    /// The sender's leaf index.
    pub leaf: u32,
    /// The full MLS epoch the frame was encrypted in.
    pub epoch: u64,
    /// The SFrame counter.
    pub counter: u64,
    /// The encoded frame as the sender's encoder produced it (clear bytes + plaintext).
    pub frame: Vec<u8>,
}

/// Sliding window of the last [`REPLAY_WINDOW`] counters (RFC 3711 §3.3.2 style).
#[derive(Debug, Default)]
struct ReplayWindow {
    /// Highest counter seen, if any.
    top: Option<u64>,
    /// Bit i set: counter `top - i` seen.
    seen: u128,
}

impl ReplayWindow {
    fn check(&self, ctr: u64) -> Result<(), DropReason> {
        let Some(top) = self.top else { return Ok(()) };
        if ctr > top {
            return Ok(());
        }
        let age = top - ctr;
        if age >= REPLAY_WINDOW {
            return Err(DropReason::TooOld);
        }
        if self.seen & (1u128 << age) != 0 {
            return Err(DropReason::Replay);
        }
        Ok(())
    }

    /// Records an authenticated counter; `check` must have passed.
    fn record(&mut self, ctr: u64) {
        match self.top {
            None => {
                self.top = Some(ctr);
                self.seen = 1;
            }
            Some(top) if ctr > top => {
                let shift = ctr - top;
                self.seen = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << shift
                };
                self.seen |= 1;
                self.top = Some(ctr);
            }
            Some(top) => {
                let age = top - ctr;
                if age < REPLAY_WINDOW {
                    self.seen |= 1u128 << age;
                }
            }
        }
    }
}

struct RecvKid {
    key: DecryptionKey,
    window: ReplayWindow,
}

struct RecvEpoch {
    key: EpochKey,
    kids: HashMap<u64, RecvKid>,
    /// Set once this epoch was superseded: it is dropped at this instant at the latest.
    retire_at: Option<Instant>,
    /// Per sender leaf: when its old-epoch frames stop being accepted (first new-epoch frame
    /// from that leaf + [`GRACE_AFTER_SWITCH`]).
    leaf_retire_at: HashMap<u32, Instant>,
}

impl RecvEpoch {
    fn new(key: EpochKey) -> Self {
        RecvEpoch {
            key,
            kids: HashMap::new(),
            retire_at: None,
            leaf_retire_at: HashMap::new(),
        }
    }
}

/// The decrypting side of one member: at most two epochs (the current and, for a grace period,
/// the previous one), one key and replay window per KID.
pub struct Receiver {
    current: Option<RecvEpoch>,
    previous: Option<RecvEpoch>,
    failures: FailureCounts,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("current", &self.current.as_ref().map(|e| e.key.epoch))
            .field("previous", &self.previous.as_ref().map(|e| e.key.epoch))
            .field("failures", &self.failures)
            .finish()
    }
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver with no keys: every frame is dropped until [`Receiver::install_epoch`].
    pub fn new() -> Self {
        Receiver {
            current: None,
            previous: None,
            failures: FailureCounts::default(),
        }
    }

    /// Installs a new current epoch (call when the commit is merged). The former current epoch
    /// is kept until each sender's first new-epoch frame + 250 ms, and at most until
    /// `now + 1 s`; anything older is dropped at once, as is an older epoch whose low 8 bits
    /// equal the new one's. Installing an epoch that is not newer than the current one is
    /// ignored.
    pub fn install_epoch(&mut self, key: EpochKey, now: Instant) {
        if let Some(cur) = &self.current {
            if key.epoch <= cur.key.epoch {
                return;
            }
        }
        let mut old = self.current.take();
        if let Some(o) = &mut old {
            // A previous epoch that is not the direct predecessor still gets the grace period:
            // a member may skip epochs (e.g. rejoin), the senders still switch at their pace.
            o.retire_at = Some(now + MAX_OLD_EPOCH);
            if o.key.epoch & 0xff == key.epoch & 0xff {
                old = None;
            }
        }
        self.previous = old;
        self.current = Some(RecvEpoch::new(key));
    }

    /// The current epoch, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.current.as_ref().map(|e| e.key.epoch)
    }

    /// Whether the previous epoch is still held (drops it if its time is up).
    pub fn holds_previous_epoch(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.previous.is_some()
    }

    /// Drops all keys (e.g. when this member was removed). Every later frame fails.
    pub fn clear(&mut self) {
        self.current = None;
        self.previous = None;
    }

    /// Drops the previous epoch once its grace period is over.
    pub fn expire(&mut self, now: Instant) {
        if let Some(p) = &self.previous {
            if p.retire_at.is_some_and(|t| now >= t) {
                self.previous = None;
            }
        }
    }

    /// Dropped frames by reason since creation.
    pub fn failures(&self) -> FailureCounts {
        self.failures
    }

    /// Decrypts one wire frame of `codec`. A frame that fails is counted and never passed on.
    pub fn decrypt(
        &mut self,
        codec: Codec,
        wire: &[u8],
        now: Instant,
    ) -> Result<ReceivedFrame, DropReason> {
        let r = self.decrypt_inner(codec, wire, now);
        if let Err(reason) = r {
            self.failures.count(reason);
        }
        r
    }

    fn decrypt_inner(
        &mut self,
        codec: Codec,
        wire: &[u8],
        now: Instant,
    ) -> Result<ReceivedFrame, DropReason> {
        self.expire(now);
        let clear = clear_len(codec, wire);
        if wire.len() < clear + 1 + SUITE.auth_tag_len() {
            return Err(DropReason::Malformed);
        }
        let (meta, sframe_part) = wire.split_at(clear);
        let view = EncryptedFrameView::try_with_meta_data(sframe_part, meta)
            .map_err(|_| DropReason::Malformed)?;
        let header: SframeHeader = *view.header();
        if view.cipher_text().len() < SUITE.auth_tag_len() {
            return Err(DropReason::Malformed);
        }
        let kid = header.key_id();
        let ctr = header.counter();
        let parts = parse_kid(kid).ok_or(DropReason::UnknownKid)?;

        let low = u64::from(parts.epoch_low);
        let in_current = self
            .current
            .as_ref()
            .is_some_and(|e| e.key.epoch & 0xff == low);
        let epoch = if in_current {
            self.current.as_mut()
        } else {
            self.previous.as_mut().filter(|e| e.key.epoch & 0xff == low)
        }
        .ok_or(DropReason::UnknownKid)?;

        if !epoch.key.members.contains(&parts.leaf) {
            return Err(DropReason::UnknownKid);
        }
        if !in_current
            && epoch
                .leaf_retire_at
                .get(&parts.leaf)
                .is_some_and(|t| now >= *t)
        {
            return Err(DropReason::EpochExpired);
        }

        let entry = match epoch.kids.entry(kid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let key = epoch
                    .key
                    .decryption_key(kid)
                    .map_err(|_| DropReason::UnknownKid)?;
                v.insert(RecvKid {
                    key,
                    window: ReplayWindow::default(),
                })
            }
        };
        entry.window.check(ctr)?;
        let mut out = Vec::new();
        let media = view
            .decrypt_into(&entry.key, &mut out)
            .map_err(|_| DropReason::AuthFailed)?;
        let mut frame = Vec::with_capacity(media.meta_data().len() + media.payload().len());
        frame.extend_from_slice(media.meta_data());
        frame.extend_from_slice(media.payload());
        entry.window.record(ctr);
        let full_epoch = epoch.key.epoch;

        if in_current {
            if let Some(prev) = &mut self.previous {
                prev.leaf_retire_at
                    .entry(parts.leaf)
                    .or_insert(now + GRACE_AFTER_SWITCH);
            }
        }
        Ok(ReceivedFrame {
            source: parts.source,
            leaf: parts.leaf,
            epoch: full_epoch,
            counter: ctr,
            frame,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_layout_matches_the_sframe_crate_mls_key_id() {
        use ::sframe::mls::{MlsKeyId, MlsKeyIdBitRange};
        let range = MlsKeyIdBitRange::new(8, 16);
        for source in Source::ALL {
            for (leaf, epoch) in [(0u32, 0u64), (1, 1), (7, 255), (300, 256), (65535, 1 << 40)] {
                let ours = kid(source, leaf, epoch).expect("kid");
                let theirs: u64 = MlsKeyId::try_new(source.context_id(), epoch, leaf, range)
                    .expect("mls kid")
                    .into();
                assert_eq!(ours, theirs, "{source:?} leaf {leaf} epoch {epoch}");
                let parts = parse_kid(ours).expect("parse");
                assert_eq!(parts.source, source);
                assert_eq!(parts.leaf, leaf);
                assert_eq!(u64::from(parts.epoch_low), epoch & 0xff);
            }
        }
        assert_eq!(
            kid(Source::Camera, 1 << 16, 0),
            Err(SframeError::LeafTooLarge(1 << 16))
        );
        assert!(parse_kid(4 << 24).is_none());
    }

    #[test]
    fn clear_byte_rule() {
        assert_eq!(clear_len(Codec::Opus, &[0, 1, 2]), 0);
        assert_eq!(clear_len(Codec::Vp8, &[0x10, 0, 0]), 10);
        assert_eq!(clear_len(Codec::Vp8, &[0x11, 0, 0]), 1);
        assert_eq!(clear_len(Codec::Vp8, &[]), 0);
    }

    #[test]
    fn replay_window_edges() {
        let mut w = ReplayWindow::default();
        w.record(200);
        assert_eq!(w.check(200), Err(DropReason::Replay));
        assert_eq!(w.check(200 - 127), Ok(()));
        assert_eq!(w.check(200 - 128), Err(DropReason::TooOld));
        w.record(73);
        assert_eq!(w.check(73), Err(DropReason::Replay));
        w.record(1000);
        assert_eq!(w.check(200), Err(DropReason::TooOld));
        assert_eq!(w.check(999), Ok(()));
        w.record(1001);
        assert_eq!(w.check(1000), Err(DropReason::Replay));
        assert_eq!(w.check(999), Ok(()));
    }
}

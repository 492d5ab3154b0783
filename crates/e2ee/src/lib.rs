//! End-to-end encryption of sealroom: MLS membership and the SFrame media profile
//! (docs/E2EE.md is the wire contract this crate implements).
//!
//! It owns every cryptographic decision about who is in a meeting and which keys protect its
//! media and chat, for both of its users:
//! - the native client's [`mls::Member`] (create, join, commit, chat, exporter, security code)
//!   together with [`sframe::Sender`] / [`sframe::Receiver`] for media frames;
//! - the server's delivery service, [`ds::DeliveryGroup`], which tracks the public group state,
//!   proposes Add/Remove as the MLS external sender and accepts exactly one valid commit per
//!   epoch;
//! - [`credential`], the server-signed binding of (meeting, user, device, leaf key) that every
//!   MLS credential carries.
//!
//! It is sans-IO: no sockets, no threads, no async runtime, and it never reads the clock itself
//! (the SFrame receiver takes `now` as a parameter). openmls checks KeyPackage and leaf-node
//! lifetimes against the system clock internally; that is the only clock use. MLS and SFrame
//! state lives in memory only and is never persisted.
#![forbid(unsafe_code)]

pub mod credential;
pub mod ds;
pub mod mls;
mod rules;
pub mod sframe;
mod signer;

pub use signer::Ed25519Signer;

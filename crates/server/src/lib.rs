//! The sealroom server: composition root of the web client, REST API, signaling WebSocket,
//! passkeys, admission policy, audit log and the command line.
//!
//! Owns sockets, tokio, HTTP, the database handle and shutdown; decisions come from
//! `sealroom-policy`, persistence from `sealroom-store`, wire types from `sealroom-proto`.

#![forbid(unsafe_code)]

pub mod admin_socket;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod http;
pub mod live;
pub mod media;
pub mod ops;
pub mod report;
pub mod server;
pub mod state;
pub mod tls;
pub mod ws;

//! Integration tests of the SFU core on a virtual clock (one binary, several suites).

mod common;
mod demux;
mod dtls;
mod removal;
mod simulation;

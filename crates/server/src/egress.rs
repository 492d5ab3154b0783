//! Batched egress for the media socket: the datagrams the SFU core produced in one drain
//! go out grouped by destination, and runs of equal-sized datagrams to one destination go
//! in one `sendmsg` with UDP generic segmentation offload (GSO, `UDP_SEGMENT`), through
//! `quinn-udp`.
//!
//! A subscriber of a meeting receives many datagrams per drain (one per publisher's packet,
//! interleaved with everyone else's by str0m's pacer), and most are the same size: the
//! packets of one video frame, or audio frames of a constant-bitrate codec. The kernel's
//! per-call work (system call, route lookup, socket and device path, and on loopback the
//! receiver's wakeup) is then paid once per run instead of once per datagram. Order is kept
//! per destination; datagrams to different destinations carry no order between them.
//!
//! Where GSO is missing (an old kernel, a device that refuses it), `quinn-udp` reports one
//! segment per call, and a run that failed because of that is sent again one by one.

use quinn_udp::{Transmit, UdpSocketState};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest UDP payload of one GSO send: the IPv4 datagram limit less headers, rounded down.
const MAX_GSO_BYTES: usize = 65_000;

/// A run of datagrams to one destination sent in one call: `count` datagrams starting at
/// position `start` of the destination-grouped order, all `segment` bytes long except the
/// last, which may be shorter (what `UDP_SEGMENT` requires).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: usize,
    count: usize,
    segment: usize,
}

/// What one [`Egress::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams handed to the kernel.
    pub datagrams: usize,
    /// `sendmsg` calls that carried them.
    pub calls: usize,
    /// Datagrams dropped because the socket buffer was full or the kernel refused them.
    pub dropped: usize,
}

/// Datagrams waiting for the next flush, and the scratch space to send them.
#[derive(Default)]
pub struct Egress {
    pending: Vec<(SocketAddr, Vec<u8>)>,
    /// Position of each destination's first datagram in `pending`: the group order.
    groups: HashMap<SocketAddr, usize>,
    order: Vec<usize>,
    runs: Vec<Run>,
    scratch: Vec<u8>,
}

impl Egress {
    /// Datagrams queued since the last flush.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queue one datagram for the next flush.
    pub fn push(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.pending.push((destination, contents));
    }

    /// Send everything queued. A full socket buffer drops datagrams, as the network would;
    /// the count is returned.
    pub fn flush(&mut self, socket: &UdpSocket, state: &UdpSocketState) -> Flushed {
        let mut done = Flushed::default();
        if self.pending.is_empty() {
            return done;
        }
        self.plan(state.max_gso_segments());
        for run in std::mem::take(&mut self.runs) {
            let sent = self.send_run(socket, state, run);
            done.calls += sent.calls;
            done.datagrams += sent.datagrams;
            done.dropped += sent.dropped;
        }
        self.pending.clear();
        done
    }

    /// Groups `pending` by destination (stable within each) into `order` and cuts it
    /// into GSO runs of at most `max_segments` datagrams.
    fn plan(&mut self, max_segments: usize) {
        self.groups.clear();
        for (i, (dest, _)) in self.pending.iter().enumerate() {
            self.groups.entry(*dest).or_insert(i);
        }
        self.order.clear();
        self.order.extend(0..self.pending.len());
        let (pending, groups) = (&self.pending, &self.groups);
        self.order
            .sort_unstable_by_key(|&i| (groups.get(&pending[i].0).copied().unwrap_or(i), i));
        self.runs.clear();
        let max_segments = max_segments.max(1);
        let mut k = 0;
        while k < self.order.len() {
            let (dest, first) = &self.pending[self.order[k]];
            let segment = first.len();
            let mut count = 1;
            let mut bytes = segment;
            while count < max_segments && k + count < self.order.len() {
                let (d, c) = &self.pending[self.order[k + count]];
                if d != dest || c.len() > segment || bytes + c.len() > MAX_GSO_BYTES {
                    break;
                }
                count += 1;
                bytes += c.len();
                if c.len() < segment {
                    // A shorter datagram can only be the last segment.
                    break;
                }
            }
            self.runs.push(Run {
                start: k,
                count,
                segment,
            });
            k += count;
        }
    }

    fn send_run(&mut self, socket: &UdpSocket, state: &UdpSocketState, run: Run) -> Flushed {
        let items = &self.order[run.start..run.start + run.count];
        let destination = self.pending[items[0]].0;
        let contents: &[u8] = if run.count == 1 {
            &self.pending[items[0]].1
        } else {
            self.scratch.clear();
            for &i in items {
                self.scratch.extend_from_slice(&self.pending[i].1);
            }
            &self.scratch
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: (run.count > 1).then_some(run.segment),
            src_ip: None,
        };
        match send(socket, state, &transmit) {
            Ok(()) => Flushed {
                datagrams: run.count,
                calls: 1,
                dropped: 0,
            },
            Err(e) if run.count > 1 && state.max_gso_segments() == 1 => {
                // The kernel or device refused segmentation offload: quinn-udp has turned it
                // off for this socket. Send this run's datagrams one by one.
                tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                let mut done = Flushed::default();
                for &i in items {
                    let (destination, contents) = &self.pending[i];
                    let single = Transmit {
                        destination: *destination,
                        ecn: None,
                        contents,
                        segment_size: None,
                        src_ip: None,
                    };
                    match send(socket, state, &single) {
                        Ok(()) => {
                            done.datagrams += 1;
                            done.calls += 1;
                        }
                        Err(_) => done.dropped += 1,
                    }
                }
                done
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, %destination, datagrams = run.count, "media send failed");
                }
                Flushed {
                    datagrams: 0,
                    calls: 0,
                    dropped: run.count,
                }
            }
        }
    }
}

fn send(socket: &UdpSocket, state: &UdpSocketState, transmit: &Transmit<'_>) -> io::Result<()> {
    socket.try_io(Interest::WRITABLE, || {
        state.try_send(socket.into(), transmit)
    })
}

/// The datagrams of one received buffer: with UDP generic receive offload (GRO) the kernel
/// may hand over several datagrams of one sender back to back, each `stride` bytes long
/// except the last.
pub fn datagrams(buf: &[u8], stride: usize) -> std::slice::Chunks<'_, u8> {
    buf.chunks(stride.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    fn planned(items: &[(u16, usize)], max_segments: usize) -> Vec<(u16, Vec<usize>)> {
        let mut e = Egress::default();
        for (n, &(port, len)) in items.iter().enumerate() {
            // The first byte tells the datagrams apart.
            let mut c = vec![0u8; len];
            c[0] = n as u8;
            e.push(addr(port), c);
        }
        e.plan(max_segments);
        e.runs
            .iter()
            .map(|r| {
                let items = &e.order[r.start..r.start + r.count];
                (
                    e.pending[items[0]].0.port(),
                    items.iter().map(|&i| e.pending[i].1[0] as usize).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn runs_group_by_destination_keep_order_and_end_at_a_shorter_datagram() {
        // Pacer-interleaved output of a drain: A, B, A, B, A (short), A, C.
        let items = [
            (1, 1200),
            (2, 100),
            (1, 1200),
            (2, 100),
            (1, 700),
            (1, 1200),
            (3, 50),
        ];
        assert_eq!(
            planned(&items, 64),
            vec![
                (1, vec![0, 2, 4]),
                (1, vec![5]),
                (2, vec![1, 3]),
                (3, vec![6])
            ]
        );
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run_and_runs_respect_the_segment_limit() {
        let items = [(1, 100), (1, 200), (1, 200), (1, 200), (1, 200)];
        assert_eq!(
            planned(&items, 3),
            vec![(1, vec![0]), (1, vec![1, 2, 3]), (1, vec![4])]
        );
        // Without GSO every datagram is its own call.
        assert_eq!(planned(&items, 1).len(), 5);
    }

    #[test]
    fn a_run_stays_under_the_largest_udp_payload() {
        let items: Vec<(u16, usize)> = (0..64).map(|_| (1, 1400)).collect();
        let runs = planned(&items, 64);
        assert!(runs.iter().all(|(_, r)| r.len() * 1400 <= MAX_GSO_BYTES));
        assert_eq!(runs.iter().map(|(_, r)| r.len()).sum::<usize>(), 64);
        assert_eq!(runs[0].1.len(), MAX_GSO_BYTES / 1400);
    }

    #[test]
    fn gro_buffers_split_into_their_datagrams() {
        let buf: Vec<u8> = (0..25).collect();
        let parts: Vec<&[u8]> = datagrams(&buf, 10).collect();
        assert_eq!(parts, vec![&buf[..10], &buf[10..20], &buf[20..]]);
        assert_eq!(
            datagrams(&buf, 0).count(),
            25,
            "a zero stride never loops forever"
        );
    }

    /// Over real loopback sockets: every datagram arrives once, intact, in order per
    /// destination, in fewer calls than datagrams where the kernel has GSO.
    #[tokio::test]
    async fn flush_delivers_every_datagram_intact_and_in_order() {
        let tx = UdpSocket::bind(addr(0)).await.expect("bind");
        let state = UdpSocketState::new((&tx).into()).expect("quinn-udp state");
        // tokio learns that a new socket is writable from the reactor's first turn.
        tx.writable().await.expect("writable");
        let rx: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| {
                let s = std::net::UdpSocket::bind(addr(0)).expect("bind");
                s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .expect("timeout");
                s
            })
            .collect();
        let mut e = Egress::default();
        let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); rx.len()];
        let mut seq = 0u32;
        for round in 0..20 {
            for (r, sock) in rx.iter().enumerate() {
                // Mostly equal sizes, with a shorter one now and then.
                let len = if round % 7 == 6 {
                    300 + r
                } else {
                    1100 + 10 * r
                };
                let mut c = vec![(r as u8).wrapping_mul(31); len];
                c[..4].copy_from_slice(&seq.to_be_bytes());
                seq += 1;
                expected[r].push(c.clone());
                e.push(sock.local_addr().expect("addr"), c);
            }
        }
        let done = e.flush(&tx, &state);
        assert!(e.is_empty());
        assert_eq!(done.dropped, 0);
        assert_eq!(done.datagrams, 60);
        if state.max_gso_segments() > 1 {
            assert!(done.calls < 20, "{done:?}: GSO runs expected");
        }
        let mut buf = [0u8; 2048];
        for (r, sock) in rx.iter().enumerate() {
            for want in &expected[r] {
                let n = sock.recv(&mut buf).expect("datagram");
                assert_eq!(&buf[..n], &want[..], "destination {r}");
            }
        }
    }
}

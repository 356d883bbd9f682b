//! The downlink gap recorder: the thesis's "service downtime at the UE" probe. Pure, with time
//! passed in (microseconds since the UE started), so every rule is unit-tested.
//!
//! Per downlink flow (protocol, addresses, ports or ICMP echo id) it keeps the arrivals in
//! segments of [`GapRecorder::SEGMENT_US`]: packets, and the largest inter-arrival gap that
//! *ended* in the segment with its end time. Memory is bounded: at most
//! [`GapRecorder::MAX_SEGMENTS`] segments per flow (the oldest go first) and
//! [`GapRecorder::MAX_FLOWS`] flows (the one idle longest goes first).
//!
//! A window `since` covers the segments that end after `since`: the window start is effectively
//! rounded down to a segment boundary (100 ms). `reset` starts an exact fresh window.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use serde::{Deserialize, Serialize};

/// What identifies a downlink flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowKey {
    /// An IPv4 packet: protocol number, source and destination with ports (TCP, UDP, SCTP) or
    /// the echo identifier in both ports (ICMP echo); 0 where there is none.
    Ipv4 {
        protocol: u8,
        src: Ipv4Addr,
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
    },
    /// Not an IPv4 packet (or a truncated one); `version` is the first nibble.
    Other { version: u8 },
}

impl FlowKey {
    /// Classifies an IP packet (etherparse, lax: a packet cut short still names what it has).
    /// Never panics.
    pub fn of(packet: &[u8]) -> FlowKey {
        match LaxSlicedPacket::from_ip(packet) {
            Ok(sliced) => FlowKey::of_sliced(&sliced),
            Err(_) => FlowKey::Other {
                version: packet.first().map_or(0, |b| b >> 4),
            },
        }
    }

    /// Classifies a packet etherparse has sliced (from IP, or from a link layer). Ports come from
    /// the TCP or UDP header (or the first four octets of an SCTP one), the echo identifier from
    /// an ICMP echo; fragments and transport headers cut short have none.
    pub fn of_sliced(packet: &LaxSlicedPacket<'_>) -> FlowKey {
        let ip = match &packet.net {
            Some(LaxNetSlice::Ipv4(ip)) => ip,
            Some(LaxNetSlice::Ipv6(_)) => return FlowKey::Other { version: 6 },
            _ => return FlowKey::Other { version: 0 },
        };
        let header = ip.header();
        let payload = ip.payload();
        let (src_port, dst_port) = match &packet.transport {
            Some(TransportSlice::Tcp(tcp)) => (tcp.source_port(), tcp.destination_port()),
            Some(TransportSlice::Udp(udp)) => (udp.source_port(), udp.destination_port()),
            // ICMP echo request / reply: the identifier names the "flow" of a ping.
            Some(TransportSlice::Icmpv4(icmp)) => match icmp.icmp_type() {
                Icmpv4Type::EchoRequest(echo) | Icmpv4Type::EchoReply(echo) => (echo.id, echo.id),
                _ => (0, 0),
            },
            _ => match (payload.ip_number, payload.fragmented, payload.payload) {
                (IpNumber::SCTP, false, [a, b, c, d, ..]) => {
                    (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
                }
                _ => (0, 0),
            },
        };
        FlowKey::Ipv4 {
            protocol: header.protocol().0,
            src: header.source_addr(),
            src_port,
            dst: header.destination_addr(),
            dst_port,
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FlowKey::Ipv4 {
                protocol,
                src,
                src_port,
                dst,
                dst_port,
            } => {
                let name = match protocol {
                    1 => "icmp".to_owned(),
                    6 => "tcp".to_owned(),
                    17 => "udp".to_owned(),
                    132 => "sctp".to_owned(),
                    p => format!("ip-proto-{p}"),
                };
                match (protocol, src_port, dst_port) {
                    (1, 0, 0) => write!(f, "icmp {src} > {dst}"),
                    (1, id, _) => write!(f, "icmp {src} > {dst} id {id}"),
                    (_, 0, 0) => write!(f, "{name} {src} > {dst}"),
                    _ => write!(f, "{name} {src}:{src_port} > {dst}:{dst_port}"),
                }
            }
            FlowKey::Other { version } => write!(f, "non-ipv4 (version {version})"),
        }
    }
}

/// One flow's numbers for a window (`GET /ue/v1/gaps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowGaps {
    /// The flow, e.g. `udp 20.0.0.10:9000 > 192.168.1.2:40000`.
    pub flow: String,
    /// Packets that arrived in the window.
    pub packets: u64,
    /// The largest time between two consecutive arrivals that ended in the window (ms); 0 with
    /// fewer than two arrivals.
    pub largest_gap_ms: f64,
    /// When that gap ended, ms since the UE started.
    pub gap_ended_at_ms: Option<f64>,
    /// The flow's last arrival, ms since the UE started: how long it has been silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_arrival_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start_us: u64,
    packets: u64,
    /// The largest gap that ended in this segment and when it ended.
    gap: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Default)]
struct FlowRecord {
    last_us: Option<u64>,
    segments: VecDeque<Segment>,
}

/// Per-flow downlink arrivals, bounded in memory.
#[derive(Debug, Clone, Default)]
pub struct GapRecorder {
    flows: HashMap<FlowKey, FlowRecord>,
}

impl GapRecorder {
    /// Segment length: the resolution of a window's start.
    pub const SEGMENT_US: u64 = 100_000;
    /// Segments kept per flow (10 minutes of continuous traffic).
    pub const MAX_SEGMENTS: usize = 6000;
    /// Flows kept.
    pub const MAX_FLOWS: usize = 64;

    pub fn new() -> Self {
        Self::default()
    }

    /// Records a downlink packet that arrived at `at_us`.
    pub fn record(&mut self, at_us: u64, packet: &[u8]) {
        let key = FlowKey::of(packet);
        if !self.flows.contains_key(&key) && self.flows.len() >= Self::MAX_FLOWS {
            let idle = self
                .flows
                .iter()
                .min_by_key(|(_, r)| r.last_us)
                .map(|(k, _)| *k);
            if let Some(k) = idle {
                self.flows.remove(&k);
            }
        }
        let rec = self.flows.entry(key).or_default();
        let gap = rec.last_us.map(|last| at_us.saturating_sub(last));
        rec.last_us = Some(rec.last_us.map_or(at_us, |l| l.max(at_us)));
        let start = at_us - at_us % Self::SEGMENT_US;
        let seg = match rec.segments.back_mut() {
            Some(s) if s.start_us >= start => s,
            _ => {
                if rec.segments.len() >= Self::MAX_SEGMENTS {
                    rec.segments.pop_front();
                }
                rec.segments.push_back(Segment {
                    start_us: start,
                    packets: 0,
                    gap: None,
                });
                let Some(s) = rec.segments.back_mut() else {
                    return;
                };
                s
            }
        };
        seg.packets += 1;
        if let Some(g) = gap {
            if seg.gap.is_none_or(|(largest, _)| g > largest) {
                seg.gap = Some((g, at_us));
            }
        }
    }

    /// Per flow: arrivals in the segments that end after `since_us` (0 = everything kept).
    pub fn report(&self, since_us: u64) -> Vec<FlowGaps> {
        let mut out: Vec<(FlowKey, FlowGaps)> = self
            .flows
            .iter()
            .filter_map(|(k, r)| {
                let mut packets = 0;
                let mut best: Option<(u64, u64)> = None;
                for s in r
                    .segments
                    .iter()
                    .filter(|s| s.start_us.saturating_add(Self::SEGMENT_US) > since_us)
                {
                    packets += s.packets;
                    if let Some((g, end)) = s.gap {
                        if best.is_none_or(|(b, _)| g > b) {
                            best = Some((g, end));
                        }
                    }
                }
                (packets > 0).then(|| {
                    (
                        *k,
                        FlowGaps {
                            flow: k.to_string(),
                            packets,
                            largest_gap_ms: best.map_or(0.0, |(g, _)| g as f64 / 1000.0),
                            gap_ended_at_ms: best.map(|(_, e)| e as f64 / 1000.0),
                            last_arrival_ms: r.last_us.map(|l| l as f64 / 1000.0),
                        },
                    )
                })
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out.into_iter().map(|(_, g)| g).collect()
    }

    /// Forgets everything: the next arrival of each flow starts it afresh (no gap).
    pub fn reset(&mut self) {
        self.flows.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn udp(src_port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[20, 0, 0, 10]);
        p[16..20].copy_from_slice(&[192, 168, 1, 2]);
        p[20..22].copy_from_slice(&src_port.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p
    }

    fn ping_reply(id: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 1;
        p[12..16].copy_from_slice(&[10, 0, 0, 9]);
        p[16..20].copy_from_slice(&[192, 168, 1, 2]);
        p[24..26].copy_from_slice(&id.to_be_bytes());
        p
    }

    #[test]
    fn flows_are_named_by_their_headers() {
        assert_eq!(
            FlowKey::of(&udp(9000)).to_string(),
            "udp 20.0.0.10:9000 > 192.168.1.2:40000"
        );
        assert_eq!(
            FlowKey::of(&ping_reply(7)).to_string(),
            "icmp 10.0.0.9 > 192.168.1.2 id 7"
        );
        assert_eq!(FlowKey::of(&[]), FlowKey::Other { version: 0 });
        assert_eq!(FlowKey::of(&[0x60, 0, 0]), FlowKey::Other { version: 6 });
        assert_eq!(FlowKey::of(&[0x45, 0, 0]), FlowKey::Other { version: 4 });
        // a UDP header cut short still names the addresses
        assert_eq!(
            FlowKey::of(&udp(1)[..22]).to_string(),
            "udp 20.0.0.10 > 192.168.1.2"
        );
        // every prefix of a packet is classified without panicking
        let p = udp(5);
        for n in 0..p.len() {
            let _ = FlowKey::of(&p[..n]);
        }
    }

    #[test]
    fn tcp_sctp_fragments_and_ipv6_are_told_apart() {
        // TCP with a whole 20-octet header (and the lengths set, as the kernel sends them).
        let mut tcp = vec![0u8; 40];
        tcp[0] = 0x45;
        tcp[2..4].copy_from_slice(&40u16.to_be_bytes());
        tcp[9] = 6;
        tcp[12..16].copy_from_slice(&[20, 0, 0, 100]);
        tcp[16..20].copy_from_slice(&[192, 168, 1, 2]);
        tcp[20..22].copy_from_slice(&5000u16.to_be_bytes());
        tcp[22..24].copy_from_slice(&40001u16.to_be_bytes());
        tcp[32] = 0x50; // data offset 5
        assert_eq!(
            FlowKey::of(&tcp).to_string(),
            "tcp 20.0.0.100:5000 > 192.168.1.2:40001"
        );
        let mut sctp = tcp.clone();
        sctp[9] = 132;
        assert_eq!(
            FlowKey::of(&sctp).to_string(),
            "sctp 20.0.0.100:5000 > 192.168.1.2:40001"
        );
        // A later fragment carries no transport header: no ports.
        let mut fragment = udp(9000);
        fragment[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(
            FlowKey::of(&fragment).to_string(),
            "udp 20.0.0.10 > 192.168.1.2"
        );
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        assert_eq!(FlowKey::of(&v6), FlowKey::Other { version: 6 });
        for p in [&tcp, &sctp, &v6] {
            for n in 0..p.len() {
                let _ = FlowKey::of(&p[..n]);
            }
        }
    }

    #[test]
    fn the_largest_gap_and_its_end_are_found_per_flow() {
        let mut r = GapRecorder::new();
        // flow A every 10 ms, a 150 ms hole ending at 350 ms
        for t in [
            100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 350, 360,
        ] {
            r.record(t * 1000, &udp(9000));
        }
        // flow B: one packet only
        r.record(500_000, &udp(9001));
        let rep = r.report(0);
        assert_eq!(rep.len(), 2);
        assert_eq!(rep[0].flow, "udp 20.0.0.10:9000 > 192.168.1.2:40000");
        assert_eq!(rep[0].packets, 13);
        assert_eq!(rep[0].largest_gap_ms, 150.0);
        assert_eq!(rep[0].gap_ended_at_ms, Some(350.0));
        assert_eq!(rep[0].last_arrival_ms, Some(360.0));
        assert_eq!(rep[1].packets, 1);
        assert_eq!(rep[1].largest_gap_ms, 0.0);
        assert_eq!(rep[1].gap_ended_at_ms, None);
        assert_eq!(rep[1].last_arrival_ms, Some(500.0));
    }

    #[test]
    fn a_window_counts_what_ended_after_its_start() {
        let mut r = GapRecorder::new();
        r.record(0, &udp(1));
        r.record(1_000_000, &udp(1)); // 1 s gap ending at 1000 ms
        for t in 0..10 {
            r.record(2_000_000 + t * 20_000, &udp(1)); // 1 s gap, then 20 ms steps
        }
        r.record(3_000_000, &udp(1)); // 820 ms gap ending at 3000 ms
        let all = r.report(0);
        assert_eq!(all[0].packets, 13);
        assert_eq!(all[0].largest_gap_ms, 1000.0);
        assert_eq!(all[0].gap_ended_at_ms, Some(1000.0));
        let late = r.report(2_500_000);
        assert_eq!(late[0].packets, 1);
        assert_eq!(late[0].largest_gap_ms, 820.0);
        assert_eq!(late[0].gap_ended_at_ms, Some(3000.0));
        // a window after the last arrival is empty
        assert!(r.report(4_000_000).is_empty());
    }

    #[test]
    fn reset_starts_afresh_without_a_gap_from_before() {
        let mut r = GapRecorder::new();
        r.record(0, &udp(1));
        r.reset();
        r.record(5_000_000, &udp(1));
        r.record(5_010_000, &udp(1));
        let rep = r.report(0);
        assert_eq!(rep[0].packets, 2);
        assert_eq!(rep[0].largest_gap_ms, 10.0);
    }

    #[test]
    fn memory_is_bounded() {
        let mut r = GapRecorder::new();
        for i in 0..(GapRecorder::MAX_FLOWS as u16 + 10) {
            r.record(u64::from(i) * 1000, &udp(i));
        }
        assert_eq!(r.flows.len(), GapRecorder::MAX_FLOWS);
        // the first flows (idle longest) were evicted
        assert!(!r.flows.contains_key(&FlowKey::of(&udp(0))));
        let mut r = GapRecorder::new();
        for i in 0..(GapRecorder::MAX_SEGMENTS as u64 + 50) {
            r.record(i * GapRecorder::SEGMENT_US, &udp(1));
        }
        let rec = r.flows.values().next().unwrap();
        assert_eq!(rec.segments.len(), GapRecorder::MAX_SEGMENTS);
    }

    #[test]
    fn out_of_order_clock_never_panics() {
        let mut r = GapRecorder::new();
        r.record(1_000_000, &udp(1));
        r.record(900_000, &udp(1));
        r.record(u64::MAX - 5, &udp(1));
        assert_eq!(r.report(0)[0].packets, 3);
    }
}

//! A reader for classic pcap files (what `tcpdump -w` writes) and the packet-capture downtime: the
//! largest downlink inter-arrival gap per flow in a time window.
//!
//! Pure and panic-free on any input: [`Pcap::parse`] reads the 24-byte file header (either byte
//! order, µs or ns timestamps) and then every record; a record cut short or with an impossible
//! length ends the list and is reported in [`Pcap::trailing`], so a capture killed mid-write still
//! yields every packet before the damage.
//!
//! Link types: `tcpdump -i ue0` on the UE's TUN device (no Ethernet header) writes
//! `LINKTYPE_RAW` (101, checked with tcpdump 4.99 / libpcap 1.10: "link-type RAW (Raw IP)");
//! also read are the other raw-IP numbers (12, 14, 228), Linux cooked captures v1 (113) and v2
//! (276, as `tcpdump -i any` writes) and Ethernet (1). The packets inside are decoded by
//! etherparse ([`sliced`]) and named as the UE's gap recorder names flows ([`FlowKey`]).

use emu_ran::ue::gaps::FlowKey;
use etherparse::{EtherType, LaxSlicedPacket, LinuxSllHeaderSlice, LinuxSllProtocolType};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Length of the file header.
pub const FILE_HEADER_LEN: usize = 24;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// Largest record this reader accepts (libpcap's own limit for most link types).
pub const MAX_RECORD_LEN: u32 = 262_144;

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// `LINKTYPE_RAW`: raw IPv4 or IPv6, what a TUN device gives.
pub const LINKTYPE_RAW: u32 = 101;
/// `LINKTYPE_LINUX_SLL`: Linux cooked capture v1 (16-byte header).
pub const LINKTYPE_LINUX_SLL: u32 = 113;
/// `LINKTYPE_IPV4`.
pub const LINKTYPE_IPV4: u32 = 228;
/// `LINKTYPE_LINUX_SLL2`: Linux cooked capture v2 (20-byte header).
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;

/// Why a capture could not be read (at all, or past some point).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    #[error("pcap file is {0} bytes, shorter than its 24-byte header")]
    ShortHeader(usize),
    #[error("not a classic pcap file (magic {0:#010x}; pcapng is not read)")]
    BadMagic(u32),
    #[error("record at byte {offset}: header cut short")]
    TruncatedHeader { offset: usize },
    #[error("record at byte {offset}: {captured} bytes captured, only {left} left in the file")]
    TruncatedData {
        offset: usize,
        captured: u32,
        left: usize,
    },
    #[error(
        "record at byte {offset}: captured length {captured} is impossible (snaplen {snaplen})"
    )]
    BadLength {
        offset: usize,
        captured: u32,
        snaplen: u32,
    },
}

/// The file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileHeader {
    /// Written big-endian.
    pub big_endian: bool,
    /// Timestamps carry nanoseconds (else microseconds).
    pub nanos: bool,
    pub version_major: u16,
    pub version_minor: u16,
    pub snaplen: u32,
    /// The link type (the FCS bits of the field masked off).
    pub linktype: u32,
}

/// One captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Arrival time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// The captured bytes (link-layer header included).
    pub data: &'a [u8],
}

/// A parsed capture: the header, every whole record, and what stopped the reading early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcap<'a> {
    pub header: FileHeader,
    pub records: Vec<Record<'a>>,
    /// The damage that ended the record list before the end of the file, if any.
    pub trailing: Option<PcapError>,
}

fn u16_at(b: &[u8], at: usize, big: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(s)
    } else {
        u16::from_le_bytes(s)
    })
}

fn u32_at(b: &[u8], at: usize, big: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(s)
    } else {
        u32::from_le_bytes(s)
    })
}

impl<'a> Pcap<'a> {
    /// Parses a whole capture file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PcapError> {
        if bytes.len() < FILE_HEADER_LEN {
            return Err(PcapError::ShortHeader(bytes.len()));
        }
        let magic_le = u32_at(bytes, 0, false).unwrap_or(0);
        let (big_endian, nanos) = match (magic_le, magic_le.swap_bytes()) {
            (MAGIC_US, _) => (false, false),
            (MAGIC_NS, _) => (false, true),
            (_, MAGIC_US) => (true, false),
            (_, MAGIC_NS) => (true, true),
            _ => return Err(PcapError::BadMagic(u32_at(bytes, 0, true).unwrap_or(0))),
        };
        let r16 = |at| u16_at(bytes, at, big_endian).unwrap_or(0);
        let r32 = |at| u32_at(bytes, at, big_endian).unwrap_or(0);
        let header = FileHeader {
            big_endian,
            nanos,
            version_major: r16(4),
            version_minor: r16(6),
            snaplen: r32(16),
            linktype: r32(20) & 0x0fff_ffff,
        };
        let mut records = Vec::new();
        let mut trailing = None;
        let mut at = FILE_HEADER_LEN;
        // Some writers put 0 (or less than a record) in snaplen; never refuse below the maximum.
        let limit = header.snaplen.max(MAX_RECORD_LEN);
        while at < bytes.len() {
            let (Some(sec), Some(frac), Some(captured), Some(orig_len)) = (
                u32_at(bytes, at, big_endian),
                u32_at(bytes, at + 4, big_endian),
                u32_at(bytes, at + 8, big_endian),
                u32_at(bytes, at + 12, big_endian),
            ) else {
                trailing = Some(PcapError::TruncatedHeader { offset: at });
                break;
            };
            if captured > limit {
                trailing = Some(PcapError::BadLength {
                    offset: at,
                    captured,
                    snaplen: header.snaplen,
                });
                break;
            }
            let start = at + RECORD_HEADER_LEN;
            let Some(data) = bytes.get(start..start + captured as usize) else {
                trailing = Some(PcapError::TruncatedData {
                    offset: at,
                    captured,
                    left: bytes.len().saturating_sub(start),
                });
                break;
            };
            let frac_ns = if nanos {
                u64::from(frac)
            } else {
                u64::from(frac) * 1000
            };
            records.push(Record {
                ts_ns: u64::from(sec) * 1_000_000_000 + frac_ns,
                orig_len,
                data,
            });
            at = start + captured as usize;
        }
        Ok(Self {
            header,
            records,
            trailing,
        })
    }

    /// The packet inside `record`, sliced by etherparse for this capture's link type (`None`:
    /// no IP packet, or a link type this reader does not know).
    pub fn sliced<'r>(&self, record: &Record<'r>) -> Option<LaxSlicedPacket<'r>> {
        sliced(self.header.linktype, record.data)
    }
}

/// A frame of link type `linktype`, sliced by etherparse down to its IP packet (lax: a packet cut
/// by the snap length still yields its headers): raw IP, Ethernet (VLAN tags too), Linux cooked
/// v1 and v2 (etherparse reads v1; v2's 20-octet header, ether type first, is skipped here).
pub fn sliced(linktype: u32, frame: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    let packet = match linktype {
        LINKTYPE_RAW | 12 | 14 | LINKTYPE_IPV4 => LaxSlicedPacket::from_ip(frame).ok()?,
        LINKTYPE_ETHERNET => LaxSlicedPacket::from_ethernet(frame).ok()?,
        LINKTYPE_LINUX_SLL => {
            let sll = LinuxSllHeaderSlice::from_slice(frame).ok()?;
            let LinuxSllProtocolType::EtherType(ether_type) = sll.protocol_type() else {
                return None;
            };
            LaxSlicedPacket::from_ether_type(ether_type, frame.get(sll.slice().len()..)?)
        }
        LINKTYPE_LINUX_SLL2 => {
            let ether_type = u16::from_be_bytes(frame.get(..2)?.try_into().ok()?);
            LaxSlicedPacket::from_ether_type(EtherType(ether_type), frame.get(20..)?)
        }
        _ => return None,
    };
    packet.net.is_some().then_some(packet)
}

/// One downlink flow of a capture in a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureFlowGap {
    /// As the UE's gap recorder names flows, e.g. `tcp 20.0.0.100:5000 > 192.168.1.2:40000`.
    pub flow: String,
    /// The sender.
    pub src: Ipv4Addr,
    /// Packets of the flow that arrived in the window.
    pub packets: u64,
    /// The largest time between two consecutive packets of the flow whose second packet arrived
    /// in the window, ms (0 with no such pair).
    pub largest_gap_ms: f64,
    /// When that gap ended, ns since the Unix epoch.
    pub gap_ended_unix_ns: Option<u64>,
}

/// The largest inter-arrival gap of every IPv4 flow to `dst` whose gap ended in `[from_ns,
/// to_ns]` (ns since the Unix epoch), flows with at least one packet in the window only, sorted by
/// flow name. Packets before the window count as the predecessors of the first ones in it, so a
/// gap that began before the window and ended in it is seen whole.
pub fn downlink_gaps(
    pcap: &Pcap<'_>,
    dst: Ipv4Addr,
    from_ns: u64,
    to_ns: u64,
) -> Vec<CaptureFlowGap> {
    #[derive(Default)]
    struct Acc {
        last_ns: Option<u64>,
        packets: u64,
        gap: Option<(u64, u64)>,
    }
    let mut flows: BTreeMap<String, (Ipv4Addr, Acc)> = BTreeMap::new();
    for r in &pcap.records {
        if r.ts_ns > to_ns {
            continue;
        }
        let Some(packet) = pcap.sliced(r) else {
            continue;
        };
        let key = FlowKey::of_sliced(&packet);
        let FlowKey::Ipv4 { src, dst: d, .. } = key else {
            continue;
        };
        if d != dst {
            continue;
        }
        let (_, acc) = flows
            .entry(key.to_string())
            .or_insert_with(|| (src, Acc::default()));
        if r.ts_ns >= from_ns {
            acc.packets += 1;
            if let Some(last) = acc.last_ns {
                let gap = r.ts_ns.saturating_sub(last);
                if acc.gap.is_none_or(|(g, _)| gap > g) {
                    acc.gap = Some((gap, r.ts_ns));
                }
            }
        }
        acc.last_ns = Some(acc.last_ns.map_or(r.ts_ns, |l| l.max(r.ts_ns)));
    }
    flows
        .into_iter()
        .filter(|(_, (_, a))| a.packets > 0)
        .map(|(flow, (src, a))| CaptureFlowGap {
            flow,
            src,
            packets: a.packets,
            largest_gap_ms: a.gap.map_or(0.0, |(g, _)| g as f64 / 1e6),
            gap_ended_unix_ns: a.gap.map(|(_, end)| end),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv4/UDP packet from `src` to `dst`.
    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0, 8, 0, 0]);
        p
    }

    /// A pcap file: byte order, ns or µs, link type, and (ts_ns, frame) records.
    fn file(big: bool, nanos: bool, linktype: u32, records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let w32 = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut b = Vec::new();
        b.extend(w32(if nanos { MAGIC_NS } else { MAGIC_US }));
        b.extend(w16(2));
        b.extend(w16(4));
        b.extend(w32(0));
        b.extend(w32(0));
        b.extend(w32(128));
        b.extend(w32(linktype));
        for (ts, frame) in records {
            let sec = u32::try_from(ts / 1_000_000_000).expect("secs");
            let sub = ts % 1_000_000_000;
            let frac = u32::try_from(if nanos { sub } else { sub / 1000 }).expect("frac");
            b.extend(w32(sec));
            b.extend(w32(frac));
            b.extend(w32(u32::try_from(frame.len()).expect("len")));
            b.extend(w32(u32::try_from(frame.len()).expect("len")));
            b.extend(frame);
        }
        b
    }

    const SVC: [u8; 4] = [20, 0, 0, 100];
    const UE: [u8; 4] = [192, 168, 1, 2];
    const T0: u64 = 1_700_000_000_000_000_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn tcpdumps_header_for_a_tun_device_reads() {
        // The first 24 bytes tcpdump 4.99 wrote for `-i ue0 -s 128` (checked on the testbed).
        let head: [u8; 24] = [
            0xd4, 0xc3, 0xb2, 0xa1, 0x02, 0x00, 0x04, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0,
            0x65, 0, 0, 0,
        ];
        let p = Pcap::parse(&head).expect("parses");
        assert_eq!(
            p.header,
            FileHeader {
                big_endian: false,
                nanos: false,
                version_major: 2,
                version_minor: 4,
                snaplen: 128,
                linktype: LINKTYPE_RAW
            }
        );
        assert!(p.records.is_empty() && p.trailing.is_none());
    }

    #[test]
    fn both_byte_orders_and_both_resolutions_give_the_same_times() {
        let frames = vec![
            (T0 + 5 * MS + 123_456, udp(SVC, UE, 5000, 40000)),
            (T0 + 15 * MS + 789_000, udp(SVC, UE, 5000, 40000)),
        ];
        for big in [false, true] {
            for nanos in [false, true] {
                let bytes = file(big, nanos, LINKTYPE_RAW, &frames);
                let p = Pcap::parse(&bytes).expect("parses");
                assert_eq!((p.header.big_endian, p.header.nanos), (big, nanos));
                assert_eq!(p.records.len(), 2);
                let want = if nanos {
                    T0 + 5 * MS + 123_456
                } else {
                    T0 + 5 * MS + 123_000
                };
                assert_eq!(p.records[0].ts_ns, want, "big {big} nanos {nanos}");
                assert_eq!(p.records[1].data, frames[1].1.as_slice());
                assert!(p.sliced(&p.records[0]).is_some());
            }
        }
    }

    /// The flow of a frame, as the capture's downtime sees it.
    fn flow(linktype: u32, frame: &[u8]) -> Option<String> {
        sliced(linktype, frame).map(|p| FlowKey::of_sliced(&p).to_string())
    }

    #[test]
    fn cooked_and_ethernet_frames_yield_their_ipv4_packet() {
        let ip = udp(SVC, UE, 5000, 40000);
        let want = Some("udp 20.0.0.100:5000 > 192.168.1.2:40000".to_owned());
        assert_eq!(flow(LINKTYPE_RAW, &ip), want);
        // Linux cooked v1: packet type, ARPHRD, address length, 8 address octets, protocol.
        let mut sll = vec![0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
        sll.extend(0x0800u16.to_be_bytes());
        sll.extend(&ip);
        assert_eq!(flow(LINKTYPE_LINUX_SLL, &sll), want);
        let mut sll2 = 0x0800u16.to_be_bytes().to_vec();
        sll2.extend([0u8; 18]);
        sll2.extend(&ip);
        assert_eq!(flow(LINKTYPE_LINUX_SLL2, &sll2), want);
        let mut eth = vec![0u8; 12];
        eth.extend(0x0800u16.to_be_bytes());
        eth.extend(&ip);
        assert_eq!(flow(LINKTYPE_ETHERNET, &eth), want);
        // An 802.1Q tag before the IPv4 ether type.
        let mut vlan = vec![0u8; 12];
        vlan.extend(0x8100u16.to_be_bytes());
        vlan.extend([0, 7]);
        vlan.extend(0x0800u16.to_be_bytes());
        vlan.extend(&ip);
        assert_eq!(flow(LINKTYPE_ETHERNET, &vlan), want);
        // ARP over Ethernet, IPv6 raw, an unknown link type, empty frames: no IPv4 flow.
        let mut arp = vec![0u8; 12];
        arp.extend(0x0806u16.to_be_bytes());
        arp.extend(&ip);
        assert!(!matches!(
            sliced(LINKTYPE_ETHERNET, &arp).map(|p| FlowKey::of_sliced(&p)),
            Some(FlowKey::Ipv4 { .. })
        ));
        let mut v6 = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
        v6.extend([0u8; 32]);
        assert_eq!(
            flow(LINKTYPE_RAW, &v6).as_deref(),
            Some("non-ipv4 (version 6)")
        );
        assert_eq!(flow(147, &ip), None);
        for lt in [
            LINKTYPE_RAW,
            LINKTYPE_LINUX_SLL,
            LINKTYPE_LINUX_SLL2,
            LINKTYPE_ETHERNET,
        ] {
            assert_eq!(flow(lt, &[]), None);
            assert_eq!(flow(lt, &[0x08]), None);
        }
        // Every prefix of every frame: no panic.
        for (lt, f) in [
            (LINKTYPE_RAW, &ip),
            (LINKTYPE_LINUX_SLL, &sll),
            (LINKTYPE_LINUX_SLL2, &sll2),
            (LINKTYPE_ETHERNET, &vlan),
        ] {
            for n in 0..f.len() {
                let _ = flow(lt, &f[..n]);
            }
        }
    }

    #[test]
    fn the_largest_downlink_gap_per_flow_in_the_window() {
        let down = || udp(SVC, UE, 5000, 40000);
        let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
        // 10 ms stream from t = 0 to 100 ms, a 250 ms gap, then 10 ms again to 500 ms.
        let mut t = 0;
        while t <= 100 {
            frames.push((T0 + t * MS, down()));
            t += 10;
        }
        let mut t = 350;
        while t <= 500 {
            frames.push((T0 + t * MS, down()));
            t += 10;
        }
        // Uplink (to the service) with a bigger gap must not count; nor another UE's packets.
        frames.push((T0 + 20 * MS, udp(UE, SVC, 40000, 5000)));
        frames.push((T0 + 900 * MS, udp(UE, SVC, 40000, 5000)));
        frames.push((T0 + 30 * MS, udp(SVC, [192, 168, 1, 3], 5000, 40000)));
        frames.push((T0 + 600 * MS, udp(SVC, [192, 168, 1, 3], 5000, 40000)));
        // A second downlink flow from the DN with a 40 ms gap.
        frames.push((T0 + 200 * MS, udp([10, 60, 0, 100], UE, 5000, 40001)));
        frames.push((T0 + 240 * MS, udp([10, 60, 0, 100], UE, 5000, 40001)));
        frames.sort_by_key(|f| f.0);
        let bytes = file(false, false, LINKTYPE_RAW, &frames);
        let p = Pcap::parse(&bytes).expect("parses");
        let ue = Ipv4Addr::from(UE);
        // The window starts inside the outage: the gap that ends in it is seen whole.
        let g = downlink_gaps(&p, ue, T0 + 150 * MS, T0 + 1000 * MS);
        assert_eq!(g.len(), 2, "{g:?}");
        let dn = &g[0];
        assert_eq!(dn.flow, "udp 10.60.0.100:5000 > 192.168.1.2:40001");
        assert_eq!((dn.packets, dn.largest_gap_ms), (2, 40.0));
        let svc = &g[1];
        assert_eq!(svc.flow, "udp 20.0.0.100:5000 > 192.168.1.2:40000");
        assert_eq!(svc.src, Ipv4Addr::from(SVC));
        assert_eq!(svc.largest_gap_ms, 250.0);
        assert_eq!(svc.gap_ended_unix_ns, Some(T0 + 350 * MS));
        assert_eq!(svc.packets, 16);
        // A window after the outage sees only 10 ms gaps; one before it sees no packets.
        let after = downlink_gaps(&p, ue, T0 + 400 * MS, T0 + 1000 * MS);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].largest_gap_ms, 10.0);
        assert!(downlink_gaps(&p, ue, T0 + 2000 * MS, T0 + 3000 * MS).is_empty());
        // The window's end bounds it: up to 100 ms only 10 ms gaps.
        let before = downlink_gaps(&p, ue, T0, T0 + 100 * MS);
        assert_eq!(before[0].largest_gap_ms, 10.0);
    }

    #[test]
    fn truncated_or_corrupt_input_never_panics_and_keeps_what_is_whole() {
        let frames: Vec<(u64, Vec<u8>)> = (0..5u64)
            .map(|i| (T0 + i * 10 * MS, udp(SVC, UE, 5000, 40000)))
            .collect();
        let bytes = file(true, true, LINKTYPE_RAW, &frames);
        // Every prefix of the file: a header error or the whole records before the cut.
        for n in 0..bytes.len() {
            match Pcap::parse(&bytes[..n]) {
                Err(PcapError::ShortHeader(len)) => assert!(n < FILE_HEADER_LEN && len == n),
                Err(e) => panic!("prefix {n}: {e}"),
                Ok(p) => {
                    let whole = (n - FILE_HEADER_LEN) / (RECORD_HEADER_LEN + 28);
                    assert_eq!(p.records.len(), whole, "prefix {n}");
                    let cut = !(n - FILE_HEADER_LEN).is_multiple_of(RECORD_HEADER_LEN + 28);
                    assert_eq!(p.trailing.is_some(), cut, "prefix {n}");
                }
            }
        }
        assert!(matches!(
            Pcap::parse(&[0u8; 24]),
            Err(PcapError::BadMagic(0))
        ));
        // pcapng's section header block magic is refused by name.
        let mut ng = vec![0x0a, 0x0d, 0x0d, 0x0a];
        ng.extend([0u8; 20]);
        assert!(Pcap::parse(&ng).is_err());
        // An absurd captured length ends the list with BadLength.
        let mut bad = file(false, false, LINKTYPE_RAW, &frames[..1]);
        bad.extend([0u8; 8]);
        bad.extend(u32::MAX.to_le_bytes());
        bad.extend(0u32.to_le_bytes());
        let p = Pcap::parse(&bad).expect("header ok");
        assert_eq!(p.records.len(), 1);
        assert!(matches!(p.trailing, Some(PcapError::BadLength { .. })));
        // Garbage frames: no IPv4, no flows, no panic.
        let mut x: u32 = 7;
        let junk: Vec<(u64, Vec<u8>)> = (0..200u64)
            .map(|i| {
                let len = (i % 40) as usize;
                let frame = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (x >> 16) as u8
                    })
                    .collect();
                (T0 + i * MS, frame)
            })
            .collect();
        let bytes = file(false, false, LINKTYPE_RAW, &junk);
        let p = Pcap::parse(&bytes).expect("parses");
        assert_eq!(p.records.len(), 200);
        let _ = downlink_gaps(&p, Ipv4Addr::from(UE), 0, u64::MAX);
        for lt in [
            LINKTYPE_ETHERNET,
            LINKTYPE_LINUX_SLL,
            LINKTYPE_LINUX_SLL2,
            9999,
        ] {
            let bytes = file(false, false, lt, &junk);
            let p = Pcap::parse(&bytes).expect("parses");
            let _ = downlink_gaps(&p, Ipv4Addr::from(UE), 0, u64::MAX);
        }
    }
}

//! The IAP's view of where each UE is served: `UE IPv4 → UeLocation` from the LR, with version
//! ordering (a late push never overwrites a newer location), a small queue per UE while its
//! location is being asked for, a short negative cache after a failed query, and counters per UE.
//! Pure: no I/O; time comes in as an argument.

use model::ran::lr::UeLocation;
use model::ran::TunnelEndpoint;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::time::Instant;

/// Packets kept per UE while its location is being asked for; more are dropped.
pub const MAX_QUEUED: usize = 64;
/// After a failed query, packets to that UE are dropped without asking again for this long.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// Counters of one UE (by destination address).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UeCounters {
    /// G-PDUs sent towards the serving UPF.
    pub forwarded_packets: u64,
    /// Octets of the inner packets sent.
    pub forwarded_bytes: u64,
    /// Packets queued while the LR was asked (sent later or dropped).
    pub queued_packets: u64,
    /// Packets dropped (queue full, unknown UE, failed query, send error).
    pub dropped_packets: u64,
    /// Queries sent to the LR on a miss.
    pub queries: u64,
}

/// Counters of the IAP as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IapCounters {
    /// Locations learnt (pushes, initial list, query answers) that updated the cache.
    pub locations_learnt: u64,
    /// Locations ignored because the cache had a newer version.
    pub stale_locations: u64,
    /// Packets from the TUN that are not IPv4 (dropped).
    pub non_ipv4_dropped: u64,
    /// Packets sent after waiting in a queue.
    pub flushed_packets: u64,
}

/// What to do with a packet for a UE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send it now in a G-PDU to this tunnel.
    Forward(TunnelEndpoint),
    /// Queued; ask the LR for this UE (the first miss).
    QueuedAskLr,
    /// Queued; a query is already running.
    Queued,
    /// Dropped (queue full, or the UE was unknown a moment ago); counted.
    Dropped,
}

/// The outcome of learning a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learnt {
    /// The cache now holds it; send the queued packets to `tunnel`.
    Updated {
        tunnel: TunnelEndpoint,
        flush: Vec<Vec<u8>>,
    },
    /// Ignored: the cached version is newer.
    Stale { cached_version: u64 },
}

#[derive(Debug, Clone)]
struct Pending {
    packets: Vec<Vec<u8>>,
}

/// The location cache.
#[derive(Debug, Clone, Default)]
pub struct LocationCache {
    locations: HashMap<Ipv4Addr, UeLocation>,
    pending: HashMap<Ipv4Addr, Pending>,
    unknown_until: HashMap<Ipv4Addr, Instant>,
    ues: BTreeMap<Ipv4Addr, UeCounters>,
    counters: IapCounters,
}

impl LocationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached location of `ue`.
    pub fn get(&self, ue: Ipv4Addr) -> Option<&UeLocation> {
        self.locations.get(&ue)
    }

    /// All cached locations.
    pub fn locations(&self) -> impl Iterator<Item = &UeLocation> {
        self.locations.values()
    }

    /// Per-UE counters.
    pub fn ue_counters(&self) -> &BTreeMap<Ipv4Addr, UeCounters> {
        &self.ues
    }

    /// IAP-wide counters.
    pub fn counters(&self) -> IapCounters {
        self.counters
    }

    /// Learns a location unless the cached one is newer (equal versions replace: idempotent).
    pub fn learn(&mut self, location: UeLocation) -> Learnt {
        let ue = location.ue_ipv4;
        if let Some(cached) = self.locations.get(&ue) {
            if cached.version > location.version {
                self.counters.stale_locations += 1;
                return Learnt::Stale {
                    cached_version: cached.version,
                };
            }
        }
        let tunnel = location.upf_tunnel;
        self.locations.insert(ue, location);
        self.unknown_until.remove(&ue);
        self.counters.locations_learnt += 1;
        let flush = self
            .pending
            .remove(&ue)
            .map(|p| p.packets)
            .unwrap_or_default();
        Learnt::Updated { tunnel, flush }
    }

    /// Decides what to do with `packet` for `ue` at `now`; queues it on a miss.
    pub fn route(&mut self, ue: Ipv4Addr, packet: &[u8], now: Instant) -> Route {
        if let Some(l) = self.locations.get(&ue) {
            return Route::Forward(l.upf_tunnel);
        }
        let counters = self.ues.entry(ue).or_default();
        if let Some(p) = self.pending.get_mut(&ue) {
            if p.packets.len() >= MAX_QUEUED {
                counters.dropped_packets += 1;
                return Route::Dropped;
            }
            p.packets.push(packet.to_vec());
            counters.queued_packets += 1;
            return Route::Queued;
        }
        if self.unknown_until.get(&ue).is_some_and(|&t| now < t) {
            counters.dropped_packets += 1;
            return Route::Dropped;
        }
        self.unknown_until.remove(&ue);
        self.pending.insert(
            ue,
            Pending {
                packets: vec![packet.to_vec()],
            },
        );
        counters.queued_packets += 1;
        counters.queries += 1;
        Route::QueuedAskLr
    }

    /// The LR did not know `ue` (or did not answer): drops its queue and stops asking for
    /// [`NEGATIVE_TTL`]. Returns how many packets were dropped.
    pub fn query_failed(&mut self, ue: Ipv4Addr, now: Instant) -> usize {
        let Some(p) = self.pending.remove(&ue) else {
            return 0;
        };
        if !self.locations.contains_key(&ue) {
            self.unknown_until.insert(ue, now + NEGATIVE_TTL);
        }
        self.ues.entry(ue).or_default().dropped_packets += p.packets.len() as u64;
        p.packets.len()
    }

    /// Counts the outcome of sending a packet of `bytes` octets for `ue`.
    pub fn sent(&mut self, ue: Ipv4Addr, bytes: usize, ok: bool, flushed: bool) {
        let c = self.ues.entry(ue).or_default();
        if ok {
            c.forwarded_packets += 1;
            c.forwarded_bytes += bytes as u64;
            if flushed {
                self.counters.flushed_packets += 1;
            }
        } else {
            c.dropped_packets += 1;
        }
    }

    /// Counts a packet that is not IPv4.
    pub fn non_ipv4(&mut self) {
        self.counters.non_ipv4_dropped += 1;
    }
}

/// The destination of an IPv4 packet (its header checked by etherparse: version 4, a whole header
/// of IHL words), or `None` if it is not one (IPv6 included: the cache is keyed by IPv4).
pub fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    etherparse::Ipv4HeaderSlice::from_slice(packet)
        .ok()
        .map(|h| h.destination_addr())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    fn loc(version: u64, teid: u32) -> UeLocation {
        UeLocation {
            ue_ipv4: UE,
            site: "a".into(),
            dnai: "edge-x".into(),
            upf_tunnel: TunnelEndpoint {
                ipv4: Ipv4Addr::new(10, 90, 0, 2),
                teid,
            },
            version,
        }
    }

    fn tunnel(teid: u32) -> TunnelEndpoint {
        loc(0, teid).upf_tunnel
    }

    #[test]
    fn newer_version_replaces_older_is_ignored_equal_is_accepted() {
        let mut c = LocationCache::new();
        assert!(matches!(c.learn(loc(2, 0x200)), Learnt::Updated { .. }));
        assert_eq!(c.learn(loc(1, 0x100)), Learnt::Stale { cached_version: 2 });
        assert_eq!(c.get(UE).unwrap().upf_tunnel.teid, 0x200);
        assert!(matches!(c.learn(loc(2, 0x200)), Learnt::Updated { .. }));
        assert!(matches!(c.learn(loc(3, 0x300)), Learnt::Updated { .. }));
        assert_eq!(
            c.route(UE, &[], Instant::now()),
            Route::Forward(tunnel(0x300))
        );
        assert_eq!(c.counters().stale_locations, 1);
        assert_eq!(c.counters().locations_learnt, 3);
    }

    #[test]
    fn miss_queues_asks_once_and_flushes_on_answer() {
        let mut c = LocationCache::new();
        let now = Instant::now();
        assert_eq!(c.route(UE, &[1], now), Route::QueuedAskLr);
        assert_eq!(c.route(UE, &[2], now), Route::Queued);
        assert_eq!(
            c.learn(loc(1, 0x200)),
            Learnt::Updated {
                tunnel: tunnel(0x200),
                flush: vec![vec![1], vec![2]]
            }
        );
        assert_eq!(c.route(UE, &[3], now), Route::Forward(tunnel(0x200)));
        let counters = c.ue_counters()[&UE];
        assert_eq!((counters.queries, counters.queued_packets), (1, 2));
    }

    #[test]
    fn queue_is_bounded() {
        let mut c = LocationCache::new();
        let now = Instant::now();
        assert_eq!(c.route(UE, &[0], now), Route::QueuedAskLr);
        for i in 1..MAX_QUEUED {
            assert_eq!(c.route(UE, &[i as u8], now), Route::Queued);
        }
        assert_eq!(c.route(UE, &[0xff], now), Route::Dropped);
        match c.learn(loc(1, 1)) {
            Learnt::Updated { flush, .. } => assert_eq!(flush.len(), MAX_QUEUED),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.ue_counters()[&UE].dropped_packets, 1);
    }

    #[test]
    fn failed_query_drops_queue_and_backs_off() {
        let mut c = LocationCache::new();
        let now = Instant::now();
        c.route(UE, &[1], now);
        c.route(UE, &[2], now);
        assert_eq!(c.query_failed(UE, now), 2);
        assert_eq!(c.route(UE, &[3], now + NEGATIVE_TTL / 2), Route::Dropped);
        assert_eq!(c.route(UE, &[4], now + NEGATIVE_TTL), Route::QueuedAskLr);
        assert_eq!(c.ue_counters()[&UE].dropped_packets, 3);
        assert_eq!(c.query_failed(Ipv4Addr::new(1, 2, 3, 4), now), 0);
    }

    #[test]
    fn push_during_query_flushes_and_late_failure_changes_nothing() {
        let mut c = LocationCache::new();
        let now = Instant::now();
        c.route(UE, &[1], now);
        assert!(
            matches!(c.learn(loc(5, 0x500)), Learnt::Updated { ref flush, .. } if flush.len() == 1)
        );
        assert_eq!(c.query_failed(UE, now), 0);
        // The query's (older) answer arrives late.
        assert_eq!(c.learn(loc(4, 0x400)), Learnt::Stale { cached_version: 5 });
        assert_eq!(c.route(UE, &[2], now), Route::Forward(tunnel(0x500)));
    }

    #[test]
    fn send_outcomes_are_counted() {
        let mut c = LocationCache::new();
        c.sent(UE, 84, true, false);
        c.sent(UE, 84, true, true);
        c.sent(UE, 84, false, false);
        let u = c.ue_counters()[&UE];
        assert_eq!(
            (u.forwarded_packets, u.forwarded_bytes, u.dropped_packets),
            (2, 168, 1)
        );
        assert_eq!(c.counters().flushed_packets, 1);
    }

    #[test]
    fn destination_of_ipv4_only() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[192, 168, 1, 7]);
        assert_eq!(ipv4_destination(&p), Some(Ipv4Addr::new(192, 168, 1, 7)));
        assert_eq!(ipv4_destination(&p[..19]), None);
        // Options: IHL 6 needs 24 octets.
        p[0] = 0x46;
        assert_eq!(ipv4_destination(&p), None);
        let mut with_options = p.to_vec();
        with_options.extend([0u8; 4]);
        assert_eq!(
            ipv4_destination(&with_options),
            Some(Ipv4Addr::new(192, 168, 1, 7))
        );
        p[0] = 0x60;
        assert_eq!(ipv4_destination(&p), None);
        p[0] = 0x44; // IHL below 5
        assert_eq!(ipv4_destination(&p), None);
        assert_eq!(ipv4_destination(&[]), None);
        for n in 0..with_options.len() {
            let _ = ipv4_destination(&with_options[..n]);
        }
    }
}

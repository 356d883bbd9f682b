//! The SMF's PDU sessions with no I/O: the session table, UE address and TEID/SEID allocation,
//! and the PFCP requests of the contract (ARCHITECTURE.md, "PFCP (SMF → UPF)").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use model::ran::TunnelEndpoint;
use serde::{Deserialize, Serialize};
use wire::gtpu::Teid;
use wire::pfcp::{
    ApplyAction, CreatePdr, FSeid, FTeid, Far, FarId, ForwardingParameters, Interface, Message,
    NodeId, OuterHeaderCreation, OuterHeaderRemoval, Pdi, PdrId, SessionDeletionRequest,
    SessionEstablishmentRequest, SessionModificationRequest, UeIpAddress,
};

/// The only PDU session id a UE has in the testbed.
pub const PDU_SESSION_ID: u8 = 1;
/// Precedence of both PDRs.
pub const PRECEDENCE: u32 = 100;
/// The uplink PDR and FAR (N3 → N6).
pub const UPLINK: u16 = 1;
/// The downlink PDR and FAR (N9 → N3).
pub const DOWNLINK: u16 = 2;

/// Why an allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("ue address pool {0} is exhausted")]
    PoolExhausted(Ipv4Net),
    #[error("no free teid at {0}")]
    TeidsExhausted(String),
}

/// The two tunnel ends a UPF holds for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpfTunnels {
    /// Uplink: where the gNB sends (UPF N3 address, UL TEID).
    pub uplink: TunnelEndpoint,
    /// Downlink: where IAPs send (UPF N9 address, DL TEID).
    pub downlink: TunnelEndpoint,
}

/// One PDU session (one per UE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Session {
    pub supi: String,
    pub ue_ipv4: Ipv4Addr,
    /// Name of the serving UPF.
    pub upf: String,
    /// Name of the serving gNB.
    pub gnb: String,
    /// The serving gNB's downlink tunnel.
    pub gnb_tunnel: TunnelEndpoint,
    /// The serving UPF's tunnels.
    pub tunnels: UpfTunnels,
    /// The SMF's SEID of the PFCP session.
    pub cp_seid: u64,
    /// The UPF's SEID of the PFCP session.
    pub up_seid: u64,
}

/// Where the table's id counters stand (persisted, so a restarted SMF never hands out an id a
/// UPF may still hold for a session the SMF lost in the crash).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allocations {
    /// The next SMF-side SEID.
    pub next_seid: u64,
    /// The next TEID per UPF.
    pub next_teid: BTreeMap<String, u32>,
}

/// Every PDU session, UE addresses and tunnel ids in use.
#[derive(Debug)]
pub struct SessionTable {
    pool: Ipv4Net,
    sessions: BTreeMap<String, Session>,
    /// Addresses given out (sessions, and setups in progress), to their SUPI.
    addresses: HashMap<Ipv4Addr, String>,
    teids: HashMap<String, HashSet<u32>>,
    next_teid: HashMap<String, u32>,
    next_seid: u64,
}

impl SessionTable {
    /// An empty table handing out addresses of `pool` from its second host on (the first, e.g.
    /// `.1`, is reserved for a gateway).
    pub fn new(pool: Ipv4Net) -> Self {
        Self {
            pool,
            sessions: BTreeMap::new(),
            addresses: HashMap::new(),
            teids: HashMap::new(),
            next_teid: HashMap::new(),
            next_seid: 1,
        }
    }

    /// A table as a restarted SMF finds it: `sessions` (their addresses and TEIDs in use again),
    /// the TEIDs of `reserved` tunnels (procedures in progress) and the counters of `allocations`.
    pub fn restore(
        pool: Ipv4Net,
        allocations: Allocations,
        sessions: impl IntoIterator<Item = Session>,
        reserved: impl IntoIterator<Item = (String, UpfTunnels)>,
    ) -> Self {
        let mut table = Self::new(pool);
        table.next_seid = allocations.next_seid.max(1);
        table.next_teid = allocations.next_teid.into_iter().collect();
        for s in sessions {
            table.reserve(&s.upf.clone(), &s.tunnels);
            table.insert(s);
        }
        for (upf, tunnels) in reserved {
            table.reserve(&upf, &tunnels);
        }
        table
    }

    fn reserve(&mut self, upf: &str, tunnels: &UpfTunnels) {
        let used = self.teids.entry(upf.to_owned()).or_default();
        used.insert(tunnels.uplink.teid);
        used.insert(tunnels.downlink.teid);
    }

    /// Where the counters stand (see [`Allocations`]).
    pub fn allocations(&self) -> Allocations {
        Allocations {
            next_seid: self.next_seid,
            next_teid: self
                .next_teid
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// The session of `supi`.
    pub fn get(&self, supi: &str) -> Option<&Session> {
        self.sessions.get(supi)
    }

    /// Every session.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// The address of `supi`: the one it already has (session or setup in progress), else the
    /// lowest free one of the pool, which is reserved for it until [`Self::release_address`].
    pub fn address_for(&mut self, supi: &str) -> Result<Ipv4Addr, AllocationError> {
        if let Some(s) = self.sessions.get(supi) {
            return Ok(s.ue_ipv4);
        }
        if let Some((a, _)) = self.addresses.iter().find(|(_, s)| s.as_str() == supi) {
            return Ok(*a);
        }
        let free = self
            .pool
            .hosts()
            .skip(1)
            .find(|a| !self.addresses.contains_key(a))
            .ok_or(AllocationError::PoolExhausted(self.pool))?;
        self.addresses.insert(free, supi.to_owned());
        Ok(free)
    }

    /// Gives back the address of `supi` if it has no session (a failed setup).
    pub fn release_address(&mut self, supi: &str) {
        if !self.sessions.contains_key(supi) {
            self.addresses.retain(|_, s| s != supi);
        }
    }

    /// A TEID not in use at `upf` (never 0), reserved until released.
    fn allocate_teid(&mut self, upf: &str) -> Result<u32, AllocationError> {
        let used = self.teids.entry(upf.to_owned()).or_default();
        let next = self.next_teid.entry(upf.to_owned()).or_insert(1);
        if used.len() >= u32::MAX as usize - 1 {
            return Err(AllocationError::TeidsExhausted(upf.to_owned()));
        }
        loop {
            let teid = *next;
            *next = next.checked_add(1).unwrap_or(1);
            if teid != 0 && used.insert(teid) {
                return Ok(teid);
            }
        }
    }

    /// Reserves an uplink and a downlink TEID at `upf` (unique at that UPF).
    pub fn allocate_tunnels(
        &mut self,
        upf: &str,
        n3: Ipv4Addr,
        n9: Ipv4Addr,
    ) -> Result<UpfTunnels, AllocationError> {
        let ul = self.allocate_teid(upf)?;
        let dl = match self.allocate_teid(upf) {
            Ok(dl) => dl,
            Err(e) => {
                self.release_teid(upf, ul);
                return Err(e);
            }
        };
        Ok(UpfTunnels {
            uplink: TunnelEndpoint { ipv4: n3, teid: ul },
            downlink: TunnelEndpoint { ipv4: n9, teid: dl },
        })
    }

    fn release_teid(&mut self, upf: &str, teid: u32) {
        if let Some(used) = self.teids.get_mut(upf) {
            used.remove(&teid);
        }
    }

    /// Gives back the TEIDs of `tunnels` at `upf`.
    pub fn release_tunnels(&mut self, upf: &str, tunnels: &UpfTunnels) {
        self.release_teid(upf, tunnels.uplink.teid);
        self.release_teid(upf, tunnels.downlink.teid);
    }

    /// A new SMF-side SEID.
    pub fn allocate_seid(&mut self) -> u64 {
        let seid = self.next_seid;
        self.next_seid = self.next_seid.wrapping_add(1).max(1);
        seid
    }

    /// Removes the session of `supi` (its address stays reserved until
    /// [`Self::release_address`]; its TEIDs until [`Self::release_tunnels`]).
    pub fn remove(&mut self, supi: &str) -> Option<Session> {
        self.sessions.remove(supi)
    }

    /// Stores `session` (its address becomes its own), returning the one it replaces. The
    /// replaced session's TEIDs are not released: its owner does that once the UPF forgot it.
    pub fn insert(&mut self, session: Session) -> Option<Session> {
        self.addresses.insert(session.ue_ipv4, session.supi.clone());
        self.sessions.insert(session.supi.clone(), session)
    }
}

/// PFCP Session Establishment Request of the contract: PDR 1 uplink (N3 F-TEID → FAR 1 to the
/// core), PDR 2 downlink (N9 F-TEID + UE address → FAR 2 to `gnb`).
pub fn establishment_request(
    smf: Ipv4Addr,
    cp_seid: u64,
    ue: Ipv4Addr,
    tunnels: &UpfTunnels,
    gnb: TunnelEndpoint,
) -> Message {
    let f_teid = |t: TunnelEndpoint| FTeid {
        teid: Teid(t.teid),
        ipv4: t.ipv4,
    };
    let forward = |destination, ohc| Far {
        far_id: FarId(0),
        apply_action: Some(ApplyAction::FORW),
        forwarding_parameters: Some(ForwardingParameters {
            destination_interface: Some(destination),
            network_instance: None,
            outer_header_creation: ohc,
            send_end_marker: false,
        }),
    };
    Message::SessionEstablishmentRequest(SessionEstablishmentRequest {
        seid: 0,
        seq: 0,
        node_id: NodeId::Ipv4(smf),
        cp_f_seid: FSeid {
            seid: cp_seid,
            ipv4: smf,
        },
        create_pdrs: vec![
            CreatePdr {
                pdr_id: PdrId(UPLINK),
                precedence: PRECEDENCE,
                pdi: Pdi {
                    source_interface: Interface::ACCESS,
                    f_teid: Some(f_teid(tunnels.uplink)),
                    network_instance: None,
                    ue_ip_address: None,
                },
                outer_header_removal: Some(OuterHeaderRemoval::GTPU_UDP_IPV4),
                far_id: Some(FarId(UPLINK.into())),
            },
            CreatePdr {
                pdr_id: PdrId(DOWNLINK),
                precedence: PRECEDENCE,
                pdi: Pdi {
                    source_interface: Interface::CORE,
                    f_teid: Some(f_teid(tunnels.downlink)),
                    network_instance: None,
                    ue_ip_address: Some(UeIpAddress {
                        ipv4: ue,
                        destination: true,
                    }),
                },
                outer_header_removal: Some(OuterHeaderRemoval::GTPU_UDP_IPV4),
                far_id: Some(FarId(DOWNLINK.into())),
            },
        ],
        create_fars: vec![
            Far {
                far_id: FarId(UPLINK.into()),
                ..forward(Interface::CORE, None)
            },
            Far {
                far_id: FarId(DOWNLINK.into()),
                ..forward(
                    Interface::ACCESS,
                    Some(OuterHeaderCreation {
                        teid: Teid(gnb.teid),
                        ipv4: gnb.ipv4,
                    }),
                )
            },
        ],
    })
}

/// PFCP Session Modification Request: Update FAR 2 to send downlink to `gnb`, with SNDEM (the
/// UPF first sends an End Marker on FAR 2's current tunnel).
pub fn switch_downlink_request(up_seid: u64, gnb: TunnelEndpoint) -> Message {
    Message::SessionModificationRequest(SessionModificationRequest {
        seid: up_seid,
        update_fars: vec![Far {
            far_id: FarId(DOWNLINK.into()),
            apply_action: None,
            forwarding_parameters: Some(ForwardingParameters {
                destination_interface: Some(Interface::ACCESS),
                network_instance: None,
                outer_header_creation: Some(OuterHeaderCreation {
                    teid: Teid(gnb.teid),
                    ipv4: gnb.ipv4,
                }),
                send_end_marker: true,
            }),
        }],
        ..SessionModificationRequest::default()
    })
}

/// PFCP Session Deletion Request.
pub fn deletion_request(up_seid: u64) -> Message {
    Message::SessionDeletionRequest(SessionDeletionRequest {
        seid: up_seid,
        seq: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SessionTable {
        SessionTable::new("192.168.1.0/30".parse().expect("net"))
    }

    fn session(t: &mut SessionTable, supi: &str) -> Session {
        let ue_ipv4 = t.address_for(supi).expect("address");
        let tunnels = t
            .allocate_tunnels("upf-a", [10, 30, 0, 102].into(), [10, 90, 0, 2].into())
            .expect("tunnels");
        Session {
            supi: supi.into(),
            ue_ipv4,
            upf: "upf-a".into(),
            gnb: "gnb-a".into(),
            gnb_tunnel: TunnelEndpoint {
                ipv4: [10, 30, 0, 2].into(),
                teid: 1,
            },
            tunnels,
            cp_seid: t.allocate_seid(),
            up_seid: 9,
        }
    }

    #[test]
    fn addresses_start_at_the_second_host_and_stay_with_the_supi() {
        let mut t = table();
        // /30: hosts .1 and .2; .1 is reserved.
        assert_eq!(t.address_for("imsi-1"), Ok(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(t.address_for("imsi-1"), Ok(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(
            t.address_for("imsi-2"),
            Err(AllocationError::PoolExhausted(
                "192.168.1.0/30".parse().expect("net")
            ))
        );
        t.release_address("imsi-1");
        assert_eq!(t.address_for("imsi-2"), Ok(Ipv4Addr::new(192, 168, 1, 2)));
    }

    #[test]
    fn a_session_keeps_its_address() {
        let mut t = table();
        let s = session(&mut t, "imsi-1");
        assert_eq!(t.insert(s.clone()), None);
        t.release_address("imsi-1"); // no effect: it has a session
        assert_eq!(t.address_for("imsi-1"), Ok(s.ue_ipv4));
        assert!(t.address_for("imsi-2").is_err());
        assert_eq!(t.get("imsi-1"), Some(&s));
        assert_eq!(t.sessions().count(), 1);
    }

    #[test]
    fn teids_are_unique_per_upf_and_reused_only_after_release() {
        let mut t = table();
        let (n3, n9) = (Ipv4Addr::new(10, 30, 0, 102), Ipv4Addr::new(10, 90, 0, 2));
        let a = t.allocate_tunnels("upf-a", n3, n9).expect("a");
        let b = t.allocate_tunnels("upf-a", n3, n9).expect("b");
        let c = t.allocate_tunnels("upf-b", n3, n9).expect("c");
        let teids = [
            a.uplink.teid,
            a.downlink.teid,
            b.uplink.teid,
            b.downlink.teid,
        ];
        assert_eq!(teids, [1, 2, 3, 4]);
        assert_eq!((c.uplink.teid, c.downlink.teid), (1, 2));
        assert_eq!((a.uplink.ipv4, a.downlink.ipv4), (n3, n9));
        t.release_tunnels("upf-a", &a);
        // The counter moves on; freed ids come back only after it wraps.
        let d = t.allocate_tunnels("upf-a", n3, n9).expect("d");
        assert_eq!((d.uplink.teid, d.downlink.teid), (5, 6));
        t.next_teid.insert("upf-a".into(), u32::MAX);
        let e = t.allocate_tunnels("upf-a", n3, n9).expect("e");
        // u32::MAX, then wraps past 0 to 1 (free again), skipping nothing in use.
        assert_eq!((e.uplink.teid, e.downlink.teid), (u32::MAX, 1));
        let f = t.allocate_tunnels("upf-a", n3, n9).expect("f");
        assert_eq!((f.uplink.teid, f.downlink.teid), (2, 7)); // 3..=6 in use
    }

    #[test]
    fn a_restored_table_keeps_addresses_teids_and_counters() {
        let mut t = SessionTable::new("192.168.1.0/24".parse().expect("net"));
        let a = session(&mut t, "imsi-1");
        t.insert(a.clone());
        let pending = t
            .allocate_tunnels("upf-b", [10, 30, 0, 103].into(), [10, 90, 0, 3].into())
            .expect("pending");
        let freed = t
            .allocate_tunnels("upf-a", [10, 30, 0, 102].into(), [10, 90, 0, 2].into())
            .expect("freed");
        t.release_tunnels("upf-a", &freed);
        let allocations = t.allocations();
        assert_eq!(allocations.next_seid, 2);

        let mut r = SessionTable::restore(
            "192.168.1.0/24".parse().expect("net"),
            allocations,
            [a.clone()],
            [("upf-b".to_owned(), pending)],
        );
        assert_eq!(r.get("imsi-1"), Some(&a));
        assert_eq!(r.address_for("imsi-1"), Ok(a.ue_ipv4));
        assert_eq!(r.address_for("imsi-2"), Ok(Ipv4Addr::new(192, 168, 1, 3)));
        assert_eq!(r.allocate_seid(), 2, "the seid counter goes on");
        // Neither the session's TEIDs nor the released ones come back at once.
        let next = r
            .allocate_tunnels("upf-a", [10, 30, 0, 102].into(), [10, 90, 0, 2].into())
            .expect("next");
        assert_eq!((next.uplink.teid, next.downlink.teid), (5, 6));
        let at_b = r
            .allocate_tunnels("upf-b", [10, 30, 0, 103].into(), [10, 90, 0, 3].into())
            .expect("at b");
        assert_eq!((at_b.uplink.teid, at_b.downlink.teid), (3, 4));
        // Restored from nothing (no counters saved yet), ids still skip what is in use.
        let mut fresh = SessionTable::restore(
            "192.168.1.0/24".parse().expect("net"),
            Allocations::default(),
            [a],
            [],
        );
        assert_eq!(fresh.allocate_seid(), 1);
        let t1 = fresh
            .allocate_tunnels("upf-a", [10, 30, 0, 102].into(), [10, 90, 0, 2].into())
            .expect("t1");
        assert_eq!(
            (t1.uplink.teid, t1.downlink.teid),
            (3, 4),
            "1 and 2 are the session's"
        );
    }

    #[test]
    fn seids_are_never_zero() {
        let mut t = table();
        assert_eq!(t.allocate_seid(), 1);
        t.next_seid = u64::MAX;
        assert_eq!(t.allocate_seid(), u64::MAX);
        assert_eq!(t.allocate_seid(), 1);
    }

    #[test]
    fn establishment_follows_the_contract() {
        let tunnels = UpfTunnels {
            uplink: TunnelEndpoint {
                ipv4: [10, 30, 0, 102].into(),
                teid: 0x11,
            },
            downlink: TunnelEndpoint {
                ipv4: [10, 90, 0, 2].into(),
                teid: 0x12,
            },
        };
        let gnb = TunnelEndpoint {
            ipv4: [10, 30, 0, 2].into(),
            teid: 0x99,
        };
        let smf = Ipv4Addr::new(10, 100, 0, 10);
        let m = establishment_request(smf, 5, [192, 168, 1, 2].into(), &tunnels, gnb);
        // Round trip through the wire form: what the UPF parses is what we meant.
        let bytes = m.to_vec().expect("encode");
        let Message::SessionEstablishmentRequest(r) = Message::parse(&bytes).expect("parse") else {
            panic!("not an establishment request");
        };
        assert_eq!(r.cp_f_seid, FSeid { seid: 5, ipv4: smf });
        let [ul, dl] = &r.create_pdrs[..] else {
            panic!("two pdrs");
        };
        assert_eq!(
            (ul.pdr_id, ul.precedence, ul.far_id),
            (PdrId(1), 100, Some(FarId(1)))
        );
        assert_eq!(ul.pdi.source_interface, Interface::ACCESS);
        assert_eq!(
            ul.pdi.f_teid,
            Some(FTeid {
                teid: Teid(0x11),
                ipv4: [10, 30, 0, 102].into()
            })
        );
        assert_eq!(
            ul.outer_header_removal,
            Some(OuterHeaderRemoval::GTPU_UDP_IPV4)
        );
        assert_eq!((dl.pdr_id, dl.far_id), (PdrId(2), Some(FarId(2))));
        assert_eq!(dl.pdi.source_interface, Interface::CORE);
        assert_eq!(
            dl.pdi.f_teid.map(|f| (f.teid, f.ipv4)),
            Some((Teid(0x12), [10, 90, 0, 2].into()))
        );
        assert_eq!(
            dl.pdi.ue_ip_address,
            Some(UeIpAddress {
                ipv4: [192, 168, 1, 2].into(),
                destination: true
            })
        );
        let [far1, far2] = &r.create_fars[..] else {
            panic!("two fars");
        };
        let fp1 = far1.forwarding_parameters.as_ref().expect("fp1");
        assert_eq!(
            (far1.far_id, far1.apply_action),
            (FarId(1), Some(ApplyAction::FORW))
        );
        assert_eq!(
            (fp1.destination_interface, fp1.outer_header_creation),
            (Some(Interface::CORE), None)
        );
        let fp2 = far2.forwarding_parameters.as_ref().expect("fp2");
        assert_eq!(
            (far2.far_id, far2.apply_action),
            (FarId(2), Some(ApplyAction::FORW))
        );
        assert_eq!(fp2.destination_interface, Some(Interface::ACCESS));
        assert_eq!(
            fp2.outer_header_creation,
            Some(OuterHeaderCreation {
                teid: Teid(0x99),
                ipv4: [10, 30, 0, 2].into()
            })
        );
        assert!(!fp2.send_end_marker);
    }

    #[test]
    fn switch_sets_sndem_on_far_2() {
        let gnb = TunnelEndpoint {
            ipv4: [10, 30, 0, 3].into(),
            teid: 0x77,
        };
        let bytes = switch_downlink_request(42, gnb).to_vec().expect("encode");
        let Message::SessionModificationRequest(r) = Message::parse(&bytes).expect("parse") else {
            panic!("not a modification");
        };
        assert_eq!(r.seid, 42);
        let [far] = &r.update_fars[..] else {
            panic!("one update far");
        };
        let fp = far.forwarding_parameters.as_ref().expect("fp");
        assert_eq!(far.far_id, FarId(2));
        assert!(fp.send_end_marker);
        assert_eq!(
            fp.outer_header_creation,
            Some(OuterHeaderCreation {
                teid: Teid(0x77),
                ipv4: [10, 30, 0, 3].into()
            })
        );
        assert!(r.create_pdrs.is_empty() && r.remove_pdrs.is_empty());
        let bytes = deletion_request(42).to_vec().expect("encode");
        assert!(matches!(
            Message::parse(&bytes),
            Ok(Message::SessionDeletionRequest(SessionDeletionRequest {
                seid: 42,
                ..
            }))
        ));
    }
}

//! The UPF's PFCP sessions: PDRs and FARs per session, the TEID index the data path looks G-PDUs
//! up in, and per-session counters. Pure: no I/O, no clock; the driver in [`super`] sends what
//! the table decides.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use wire::gtpu::Teid;
use wire::pfcp::{
    ApplyAction, CreatePdr, Far, FarId, Interface, OuterHeaderCreation, PdrId,
    SessionEstablishmentRequest, SessionModificationRequest,
};

/// Why the table refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No session with this UP SEID.
    #[error("no session with seid {0:#x}")]
    NotFound(u64),
    /// A PDR's F-TEID is already matched by another PDR.
    #[error("teid {teid} of pdr {pdr} is already in use by session {owner:#x}")]
    TeidInUse { teid: Teid, pdr: u16, owner: u64 },
    /// A PDR refers to a FAR the session does not have.
    #[error("pdr {pdr} refers to unknown far {far}")]
    UnknownFar { pdr: u16, far: u32 },
    /// An Update FAR / Remove names a rule the session does not have.
    #[error("unknown {kind} {id}")]
    UnknownRule { kind: &'static str, id: u32 },
    /// A Create FAR without Apply Action (the codec normally refuses those).
    #[error("far {0} has no apply action")]
    NoApplyAction(u32),
}

/// A Packet Detection Rule as installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pdr {
    pub id: u16,
    pub precedence: u32,
    /// Source interface value (0 access, 1 core).
    pub source_interface: u8,
    /// Local TEID matched (on the F-TEID's address).
    pub teid: Option<u32>,
    /// The F-TEID's address.
    pub local_ipv4: Option<Ipv4Addr>,
    pub ue_ipv4: Option<Ipv4Addr>,
    /// Outer Header Removal present.
    pub removes_outer_header: bool,
    pub far_id: Option<u32>,
}

impl Pdr {
    fn from_create(c: &CreatePdr) -> Self {
        Pdr {
            id: c.pdr_id.0,
            precedence: c.precedence,
            source_interface: c.pdi.source_interface.0,
            teid: c.pdi.f_teid.map(|f| f.teid.0),
            local_ipv4: c.pdi.f_teid.map(|f| f.ipv4),
            ue_ipv4: c.pdi.ue_ip_address.map(|u| u.ipv4),
            removes_outer_header: c.outer_header_removal.is_some(),
            far_id: c.far_id.map(|f| f.0),
        }
    }
}

/// A Forwarding Action Rule as installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FarRule {
    pub id: u32,
    /// Apply Action bits (0x01 DROP, 0x02 FORW, 0x04 BUFF).
    pub apply_action: u8,
    /// Destination interface value (0 access, 1 core), if forwarding.
    pub destination_interface: Option<u8>,
    /// GTP-U tunnel to encapsulate into (downlink to the gNB).
    pub outer_header_creation: Option<Tunnel>,
}

/// A GTP-U tunnel endpoint of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tunnel {
    pub teid: u32,
    pub ipv4: Ipv4Addr,
}

impl From<OuterHeaderCreation> for Tunnel {
    fn from(o: OuterHeaderCreation) -> Self {
        Tunnel {
            teid: o.teid.0,
            ipv4: o.ipv4,
        }
    }
}

impl FarRule {
    fn from_create(f: &Far) -> Result<Self, SessionError> {
        let action = f
            .apply_action
            .ok_or(SessionError::NoApplyAction(f.far_id.0))?;
        let fp = f.forwarding_parameters.as_ref();
        Ok(FarRule {
            id: f.far_id.0,
            apply_action: action.0,
            destination_interface: fp.and_then(|p| p.destination_interface).map(|i| i.0),
            outer_header_creation: fp.and_then(|p| p.outer_header_creation).map(Tunnel::from),
        })
    }

    /// Applies an Update FAR; returns the tunnel an End Marker must go to first, if SNDEM is set
    /// and the FAR currently encapsulates.
    fn update(&mut self, u: &Far) -> Option<Tunnel> {
        let mut end_marker = None;
        if let Some(fp) = &u.forwarding_parameters {
            if fp.send_end_marker {
                end_marker = self.outer_header_creation;
            }
            if let Some(d) = fp.destination_interface {
                self.destination_interface = Some(d.0);
            }
            if let Some(o) = fp.outer_header_creation {
                self.outer_header_creation = Some(o.into());
            }
        }
        if let Some(a) = u.apply_action {
            self.apply_action = a.0;
        }
        end_marker
    }
}

/// Packet and byte counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCounters {
    /// G-PDUs from N3 decapsulated towards N6.
    pub ul_packets: u64,
    pub ul_bytes: u64,
    /// G-PDUs re-encapsulated towards the gNB.
    pub dl_packets: u64,
    pub dl_bytes: u64,
    /// Packets matched by a PDR whose FAR drops (or buffers: no buffering here), or whose send failed.
    pub dropped_packets: u64,
    /// End Markers sent on SNDEM.
    pub end_markers: u64,
}

/// One PFCP session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// SEID the UPF chose (the UP F-SEID).
    pub up_seid: u64,
    /// The SMF's SEID (header SEID of every response).
    pub cp_seid: u64,
    /// The SMF's F-SEID address.
    pub cp_ipv4: Ipv4Addr,
    pub pdrs: BTreeMap<u16, Pdr>,
    pub fars: BTreeMap<u32, FarRule>,
    pub counters: SessionCounters,
}

/// What to do with a G-PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Remove the outer header and write the inner packet to N6 (the TUN).
    ToN6 { seid: u64 },
    /// Re-encapsulate into this tunnel (downlink to the gNB).
    ToTunnel { seid: u64, tunnel: Tunnel },
    /// A rule matched but says drop (counted in the session).
    Drop { seid: u64 },
    /// No PDR matches the TEID (counted by the caller).
    Unknown,
}

/// Direction of a packet for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Uplink,
    Downlink,
    Dropped,
}

/// All sessions and the TEID index.
#[derive(Debug, Clone, Default)]
pub struct SessionTable {
    sessions: BTreeMap<u64, Session>,
    /// Local TEID → (UP SEID, PDR ID).
    by_teid: HashMap<Teid, (u64, u16)>,
    last_seid: u64,
}

/// Cause 69 "rule creation/modification failure" (TS 29.244 clause 8.2.1).
pub const CAUSE_RULE_FAILURE: wire::pfcp::Cause = wire::pfcp::Cause(69);

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a session; returns the UP SEID. A repeated request for the same CP F-SEID (a
    /// retransmission) returns the existing session's SEID without changes.
    pub fn establish(&mut self, req: &SessionEstablishmentRequest) -> Result<u64, SessionError> {
        if let Some(s) = self
            .sessions
            .values()
            .find(|s| s.cp_seid == req.cp_f_seid.seid && s.cp_ipv4 == req.cp_f_seid.ipv4)
        {
            return Ok(s.up_seid);
        }
        let up_seid = self.last_seid.wrapping_add(1).max(1);
        let mut session = Session {
            up_seid,
            cp_seid: req.cp_f_seid.seid,
            cp_ipv4: req.cp_f_seid.ipv4,
            pdrs: BTreeMap::new(),
            fars: BTreeMap::new(),
            counters: SessionCounters::default(),
        };
        for f in &req.create_fars {
            session.fars.insert(f.far_id.0, FarRule::from_create(f)?);
        }
        for p in &req.create_pdrs {
            session.pdrs.insert(p.pdr_id.0, Pdr::from_create(p));
        }
        self.check(&session)?;
        self.last_seid = up_seid;
        self.index(&session);
        self.sessions.insert(up_seid, session);
        Ok(up_seid)
    }

    /// Applies a modification (remove PDRs/FARs, create FARs/PDRs, update FARs) atomically: on
    /// error nothing changes. Returns the tunnels to send an End Marker to, before any later
    /// packet is forwarded with the new rules.
    pub fn modify(
        &mut self,
        req: &SessionModificationRequest,
    ) -> Result<Vec<Tunnel>, SessionError> {
        let mut s = self
            .sessions
            .get(&req.seid)
            .cloned()
            .ok_or(SessionError::NotFound(req.seid))?;
        if let Some(f) = req.cp_f_seid {
            s.cp_seid = f.seid;
            s.cp_ipv4 = f.ipv4;
        }
        for PdrId(id) in &req.remove_pdrs {
            s.pdrs.remove(id).ok_or(SessionError::UnknownRule {
                kind: "pdr",
                id: u32::from(*id),
            })?;
        }
        for FarId(id) in &req.remove_fars {
            s.fars.remove(id).ok_or(SessionError::UnknownRule {
                kind: "far",
                id: *id,
            })?;
        }
        for f in &req.create_fars {
            s.fars.insert(f.far_id.0, FarRule::from_create(f)?);
        }
        for p in &req.create_pdrs {
            s.pdrs.insert(p.pdr_id.0, Pdr::from_create(p));
        }
        let mut end_markers = Vec::new();
        for u in &req.update_fars {
            let far = s
                .fars
                .get_mut(&u.far_id.0)
                .ok_or(SessionError::UnknownRule {
                    kind: "far",
                    id: u.far_id.0,
                })?;
            end_markers.extend(far.update(u));
        }
        self.check(&s)?;
        self.unindex(req.seid);
        s.counters.end_markers += end_markers.len() as u64;
        self.index(&s);
        self.sessions.insert(req.seid, s);
        Ok(end_markers)
    }

    /// Removes a session, returning it (with its final counters).
    pub fn delete(&mut self, up_seid: u64) -> Result<Session, SessionError> {
        let s = self
            .sessions
            .remove(&up_seid)
            .ok_or(SessionError::NotFound(up_seid))?;
        self.unindex(up_seid);
        Ok(s)
    }

    /// A session by UP SEID.
    pub fn get(&self, up_seid: u64) -> Option<&Session> {
        self.sessions.get(&up_seid)
    }

    /// All sessions, by UP SEID.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Decides what to do with a G-PDU arriving on `teid`.
    pub fn lookup(&self, teid: Teid) -> Verdict {
        let Some(&(seid, pdr_id)) = self.by_teid.get(&teid) else {
            return Verdict::Unknown;
        };
        let Some(session) = self.sessions.get(&seid) else {
            return Verdict::Unknown;
        };
        let far = session
            .pdrs
            .get(&pdr_id)
            .and_then(|p| p.far_id)
            .and_then(|f| session.fars.get(&f));
        match far {
            Some(far) if ApplyAction(far.apply_action).contains(ApplyAction::FORW) => {
                match far.outer_header_creation {
                    Some(tunnel) => Verdict::ToTunnel { seid, tunnel },
                    None => Verdict::ToN6 { seid },
                }
            }
            _ => Verdict::Drop { seid },
        }
    }

    /// Counts a packet of `bytes` octets (inner packet) in session `seid`.
    pub fn count(&mut self, seid: u64, flow: Flow, bytes: usize) {
        if let Some(s) = self.sessions.get_mut(&seid) {
            let c = &mut s.counters;
            match flow {
                Flow::Uplink => {
                    c.ul_packets += 1;
                    c.ul_bytes += bytes as u64;
                }
                Flow::Downlink => {
                    c.dl_packets += 1;
                    c.dl_bytes += bytes as u64;
                }
                Flow::Dropped => c.dropped_packets += 1,
            }
        }
    }

    /// Checks a session's rules against themselves and the other sessions' TEIDs.
    fn check(&self, s: &Session) -> Result<(), SessionError> {
        let mut own: HashMap<u32, u16> = HashMap::new();
        for p in s.pdrs.values() {
            if let Some(far) = p.far_id {
                if !s.fars.contains_key(&far) {
                    return Err(SessionError::UnknownFar { pdr: p.id, far });
                }
            }
            if let Some(teid) = p.teid {
                if let Some(&(owner, _)) = self
                    .by_teid
                    .get(&Teid(teid))
                    .filter(|(owner, _)| *owner != s.up_seid)
                {
                    return Err(SessionError::TeidInUse {
                        teid: Teid(teid),
                        pdr: p.id,
                        owner,
                    });
                }
                if own.insert(teid, p.id).is_some() {
                    return Err(SessionError::TeidInUse {
                        teid: Teid(teid),
                        pdr: p.id,
                        owner: s.up_seid,
                    });
                }
            }
        }
        Ok(())
    }

    fn index(&mut self, s: &Session) {
        for p in s.pdrs.values() {
            if let Some(teid) = p.teid {
                self.by_teid.insert(Teid(teid), (s.up_seid, p.id));
            }
        }
    }

    fn unindex(&mut self, up_seid: u64) {
        self.by_teid.retain(|_, (seid, _)| *seid != up_seid);
    }
}

/// The Interface values the UPF distinguishes, for logs.
pub fn interface_name(i: u8) -> &'static str {
    match Interface(i) {
        Interface::ACCESS => "access",
        Interface::CORE => "core",
        Interface::N6_LAN => "n6-lan",
        Interface::CP_FUNCTION => "cp-function",
        _ => "other",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use wire::pfcp::{
        FSeid, FTeid, ForwardingParameters, NodeId, OuterHeaderRemoval, Pdi, UeIpAddress,
    };

    const N3: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 102);
    const N9: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
    const GNB_A: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 2);
    const GNB_B: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 3);
    const SMF: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);

    fn pdr(id: u16, source: Interface, teid: u32, local: Ipv4Addr, far: u32) -> CreatePdr {
        CreatePdr {
            pdr_id: PdrId(id),
            precedence: 100,
            pdi: Pdi {
                source_interface: source,
                f_teid: Some(FTeid {
                    teid: Teid(teid),
                    ipv4: local,
                }),
                network_instance: None,
                ue_ip_address: (source == Interface::CORE).then_some(UeIpAddress {
                    ipv4: Ipv4Addr::new(192, 168, 1, 2),
                    destination: true,
                }),
            },
            outer_header_removal: Some(OuterHeaderRemoval::GTPU_UDP_IPV4),
            far_id: Some(FarId(far)),
        }
    }

    fn far(id: u32, dest: Interface, ohc: Option<(u32, Ipv4Addr)>) -> Far {
        Far {
            far_id: FarId(id),
            apply_action: Some(ApplyAction::FORW),
            forwarding_parameters: Some(ForwardingParameters {
                destination_interface: Some(dest),
                network_instance: None,
                outer_header_creation: ohc.map(|(teid, ipv4)| OuterHeaderCreation {
                    teid: Teid(teid),
                    ipv4,
                }),
                send_end_marker: false,
            }),
        }
    }

    pub(crate) fn establishment(
        cp_seid: u64,
        ul: u32,
        dl: u32,
        gnb_teid: u32,
    ) -> SessionEstablishmentRequest {
        SessionEstablishmentRequest {
            seid: 0,
            seq: 1,
            node_id: NodeId::Ipv4(SMF),
            cp_f_seid: FSeid {
                seid: cp_seid,
                ipv4: SMF,
            },
            create_pdrs: vec![
                pdr(1, Interface::ACCESS, ul, N3, 1),
                pdr(2, Interface::CORE, dl, N9, 2),
            ],
            create_fars: vec![
                far(1, Interface::CORE, None),
                far(2, Interface::ACCESS, Some((gnb_teid, GNB_A))),
            ],
        }
    }

    pub(crate) fn update_far2(
        gnb_teid: u32,
        gnb: Ipv4Addr,
        sndem: bool,
    ) -> SessionModificationRequest {
        let mut f = far(2, Interface::ACCESS, Some((gnb_teid, gnb)));
        f.apply_action = None;
        if let Some(fp) = f.forwarding_parameters.as_mut() {
            fp.destination_interface = None;
            fp.send_end_marker = sndem;
        }
        SessionModificationRequest {
            seid: 1,
            seq: 2,
            update_fars: vec![f],
            ..Default::default()
        }
    }

    #[test]
    fn establish_indexes_both_teids() {
        let mut t = SessionTable::new();
        let seid = t.establish(&establishment(7, 0x100, 0x200, 0x1)).unwrap();
        assert_eq!(seid, 1);
        assert_eq!(t.lookup(Teid(0x100)), Verdict::ToN6 { seid });
        assert_eq!(
            t.lookup(Teid(0x200)),
            Verdict::ToTunnel {
                seid,
                tunnel: Tunnel {
                    teid: 1,
                    ipv4: GNB_A
                }
            }
        );
        assert_eq!(t.lookup(Teid(0x300)), Verdict::Unknown);
        let s = t.get(seid).unwrap();
        assert_eq!((s.cp_seid, s.cp_ipv4), (7, SMF));
        assert_eq!(s.pdrs[&2].ue_ipv4, Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(s.pdrs[&1].local_ipv4, Some(N3));
    }

    #[test]
    fn second_session_gets_new_seid_and_retransmission_does_not() {
        let mut t = SessionTable::new();
        let a = t.establish(&establishment(7, 0x100, 0x200, 1)).unwrap();
        assert_eq!(t.establish(&establishment(7, 0x100, 0x200, 1)).unwrap(), a);
        let b = t.establish(&establishment(8, 0x101, 0x201, 2)).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.sessions().count(), 2);
    }

    #[test]
    fn teid_in_use_by_another_session_is_refused() {
        let mut t = SessionTable::new();
        t.establish(&establishment(7, 0x100, 0x200, 1)).unwrap();
        let e = t.establish(&establishment(8, 0x100, 0x201, 2)).unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::TeidInUse {
                    teid: Teid(0x100),
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(t.sessions().count(), 1);
        // Same TEID twice inside one request.
        let e = t.establish(&establishment(9, 0x300, 0x300, 2)).unwrap_err();
        assert!(matches!(e, SessionError::TeidInUse { .. }));
    }

    #[test]
    fn pdr_with_unknown_far_is_refused() {
        let mut t = SessionTable::new();
        let mut req = establishment(7, 0x100, 0x200, 1);
        req.create_fars.pop();
        assert_eq!(
            t.establish(&req).unwrap_err(),
            SessionError::UnknownFar { pdr: 2, far: 2 }
        );
        assert_eq!(t.lookup(Teid(0x100)), Verdict::Unknown);
    }

    #[test]
    fn update_far_with_sndem_returns_the_old_tunnel_then_applies() {
        let mut t = SessionTable::new();
        let seid = t.establish(&establishment(7, 0x100, 0x200, 0x1)).unwrap();
        let ems = t.modify(&update_far2(0x2, GNB_B, true)).unwrap();
        assert_eq!(
            ems,
            vec![Tunnel {
                teid: 1,
                ipv4: GNB_A
            }]
        );
        assert_eq!(
            t.lookup(Teid(0x200)),
            Verdict::ToTunnel {
                seid,
                tunnel: Tunnel {
                    teid: 2,
                    ipv4: GNB_B
                }
            }
        );
        assert_eq!(t.get(seid).unwrap().counters.end_markers, 1);
        // FAR 2 kept its action and destination.
        let far2 = &t.get(seid).unwrap().fars[&2];
        assert_eq!(far2.apply_action, ApplyAction::FORW.0);
        assert_eq!(far2.destination_interface, Some(Interface::ACCESS.0));
    }

    #[test]
    fn update_far_without_sndem_sends_no_end_marker() {
        let mut t = SessionTable::new();
        t.establish(&establishment(7, 0x100, 0x200, 0x1)).unwrap();
        assert!(t
            .modify(&update_far2(0x2, GNB_B, false))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn apply_action_drop_drops() {
        let mut t = SessionTable::new();
        let seid = t.establish(&establishment(7, 0x100, 0x200, 0x1)).unwrap();
        let mut m = update_far2(1, GNB_A, false);
        m.update_fars[0].apply_action = Some(ApplyAction::DROP);
        m.update_fars[0].forwarding_parameters = None;
        t.modify(&m).unwrap();
        assert_eq!(t.lookup(Teid(0x200)), Verdict::Drop { seid });
        assert_eq!(t.lookup(Teid(0x100)), Verdict::ToN6 { seid });
    }

    #[test]
    fn modify_unknown_seid_or_rule_fails_without_change() {
        let mut t = SessionTable::new();
        let seid = t.establish(&establishment(7, 0x100, 0x200, 0x1)).unwrap();
        let mut m = update_far2(2, GNB_B, true);
        m.seid = 99;
        assert_eq!(t.modify(&m).unwrap_err(), SessionError::NotFound(99));
        let mut m = update_far2(2, GNB_B, true);
        m.update_fars[0].far_id = FarId(9);
        assert!(matches!(
            t.modify(&m).unwrap_err(),
            SessionError::UnknownRule { kind: "far", id: 9 }
        ));
        assert_eq!(
            t.get(seid).unwrap().fars[&2]
                .outer_header_creation
                .unwrap()
                .teid,
            1
        );
        assert_eq!(t.lookup(Teid(0x100)), Verdict::ToN6 { seid });
    }

    #[test]
    fn modify_removing_and_creating_pdrs_reindexes() {
        let mut t = SessionTable::new();
        let seid = t.establish(&establishment(7, 0x100, 0x200, 0x1)).unwrap();
        let m = SessionModificationRequest {
            seid,
            remove_pdrs: vec![PdrId(1)],
            create_pdrs: vec![pdr(3, Interface::ACCESS, 0x110, N3, 1)],
            ..Default::default()
        };
        t.modify(&m).unwrap();
        assert_eq!(t.lookup(Teid(0x100)), Verdict::Unknown);
        assert_eq!(t.lookup(Teid(0x110)), Verdict::ToN6 { seid });
        // A failing modification (PDR on a removed FAR) leaves the index intact.
        let m = SessionModificationRequest {
            seid,
            remove_fars: vec![FarId(1)],
            ..Default::default()
        };
        assert!(matches!(
            t.modify(&m).unwrap_err(),
            SessionError::UnknownFar { .. }
        ));
        assert_eq!(t.lookup(Teid(0x110)), Verdict::ToN6 { seid });
        assert_ne!(t.lookup(Teid(0x200)), Verdict::Unknown);
    }

    #[test]
    fn delete_forgets_teids_and_returns_counters() {
        let mut t = SessionTable::new();
        let seid = t.establish(&establishment(7, 0x100, 0x200, 0x1)).unwrap();
        t.count(seid, Flow::Uplink, 84);
        t.count(seid, Flow::Downlink, 100);
        t.count(seid, Flow::Downlink, 100);
        t.count(seid, Flow::Dropped, 1);
        let s = t.delete(seid).unwrap();
        assert_eq!(
            s.counters,
            SessionCounters {
                ul_packets: 1,
                ul_bytes: 84,
                dl_packets: 2,
                dl_bytes: 200,
                dropped_packets: 1,
                end_markers: 0
            }
        );
        assert_eq!(t.lookup(Teid(0x100)), Verdict::Unknown);
        assert_eq!(t.lookup(Teid(0x200)), Verdict::Unknown);
        assert_eq!(t.delete(seid).unwrap_err(), SessionError::NotFound(seid));
        // The TEIDs are free again, and SEIDs are not reused.
        let again = t.establish(&establishment(8, 0x100, 0x200, 0x1)).unwrap();
        assert_ne!(again, seid);
    }

    #[test]
    fn interface_names() {
        assert_eq!(interface_name(0), "access");
        assert_eq!(interface_name(1), "core");
        assert_eq!(interface_name(9), "other");
    }
}

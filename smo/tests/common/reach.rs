//! A verdict on fake switches' flows (tests only): from the UE's current site, does an ARP request
//! for the service get an answer, does the UE's packet reach the service, and does the service's
//! reply leave towards a site? Each edge's switch is its SMO flows above the testbed's base flows
//! (`priority=50,in_port=bh actions=drop`, `priority=0 actions=NORMAL`), so a packet no SMO flow
//! matches is switched locally unless it came over the backhaul. Downlink that leaves on any
//! site's N6 reaches the UE (the 5G core routes it to the UE's site).

use model::common::Dnai;
use smo::routing::rules::{ARP_REQUEST, ETH_TYPE_ARP, ETH_TYPE_IPV4};
use smo::routing::{FlowAction, FlowRule};
use std::net::Ipv4Addr;

/// One edge cloud as the verdict sees it.
#[derive(Debug, Clone)]
pub struct Edge {
    pub dnai: Dnai,
    /// The SMO's flows installed on its switch.
    pub flows: Vec<FlowRule>,
    /// Whether the service runs here (its port exists and answers).
    pub hosts: bool,
}

#[derive(Debug, Clone, Copy)]
struct Packet<'a> {
    in_port: &'a str,
    eth_type: u16,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    arp_op: Option<u16>,
    arp_tpa: Option<Ipv4Addr>,
}

/// Where a switch sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// To the service's port (explicitly or by NORMAL switching on the edge's own segment).
    Service,
    /// Out of the backhaul.
    Backhaul,
    /// Out of N6, to the site's router.
    Site,
    /// Back out of the port it came in on (the ARP responder's reply).
    Reply,
    Dropped,
}

fn matches(r: &FlowRule, p: &Packet<'_>) -> bool {
    let m = &r.matches;
    m.in_port.as_deref().is_none_or(|i| i == p.in_port)
        && m.eth_type.is_none_or(|t| t == p.eth_type)
        && m.ipv4_src.is_none_or(|a| Some(a) == p.src)
        && m.ipv4_dst.is_none_or(|a| Some(a) == p.dst)
        && m.arp_op.is_none_or(|o| Some(o) == p.arp_op)
        && m.arp_tpa.is_none_or(|a| Some(a) == p.arp_tpa)
}

fn fate(edge: &Edge, p: &Packet<'_>, svc_port: &str) -> Fate {
    let best = edge
        .flows
        .iter()
        .filter(|r| matches(r, p))
        .max_by_key(|r| r.priority);
    let Some(rule) = best else {
        return if p.in_port == "bh" {
            Fate::Dropped
        } else if p.in_port == svc_port {
            // NORMAL from the service: to the site's gateway.
            Fate::Site
        } else {
            Fate::Service
        };
    };
    let out = rule.actions.iter().find_map(|a| match a {
        FlowAction::Output(port) if port == "bh" => Some(Fate::Backhaul),
        FlowAction::Output(port) if port == "n6" => Some(Fate::Site),
        FlowAction::Output(port) if port == svc_port => Some(Fate::Service),
        FlowAction::InPort => Some(Fate::Reply),
        FlowAction::Normal => Some(if p.in_port == svc_port {
            Fate::Site
        } else {
            Fate::Service
        }),
        _ => None,
    });
    out.unwrap_or(Fate::Dropped)
}

/// `Ok` when, with the UE at `ue_at`'s site, the service (`svc` on port `svc_port`) is resolved,
/// reached and answers; the first thing that fails otherwise.
pub fn reaches(
    edges: &[Edge],
    ue_at: &Dnai,
    ue: Ipv4Addr,
    svc: Ipv4Addr,
    svc_port: &str,
) -> Result<(), String> {
    let site = edges
        .iter()
        .find(|e| &e.dnai == ue_at)
        .ok_or_else(|| format!("no edge {ue_at}"))?;
    let hosting: Vec<&Edge> = edges.iter().filter(|e| e.hosts).collect();
    let [home] = hosting.as_slice() else {
        return Err(format!("{} running copies of the service", hosting.len()));
    };

    let arp = Packet {
        in_port: "n6",
        eth_type: ETH_TYPE_ARP,
        src: None,
        dst: None,
        arp_op: Some(ARP_REQUEST),
        arp_tpa: Some(svc),
    };
    match fate(site, &arp, svc_port) {
        Fate::Reply => {}
        Fate::Service if site.hosts => {}
        f => {
            return Err(format!(
                "site {ue_at}'s ARP request for {svc}: {f:?}, no answer"
            ))
        }
    }

    let up = Packet {
        in_port: "n6",
        eth_type: ETH_TYPE_IPV4,
        src: Some(ue),
        dst: Some(svc),
        arp_op: None,
        arp_tpa: None,
    };
    match fate(site, &up, svc_port) {
        Fate::Service if site.hosts => {}
        Fate::Backhaul => {
            let from_bh = Packet {
                in_port: "bh",
                ..up
            };
            let takers: Vec<&Edge> = edges
                .iter()
                .filter(|e| e.dnai != site.dnai && fate(e, &from_bh, svc_port) == Fate::Service)
                .collect();
            match takers.as_slice() {
                [t] if t.hosts => {}
                [t] => {
                    return Err(format!(
                        "uplink tromboned to {}, which lacks the service",
                        t.dnai
                    ))
                }
                _ => {
                    return Err(format!(
                        "uplink on the backhaul taken by {} edges",
                        takers.len()
                    ))
                }
            }
        }
        f => return Err(format!("uplink at {ue_at}: {f:?}")),
    }

    let down = Packet {
        in_port: svc_port,
        eth_type: ETH_TYPE_IPV4,
        src: Some(svc),
        dst: Some(ue),
        arp_op: None,
        arp_tpa: None,
    };
    match fate(home, &down, svc_port) {
        Fate::Site => Ok(()),
        Fate::Backhaul => {
            let from_bh = Packet {
                in_port: "bh",
                ..down
            };
            let out = edges
                .iter()
                .filter(|e| e.dnai != home.dnai && fate(e, &from_bh, svc_port) == Fate::Site)
                .count();
            if out == 1 {
                Ok(())
            } else {
                Err(format!("downlink on the backhaul leaves at {out} sites"))
            }
        }
        f => Err(format!("downlink at {}: {f:?}", home.dnai)),
    }
}

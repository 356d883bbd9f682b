//! An independent decoder for the SMF's and the UPF's PFCP: the messages the SMF's own code builds
//! (`smf::session`) and the answers the UPF's own handling gives (`UpfState::on_pfcp`), encoded by
//! `wire::pfcp`, decoded by the `rs-pfcp` crate and checked field by field (as tshark checks them
//! in `wire/src/tshark_tests.rs`).

use std::net::{Ipv4Addr, SocketAddr};

use emu_5gc::smf::session::{
    deletion_request, establishment_request, switch_downlink_request, UpfTunnels,
};
use emu_5gc::upf::UpfState;
use model::ran::TunnelEndpoint;
use rs_pfcp::ie::create_far::CreateFar;
use rs_pfcp::ie::create_pdr::CreatePdr;
use rs_pfcp::ie::fseid::Fseid;
use rs_pfcp::ie::node_id::NodeId;
use rs_pfcp::ie::update_far::UpdateFar;
use rs_pfcp::ie::IeType;
use rs_pfcp::message::session_deletion_request::SessionDeletionRequest;
use rs_pfcp::message::session_establishment_request::SessionEstablishmentRequest;
use rs_pfcp::message::session_modification_request::SessionModificationRequest;
use rs_pfcp::message::{Message as _, MsgType};
use wire::pfcp::Message;

const SMF: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
const UPF: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 21);
const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

fn tunnels() -> UpfTunnels {
    UpfTunnels {
        uplink: TunnelEndpoint {
            ipv4: Ipv4Addr::new(10, 30, 0, 101),
            teid: 1,
        },
        downlink: TunnelEndpoint {
            ipv4: Ipv4Addr::new(10, 90, 0, 1),
            teid: 2,
        },
    }
}

fn gnb(n: u8, teid: u32) -> TunnelEndpoint {
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, n),
        teid,
    }
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().expect("encodes")
}

#[test]
fn the_smfs_session_establishment_decodes_field_by_field() {
    let wire = bytes(&establishment_request(
        SMF,
        7,
        UE,
        &tunnels(),
        gnb(1, 0x100),
    ));
    let m = SessionEstablishmentRequest::unmarshal(&wire).expect("rs-pfcp decodes it");
    assert_eq!(m.msg_type(), MsgType::SessionEstablishmentRequest);
    assert_eq!(m.seid().map(|s| s.0), Some(0));
    assert_eq!(m.node_id.parse::<NodeId>().ok(), Some(NodeId::IPv4(SMF)));
    let f = m.fseid.parse::<Fseid>().expect("f-seid");
    assert_eq!((f.seid.0, f.ipv4_address), (7, Some(SMF)));

    let pdrs: Vec<CreatePdr> = m
        .create_pdrs
        .iter()
        .map(|ie| CreatePdr::unmarshal(&ie.payload).expect("create pdr"))
        .collect();
    assert_eq!(pdrs.len(), 2);
    let summary = |p: &CreatePdr| {
        (
            p.pdr_id.value,
            p.precedence.value,
            format!("{:?}", p.pdi.source_interface.value),
            p.pdi.f_teid.as_ref().map(|t| (t.teid.0, t.ipv4_address)),
            p.pdi
                .ue_ip_addresses
                .first()
                .map(|u| (u.ipv4_address, u.source_destination)),
            p.outer_header_removal.as_ref().map(|o| o.description),
            p.far_id.as_ref().map(|f| f.value),
        )
    };
    assert_eq!(
        summary(&pdrs[0]),
        (
            1,
            100,
            "Access".to_owned(),
            Some((1, Some(Ipv4Addr::new(10, 30, 0, 101)))),
            None,
            Some(0),
            Some(1)
        )
    );
    assert_eq!(
        summary(&pdrs[1]),
        (
            2,
            100,
            "Core".to_owned(),
            Some((2, Some(Ipv4Addr::new(10, 90, 0, 1)))),
            Some((Some(UE), true)),
            Some(0),
            Some(2)
        )
    );

    let fars: Vec<CreateFar> = m
        .create_fars
        .iter()
        .map(|ie| CreateFar::unmarshal(&ie.payload).expect("create far"))
        .collect();
    assert_eq!(fars.len(), 2);
    for (far, id, destination) in [(&fars[0], 1, "Core"), (&fars[1], 2, "Access")] {
        assert_eq!(far.far_id.value, id);
        assert!(far
            .apply_action
            .contains(rs_pfcp::ie::apply_action::ApplyAction::FORW));
        let fp = far.forwarding_parameters.as_ref().expect("forwarding");
        assert_eq!(
            format!("{:?}", fp.destination_interface.interface),
            destination
        );
    }
    assert!(fars[0]
        .forwarding_parameters
        .as_ref()
        .is_some_and(|f| f.outer_header_creation.is_none()));
    let ohc = fars[1]
        .forwarding_parameters
        .as_ref()
        .and_then(|f| f.outer_header_creation.as_ref())
        .expect("outer header creation towards the gnb");
    assert_eq!(
        (ohc.teid.map(|t| t.0), ohc.ipv4_address),
        (Some(0x100), Some(Ipv4Addr::new(10, 30, 0, 1)))
    );
}

#[test]
fn the_smfs_path_switch_and_deletion_decode() {
    let wire = bytes(&switch_downlink_request(5, gnb(2, 0x200)));
    let m = SessionModificationRequest::unmarshal(&wire).expect("rs-pfcp decodes it");
    assert_eq!(m.seid().map(|s| s.0), Some(5));
    let fars = m.update_fars.as_deref().unwrap_or_default();
    let [far] = fars else {
        panic!("one update far: {fars:?}")
    };
    let far = UpdateFar::unmarshal(&far.payload).expect("update far");
    assert_eq!(far.far_id.value, 2);
    let ufp = far
        .update_forwarding_parameters
        .as_ref()
        .expect("update forwarding parameters");
    assert_eq!(
        format!(
            "{:?}",
            ufp.destination_interface.as_ref().map(|d| &d.interface)
        ),
        "Some(Access)"
    );
    let ohc = ufp.outer_header_creation.as_ref().expect("new tunnel");
    assert_eq!(
        (ohc.teid.map(|t| t.0), ohc.ipv4_address),
        (Some(0x200), Some(Ipv4Addr::new(10, 30, 0, 2)))
    );
    // rs-pfcp's Update Forwarding Parameters has no field for the PFCPSMReq-Flags (SNDEM) the
    // SMF sends inside it: tshark checks that one ("SNDEM (Send End Marker Packets): True").

    let wire = bytes(&deletion_request(5));
    let m = SessionDeletionRequest::unmarshal(&wire).expect("rs-pfcp decodes it");
    assert_eq!(m.seid().map(|s| s.0), Some(5));
    assert_eq!(m.msg_type(), MsgType::SessionDeletionRequest);
}

#[test]
fn the_upfs_answers_decode() {
    let mut upf = UpfState::new("upf-a", UPF, 1234);
    // Every request here has sequence number 0: each comes from its own port so that the UPF
    // does not take it for a retransmission of the one before.
    let mut port = wire::pfcp::PORT;
    let mut answer = |upf: &mut UpfState, m: Message| {
        port += 1;
        let reply = upf
            .on_pfcp(&bytes(&m), SocketAddr::from((SMF, port)))
            .reply
            .expect("the upf answers");
        rs_pfcp::message::parse(&bytes(&reply)).expect("rs-pfcp decodes the answer")
    };
    let cause = |m: &dyn rs_pfcp::message::Message| {
        m.ies(IeType::Cause)
            .next()
            .map(|c| c.payload.clone())
            .unwrap_or_default()
    };
    let est = answer(
        &mut upf,
        establishment_request(SMF, 7, UE, &tunnels(), gnb(1, 0x100)),
    );
    assert_eq!(est.msg_type(), MsgType::SessionEstablishmentResponse);
    // The response goes to the SMF's SEID; its F-SEID is the UPF's own.
    assert_eq!(est.seid().map(|s| s.0), Some(7));
    assert_eq!(cause(est.as_ref()), [1], "request accepted");
    let f: Fseid = est
        .ies(IeType::Fseid)
        .next()
        .expect("up f-seid")
        .parse()
        .expect("f-seid");
    assert_eq!(f.ipv4_address, Some(UPF));
    let up_seid = f.seid.0;
    let node: NodeId = est
        .ies(IeType::NodeId)
        .next()
        .expect("node id")
        .parse()
        .expect("node id");
    assert_eq!(node, NodeId::IPv4(UPF));

    let modified = answer(&mut upf, switch_downlink_request(up_seid, gnb(2, 0x200)));
    assert_eq!(modified.msg_type(), MsgType::SessionModificationResponse);
    assert_eq!(cause(modified.as_ref()), [1]);
    let deleted = answer(&mut upf, deletion_request(up_seid));
    assert_eq!(deleted.msg_type(), MsgType::SessionDeletionResponse);
    assert_eq!(cause(deleted.as_ref()), [1]);
    // A session the UPF does not know: "session context not found" (65), SEID 0.
    let unknown = answer(&mut upf, deletion_request(up_seid));
    assert_eq!(cause(unknown.as_ref()), [65]);
    assert_eq!(unknown.seid().map(|s| s.0), Some(0));
}

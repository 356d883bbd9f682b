//! Reading arbitrary bytes as a stream of OpenFlow 1.3 messages from the switch never panics:
//! every frame [`openflow::frame_len`] cuts is parsed, and what the codec can also write (echo,
//! bundle control) re-emits to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::openflow::{self, Message};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(len)) = openflow::frame_len(rest) {
        let (frame, tail) = rest.split_at(len);
        let mut again = Vec::new();
        match Message::parse(frame) {
            Ok(Message::EchoRequest { xid, data }) => openflow::echo_request(&mut again, xid, &data),
            Ok(Message::EchoReply { xid, data }) => openflow::echo_reply(&mut again, xid, &data),
            Ok(Message::BundleControl {
                xid,
                bundle_id,
                ctrl,
                flags,
            }) => openflow::bundle_control(&mut again, xid, bundle_id, ctrl, flags),
            _ => {}
        }
        if !again.is_empty() {
            assert_eq!(Message::parse(&again), Message::parse(frame));
        }
        rest = tail;
    }
});

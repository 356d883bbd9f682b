//! Parsing arbitrary bytes as PFCP never panics, and what parses re-emits to a
//! message that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::pfcp;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = pfcp::Packet::new_checked(data) {
        let _ = packet.ies().count();
    }
    if let Ok(message) = pfcp::Message::parse(data) {
        let bytes = message.to_vec().expect("re-emit");
        assert_eq!(pfcp::Message::parse(&bytes), Ok(message));
    }
});

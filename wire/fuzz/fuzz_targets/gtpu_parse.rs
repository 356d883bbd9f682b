//! Parsing arbitrary bytes as GTP-U never panics, and what parses re-emits to a
//! message that parses to the same header and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::gtpu;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = gtpu::Packet::new_checked(data) {
        let _ = (packet.payload(), packet.extension_headers().count(), packet.npdu_number());
    }
    if let Ok((repr, payload)) = gtpu::decapsulate(data) {
        let bytes = gtpu::to_vec(&repr, payload).expect("re-emit");
        let (again, payload_again) = gtpu::decapsulate(&bytes).expect("re-parse");
        assert_eq!(again, repr);
        assert_eq!(payload_again, payload);
    }
});

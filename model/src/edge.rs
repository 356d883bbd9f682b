//! The service range's fixed addresses, shared by everything that wires or routes it: the SMO's
//! flows, the service modules' containers and the testbed's plan.

use std::net::Ipv4Addr;

/// The anycast N6 gateway of the service range 20.0.0.0/16: every site answers for it with the
/// same MAC, so a migrated service keeps its ARP entry.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 1);
/// The gateway's MAC.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x14, 0, 0, 0, 0x01];
/// [`GATEWAY_MAC`] as `ip` and OVS write it.
pub const GATEWAY_MAC_STR: &str = "02:14:00:00:00:01";

#[cfg(test)]
mod tests {
    #[test]
    fn the_two_spellings_of_the_gateway_mac_agree() {
        let text: Vec<String> = super::GATEWAY_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(text.join(":"), super::GATEWAY_MAC_STR);
    }
}

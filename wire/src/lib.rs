//! Zero-copy views and typed representations of the testbed's user-plane and N4 protocols.
//!
//! * [`gtpu`]: GTP-U (TS 29.281) on N3/N9, UDP port 2152, with the PDU Session Container
//!   extension header (TS 38.415) carrying the QFI; Echo, End Marker and G-PDU messages.
//! * [`pfcp`]: PFCP (TS 29.244) on N4, UDP port 8805: header view, IE iterator and writer,
//!   and typed heartbeat, association and session messages with PDRs and FARs.
//! * [`openflow`]: the OpenFlow 1.3 subset the SMO speaks to its edge's Open vSwitch (flow mods in
//!   ONF bundles, packet-outs, port descriptions, flow statistics), as builders and a reader of
//!   whole messages.
//!
//! GTP-U and PFCP follow smoltcp's shape: a `Packet<T: AsRef<[u8]>>` view with a `field` module of
//! byte ranges, `new_checked` after which no accessor panics, setters for `AsMut<[u8]>`
//! buffers, and a `Repr` with `parse`, `buffer_len` and `emit`. Parsing untrusted bytes
//! returns an error, never panics. The crate does no I/O; IPv4/UDP framing is left to
//! `smoltcp::wire` or the kernel.

pub mod gtpu;
pub mod openflow;
pub mod pfcp;

#[cfg(test)]
mod tshark_tests;

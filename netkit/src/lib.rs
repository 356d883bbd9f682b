//! Host networking and process plumbing for the testbed, shared by every crate that touches the system:
//! network namespaces, veth links, Linux bridges, addresses and routes, private Open vSwitch instances,
//! and processes the testbed starts (ended only by PID).
//!
//! Everything here runs the standard tools (`ip`, `ethtool`, `ovs-*`) so each step can be reproduced by
//! hand from a shell and read in the tools' own words; see ARCHITECTURE.md for why.

pub mod cmd;
pub mod link;
pub mod netns;
pub mod ovs;
pub mod process;

pub use cmd::{CmdError, Tool};
pub use netns::Netns;

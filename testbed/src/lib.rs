//! The testbed: topology specifications and planning, bring-up and tear-down of the two-site (or
//! larger) 5G edge deployment in network namespaces, status, and the environment doctor.

pub mod chaos;
pub mod doctor;
pub mod experiment;
pub mod fake_module;
pub mod handover;
pub mod host;
pub mod lxd;
pub mod migration;
pub mod nf;
pub mod pcap;
pub mod plan;
pub mod player;
pub mod probe;
pub mod relocations;
pub mod report;
pub mod results;
pub mod rtmp;
pub mod scenario;
pub mod spec;
pub mod state;
pub mod supervise;
pub mod topo;

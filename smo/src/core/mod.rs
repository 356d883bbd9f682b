//! The relocation procedure (thesis §4.1, Figure 4.1) as two state machines that do no I/O
//! (STYLE.md item 2): [`SourceRelocation`] ([`source`]) runs at the SMO the UE left,
//! [`TargetRelocation`] ([`target`]) at the SMO it moved to; what both use is here. Each takes
//! events with the current time and returns commands; the driver ([`crate::negotiator`]) performs
//! them and feeds the results back. Both machines are `serde` values: the driver persists them
//! after every step, and a restarted SMO resumes them ([`SourceRelocation::resume`]), finishing or
//! failing cleanly.
//!
//! Source: INITIATE (ask candidate peers in order of cost until one has a module of the right
//! type) → VALIDATE (target checks resources) → PREPARE (tromboning flows here, then at the target)
//! → EXECUTE (the module migrates the service; then the target swaps its trombone for the new path)
//! → COMPLETE (cleanup here, target records the service) — or FAILURE from any phase before the
//! service moved: the trombone is (re)installed on both sides so the UE keeps reaching the service
//! at the source. After the service moved, nothing fails the relocation any more: the source
//! re-sends EXECUTE and COMPLETE until the target answers, and records `COMPLETED` only once the
//! target confirmed the new path (its PROCEED to COMPLETE); the target answers a phase it saw
//! before with the same answer, so every phase message is idempotent.

pub mod ack;
pub mod hints;
pub mod reconcile;
pub mod source;
pub mod target;

pub use source::{
    candidates_for, ExecuteFailure, SourceCommand, SourceEvent, SourceRelocation, SourceStart,
};
pub use target::{TargetContext, TargetEffect, TargetRelocation, TargetStep};

use crate::routing::rules::{self, EdgePorts};
use model::common::Dnai;
use model::smo::RelocationRecord;
use serde::{Deserialize, Serialize};

/// What a machine needs to know about its own SMO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Local {
    pub smo_id: String,
    pub dnai: Dnai,
    /// Base URL of this SMO's API.
    pub api_root: String,
    pub ports: EdgePorts,
}

/// The cookie of a relocation's flows, the same at both SMOs (derived from its id).
pub fn cookie_for(relocation_id: &str) -> u64 {
    // FNV-1a, 32 bits: stable across processes and versions.
    let mut h: u32 = 0x811c_9dc5;
    for b in relocation_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    rules::relocation_cookie(h)
}

/// `now_us − since_us`, never below zero.
fn elapsed(now_us: u64, since_us: u64) -> u64 {
    now_us.saturating_sub(since_us)
}

/// Adds `cause` to the record's cause (`first; second`).
fn note(record: &mut RelocationRecord, cause: String) {
    record.cause = Some(match record.cause.take() {
        Some(c) => format!("{c}; {cause}"),
        None => cause,
    });
}

/// A test module of type TEST registered as `module_id`, migrating to `notif_address`.
#[cfg(test)]
fn test_module(module_id: &str, notif_address: &str) -> model::smo::ServiceModule {
    model::smo::ServiceModule {
        module_id: module_id.into(),
        registration: model::smo::ServiceModuleRegistration {
            relocation_type: model::smo::RelocationType::Test,
            resource_requirements: Default::default(),
            get_service_notif_uri: "http://m.invalid/s".into(),
            served_service_notif_uri: "http://m.invalid/ss".into(),
            execute_notif_uri: "http://m.invalid/e".into(),
            notif_address: notif_address.parse().expect("addr"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_stable_tagged_and_distinct() {
        assert_eq!(cookie_for("smo-x-1"), 0x534d_4f52_8a43_6809);
        assert_eq!(&cookie_for("anything").to_be_bytes()[..4], b"SMOR");
        let mut all: Vec<u64> = (1..=100_000)
            .map(|n| cookie_for(&format!("smo-x-{n}")))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 100_000);
    }
}

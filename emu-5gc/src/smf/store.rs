//! What the SMF keeps on disk (an [`sbi::Store`] under its `stateDir`), so that a restarted SMF
//! (SIGKILL included) has the sessions, subscriptions and path switches it had:
//!
//! ```text
//! STATE_DIR/ues/<supi>.json                   UeRecord: the PDU session, the path switch in
//!                                              progress, the last one that completed
//! STATE_DIR/subscriptions/<subId>.json        StoredSubscription (TS 29.508 body + reports)
//! STATE_DIR/traffic-controls/<tcId>.json      StoredTrafficControl (TS 29.512 body + UE scope)
//! STATE_DIR/meta/counters.json                Counters: last subscription id, SEID/TEID counters
//! ```
//!
//! A UE's record is written before every step of its path switch (write-ahead: the TEIDs and
//! SEID at the target are on disk before the UPF hears of them), the counters whenever ids are
//! handed out, a subscription whenever it changes (its report count too).

use model::ran::n2::{PathSwitchAck, PathSwitchRequest};
use sbi::{Store, StoreError};
use serde::{Deserialize, Serialize};

use super::events::{StoredSubscription, StoredTrafficControl};
use super::session::{Allocations, Session};
use super::switch::PathSwitch;

/// Table of [`UeRecord`]s, by SUPI.
pub const UES: &str = "ues";
/// Table of [`StoredSubscription`]s, by subscription id.
pub const SUBSCRIPTIONS: &str = "subscriptions";
/// Table of [`StoredTrafficControl`]s, by `tcId`.
pub const TRAFFIC_CONTROLS: &str = "traffic-controls";
/// Table of the [`Counters`] (one item, [`COUNTERS`]).
pub const META: &str = "meta";
/// The id of the counters in [`META`].
pub const COUNTERS: &str = "counters";
/// Every table.
pub const TABLES: [&str; 4] = [UES, SUBSCRIPTIONS, TRAFFIC_CONTROLS, META];

/// The last completed path switch of a UE and its answer: a repeated request gets it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LastSwitch {
    pub request: PathSwitchRequest,
    pub ack: PathSwitchAck,
}

/// Everything the SMF knows of one UE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UeRecord {
    pub session: Session,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<PathSwitch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switch: Option<LastSwitch>,
}

/// The id counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Counters {
    /// The number of the last subscription id handed out (`sub-N`).
    pub last_subscription: u64,
    pub allocations: Allocations,
}

/// What a restarted SMF finds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    pub ues: Vec<UeRecord>,
    pub subscriptions: Vec<StoredSubscription>,
    pub traffic_controls: Vec<StoredTrafficControl>,
    pub counters: Counters,
}

/// Reads everything back (nothing from a memory store).
pub fn load(store: &Store) -> Result<Restored, StoreError> {
    Ok(Restored {
        ues: store.all(UES)?,
        subscriptions: store.all(SUBSCRIPTIONS)?,
        traffic_controls: store.all(TRAFFIC_CONTROLS)?,
        counters: store.get(META, COUNTERS)?.unwrap_or_default(),
    })
}

//! The acknowledgement of a path-change notification (TS 29.522 `afAckUri`, TS 23.502
//! §4.3.6.3): what the SMO answers, and when. No I/O.
//!
//! With `afAckInd` the network holds the UE's path switch until every AF acknowledged (at most
//! the SMF's `ackTimeoutMs`, 2 s by default), so the UE's traffic keeps its old path meanwhile.
//! The SMO uses the hold to move the service first (make-before-break):
//!
//! | what the SMO does with the notification | status | sent |
//! |---|---|---|
//! | relocates the service, and it arrived | `SUCCESS` | once the target confirmed the service's new path (its PROCEED to EXECUTE, or to COMPLETE when EXECUTE's flows failed there) |
//! | relocates the service, and the relocation FAILED | `OTHER` | once FAILURE's trombone is in on both sides (the UE reaches the service at the source over it after the switch) |
//! | does not relocate: `appReloInd: false` | `RELOC_NO_ALLOWED` | at once |
//! | has nothing to move (the UE did not leave this SMO's edge, no module here serves it) or queues it behind a running relocation of the UE | `SUCCESS` | at once: nothing of this SMO's waits for the switch |
//!
//! A failed relocation is acknowledged rather than left to time out: the SMF switches at once
//! instead of 2 s later, with the trombone already in place.

use model::traffic_influence::{AfAckInfo, AfResultInfo, AfResultStatus};
use serde::{Deserialize, Serialize};

/// An acknowledgement the network asked for: where it goes and the transaction it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    /// The notification's `afAckUri`.
    pub uri: String,
    /// The notification's `afTransId` (echoed in the acknowledgement).
    pub af_trans_id: Option<String>,
}

impl AckRequest {
    /// The `AfAckInfo` body answering with `status`.
    pub fn body(&self, status: AfResultStatus) -> AfAckInfo {
        AfAckInfo {
            af_trans_id: self.af_trans_id.clone(),
            ack_result: AfResultInfo::new(status),
            gpsi: None,
        }
    }
}

/// Why a notification starts no relocation here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmoved {
    /// This SMO does not relocate (`appReloInd: false`).
    NotAllowed,
    /// The UE did not leave this SMO's edge (another SMO's business, or no change).
    NotFromHere,
    /// No registered module here serves the UE.
    NothingServes,
    /// A relocation of the UE runs here: the notification is queued behind it.
    Queued,
}

/// The status for a notification that starts no relocation.
pub fn unmoved(why: Unmoved) -> AfResultStatus {
    match why {
        Unmoved::NotAllowed => AfResultStatus::RelocNoAllowed,
        Unmoved::NotFromHere | Unmoved::NothingServes | Unmoved::Queued => AfResultStatus::Success,
    }
}

/// The status for a relocation that ended: completed or not.
pub fn relocated(completed: bool) -> AfResultStatus {
    if completed {
        AfResultStatus::Success
    } else {
        AfResultStatus::OtherReason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_to_relocate_or_a_failure_is_not_success() {
        assert_eq!(unmoved(Unmoved::NotAllowed), AfResultStatus::RelocNoAllowed);
        for why in [
            Unmoved::NotFromHere,
            Unmoved::NothingServes,
            Unmoved::Queued,
        ] {
            assert_eq!(unmoved(why), AfResultStatus::Success, "{why:?}");
        }
        assert_eq!(relocated(true), AfResultStatus::Success);
        assert_eq!(relocated(false), AfResultStatus::OtherReason);
        let body = AckRequest {
            uri: "http://10.100.0.10:8002/x/acks/ack-1".into(),
            af_trans_id: Some("smo-x-up-path-change".into()),
        }
        .body(AfResultStatus::Success);
        assert_eq!(
            serde_json::to_value(&body).expect("json"),
            serde_json::json!({"afTransId": "smo-x-up-path-change", "ackResult": {"afStatus": "SUCCESS"}})
        );
    }
}

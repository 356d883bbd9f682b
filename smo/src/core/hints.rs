//! Notifications that arrive while a relocation of the same UE runs at this SMO: never dropped,
//! never acted on at once (the service is on its way). They are queued per UE and coalesced — a
//! UE's later notifications only replace the earlier one and count — and taken when the UE has no
//! relocation running here any more, to be re-evaluated against where the LR says the UE is.
//!
//! ```text
//!                 notification, UE busy here        UE's last relocation here ended
//!   (no hint) ─────────────────────────────▶ queued ───────────────────────────────▶ re-evaluated
//!                                            │  ▲
//!                                            └──┘ notification, UE still busy: coalesced
//! ```
//!
//! Pure bookkeeping (no I/O); the negotiator holds one [`Hints`] under its lock.

use model::nsmf_event_exposure::EventNotification;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What is queued for one UE.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    /// The latest notification for the UE.
    pub latest: EventNotification,
    /// How many notifications were folded into this hint (at least 1).
    pub count: u32,
    /// When the first of them was queued (µs, the negotiator's clock).
    pub first_us: u64,
}

/// How [`Hints::push`] took a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// The UE had nothing queued: a new hint.
    New,
    /// Folded into the UE's queued hint, which now counts this many notifications.
    Coalesced(u32),
}

/// The queued hints, one per UE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hints {
    queued: BTreeMap<Ipv4Addr, Hint>,
}

impl Hints {
    /// Queues `latest` for `ue`, coalescing it with what is queued already.
    pub fn push(&mut self, ue: Ipv4Addr, latest: EventNotification, now_us: u64) -> Queued {
        match self.queued.get_mut(&ue) {
            Some(h) => {
                h.latest = latest;
                h.count = h.count.saturating_add(1);
                Queued::Coalesced(h.count)
            }
            None => {
                self.queued.insert(
                    ue,
                    Hint {
                        latest,
                        count: 1,
                        first_us: now_us,
                    },
                );
                Queued::New
            }
        }
    }

    /// Takes `ue`'s hint, if one is queued.
    pub fn take(&mut self, ue: Ipv4Addr) -> Option<Hint> {
        self.queued.remove(&ue)
    }

    /// The UEs with a hint queued.
    pub fn ues(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.queued.keys().copied()
    }

    /// Whether `ue` has a hint queued.
    pub fn has(&self, ue: Ipv4Addr) -> bool {
        self.queued.contains_key(&ue)
    }

    /// How many UEs have a hint queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::common::{DateTime, DnaiChangeType, RouteToLocation};

    fn moved(to: &str, at: i64) -> EventNotification {
        EventNotification::up_path_change(
            DnaiChangeType::Late,
            Ipv4Addr::new(192, 168, 1, 2),
            RouteToLocation::new("edge-x", Ipv4Addr::new(10, 90, 0, 1), 2152),
            RouteToLocation::new(to, Ipv4Addr::new(10, 90, 0, 2), 2152),
            DateTime::from_unix(at, 0).expect("in range"),
        )
    }

    #[test]
    fn later_notifications_replace_and_count_and_taking_empties() {
        let (ue, other) = (Ipv4Addr::new(192, 168, 1, 2), Ipv4Addr::new(192, 168, 1, 3));
        let mut h = Hints::default();
        assert_eq!(h.push(ue, moved("edge-y", 1), 10), Queued::New);
        assert_eq!(h.push(other, moved("edge-y", 2), 15), Queued::New);
        assert_eq!(h.push(ue, moved("edge-x", 3), 20), Queued::Coalesced(2));
        assert_eq!(h.push(ue, moved("edge-z", 4), 30), Queued::Coalesced(3));
        assert_eq!(h.len(), 2);
        let hint = h.take(ue).expect("queued");
        assert_eq!(hint.count, 3);
        assert_eq!(hint.first_us, 10, "from the first notification");
        assert_eq!(hint.latest, moved("edge-z", 4), "the latest wins");
        assert!(!h.has(ue) && h.take(ue).is_none());
        assert_eq!(
            h.push(ue, moved("edge-y", 5), 40),
            Queued::New,
            "a fresh start"
        );
        assert!(h.has(other));
    }
}

//! An in-memory [`FlowProgrammer`] for unit tests: keeps the flow table, records what was applied
//! and the packets sent, fails on request and can take (simulated) time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{FlowError, FlowProgrammer, FlowReport, FlowRule, FlowSet, InstalledFlows, PacketOut};

/// A switch in memory. Clones share one table, so a test keeps a clone to look at what the code
/// under test installed.
///
/// Like a switch, a set takes effect as a whole: its deletions (by cookie), then its additions (an
/// addition replaces a flow with the same priority and match, as OFPFC_ADD does), then its packets
/// are "sent" (recorded, see [`FakeProgrammer::packets_out`]). An empty set succeeds at once,
/// without delay or injected failure, and is recorded like any other.
#[derive(Debug, Clone, Default)]
pub struct FakeProgrammer {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    installed: Vec<FlowRule>,
    applied: Vec<FlowSet>,
    packets_out: Vec<PacketOut>,
    attempts: Vec<String>,
    failures: Vec<String>,
    delay: Duration,
}

impl State {
    /// `set`'s deletions (by cookie), then its additions (each replacing a flow with the same
    /// priority and match, as OFPFC_ADD does).
    fn take_effect(&mut self, set: &FlowSet) {
        for d in &set.delete {
            self.installed.retain(|r| r.cookie != d.cookie);
        }
        for r in &set.add {
            self.installed
                .retain(|old| !(old.priority == r.priority && old.matches == r.matches));
            self.installed.push(r.clone());
        }
    }
}

impl FakeProgrammer {
    /// An empty switch that applies sets at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty switch that takes `delay` per (non-empty) set, measured on tokio's clock so a test
    /// with a paused clock sees exactly `delay`.
    pub fn with_delay(delay: Duration) -> Self {
        let fake = Self::default();
        fake.set_delay(delay);
        fake
    }

    /// Changes the time each non-empty set takes from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Makes the next set whose label contains `label_contains` fail with
    /// [`FlowError::Injected`], leaving the table unchanged. Several calls queue several failures.
    pub fn fail_next(&self, label_contains: &str) {
        self.lock().failures.push(label_contains.to_owned());
    }

    /// Puts `set` on the switch as someone else would (`ovs-ofctl`): no delay, no injected
    /// failure, not recorded among the sets applied.
    pub fn seed(&self, set: &FlowSet) {
        self.lock().take_effect(set);
    }

    /// The sets applied successfully, in order.
    pub fn applied(&self) -> Vec<FlowSet> {
        self.lock().applied.clone()
    }

    /// The packets sent by the sets applied successfully, in order.
    pub fn packets_out(&self) -> Vec<PacketOut> {
        self.lock().packets_out.clone()
    }

    /// The labels of every set `apply` was called with, failed ones included, in order.
    pub fn attempts(&self) -> Vec<String> {
        self.lock().attempts.clone()
    }

    /// The flows installed now, in the order they were added.
    pub fn installed(&self) -> Vec<FlowRule> {
        self.lock().installed.clone()
    }

    /// The installed flows with `cookie`.
    pub fn installed_with_cookie(&self, cookie: u64) -> Vec<FlowRule> {
        self.lock()
            .installed
            .iter()
            .filter(|r| r.cookie == cookie)
            .cloned()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent data: every update below
        // is completed before the guard is dropped.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl FlowProgrammer for FakeProgrammer {
    async fn apply(&self, set: &FlowSet) -> Result<FlowReport, FlowError> {
        let start = tokio::time::Instant::now();
        let delay = {
            let mut st = self.lock();
            st.attempts.push(set.label.clone());
            if set.is_empty() {
                st.applied.push(set.clone());
                return Ok(FlowReport {
                    flow_mods: 0,
                    took: Duration::ZERO,
                });
            }
            st.delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = self.lock();
        if let Some(i) = st
            .failures
            .iter()
            .position(|f| set.label.contains(f.as_str()))
        {
            let f = st.failures.remove(i);
            return Err(FlowError::Injected(format!(
                "set `{}` (told to fail sets matching `{f}`)",
                set.label
            )));
        }
        st.take_effect(set);
        st.packets_out.extend(set.packets.iter().cloned());
        st.applied.push(set.clone());
        Ok(FlowReport {
            flow_mods: set.delete.len() + set.add.len(),
            took: start.elapsed(),
        })
    }

    async fn flows(&self) -> Result<InstalledFlows, FlowError> {
        let st = self.lock();
        Ok(InstalledFlows {
            rules: st
                .installed
                .iter()
                .filter(|r| super::rules::is_smo_cookie(r.cookie))
                .cloned()
                .collect(),
            unreadable: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::rules::{
        cleanup_source, new_path_target, relocation_cookie, service_cookie, trombone_source,
        trombone_target, EdgePorts, ServiceAt,
    };
    use crate::routing::Mac;
    use std::net::Ipv4Addr;

    const SVC: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 10);
    const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    const MAC: Mac = Mac([2, 0x20, 0, 0, 0, 0x0a]);

    fn svc() -> ServiceAt {
        ServiceAt {
            ip: SVC,
            mac: MAC,
            port: "srv".into(),
        }
    }

    #[tokio::test]
    async fn installs_swaps_and_cleans_up_by_cookie() {
        let fake = FakeProgrammer::new();
        let view = fake.clone();
        let ports = EdgePorts::testbed();
        let cookie = relocation_cookie(1);

        let r = fake
            .apply(&trombone_target(cookie, &ports, SVC, MAC, UE))
            .await
            .expect("install");
        assert_eq!(r.flow_mods, 3, "packets are not flow mods");
        assert_eq!(view.installed_with_cookie(cookie).len(), 3);
        assert_eq!(
            view.packets_out(),
            [PacketOut {
                port: "n6".into(),
                data: crate::routing::rules::arp_announce(SVC, MAC),
            }]
        );

        let r = fake
            .apply(&new_path_target(cookie, &ports, &svc()))
            .await
            .expect("swap");
        assert_eq!(r.flow_mods, 3);
        assert!(view.installed_with_cookie(cookie).is_empty());
        assert_eq!(view.installed_with_cookie(service_cookie(SVC)).len(), 2);

        fake.apply(&trombone_source(cookie, &ports, &svc(), UE))
            .await
            .expect("source");
        assert_eq!(view.installed().len(), 4);
        fake.apply(&cleanup_source(cookie, SVC))
            .await
            .expect("cleanup");
        assert!(view.installed().is_empty());
        assert_eq!(
            view.packets_out().len(),
            1,
            "only the target's trombone announces"
        );
        let labels: Vec<String> = view.applied().into_iter().map(|s| s.label).collect();
        assert_eq!(
            labels,
            [
                "trombone-target",
                "new-path-target",
                "trombone-source",
                "cleanup-source"
            ]
        );
    }

    #[tokio::test]
    async fn an_add_replaces_the_same_match_and_priority() {
        let fake = FakeProgrammer::new();
        let set = trombone_source(relocation_cookie(1), &EdgePorts::testbed(), &svc(), UE);
        fake.apply(&set).await.expect("first");
        fake.apply(&set).await.expect("again");
        assert_eq!(fake.installed(), set.add);
    }

    #[tokio::test]
    async fn injected_failure_applies_nothing_and_fires_once() {
        let fake = FakeProgrammer::new();
        fake.fail_next("target");
        let source = trombone_source(relocation_cookie(1), &EdgePorts::testbed(), &svc(), UE);
        fake.apply(&source)
            .await
            .expect("labels without `target` pass");
        let target = trombone_target(relocation_cookie(1), &EdgePorts::testbed(), SVC, MAC, UE);
        let err = fake.apply(&target).await.expect_err("injected");
        assert!(matches!(err, FlowError::Injected(ref m) if m.contains("trombone-target")));
        assert_eq!(fake.installed(), source.add, "the failed set left no trace");
        assert!(fake.packets_out().is_empty(), "and sent nothing");
        assert_eq!(fake.applied().len(), 1);
        assert_eq!(
            fake.attempts(),
            ["trombone-source", "trombone-target"],
            "attempts include the failure"
        );
        fake.apply(&target).await.expect("only one failure queued");
        assert_eq!(fake.installed().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_runs_on_the_tokio_clock() {
        let fake = FakeProgrammer::with_delay(Duration::from_millis(3));
        let set = cleanup_source(relocation_cookie(1), SVC);
        let t0 = tokio::time::Instant::now();
        let r = fake.apply(&set).await.expect("apply");
        assert_eq!(r.took, Duration::from_millis(3));
        assert_eq!(t0.elapsed(), Duration::from_millis(3));

        let empty = FlowSet {
            label: "nothing".into(),
            ..FlowSet::default()
        };
        let r = fake.apply(&empty).await.expect("empty");
        assert_eq!((r.flow_mods, r.took), (0, Duration::ZERO));
        assert_eq!(t0.elapsed(), Duration::from_millis(3), "no delay for empty");
    }

    #[tokio::test(start_paused = true)]
    async fn failure_is_injected_after_the_delay() {
        let fake = FakeProgrammer::with_delay(Duration::from_millis(5));
        fake.fail_next("cleanup");
        let t0 = tokio::time::Instant::now();
        let err = fake
            .apply(&cleanup_source(relocation_cookie(1), SVC))
            .await
            .expect_err("injected");
        assert!(matches!(err, FlowError::Injected(_)));
        assert_eq!(t0.elapsed(), Duration::from_millis(5));
    }
}

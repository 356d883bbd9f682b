//! A fake [`Runtime`] for the unit tests (STYLE.md item 4): services are entries in a shared
//! [`World`] that knows, for every edge, which copy of which service exists and whether it runs.
//! The real runtimes are tested against the real tools in `tests/privileged_*.rs`; this one lets
//! every path of the move protocol run through the real [`crate::driver::Driver`] without root,
//! over an in-memory connection, on a paused clock.
//!
//! A [`Script`] makes a step fail (or fail leaving the service in a given state), or hang (a
//! hung target is a silent peer; the test may then abort its task: a crashed module). Each
//! scripted act happens once. Steps take the times in [`Script::takes`] (on the paused clock:
//! exact), and the images move for real (one file).

use crate::container::EdgeSite;
use crate::error::RuntimeError;
use crate::runtime::{
    CheckpointError, Checkpointed, Config, Found, Left, Leg, Resumed, Runtime, Transport,
};
use crate::service::{Fault, ServiceSpec, Strategy};
use model::smo::{RelocationType, Service};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Where a copy of a service is in its life at one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// Serving.
    Running,
    /// Checkpointed (source) or restored and not yet live (target): silent.
    Stopped,
    /// A container made for an incoming service (target, before its restore): silent.
    Made,
}

/// A step of the fake runtime a script can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Offer,
    Checkpoint,
    Resume,
    Complete,
    Accept,
    Restore,
    GoLive,
    Abort,
    Settle,
}

/// What a scripted step does instead of its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Fail,
    /// The checkpoint fails and leaves the service so.
    FailLeaving(Left),
    /// Pull: the restore fails after (`true`) or before (`false`) the source's service stopped.
    FailPull {
        stopped_source: bool,
    },
    /// Never returns (a silent peer; the test may abort the task: a crash).
    Hang,
    /// Does its work, then never returns (a crash right after the step).
    HangAfter,
}

/// Scripted acts and step times.
#[derive(Debug, Default)]
pub struct Script {
    pub acts: HashMap<(String, Step), Act>,
    pub takes: HashMap<Step, Duration>,
}

/// Every edge's copies, and what happened, in order.
#[derive(Debug, Default)]
pub struct World {
    copies: Mutex<HashMap<(String, String), Copy>>,
    log: Mutex<Vec<String>>,
    script: Mutex<Script>,
    /// Notified whenever a step hangs.
    pub hung: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    /// Makes `step` at `edge` act so, once.
    pub fn script(&self, edge: &str, step: Step, act: Act) {
        lock(&self.script).acts.insert((edge.to_owned(), step), act);
    }

    /// Makes `step` take `d` (everywhere).
    pub fn takes(&self, step: Step, d: Duration) {
        lock(&self.script).takes.insert(step, d);
    }

    /// The edges where `service_id` runs.
    pub fn running(&self, service_id: &str) -> Vec<String> {
        let mut edges: Vec<String> = lock(&self.copies)
            .iter()
            .filter(|((_, id), c)| id == service_id && **c == Copy::Running)
            .map(|((edge, _), _)| edge.clone())
            .collect();
        edges.sort();
        edges
    }

    /// Every copy of `service_id`, by edge.
    pub fn copies(&self, service_id: &str) -> Vec<(String, Copy)> {
        let mut all: Vec<(String, Copy)> = lock(&self.copies)
            .iter()
            .filter(|((_, id), _)| id == service_id)
            .map(|((edge, _), c)| (edge.clone(), *c))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// What happened, in order (`"<edge> <what>"`).
    pub fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// Notes an event (the tests' arrival hooks use it too).
    pub fn note(&self, what: impl Into<String>) {
        lock(&self.log).push(what.into());
    }

    fn set(&self, edge: &str, id: &str, copy: Option<Copy>) {
        let key = (edge.to_owned(), id.to_owned());
        let mut copies = lock(&self.copies);
        match copy {
            Some(c) => {
                copies.insert(key, c);
            }
            None => {
                copies.remove(&key);
            }
        }
    }

    fn get(&self, edge: &str, id: &str) -> Option<Copy> {
        lock(&self.copies)
            .get(&(edge.to_owned(), id.to_owned()))
            .copied()
    }

    /// A copy of `id` at another edge than `edge`.
    fn elsewhere(&self, edge: &str, id: &str) -> Option<String> {
        lock(&self.copies)
            .keys()
            .find(|(e, i)| e != edge && i == id)
            .map(|(e, _)| e.clone())
    }
}

/// The fake runtime's options: its edge's name is the site's; the shared world.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub world: Arc<World>,
}

/// A fake runtime moving images (`PULL = false`, like CRIU and LXC) or pulled (like LXD).
#[derive(Debug)]
pub struct Fake<const PULL: bool> {
    cfg: Config<FakeOptions>,
}

/// A fake container: a service's copy at an edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeContainer {
    pub edge: String,
    pub service_id: String,
}

/// The image the fake checkpoint writes and its restore checks.
const IMAGE: &str = "core-1.img";

impl<const PULL: bool> Fake<PULL> {
    fn edge(&self) -> &str {
        &self.cfg.site.edge
    }

    fn world(&self) -> &World {
        &self.cfg.runtime.world
    }

    /// Takes the step's time, then its scripted act (if any): `Some` replaces the work.
    async fn enter(&self, step: Step) -> Option<Act> {
        let (takes, act) = {
            let mut s = lock(&self.world().script);
            (
                s.takes.get(&step).copied(),
                s.acts.remove(&(self.edge().to_owned(), step)),
            )
        };
        if let Some(d) = takes {
            tokio::time::sleep(d).await;
        }
        self.world().note(format!("{} {step:?}", self.edge()));
        if act == Some(Act::Hang) {
            self.hang().await;
        }
        act
    }

    async fn hang(&self) {
        self.world().note(format!("{} hangs", self.edge()));
        self.world().hung.notify_one();
        std::future::pending::<()>().await;
    }

    fn failed(&self, step: Step) -> RuntimeError {
        RuntimeError::State(format!("scripted: {step:?} fails at {}", self.edge()))
    }
}

/// Edge `edge` as the fake sees it (nothing of it exists).
pub fn site(edge: &str) -> EdgeSite {
    serde_json::from_value(json!({
        "edge": edge, "netns": format!("tf-edge-{edge}"), "bridge": format!("br-{edge}"),
        "ovs_dir": format!("/nonexistent/ovs-{edge}")
    }))
    .unwrap_or_else(|e| panic!("site {edge}: {e}"))
}

/// A valid service of relocation type `rt`.
pub fn service(id: &str, rt: RelocationType) -> Service {
    Service {
        service_id: id.into(),
        ipv4_addr: Ipv4Addr::new(20, 0, 0, 50),
        mac_addr: "02:00:00:00:00:50".into(),
        ovs_port: format!("s-{id}"),
        relocation_type: rt,
        resource_requirements: Default::default(),
        ue_ipv4_addrs: vec![],
    }
}

impl<const PULL: bool> Runtime for Fake<PULL> {
    type Options = FakeOptions;
    type Container = FakeContainer;
    type Outgoing = ();
    type Incoming = ();

    const RELOCATION_TYPE: RelocationType = RelocationType::Test;
    const TRANSPORT: Transport = if PULL {
        Transport::Pull
    } else {
        Transport::Images
    };

    fn new(cfg: Config<FakeOptions>) -> Self {
        Self { cfg }
    }

    fn config(&self) -> &Config<FakeOptions> {
        &self.cfg
    }

    fn supports(strategy: Strategy) -> bool {
        !PULL || strategy == Strategy::StopAndCopy
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        _service: &Service,
    ) -> Result<FakeContainer, RuntimeError> {
        self.world()
            .set(self.edge(), &spec.service_id, Some(Copy::Running));
        Ok(FakeContainer {
            edge: self.edge().to_owned(),
            service_id: spec.service_id.clone(),
        })
    }

    async fn destroy(&self, c: &FakeContainer) -> Result<(), RuntimeError> {
        self.world().note(format!("{} destroy", self.edge()));
        self.world().set(&c.edge, &c.service_id, None);
        Ok(())
    }

    fn peers(_c: &FakeContainer) -> Result<Vec<Ipv4Addr>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn offer(
        &self,
        leg: &Leg,
        strategy: Strategy,
        c: &FakeContainer,
    ) -> Result<((), Value), RuntimeError> {
        if self.enter(Step::Offer).await.is_some() {
            return Err(self.failed(Step::Offer));
        }
        if self.world().get(&c.edge, &c.service_id) != Some(Copy::Running) {
            return Err(RuntimeError::State("not running".into()));
        }
        Ok((
            (),
            json!({"fake": leg.service.service_id, "strategy": strategy}),
        ))
    }

    async fn withdraw(&self, _out: ()) {
        self.world().note(format!("{} withdraw", self.edge()));
    }

    async fn checkpoint(
        &self,
        leg: &Leg,
        _out: &mut (),
        c: &mut FakeContainer,
    ) -> Result<Checkpointed, CheckpointError> {
        let act = self.enter(Step::Checkpoint).await;
        if let Some(Act::FailLeaving(left)) = act {
            let copy = match left {
                Left::Running => Some(Copy::Running),
                Left::Stopped => Some(Copy::Stopped),
                Left::Gone => None,
            };
            self.world().set(&c.edge, &c.service_id, copy);
            return Err(CheckpointError {
                left,
                source: self.failed(Step::Checkpoint),
            });
        }
        if PULL {
            // The pull stops the service.
            return Ok(Checkpointed::default());
        }
        let image = format!("image of {}", c.service_id).repeat(100);
        std::fs::write(leg.images().join(IMAGE), &image).map_err(|source| CheckpointError {
            left: Left::Running,
            source: RuntimeError::Io {
                path: leg.images(),
                source,
            },
        })?;
        self.world()
            .set(&c.edge, &c.service_id, Some(Copy::Stopped));
        if act == Some(Act::HangAfter) {
            self.hang().await;
        }
        Ok(Checkpointed {
            image_bytes: image.len() as u64,
        })
    }

    async fn moved_bytes(&self, _out: &()) -> Option<u64> {
        Some(1234)
    }

    async fn resume_at_source(
        &self,
        _leg: &Leg,
        _out: (),
        c: &mut FakeContainer,
    ) -> Result<Resumed, RuntimeError> {
        if self.enter(Step::Resume).await.is_some() {
            return Err(self.failed(Step::Resume));
        }
        match self.world().get(&c.edge, &c.service_id) {
            Some(Copy::Running) => Ok(Resumed::Untouched),
            Some(_) => {
                self.world()
                    .set(&c.edge, &c.service_id, Some(Copy::Running));
                Ok(Resumed::Restored)
            }
            None => Err(RuntimeError::State("nothing to resume".into())),
        }
    }

    async fn complete(&self, _out: &mut ()) -> Result<(), RuntimeError> {
        match self.enter(Step::Complete).await {
            Some(_) => Err(self.failed(Step::Complete)),
            None => Ok(()),
        }
    }

    async fn give_up(&self, _out: ()) {
        self.world().note(format!("{} give up", self.edge()));
    }

    async fn accept(&self, leg: &Leg, offer: Value) -> Result<((), FakeContainer), RuntimeError> {
        if self.enter(Step::Accept).await.is_some() {
            return Err(self.failed(Step::Accept));
        }
        let id = &leg.service.service_id;
        if offer["fake"] != json!(id) {
            return Err(RuntimeError::Offer(format!(
                "not an offer of {id}: {offer}"
            )));
        }
        self.world().set(self.edge(), id, Some(Copy::Made));
        Ok((
            (),
            FakeContainer {
                edge: self.edge().to_owned(),
                service_id: id.clone(),
            },
        ))
    }

    async fn inject(&self, _leg: &Leg, _in: &mut (), fault: Fault) -> Result<bool, RuntimeError> {
        self.world().note(format!("{} fault {fault}", self.edge()));
        self.world().script(self.edge(), Step::Restore, Act::Fail);
        Ok(true)
    }

    async fn restore(
        &self,
        leg: &Leg,
        _in: &mut (),
        c: &mut FakeContainer,
    ) -> Result<(), RuntimeError> {
        let act = self.enter(Step::Restore).await;
        let source = self.world().elsewhere(self.edge(), &c.service_id);
        if PULL {
            let stop_source = !matches!(
                act,
                Some(Act::FailPull {
                    stopped_source: false
                })
            );
            if let (true, Some(s)) = (stop_source, &source) {
                self.world().set(s, &c.service_id, Some(Copy::Stopped));
            }
            if act.is_some_and(|a| a != Act::HangAfter) {
                return Err(self.failed(Step::Restore));
            }
            self.world()
                .set(&c.edge, &c.service_id, Some(Copy::Running));
        } else {
            if act.is_some_and(|a| a != Act::HangAfter) {
                return Err(self.failed(Step::Restore));
            }
            let image = std::fs::read_to_string(leg.images().join(IMAGE)).unwrap_or_default();
            if image != format!("image of {}", c.service_id).repeat(100) {
                return Err(RuntimeError::State(format!(
                    "bad image: {} bytes",
                    image.len()
                )));
            }
            self.world()
                .set(&c.edge, &c.service_id, Some(Copy::Stopped));
        }
        if act == Some(Act::HangAfter) {
            self.hang().await;
        }
        Ok(())
    }

    async fn go_live(&self, _in: &mut (), c: &mut FakeContainer) -> Result<(), RuntimeError> {
        let act = self.enter(Step::GoLive).await;
        if act.is_some_and(|a| a != Act::HangAfter) {
            return Err(self.failed(Step::GoLive));
        }
        self.world()
            .set(&c.edge, &c.service_id, Some(Copy::Running));
        if act == Some(Act::HangAfter) {
            self.hang().await;
        }
        Ok(())
    }

    async fn abort(&self, _in: ()) {
        self.enter(Step::Abort).await;
    }

    async fn survey(&self) -> Result<Vec<Found<FakeContainer>>, RuntimeError> {
        let mine: Vec<(String, Copy)> = lock(&self.world().copies)
            .iter()
            .filter(|((edge, _), _)| edge == self.edge())
            .map(|((_, id), c)| (id.clone(), *c))
            .collect();
        Ok(mine
            .into_iter()
            .map(|(id, copy)| Found {
                service: Some(service(&id, RelocationType::Test)),
                container: FakeContainer {
                    edge: self.edge().to_owned(),
                    service_id: id.clone(),
                },
                service_id: id,
                running: copy == Copy::Running,
            })
            .collect())
    }

    async fn resume_interrupted(
        &self,
        leg: &Leg,
        c: &mut FakeContainer,
    ) -> Result<(), RuntimeError> {
        self.world()
            .note(format!("{} resume interrupted", self.edge()));
        let image = std::fs::read_to_string(leg.images().join(IMAGE)).unwrap_or_default();
        if image != format!("image of {}", c.service_id).repeat(100) {
            return Err(RuntimeError::State("no images".into()));
        }
        self.world()
            .set(&c.edge, &c.service_id, Some(Copy::Running));
        Ok(())
    }

    async fn settle(&self, _in: ()) -> Option<Duration> {
        self.enter(Step::Settle).await;
        None
    }
}

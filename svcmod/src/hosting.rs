//! What a module keeps about the services it hosts, and small helpers the driver and the
//! runtimes share: the service table with its lifecycle guard, the arrival hook's and the
//! fault's slots, the set of source containers being removed in the background, blocking system
//! work off the async threads, per-move work directories.

use crate::backend::{ArrivalHook, ARRIVAL_LIMIT};
use crate::container;
use crate::error::{BackendError, MigrationError, RuntimeError};
use crate::service::{Fault, MigrationReport, ServiceState};
use model::smo::{RelocationType, Service};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// One hosted service and its container (`C`: the backend's own).
#[derive(Debug, Clone)]
pub struct Hosted<C> {
    pub service: Service,
    pub container: C,
    pub state: ServiceState,
}

/// The services of one module. Every update is one statement under the lock, so a poisoned
/// lock (a panic elsewhere) still guards a consistent table and is used as is.
#[derive(Debug)]
pub struct Hosting<C> {
    table: Mutex<Table<C>>,
    /// Services whose source container is being removed in the background.
    leaving: Arc<Mutex<HashSet<String>>>,
}

#[derive(Debug)]
struct Table<C> {
    hosted: HashMap<String, Hosted<C>>,
    /// Ids being created or received (not listed, not movable).
    reserved: HashSet<String>,
}

impl<C> Default for Hosting<C> {
    fn default() -> Self {
        Self {
            table: Mutex::new(Table {
                hosted: HashMap::new(),
                reserved: HashSet::new(),
            }),
            leaving: Arc::default(),
        }
    }
}

impl<C: Clone> Hosting<C> {
    fn table(&self) -> MutexGuard<'_, Table<C>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `service_id` for a service being created or received.
    pub fn reserve(&self, service_id: &str) -> Result<(), BackendError> {
        let mut t = self.table();
        if t.hosted.contains_key(service_id) || t.reserved.contains(service_id) {
            return Err(BackendError::AlreadyHosted {
                service_id: service_id.to_owned(),
            });
        }
        t.reserved.insert(service_id.to_owned());
        Ok(())
    }

    /// Gives a reservation up (the creation or reception failed).
    pub fn unreserve(&self, service_id: &str) {
        self.table().reserved.remove(service_id);
    }

    /// Enters a running service (ending its reservation).
    pub fn install(&self, service: Service, container: C) {
        let mut t = self.table();
        t.reserved.remove(&service.service_id);
        t.hosted.insert(
            service.service_id.clone(),
            Hosted {
                service,
                container,
                state: ServiceState::Running,
            },
        );
    }

    /// A hosted service.
    pub fn get(&self, service_id: &str) -> Option<Hosted<C>> {
        self.table().hosted.get(service_id).cloned()
    }

    /// The ids of every hosted service.
    pub fn ids(&self) -> Vec<String> {
        self.table().hosted.keys().cloned().collect()
    }

    /// The services in `state`.
    /// GetServices: the running services sorted by id, each with the UEs it serves now — the
    /// peers of its established TCP connections (`peers`, which reads the container's sockets:
    /// blocking work, done off the runtime).
    pub async fn running_services<E: Send + 'static>(
        &self,
        peers: fn(&C) -> Result<Vec<std::net::Ipv4Addr>, E>,
    ) -> Result<Vec<Service>, RuntimeError>
    where
        C: Send + 'static,
    {
        let running = self.in_state(ServiceState::Running);
        let mut services = blocking(move || {
            running
                .into_iter()
                .map(|h| {
                    let mut s = h.service;
                    s.ue_ipv4_addrs = peers(&h.container)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|a| *a != s.ipv4_addr)
                        .collect();
                    s
                })
                .collect::<Vec<_>>()
        })
        .await?;
        services.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        Ok(services)
    }

    pub fn in_state(&self, state: ServiceState) -> Vec<Hosted<C>> {
        self.table()
            .hosted
            .values()
            .filter(|h| h.state == state)
            .cloned()
            .collect()
    }

    /// Marks a running service as migrating out and returns it; refuses one that is not
    /// running (or unknown).
    pub fn begin_migration(&self, service_id: &str) -> Result<Hosted<C>, BackendError> {
        let mut t = self.table();
        let h = t
            .hosted
            .get_mut(service_id)
            .ok_or_else(|| BackendError::UnknownService {
                service_id: service_id.to_owned(),
            })?;
        if !h.state.can_migrate() {
            return Err(BackendError::Busy {
                service_id: service_id.to_owned(),
                state: h.state,
            });
        }
        h.state = ServiceState::MigratingOut;
        Ok(h.clone())
    }

    /// Ends a migration out: the service left (`None`: removed from the table) or stays, running,
    /// in `container`.
    pub fn end_migration(&self, service_id: &str, stays: Option<C>) {
        let mut t = self.table();
        match stays {
            None => {
                t.hosted.remove(service_id);
            }
            Some(container) => {
                if let Some(h) = t.hosted.get_mut(service_id) {
                    h.state = ServiceState::Running;
                    h.container = container;
                }
            }
        }
    }

    /// One outgoing migration of service `service_id`: marks it migrating ([`Self::begin_migration`];
    /// refused → [`MigrationError::NotStarted`]), runs `run` on the service and its container, and
    /// ends it ([`Self::end_migration`]): the container stays, running, when the error says the
    /// service is still at the source; otherwise the service leaves the table.
    pub async fn migrate_out(
        &self,
        service_id: &str,
        run: impl AsyncFnOnce(Service, &mut C) -> Result<MigrationReport, MigrationError>,
    ) -> Result<MigrationReport, MigrationError> {
        let hosted = self
            .begin_migration(service_id)
            .map_err(|e| MigrationError::NotStarted {
                service_id: service_id.to_owned(),
                cause: e.into(),
            })?;
        let mut container = hosted.container;
        let result = run(hosted.service, &mut container).await;
        let stays = result.as_ref().err().is_some_and(|e| e.service_at_source());
        self.end_migration(service_id, stays.then_some(container));
        result
    }

    /// Takes a running service out of the table for removal; refuses one that is busy.
    pub fn take_for_removal(&self, service_id: &str) -> Result<Hosted<C>, BackendError> {
        let mut t = self.table();
        match t.hosted.get(service_id).map(|h| h.state) {
            None => Err(BackendError::UnknownService {
                service_id: service_id.to_owned(),
            }),
            Some(state) if !state.can_migrate() => Err(BackendError::Busy {
                service_id: service_id.to_owned(),
                state,
            }),
            Some(_) => t
                .hosted
                .remove(service_id)
                .ok_or_else(|| BackendError::UnknownService {
                    service_id: service_id.to_owned(),
                }),
        }
    }

    /// Records that `service_id`'s source container is being removed in the background; the
    /// guard ends the record when dropped.
    pub fn leaving(&self, service_id: &str) -> LeavingGuard {
        self.leaving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service_id.to_owned());
        LeavingGuard {
            set: Arc::clone(&self.leaving),
            service_id: service_id.to_owned(),
        }
    }

    /// Waits (at most `limit`) until no background removal of `service_id` (or of any service,
    /// for `None`) runs; whether none does.
    pub async fn wait_removed(&self, service_id: Option<&str>, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let busy = {
                let l = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
                match service_id {
                    Some(id) => l.contains(id),
                    None => !l.is_empty(),
                }
            };
            if !busy {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the background removals (shutdown, tests).
    pub async fn settle(&self) {
        if !self.wait_removed(None, Duration::from_secs(30)).await {
            let left = self
                .leaving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            tracing::warn!(?left, "background removals still running");
        }
    }
}

/// Ends a background removal's record when dropped.
#[derive(Debug)]
pub struct LeavingGuard {
    set: Arc<Mutex<HashSet<String>>>,
    service_id: String,
}

impl Drop for LeavingGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.service_id);
    }
}

/// The [`ArrivalHook`], if one was installed.
#[derive(Default)]
pub struct ArrivalSlot(Mutex<Option<ArrivalHook>>);

impl std::fmt::Debug for ArrivalSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().map(|h| h.is_some()).unwrap_or(false);
        f.debug_struct("ArrivalSlot").field("set", &set).finish()
    }
}

impl ArrivalSlot {
    /// Installs the hook.
    pub fn set(&self, hook: ArrivalHook) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Calls the hook (if any) for a service about to resume here, at most [`ARRIVAL_LIMIT`].
    pub async fn report(&self, relocation_id: &str, service_id: &str) {
        let Some(hook) = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let call = hook(relocation_id.to_owned(), service_id.to_owned());
        if tokio::time::timeout(ARRIVAL_LIMIT, call).await.is_err() {
            tracing::warn!(
                relocation = %relocation_id, service = %service_id,
                limit_ms = ARRIVAL_LIMIT.as_millis(),
                "arrival not reported in time: resuming anyway"
            );
        }
    }
}

/// A fault armed for the next migration it concerns (`POST /svcmod/v1/faults`).
#[derive(Debug, Default)]
pub struct FaultSlot(Mutex<Option<Fault>>);

impl FaultSlot {
    /// Arms `fault`.
    pub fn arm(&self, fault: Fault) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault);
    }

    /// Takes the armed fault if it is `fault`.
    pub fn take(&self, fault: Fault) -> bool {
        let mut armed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *armed == Some(fault) {
            *armed = None;
            true
        } else {
            false
        }
    }
}

/// [`Fault::CorruptImages`]: overwrites the start of every task's core image, so CRIU's restore
/// really fails on them.
pub fn damage_images(images: &Path) -> Result<(), RuntimeError> {
    let io = |source| RuntimeError::Io {
        path: images.to_owned(),
        source,
    };
    let mut damaged = 0;
    for entry in std::fs::read_dir(images).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("core-") && name.ends_with(".img") {
            std::fs::write(&path, b"not a CRIU image").map_err(io)?;
            damaged += 1;
        }
    }
    tracing::warn!(images = %images.display(), damaged, "fault: core images damaged before the restore");
    Ok(())
}

/// Runs blocking system work (ip, ovs-vsctl, ethtool, lxc-*, waits for PIDs) off the runtime's
/// threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(RuntimeError::Task)
}

/// [`blocking`] work that can fail with a layer's error.
pub async fn blocking_try<T: Send + 'static, E: Into<RuntimeError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, RuntimeError> {
    blocking(f).await?.map_err(Into::into)
}

/// A relocation id as a file-name component.
pub fn path_safe(id: &str) -> String {
    let s: String = id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        s
    }
}

/// Makes `dir` empty (removing what was there).
pub fn fresh_dir(dir: &Path) -> Result<(), RuntimeError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Checks a service a source module sends to a module of `relocation_type` (its `Prepare`): the
/// type matches, the id and MAC are valid, the OVS port is the one its id names (`s-<id>`).
pub fn check_incoming(
    service: &Service,
    relocation_type: RelocationType,
) -> Result<(), BackendError> {
    if service.relocation_type != relocation_type {
        return Err(BackendError::BadRequest(format!(
            "service {} has relocation type {}, this module is {relocation_type}",
            service.service_id, service.relocation_type
        )));
    }
    container::validate_service_id(&service.service_id)?;
    container::validate_mac(&service.mac_addr)?;
    let port = container::ovs_port_name(&service.service_id)?;
    if service.ovs_port != port {
        return Err(BackendError::BadRequest(format!(
            "service {} has OVS port {}, expected {port}",
            service.service_id, service.ovs_port
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::smo::RelocationType;

    fn service(id: &str) -> Service {
        crate::fake::service(id, RelocationType::Lxc)
    }

    #[test]
    fn relocation_ids_become_safe_path_components() {
        assert_eq!(path_safe("rel-1_a.b"), "rel-1_a.b");
        assert_eq!(path_safe("../../etc"), ".._.._etc");
        assert_eq!(path_safe(".."), "_");
        assert_eq!(path_safe(""), "_");
        assert_eq!(path_safe(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn the_table_guards_the_lifecycle() {
        let h: Hosting<u32> = Hosting::default();
        h.reserve("a").expect("free");
        assert!(matches!(
            h.reserve("a"),
            Err(BackendError::AlreadyHosted { .. })
        ));
        assert!(
            h.in_state(ServiceState::Running).is_empty(),
            "reserved ids are not listed"
        );
        h.install(service("a"), 1);
        assert!(h.reserve("a").is_err());
        let moving = h.begin_migration("a").expect("running");
        assert_eq!(moving.container, 1);
        assert!(matches!(
            h.begin_migration("a"),
            Err(BackendError::Busy { .. })
        ));
        assert!(matches!(
            h.take_for_removal("a"),
            Err(BackendError::Busy { .. })
        ));
        h.end_migration("a", Some(2));
        assert_eq!(
            h.get("a").map(|x| (x.container, x.state)),
            Some((2, ServiceState::Running))
        );
        h.begin_migration("a").expect("running again");
        h.end_migration("a", None);
        assert!(h.get("a").is_none());
        assert!(matches!(
            h.begin_migration("a"),
            Err(BackendError::UnknownService { .. })
        ));
        h.install(service("b"), 3);
        assert_eq!(h.take_for_removal("b").map(|x| x.container).ok(), Some(3));
        assert!(h.ids().is_empty());
    }

    #[test]
    fn a_fault_is_taken_once() {
        let f = FaultSlot::default();
        assert!(!f.take(Fault::CorruptImages));
        f.arm(Fault::CorruptImages);
        assert!(f.take(Fault::CorruptImages));
        assert!(!f.take(Fault::CorruptImages));
    }

    #[tokio::test]
    async fn background_removals_are_awaited() {
        let h: Hosting<()> = Hosting::default();
        let guard = h.leaving("a");
        assert!(!h.wait_removed(Some("a"), Duration::from_millis(20)).await);
        assert!(h.wait_removed(Some("b"), Duration::ZERO).await);
        drop(guard);
        assert!(h.wait_removed(None, Duration::ZERO).await);
    }
}

//! What a running testbed made, persisted under `/run/testbed/<name>/state.json` after every step, so
//! `testbed down` can remove it all, also after a crash half-way through `up`.

use netkit::process::Started;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::plan::{Plan, STATE_ROOT};
use crate::scenario::{Notify as NotifyWhen, ServiceSpec as ScenarioService};
use crate::spec::TopologySpec;

/// A process started by the testbed, and the node it runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProcess {
    pub node: String,
    #[serde(flatten)]
    pub process: Started,
    /// Times the supervisor started it again after it died ([`crate::supervise`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The persisted state of one testbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub spec: TopologySpec,
    /// Seconds since the Unix epoch when `up` began.
    pub started_at: u64,
    /// Whether `up` finished.
    pub complete: bool,
    /// Namespaces made so far, in creation order.
    pub netns: Vec<String>,
    /// Processes started so far.
    pub processes: Vec<NodeProcess>,
    /// The deployment's SBI bearer token (absent when no network functions run).
    #[serde(default)]
    pub token: Option<String>,
    /// The services `up` was asked for instead of the default (`stream1`), e.g. a scenario's.
    #[serde(default)]
    pub services: Option<Vec<ScenarioService>>,
    /// The SMOs' `UP_PATH_CH` subscription.
    #[serde(default)]
    pub notify: NotifyWhen,
    /// Whether the service modules were told to start the plan's services (`up` without
    /// `--no-services`): a restarted module is told the same.
    #[serde(default = "yes")]
    pub services_started: bool,
}

fn yes() -> bool {
    true
}

/// A failure reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot access testbed state at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("testbed state at {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl State {
    /// Fresh state for a testbed about to come up.
    pub fn new(spec: TopologySpec) -> Self {
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            spec,
            started_at,
            complete: false,
            netns: Vec::new(),
            processes: Vec::new(),
            token: None,
            services: None,
            notify: NotifyWhen::default(),
            services_started: true,
        }
    }

    /// The plan this testbed was brought up with (its topology, services and subscription).
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::new(&self.spec);
        plan.notify = self.notify;
        if let Some(services) = &self.services {
            if let Err(e) = plan.set_services(services) {
                // `up` checked them; a hand-edited state keeps the default services.
                tracing::warn!(error = %e, "the state's services are refused; using the default ones");
            }
        }
        plan
    }

    /// The state directory of testbed `name`.
    pub fn dir(name: &str) -> PathBuf {
        PathBuf::from(STATE_ROOT).join(name)
    }

    fn file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Loads the state in `dir`, if there is any.
    pub fn load(dir: &Path) -> Result<Option<Self>, StateError> {
        let path = Self::file(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the state atomically (write a temporary file, then rename).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::file(dir);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The state holds the deployment's token: root only.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The names of the testbeds that have state on this machine.
    pub fn list() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(STATE_ROOT)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| Self::file(&e.path()).exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("tb-state-test-{}", std::process::id()));
        let mut s = State::new(TopologySpec::builtin("two-site").expect("builtin"));
        s.netns.push("tb-core".into());
        s.processes.push(NodeProcess {
            node: "edge-x".into(),
            process: Started {
                name: "ovs-vswitchd".into(),
                pid: 42,
                marker: "/run/testbed/two-site/ovs-edge-x".into(),
            },
            restarts: 2,
        });
        assert!(State::load(&dir).expect("load").is_none());
        s.save(&dir).expect("save");
        assert_eq!(State::load(&dir).expect("load"), Some(s));
        std::fs::write(dir.join("state.json"), "{").expect("write");
        assert!(matches!(State::load(&dir), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! The SMO's configuration file (JSON, `smo --config FILE`).

use crate::core::reconcile::Policy;
use crate::routing::rules::EdgePorts;
use ipnet::Ipv4Net;
use model::common::Dnai;
use model::smo::{PeerInfo, ResourceRequirements};
use serde::{Deserialize, Serialize};
use std::net::SocketAddrV4;
use std::path::PathBuf;

/// Which `UP_PATH_CH` notifications the SMO subscribes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotifyWhen {
    /// Before the new user-plane path is active.
    Early,
    /// After it is active (the thesis's choice: the container moves after the UPF).
    #[default]
    Late,
}

/// Where the SMO subscribes to user-plane path changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeAt {
    /// At the NEF (TS 29.522 TrafficInfluence, `nef`): the 3GPP way for an AF outside the
    /// operator's trust domain, such as an edge cloud's orchestrator.
    #[default]
    Nef,
    /// At the SMF directly (TS 29.508 Nsmf_EventExposure, `smf_url`): the thesis's way.
    Smf,
}

/// The SMO's traffic influence subscription at the NEF (`nef` in the config; every field but
/// `url` optional). The timing of its notifications is `notify_when` (`dnaiChgType`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct NefSubscription {
    /// Base URL of the NEF, e.g. `http://10.100.0.10:8002`. Without it the SMO does not
    /// subscribe (notifications can still be posted to it).
    pub url: Option<String>,
    /// `afAppId`: the application the subscription is for.
    pub af_app_id: String,
    /// `afAckInd`: the network holds the path switch until the SMO acknowledges each
    /// notification (at most the SMF's `ackTimeoutMs`): the SMO moves the service while the
    /// UE's traffic still takes the old path, and acknowledges once the new one is in
    /// (make-before-break, no trombone).
    pub af_ack_ind: bool,
    /// `appReloInd`: whether the application may be relocated (TS 29.522: "whether an
    /// application can be relocated once a location of the application has been selected").
    /// `false`: the SMO keeps its services where they are and acknowledges `RELOC_NO_ALLOWED`.
    pub app_relo_ind: bool,
}

impl Default for NefSubscription {
    fn default() -> Self {
        Self {
            url: None,
            af_app_id: "edge-services".into(),
            af_ack_ind: false,
            app_relo_ind: true,
        }
    }
}

/// Time limits of the calls a relocation makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct Timeouts {
    /// One peer-protocol call.
    pub peer_ms: u64,
    /// A module's GetServices / ServedService callback.
    pub module_ms: u64,
    /// A module's Execute callback (the live migration).
    pub execute_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            peer_ms: 5_000,
            module_ms: 2_000,
            execute_ms: 60_000,
        }
    }
}

/// The reconciler's period and patience (`reconcile` in the config; every field optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// How often the reconciler compares what is with what should be (the first round runs at
    /// start); 0 turns it off.
    pub period_ms: u64,
    /// A service whose relocation ended less than this ago is left alone (the modules' and the
    /// switch's view may lag the records).
    pub settle_ms: u64,
    /// After a failed relocation, the next one of the same service waits this long, doubling
    /// with every further failure up to `retry_max_ms`.
    pub retry_first_ms: u64,
    pub retry_max_ms: u64,
    /// While a relocation that began less than this ago runs here, rounds are put off: the
    /// relocation owns what it touches, and a round's GetServices calls and flow dump would only
    /// add to its times. A relocation stuck for longer holds nothing up.
    pub defer_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            period_ms: 1_000,
            settle_ms: 2_000,
            retry_first_ms: 1_000,
            retry_max_ms: 300_000,
            defer_ms: 30_000,
        }
    }
}

impl ReconcileConfig {
    /// The decision's [`Policy`].
    pub fn policy(&self) -> Policy {
        Policy {
            settle_us: self.settle_ms.saturating_mul(1_000),
            retry_first_us: self.retry_first_ms.saturating_mul(1_000),
            retry_max_us: self.retry_max_ms.saturating_mul(1_000),
            defer_us: self.defer_ms.saturating_mul(1_000),
        }
    }
}

/// Everything one SMO needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct SmoConfig {
    /// e.g. `smo-x`.
    pub smo_id: String,
    /// The DNAI of this SMO's edge cloud, as the SMF names it (e.g. `edge-x`).
    pub dnai: Dnai,
    /// Where the API listens, e.g. `10.100.0.41:8090`.
    pub api_addr: SocketAddrV4,
    /// The deployment's bearer token: required on every request and sent on every call.
    pub token: Option<String>,
    /// Where the SMO subscribes: `nef` (the default) or `smf`.
    #[serde(default)]
    pub subscribe_at: SubscribeAt,
    /// Base URL of the SMF, e.g. `http://10.100.0.10:8000`, for `subscribe_at: smf`. Without it
    /// the SMO does not subscribe (notifications can still be posted to it).
    pub smf_url: Option<String>,
    /// The subscription at the NEF, for `subscribe_at: nef`.
    #[serde(default)]
    pub nef: NefSubscription,
    /// Base URL of the Location Registry, e.g. `http://10.100.0.10:8001`: where the SMO asks which
    /// site (DNAI) a UE is at (`GET /lr/v1/ues/{ip}`) when it re-evaluates queued notifications
    /// and when it reconciles. Without it queued notifications are re-evaluated against the
    /// latest of them, and the reconciler starts no relocation.
    #[serde(default)]
    pub lr_url: Option<String>,
    /// The timing of the notifications (`dnaiChgType`), on either path.
    #[serde(default)]
    pub notify_when: NotifyWhen,
    /// The topology database: peer SMOs.
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
    /// The OpenFlow management socket of the edge's bridge, e.g.
    /// `/run/testbed/tb/ovs-edge-x/br-edge-x.mgmt`.
    pub ovs_mgmt: PathBuf,
    /// The bridge's backhaul and N6 port names.
    pub ports: EdgePorts,
    /// What this edge can host (VALIDATE checks incoming services against it).
    #[serde(default = "default_capacity")]
    pub capacity: ResourceRequirements,
    /// Where relocations and registrations are persisted.
    pub state_dir: PathBuf,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// The deployment's networks: a callback URI the SMO is given (a module registration's
    /// `getServiceNotifUri`, `servedServiceNotifUri`, `executeNotifUri`; a peer message's
    /// `notifUri`) must name an IPv4 address inside one of them. Default: the /24 of
    /// `api_addr` (the SMO's own SBI network).
    #[serde(default)]
    pub callback_networks: Vec<Ipv4Net>,
}

/// What an edge can host when the config names no capacity.
pub fn default_capacity() -> ResourceRequirements {
    ResourceRequirements {
        cpu_millis: 2000,
        memory_mb: 4096,
        disk_mb: 10240,
    }
}

impl SmoConfig {
    /// Whether this SMO relocates services on notifications (`false`: `appReloInd: false` at
    /// the NEF; the SMF path has no such indication).
    pub fn relocates(&self) -> bool {
        self.subscribe_at == SubscribeAt::Smf || self.nef.app_relo_ind
    }

    /// Base URL of this SMO's API.
    pub fn api_root(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Where callbacks may point: `callback_networks`, or the /24 of `api_addr`.
    pub fn callbacks(&self) -> CallbackNetworks {
        if self.callback_networks.is_empty() {
            let sbi = Ipv4Net::new(*self.api_addr.ip(), 24)
                .map(|n| n.trunc())
                .unwrap_or_else(|_| unreachable!("24 is a valid IPv4 prefix length"));
            return CallbackNetworks(vec![sbi]);
        }
        CallbackNetworks(self.callback_networks.clone())
    }
}

/// The networks a callback URI may point into (see [`SmoConfig::callback_networks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackNetworks(pub Vec<Ipv4Net>);

/// A callback URI the SMO refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadCallback {
    /// The field, as the API spells it (e.g. `executeNotifUri`).
    pub field: &'static str,
    pub reason: String,
}

impl CallbackNetworks {
    /// `uri`, the value of `field`: an `http://` or `https://` URI whose host is an IPv4 address
    /// inside one of the networks (a name would have to be resolved first, and could resolve
    /// anywhere).
    pub fn check(&self, field: &'static str, uri: &str) -> Result<(), BadCallback> {
        let bad = |reason: String| BadCallback { field, reason };
        let url =
            reqwest::Url::parse(uri).map_err(|e| bad(format!("`{uri}` is not a URI: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "must be an http:// or https:// URI, got `{uri}`"
            )));
        }
        let ip = match url.host_str().map(str::parse::<std::net::Ipv4Addr>) {
            Some(Ok(ip)) => ip,
            _ => {
                return Err(bad(format!(
                    "the host of `{uri}` must be an IPv4 address in the deployment's networks ({})",
                    self.list()
                )))
            }
        };
        if !self.0.iter().any(|n| n.contains(&ip)) {
            return Err(bad(format!(
                "{ip} is outside the deployment's networks ({})",
                self.list()
            )));
        }
        Ok(())
    }

    fn list(&self) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> CallbackNetworks {
        CallbackNetworks(list.iter().map(|n| n.parse().expect("a network")).collect())
    }

    #[test]
    fn callbacks_must_point_into_the_deployments_networks() {
        let n = nets(&["10.100.0.0/24", "10.0.1.0/24"]);
        assert_eq!(
            n.check(
                "executeNotifUri",
                "http://10.100.0.41:9100/svcmod/v1/execute"
            ),
            Ok(())
        );
        assert_eq!(n.check("notifUri", "https://10.0.1.2/x"), Ok(()));
        for (uri, why) in [
            (
                "http://192.0.2.7:80/steal",
                "192.0.2.7 is outside the deployment's networks (10.100.0.0/24, 10.0.1.0/24)",
            ),
            ("http://example.invalid/x", "must be an IPv4 address"),
            ("http://[::1]:9100/x", "must be an IPv4 address"),
            ("ftp://10.100.0.41/x", "http:// or https://"),
            ("not a uri", "is not a URI"),
        ] {
            let e = n.check("getServiceNotifUri", uri).expect_err(uri);
            assert_eq!(e.field, "getServiceNotifUri");
            assert!(e.reason.contains(why), "{uri}: {e}");
        }
    }

    #[test]
    fn without_networks_the_smos_own_sbi_24_is_the_default() {
        let json = serde_json::json!({
            "smo_id": "smo-x", "dnai": "edge-x", "api_addr": "10.100.0.41:8090", "token": null,
            "smf_url": null, "ovs_mgmt": "/x", "ports": {"backhaul": "bh", "n6": "n6"},
            "state_dir": "/tmp/x"
        });
        let c: SmoConfig = serde_json::from_value(json).expect("a minimal config");
        assert_eq!(c.callbacks(), nets(&["10.100.0.0/24"]));
        assert_eq!(c.reconcile, ReconcileConfig::default());
        assert_eq!(c.lr_url, None);
        assert_eq!(c.subscribe_at, SubscribeAt::Nef);
        assert_eq!(c.nef, NefSubscription::default());
        assert!(!c.nef.af_ack_ind && c.nef.app_relo_ind);
        let with = SmoConfig {
            callback_networks: vec!["10.0.1.0/24".parse().expect("net")],
            ..c
        };
        assert_eq!(with.callbacks(), nets(&["10.0.1.0/24"]));
    }
}

//! The chaos observer: while a chaos run plays, it samples the truth every `sample_ms` into
//! [`Sample`]s, and a reconnecting stream check from the UE to its service runs for the whole
//! run.
//!
//! Two threads:
//! * the stream, in the UE's namespace: [`StreamCheck`] with `reconnect: true` against the
//!   service's stream port; its [`StreamWatch`] counts records (and corrupt ones) as they
//!   arrive, which each sample reads;
//! * the sampler, in the first edge cloud's namespace (every SMO's and module's API is on the
//!   SBI segment, reachable from there), with one runtime and one SBI client (connections kept):
//!   per sample, at once, every edge's modules' GetServices and its SMO's relocation records
//!   (time limit [`CALL_LIMIT`]; a part that does not answer is `None`); then each switch's
//!   flows (`ovs-ofctl dump-flows`, classified by cookie: [`classify_flows`]), the UE's serving
//!   gNB (its control socket), the network functions the state lists as not running.
//!
//! Samples keep a fixed grid from the clock's start; one that took longer than the period
//! delays the next (none is taken twice).

use model::smo::RelocationState;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{EdgeSample, Sample};
use crate::plan::{Plan, Role};
use crate::probe::{StreamCheck, StreamReport, StreamWatch};

/// How long one API call of a sample may take before that part counts as not answering.
pub const CALL_LIMIT: Duration = Duration::from_millis(1000);

/// What the observer watches.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub plan: Plan,
    pub token: String,
    /// The testbed's UE (`ue1`).
    pub ue: String,
    /// The service's stream (its address and stream port).
    pub stream: SocketAddr,
    /// Period between samples.
    pub sample: Duration,
    /// Relocation records begun before this (µs since the epoch) are not this run's.
    pub since_unix_us: u64,
    /// The run's clock: samples are timed from it.
    pub clock: Instant,
    /// The longest the stream check may run (it is stopped with the observer).
    pub longest: Duration,
}

/// A running observer.
#[derive(Debug)]
pub struct Observer {
    stop: Arc<AtomicBool>,
    watch: StreamWatch,
    samples: Arc<Mutex<Vec<Sample>>>,
    sampler: std::thread::JoinHandle<Result<(), String>>,
    stream: std::thread::JoinHandle<Result<StreamReport, String>>,
}

/// Only what a sample needs of a relocation record (newer fields of the SMO's records pass).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordHead {
    relocation_id: String,
    state: RelocationState,
    started_unix_us: u64,
}

/// Only what a sample needs of a module's service.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceHead {
    service_id: String,
}

/// The URLs and switch of one edge cloud.
#[derive(Debug, Clone)]
struct EdgeTarget {
    edge: String,
    modules: Vec<String>,
    smo: String,
    ovs: netkit::ovs::OvsInstance,
    bridge: String,
}

impl Observer {
    /// Starts the stream and the sampler.
    pub fn start(cfg: ObserverConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let watch = StreamWatch::default();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let check = StreamCheck {
            reconnect: true,
            ..StreamCheck::new(cfg.stream, cfg.longest)
        };
        let (ue_ns, w) = (cfg.plan.netns(&cfg.ue), watch.clone());
        let stream = std::thread::spawn(move || {
            netkit::Netns::new(ue_ns)
                .run_in(move || check.run(&w))
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("the UE cannot reach its service's stream: {e}"))
        });
        let (st, w, out) = (stop.clone(), watch.clone(), samples.clone());
        let edge_ns = cfg
            .plan
            .switches
            .first()
            .map(|sw| sw.netns.clone())
            .unwrap_or_default();
        let sampler = std::thread::spawn(move || {
            netkit::Netns::new(edge_ns)
                .run_in(move || sample_until_stopped(&cfg, &st, &w, &out))
                .map_err(|e| e.to_string())?
        });
        Self {
            stop,
            watch,
            samples,
            sampler,
            stream,
        }
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops both threads: the samples, and the stream's report (or why there is none), and
    /// the sampler's error if it could not run.
    pub fn stop(self) -> (Vec<Sample>, Result<StreamReport, String>, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.watch.stop();
        let sampler = match self.sampler.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("the sampler panicked".into()),
        };
        let stream = self
            .stream
            .join()
            .unwrap_or_else(|_| Err("the stream thread panicked".into()));
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        (samples, stream, sampler)
    }
}

/// The sampler's loop (inside the first edge's namespace).
fn sample_until_stopped(
    cfg: &ObserverConfig,
    stop: &AtomicBool,
    watch: &StreamWatch,
    out: &Mutex<Vec<Sample>>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime for the sampler: {e}"))?;
    let client = sbi::Client::new(Some(cfg.token.clone()), CALL_LIMIT);
    let targets: Vec<EdgeTarget> = cfg
        .plan
        .switches
        .iter()
        .map(|sw| EdgeTarget {
            edge: sw.node.clone(),
            modules: crate::nf::svcmod_api_roots(&cfg.plan, &sw.node)
                .into_iter()
                .map(|(_, root)| format!("{root}/services"))
                .collect(),
            smo: format!(
                "{}{}",
                crate::nf::smo_api_root(&cfg.plan, &sw.node),
                crate::relocations::RELOCATIONS_PATH
            ),
            ovs: netkit::ovs::OvsInstance::new(&sw.netns, &sw.dir),
            bridge: sw.bridge.clone(),
        })
        .collect();
    // The network functions, and the supervisor that restarts them.
    let functions: BTreeSet<String> =
        crate::nf::launches(&cfg.plan, &cfg.token, &crate::nf::LaunchOptions::new())
            .into_iter()
            .map(|l| l.name)
            .chain([crate::supervise::NAME.to_owned()])
            .collect();
    let period = cfg.sample;
    let mut k: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let begun = cfg.clock.elapsed();
        let mut s = Sample {
            at_ms: begun.as_secs_f64() * 1e3,
            took_ms: 0.0,
            ue_site: None,
            stream_records: 0,
            stream_corrupt: 0,
            edges: Vec::new(),
            down: Vec::new(),
        };
        s.edges = rt.block_on(edges_now(&client, &targets, cfg.since_unix_us));
        for (e, t) in s.edges.iter_mut().zip(&targets) {
            if let Ok(lines) = t.ovs.dump_flows(&t.bridge) {
                let (relocation, services) = classify_flows(&lines);
                e.relocation_flows = Some(relocation);
                e.service_flows = Some(services);
            }
        }
        s.ue_site = crate::handover::ue_get::<emu_ran::ue::UeStatus>(
            &crate::nf::ue_socket(&cfg.plan, &cfg.ue),
            "/ue/v1/status",
        )
        .ok()
        .and_then(|st| site_of_radio(&cfg.plan, *st.gnb_radio.ip()));
        s.down = down(&cfg.plan, &functions);
        s.stream_records = watch.records();
        s.stream_corrupt = watch.corrupt();
        s.took_ms = (cfg.clock.elapsed() - begun).as_secs_f64() * 1e3;
        out.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        // The next slot on the grid that is still ahead.
        let now = cfg.clock.elapsed();
        k = k.max(u32::try_from(now.as_nanos() / period.as_nanos().max(1)).unwrap_or(u32::MAX));
        k = k.saturating_add(1);
        let next = cfg.clock + period * k;
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(20)));
        }
    }
    Ok(())
}

/// Every edge's modules and SMO, asked at once.
async fn edges_now(client: &sbi::Client, targets: &[EdgeTarget], since: u64) -> Vec<EdgeSample> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        for url in &t.modules {
            let (c, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                let r = c.get::<Vec<ServiceHead>>(&url).await;
                (i, Part::Module(r.ok()))
            });
        }
        let (c, url) = (client.clone(), t.smo.clone());
        tasks.spawn(async move {
            let r = c.get::<Vec<RecordHead>>(&url).await;
            (i, Part::Smo(r.ok()))
        });
    }
    let mut edges: Vec<EdgeSample> = targets
        .iter()
        .map(|t| EdgeSample {
            edge: t.edge.clone(),
            services: Some(Vec::new()),
            running: None,
            relocation_flows: None,
            service_flows: None,
        })
        .collect();
    while let Some(done) = tasks.join_next().await {
        let Ok((i, part)) = done else { continue };
        let e = &mut edges[i];
        match part {
            Part::Module(None) => e.services = None,
            Part::Module(Some(list)) => {
                if let Some(ids) = &mut e.services {
                    ids.extend(list.into_iter().map(|s| s.service_id));
                    ids.sort();
                    ids.dedup();
                }
            }
            Part::Smo(records) => {
                e.running = records.map(|rs| {
                    let mut ids: Vec<String> = rs
                        .into_iter()
                        .filter(|r| {
                            r.state == RelocationState::Running && r.started_unix_us >= since
                        })
                        .map(|r| r.relocation_id)
                        .collect();
                    ids.sort();
                    ids.dedup();
                    ids
                });
            }
        }
    }
    edges
}

/// One answer of a sample's calls.
#[derive(Debug)]
enum Part {
    Module(Option<Vec<ServiceHead>>),
    Smo(Option<Vec<RecordHead>>),
}

/// The processes among `functions` that the testbed's state lists as not running.
fn down(plan: &Plan, functions: &BTreeSet<String>) -> Vec<String> {
    let Ok(Some(state)) = crate::state::State::load(&plan.state_dir) else {
        return vec!["(the testbed's state cannot be read)".into()];
    };
    state
        .processes
        .iter()
        .filter(|p| functions.contains(&p.process.name) && !p.process.is_running())
        .map(|p| p.process.name.clone())
        .collect()
}

/// The site (`site-a`) whose gNB has radio address `radio`.
pub fn site_of_radio(plan: &Plan, radio: Ipv4Addr) -> Option<String> {
    plan.nodes
        .iter()
        .filter(|n| n.role == Role::Gnb)
        .find(|g| g.addr("air") == Some(radio))
        .and_then(|g| g.name.strip_prefix("gnb-"))
        .map(|s| format!("site-{s}"))
}

/// From `ovs-ofctl dump-flows` lines: how many relocation (trombone) flows, and the addresses of
/// the services that have flows of their own (cookies: `smo::routing::rules`).
pub fn classify_flows(lines: &[String]) -> (u32, Vec<Ipv4Addr>) {
    let tag = |c: u64| c >> 32;
    let relocation = tag(smo::routing::rules::relocation_cookie(0));
    let service = tag(smo::routing::rules::service_cookie(Ipv4Addr::UNSPECIFIED));
    let mut n = 0;
    let mut services = Vec::new();
    for l in lines {
        let Some(c) = l
            .split([',', ' '])
            .find_map(|f| f.trim().strip_prefix("cookie=0x"))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        if tag(c) == relocation {
            n += 1;
        } else if tag(c) == service {
            let ip = Ipv4Addr::from(u32::try_from(c & 0xffff_ffff).unwrap_or_default());
            if !services.contains(&ip) {
                services.push(ip);
            }
        }
    }
    services.sort();
    (n, services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_told_apart_by_their_cookies() {
        let lines: Vec<String> = [
            "cookie=0x1, duration=9.1s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=bh,arp actions=NORMAL",
            "cookie=0x534d4f5212345678, duration=1.0s, table=0, n_packets=3, n_bytes=200, priority=200,in_port=bh,ip,nw_dst=20.0.0.100 actions=output:\"s-streamer\"",
            "cookie=0x534d4f5212345678, duration=1.0s, table=0, priority=200,in_port=\"s-streamer\",ip actions=output:bh",
            "cookie=0x534d4f5314000064, duration=0.5s, table=0, priority=150,in_port=n6,ip,nw_dst=20.0.0.100 actions=output:\"s-streamer\"",
            "cookie=0x534d4f5314000064, duration=0.5s, table=0, priority=150,arp,arp_tpa=20.0.0.100 actions=output:\"s-streamer\"",
            "cookie=0x534d4f5314000065, duration=0.5s, table=0, priority=150,in_port=n6 actions=drop",
            " priority=0 actions=NORMAL",
        ]
        .map(String::from)
        .to_vec();
        let (relocation, services) = classify_flows(&lines);
        assert_eq!(relocation, 2);
        assert_eq!(
            services,
            [Ipv4Addr::new(20, 0, 0, 100), Ipv4Addr::new(20, 0, 0, 101)]
        );
        assert_eq!(classify_flows(&[]), (0, vec![]));
    }

    #[test]
    fn the_serving_site_is_the_gnb_with_that_radio_address() {
        let plan = Plan::new(&crate::spec::TopologySpec::builtin("two-site").expect("builtin"));
        let radio = |g: &str| plan.node(g).and_then(|n| n.addr("air")).expect("air");
        assert_eq!(
            site_of_radio(&plan, radio("gnb-a")).as_deref(),
            Some("site-a")
        );
        assert_eq!(
            site_of_radio(&plan, radio("gnb-b")).as_deref(),
            Some("site-b")
        );
        assert_eq!(site_of_radio(&plan, Ipv4Addr::new(10, 10, 0, 99)), None);
    }

    #[test]
    fn record_and_service_heads_read_the_smos_and_modules_json() {
        let rec = crate::results::tests::record(
            model::smo::RelocationRole::Source,
            [1, 2, 3, 4, 5],
            Some(15),
            None,
        );
        let json = serde_json::to_string(std::slice::from_ref(&rec)).expect("json");
        let heads: Vec<RecordHead> = serde_json::from_str(&json).expect("heads");
        assert_eq!(heads[0].relocation_id, rec.relocation_id);
        assert_eq!(heads[0].state, RelocationState::Completed);
        assert_eq!(heads[0].started_unix_us, rec.started_unix_us);
        let svc = serde_json::to_string(&[rec.service]).expect("json");
        let heads: Vec<ServiceHead> = serde_json::from_str(&svc).expect("heads");
        assert_eq!(heads[0].service_id, "svc");
    }
}

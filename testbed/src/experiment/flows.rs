//! What runs during a run: the scenario's flows at their start times and its timeline's
//! actions (handovers, each in a thread that follows the relocation it triggers) at theirs; each
//! flow's process, and what its tool reported, judged.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::capture::{self, end_child, Capture};
use super::{sleep_until, Runner, FLOW_GRACE, RELOCATION_WAIT};
use crate::migration::{self, HandoverOutcome};
use crate::results::{FlowResult, KillResult};
use crate::scenario::{Step, TrafficKind, TrafficSpec};

/// iperf3 flow number *i* of a run uses port `IPERF3_PORT + i` (a one-off server in the DN each).
const IPERF3_PORT: u16 = 5200;

/// One flow of one UE member.
#[derive(Debug, Clone)]
pub(super) struct FlowPlan<'a> {
    pub(super) member: String,
    pub(super) spec: &'a TrafficSpec,
}

/// A flow's process.
#[derive(Debug)]
pub(super) struct RunningFlow<'a> {
    pub(super) plan: FlowPlan<'a>,
    pub(super) address: String,
    pub(super) child: Child,
    pub(super) deadline: Instant,
}

/// A handover in flight (a thread).
#[derive(Debug)]
pub(super) struct HandoverJob {
    pub(super) member: String,
    pub(super) to: String,
    /// Order among the run's handovers.
    pub(super) seq: usize,
    pub(super) thread: std::thread::JoinHandle<(Result<HandoverOutcome, String>, u64)>,
}

/// A run's schedule, played to its end: the captures still running, the flows still running or
/// ended, the handovers and kills in flight, and the flows that could not start.
#[derive(Debug)]
pub(super) struct Played<'a> {
    pub(super) captures: Vec<Capture>,
    pub(super) running: Vec<RunningFlow<'a>>,
    pub(super) jobs: Vec<HandoverJob>,
    /// Each kill's process and its thread.
    pub(super) kills: Vec<(String, std::thread::JoinHandle<KillResult>)>,
    pub(super) flow_results: Vec<FlowResult>,
}

impl Runner<'_> {
    /// Plays the schedule: each flow at its `start_s`, each timeline action at its `at_s`, then
    /// waits for the run's end. `None` when interrupted: its flows and captures are ended.
    pub(super) fn play(&self, captures: Vec<Capture>) -> Option<Played<'_>> {
        // The schedule: flows and handovers by time.
        let flows = self.flow_plans();
        let timeline = self.sc.timeline_in_order();
        let mut events: Vec<(f64, Result<usize, usize>)> = flows
            .iter()
            .enumerate()
            .map(|(i, f)| (f.spec.start_s, Ok(i)))
            .chain(timeline.iter().enumerate().map(|(i, e)| (e.at_s, Err(i))))
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t0 = Instant::now();
        let t0_unix_us = model::ran::unix_now_us();
        let end = t0 + Duration::from_secs_f64(self.sc.run_duration_s());
        let mut running: Vec<RunningFlow<'_>> = Vec::new();
        let mut jobs: Vec<HandoverJob> = Vec::new();
        let mut kills = Vec::new();
        let mut flow_results: Vec<FlowResult> = Vec::new();
        let mut interrupted = false;
        for (at, ev) in events {
            if !sleep_until(t0 + Duration::from_secs_f64(at)) {
                interrupted = true;
                break;
            }
            match ev {
                Ok(i) => {
                    let f = flows[i].clone();
                    match self.start_flow(&f, i) {
                        Ok((address, child)) => running.push(RunningFlow {
                            deadline: Instant::now()
                                + Duration::from_secs_f64(f.spec.duration_s)
                                + FLOW_GRACE,
                            plan: f,
                            address,
                            child,
                        }),
                        Err(e) => flow_results.push(flow_result(&f, None, false, Some(e), None)),
                    }
                }
                Err(i) => {
                    let e = timeline[i];
                    let (ue, to) = match e.step() {
                        Step::Handover { ue, to } => (ue, to),
                        Step::Kill(k) => {
                            let (plan, token, at_s) =
                                (self.plan.clone(), self.token.clone(), e.at_s);
                            let (process, phase, after_ms) =
                                (k.process.to_owned(), k.phase, k.after_ms);
                            kills.push((
                                k.process.to_owned(),
                                std::thread::spawn(move || {
                                    let k = crate::scenario::Kill {
                                        process: &process,
                                        phase,
                                        after_ms,
                                    };
                                    super::kill::scripted(&plan, &token, &k, at_s, t0_unix_us, end)
                                }),
                            ));
                            continue;
                        }
                    };
                    for m in self.sc.resolve_ue(ue) {
                        let (plan, token, ue, to) = (
                            self.plan.clone(),
                            self.token.clone(),
                            self.tb_ue(&m),
                            to.to_owned(),
                        );
                        jobs.push(HandoverJob {
                            member: m,
                            to: to.clone(),
                            seq: jobs.len(),
                            thread: std::thread::spawn(move || {
                                let o = migration::handover_and_follow(
                                    &plan,
                                    &token,
                                    &ue,
                                    &to,
                                    Some(RELOCATION_WAIT),
                                )
                                .map_err(|e| e.to_string());
                                (o, model::ran::unix_now_us())
                            }),
                        });
                    }
                }
            }
        }
        if interrupted || !sleep_until(end) {
            for mut f in running {
                end_child(&mut f.child);
            }
            capture::discard(captures);
            return None;
        }
        Some(Played {
            captures,
            running,
            jobs,
            kills,
            flow_results,
        })
    }

    /// Starts flow number `index` of the run in its UE's namespace: the address it goes to and
    /// the process.
    fn start_flow(&self, f: &FlowPlan<'_>, index: usize) -> Result<(String, Child), String> {
        let t = f.spec;
        let addr = self.target_addr(&t.target)?;
        let ns = self.plan.netns(&self.tb_ue(&f.member));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]);
        let address = match t.kind {
            TrafficKind::Stream => {
                if let Some(ms) = t.params.interval_ms.filter(|ms| *ms != 10) {
                    return Err(format!(
                        "stream: interval_ms = {ms} is not supported in this build (the services send every 10 ms)"
                    ));
                }
                let a = format!("{addr}:{}", crate::nf::PROBE_PORT);
                cmd.arg(self.bins.join("tbprobe"))
                    .args(["stream", &a, "--seconds"])
                    .arg(format!("{}", t.duration_s))
                    .arg(format!(
                        "--interval-ms={}",
                        crate::probe::DEFAULT_INTERVAL.as_millis()
                    ));
                a
            }
            TrafficKind::Ping => {
                let ms = t.params.interval_ms.unwrap_or(10);
                cmd.args(["ping", "-n", "-i"])
                    .arg(format!("{:.3}", f64::from(ms) / 1e3))
                    .arg("-w")
                    .arg(format!("{}", t.duration_s.ceil().max(1.0) as u64))
                    .arg(addr.to_string());
                addr.to_string()
            }
            TrafficKind::Iperf3 => {
                // A one-off iperf3 server in the DN for this flow (its own port), the client in
                // the UE; the shell ends the server by its PID when the client is done.
                let port = u16::try_from(index)
                    .ok()
                    .and_then(|i| IPERF3_PORT.checked_add(i))
                    .ok_or_else(|| format!("flow {index}: no iperf3 port"))?;
                let mut client = format!(
                    "iperf3 -c {addr} -p {port} -t {} -J",
                    t.duration_s.ceil().max(1.0) as u64
                );
                if let Some(b) = &t.params.bitrate {
                    if b.is_empty() || !b.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                        return Err(format!("iperf3: bitrate `{b}` is not like 50M"));
                    }
                    client.push_str(&format!(" -b {b}"));
                }
                if t.params.reverse == Some(true) {
                    client.push_str(" -R");
                }
                let dn = self.plan.netns("dn");
                cmd = Command::new("sh");
                cmd.arg("-c").arg(format!(
                    "ip netns exec {dn} iperf3 -s -1 -p {port} >/dev/null 2>&1 & srv=$!; \
                     sleep 0.5; ip netns exec {ns} {client}; rc=$?; \
                     kill $srv 2>/dev/null; wait $srv 2>/dev/null; exit $rc"
                ));
                format!("{addr}:{port}")
            }
            TrafficKind::RtmpPlay => {
                let url = crate::rtmp::play_url(addr);
                cmd.arg(self.bins.join("tbprobe"))
                    .args(["rtmp-play", &url, "--seconds"])
                    .arg(format!("{}", t.duration_s));
                if let Some(ms) = t.params.buffer_ms {
                    cmd.arg(format!("--buffer-ms={ms}"));
                }
                url
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        Ok((address, child))
    }
}

/// A TCP connection from a UE's namespace to a service's stream, read and discarded until
/// dropped.
#[derive(Debug)]
pub(super) struct HeldStream {
    stream: TcpStream,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl HeldStream {
    pub(super) fn open(netns: &str, addr: SocketAddr) -> Result<Self, String> {
        let stream = netkit::Netns::new(netns)
            .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut rx = stream.try_clone().map_err(|e| e.to_string())?;
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(std::io::Read::read(&mut rx, &mut buf), Ok(n) if n > 0) {}
        });
        Ok(Self {
            stream,
            reader: Some(reader),
        })
    }
}

impl Drop for HeldStream {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn flow_result(
    f: &FlowPlan<'_>,
    address: Option<String>,
    ok: bool,
    error: Option<String>,
    report: Option<serde_json::Value>,
) -> FlowResult {
    FlowResult {
        ue: f.member.clone(),
        kind: f.spec.kind.to_string(),
        target: f.spec.target.clone(),
        address,
        start_s: f.spec.start_s,
        duration_s: f.spec.duration_s,
        ok,
        error,
        report,
    }
}

/// Waits for a flow to end (ending it past its deadline) and reads what it reported.
pub(super) fn finish_flow(f: &mut RunningFlow<'_>) -> FlowResult {
    let mut overdue = false;
    loop {
        match f.child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= f.deadline => {
                overdue = true;
                end_child(&mut f.child);
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // Exited (or ended and reaped above): the status is cached, the pipes hold the output.
    let status = f.child.wait().ok();
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = f.child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut stdout);
    }
    if let Some(mut e) = f.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let address = Some(f.address.clone());
    let tail = |s: &str| s.trim().lines().last().unwrap_or_default().to_owned();
    if overdue {
        return flow_result(
            &f.plan,
            address,
            false,
            Some(format!(
                "still running {} s after its end; ended",
                FLOW_GRACE.as_secs()
            )),
            None,
        );
    }
    match f.plan.spec.kind {
        TrafficKind::Stream => {
            let report: Option<crate::probe::StreamReport> =
                serde_json::from_str(stdout.trim()).ok();
            let intact = report.as_ref().is_some_and(|r| r.intact);
            let error = match &report {
                _ if intact => None,
                Some(r) => Some(format!(
                    "stream not intact: {}",
                    r.problem.as_deref().unwrap_or("no reason given")
                )),
                None => Some(format!(
                    "no report (exit {}): {}",
                    status.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                    tail(&stderr)
                )),
            };
            let report = report.and_then(|r| serde_json::to_value(r).ok());
            flow_result(&f.plan, address, intact, error, report)
        }
        TrafficKind::Ping => {
            let interval =
                Duration::from_millis(u64::from(f.plan.spec.params.interval_ms.unwrap_or(10)));
            let report = crate::probe::PingReport::parse(&stdout, interval);
            let ok = report.as_ref().is_some_and(|r| r.ok);
            let error = match &report {
                _ if ok => None,
                Some(r) => r.problem.clone(),
                None => Some(format!(
                    "no summary: {}",
                    tail(&format!("{stdout}\n{stderr}"))
                )),
            };
            let report = report.and_then(|r| serde_json::to_value(r).ok());
            flow_result(&f.plan, address, ok, error, report)
        }
        TrafficKind::Iperf3 => {
            // iperf3's JSON report, cut to its end summary.
            let v: Option<serde_json::Value> = serde_json::from_str(stdout.trim()).ok();
            let error = v
                .as_ref()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .or_else(|| {
                    (!status.is_some_and(|s| s.success())).then(|| {
                        format!(
                            "exit {}: {}",
                            status.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                            tail(&stderr)
                        )
                    })
                });
            let report = v.map(|v| {
                let end = &v["end"];
                serde_json::json!({
                    "receivedBitsPerSecond": end["sum_received"]["bits_per_second"],
                    "sentBitsPerSecond": end["sum_sent"]["bits_per_second"],
                    "retransmits": end["sum_sent"]["retransmits"],
                    "seconds": end["sum_received"]["seconds"],
                })
            });
            flow_result(&f.plan, address, error.is_none(), error, report)
        }
        TrafficKind::RtmpPlay => {
            // The player's JSON report on stdout, if it prints one; ok = it exited successfully.
            let ok = status.is_some_and(|s| s.success());
            let error = (!ok).then(|| {
                format!(
                    "exit {}: {}",
                    status.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                    tail(&stderr)
                )
            });
            flow_result(
                &f.plan,
                address,
                ok,
                error,
                serde_json::from_str(stdout.trim()).ok(),
            )
        }
    }
}

/// The TCP port a service of `kind` listens on (what a UE connects to).
pub fn service_port(kind: crate::scenario::ServiceKind) -> u16 {
    match kind {
        crate::scenario::ServiceKind::Streamer | crate::scenario::ServiceKind::Ballast => {
            crate::nf::PROBE_PORT
        }
        // nginx-rtmp's RTMP port.
        crate::scenario::ServiceKind::NginxRtmp => 1935,
    }
}

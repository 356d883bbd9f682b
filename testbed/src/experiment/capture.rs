//! Packet captures at the UEs during a run: `tcpdump -i ue0` in each UE's namespace, started
//! before the traffic, ended by its PID after it, and read ([`crate::pcap`]) for the downtime the
//! capture measures.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Runner, SNAPLEN, UE_TUN};
use crate::pcap::Pcap;
use crate::results::RunResult;

/// A packet capture at a UE.
#[derive(Debug)]
pub(super) struct Capture {
    pub(super) member: String,
    pub(super) path: PathBuf,
    pub(super) child: Child,
}

impl Runner<'_> {
    /// Starts a capture at every UE member; one that does not start is noted, not fatal.
    pub(super) fn start_captures(&self, run: u32, notes: &mut Vec<String>) -> Vec<Capture> {
        let mut captures = Vec::new();
        for m in &self.members {
            match self.start_capture(m, run) {
                Ok(c) => captures.push(c),
                Err(e) => notes.push(format!("no packet capture at {m}: {e}")),
            }
        }
        captures
    }

    /// Starts `tcpdump -i ue0` in `member`'s namespace, writing `runs/NNN-<member>.pcap`; returns
    /// once it listens.
    fn start_capture(&self, member: &str, run: u32) -> Result<Capture, String> {
        let path = self
            .dir
            .join("runs")
            .join(format!("{run:03}-{member}.pcap"));
        let ns = self.plan.netns(&self.tb_ue(member));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "tcpdump", "-i", UE_TUN, "-n", "-U"])
            .args(["-s", SNAPLEN, "-Z", "root", "-w"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start tcpdump: {e}"))?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let start = Instant::now();
        let mut said = Vec::new();
        while start.elapsed() < Duration::from_secs(5) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains("listening on") => {
                    return Ok(Capture {
                        member: member.to_owned(),
                        path,
                        child,
                    })
                }
                Ok(l) => said.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        end_child(&mut child);
        let _ = std::fs::remove_file(&path);
        Err(format!(
            "tcpdump did not start listening: {}",
            said.join(" | ")
        ))
    }
}

/// Ends the captures and reads their files, keeping them in `runs/` when `keep` (named in
/// `r.captures`); what cannot be read is noted in `r.notes`.
pub(super) fn finish(
    captures: Vec<Capture>,
    keep: bool,
    r: &mut RunResult,
) -> BTreeMap<String, Vec<u8>> {
    let mut pcaps: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for mut c in captures {
        end_child(&mut c.child);
        match std::fs::read(&c.path) {
            Ok(b) => {
                pcaps.insert(c.member.clone(), b);
            }
            Err(e) => r
                .notes
                .push(format!("capture at {} unreadable: {e}", c.member)),
        }
        if keep {
            if let Some(name) = c.path.file_name() {
                r.captures.push(name.to_string_lossy().into_owned());
            }
        } else {
            let _ = std::fs::remove_file(&c.path);
        }
    }
    pcaps
}

/// Parses the captures [`finish`] read; one that does not parse (or has trailing bytes) is
/// noted.
pub(super) fn parse<'a>(
    pcaps: &'a BTreeMap<String, Vec<u8>>,
    notes: &mut Vec<String>,
) -> BTreeMap<&'a String, Pcap<'a>> {
    pcaps
        .iter()
        .filter_map(|(m, b)| match Pcap::parse(b) {
            Ok(p) => {
                if let Some(t) = &p.trailing {
                    notes.push(format!("capture at {m}: {t}"));
                }
                Some((m, p))
            }
            Err(e) => {
                notes.push(format!("capture at {m}: {e}"));
                None
            }
        })
        .collect()
}

/// Ends the captures of an interrupted run and removes their files.
pub(super) fn discard(captures: Vec<Capture>) {
    for mut c in captures {
        end_child(&mut c.child);
        let _ = std::fs::remove_file(&c.path);
    }
}

/// Ends a child we started, by its PID: SIGTERM, then SIGKILL after 3 s; reaps it.
pub(super) fn end_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // Flows start in their own process group (led by the child): the group goes too (a
    // player's ffmpeg, an iperf3 flow's server and client).
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

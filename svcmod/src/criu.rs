//! Dump and restore with CRIU (≥ 4.2; see DESIGN.md "CRIU"), run as a process with full argument
//! lists.
//!
//! * The service's network namespace stays **outside** the image: dump with
//!   `--external net[INODE]:KEY`, restore with `--inherit-fd fd[3]:KEY`, fd 3 being the target
//!   namespace's handle (`/run/netns/NAME`, opened by `sh -c 'exec criu … 3<NS'`). The module makes
//!   that namespace beforehand with the same address and MAC.
//! * `--tcp-established` keeps TCP connections; `--network-lock nftables` (no `iptables` here)
//!   silences the source namespace from the dump on, so the peer sees no reset. A successful dump
//!   kills the tree and leaves that lock in place; a restore into the same namespace removes it
//!   (CRIU records the lock's table name in the image).
//! * A restore can be **gated** ([`Criu::restore_gated`]): an action script stops at
//!   `post-restore` (every task restored, sockets still in repair mode, nothing running), reports
//!   through a FIFO, and waits for the module's decision on another FIFO. `commit` runs the
//!   switch command (bring the carrier up) and lets CRIU resume the tasks; anything else fails the
//!   script, and CRIU kills what it restored. The carrier is thus up **before** the first packet
//!   of the restored service: bringing it up after the resume costs the client a 1 s TCP
//!   retransmission timeout (measured: 1.27 s gap against 0.19 s).
//! * `--restore-detached --pidfile restored.pid` (relative to `-D`): the restored root is
//!   reparented away from CRIU; its host PID is read back from the pid file.
//! * Post-copy ([`Criu::dump_lazy`], [`Criu::lazy_pages_daemon`], `RestoreRequest::lazy`): the
//!   dump runs inside the source edge's namespace (`nsenter --net`) so its page server listens
//!   on the backhaul; `--status-fd` (into a FIFO) says when the images are written. The tree
//!   stays frozen and CRIU keeps its TCP sockets until the one page-server session ends, then
//!   kills it. The target's `criu lazy-pages` runs in the target edge's namespace and must be
//!   up before `criu restore --lazy-pages`. Both need `fs.pipe-max-size` ≥ 4 MiB
//!   ([`PipeMaxSize`]).

use nix::sys::stat::Mode;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// The key that names the service's network namespace in the image.
pub const NETNS_KEY: &str = "svcmod-net";
/// The pid file CRIU writes on restore, relative to the image directory.
pub const PIDFILE: &str = "restored.pid";
/// The fd the target namespace is handed to CRIU on.
const NETNS_FD: u32 = 3;
/// The fd CRIU reports readiness on (`--status-fd`).
const STATUS_FD: u32 = 3;
/// Pipe size lazy-pages migration needs (DESIGN.md: root here lacks CAP_SYS_RESOURCE).
pub const LAZY_PIPE_MAX_SIZE: u64 = 4_194_304;
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// A CRIU failure, with the log's last error lines.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("cannot run `{bin}` for {action} (is CRIU installed? run scripts/setup)")]
    Spawn {
        action: &'static str,
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("criu {action} failed ({status}); log {log}: {tail}")]
    Failed {
        action: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("criu {action} did not finish within {limit_ms} ms; log {log}: {tail}")]
    Timeout {
        action: &'static str,
        limit_ms: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("criu restore left no pid file {pidfile}")]
    NoPid { pidfile: PathBuf },
    #[error("cannot prepare {path} for criu")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the network namespace of PID {pid} is unknown")]
    NoNetns { pid: i32 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CriuError + '_ {
    move |source| CriuError::Io {
        path: path.to_owned(),
        source,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The CRIU tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criu {
    /// The binary (`criu`: the wrapper scripts/setup installs in /usr/local/sbin).
    pub bin: PathBuf,
    /// Log verbosity (`-v`), 0–4.
    pub verbosity: u8,
}

/// CRIU's cache of what the kernel supports (`kerndat`). CRIU loads it from here on every run but
/// writes it only when `/run` is a tmpfs; without it every dump and restore probes the kernel
/// again (≈ 35–70 ms, inside the service's freeze for a restore). See [`Criu::prime_kdat_cache`].
pub const KDAT_CACHE: &str = "/run/criu.kdat";

impl Default for Criu {
    fn default() -> Self {
        Self {
            bin: PathBuf::from("criu"),
            verbosity: 4,
        }
    }
}

/// Where a lazy dump serves the memory pages (CRIU's page server), or where a restore fetches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageServer {
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
}

/// What to dump.
#[derive(Debug, Clone)]
pub struct DumpRequest {
    /// Host PID of the tree's root.
    pub pid: i32,
    /// The inode of the tree's network namespace (kept outside the image).
    pub netns_inode: u64,
    /// Empty directory for the images (on tmpfs).
    pub images: PathBuf,
    /// Log file (outside `images`, so it is not transferred).
    pub log: PathBuf,
}

/// A finished dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dumped {
    pub took: Duration,
    /// Bytes of the images written.
    pub image_bytes: u64,
}

/// What to restore, and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub images: PathBuf,
    pub log: PathBuf,
    /// The network namespace to restore into (`/run/netns/NAME`).
    pub netns_path: PathBuf,
    /// Post-copy: memory pages come from a `criu lazy-pages` daemon working on `images`.
    pub lazy: bool,
}

/// A finished restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Host PID of the restored tree's root.
    pub pid: i32,
    pub took: Duration,
}

impl Criu {
    /// A tool with the given binary.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            ..Self::default()
        }
    }

    fn common(&self, action: &str, images: &Path, log: &Path) -> Vec<String> {
        vec![
            action.to_owned(),
            "-D".to_owned(),
            images.display().to_string(),
            "-o".to_owned(),
            log.display().to_string(),
            format!("-v{}", self.verbosity.min(4)),
            "--tcp-established".to_owned(),
        ]
    }

    /// Makes CRIU's kernel-feature cache [`KDAT_CACHE`] for the running kernel: `criu check` in a
    /// private mount namespace whose `/run` is a tmpfs (there CRIU saves the cache), then the
    /// file is copied to the real `/run` atomically. Blocking (≈ 0.1 s). Done at every module
    /// start, so the cache always describes the kernel that runs; `testbed down` removes it.
    pub fn prime_kdat_cache(&self) -> Result<u64, CriuError> {
        let path = PathBuf::from(KDAT_CACHE);
        let io = |source| CriuError::Io {
            path: path.clone(),
            source,
        };
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size=1m,mode=0700 tmpfs /run && "$1" check >/dev/null 2>&1; cat /run/criu.kdat"#)
            .arg("sh")
            .arg(&self.bin)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|source| CriuError::Spawn {
                action: "check",
                bin: self.bin.display().to_string(),
                source,
            })?;
        if out.stdout.is_empty() {
            return Err(io(std::io::Error::other(
                "criu check in a private /run left no kdat cache",
            )));
        }
        let tmp = path.with_file_name(format!(".criu.kdat.{}", std::process::id()));
        std::fs::write(&tmp, &out.stdout).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })?;
        Ok(out.stdout.len() as u64)
    }

    /// The `criu dump` arguments (stop-and-copy: the tree is killed when the dump succeeds).
    pub fn dump_args(&self, req: &DumpRequest) -> Vec<String> {
        let mut args = self.common("dump", &req.images, &req.log);
        args.extend([
            "-t".to_owned(),
            req.pid.to_string(),
            "--network-lock".to_owned(),
            "nftables".to_owned(),
            "--external".to_owned(),
            format!("net[{}]:{NETNS_KEY}", req.netns_inode),
        ]);
        args
    }

    /// The `criu restore` arguments (into the namespace handed over on fd 3).
    pub fn restore_args(&self, req: &RestoreRequest, action_script: Option<&Path>) -> Vec<String> {
        let mut args = self.common("restore", &req.images, &req.log);
        args.extend([
            "--restore-detached".to_owned(),
            "--pidfile".to_owned(),
            PIDFILE.to_owned(),
            "--inherit-fd".to_owned(),
            format!("fd[{NETNS_FD}]:{NETNS_KEY}"),
        ]);
        if req.lazy {
            args.push("--lazy-pages".to_owned());
        }
        if let Some(script) = action_script {
            args.extend(["--action-script".to_owned(), script.display().to_string()]);
        }
        args
    }

    /// The `criu dump` arguments of a post-copy dump: everything but the memory pages, which a
    /// page server on `ps` serves afterwards; readiness is written to fd 3.
    pub fn dump_lazy_args(&self, req: &DumpRequest, ps: PageServer) -> Vec<String> {
        let mut args = self.dump_args(req);
        args.extend([
            "--lazy-pages".to_owned(),
            "--address".to_owned(),
            ps.addr.to_string(),
            "--port".to_owned(),
            ps.port.to_string(),
            "--status-fd".to_owned(),
            STATUS_FD.to_string(),
        ]);
        args
    }

    /// The `criu lazy-pages` arguments: serve the restored tasks' page faults with pages fetched
    /// from the page server `ps`; readiness is written to fd 3.
    pub fn lazy_pages_args(&self, images: &Path, log: &Path, ps: PageServer) -> Vec<String> {
        vec![
            "lazy-pages".to_owned(),
            "-D".to_owned(),
            images.display().to_string(),
            "-o".to_owned(),
            log.display().to_string(),
            format!("-v{}", self.verbosity.min(4)),
            "--page-server".to_owned(),
            "--address".to_owned(),
            ps.addr.to_string(),
            "--port".to_owned(),
            ps.port.to_string(),
            "--status-fd".to_owned(),
            STATUS_FD.to_string(),
        ]
    }

    /// `sh -c 'exec nsenter --net=NS -- criu ARGS… 3>STATUS'`: CRIU inside an edge's namespace
    /// (so its page-server socket lives on the backhaul), reporting readiness into a FIFO.
    fn command_in_netns_with_status(
        &self,
        args: &[String],
        netns: &Path,
        status: &Path,
    ) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                r#"exec nsenter --net="$SVCMOD_NET" -- "$0" "$@" {STATUS_FD}>"$SVCMOD_STATUS""#
            ))
            .arg(&self.bin)
            .args(args)
            .env("SVCMOD_NET", netns)
            .env("SVCMOD_STATUS", status)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Starts a post-copy dump from inside the edge namespace `edge_netns`; returns once CRIU
    /// serves the pages (the tree is then frozen and locked; CRIU kills it when the pages are all
    /// fetched). Needs `fs.pipe-max-size` ≥ [`LAZY_PIPE_MAX_SIZE`] ([`PipeMaxSize`]).
    pub async fn dump_lazy(
        &self,
        req: &DumpRequest,
        ps: PageServer,
        edge_netns: &Path,
        limit: Duration,
    ) -> Result<LazyDump, CriuError> {
        std::fs::create_dir_all(&req.images).map_err(io_err(&req.images))?;
        let start = Instant::now();
        let status_path = req.log.with_extension("status");
        let mut status = status_fifo(&status_path)?;
        let cmd = self.command_in_netns_with_status(
            &self.dump_lazy_args(req, ps),
            edge_netns,
            &status_path,
        );
        let mut child = self.spawn(cmd, "dump")?;
        wait_status(&mut status, &mut child, "dump", &req.log, limit).await?;
        Ok(LazyDump {
            child,
            log: req.log.clone(),
            dumped: Dumped {
                took: start.elapsed(),
                image_bytes: dir_bytes(&req.images).map_err(io_err(&req.images))?,
            },
        })
    }

    /// Starts `criu lazy-pages` inside the edge namespace `edge_netns` for a restore from
    /// `images`, and waits until it accepts the restore.
    pub async fn lazy_pages_daemon(
        &self,
        images: &Path,
        log: &Path,
        ps: PageServer,
        edge_netns: &Path,
        limit: Duration,
    ) -> Result<LazyDaemon, CriuError> {
        let status_path = log.with_extension("status");
        let mut status = status_fifo(&status_path)?;
        let cmd = self.command_in_netns_with_status(
            &self.lazy_pages_args(images, log, ps),
            edge_netns,
            &status_path,
        );
        let mut child = self.spawn(cmd, "lazy-pages")?;
        wait_status(&mut status, &mut child, "lazy-pages", log, limit).await?;
        Ok(LazyDaemon {
            child,
            log: log.to_owned(),
            start: Instant::now(),
        })
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `sh -c 'exec criu ARGS… 3<NETNS'`: the only portable way to hand a child one extra fd
    /// without unsafe code.
    fn command_with_netns(&self, args: &[String], netns_path: &Path) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(r#"exec "$0" "$@" {NETNS_FD}<"$SVCMOD_NETNS""#))
            .arg(&self.bin)
            .args(args)
            .env("SVCMOD_NETNS", netns_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn spawn(&self, mut cmd: Command, action: &'static str) -> Result<Child, CriuError> {
        tracing::debug!(?cmd, action, "criu");
        cmd.spawn().map_err(|source| CriuError::Spawn {
            action,
            bin: self.bin.display().to_string(),
            source,
        })
    }

    /// Dumps the tree (stop-and-copy). On success the tree is gone and its namespace locked; on
    /// failure CRIU resumes the tree and unlocks.
    pub async fn dump(&self, req: &DumpRequest, limit: Duration) -> Result<Dumped, CriuError> {
        std::fs::create_dir_all(&req.images).map_err(io_err(&req.images))?;
        let start = Instant::now();
        let child = self.spawn(self.command(&self.dump_args(req)), "dump")?;
        finish(child, "dump", &req.log, limit).await?;
        let took = start.elapsed();
        Ok(Dumped {
            took,
            image_bytes: dir_bytes(&req.images).map_err(io_err(&req.images))?,
        })
    }

    /// Restores the images into the namespace at once (the tree resumes when CRIU exits).
    pub async fn restore(
        &self,
        req: &RestoreRequest,
        limit: Duration,
    ) -> Result<Restored, CriuError> {
        let start = Instant::now();
        let args = self.restore_args(req, None);
        let child = self.spawn(self.command_with_netns(&args, &req.netns_path), "restore")?;
        finish(child, "restore", &req.log, limit).await?;
        let pid = read_pid(&req.images)?;
        Ok(Restored {
            pid,
            took: start.elapsed(),
        })
    }

    /// Starts a restore that stops before resuming the tree and waits for [`GatedRestore::commit`]
    /// or [`GatedRestore::abort`]. `gate_dir` holds the action script and its FIFOs; `on_commit`
    /// is the command the script runs on commit (before the tree resumes).
    pub async fn restore_gated(
        &self,
        req: &RestoreRequest,
        gate_dir: &Path,
        on_commit: &[String],
    ) -> Result<GatedRestore, CriuError> {
        let gate = Gate::prepare(gate_dir, on_commit)?;
        let args = self.restore_args(req, Some(gate.script()));
        let child = self.spawn(self.command_with_netns(&args, &req.netns_path), "restore")?;
        Ok(GatedRestore::started(
            child,
            gate,
            req.log.clone(),
            Some(req.images.join(PIDFILE)),
        ))
    }
}

/// The action script of a gated restore and its two FIFOs, ready before CRIU starts. CRIU is
/// started by the caller with [`Gate::script`] as its `--action-script` (by [`Criu::restore_gated`],
/// or through LXC's `lxc-checkpoint -r -A`), and handed over to [`GatedRestore::started`].
#[derive(Debug)]
pub struct Gate {
    status: tokio::net::unix::pipe::Receiver,
    decision: std::fs::File,
    script: PathBuf,
}

impl Gate {
    /// Makes the FIFOs and the script in `gate_dir`; `on_commit` is the command the script runs
    /// on commit, before the tree resumes.
    pub fn prepare(gate_dir: &Path, on_commit: &[String]) -> Result<Self, CriuError> {
        std::fs::create_dir_all(gate_dir).map_err(io_err(gate_dir))?;
        let status_path = gate_dir.join("status.fifo");
        let decision_path = gate_dir.join("decision.fifo");
        for p in [&status_path, &decision_path] {
            if !p.exists() {
                nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o600))
                    .map_err(|e| io_err(p)(std::io::Error::from(e)))?;
            }
        }
        // Read-write opens never block on a FIFO and never see end-of-file: the script's opens
        // succeed at once, and the decision written early waits in the pipe.
        let status = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&status_path)
            .map_err(io_err(&status_path))?;
        let decision = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&decision_path)
            .map_err(io_err(&decision_path))?;
        let script = gate_dir.join("gate.sh");
        std::fs::write(
            &script,
            gate_script(&status_path, &decision_path, on_commit),
        )
        .map_err(io_err(&script))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err(&script))?;
        }
        Ok(Self {
            status,
            decision,
            script,
        })
    }

    /// The action script to hand to CRIU.
    pub fn script(&self) -> &Path {
        &self.script
    }
}

/// Quotes a word for `sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The action script of a gated restore.
pub fn gate_script(status: &Path, decision: &Path, on_commit: &[String]) -> String {
    let on_commit = if on_commit.is_empty() {
        "exit 0".to_owned()
    } else {
        let words: Vec<String> = on_commit.iter().map(|w| sh_quote(w)).collect();
        format!("exec {}", words.join(" "))
    };
    format!(
        "#!/bin/sh\n\
         # svcmod: CRIU action script of a gated restore (see svcmod/src/criu.rs)\n\
         [ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] || exit 0\n\
         echo \"restored $CRTOOLS_INIT_PID\" > {status}\n\
         read decision < {decision}\n\
         [ \"$decision\" = commit ] || exit 1\n\
         {on_commit}\n",
        status = sh_quote(&status.display().to_string()),
        decision = sh_quote(&decision.display().to_string()),
    )
}

/// A restore stopped at `post-restore`, waiting for the module's decision.
#[derive(Debug)]
pub struct GatedRestore {
    child: Option<Child>,
    gate: Gate,
    /// Where the restored root's PID is read after the commit (CRIU's `--pidfile`); without one,
    /// the PID the action script reported (`CRTOOLS_INIT_PID`).
    pidfile: Option<PathBuf>,
    log: PathBuf,
    start: Instant,
    restored_after: Option<Duration>,
    restored_pid: Option<i32>,
}

impl GatedRestore {
    /// A restore process just started with `gate`'s script as its action script; `log` is CRIU's
    /// log, `pidfile` where it writes the restored root's PID (if it does).
    pub fn started(child: Child, gate: Gate, log: PathBuf, pidfile: Option<PathBuf>) -> Self {
        Self {
            child: Some(child),
            gate,
            pidfile,
            log,
            start: Instant::now(),
            restored_after: None,
            restored_pid: None,
        }
    }

    /// The host PID of the restored root, as CRIU told the action script (known once
    /// [`GatedRestore::wait_restored`] returned).
    pub fn restored_pid(&self) -> Option<i32> {
        self.restored_pid
    }

    /// Waits until every task is restored (and stopped). Returns the time since CRIU started.
    pub async fn wait_restored(&mut self, limit: Duration) -> Result<Duration, CriuError> {
        let mut line = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        let Some(child) = self.child.as_mut() else {
            return Err(self.failed("restore", "already finished".into()));
        };
        loop {
            let mut byte = [0u8; 64];
            tokio::select! {
                r = self.gate.status.read(&mut byte) => {
                    let n = r.map_err(|source| CriuError::Io { path: self.log.clone(), source })?;
                    line.extend_from_slice(&byte[..n]);
                    if line.contains(&b'\n') {
                        let took = self.start.elapsed();
                        self.restored_after = Some(took);
                        self.restored_pid = parse_restored(&line);
                        return Ok(took);
                    }
                }
                status = child.wait() => {
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    self.child = None;
                    return Err(self.failed("restore", status));
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill().await;
                    }
                    return Err(CriuError::Timeout {
                        action: "restore",
                        limit_ms: ms(limit),
                        log: self.log.clone(),
                        tail: log_tail(&self.log),
                    });
                }
            }
        }
    }

    fn failed(&self, action: &'static str, status: String) -> CriuError {
        CriuError::Failed {
            action,
            status,
            log: self.log.clone(),
            tail: log_tail(&self.log),
        }
    }

    fn decide(&mut self, decision: &str) -> Result<(), CriuError> {
        use std::io::Write;
        self.gate
            .decision
            .write_all(decision.as_bytes())
            .map_err(|source| CriuError::Io {
                path: self.log.clone(),
                source,
            })
    }

    /// Lets the tree run: the script runs the commit command, CRIU resumes the tasks and exits.
    /// Returns the restored root's PID and the time from the decision to CRIU's exit.
    pub async fn commit(mut self, limit: Duration) -> Result<(Restored, Duration), CriuError> {
        let decided = Instant::now();
        self.decide("commit\n")?;
        let child = self
            .child
            .take()
            .ok_or_else(|| self.failed("restore", "already finished".into()))?;
        finish(child, "restore", &self.log, limit).await?;
        let pid = match &self.pidfile {
            Some(pidfile) => {
                netkit::process::read_pidfile(pidfile).ok_or_else(|| CriuError::NoPid {
                    pidfile: pidfile.clone(),
                })?
            }
            None => self.restored_pid.ok_or_else(|| CriuError::NoPid {
                pidfile: self.log.clone(),
            })?,
        };
        Ok((
            Restored {
                pid,
                took: self.restored_after.unwrap_or_default(),
            },
            decided.elapsed(),
        ))
    }

    /// Refuses the restore: the script fails and CRIU kills what it restored. Waits for CRIU to
    /// exit (killing it after `limit`).
    pub async fn abort(mut self, limit: Duration) {
        let _ = self.decide("abort\n");
        if let Some(mut child) = self.child.take() {
            if tokio::time::timeout(limit, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// The root PID in the gate script's status line (`restored PID`).
fn parse_restored(line: &[u8]) -> Option<i32> {
    std::str::from_utf8(line)
        .ok()?
        .lines()
        .next()?
        .strip_prefix("restored")?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Makes (if needed) and opens a FIFO for CRIU's `--status-fd`, read-write so that CRIU's open
/// never blocks and a reader never sees end-of-file before CRIU writes.
fn status_fifo(path: &Path) -> Result<tokio::net::unix::pipe::Receiver, CriuError> {
    if !path.exists() {
        nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600))
            .map_err(|e| io_err(path)(std::io::Error::from(e)))?;
    }
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(io_err(path))
}

/// Waits for CRIU's readiness byte, or its exit (an error), or the time limit.
async fn wait_status(
    status: &mut tokio::net::unix::pipe::Receiver,
    child: &mut Child,
    action: &'static str,
    log: &Path,
    limit: Duration,
) -> Result<(), CriuError> {
    let mut byte = [0u8; 1];
    tokio::select! {
        r = status.read(&mut byte) => {
            r.map_err(|source| CriuError::Io { path: log.to_owned(), source })?;
            Ok(())
        }
        exited = child.wait() => {
            let status = exited.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Err(CriuError::Failed { action, status, log: log.to_owned(), tail: log_tail(log) })
        }
        () = tokio::time::sleep(limit) => {
            let _ = child.kill().await;
            Err(CriuError::Timeout { action, limit_ms: ms(limit), log: log.to_owned(), tail: log_tail(log) })
        }
    }
}

/// A post-copy dump serving the pages: the tree is frozen and locked until every page is
/// fetched, then CRIU kills it and exits.
#[derive(Debug)]
pub struct LazyDump {
    child: Child,
    log: PathBuf,
    dumped: Dumped,
}

impl LazyDump {
    /// The dump up to the page server (images without the lazy pages).
    pub fn dumped(&self) -> Dumped {
        self.dumped
    }

    /// Whether a lazy-pages daemon has connected to the page server (CRIU serves one session:
    /// after it, the pages are no longer available to anyone else).
    pub fn page_server_used(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains("Accepted connection"))
    }

    /// Waits until every page was fetched and CRIU exited.
    pub async fn wait_finished(self, limit: Duration) -> Result<(), CriuError> {
        finish(self.child, "dump", &self.log, limit).await
    }

    /// Ends the dump at once (the page server goes away).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A `criu lazy-pages` daemon feeding restored tasks; it exits when every page arrived.
#[derive(Debug)]
pub struct LazyDaemon {
    child: Child,
    log: PathBuf,
    start: Instant,
}

impl LazyDaemon {
    /// Waits until every page arrived and the daemon exited; returns its lifetime.
    pub async fn wait_finished(self, limit: Duration) -> Result<Duration, CriuError> {
        let start = self.start;
        finish(self.child, "lazy-pages", &self.log, limit).await?;
        Ok(start.elapsed())
    }

    /// Ends the daemon at once.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Waits for a CRIU run and turns a failure into an error with the log's tail.
pub(crate) async fn finish(
    mut child: Child,
    action: &'static str,
    log: &Path,
    limit: Duration,
) -> Result<(), CriuError> {
    let mut stderr = child.stderr.take();
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_err(|source| CriuError::Io {
            path: log.to_owned(),
            source,
        })?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(CriuError::Timeout {
                action,
                limit_ms: ms(limit),
                log: log.to_owned(),
                tail: log_tail(log),
            });
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(s) = stderr.as_mut() {
        let _ = s.read_to_string(&mut err).await;
    }
    let mut tail = log_tail(log);
    if tail.is_empty() {
        tail = err.trim().to_owned();
    }
    Err(CriuError::Failed {
        action,
        status: status.to_string(),
        log: log.to_owned(),
        tail,
    })
}

fn read_pid(images: &Path) -> Result<i32, CriuError> {
    let pidfile = images.join(PIDFILE);
    netkit::process::read_pidfile(&pidfile).ok_or(CriuError::NoPid { pidfile })
}

/// The last error lines of a CRIU log (or its last lines when it has none), on one line.
pub fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"))
        .collect();
    let pick = if errors.is_empty() { &lines } else { &errors };
    pick[pick.len().saturating_sub(4)..]
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What a crashed module's CRIU runs in its moves' directories left (a restarted module's
/// survey): the runs whose command line names a path starting with one of `prefixes` (a running
/// LXC container's monitor, which names the lxcpath, is no such run). A run that dumps is let
/// finish (within `limit`; its images are what the restarted module resumes from), every other
/// one — a restore waiting for the dead module's decision, its action script, a lazy-pages
/// daemon, a page server — is killed, and so is a dump still running after `limit`. The PIDs
/// that were killed.
pub fn settle_orphans(prefixes: &[PathBuf], limit: Duration) -> Vec<i32> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let needles: Vec<String> = prefixes.iter().map(|p| p.display().to_string()).collect();
    let runs = || -> Vec<(i32, bool)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let own = std::process::id();
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| u32::try_from(*p).ok() != Some(own))
            .filter_map(|p| {
                let args = netkit::process::cmdline(p)?;
                let dump = args.split_whitespace().any(|a| a == "dump" || a == "-s");
                needles
                    .iter()
                    .any(|n| args.contains(n.as_str()))
                    .then_some((p, dump))
            })
            .collect()
    };
    let kill_all = |pids: &[i32]| {
        for p in pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    };
    let others: Vec<i32> = runs()
        .into_iter()
        .filter(|(_, d)| !d)
        .map(|r| r.0)
        .collect();
    kill_all(&others);
    let start = Instant::now();
    let mut killed = others;
    loop {
        let dumps: Vec<i32> = runs()
            .into_iter()
            .filter(|(_, d)| *d)
            .map(|r| r.0)
            .collect();
        if dumps.is_empty() {
            break;
        }
        if start.elapsed() >= limit {
            kill_all(&dumps);
            killed.extend(dumps);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !killed.is_empty() {
        tracing::warn!(pids = ?killed, ?prefixes, "ended the CRIU runs a crash left");
    }
    killed
}

/// Total size of the regular files directly in `dir`.
pub fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Raises `fs.pipe-max-size` for lazy-pages migration and puts the old value back when the last
/// holder in this process drops it. (Two module *processes* on one host would still race: the
/// daemon should raise it once at start when it offers lazy pages.)
#[derive(Debug)]
pub struct PipeMaxSize(());

/// Holders in this process, and the value to restore.
static PIPE_MAX_HOLDERS: std::sync::Mutex<(usize, Option<u64>)> = std::sync::Mutex::new((0, None));

impl PipeMaxSize {
    /// Makes sure `fs.pipe-max-size` is at least `size` while the guard lives.
    pub fn raise(size: u64) -> Result<Self, CriuError> {
        let path = Path::new(PIPE_MAX_SIZE);
        let mut holders = PIPE_MAX_HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
        if holders.0 == 0 {
            let old: u64 = std::fs::read_to_string(path)
                .map_err(io_err(path))?
                .trim()
                .parse()
                .unwrap_or(0);
            if old < size {
                std::fs::write(path, size.to_string()).map_err(io_err(path))?;
                holders.1 = Some(old);
            } else {
                holders.1 = None;
            }
        }
        holders.0 += 1;
        Ok(Self(()))
    }
}

impl Drop for PipeMaxSize {
    fn drop(&mut self) {
        let mut holders = PIPE_MAX_HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
        holders.0 = holders.0.saturating_sub(1);
        if holders.0 == 0 {
            if let Some(old) = holders.1.take() {
                let _ = std::fs::write(PIPE_MAX_SIZE, old.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_keeps_the_netns_outside_and_locks_with_nftables() {
        let criu = Criu::new("/usr/local/sbin/criu");
        let args = criu.dump_args(&DumpRequest {
            pid: 42,
            netns_inode: 4026532468,
            images: "/dev/shm/m/images".into(),
            log: "/dev/shm/m/dump.log".into(),
        });
        let line = args.join(" ");
        assert!(line.starts_with("dump -D /dev/shm/m/images -o /dev/shm/m/dump.log -v4"));
        assert!(line.contains("-t 42"));
        assert!(line.contains("--tcp-established"));
        assert!(line.contains("--network-lock nftables"));
        assert!(line.contains("--external net[4026532468]:svcmod-net"));
        assert!(!line.contains("--leave-running"));
    }

    #[test]
    fn restore_inherits_the_target_netns_on_fd_3() {
        let criu = Criu::default();
        let req = RestoreRequest {
            images: "/i".into(),
            log: "/l".into(),
            netns_path: "/run/netns/tb-svc-a-y".into(),
            lazy: false,
        };
        let line = criu
            .restore_args(&req, Some(Path::new("/g/gate.sh")))
            .join(" ");
        assert!(line.contains("--restore-detached --pidfile restored.pid"));
        assert!(line.contains("--inherit-fd fd[3]:svcmod-net"));
        assert!(line.ends_with("--action-script /g/gate.sh"));
        assert!(!criu.restore_args(&req, None).join(" ").contains("action"));
        let lazy = RestoreRequest { lazy: true, ..req };
        assert!(criu
            .restore_args(&lazy, None)
            .contains(&"--lazy-pages".to_owned()));
    }

    #[test]
    fn lazy_dump_serves_pages_on_the_backhaul_and_reports_readiness() {
        let criu = Criu::default();
        let ps = PageServer {
            addr: std::net::Ipv4Addr::new(10, 0, 1, 1),
            port: 27001,
        };
        let req = DumpRequest {
            pid: 7,
            netns_inode: 1,
            images: "/i".into(),
            log: "/d.log".into(),
        };
        let line = criu.dump_lazy_args(&req, ps).join(" ");
        assert!(line.contains("--external net[1]:svcmod-net"));
        assert!(line.ends_with("--lazy-pages --address 10.0.1.1 --port 27001 --status-fd 3"));
        let line = criu
            .lazy_pages_args(Path::new("/t"), Path::new("/t.log"), ps)
            .join(" ");
        assert!(line.starts_with("lazy-pages -D /t -o /t.log"));
        assert!(line.ends_with("--page-server --address 10.0.1.1 --port 27001 --status-fd 3"));
    }

    #[test]
    fn gate_script_waits_for_commit_and_quotes_its_words() {
        let s = gate_script(
            Path::new("/d/status.fifo"),
            Path::new("/d/decision.fifo"),
            &["ip".into(), "-n".into(), "it's".into()],
        );
        assert!(s.contains("= post-restore ] || exit 0"));
        assert!(s.contains("echo \"restored $CRTOOLS_INIT_PID\" > '/d/status.fifo'"));
        assert!(s.contains("read decision < '/d/decision.fifo'"));
        assert!(s.contains("= commit ] || exit 1"));
        assert!(s.contains(r"exec 'ip' '-n' 'it'\''s'"));
    }

    #[test]
    fn the_status_line_names_the_restored_root() {
        assert_eq!(parse_restored(b"restored 4242\n"), Some(4242));
        assert_eq!(parse_restored(b"restored \n"), None);
        assert_eq!(parse_restored(b"restored -1\n"), None);
        assert_eq!(parse_restored(b"garbage\n"), None);
    }

    #[test]
    fn log_tail_prefers_errors() {
        let dir = std::env::temp_dir().join(format!("svcmod-logtail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("x.log");
        std::fs::write(
            &log,
            "a\n(0.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE\nb\n(0.2) Error (x): real\nc\n",
        )
        .expect("write");
        assert_eq!(log_tail(&log), "(0.2) Error (x): real");
        std::fs::write(&log, "one\ntwo\n").expect("write");
        assert_eq!(log_tail(&log), "one | two");
        assert_eq!(dir_bytes(&dir).ok(), Some(8));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(log_tail(&log), "");
    }
}

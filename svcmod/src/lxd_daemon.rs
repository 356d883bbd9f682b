//! One LXD daemon per edge cloud (the system layer of the LXD backend, DESIGN.md "LXD").
//!
//! [`start`] runs `lxd` inside the edge's network namespace **and** a mount namespace of its own,
//! where the daemon's directory `DIR/lxd` is bind-mounted onto `/var/lib/lxd` (and `DIR/tmp` onto
//! `/tmp`) and `LXD_DIR=/var/lib/lxd`: every daemon sees the same paths, which CRIU's images of a
//! live-migrated container require (with a different `LXD_DIR` per daemon the restore fails on
//! the source's `shmounts` path). It then preseeds the daemon (HTTPS address on the edge's
//! backhaul, a loop-backed **btrfs** pool `default`, a default profile with a root disk and no
//! nic) and imports the busybox image [`IMAGE_ALIAS`]. Its `PATH` starts with `DIR/bin`, where
//! [`criu_wrapper_script`] puts the `criu` LXD must use.
//!
//! [`stop`] shuts the daemon down and removes everything of it: processes (found by its mount
//! namespace and their descendants, ended by PID), loop devices backed by its files, mounts,
//! empty cgroups of its instances, the directory. [`sweep`] does the same from the directory
//! alone after a crash.
//!
//! From the host, the daemon answers on `DIR/lxd/unix.socket` ([`Daemon::request`]).

use crate::lxd::{Answer, LxdClient};
use netkit::cmd::{CmdError, Tool};
use netkit::process::{is_alive, Started};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddrV4;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The alias of the busybox image every daemon has.
pub const IMAGE_ALIAS: &str = "testbed-busybox";
/// The init of [`IMAGE_ALIAS`]: makes `/dev/console` (CRIU needs it with `lxc.console.path =
/// none`), then runs `environment.TESTBED_CMD` with `sh -c` (or sleeps).
pub const IMAGE_INIT: &str = "/sbin/testbed-init";
/// The CRIU every daemon's wrapper runs.
pub const DEFAULT_CRIU: &str = "/opt/testbed/bin/criu";
/// Where every daemon sees its own directory (inside its mount namespace).
const LXD_DIR_INSIDE: &str = "/var/lib/lxd";
/// The time limit of one REST call (an operation's `wait?timeout=N` answers within N s).
const CALL_LIMIT: Duration = Duration::from_secs(120);
/// The state file [`start`] writes into the daemon's directory.
const STATE_FILE: &str = "daemon.json";
/// The smallest btrfs loop pool `mkfs.btrfs` accepts comfortably.
const MIN_POOL_MIB: u32 = 128;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonSpec {
    /// Everything of this daemon lives here (its `LXD_DIR` is `dir/lxd`, the pool's loop file
    /// `dir/lxd/disks/default.img`). Any local file system (not inside another daemon's
    /// directory); the socket path `dir/lxd/unix.socket` must stay under 108 bytes. E.g.
    /// `/var/lib/testbed/lxd/edge-x`.
    pub dir: PathBuf,
    /// The edge's network namespace (`/run/netns/<netns>`), e.g. `tb-edge-x`.
    pub netns: String,
    /// `core.https_address`, on the edge's backhaul, e.g. `10.0.1.1:8443`.
    pub https_addr: SocketAddrV4,
    /// Size of the btrfs pool's loop file (at least 128).
    pub pool_size_mib: u32,
    /// The CRIU the daemon's wrapper runs (see [`criu_wrapper_script`]).
    pub criu: PathBuf,
}

impl DaemonSpec {
    /// A spec with a 512 MiB pool and [`DEFAULT_CRIU`].
    pub fn new(
        dir: impl Into<PathBuf>,
        netns: impl Into<String>,
        https_addr: SocketAddrV4,
    ) -> Self {
        Self {
            dir: dir.into(),
            netns: netns.into(),
            https_addr,
            pool_size_mib: 512,
            criu: PathBuf::from(DEFAULT_CRIU),
        }
    }
}

/// A running daemon, as the testbed persists it (plain serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemon {
    /// The `lxd` process.
    pub pid: i32,
    /// Inode of its mount namespace (every process it starts shares it, or descends from one
    /// that does).
    pub mnt_ns: u64,
    pub dir: PathBuf,
    pub netns: String,
    /// `dir/lxd/unix.socket`.
    pub socket: PathBuf,
    pub https_addr: SocketAddrV4,
    /// Its server certificate (PEM), for the `certificate` of a migration source.
    pub server_cert_pem: String,
}

/// A failure of a daemon operation.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("bad daemon spec: {0}")]
    BadSpec(String),
    #[error("a daemon (PID {pid}) already runs in {dir}")]
    AlreadyRunning { dir: PathBuf, pid: i32 },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lxd in {dir} did not get ready: {detail}; log: {log}")]
    NotReady {
        dir: PathBuf,
        detail: String,
        log: String,
    },
    #[error("{method} {path} on {socket}: {detail}")]
    Api {
        socket: PathBuf,
        method: String,
        path: String,
        detail: String,
    },
    #[error("bad state file {path}: {detail}")]
    State { path: PathBuf, detail: String },
    #[error("{dir} still has {what} after the stop")]
    Leftover { dir: PathBuf, what: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DaemonSpec {
    fn validate(&self) -> Result<(), DaemonError> {
        if !self.dir.is_absolute() {
            return Err(DaemonError::BadSpec(format!(
                "dir {} is not absolute",
                self.dir.display()
            )));
        }
        let socket_len = self.dir.join("lxd/unix.socket").as_os_str().len();
        if socket_len >= 108 {
            return Err(DaemonError::BadSpec(format!(
                "dir {} is too long for a unix socket path",
                self.dir.display()
            )));
        }
        if self.netns.is_empty() || self.netns.contains('/') || self.netns.starts_with('.') {
            return Err(DaemonError::BadSpec(format!(
                "bad netns name {:?}",
                self.netns
            )));
        }
        if self.pool_size_mib < MIN_POOL_MIB {
            return Err(DaemonError::BadSpec(format!(
                "pool_size_mib {} < {MIN_POOL_MIB}",
                self.pool_size_mib
            )));
        }
        Ok(())
    }
}

/// What `lxd init --preseed` gets (JSON is YAML): the HTTPS address, no automatic image updates
/// (no image server is reachable), the loop-backed btrfs pool `default`, and a default profile
/// with only a root disk (the backend adds each instance's nic itself).
pub fn preseed(spec: &DaemonSpec) -> Value {
    json!({
        "config": {
            "core.https_address": spec.https_addr.to_string(),
            "images.auto_update_interval": "0",
        },
        "storage_pools": [{
            "name": "default",
            "driver": "btrfs",
            "config": { "size": format!("{}MiB", spec.pool_size_mib) },
        }],
        "profiles": [{
            "name": "default",
            "devices": { "root": { "path": "/", "pool": "default", "type": "disk" } },
        }],
    })
}

/// The image's `metadata.yaml`. A fixed creation date (and a tarball made with fixed mtimes)
/// gives every daemon the same image fingerprint.
pub fn image_metadata() -> String {
    "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: testbed busybox\n  os: busybox\n  release: testbed\n".to_owned()
}

/// The image's init ([`IMAGE_INIT`]). `lxc.init.cmd` does not honour quotes, so the command
/// comes in `environment.TESTBED_CMD`.
pub fn image_init_script() -> String {
    "#!/bin/sh\n# testbed image init: CRIU needs /dev/console (lxc.console.path = none)\ntouch /dev/console\n[ -n \"$TESTBED_CMD\" ] && exec /bin/sh -c \"$TESTBED_CMD\"\nexec sleep 2147483647\n".to_owned()
}

/// The `criu` on LXD's `PATH` (`DIR/bin/criu`): logs each call to `DIR/criu-calls.log`, drops
/// `--lsm-profile` (there is no AppArmor here), adds `--network-lock nftables` (there is no
/// iptables), and for a dump deletes `tty.info` from the images directory before criu runs
/// (LXC writes it before, and a live move sends the images from criu's post-dump action
/// script, so after is too late) and after. Then runs `real_criu`.
pub fn criu_wrapper_script(real_criu: &Path, log: &Path) -> String {
    format!(
        r#"#!/bin/sh
# LXD's criu (written by svcmod::lxd_daemon): see criu_wrapper_script.
REAL='{real}'
echo "$(date +%s.%N) $*" >> '{log}'
images=""; dump=0; first=1; skip=0; prev=""
for a in "$@"; do
  if [ $first = 1 ]; then set --; first=0; fi
  if [ $skip = 1 ]; then skip=0; prev=""; continue; fi
  case "$a" in
    --lsm-profile) skip=1; continue ;;
    --lsm-profile=*) continue ;;
  esac
  case "$prev" in -D|--images-dir) images="$a" ;; esac
  case "$a" in --images-dir=*) images="${{a#--images-dir=}}" ;; dump|pre-dump) dump=1 ;; esac
  set -- "$@" "$a"; prev="$a"
done
case "$1" in check|--version|-V|"") exec "$REAL" "$@" ;; esac
if [ $dump = 1 ]; then
  [ -n "$images" ] && rm -f "$images/tty.info"
  "$REAL" "$@" --network-lock nftables; rc=$?
  [ -n "$images" ] && rm -f "$images/tty.info"
  exit $rc
fi
exec "$REAL" "$@" --network-lock nftables
"#,
        real = real_criu.display(),
        log = log.display()
    )
}

/// The shell line run (as `sh -c`) inside the daemon's fresh mount namespace: a sysfs of the
/// edge's network namespace (so LXD sees the edge's interfaces), the host's cgroup mounts back
/// on it, the private directories on `/var/lib/lxd` and `/tmp`, then `exec lxd`.
fn namespace_script(dir: &Path) -> String {
    let d = shell_quote(&dir.display().to_string());
    format!(
        "set -e; mkdir -p {d}/cg; mount --rbind /sys/fs/cgroup {d}/cg; \
         mount -t sysfs sysfs /sys; mount --move {d}/cg /sys/fs/cgroup; rmdir {d}/cg; \
         mount --bind {d}/lxd {LXD_DIR_INSIDE}; mount --bind {d}/tmp /tmp; \
         export LXD_DIR={LXD_DIR_INSIDE} PATH={d}/bin:$PATH; \
         exec lxd --group lxd --logfile {d}/lxd.log"
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Starts the daemon of `spec` (about 1–1.5 s): refuses when `spec.dir` has a live daemon; on a
/// failure after the launch it removes what it made.
pub fn start(spec: &DaemonSpec) -> Result<Daemon, DaemonError> {
    spec.validate()?;
    let netns_path = PathBuf::from("/run/netns").join(&spec.netns);
    if !netns_path.exists() {
        return Err(DaemonError::BadSpec(format!(
            "no network namespace {}",
            spec.netns
        )));
    }
    if !Path::new(LXD_DIR_INSIDE).is_dir() {
        return Err(DaemonError::BadSpec(format!(
            "{LXD_DIR_INSIDE} is missing (install lxd: scripts/setup)"
        )));
    }
    if let Some(old) = load(&spec.dir)? {
        if lxd_started(&old).is_running() {
            return Err(DaemonError::AlreadyRunning {
                dir: spec.dir.clone(),
                pid: old.pid,
            });
        }
        sweep(&spec.dir)?;
    } else if spec.dir.join("lxd").exists() {
        sweep(&spec.dir)?;
    }
    for sub in ["lxd", "tmp", "bin"] {
        let p = spec.dir.join(sub);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let wrapper = spec.dir.join("bin/criu");
    write_executable(
        &wrapper,
        &criu_wrapper_script(&spec.criu, &spec.dir.join("criu-calls.log")),
    )?;

    let out_path = spec.dir.join("lxd.out");
    let out = std::fs::File::create(&out_path).map_err(io_err(&out_path))?;
    let err = out.try_clone().map_err(io_err(&out_path))?;
    // Each program execs the next: the child's PID ends up as lxd's.
    let mut child = Command::new("setsid")
        .arg("nsenter")
        .arg(format!("--net={}", netns_path.display()))
        .args(["--", "unshare", "-m", "--propagation", "slave", "sh", "-c"])
        .arg(namespace_script(&spec.dir))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| {
            DaemonError::Cmd(CmdError::Spawn {
                program: "setsid".into(),
                source,
            })
        })?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // Reap it whenever it ends (PID 1 here does not reap orphans).
    std::thread::spawn(move || child.wait());

    let mut daemon = Daemon {
        pid,
        mnt_ns: 0,
        dir: spec.dir.clone(),
        netns: spec.netns.clone(),
        socket: spec.dir.join("lxd/unix.socket"),
        https_addr: spec.https_addr,
        server_cert_pem: String::new(),
    };
    save(&daemon)?;
    match configure(spec, &mut daemon) {
        Ok(()) => Ok(daemon),
        Err(e) => {
            tracing::warn!(dir = %spec.dir.display(), error = %e, "lxd start failed, removing it");
            let _ = stop(&daemon);
            Err(e)
        }
    }
}

fn configure(spec: &DaemonSpec, d: &mut Daemon) -> Result<(), DaemonError> {
    let began = Instant::now();
    if let Err(e) = lxd_tool(d, "lxd")
        .args(["waitready", "--timeout", "30"])
        .run()
    {
        return Err(DaemonError::NotReady {
            dir: d.dir.clone(),
            detail: e.to_string(),
            log: log_tail(&d.dir),
        });
    }
    d.mnt_ns = std::fs::metadata(format!("/proc/{}/ns/mnt", d.pid))
        .map(|m| m.ino())
        .map_err(|e| DaemonError::NotReady {
            dir: d.dir.clone(),
            detail: format!("lxd (PID {}) is gone: {e}", d.pid),
            log: log_tail(&d.dir),
        })?;
    save(d)?;
    let ready_ms = began.elapsed().as_millis();

    let began = Instant::now();
    lxd_init_preseed(d, &preseed(spec).to_string())?;
    let preseed_ms = began.elapsed().as_millis();

    let began = Instant::now();
    let tarball = build_image(&d.dir)?;
    lxd_tool(d, "lxc")
        .args(["image", "import"])
        .arg(&tarball)
        .args(["--alias", IMAGE_ALIAS])
        .run()?;
    let _ = std::fs::remove_file(&tarball);
    let image_ms = began.elapsed().as_millis();

    let cert = d.dir.join("lxd/server.crt");
    d.server_cert_pem = std::fs::read_to_string(&cert).map_err(io_err(&cert))?;
    save(d)?;
    tracing::info!(dir = %d.dir.display(), pid = d.pid, https = %d.https_addr, ready_ms,
        preseed_ms, image_ms, "lxd started");
    Ok(())
}

fn lxd_tool(d: &Daemon, program: &str) -> Tool {
    Tool::new(program).env("LXD_DIR", d.dir.join("lxd"))
}

/// `lxd init --preseed` with `input` on its stdin (`Tool` closes stdin).
fn lxd_init_preseed(d: &Daemon, input: &str) -> Result<(), DaemonError> {
    let line = "lxd init --preseed".to_owned();
    let program = "lxd";
    let mut child = Command::new(program)
        .args(["init", "--preseed"])
        .env("LXD_DIR", d.dir.join("lxd"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            DaemonError::Cmd(CmdError::Spawn {
                program: program.into(),
                source,
            })
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(io_err(&d.dir))?;
    }
    let out = child.wait_with_output().map_err(io_err(&d.dir))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DaemonError::Cmd(CmdError::Failed {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }))
    }
}

fn write_executable(path: &Path, text: &str) -> Result<(), DaemonError> {
    std::fs::write(path, text).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io_err(path))
}

/// Builds the busybox image tarball (unified: `metadata.yaml` + `rootfs/`) in `dir/tmp` and
/// returns its path. Fixed mtimes and owners: the same bytes (fingerprint) every time.
fn build_image(dir: &Path) -> Result<PathBuf, DaemonError> {
    let work = dir.join("tmp/image");
    let _ = std::fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root",
        "var",
    ] {
        let p = rootfs.join(sub);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let busybox = rootfs.join("bin/busybox");
    std::fs::copy("/bin/busybox", &busybox).map_err(io_err(Path::new("/bin/busybox")))?;
    let applets = Tool::new("/bin/busybox").arg("--list-full").stdout()?;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = rootfs.join(applet);
        if link.exists() {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).map_err(io_err(&link))?;
    }
    write_executable(
        &rootfs.join(IMAGE_INIT.trim_start_matches('/')),
        &image_init_script(),
    )?;
    let meta = work.join("metadata.yaml");
    std::fs::write(&meta, image_metadata()).map_err(io_err(&meta))?;
    let tarball = dir.join("tmp/image.tar");
    Tool::new("tar")
        .args([
            "--sort=name",
            "--mtime=@1700000000",
            "--owner=0",
            "--group=0",
        ])
        .arg("--numeric-owner")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&tarball)
        .args(["metadata.yaml", "rootfs"])
        .run()?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(tarball)
}

fn log_tail(dir: &Path) -> String {
    let mut text = String::new();
    for f in ["lxd.out", "lxd.log"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
            let lines: Vec<&str> = t.lines().collect();
            let from = lines.len().saturating_sub(5);
            text.push_str(&lines[from..].join(" | "));
        }
    }
    text
}

fn save(d: &Daemon) -> Result<(), DaemonError> {
    let path = d.dir.join(STATE_FILE);
    let text = serde_json::to_string_pretty(d).map_err(|e| DaemonError::State {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(io_err(&path))
}

/// The daemon recorded in `dir` by [`start`], if any.
pub fn load(dir: &Path) -> Result<Option<Daemon>, DaemonError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DaemonError::State {
                path,
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DaemonError::Io { path, source }),
    }
}

fn lxd_started(d: &Daemon) -> Started {
    Started {
        name: format!("lxd@{}", d.netns),
        pid: d.pid,
        // Its command line holds `--logfile DIR/lxd.log`.
        marker: d.dir.join("lxd.log").display().to_string(),
    }
}

impl Daemon {
    /// Whether the recorded `lxd` process still runs.
    pub fn is_running(&self) -> bool {
        lxd_started(self).is_running()
    }

    /// One REST call over the daemon's unix socket (`path` like `/1.0/instances`) with the
    /// backend's client ([`LxdClient`]); returns the answer as LXD's envelope (`type`, and
    /// `metadata`: a sync answer's, or the operation). An LXD error answer is an error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DaemonError> {
        let api = |detail: String| DaemonError::Api {
            socket: self.socket.clone(),
            method: method.to_owned(),
            path: path.to_owned(),
            detail,
        };
        let client = LxdClient::new(&self.socket).with_call_limit(CALL_LIMIT);
        let answer = crate::lxd::block_on(client.request(method, path, body))
            .map_err(|e| api(e.to_string()))?
            .map_err(|e| api(e.to_string()))?;
        Ok(match answer {
            Answer::Sync(metadata) => json!({"type": "sync", "metadata": metadata}),
            Answer::Async(op) => json!({"type": "async", "metadata": op}),
        })
    }

    /// Waits for operation `id` (at most `timeout_s`); returns its metadata when it succeeded.
    pub fn wait_operation(&self, id: &str, timeout_s: u32) -> Result<Value, DaemonError> {
        let path = format!("/1.0/operations/{id}/wait?timeout={timeout_s}");
        let v = self.request("GET", &path, None)?;
        let op = &v["metadata"];
        if op["status"] == "Success" {
            Ok(op.clone())
        } else {
            Err(DaemonError::Api {
                socket: self.socket.clone(),
                method: "GET".into(),
                path,
                detail: format!(
                    "operation {}: {}",
                    op["status"].as_str().unwrap_or("?"),
                    op["err"].as_str().unwrap_or("")
                ),
            })
        }
    }

    /// The certificate as `POST /1.0/certificates` wants it: the PEM's base64 body on one line.
    pub fn cert_base64(&self) -> String {
        pem_body(&self.server_cert_pem)
    }
}

fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect()
}

/// Makes each daemon trust the other's server certificate (as a client certificate), so either
/// can pull a migration from the other. Already trusted is fine.
pub fn trust_each_other(a: &Daemon, b: &Daemon) -> Result<(), DaemonError> {
    for (truster, trusted) in [(a, b), (b, a)] {
        let body = json!({
            "type": "client",
            "name": format!("lxd@{}", trusted.netns),
            "certificate": trusted.cert_base64(),
        });
        match truster.request("POST", "/1.0/certificates", Some(&body)) {
            Ok(_) => {}
            Err(DaemonError::Api { detail, .. }) if detail.contains("already") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Stops the daemon and removes everything of it (deleting instances is the backend's business:
/// running ones are force-stopped first, not deleted). `lxd shutdown` (≤ 10 s), then SIGKILL to every
/// process left in its mount namespace and their descendants (by PID); then the loop devices
/// backed by its files, mounts under its directory, empty cgroups of its instances, the
/// directory. Fails only when something is still there at the end.
pub fn stop(d: &Daemon) -> Result<(), DaemonError> {
    let names = instance_names(d);
    let mut mnt_ns = d.mnt_ns;
    if d.is_running() {
        if mnt_ns == 0 {
            mnt_ns = std::fs::metadata(format!("/proc/{}/ns/mnt", d.pid))
                .map(|m| m.ino())
                .unwrap_or(0);
        }
        force_stop_instances(d, &names);
        if let Err(e) = lxd_tool(d, "lxd")
            .args(["shutdown", "--timeout", "10"])
            .run()
        {
            tracing::warn!(dir = %d.dir.display(), error = %e, "lxd shutdown failed, killing it");
        }
    }
    let mut pids = if d.is_running() { vec![d.pid] } else { vec![] };
    if mnt_ns != 0 {
        pids.extend(pids_in_mnt_ns(mnt_ns));
    }
    kill_trees(&pids);
    detach_loops(&d.dir);
    unmount_under(&d.dir);
    remove_empty_cgroups(&names);
    if d.dir.exists() {
        std::fs::remove_dir_all(&d.dir).map_err(io_err(&d.dir))?;
    }
    leftovers(d, mnt_ns)
}

/// Force-stops the running instances (else `lxd shutdown` waits for each to power off: a
/// busybox init ignores SIGPWR, 10 s).
fn force_stop_instances(d: &Daemon, names: &BTreeSet<String>) {
    for name in names {
        let path = format!("/1.0/instances/{name}/state");
        let running = d
            .request("GET", &path, None)
            .is_ok_and(|v| v["metadata"]["status"] == "Running");
        if !running {
            continue;
        }
        let body = json!({"action": "stop", "force": true, "timeout": 5});
        let stopped = d
            .request("PUT", &path, Some(&body))
            .and_then(|op| d.wait_operation(op["metadata"]["id"].as_str().unwrap_or_default(), 10));
        if let Err(e) = stopped {
            tracing::warn!(instance = %name, error = %e, "cannot stop instance");
        }
    }
}

/// Removes the daemon recorded in `dir` (after a crash, or before a start): [`stop`] with its
/// state file, or, without one, whatever `lxd` runs with `dir`'s log file, then the directory.
pub fn sweep(dir: &Path) -> Result<(), DaemonError> {
    if let Some(d) = load(dir)? {
        return stop(&d);
    }
    let marker = dir.join("lxd.log").display().to_string();
    let d = find_pids(|pid| {
        netkit::process::cmdline(pid).is_some_and(|c| c.starts_with("lxd ") && c.contains(&marker))
    })
    .into_iter()
    .next()
    .map(|pid| Daemon {
        pid,
        mnt_ns: 0,
        dir: dir.to_path_buf(),
        netns: String::new(),
        socket: dir.join("lxd/unix.socket"),
        https_addr: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
        server_cert_pem: String::new(),
    });
    match d {
        Some(d) => stop(&d),
        None => {
            detach_loops(dir);
            unmount_under(dir);
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
            }
            Ok(())
        }
    }
}

/// Instances the daemon knows (to find their cgroups): its API's list, and its directories.
fn instance_names(d: &Daemon) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if d.is_running() {
        if let Ok(v) = d.request("GET", "/1.0/instances", None) {
            for url in v["metadata"].as_array().into_iter().flatten() {
                if let Some(name) = url.as_str().and_then(|u| u.rsplit('/').next()) {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    for sub in ["lxd/containers", "lxd/logs"] {
        if let Ok(rd) = std::fs::read_dir(d.dir.join(sub)) {
            names.extend(
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned)),
            );
        }
    }
    names
}

fn find_pids(mut pred: impl FnMut(i32) -> bool) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| pred(*pid))
        .collect()
}

/// Live processes whose mount namespace has inode `ino`.
pub fn pids_in_mnt_ns(ino: u64) -> Vec<i32> {
    find_pids(|pid| {
        std::fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == ino)
            && is_alive(pid)
    })
}

/// SIGKILLs `roots` and all their descendants, by PID, and waits (≤ 5 s) until they are gone.
fn kill_trees(roots: &[i32]) {
    if roots.is_empty() {
        return;
    }
    let mut all: BTreeSet<i32> = roots.iter().copied().collect();
    loop {
        let more: Vec<i32> = find_pids(|pid| {
            !all.contains(&pid)
                && netkit::process::parent_pid(pid).is_some_and(|p| all.contains(&p))
        });
        if more.is_empty() {
            break;
        }
        all.extend(more);
    }
    for pid in &all {
        if is_alive(*pid) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    let began = Instant::now();
    while all.iter().any(|p| is_alive(*p)) && began.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regular files under `dir` (not following links), for the loop devices backed by them.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_under(&e.path(), out);
        } else if ft.is_file() && e.metadata().is_ok_and(|m| m.len() >= 1 << 20) {
            out.push(e.path());
        }
    }
}

/// The loop devices backed by files (≥ 1 MiB) under `dir` (`losetup -j`, which matches by
/// inode: inside the daemon's namespace the file's path was `/var/lib/lxd/…`).
pub fn loops_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    let mut loops = Vec::new();
    for f in files {
        if let Ok(out) = Tool::new("losetup").arg("-j").arg(&f).stdout() {
            loops.extend(
                out.lines()
                    .filter_map(|l| l.split(':').next())
                    .filter(|d| d.starts_with("/dev/loop"))
                    .map(str::to_owned),
            );
        }
    }
    loops
}

fn detach_loops(dir: &Path) {
    for dev in loops_under(dir) {
        if let Err(e) = Tool::new("losetup").args(["-d", &dev]).run() {
            tracing::warn!(dev, error = %e, "cannot detach loop device");
        }
    }
}

/// Mount points (in this process's mount namespace) at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| {
            mp.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map(str::to_owned)
        .collect()
}

fn unmount_under(dir: &Path) {
    let mut mps = mounts_under(dir);
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mp in mps {
        let _ = Tool::new("umount").args(["-l", &mp]).run();
    }
}

/// Whether a cgroup directory name is LXC's for `instance` (`lxc.payload.NAME`,
/// `lxc.monitor.NAME`, or with the `-N` suffix LXC adds when the name is taken, as during a
/// move between two daemons of one host).
pub fn is_instance_cgroup(dir_name: &str, instance: &str) -> bool {
    let Some(rest) = dir_name
        .strip_prefix("lxc.payload.")
        .or_else(|| dir_name.strip_prefix("lxc.monitor."))
    else {
        return false;
    };
    match rest.strip_prefix(instance) {
        Some("") => true,
        Some(suffix) => suffix
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Removes the *empty* LXC cgroups (no process in them) of `instances` in every hierarchy
/// (both daemons share the host's cgroup tree; a busy cgroup cannot be removed, so another
/// daemon's running instance of the same name is safe). The backend may call it after deleting
/// an instance: LXD leaves `lxc.payload.NAME/.lxc` behind on the unified hierarchy.
pub fn remove_empty_cgroups<S: AsRef<str>>(instances: impl IntoIterator<Item = S> + Clone) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.filter_map(Result::ok) {
        let Ok(rd) = std::fs::read_dir(h.path()) else {
            continue;
        };
        for cg in rd.filter_map(Result::ok) {
            let name = cg.file_name();
            let Some(name) = name.to_str() else { continue };
            if instances
                .clone()
                .into_iter()
                .any(|i| is_instance_cgroup(name, i.as_ref()))
            {
                remove_cgroup_tree(&cg.path());
            }
        }
    }
}

fn remove_cgroup_tree(path: &Path) {
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(path);
}

fn leftovers(d: &Daemon, mnt_ns: u64) -> Result<(), DaemonError> {
    let mut what = Vec::new();
    if d.is_running() {
        what.push(format!("lxd PID {}", d.pid));
    }
    if mnt_ns != 0 {
        let pids = pids_in_mnt_ns(mnt_ns);
        if !pids.is_empty() {
            what.push(format!("processes {pids:?}"));
        }
    }
    let mounts = mounts_under(&d.dir);
    if !mounts.is_empty() {
        what.push(format!("mounts {mounts:?}"));
    }
    if d.dir.exists() {
        what.push("its directory".into());
    }
    if what.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::Leftover {
            dir: d.dir.clone(),
            what: what.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn spec() -> DaemonSpec {
        DaemonSpec::new(
            "/var/lib/testbed/lxd/edge-x",
            "tb-edge-x",
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 8443),
        )
    }

    #[test]
    fn preseed_has_the_address_a_btrfs_pool_and_a_profile_without_nic() {
        let mut s = spec();
        s.pool_size_mib = 300;
        let p = preseed(&s);
        assert_eq!(p["config"]["core.https_address"], "10.0.1.1:8443");
        assert_eq!(p["storage_pools"][0]["driver"], "btrfs");
        assert_eq!(p["storage_pools"][0]["name"], "default");
        assert_eq!(p["storage_pools"][0]["config"]["size"], "300MiB");
        let devices = p["profiles"][0]["devices"].as_object().expect("devices");
        assert_eq!(devices.len(), 1);
        assert_eq!(devices["root"]["pool"], "default");
        assert!(devices.values().all(|d| d["type"] != "nic"));
    }

    #[test]
    fn specs_are_checked() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.pool_size_mib = 64;
        assert!(matches!(s.validate(), Err(DaemonError::BadSpec(_))));
        let mut s = spec();
        s.dir = PathBuf::from("relative");
        assert!(s.validate().is_err());
        let mut s = spec();
        s.dir = PathBuf::from(format!("/{}", "d".repeat(100)));
        assert!(s.validate().is_err());
        let mut s = spec();
        s.netns = "../x".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn metadata_names_the_architecture_and_a_fixed_date() {
        let m = image_metadata();
        assert!(m.contains("architecture: x86_64\n"));
        assert!(m.contains("creation_date: 1700000000\n"));
        assert!(image_init_script().contains("touch /dev/console"));
    }

    #[test]
    fn instance_cgroups_are_recognised() {
        assert!(is_instance_cgroup("lxc.payload.c1", "c1"));
        assert!(is_instance_cgroup("lxc.monitor.c1-1", "c1"));
        assert!(!is_instance_cgroup("lxc.payload.c10", "c1"));
        assert!(!is_instance_cgroup("lxc.payload.c1-x", "c1"));
        assert!(!is_instance_cgroup("lxc.payload.c1-", "c1"));
        assert!(!is_instance_cgroup("lxc.pivot", "c1"));
        assert!(!is_instance_cgroup("c1", "c1"));
    }

    #[test]
    fn pem_body_is_one_base64_line() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_body(pem), "AAAABBBB");
    }

    #[test]
    fn the_daemon_record_round_trips() {
        let d = Daemon {
            pid: 42,
            mnt_ns: 4026532317,
            dir: "/x".into(),
            netns: "tb-edge-x".into(),
            socket: "/x/lxd/unix.socket".into(),
            https_addr: "10.0.1.1:8443".parse().expect("addr"),
            server_cert_pem: "PEM".into(),
        };
        let v = serde_json::to_value(&d).expect("json");
        assert_eq!(v["https_addr"], "10.0.1.1:8443");
        assert_eq!(serde_json::from_value::<Daemon>(v).expect("back"), d);
    }

    /// Runs the wrapper with a fake criu that prints its arguments.
    fn wrapped(args: &[&str]) -> (String, String) {
        let dir = std::env::temp_dir().join(format!(
            "lxd-criu-wrapper-{}-{}",
            std::process::id(),
            args.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("img")).expect("dir");
        std::fs::write(dir.join("img/tty.info"), "x").expect("tty.info");
        let fake = dir.join("fake-criu");
        write_executable(&fake, "#!/bin/sh\necho \"$*\"\n").expect("fake");
        let wrapper = dir.join("criu");
        let log = dir.join("calls.log");
        write_executable(&wrapper, &criu_wrapper_script(&fake, &log)).expect("wrapper");
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("IMG", &dir.join("img").display().to_string()))
            .collect();
        let out = Tool::new(&wrapper).args(&args).stdout().expect("run");
        let tty_left = if dir.join("img/tty.info").exists() {
            "tty.info left"
        } else {
            "tty.info gone"
        };
        let logged = std::fs::read_to_string(&log).expect("log");
        assert!(logged.contains(&args[0]), "{logged}");
        let _ = std::fs::remove_dir_all(&dir);
        (
            out.trim().replace(&dir.display().to_string(), "D"),
            tty_left.into(),
        )
    }

    #[test]
    fn the_criu_wrapper_filters_lxds_arguments() {
        let (out, tty) = wrapped(&[
            "dump",
            "--lsm-profile",
            "apparmor:lxd-c1",
            "-D",
            "IMG",
            "-t",
            "7",
        ]);
        assert_eq!(out, "dump -D D/img -t 7 --network-lock nftables");
        assert_eq!(tty, "tty.info gone");
        let (out, tty) = wrapped(&["restore", "--lsm-profile=apparmor:x", "--images-dir", "IMG"]);
        assert_eq!(out, "restore --images-dir D/img --network-lock nftables");
        assert_eq!(tty, "tty.info left");
        let (out, _) = wrapped(&["--version"]);
        assert_eq!(out, "--version");
    }
}

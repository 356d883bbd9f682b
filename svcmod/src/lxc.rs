//! A service as a real LXC container (LXC 5.0, DESIGN.md "LXC"), and the `lxc-*` tools that
//! start, checkpoint, restore, stop and destroy it.
//!
//! * **Every `lxc-*` command runs inside the edge's network namespace** (`nsenter --net=…`):
//!   LXC talks to a container's monitor over an *abstract* unix socket, and abstract sockets
//!   belong to a network namespace — `lxc-info` from another namespace says STOPPED about a
//!   running container, and `lxc-destroy` would then delete it under its feet. It is also where
//!   the host end of the container's veth must appear (LXC at start, CRIU at restore make it in
//!   their own namespace). CRIU needs `lo` up there (its TCP-repair probe; the testbed's edge
//!   namespaces have it).
//! * Only `--net` is entered: LXC makes the container's mount namespace itself, from the mount
//!   namespace the module runs in (the host's: the daemon leaves `ip netns exec`'s private one,
//!   see [`crate::mount_ns`]).
//! * The container is a system container whose init is the service's command (given to
//!   `lxc-start` after `--`, so arguments may hold spaces: `lxc.init.cmd` is split on them). Its
//!   rootfs is a skeleton of empty directories, mounted read-only, with read-only bind mounts of
//!   the host's `/usr` and `/etc` (and `/bin`, `/sbin`, `/lib*` where they are not the merged-usr
//!   symlinks, which the skeleton copies instead), of the directory holding the command's
//!   binary, and private tmpfs on `/tmp`, `/run`, `/var`, `/root`, plus `proc` and a read-only
//!   `sys`. So the files a service opens are the host's, the same at every edge of this host
//!   (DESIGN.md: the rootfs must be identical at source and target), and what it writes lives in
//!   tmpfs, which CRIU carries in the images.
//! * `lxc.tty.max = 0`, `lxc.console.path = none`, `lxc.pty.max = 0` and no
//!   `lxc.apparmor.profile` key (the kernel has no AppArmor): no terminal for CRIU to carry.
//! * One veth, `eth0` inside with the service's MAC, address /16 and the anycast gateway; its host
//!   end is named after the service's OVS port (`lxc.net.0.veth.pair = s-<id>`) and left off any
//!   bridge (`lxc.net.0.link` unset): the module attaches it to the edge's OVS bridge itself, and
//!   CRIU, restoring it as `--external veth[eth0]:s-<id>`, leaves it **down** — the carrier the
//!   module brings up when a migration commits.
//! * `lxc-checkpoint` runs the `criu` found on `PATH` (the 4.2.1 wrapper; [`Lxc::criu_dir`] can put
//!   another first) with LXC's own arguments (`--tcp-established`, `--freeze-cgroup`, …); what
//!   LXC does not pass comes from a CRIU config file (`CRIU_CONFIG_FILE`): `network-lock
//!   nftables` (there is no `iptables` here). LXC writes CRIU's `dump.log` / `restore.log` into
//!   the image directory.

use crate::container::{self, NetSpec, GATEWAY, SERVICE_IFNAME, SERVICE_PREFIX_LEN};
use crate::criu::{CriuError, Gate, GatedRestore};
use netkit::cmd::{CmdError, Tool};
use netkit::Netns;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The CRIU options LXC does not pass itself.
pub const CRIU_CONF: &str = "network-lock nftables\n";
/// Host directories every container binds read-only (when they are directories, not symlinks).
pub const SYSTEM_BINDS: [&str; 8] = [
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];
/// Directories the container mounts its own tmpfs on (and the mode of each).
pub const TMPFS_DIRS: [(&str, &str); 4] = [
    ("tmp", "1777"),
    ("run", "755"),
    ("var", "755"),
    ("root", "700"),
];
/// Where nothing may be bound: the container's own kernel file systems.
const KERNEL_DIRS: [&str; 3] = ["proc", "sys", "dev"];
/// `PATH` inside the container.
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// LXC's log level for the `lxc-*` commands.
const LOG_LEVEL: &str = "INFO";

/// A failure of an `lxc-*` command or of preparing a container.
#[derive(Debug, thiserror::Error)]
pub enum LxcError {
    #[error("bad container spec: {0}")]
    Spec(String),
    #[error("container {name} already exists in {lxcpath}")]
    Exists { name: String, lxcpath: PathBuf },
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("cannot run `{program}`")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} of container {name} failed ({status}): {tail}")]
    Failed {
        action: &'static str,
        name: String,
        status: String,
        /// The last error lines of CRIU's log, else of LXC's.
        tail: String,
    },
    #[error("{action} of container {name} did not finish within {limit_ms} ms")]
    Timeout {
        action: &'static str,
        name: String,
        limit_ms: u64,
    },
    #[error("container {name} is not running (no init PID)")]
    NotRunning { name: String },
    #[error(transparent)]
    Criu(#[from] CriuError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LxcError + '_ {
    move |source| LxcError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a container holds besides its network identity; the source sends it to the target with
/// `Prepare`, and the target makes its config from it (a config text from the network is never
/// used as is: `lxc.hook.*` keys run commands as root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    /// The service's command line: the container's init (informational at a target, which
    /// restores the running process).
    pub command: Vec<String>,
    /// Host directories bound read-only at the same path inside, in order.
    pub binds: Vec<PathBuf>,
}

impl ContainerSpec {
    /// The spec of a container running `command`: [`SYSTEM_BINDS`] that are directories on this
    /// host, and the directory of the command's binary when it is an absolute path outside them.
    pub fn for_command(command: &[String]) -> Result<Self, LxcError> {
        let mut binds: Vec<PathBuf> = SYSTEM_BINDS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir() && !p.is_symlink())
            .collect();
        let program = command
            .first()
            .ok_or_else(|| LxcError::Spec("empty command".into()))?;
        let program = Path::new(program);
        if program.is_absolute() {
            let dir = program
                .parent()
                .filter(|d| *d != Path::new("/"))
                .ok_or_else(|| LxcError::Spec(format!("{} lies in /", program.display())))?;
            if !binds.iter().any(|b| dir.starts_with(b)) {
                binds.push(dir.to_owned());
            }
        }
        // Files the command names by absolute path (`sh -c '… /opt/x/tool …'`, `-c /opt/x.conf`)
        // are reachable too, where a bind can make them so.
        for word in command[1..].iter().flat_map(|a| a.split_whitespace()) {
            let path = Path::new(word.trim_matches(|c| c == '\'' || c == '"'));
            let Some(dir) = path
                .parent()
                .filter(|d| path.is_absolute() && path.is_file() && *d != Path::new("/"))
            else {
                continue;
            };
            let usable = Self::binds_valid(std::slice::from_ref(&dir.to_owned())).is_ok();
            if usable && !binds.iter().any(|b| dir.starts_with(b)) {
                binds.push(dir.to_owned());
            }
        }
        let spec = Self {
            command: command.to_vec(),
            binds,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what a config line and the rootfs can take: a command, binds that are absolute
    /// plain paths (no `.`/`..`, no white space or control characters, not `/`), none under the
    /// container's own file systems (`/proc`, `/sys`, `/dev`, the tmpfs directories).
    pub fn validate(&self) -> Result<(), LxcError> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(LxcError::Spec("empty command".into()));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(LxcError::Spec("a NUL in the command".into()));
        }
        Self::binds_valid(&self.binds)
    }

    fn binds_valid(binds: &[PathBuf]) -> Result<(), LxcError> {
        let bad = |m: String| Err(LxcError::Spec(m));
        if binds.len() > 64 {
            return bad(format!("{} binds (at most 64)", binds.len()));
        }
        for b in binds {
            let Some(text) = b.to_str() else {
                return bad(format!("bind {} is not UTF-8", b.display()));
            };
            if !b.is_absolute() || text.len() > 1024 {
                return bad(format!("bind `{text}` is not an absolute path"));
            }
            if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!(
                    "bind `{text}` holds white space or control characters"
                ));
            }
            let mut parts = b.components().skip(1);
            let rebuilt: PathBuf = b.components().collect();
            if rebuilt.as_os_str() != b.as_os_str()
                || !b
                    .components()
                    .skip(1)
                    .all(|c| matches!(c, Component::Normal(_)))
            {
                return bad(format!("bind `{text}` is not a plain path"));
            }
            let Some(top) = parts.next().and_then(|c| c.as_os_str().to_str()) else {
                return bad("bind `/`".into());
            };
            if KERNEL_DIRS.contains(&top) || TMPFS_DIRS.iter().any(|(d, _)| *d == top) {
                return bad(format!(
                    "bind `{text}` lies under /{top}, which the container mounts itself"
                ));
            }
        }
        Ok(())
    }
}

/// The container's name in its lxcpath: the CRIU backend's namespace name,
/// `<prefix>-svc-<id>-<edge>` (unique on the host, so the source's and the target's cgroups
/// never collide).
pub fn container_name(prefix: &str, service_id: &str, edge: &str) -> String {
    container::netns_name(prefix, service_id, edge)
}

/// The LXC config of a container (see the module docs).
pub fn config_text(
    name: &str,
    rootfs: &Path,
    spec: &ContainerSpec,
    net: &NetSpec,
    port: &str,
) -> String {
    let mut c = String::new();
    let mut line = |k: &str, v: &str| {
        c.push_str(k);
        c.push_str(" = ");
        c.push_str(v);
        c.push('\n');
    };
    line("lxc.uts.name", &net.service_id);
    line("lxc.rootfs.path", &format!("dir:{}", rootfs.display()));
    line("lxc.rootfs.options", "ro");
    line("lxc.tty.max", "0");
    line("lxc.pty.max", "0");
    line("lxc.console.path", "none");
    line("lxc.autodev", "1");
    // LXC starts the init with an empty environment: a bare program name would be looked up
    // in libc's default path only.
    line("lxc.environment", &format!("PATH={CONTAINER_PATH}"));
    line("lxc.mount.auto", "proc:mixed sys:ro");
    for (dir, mode) in TMPFS_DIRS {
        line(
            "lxc.mount.entry",
            &format!("tmpfs {dir} tmpfs rw,nosuid,nodev,mode={mode} 0 0"),
        );
    }
    for b in &spec.binds {
        let inside = b.strip_prefix("/").unwrap_or(b);
        line(
            "lxc.mount.entry",
            &format!("{} {} none ro,bind 0 0", b.display(), inside.display()),
        );
    }
    line("lxc.net.0.type", "veth");
    line("lxc.net.0.veth.pair", port);
    line("lxc.net.0.name", SERVICE_IFNAME);
    line("lxc.net.0.hwaddr", &net.mac_addr);
    line(
        "lxc.net.0.ipv4.address",
        &format!("{}/{SERVICE_PREFIX_LEN}", net.ipv4_addr),
    );
    line("lxc.net.0.ipv4.gateway", &GATEWAY.to_string());
    line("lxc.net.0.mtu", &net.mtu.to_string());
    line("lxc.net.0.flags", "up");
    line("lxc.sysctl.net.ipv6.conf.all.disable_ipv6", "1");
    line("lxc.sysctl.net.ipv6.conf.default.disable_ipv6", "1");
    format!("# svcmod: LXC container {name} (generated, see svcmod/src/lxc.rs)\n{c}")
}

/// The rootfs skeleton: the mount points, and the merged-usr symlinks of this host (`/bin` →
/// `usr/bin`, …) for the [`SYSTEM_BINDS`] that are symlinks here.
pub fn make_rootfs(rootfs: &Path, spec: &ContainerSpec) -> Result<(), LxcError> {
    std::fs::create_dir_all(rootfs).map_err(io(rootfs))?;
    let dirs = KERNEL_DIRS
        .iter()
        .copied()
        .chain(TMPFS_DIRS.iter().map(|(d, _)| *d))
        .map(PathBuf::from)
        .chain(
            spec.binds
                .iter()
                .map(|b| b.strip_prefix("/").unwrap_or(b).to_owned()),
        );
    for d in dirs {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    for top in SYSTEM_BINDS {
        let host = Path::new(top);
        if let Ok(target) = std::fs::read_link(host) {
            let p = rootfs.join(top.trim_start_matches('/'));
            if !p.is_symlink() {
                std::os::unix::fs::symlink(&target, &p).map_err(io(&p))?;
            }
        }
    }
    Ok(())
}

/// The `lxc-*` tools of one module: its lxcpath, in its edge's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lxc {
    /// The module's lxcpath (`-P`), absolute; one directory per container.
    pub lxcpath: PathBuf,
    /// The edge's network namespace, where every `lxc-*` command runs.
    pub netns: Netns,
    /// A directory put first on `PATH` for `lxc-checkpoint`, holding the `criu` it should run
    /// (tests: a failing one); `None`: `PATH` as it is.
    pub criu_dir: Option<PathBuf>,
}

impl Lxc {
    /// The CRIU config file `lxc-checkpoint`'s CRIU reads.
    pub fn criu_conf(&self) -> PathBuf {
        self.lxcpath.join("criu.conf")
    }

    /// Makes the lxcpath and its CRIU config file.
    pub fn prepare(&self) -> Result<(), LxcError> {
        std::fs::create_dir_all(&self.lxcpath).map_err(io(&self.lxcpath))?;
        let conf = self.criu_conf();
        std::fs::write(&conf, CRIU_CONF).map_err(io(&conf))
    }

    /// A container's directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.lxcpath.join(name)
    }

    /// LXC's log of a container's commands.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir(name).join("lxc.log")
    }

    /// The arguments of `nsenter` running `program ARGS…` on a container in the edge's namespace.
    pub fn args(&self, program: &str, name: &str, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            format!("--net={}", self.netns.path().display()),
            "--".to_owned(),
            program.to_owned(),
            "-P".to_owned(),
            self.lxcpath.display().to_string(),
            "-n".to_owned(),
            name.to_owned(),
        ];
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    }

    fn logged(&self, program: &str, name: &str, args: &[&str]) -> Vec<String> {
        let log = self.log(name).display().to_string();
        let mut all = vec!["-o", &log, "-l", LOG_LEVEL];
        all.extend_from_slice(args);
        self.args(program, name, &all)
    }

    fn tool(&self, program: &str, name: &str, args: &[&str]) -> Tool {
        Tool::new("nsenter").args(self.args(program, name, args))
    }

    /// The `PATH` for `lxc-checkpoint`.
    fn path_env(&self) -> Option<std::ffi::OsString> {
        let dir = self.criu_dir.as_ref()?;
        let mut path = dir.as_os_str().to_owned();
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        Some(path)
    }

    /// Writes a container's config and rootfs skeleton; refuses a name that exists.
    pub fn define(
        &self,
        name: &str,
        spec: &ContainerSpec,
        net: &NetSpec,
        port: &str,
    ) -> Result<(), LxcError> {
        spec.validate()?;
        for b in &spec.binds {
            if !b.is_dir() {
                return Err(LxcError::Spec(format!(
                    "bind {} is no directory here",
                    b.display()
                )));
            }
        }
        let dir = self.dir(name);
        if dir.exists() {
            return Err(LxcError::Exists {
                name: name.to_owned(),
                lxcpath: self.lxcpath.clone(),
            });
        }
        let made = (|| {
            let rootfs = dir.join("rootfs");
            make_rootfs(&rootfs, spec)?;
            let config = dir.join("config");
            std::fs::write(&config, config_text(name, &rootfs, spec, net, port))
                .map_err(io(&config))?;
            // The module's own note of the spec: a restarted module moves the container on.
            let kept = dir.join(SPEC_FILE);
            let json = serde_json::to_vec(spec)
                .map_err(|e| LxcError::Spec(format!("cannot keep the spec: {e}")))?;
            std::fs::write(&kept, json).map_err(io(&kept))
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    /// The spec [`Lxc::define`] kept beside a container's config, if it is readable.
    pub fn kept_spec(&self, name: &str) -> Option<ContainerSpec> {
        let text = std::fs::read(self.dir(name).join(SPEC_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The containers in the lxcpath (their directories).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.lxcpath)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Starts a defined container with `command` as its init; returns the init's host PID.
    pub fn start(&self, name: &str, command: &[String]) -> Result<i32, LxcError> {
        let mut args = vec!["--"];
        args.extend(command.iter().map(String::as_str));
        Tool::new("nsenter")
            .args(self.logged("lxc-start", name, &args))
            .run()?;
        self.init_pid(name)?.ok_or_else(|| LxcError::NotRunning {
            name: name.to_owned(),
        })
    }

    /// The init's host PID of a running container (`None` when it does not run).
    pub fn init_pid(&self, name: &str) -> Result<Option<i32>, LxcError> {
        let out = self.tool("lxc-info", name, &["-pH"]).stdout()?;
        Ok(out.trim().parse().ok().filter(|p| *p > 0))
    }

    /// `lxc-checkpoint -s`: dumps the container into `images` (CRIU's `dump.log` lands there
    /// too) and stops it. On failure CRIU resumes the container.
    pub async fn checkpoint(
        &self,
        name: &str,
        images: &Path,
        limit: Duration,
    ) -> Result<Duration, LxcError> {
        let start = Instant::now();
        let images_arg = images.display().to_string();
        let args = self.logged("lxc-checkpoint", name, &["-s", "-D", &images_arg]);
        let child = self
            .checkpoint_command(&args, Stdio::piped())
            .spawn()
            .map_err(|source| LxcError::Spawn {
                program: "lxc-checkpoint",
                source,
            })?;
        let log = images.join("dump.log");
        self.finish(child, "checkpoint", name, &log, limit).await?;
        Ok(start.elapsed())
    }

    /// `lxc-checkpoint -r` from `images` with a gate (see [`crate::criu`]): CRIU stops before
    /// resuming the container and waits for the commit, which runs `on_commit` first.
    pub fn restore_gated(
        &self,
        name: &str,
        images: &Path,
        gate_dir: &Path,
        on_commit: &[String],
    ) -> Result<GatedRestore, LxcError> {
        let gate = Gate::prepare(gate_dir, on_commit)?;
        let images_arg = images.display().to_string();
        let script = gate.script().display().to_string();
        let args = self.logged(
            "lxc-checkpoint",
            name,
            &["-r", "-D", &images_arg, "-A", &script],
        );
        // The container's monitor forks off lxc-checkpoint and lives on: no pipes to it.
        let child = self
            .checkpoint_command(&args, Stdio::null())
            .spawn()
            .map_err(|source| LxcError::Spawn {
                program: "lxc-checkpoint",
                source,
            })?;
        Ok(GatedRestore::started(
            child,
            gate,
            images.join("restore.log"),
            None,
        ))
    }

    fn checkpoint_command(&self, args: &[String], stderr: Stdio) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.args(args)
            .env("CRIU_CONFIG_FILE", self.criu_conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some(path) = self.path_env() {
            cmd.env("PATH", path);
        }
        tracing::debug!(?cmd, "lxc-checkpoint");
        cmd
    }

    async fn finish(
        &self,
        child: tokio::process::Child,
        action: &'static str,
        name: &str,
        criu_log: &Path,
        limit: Duration,
    ) -> Result<(), LxcError> {
        match crate::criu::finish(child, "dump", criu_log, limit).await {
            Ok(()) => Ok(()),
            Err(CriuError::Timeout { limit_ms, .. }) => Err(LxcError::Timeout {
                action,
                name: name.to_owned(),
                limit_ms,
            }),
            Err(CriuError::Failed { status, tail, .. }) => Err(LxcError::Failed {
                action,
                name: name.to_owned(),
                status,
                tail: if tail.is_empty() {
                    self.log_tail(name)
                } else {
                    tail
                },
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The last error lines of LXC's log of a container.
    pub fn log_tail(&self, name: &str) -> String {
        crate::criu::log_tail(&self.log(name))
    }

    /// Kills a container (`lxc-stop -k`); a stopped one is left as it is.
    pub fn stop(&self, name: &str) -> Result<(), LxcError> {
        match self.init_pid(name)? {
            None => Ok(()),
            Some(_) => self
                .tool("lxc-stop", name, &["-k"])
                .run()
                .map_err(LxcError::from),
        }
    }

    /// Removes a stopped container's directory (`lxc-destroy`, which does not cross into
    /// other file systems, then whatever is left) and its empty cgroups; idempotent.
    pub fn destroy(&self, name: &str) -> Result<(), LxcError> {
        remove_cgroups(
            Path::new(CGROUP_ROOT),
            &[format!("lxc.payload.{name}"), format!("lxc.monitor.{name}")],
        );
        let dir = self.dir(name);
        if !dir.exists() {
            return Ok(());
        }
        let destroyed = self.tool("lxc-destroy", name, &[]).run();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        match destroyed {
            // A container whose restore failed has a config and no state: lxc-destroy may
            // complain, and the directory is gone all the same.
            Err(e) if dir.exists() => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// The file beside a container's config where [`Lxc::define`] keeps its [`ContainerSpec`].
pub const SPEC_FILE: &str = "svcmod-spec.json";

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The names of the container cgroups (`lxc.payload.*`) process `pid` is in, one per distinct
/// name over its hierarchies. A restored container is not always in cgroups of its own name:
/// CRIU restores the unified (v2) hierarchy's path from the images, so after a move the v2
/// cgroup still bears the source container's name (LXC maps only the v1 controllers).
pub fn payload_cgroups(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    parse_payload_cgroups(&text)
}

/// The `lxc.payload.*` names in a `/proc/PID/cgroup` text.
pub fn parse_payload_cgroups(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter_map(|path| path.rsplit('/').next())
        .filter(|n| n.starts_with("lxc.payload.") && !n.contains(".."))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A container's cgroup-v1 freezer (`freezer.state` of the cgroup its init is in). The backend
/// freezes a container itself before `lxc-checkpoint -s`: CRIU, freezing it, sleeps 100 ms
/// between looks at the state (its first look nearly always sees `FREEZING`), while a freeze
/// polled every millisecond takes a few. CRIU then finds the cgroup `FROZEN`, dumps it so and
/// restores it so: whoever restores the container thaws it once CRIU is done ([`Freezer::thaw`]).
/// Hosts without a v1 freezer hierarchy have none (CRIU freezes then, as before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freezer {
    state: PathBuf,
}

impl Freezer {
    /// The freezer of the cgroup process `pid` is in, when the host mounts a v1 freezer under
    /// `root` and the process is in a container's cgroup (`lxc.payload.*`).
    pub fn of(root: &Path, pid: i32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Self::parse(root, &text)
    }

    /// [`Freezer::of`] from a `/proc/PID/cgroup` text.
    pub fn parse(root: &Path, text: &str) -> Option<Self> {
        let path = text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers
                .split(',')
                .any(|c| c == "freezer")
                .then_some(path)
        })?;
        let rel = path.strip_prefix('/')?;
        let plain = Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || !rel.rsplit('/').next()?.starts_with("lxc.payload.") {
            return None;
        }
        let state = root.join("freezer").join(rel).join("freezer.state");
        state.is_file().then_some(Self { state })
    }

    /// The `freezer.state` file.
    pub fn path(&self) -> &Path {
        &self.state
    }

    /// Freezes the cgroup and waits (polling every millisecond, ≤ `limit`) until it is `FROZEN`;
    /// the time it took. On a timeout the cgroup is thawed again.
    pub fn freeze(&self, limit: Duration) -> Result<Duration, LxcError> {
        let start = Instant::now();
        std::fs::write(&self.state, "FROZEN").map_err(io(&self.state))?;
        loop {
            let now = std::fs::read_to_string(&self.state).map_err(io(&self.state))?;
            if now.trim() == "FROZEN" {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= limit {
                let _ = self.thaw();
                return Err(LxcError::Io {
                    path: self.state.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("still {} after {} ms", now.trim(), limit.as_millis()),
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets the cgroup's tasks run again.
    pub fn thaw(&self) -> Result<(), LxcError> {
        std::fs::write(&self.state, "THAWED").map_err(io(&self.state))
    }
}

/// Removes the cgroups named `groups` (e.g. `lxc.payload.<name>`, `lxc.monitor.<name>`) in
/// every hierarchy under `root` (and in `root` itself, for a unified hierarchy): `lxc-checkpoint
/// -s` and a moved container leave some behind. A cgroup with a task anywhere below it is left
/// alone (it is another container's now); the others go, innermost first. Returns the cgroups
/// left.
pub fn remove_cgroups(root: &Path, groups: &[String]) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let hierarchies = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for h in hierarchies.into_iter().chain([root.to_owned()]) {
        for g in groups {
            let dir = h.join(g);
            if !dir.is_dir() {
                continue;
            }
            if !has_tasks(&dir) {
                remove_empty_tree(&dir);
            }
            if dir.is_dir() {
                left.push(dir);
            }
        }
    }
    left
}

/// Whether a cgroup or one below it has a task (`cgroup.procs` or v1 `tasks` not empty).
fn has_tasks(dir: &Path) -> bool {
    let own = ["cgroup.procs", "tasks"]
        .iter()
        .any(|f| std::fs::read_to_string(dir.join(f)).is_ok_and(|t| !t.trim().is_empty()));
    own || std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .any(|e| has_tasks(&e.path()))
    })
}

fn remove_empty_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::debug!(dir = %dir.display(), error = %e, "cgroup not removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn net() -> NetSpec {
        NetSpec {
            service_id: "p50".into(),
            ipv4_addr: Ipv4Addr::new(20, 0, 0, 50),
            mac_addr: "02:00:00:00:00:50".into(),
            mtu: 1500,
        }
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            command: vec!["/opt/t/tbprobe".into(), "serve".into()],
            binds: vec!["/usr".into(), "/etc".into(), "/opt/t".into()],
        }
    }

    #[test]
    fn the_config_is_a_system_container_with_a_fixed_veth_and_no_terminal() {
        let text = config_text(
            "tb-svc-p50-x",
            Path::new("/dev/shm/m/lxc/tb-svc-p50-x/rootfs"),
            &spec(),
            &net(),
            "s-p50",
        );
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "lxc.uts.name = p50",
            "lxc.rootfs.path = dir:/dev/shm/m/lxc/tb-svc-p50-x/rootfs",
            "lxc.rootfs.options = ro",
            "lxc.tty.max = 0",
            "lxc.console.path = none",
            "lxc.mount.auto = proc:mixed sys:ro",
            "lxc.mount.entry = tmpfs tmp tmpfs rw,nosuid,nodev,mode=1777 0 0",
            "lxc.mount.entry = /usr usr none ro,bind 0 0",
            "lxc.mount.entry = /opt/t opt/t none ro,bind 0 0",
            "lxc.net.0.type = veth",
            "lxc.net.0.veth.pair = s-p50",
            "lxc.net.0.name = eth0",
            "lxc.net.0.hwaddr = 02:00:00:00:00:50",
            "lxc.net.0.ipv4.address = 20.0.0.50/16",
            "lxc.net.0.ipv4.gateway = 20.0.0.1",
            "lxc.net.0.flags = up",
            "lxc.environment = PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ] {
            assert!(lines.contains(&want), "missing `{want}` in\n{text}");
        }
        assert!(lines[0].starts_with('#'));
        for absent in ["apparmor", "lxc.net.0.link", "lxc.hook", "init.cmd"] {
            assert!(!text.contains(absent), "`{absent}` in\n{text}");
        }
        // The tmpfs mounts come before the binds, every line is `key = value`.
        let tmp = lines.iter().position(|l| l.contains("tmpfs tmp "));
        let usr = lines.iter().position(|l| l.contains("/usr usr"));
        assert!(tmp < usr);
        assert!(lines[1..]
            .iter()
            .all(|l| l.starts_with("lxc.") && l.contains(" = ")));
    }

    #[test]
    fn specs_from_the_network_are_checked() {
        assert!(spec().validate().is_ok());
        let with = |binds: &[&str]| ContainerSpec {
            command: vec!["x".into()],
            binds: binds.iter().map(PathBuf::from).collect(),
        };
        for bad in [
            "relative/dir",
            "/",
            "/opt/../etc",
            "/opt/./t",
            "/opt/t/",
            "//opt",
            "/opt/a b",
            "/opt/a\nlxc.hook.pre-start = /bin/sh",
            "/proc/1",
            "/dev",
            "/tmp/t",
            "/var/lib/x",
        ] {
            let e = with(&[bad]).validate().expect_err(bad);
            assert!(e.to_string().starts_with("bad container spec"), "{e}");
        }
        assert!(ContainerSpec {
            command: vec![],
            binds: vec![]
        }
        .validate()
        .is_err());
        let json = serde_json::to_value(spec()).expect("json");
        assert_eq!(json["binds"][2], "/opt/t");
        let mut extra = json;
        extra["hooks"] = serde_json::json!(["/bin/sh"]);
        assert!(serde_json::from_value::<ContainerSpec>(extra).is_err());
    }

    #[test]
    fn the_command_binary_directory_is_bound_unless_the_system_has_it() {
        let s =
            ContainerSpec::for_command(&["/opt/t/tbprobe".into(), "serve".into()]).expect("spec");
        assert_eq!(
            s.binds.last().map(PathBuf::as_path),
            Some(Path::new("/opt/t"))
        );
        assert!(s.binds.contains(&PathBuf::from("/usr")));
        let s = ContainerSpec::for_command(&["/usr/bin/sh".into()]).expect("spec");
        assert!(!s.binds.contains(&PathBuf::from("/usr/bin")));
        let s =
            ContainerSpec::for_command(&["sh".into(), "-c".into(), "x y".into()]).expect("spec");
        assert_eq!(s.command[2], "x y");
        // An absolute path in a shell line: its directory is bound; /tmp is the container's own.
        let exe = std::env::current_exe().expect("exe");
        let line = format!(
            "sleep 1; exec '{}' --flag /tmp/x /usr/bin/env",
            exe.display()
        );
        let s = ContainerSpec::for_command(&["sh".into(), "-c".into(), line]).expect("spec");
        let dir = exe.parent().expect("dir").to_owned();
        if dir.starts_with("/tmp") {
            assert!(!s.binds.contains(&dir));
        } else {
            assert!(s.binds.contains(&dir), "{:?}", s.binds);
        }
        assert!(!s.binds.iter().any(|b| b.starts_with("/usr/bin")));
        assert!(ContainerSpec::for_command(&[]).is_err());
        assert!(ContainerSpec::for_command(&["/tbprobe".into()]).is_err());
    }

    #[test]
    fn every_lxc_command_runs_in_the_edge_namespace_on_an_absolute_lxcpath() {
        let lxc = Lxc {
            lxcpath: "/dev/shm/m/lxc".into(),
            netns: Netns::new("tb-edge-x"),
            criu_dir: None,
        };
        assert_eq!(
            lxc.args("lxc-info", "tb-svc-p50-x", &["-pH"]).join(" "),
            "--net=/run/netns/tb-edge-x -- lxc-info -P /dev/shm/m/lxc -n tb-svc-p50-x -pH"
        );
        assert_eq!(
            lxc.logged("lxc-checkpoint", "c", &["-s", "-D", "/i"])
                .join(" "),
            "--net=/run/netns/tb-edge-x -- lxc-checkpoint -P /dev/shm/m/lxc -n c \
             -o /dev/shm/m/lxc/c/lxc.log -l INFO -s -D /i"
        );
        assert_eq!(lxc.criu_conf(), Path::new("/dev/shm/m/lxc/criu.conf"));
        assert!(lxc.path_env().is_none());
        let wrapped = Lxc {
            criu_dir: Some("/t/criu-bin".into()),
            ..lxc
        };
        let path = wrapped.path_env().expect("path");
        assert!(path.to_string_lossy().starts_with("/t/criu-bin"));
        assert_eq!(container_name("tb", "p50", "x"), "tb-svc-p50-x");
    }

    #[test]
    fn only_idle_cgroups_of_the_container_go() {
        let root = std::env::temp_dir().join(format!("svcmod-cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "freezer/lxc.payload.c/ns",
            "unified/lxc.payload.c",
            "unified/lxc.monitor.c",
            "unified/lxc.payload.c2",
            "memory/lxc.payload.busy/sub",
            "lxc.payload.c",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("dir");
        }
        // Tasks keep a cgroup (in a real hierarchy rmdir refuses it anyway).
        std::fs::write(
            root.join("memory/lxc.payload.busy/sub/cgroup.procs"),
            "42\n",
        )
        .expect("f");
        std::fs::write(root.join("unified/lxc.monitor.c/cgroup.procs"), "").expect("f");
        let left = remove_cgroups(
            &root,
            &[
                "lxc.payload.c".into(),
                "lxc.monitor.c".into(),
                "lxc.payload.busy".into(),
            ],
        );
        assert!(!root.join("freezer/lxc.payload.c").exists());
        assert!(!root.join("unified/lxc.payload.c").exists());
        assert!(!root.join("lxc.payload.c").exists());
        assert!(
            root.join("unified/lxc.payload.c2").exists(),
            "another container's"
        );
        assert!(
            root.join("memory/lxc.payload.busy/sub").exists(),
            "has a task"
        );
        // A plain directory holding a file cannot be removed (a cgroup's files can).
        assert!(left.contains(&root.join("unified/lxc.monitor.c")));
        assert!(left.contains(&root.join("memory/lxc.payload.busy")));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_freezer_is_the_v1_freezer_cgroup_of_a_container() {
        let root = std::env::temp_dir().join(format!("svcmod-freezer-{}", std::process::id()));
        let dir = root.join("freezer/lxc.payload.tb-svc-a-x");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("freezer.state"), "THAWED\n").expect("state");
        let text = "12:pids:/lxc.payload.tb-svc-a-x\n6:freezer:/lxc.payload.tb-svc-a-x\n0::/lxc.payload.tb-svc-a-y\n";
        let f = Freezer::parse(&root, text).expect("a freezer");
        assert_eq!(f.path(), dir.join("freezer.state"));
        // A plain file stands in for the kernel's: written FROZEN, it reads FROZEN at once.
        assert!(f.freeze(Duration::from_millis(50)).is_ok());
        f.thaw().expect("thaw");
        assert_eq!(std::fs::read_to_string(f.path()).expect("read"), "THAWED");
        // Not a container's cgroup, no v1 freezer, a path that climbs, no such cgroup: none.
        for bad in [
            "6:freezer:/user.slice\n",
            "0::/lxc.payload.tb-svc-a-x\n",
            "6:freezer:/../lxc.payload.x\n",
            "6:freezer:/lxc.payload.gone\n",
        ] {
            assert_eq!(Freezer::parse(&root, bad), None, "{bad}");
        }
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_moved_container_is_in_cgroups_of_two_names() {
        let text = "9:name=systemd:/lxc.payload.tb-svc-p50-y\n\
                    6:freezer:/lxc.payload.tb-svc-p50-y\n\
                    4:memory:/process_api/abc/lxc.payload.tb-svc-p50-y\n\
                    1:cpu:/\n\
                    0::/lxc.payload.tb-svc-p50-x\n";
        assert_eq!(
            parse_payload_cgroups(text),
            ["lxc.payload.tb-svc-p50-x", "lxc.payload.tb-svc-p50-y"]
        );
        assert!(parse_payload_cgroups("0::/\n").is_empty());
    }

    #[test]
    fn the_rootfs_has_every_mount_point_and_the_merged_usr_links() {
        let root = std::env::temp_dir().join(format!("svcmod-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        make_rootfs(&root, &spec()).expect("rootfs");
        for d in [
            "proc", "sys", "dev", "tmp", "run", "var", "root", "usr", "etc", "opt/t",
        ] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        if Path::new("/bin").is_symlink() {
            assert!(root.join("bin").is_symlink());
        }
        // Idempotent.
        make_rootfs(&root, &spec()).expect("again");
        let _ = std::fs::remove_dir_all(&root);
    }
}

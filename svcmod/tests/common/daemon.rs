//! The `svcmod` daemon as a process in an edge namespace (as `testbed up` starts it), and calls
//! to its callbacks from threads inside a namespace.

use netkit::Netns;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbi::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use svcmod::ModuleConfig;

/// One `svcmod` process; killed (SIGKILL) if the test did not end it.
pub struct DaemonProcess {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub ready: PathBuf,
}

impl DaemonProcess {
    pub fn spawn(netns: &str, cfg: &ModuleConfig, dir: &Path) -> DaemonProcess {
        Self::spawn_with_path(netns, cfg, dir, None)
    }

    /// [`DaemonProcess::spawn`] with `bin_dir` first on the daemon's `PATH` (its `criu`: a
    /// wrapper).
    pub fn spawn_with_path(
        netns: &str,
        cfg: &ModuleConfig,
        dir: &Path,
        bin_dir: Option<&Path>,
    ) -> DaemonProcess {
        let name = cfg.name.clone();
        let config = dir.join(format!("{name}.json"));
        let ready = dir.join(format!("{name}.ready"));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(
            &config,
            serde_json::to_string_pretty(cfg).expect("config json"),
        )
        .expect("write config");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new("ip");
        if let Some(bin) = bin_dir {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", bin.display()));
        }
        let child = cmd
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_svcmod"))
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "svcmod=debug,info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("start svcmod");
        DaemonProcess {
            name,
            child,
            log,
            ready,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        while !self.ready.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} ended ({status}) before ready:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < limit,
                "{} not ready in {limit:?}:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL (a crash: nothing of the module's shutdown runs), then waits for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "{} did not end in {limit:?} after SIGTERM:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            println!("{} killed; its log:\n{}", self.name, self.log_text());
        }
    }
}

/// ServedService of the module at `api` (its callbacks' base URL) for `ue`, from inside `ns`.
pub async fn served_service(
    ns: &Netns,
    token: &str,
    api: &str,
    ue: std::net::Ipv4Addr,
) -> model::smo::Service {
    get_in(ns, token, format!("{api}/served-service?ueIpv4Addr={ue}"))
        .await
        .unwrap_or_else(|e| panic!("served-service at {api}: {e}"))
}

/// `GET url` from a thread inside `ns`.
pub async fn get_in<T: DeserializeOwned + Send + 'static>(
    ns: &Netns,
    token: &str,
    url: String,
) -> Result<T, ClientError> {
    call_in(ns, token, move |c| async move { c.get(&url).await }).await
}

/// `POST url body` from a thread inside `ns`.
pub async fn post_in<B: Serialize + Send + 'static, T: DeserializeOwned + Send + 'static>(
    ns: &Netns,
    token: &str,
    url: String,
    body: B,
) -> Result<T, ClientError> {
    call_in(ns, token, move |c| async move { c.post(&url, &body).await }).await
}

/// Runs `f` with a client carrying `token` on a thread inside `ns`.
pub async fn call_in<T, F, Fut>(ns: &Netns, token: &str, f: F) -> Result<T, ClientError>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let ns = ns.clone();
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        ns.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(f(Client::new(Some(token), Duration::from_secs(60))))
        })
    })
    .await
    .expect("join")
    .expect("thread in the namespace")
}

//! The common `main` of every network-function binary: `NAME --config FILE.json [--ready-file PATH]`.
//!
//! Parses the JSON config once (unknown fields refused by the config type; a bad config exits with
//! code 64 and a clear message), initialises tracing (`RUST_LOG`, default `info`), runs the NF on a
//! tokio runtime until SIGTERM/SIGINT, and lets the NF say when it is ready: [`Ready::ready`] creates
//! the ready file that `testbed up` waits for.

use serde::de::DeserializeOwned;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for a bad command line or config (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Tells the launcher the NF is ready to serve.
#[derive(Debug, Clone)]
pub struct Ready(Option<PathBuf>);

impl Ready {
    /// Signals readiness (creates the ready file, if one was asked for).
    pub fn ready(&self) {
        if let Some(p) = &self.0 {
            if let Err(e) = std::fs::write(p, std::process::id().to_string()) {
                tracing::error!(path = %p.display(), error = %e, "cannot write ready file");
            }
        }
        tracing::info!("ready");
    }

    /// A `Ready` that signals nothing (tests).
    pub fn none() -> Self {
        Self(None)
    }
}

/// Resolves when the NF should stop (SIGTERM or SIGINT, or the sender is dropped).
#[derive(Debug, Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A shutdown signal and the sender that triggers it (tests; the binary's comes from signals).
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// Waits until shutdown is requested.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// The whole `main` of an NF binary named `name`, running `run(config, ready, shutdown)`.
pub fn main<C, F, Fut>(name: &'static str, run: F) -> ExitCode
where
    C: DeserializeOwned,
    F: FnOnce(C, Ready, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    tracing_subscriber_init();
    let mut args = std::env::args().skip(1);
    let (mut config, mut ready) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--ready-file" => ready = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: {name} --config FILE.json [--ready-file PATH]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("{name}: unknown argument `{other}` (usage: {name} --config FILE.json [--ready-file PATH])");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let Some(path) = config else {
        eprintln!("{name}: missing --config FILE.json");
        return ExitCode::from(EXIT_USAGE);
    };
    let cfg: C = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: bad config {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let (tx, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        run(cfg, Ready(ready), shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tracing_subscriber_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

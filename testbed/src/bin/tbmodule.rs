//! `tbmodule`: a **fake** service module for tests and experiments (see `testbed::fake_module`). It
//! registers with its SMO, serves the GetServices / ServedService / Execute callbacks, and moves
//! nothing: a successful Execute only drops the service from its list.
//!
//! tbmodule --smo URL --token T --listen ADDR:PORT --relocation-type TEST
//!          --service ID,IP,MAC,OVS_PORT[,UE_IP...] [--service …]
//!          [--execute-delay-ms N] [--execute-fail] [--hold-file PATH] [--ready-file PATH]
//!
//! Run it inside the SMO's edge namespace (`testbed exec edge-x -- tbmodule …`). It prints its
//! module id once registered (and writes it to the ready file), and de-registers on SIGTERM/SIGINT.

use anyhow::{Context, Result};
use clap::Parser;
use model::smo::RelocationType;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use testbed::fake_module::{self, ExecuteBehaviour, FakeModule};

#[derive(Parser, Debug)]
#[command(
    name = "tbmodule",
    about = "Fake service module of the testbed: registers with an SMO, serves the callbacks, moves nothing"
)]
struct Cli {
    /// Base URL of the SMO, e.g. http://10.100.0.41:8090.
    #[arg(long)]
    smo: String,
    /// The deployment's bearer token (required on the callbacks, sent to the SMO).
    #[arg(long)]
    token: Option<String>,
    /// Where the callbacks listen (0.0.0.0 means: call back on 127.0.0.1).
    #[arg(long)]
    listen: SocketAddr,
    /// The relocation type the module claims: TEST, CRIU, LXC, LXD.
    #[arg(long, default_value = "TEST")]
    relocation_type: String,
    /// A hosted service: ID,IP,MAC,OVS_PORT[,UE_IP...] (repeatable).
    #[arg(long = "service")]
    services: Vec<String>,
    /// Execute waits this long before answering.
    #[arg(long, default_value_t = 0)]
    execute_delay_ms: u64,
    /// Execute answers 500 (the service stays at the source).
    #[arg(long)]
    execute_fail: bool,
    /// Execute keeps waiting while this file exists.
    #[arg(long)]
    hold_file: Option<PathBuf>,
    /// Written (with the module id) once registered.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// How long registration keeps retrying while the SMO does not answer.
const REGISTER_PATIENCE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tbmodule: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tbmodule: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let relocation_type: RelocationType = serde_json::from_value(serde_json::Value::String(
        cli.relocation_type.to_uppercase(),
    ))
    .with_context(|| {
        format!(
            "unknown relocation type `{}` (TEST, CRIU, LXC, LXD)",
            cli.relocation_type
        )
    })?;
    let services = cli
        .services
        .iter()
        .map(|s| fake_module::parse_service(s, relocation_type))
        .collect::<Result<Vec<_>, _>>()?;
    let module = FakeModule::new(
        services,
        ExecuteBehaviour {
            delay: Duration::from_millis(cli.execute_delay_ms),
            fail: cli.execute_fail,
            hold_file: cli.hold_file.clone(),
        },
    );
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let local = svcmod::daemon::callback_addr(listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sbi::serve(
        listener,
        fake_module::router(module),
        cli.token.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let client = sbi::Client::new(cli.token.clone(), Duration::from_secs(5));
    let reg = svcmod::daemon::registration(relocation_type, local, local);
    let registered = fake_module::register(&client, &cli.smo, &reg, REGISTER_PATIENCE)
        .await
        .with_context(|| format!("cannot register with the SMO at {}", cli.smo))?;
    let id = registered.module_id;
    tracing::info!(module = %id, callbacks = %local, "registered (fake module: it moves nothing)");
    println!("{id}");
    if let Some(p) = &cli.ready_file {
        std::fs::write(p, &id).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(module = %id, "de-registering");
    let gone = fake_module::deregister(&client, &cli.smo, &id).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    gone.with_context(|| format!("cannot de-register {id}"))
}

//! `tbprobe`: the testbed's probe server and stream checker (run inside nodes with `testbed exec`).
//!
//! tbprobe serve [--tcp ADDR:PORT] [--udp ADDR:PORT] [--record-bytes N] [--interval-ms MS]
//! tbprobe stream ADDR:PORT [--seconds S] [--record-bytes N]     (prints a JSON report; exit 1 if not intact)

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "tbprobe",
    about = "Probe server and stream checker of the testbed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a TCP stream of sequence-numbered records and/or a UDP echo.
    Serve {
        #[arg(long)]
        tcp: Option<SocketAddr>,
        #[arg(long)]
        udp: Option<SocketAddr>,
        #[arg(long, default_value_t = 64)]
        record_bytes: usize,
        /// Time between records (0: as fast as TCP allows).
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// Connect once to a stream and check every byte for a while.
    Stream {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        record_bytes: usize,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            tcp,
            udp,
            record_bytes,
            interval_ms,
        } => {
            if tcp.is_none() && udp.is_none() {
                eprintln!("tbprobe: give --tcp and/or --udp");
                return ExitCode::from(64);
            }
            match testbed::probe::serve(tcp, udp, record_bytes, Duration::from_millis(interval_ms))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tbprobe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Stream {
            addr,
            seconds,
            record_bytes,
        } => match testbed::probe::check_stream(
            addr,
            record_bytes,
            Duration::from_secs_f64(seconds.max(0.0)),
        ) {
            Ok(rep) => {
                println!("{}", serde_json::to_string(&rep).unwrap_or_default());
                if rep.intact {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("tbprobe: cannot connect to {addr}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

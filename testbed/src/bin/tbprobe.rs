//! `tbprobe`: the testbed's probe server and stream checker (run inside nodes with `testbed exec`).
//!
//! tbprobe serve [--tcp ADDR:PORT] [--udp ADDR:PORT] [--record-bytes N] [--interval-ms MS] [--ballast-mb MB]
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
        /// Hold this much resident memory (MiB, every page written at start): a service whose
        /// migration moves more than its sockets.
        #[arg(long, default_value_t = 0)]
        ballast_mb: usize,
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

/// `mb` MiB of memory with every page written (a simple LCG pattern, so no page is a zero page
/// and none compresses to nothing).
fn ballast(mb: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..mb * (1 << 20) / 8)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            x
        })
        .collect()
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            tcp,
            udp,
            record_bytes,
            interval_ms,
            ballast_mb,
        } => {
            if tcp.is_none() && udp.is_none() {
                eprintln!("tbprobe: give --tcp and/or --udp");
                return ExitCode::from(64);
            }
            let ballast = ballast(ballast_mb);
            std::hint::black_box(&ballast);
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

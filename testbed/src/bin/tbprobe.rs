//! `tbprobe`: the testbed's probe server and stream checker (run inside nodes with `testbed exec`).
//!
//! tbprobe serve [--tcp ADDR:PORT] [--udp ADDR:PORT] [--record-bytes N] [--interval-ms MS] [--ballast-mb MB]
//! tbprobe stream ADDR:PORT [--seconds S] [--record-bytes N] [--interval-ms MS] [--reconnect]
//!                                   (prints a JSON report; exit 1 if not intact: a byte out of place,
//!                                    a disconnect or reconnect, or fewer records than the server's
//!                                    interval implies for the time checked)
//! tbprobe rtmp-play rtmp://ADDR/vod/FILE [--seconds S] [--buffer-ms MS]
//!                                   (ffmpeg plays it; prints a JSON report; exit 1 if the player stopped
//!                                    early or played much less than the wall time)

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
    /// Connect to a stream and check every byte, and that records keep coming, for a while.
    Stream {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        record_bytes: usize,
        /// The server's time between records: the check expects one per interval (0: none
        /// expected, the server sends as fast as TCP allows).
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Connect again when the connection ends, counting the reconnects (the stream is then
        /// not intact, but the report shows how much still arrived).
        #[arg(long)]
        reconnect: bool,
    },
    /// Play an RTMP stream with ffmpeg (at the server's pace) for a while and report what played.
    RtmpPlay {
        /// `rtmp://ADDR[:PORT]/APP/FILE`, e.g. rtmp://20.0.0.100/vod/testsrc-720p.flv.
        url: String,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// The buffer the player announces to the server (ms).
        #[arg(long, default_value_t = testbed::player::DEFAULT_BUFFER_MS)]
        buffer_ms: u32,
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
            interval_ms,
            reconnect,
        } => match (testbed::probe::StreamCheck {
            addr,
            record_bytes,
            duration: Duration::from_secs_f64(seconds.max(0.0)),
            interval: Duration::from_millis(interval_ms),
            reconnect,
        })
        .run(&testbed::probe::StreamWatch::default())
        {
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
        Command::RtmpPlay {
            url,
            seconds,
            buffer_ms,
        } => {
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
                eprintln!("tbprobe: --seconds wants a number in (0, 86400]");
                return ExitCode::from(64);
            }
            let opts = testbed::player::PlayOptions {
                url,
                duration_ms: (seconds * 1e3) as u64,
                buffer_ms,
            };
            match testbed::player::play(&opts) {
                Ok(rep) => {
                    println!("{}", serde_json::to_string(&rep).unwrap_or_default());
                    if rep.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("tbprobe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

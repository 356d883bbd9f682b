//! The UE-side video player of the nginx-rtmp service: `ffmpeg` reading an RTMP stream in the
//! calling network namespace, decoding it to the null muxer, with its `-progress` output parsed as
//! it comes; at the end, one [`PlayReport`] (media time played, frames, wall time, the largest
//! stall, whether the player stopped by itself).
//!
//! * **Pacing.** nginx-rtmp paces video on demand itself (see [`crate::rtmp`]): it sends the
//!   player's announced buffer (`-rtmp_buffer`, [`PlayOptions::buffer_ms`], RTMP
//!   `SetBufferLength`) plus ≈ 1.5 s ahead at once, then plays at 1x. So ffmpeg runs without `-re`
//!   and its media time is what has arrived: it stays ahead of the wall clock by about that
//!   buffer, and stops advancing while the service is frozen.
//! * **Stall**: the largest wall-clock time during which the media time did not advance (between
//!   two progress blocks that advanced it, or from the last one to the end), after the first
//!   frame; ffmpeg writes a progress block every [`PROGRESS_PERIOD_S`] while frames flow and none
//!   while they do not, so the resolution is that period.
//! * **Stopped**: ffmpeg exiting before the player ends it (after `seconds`, by its PID) means the
//!   stream ended for it: connection lost or reset, or the video's end.
//!
//! The parser ([`ProgressParser`]) and the report ([`PlayReport::new`]) are pure and never panic
//! on odd input; [`Player`] drives the real ffmpeg.

use serde::Serialize;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The player buffer the thesis's video client used (ms).
pub const DEFAULT_BUFFER_MS: u32 = 1000;
/// Seconds between ffmpeg's progress blocks.
pub const PROGRESS_PERIOD_S: f64 = 0.1;
/// A run "played much less than the wall time" below this share of it (after the first frame).
pub const MIN_PLAYED_SHARE: f64 = 0.75;
/// A run whose media time stood still longer than this (ms, the stall at the end included) has
/// stopped playing: a migration's freeze is ≤ 1 s even with LXD, and a dead stream at the end of
/// a run leaves a tail too short to pull the played share under [`MIN_PLAYED_SHARE`].
pub const MAX_STALL_MS: f64 = 3000.0;
/// Lines of ffmpeg's stderr kept for the report.
pub const STDERR_TAIL_LINES: usize = 12;
/// Longest line read from ffmpeg (longer ones are cut).
const MAX_LINE: u64 = 4096;

/// What to play, for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlayOptions {
    /// `rtmp://ADDR[:PORT]/APP/FILE`.
    pub url: String,
    /// How long to play, ms (the player ends ffmpeg then).
    pub duration_ms: u64,
    /// The buffer the player announces to the server (ffmpeg's `-rtmp_buffer`), ms.
    pub buffer_ms: u32,
}

/// The ffmpeg command line of a player: read at the pace the server sends (no `-re`), decode,
/// discard (null muxer), progress as `key=value` blocks on stdout, warnings on stderr.
pub fn ffmpeg_args(o: &PlayOptions) -> Vec<String> {
    [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-rtmp_buffer",
        &o.buffer_ms.to_string(),
        "-i",
        &o.url,
        "-f",
        "null",
        "-progress",
        "pipe:1",
        "-stats_period",
        &PROGRESS_PERIOD_S.to_string(),
        "-",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// One `-progress` block (the keys the player uses; others are ignored).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// `frame=`: video frames decoded so far.
    pub frame: Option<u64>,
    /// `out_time_us=`: media time reached, µs (`N/A` and negatives are `None`).
    pub out_time_us: Option<u64>,
    /// `total_size=`: bytes muxed.
    pub total_size: Option<u64>,
    /// `speed=`: e.g. `1.02x`.
    pub speed: Option<f64>,
    /// `progress=end`: ffmpeg's last block.
    pub end: bool,
}

/// Turns ffmpeg's `-progress` lines into [`Progress`] blocks (each ends with `progress=…`).
#[derive(Debug, Default)]
pub struct ProgressParser {
    current: Progress,
}

impl ProgressParser {
    /// Feeds one line (with or without its line end); a finished block when the line ends one.
    pub fn line(&mut self, line: &str) -> Option<Progress> {
        let line = line.trim();
        let (key, value) = line.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "frame" => self.current.frame = value.parse().ok(),
            "out_time_us" => {
                self.current.out_time_us = value.parse::<i64>().ok().and_then(|v| v.try_into().ok())
            }
            "total_size" => self.current.total_size = value.parse().ok(),
            "speed" => {
                self.current.speed = value
                    .trim_end_matches('x')
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite())
            }
            "progress" => {
                let mut block = std::mem::take(&mut self.current);
                block.end = value == "end";
                return Some(block);
            }
            _ => {}
        }
        None
    }
}

/// The media time and frames at one moment of the wall clock (ms since ffmpeg started).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub wall_ms: f64,
    pub media_ms: f64,
    pub frames: u64,
}

/// A time the media did not advance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stall {
    /// How long, ms.
    pub ms: f64,
    /// When it began (the last advance before it), ms of wall clock since ffmpeg started.
    pub from_ms: f64,
}

/// The largest stall in `(from_ms, to_ms]`: the longest wall-clock time between two samples
/// that advanced the media time (past every earlier sample's), or from the last such sample to
/// `to_ms`. A stall that began before `from_ms` counts from its beginning. Samples are taken in
/// order; non-finite ones are ignored. `None` when the window is empty.
pub fn largest_stall(samples: &[Sample], from_ms: f64, to_ms: f64) -> Option<Stall> {
    if !(from_ms.is_finite() && to_ms.is_finite()) || to_ms <= from_ms {
        return None;
    }
    let mut best: Option<Stall> = None;
    let mut consider = |ms: f64, from: f64| {
        if ms >= 0.0 && best.is_none_or(|b| ms > b.ms) {
            best = Some(Stall { ms, from_ms: from });
        }
    };
    let mut high = f64::NEG_INFINITY;
    let mut last: Option<f64> = None;
    for s in samples {
        if !(s.wall_ms.is_finite() && s.media_ms.is_finite()) || s.media_ms <= high {
            continue;
        }
        high = s.media_ms;
        if s.wall_ms > to_ms {
            break;
        }
        if s.wall_ms > from_ms {
            let began = last.unwrap_or(from_ms);
            consider(s.wall_ms - began, began);
        }
        last = Some(last.map_or(s.wall_ms, |l: f64| l.max(s.wall_ms)));
    }
    let began = last.unwrap_or(from_ms);
    consider(to_ms - began, began);
    best
}

/// How a player run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The player ended ffmpeg after the requested time.
    Stopped,
    /// ffmpeg exited by itself first (connection lost or reset, or the video ended).
    ExitedEarly { status: String },
}

/// What one player run saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlayReport {
    pub url: String,
    pub buffer_ms: u32,
    /// Media time reached, seconds.
    pub media_seconds: f64,
    /// Video frames decoded.
    pub frames: u64,
    /// Wall-clock time from ffmpeg's start to its end, seconds.
    pub wall_seconds: f64,
    /// Time to the first frame, ms (`None`: no frame at all).
    pub startup_ms: Option<f64>,
    /// The largest stall after the first frame, ms (0 when none).
    pub largest_stall_ms: f64,
    /// When it began, seconds after ffmpeg's start.
    pub largest_stall_at_s: Option<f64>,
    /// Whether ffmpeg exited by itself before the player ended it.
    pub exited_early: bool,
    pub ending: Ending,
    /// Progress blocks received.
    pub progress_blocks: usize,
    /// The last lines ffmpeg wrote to stderr (warnings and errors).
    pub stderr_tail: Vec<String>,
    /// Played without stopping, at least [`MIN_PLAYED_SHARE`] of the wall time (after the first
    /// frame), and never stood still longer than [`MAX_STALL_MS`] (the end included).
    pub ok: bool,
    /// Why not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl PlayReport {
    /// The report of a run that lasted `wall_ms` and ended as `ending`.
    pub fn new(
        opts: &PlayOptions,
        samples: &[Sample],
        wall_ms: f64,
        ending: Ending,
        stderr_tail: Vec<String>,
    ) -> Self {
        let wall_ms = if wall_ms.is_finite() {
            wall_ms.max(0.0)
        } else {
            0.0
        };
        let good = |s: &&Sample| s.wall_ms.is_finite() && s.media_ms.is_finite();
        let media_ms = samples
            .iter()
            .filter(good)
            .map(|s| s.media_ms)
            .fold(0.0_f64, f64::max);
        let frames = samples.iter().map(|s| s.frames).max().unwrap_or(0);
        let startup_ms = samples
            .iter()
            .filter(good)
            .find(|s| s.media_ms > 0.0 || s.frames > 0)
            .map(|s| s.wall_ms);
        let stall = startup_ms.and_then(|first| largest_stall(samples, first, wall_ms));
        let exited_early = matches!(ending, Ending::ExitedEarly { .. });
        let playing_ms = wall_ms - startup_ms.unwrap_or(wall_ms);
        let problem = if let Ending::ExitedEarly { status } = &ending {
            Some(format!(
                "ffmpeg exited by itself after {:.1} s ({status})",
                wall_ms / 1e3
            ))
        } else if startup_ms.is_none() {
            Some("no frame played".to_owned())
        } else if media_ms < MIN_PLAYED_SHARE * playing_ms {
            Some(format!(
                "played {:.1} s of media in {:.1} s (expected at least {:.0}% of it)",
                media_ms / 1e3,
                playing_ms / 1e3,
                MIN_PLAYED_SHARE * 100.0
            ))
        } else {
            stall.filter(|st| st.ms > MAX_STALL_MS).map(|st| {
                format!(
                    "the media stood still for {:.1} s from {:.1} s (at most {:.1} s expected){}",
                    st.ms / 1e3,
                    st.from_ms / 1e3,
                    MAX_STALL_MS / 1e3,
                    if st.from_ms + st.ms >= wall_ms - 1.0 {
                        ": playing stopped before the end"
                    } else {
                        ""
                    }
                )
            })
        };
        PlayReport {
            url: opts.url.clone(),
            buffer_ms: opts.buffer_ms,
            media_seconds: media_ms / 1e3,
            frames,
            wall_seconds: wall_ms / 1e3,
            startup_ms,
            largest_stall_ms: stall.map_or(0.0, |s| s.ms),
            largest_stall_at_s: stall.map(|s| s.from_ms / 1e3),
            exited_early,
            ending,
            progress_blocks: samples.len(),
            stderr_tail,
            ok: problem.is_none(),
            problem,
        }
    }
}

/// Why the player could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error("cannot start ffmpeg (install it: scripts/setup)")]
    Spawn(#[source] std::io::Error),
}

/// What a running player has seen so far; cheap to clone, shared with its reader threads.
#[derive(Debug, Clone, Default)]
pub struct PlayerWatch {
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl PlayerWatch {
    fn push(&self, s: Sample) {
        if let Ok(mut v) = self.samples.lock() {
            v.push(s);
        }
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The media time reached so far, ms.
    pub fn media_ms(&self) -> f64 {
        self.samples
            .lock()
            .map(|v| v.iter().map(|s| s.media_ms).fold(0.0, f64::max))
            .unwrap_or(0.0)
    }
}

/// A running ffmpeg player.
#[derive(Debug)]
pub struct Player {
    opts: PlayOptions,
    child: Child,
    started: Instant,
    watch: PlayerWatch,
    stdout: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<VecDeque<String>>>,
    exited: Option<(ExitStatus, Duration)>,
}

/// Reads lines of at most [`MAX_LINE`] bytes (longer ones come in pieces), lossily decoded.
fn for_each_line(r: impl Read, mut f: impl FnMut(&str)) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => f(&String::from_utf8_lossy(&buf)),
        }
    }
}

impl Player {
    /// Starts ffmpeg in the calling thread's network namespace.
    pub fn start(opts: &PlayOptions) -> Result<Player, PlayError> {
        let mut child = Command::new("ffmpeg")
            .args(ffmpeg_args(opts))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(PlayError::Spawn)?;
        let started = Instant::now();
        let watch = PlayerWatch::default();
        let stdout = child.stdout.take().map(|out| {
            let w = watch.clone();
            std::thread::spawn(move || {
                let mut parser = ProgressParser::default();
                for_each_line(out, |line| {
                    if let Some(p) = parser.line(line) {
                        w.push(Sample {
                            wall_ms: started.elapsed().as_secs_f64() * 1e3,
                            media_ms: p.out_time_us.map_or(0.0, |us| us as f64 / 1e3),
                            frames: p.frame.unwrap_or(0),
                        });
                    }
                });
            })
        });
        let stderr = child.stderr.take().map(|err| {
            std::thread::spawn(move || {
                let mut tail = VecDeque::new();
                for_each_line(err, |line| {
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.trim_end().to_owned());
                });
                tail
            })
        });
        Ok(Player {
            opts: opts.clone(),
            child,
            started,
            watch,
            stdout,
            stderr,
            exited: None,
        })
    }

    /// ffmpeg's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has seen so far.
    pub fn watch(&self) -> PlayerWatch {
        self.watch.clone()
    }

    /// Time since ffmpeg started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether ffmpeg has exited (by itself, unless [`Player::finish`] ran).
    pub fn has_exited(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some((status, self.started.elapsed()));
            }
        }
        self.exited.is_some()
    }

    /// Ends ffmpeg (SIGTERM by its PID, SIGKILL after 3 s) unless it exited by itself, and
    /// reports the run.
    pub fn finish(mut self) -> PlayReport {
        let ending = if self.has_exited() {
            let status = self.exited.map(|(s, _)| s.to_string()).unwrap_or_default();
            Ending::ExitedEarly { status }
        } else {
            let end = self.started.elapsed();
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while !matches!(self.child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.exited = Some((ExitStatus::default(), end));
            Ending::Stopped
        };
        if let Some(t) = self.stdout.take() {
            let _ = t.join();
        }
        let tail = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .map(Vec::from)
            .unwrap_or_default();
        let wall = self.exited.map_or(self.started.elapsed(), |(_, at)| at);
        // Blocks that came after the end (ffmpeg's last words on SIGTERM) are not playing time.
        let samples: Vec<Sample> = self
            .watch
            .samples()
            .into_iter()
            .filter(|s| s.wall_ms <= wall.as_secs_f64() * 1e3)
            .collect();
        PlayReport::new(&self.opts, &samples, wall.as_secs_f64() * 1e3, ending, tail)
    }
}

impl Drop for Player {
    /// A player dropped without [`Player::finish`] (a failing test) still ends its ffmpeg.
    fn drop(&mut self) {
        if self.exited.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Plays `opts.url` for `opts.duration_ms` (or until ffmpeg exits by itself) in the calling
/// thread's network namespace.
pub fn play(opts: &PlayOptions) -> Result<PlayReport, PlayError> {
    let mut p = Player::start(opts)?;
    let limit = Duration::from_millis(opts.duration_ms);
    while p.elapsed() < limit && !p.has_exited() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from ffmpeg 5.1 (Debian 12) playing the test video from nginx-rtmp on loopback
    /// (`-rtmp_buffer 1000`, `-stats_period 0.1`): the first three blocks and the last (after SIGTERM).
    const RECORDED: &str =
        "frame=1\nfps=0.00\nstream_0_0_q=-0.0\nbitrate=N/A\ntotal_size=N/A\nout_time_us=116213\n\
out_time_ms=116213\nout_time=00:00:00.116213\ndup_frames=0\ndrop_frames=0\nspeed=8.32x\n\
progress=continue\nframe=53\nfps=0.00\nstream_0_0_q=-0.0\nbitrate=N/A\ntotal_size=N/A\n\
out_time_us=2205737\nout_time_ms=2205737\nout_time=00:00:02.205737\ndup_frames=0\n\
drop_frames=0\nspeed=17.5x\nprogress=continue\nframe=55\nfps=0.00\nstream_0_0_q=-0.0\n\
bitrate=N/A\ntotal_size=N/A\nout_time_us=2322222\nout_time_ms=2322222\n\
out_time=00:00:02.322222\ndup_frames=0\ndrop_frames=0\nspeed=10.1x\nprogress=continue\n\
frame=97\nfps=51.20\nstream_0_0_q=-0.0\nbitrate=N/A\ntotal_size=N/A\n\
out_time_us=3947664\nout_time_ms=3947664\nout_time=00:00:03.947664\ndup_frames=0\n\
drop_frames=0\nspeed=2.08x\nprogress=end\n";

    fn opts() -> PlayOptions {
        PlayOptions {
            url: "rtmp://20.0.0.100:1935/vod/testsrc-720p.flv".into(),
            duration_ms: 10_000,
            buffer_ms: 1000,
        }
    }

    fn blocks(text: &str) -> Vec<Progress> {
        let mut p = ProgressParser::default();
        text.lines().filter_map(|l| p.line(l)).collect()
    }

    fn s(wall_ms: f64, media_ms: f64) -> Sample {
        Sample {
            wall_ms,
            media_ms,
            frames: (media_ms / 40.0) as u64,
        }
    }

    #[test]
    fn recorded_progress_parses_into_blocks() {
        let b = blocks(RECORDED);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].frame, Some(1));
        assert_eq!(b[0].out_time_us, Some(116_213));
        assert_eq!(b[0].speed, Some(8.32));
        assert_eq!(b[0].total_size, None, "N/A");
        assert!(!b[0].end);
        assert_eq!(b[1].frame, Some(53));
        assert_eq!(b[1].out_time_us, Some(2_205_737));
        assert_eq!(b[2].out_time_us, Some(2_322_222));
        assert_eq!(b[3].frame, Some(97));
        assert_eq!(b[3].out_time_us, Some(3_947_664));
        assert!(b[3].end);
        // `N/A` before the first frame, CRLF line ends, a block not ended yet.
        let mut p = ProgressParser::default();
        assert_eq!(p.line("out_time_us=N/A\r\n"), None);
        assert_eq!(p.line("frame=3\r\n"), None);
        let b = p.line("progress=continue\r\n").expect("block");
        assert_eq!((b.frame, b.out_time_us), (Some(3), None));
    }

    #[test]
    fn odd_progress_input_never_panics_and_yields_nothing_wrong() {
        let odd = "\n=\nframe\nframe=-1\nout_time_us=-9223372036854775807\nout_time_us=99999999999999999999999\n\
speed= x\nspeed=NaNx\nspeed=infx\ntotal_size=1e9\n\u{fffd}\u{0}=\u{0}\nprogress=\nprogress=continue\n";
        let b = blocks(odd);
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0],
            Progress {
                frame: None,
                out_time_us: None,
                total_size: None,
                speed: None,
                end: false
            }
        );
        let mut p = ProgressParser::default();
        for l in ["", "x", "====", "progress=end=end", "frame=\u{1F600}"] {
            let _ = p.line(l);
        }
    }

    #[test]
    fn a_steady_stream_has_no_stall_beyond_the_progress_period() {
        // 1x after a burst of 2.5 s, a block every 100 ms.
        let samples: Vec<Sample> = (0..100)
            .map(|i| s(500.0 + 100.0 * f64::from(i), 2500.0 + 100.0 * f64::from(i)))
            .collect();
        let r = PlayReport::new(&opts(), &samples, 10_450.0, Ending::Stopped, vec![]);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.startup_ms, Some(500.0));
        assert!((r.largest_stall_ms - 100.0).abs() < 1e-9, "{r:?}");
        assert!((r.media_seconds - 12.4).abs() < 1e-9);
        assert_eq!(r.frames, 310);
        assert!(!r.exited_early);
    }

    #[test]
    fn a_freeze_is_the_largest_stall_and_when_it_began() {
        let mut v = vec![s(400.0, 2000.0), s(500.0, 2100.0), s(600.0, 2200.0)];
        // The service is frozen 600 → 900 ms: no blocks, then the burst that was held back.
        v.extend([s(900.0, 2500.0), s(1000.0, 2600.0), s(1100.0, 2600.0)]);
        let r = PlayReport::new(&opts(), &v, 1150.0, Ending::Stopped, vec![]);
        assert!((r.largest_stall_ms - 300.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.largest_stall_at_s, Some(0.6));
        // A window that starts inside the freeze counts it whole; one after it does not.
        let st = largest_stall(&v, 700.0, 1050.0).expect("stall");
        assert_eq!((st.ms, st.from_ms), (300.0, 600.0));
        let st = largest_stall(&v, 950.0, 1050.0).expect("stall");
        assert_eq!((st.ms, st.from_ms), (100.0, 900.0));
        // The media did not advance at 1100: from 1000 to the end is a stall too.
        let st = largest_stall(&v, 950.0, 1500.0).expect("stall");
        assert_eq!((st.ms, st.from_ms), (500.0, 1000.0));
        assert_eq!(largest_stall(&v, 10.0, 10.0), None);
        assert_eq!(largest_stall(&v, f64::NAN, 10.0), None);
        assert_eq!(
            largest_stall(&[], 0.0, 10.0),
            Some(Stall {
                ms: 10.0,
                from_ms: 0.0
            })
        );
    }

    #[test]
    fn a_player_that_stopped_by_itself_or_played_too_little_is_not_ok() {
        let v: Vec<Sample> = (0..30)
            .map(|i| s(500.0 + 100.0 * f64::from(i), 2500.0 + 100.0 * f64::from(i)))
            .collect();
        let r = PlayReport::new(
            &opts(),
            &v,
            3_400.0,
            Ending::ExitedEarly {
                status: "exit status: 1".into(),
            },
            vec!["rtmp://20.0.0.100:1935/vod/x.flv: Connection reset by peer".into()],
        );
        assert!(!r.ok && r.exited_early, "{r:?}");
        assert!(r.problem.as_deref().is_some_and(|p| p.contains("exited")));
        // Stuck after 2 s of media in a 10 s run.
        let r = PlayReport::new(&opts(), &v[..3], 10_000.0, Ending::Stopped, vec![]);
        assert!(!r.ok, "{r:?}");
        assert!(r.largest_stall_ms > 9000.0, "{r:?}");
        // Nothing at all; and nonsense numbers.
        let r = PlayReport::new(&opts(), &[], 5_000.0, Ending::Stopped, vec![]);
        assert_eq!(r.problem.as_deref(), Some("no frame played"));
        assert_eq!(r.largest_stall_ms, 0.0);
        let bad = [s(f64::NAN, 1.0), s(1.0, f64::INFINITY), s(-5.0, -3.0)];
        let r = PlayReport::new(&opts(), &bad, f64::NAN, Ending::Stopped, vec![]);
        assert!(!r.ok);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["ending"], "stopped");
    }

    #[test]
    fn a_stream_that_dies_near_the_end_fails_though_enough_media_played() {
        // 1x with 2.5 s ahead for 32 s, then nothing more until the end at 40 s: 34.5 s of
        // media in 39.5 s of playing is above the played share, but the media stood still 8 s.
        let v: Vec<Sample> = (0..320)
            .map(|i| s(500.0 + 100.0 * f64::from(i), 2500.0 + 100.0 * f64::from(i)))
            .collect();
        let r = PlayReport::new(&opts(), &v, 40_000.0, Ending::Stopped, vec![]);
        assert!(r.media_seconds >= MIN_PLAYED_SHARE * 39.5, "{r:?}");
        assert!(!r.ok, "{r:?}");
        let p = r.problem.expect("a problem");
        assert!(
            p.contains("stood still") && p.contains("stopped before the end"),
            "{p}"
        );
        // The same run with a 300 ms freeze in the middle and no dead end is fine.
        let mut v: Vec<Sample> = (0..395)
            .map(|i| s(500.0 + 100.0 * f64::from(i), 2500.0 + 100.0 * f64::from(i)))
            .collect();
        v.retain(|x| !(20_000.0..20_300.0).contains(&x.wall_ms));
        let r = PlayReport::new(&opts(), &v, 40_000.0, Ending::Stopped, vec![]);
        assert!(r.ok, "{r:?}");
    }

    #[test]
    fn the_player_reads_at_the_servers_pace_to_the_null_muxer() {
        let a = ffmpeg_args(&opts()).join(" ");
        assert!(a.contains("-rtmp_buffer 1000 -i rtmp://20.0.0.100:1935/vod/testsrc-720p.flv"));
        assert!(a.contains("-f null"));
        assert!(a.contains("-progress pipe:1 -stats_period 0.1"));
        assert!(!a.contains("-re "), "nginx-rtmp paces VOD itself");
    }
}

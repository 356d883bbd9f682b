//! The probe: a test server (a TCP stream of sequence-numbered records, a UDP echo) and a client that
//! checks every byte of the stream arrives once and in order, and measures arrival gaps.
//!
//! A record is `record_bytes` long: the sequence number (u64, big endian), then filler bytes that are
//! a function of the sequence number and position, so the client can verify every byte.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Smallest record: the sequence number.
pub const MIN_RECORD: usize = 8;

/// Fills `buf` with the record for `seq`.
pub fn record(seq: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

/// Serves TCP streams (one thread per connection) and UDP echo until the process ends.
pub fn serve(
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    record_bytes: usize,
    interval: Duration,
) -> std::io::Result<()> {
    let record_bytes = record_bytes.max(MIN_RECORD);
    let mut threads = Vec::new();
    if let Some(addr) = udp {
        let sock = UdpSocket::bind(addr)?;
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }));
    }
    if let Some(addr) = tcp {
        let listener = TcpListener::bind(addr)?;
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || stream_to(conn, record_bytes, interval));
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn stream_to(mut conn: TcpStream, record_bytes: usize, interval: Duration) {
    let _ = conn.set_nodelay(true);
    // Drain whatever the client sends, so its writes never block.
    if let Ok(mut rx) = conn.try_clone() {
        std::thread::spawn(move || {
            let mut sink = [0u8; 4096];
            while matches!(rx.read(&mut sink), Ok(n) if n > 0) {}
        });
    }
    let mut buf = vec![0u8; record_bytes];
    // The schedule runs on the wall clock, not the monotonic one: CRIU restores a service into a
    // time namespace whose monotonic clock continues from the dump, so on that clock the freeze
    // never happened and a monotonic schedule would fall behind by every freeze for good. On
    // the wall clock the server sends what the freeze held back at once, and a client can count
    // records against its own elapsed time (`StreamCheck`): a shortfall means a lost stream.
    let start = std::time::SystemTime::now();
    for seq in 0u64.. {
        record(seq, &mut buf);
        if conn.write_all(&buf).is_err() {
            return;
        }
        if !interval.is_zero() {
            // Keep the rate even: sleep to the next slot rather than a fixed interval.
            let next = interval * u32::try_from(seq + 1).unwrap_or(u32::MAX);
            let elapsed = start.elapsed().unwrap_or_default();
            if let Some(wait) = next.checked_sub(elapsed) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// The server's default time between records (`tbprobe serve --interval-ms`), and what a check
/// expects unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(10);
/// Records a stream may fall short of what its interval and duration imply and still be intact:
/// this many, plus [`SHORTFALL_SHARE`] of the expected count (records in flight at the end, the
/// connection's set-up).
pub const SHORTFALL_RECORDS: u64 = 5;
/// See [`SHORTFALL_RECORDS`].
pub const SHORTFALL_SHARE: f64 = 0.02;
/// The longest a check waits in one read (it looks at its watch between reads).
const READ_WAIT: Duration = Duration::from_millis(200);
/// Disconnect reasons kept in a report (a reconnecting check may see many).
const MAX_DISCONNECTS_KEPT: usize = 16;

/// What a stream check does: where it connects, what it expects, for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamCheck {
    pub addr: SocketAddr,
    pub record_bytes: usize,
    /// How long to check (the check also ends when its [`StreamWatch`] is told to stop).
    pub duration: Duration,
    /// The server's time between records: the check expects one record per interval for as long
    /// as it ran. Zero: the server sends as fast as TCP allows, so no count is expected.
    pub interval: Duration,
    /// Connect again when the connection ends (counted in [`StreamReport::reconnects`]; a
    /// reconnected stream is never intact). Without it the check ends at the first disconnect.
    pub reconnect: bool,
}

impl StreamCheck {
    /// A check of the stream at `addr` with the server's defaults (64-byte records every 10 ms),
    /// for `duration`, on one connection.
    pub fn new(addr: SocketAddr, duration: Duration) -> Self {
        Self {
            addr,
            record_bytes: 64,
            duration,
            interval: DEFAULT_INTERVAL,
            reconnect: false,
        }
    }

    /// The fewest records a stream checked for `elapsed` may deliver and still be intact, and
    /// the count its interval implies; `None` when the interval is zero.
    pub fn expected(&self, elapsed: Duration) -> Option<(u64, u64)> {
        if self.interval.is_zero() {
            return None;
        }
        let expected = (elapsed.as_secs_f64() / self.interval.as_secs_f64()).floor() as u64;
        let slack = SHORTFALL_RECORDS + (expected as f64 * SHORTFALL_SHARE).ceil() as u64;
        Some((expected, expected.saturating_sub(slack)))
    }
}

/// What the client saw, and whether that is what the stream should have delivered.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StreamReport {
    pub records: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records whose sequence number was not the next one expected, or whose bytes were wrong.
    pub corrupt_records: u64,
    /// Largest time without a record, in ms: between two records, from the connection to the
    /// first record, or from the last record to the check's end (a stream that died shows it).
    pub max_gap_ms: f64,
    /// When that gap ended, in ms since the stream started.
    pub max_gap_end_ms: f64,
    /// The silence from the last record to the check's end, in ms.
    pub tail_silence_ms: f64,
    /// How long the check ran, in ms.
    pub elapsed_ms: f64,
    /// The server's interval the count was checked against, in ms (0: no count expected).
    pub interval_ms: f64,
    /// Records the interval implies for the time the check ran.
    pub expected_records: Option<u64>,
    /// The fewest records an intact stream may deliver: `expected_records` less
    /// [`SHORTFALL_RECORDS`] + [`SHORTFALL_SHARE`] of it.
    pub min_records: Option<u64>,
    /// Set when the (last) connection ended before the check did.
    pub disconnected: Option<String>,
    /// Times a reconnecting check connected again.
    pub reconnects: u32,
    /// Why each connection ended (the first few).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disconnects: Vec<String>,
    /// Every byte arrived, once, in order, over one connection, and at least `min_records`
    /// records did: data kept arriving until the end.
    pub intact: bool,
    /// Why not intact, naming what was expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl StreamReport {
    /// Decides `intact` and `problem` from what was counted, against `check`'s expectations for
    /// a check that ran `elapsed`.
    fn judge(&mut self, check: &StreamCheck, elapsed: Duration) {
        self.elapsed_ms = elapsed.as_secs_f64() * 1e3;
        self.interval_ms = check.interval.as_secs_f64() * 1e3;
        if let Some((expected, min)) = check.expected(elapsed) {
            self.expected_records = Some(expected);
            self.min_records = Some(min);
        }
        self.problem = if self.records == 0 {
            Some(format!(
                "no record in {:.1} s (expected {})",
                self.elapsed_ms / 1e3,
                self.expected_records
                    .map_or("some".into(), |e| e.to_string())
            ))
        } else if self.reconnects > 0 {
            Some(format!(
                "reconnected {} time(s): {}",
                self.reconnects,
                self.disconnects.first().map_or("", String::as_str)
            ))
        } else if let Some(d) = &self.disconnected {
            Some(format!("disconnected after {} records: {d}", self.records))
        } else if self.corrupt_records > 0 {
            Some(format!(
                "{} record(s) out of sequence or with wrong bytes",
                self.corrupt_records
            ))
        } else if let Some(min) = self.min_records.filter(|m| self.records < *m) {
            Some(format!(
                "{} records in {:.1} s, expected {} (at least {}): silent for the last {:.0} ms",
                self.records,
                self.elapsed_ms / 1e3,
                self.expected_records.unwrap_or(min),
                min,
                self.tail_silence_ms
            ))
        } else {
            None
        };
        self.intact = self.problem.is_none();
    }
}

/// A live view of a running stream check, shared with another thread: how much has arrived so far,
/// and a way to end the check early.
#[derive(Debug, Clone, Default)]
pub struct StreamWatch {
    records: Arc<AtomicU64>,
    corrupt: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl StreamWatch {
    /// Complete records received so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Records received so far that were out of sequence or had wrong bytes.
    pub fn corrupt(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Ends the check at its next read (within 200 ms).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Connects once and checks the stream for `duration`, expecting a record every
/// [`DEFAULT_INTERVAL`]. Never reconnects.
pub fn check_stream(
    addr: SocketAddr,
    record_bytes: usize,
    duration: Duration,
) -> std::io::Result<StreamReport> {
    check_stream_watched(addr, record_bytes, duration, &StreamWatch::default())
}

/// [`check_stream`], reporting progress to `watch` as records arrive and ending early when it is
/// told to stop.
pub fn check_stream_watched(
    addr: SocketAddr,
    record_bytes: usize,
    duration: Duration,
    watch: &StreamWatch,
) -> std::io::Result<StreamReport> {
    StreamCheck {
        record_bytes,
        ..StreamCheck::new(addr, duration)
    }
    .run(watch)
}

impl StreamCheck {
    /// Runs the check. Fails only when the first connection cannot be made.
    pub fn run(&self, watch: &StreamWatch) -> std::io::Result<StreamReport> {
        let record_bytes = self.record_bytes.max(MIN_RECORD);
        let connect = |limit: Duration| -> std::io::Result<TcpStream> {
            let conn = TcpStream::connect_timeout(&self.addr, limit)?;
            conn.set_read_timeout(Some(READ_WAIT))?;
            Ok(conn)
        };
        let mut conn = connect(Duration::from_secs(5))?;
        let mut rep = StreamReport::default();
        let mut buf = vec![0u8; record_bytes];
        let mut want = vec![0u8; record_bytes];
        let mut filled = 0;
        let start = Instant::now();
        // The gap before the first record counts too: a stream that never starts is silent.
        let mut last_arrival = start;
        // The next sequence number on this connection (every connection starts at 0).
        let mut next_seq: Option<u64> = None;
        let note_gap = |rep: &mut StreamReport, from: Instant, to: Instant| {
            let gap = to.duration_since(from).as_secs_f64() * 1e3;
            if gap > rep.max_gap_ms {
                rep.max_gap_ms = gap;
                rep.max_gap_end_ms = to.duration_since(start).as_secs_f64() * 1e3;
            }
        };
        let running = |start: Instant| start.elapsed() < self.duration && !watch.stopped();
        while running(start) {
            // Never read past the check's end: its count and tail are taken at the end.
            let left = self.duration.saturating_sub(start.elapsed());
            if left < READ_WAIT {
                conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            }
            let ended = match conn.read(&mut buf[filled..]) {
                Ok(0) => Some("connection closed by the server".to_owned()),
                Ok(n) => {
                    filled += n;
                    rep.bytes += n as u64;
                    if filled == record_bytes {
                        filled = 0;
                        let now = Instant::now();
                        note_gap(&mut rep, last_arrival, now);
                        last_arrival = now;
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                        let expected = next_seq.unwrap_or(0);
                        record(expected, &mut want);
                        if seq != expected || buf != want {
                            rep.corrupt_records += 1;
                            watch.corrupt.fetch_add(1, Ordering::Relaxed);
                        }
                        rep.first_seq.get_or_insert(seq);
                        rep.last_seq = Some(seq);
                        next_seq = Some(seq.wrapping_add(1));
                        rep.records += 1;
                        watch.records.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            let Some(why) = ended else { continue };
            if rep.disconnects.len() < MAX_DISCONNECTS_KEPT {
                rep.disconnects.push(why.clone());
            }
            rep.disconnected = Some(why);
            if !self.reconnect {
                break;
            }
            // Connect again until the check's time is up; the new connection starts afresh.
            loop {
                if !running(start) {
                    break;
                }
                let left = self.duration.saturating_sub(start.elapsed());
                match connect(left.clamp(Duration::from_millis(1), Duration::from_secs(1))) {
                    Ok(c) => {
                        conn = c;
                        rep.reconnects += 1;
                        rep.disconnected = None;
                        filled = 0;
                        next_seq = None;
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            if rep.disconnected.is_some() {
                break;
            }
        }
        let end = Instant::now();
        rep.tail_silence_ms = end.duration_since(last_arrival).as_secs_f64() * 1e3;
        note_gap(&mut rep, last_arrival, end);
        rep.judge(self, end.duration_since(start));
        Ok(rep)
    }
}

/// A ping flow fails when more than this share of its echo requests went unanswered.
pub const PING_MAX_LOSS: f64 = 0.05;
/// A ping flow fails when its last replies are missing for longer than this (ms): it stopped
/// (the last request or two may still be in flight when ping's deadline ends it).
pub const PING_MAX_TAIL_MS: f64 = 500.0;

/// What a `ping -n -i INTERVAL -w SECONDS` run (without `-q`) printed, judged: loss, the longest
/// run of lost replies, and whether replies kept coming until the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PingReport {
    pub transmitted: u64,
    pub received: u64,
    pub loss_percent: f64,
    /// The longest run of consecutive requests without a reply.
    pub largest_lost_run: u64,
    /// That run in time: its length × the interval, ms.
    pub largest_lost_run_ms: f64,
    /// Requests without a reply at the end (after the last reply).
    pub tail_lost: u64,
    pub interval_ms: f64,
    /// The flow's verdict: replies came, at most [`PING_MAX_LOSS`] were lost, and none was
    /// missing for the last [`PING_MAX_TAIL_MS`].
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl PingReport {
    /// Reads ping's per-reply lines (`icmp_seq=N`) and its summary (`N packets transmitted, M
    /// received`); `None` without a summary (ping did not run).
    pub fn parse(out: &str, interval: Duration) -> Option<Self> {
        let summary = out.lines().find(|l| l.contains("packets transmitted"))?;
        let mut nums = summary.split(',').map(|p| {
            p.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
        let (transmitted, received) = (nums.next()??, nums.next()??);
        let mut seqs: Vec<u64> = out
            .lines()
            .filter(|l| !l.contains("DUP!"))
            .filter_map(|l| {
                let rest = l.split("icmp_seq=").nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .filter(|s| (1..=transmitted).contains(s))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        // Runs of missing sequence numbers in 1..=transmitted (ping counts from 1).
        let mut largest = 0;
        let mut prev = 0;
        for &s in &seqs {
            largest = largest.max(s - prev - 1);
            prev = s;
        }
        let tail_lost = transmitted - prev;
        largest = largest.max(tail_lost);
        let interval_ms = interval.as_secs_f64() * 1e3;
        let lost = transmitted.saturating_sub(received.min(transmitted));
        let loss = if transmitted == 0 {
            0.0
        } else {
            lost as f64 / transmitted as f64
        };
        let problem = if received == 0 {
            Some(format!("no reply to {transmitted} requests"))
        } else if loss > PING_MAX_LOSS {
            Some(format!(
                "{lost} of {transmitted} replies lost ({:.1}% > {:.0}%)",
                loss * 100.0,
                PING_MAX_LOSS * 100.0
            ))
        } else if tail_lost as f64 * interval_ms > PING_MAX_TAIL_MS {
            Some(format!(
                "the last {tail_lost} replies ({:.0} ms) never came: the flow stopped",
                tail_lost as f64 * interval_ms
            ))
        } else {
            None
        };
        Some(Self {
            transmitted,
            received,
            loss_percent: loss * 100.0,
            largest_lost_run: largest,
            largest_lost_run_ms: largest as f64 * interval_ms,
            tail_lost,
            interval_ms,
            ok: problem.is_none(),
            problem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_over_loopback_is_intact_and_gaps_are_measured() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Some(Ok(c)) = listener.incoming().next() {
                stream_to(c, 64, Duration::from_millis(5));
            }
        });
        let rep = check_stream(addr, 64, Duration::from_millis(400)).expect("stream");
        assert!(rep.intact, "{rep:?}");
        assert_eq!(rep.first_seq, Some(0));
        assert!(rep.records >= 20, "{rep:?}");
        assert_eq!(rep.bytes / 64, rep.records, "{rep:?}");
        assert!(rep.max_gap_ms < 200.0, "{rep:?}");
    }

    #[test]
    fn a_watched_stream_reports_progress_and_stops_when_told() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Some(Ok(c)) = listener.incoming().next() {
                stream_to(c, 32, Duration::from_millis(5));
            }
        });
        let watch = StreamWatch::default();
        let w = watch.clone();
        let t = std::thread::spawn(move || {
            check_stream_watched(addr, 32, Duration::from_secs(30), &w).expect("stream")
        });
        let start = Instant::now();
        while watch.records() < 10 {
            assert!(start.elapsed() < Duration::from_secs(5), "no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
        watch.stop();
        let rep = t.join().expect("join");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(rep.intact, "{rep:?}");
        assert_eq!(rep.records, watch.records());
        assert_eq!(watch.corrupt(), 0);
    }

    /// A server on loopback that sends `records` records every `interval` on each of its first
    /// `connections` connections, one after the other, closing each but the last, which it holds
    /// open and silent (`hold`) or closes too.
    fn server(connections: usize, records: u64, interval: Duration, hold: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for (i, c) in listener.incoming().take(connections).enumerate() {
                let Ok(mut c) = c else { return };
                let mut buf = vec![0u8; 64];
                for seq in 0..records {
                    record(seq, &mut buf);
                    if c.write_all(&buf).is_err() {
                        break;
                    }
                    std::thread::sleep(interval);
                }
                if hold && i + 1 == connections {
                    std::thread::sleep(Duration::from_secs(30));
                }
            }
        });
        addr
    }

    fn check(addr: SocketAddr, ms: u64, reconnect: bool) -> StreamReport {
        StreamCheck {
            interval: Duration::from_millis(5),
            reconnect,
            ..StreamCheck::new(addr, Duration::from_millis(ms))
        }
        .run(&StreamWatch::default())
        .expect("connects")
    }

    #[test]
    fn a_stream_that_stops_early_is_not_intact() {
        // 20 records in ≈ 100 ms, then the server closes: a check of 600 ms expects ≈ 120.
        let rep = check(server(1, 20, Duration::from_millis(5), false), 600, false);
        assert_eq!(rep.records, 20, "{rep:?}");
        assert_eq!(rep.corrupt_records, 0, "{rep:?}");
        assert!(rep.disconnected.is_some(), "{rep:?}");
        assert!(!rep.intact, "{rep:?}");
        assert!(
            rep.problem
                .as_deref()
                .is_some_and(|p| p.contains("disconnected")),
            "{rep:?}"
        );
    }

    #[test]
    fn a_stream_that_goes_silent_is_not_intact_and_its_silence_is_its_largest_gap() {
        // 20 records, then the connection stays open and nothing comes: byte-exact so far, one
        // connection, but far fewer records than 600 ms at 5 ms imply, and a ≈ 500 ms tail.
        let rep = check(server(1, 20, Duration::from_millis(5), true), 600, false);
        assert_eq!(rep.records, 20, "{rep:?}");
        assert_eq!(rep.corrupt_records, 0, "{rep:?}");
        assert!(rep.disconnected.is_none(), "{rep:?}");
        assert!(!rep.intact, "{rep:?}");
        let expected = rep.expected_records.expect("an interval was given");
        assert!((110..=130).contains(&expected), "{rep:?}");
        assert!(
            rep.min_records.is_some_and(|m| m > 20 && m < expected),
            "{rep:?}"
        );
        assert!(rep.tail_silence_ms > 400.0, "{rep:?}");
        assert_eq!(rep.max_gap_ms, rep.tail_silence_ms, "{rep:?}");
        assert!((rep.max_gap_end_ms - rep.elapsed_ms).abs() < 1.0, "{rep:?}");
        let p = rep.problem.expect("a problem");
        assert!(p.contains("20 records") && p.contains("expected"), "{p}");
    }

    #[test]
    fn a_stream_that_reconnects_is_counted_and_never_intact() {
        // The server closes after 20 records and accepts a second connection that starts at 0.
        let rep = check(server(2, 20, Duration::from_millis(5), true), 400, true);
        assert_eq!(rep.reconnects, 1, "{rep:?}");
        assert_eq!(rep.records, 40, "{rep:?}");
        assert_eq!(
            rep.corrupt_records, 0,
            "each connection starts at 0: {rep:?}"
        );
        assert_eq!(rep.disconnects.len(), 1, "{rep:?}");
        assert!(rep.disconnected.is_none(), "{rep:?}");
        assert!(!rep.intact, "{rep:?}");
        assert!(
            rep.problem
                .as_deref()
                .is_some_and(|p| p.contains("reconnected 1")),
            "{rep:?}"
        );
    }

    #[test]
    fn a_stream_that_delivers_what_its_interval_implies_is_intact() {
        let rep = check(server(1, 1000, Duration::from_millis(5), true), 300, false);
        assert!(rep.intact, "{rep:?}");
        assert!(rep.tail_silence_ms < 50.0, "{rep:?}");
        let json = serde_json::to_value(&rep).expect("json");
        let back: StreamReport = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, rep);
    }

    fn ping_out(replies: &[u64], transmitted: u64) -> String {
        let mut out = "PING 20.0.0.100 (20.0.0.100) 56(84) bytes of data.\n".to_owned();
        for s in replies {
            out.push_str(&format!(
                "64 bytes from 20.0.0.100: icmp_seq={s} ttl=63 time=0.31 ms\n"
            ));
        }
        out.push_str(&format!(
            "\n--- 20.0.0.100 ping statistics ---\n{transmitted} packets transmitted, {} received, time 999ms\n",
            replies.len()
        ));
        out
    }

    #[test]
    fn ping_loss_and_the_longest_lost_run_are_judged() {
        let ten_ms = Duration::from_millis(10);
        // 1000 requests, 15 lost in one run in the middle (a migration's freeze): ok.
        let replies: Vec<u64> = (1..=1000).filter(|s| !(400..415).contains(s)).collect();
        let r = PingReport::parse(&ping_out(&replies, 1000), ten_ms).expect("summary");
        assert_eq!((r.transmitted, r.received), (1000, 985));
        assert_eq!(r.largest_lost_run, 15);
        assert_eq!(r.largest_lost_run_ms, 150.0);
        assert_eq!(r.tail_lost, 0);
        assert!(r.ok, "{r:?}");
        // Replies stop 800 ms before the end: 8% lost, and a dead tail.
        let replies: Vec<u64> = (1..=920).collect();
        let r = PingReport::parse(&ping_out(&replies, 1000), ten_ms).expect("summary");
        assert_eq!(r.tail_lost, 80);
        assert!(!r.ok);
        assert!(
            r.problem.as_deref().is_some_and(|p| p.contains("lost")),
            "{r:?}"
        );
        // A dead tail under the loss limit still fails: the flow stopped (1% lost, but the last
        // second at 100 ms).
        let replies: Vec<u64> = (1..=990).collect();
        let r = PingReport::parse(&ping_out(&replies, 1000), Duration::from_millis(100))
            .expect("summary");
        assert!(!r.ok);
        assert!(
            r.problem.as_deref().is_some_and(|p| p.contains("stopped")),
            "{r:?}"
        );
        // One request in flight at the deadline is not a stop.
        let replies: Vec<u64> = (1..=999).collect();
        assert!(
            PingReport::parse(&ping_out(&replies, 1000), ten_ms)
                .expect("s")
                .ok
        );
        // No reply at all, and no summary at all.
        let r = PingReport::parse(&ping_out(&[], 3), ten_ms).expect("summary");
        assert!(
            !r.ok && r.largest_lost_run == 3 && r.tail_lost == 3,
            "{r:?}"
        );
        assert_eq!(
            PingReport::parse("connect: Network is unreachable", ten_ms),
            None
        );
    }

    #[test]
    fn a_missing_record_or_a_wrong_byte_is_detected() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Some(Ok(mut c)) = listener.incoming().next() {
                let mut buf = vec![0u8; 16];
                for seq in [0u64, 1, 3] {
                    record(seq, &mut buf);
                    let _ = c.write_all(&buf);
                }
                record(4, &mut buf);
                buf[12] ^= 1;
                let _ = c.write_all(&buf);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let rep = check_stream(addr, 16, Duration::from_millis(500)).expect("stream");
        assert_eq!(rep.records, 4);
        assert_eq!(rep.corrupt_records, 2, "{rep:?}");
        assert!(rep.disconnected.is_some());
        assert!(!rep.intact);
    }
}

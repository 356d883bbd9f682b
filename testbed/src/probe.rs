//! The probe: a test server (a TCP stream of sequence-numbered records, a UDP echo) and a client that
//! checks every byte of the stream arrives once and in order, and measures arrival gaps.
//!
//! A record is `record_bytes` long: the sequence number (u64, big endian), then filler bytes that are
//! a function of the sequence number and position, so the client can verify every byte.

use serde::Serialize;
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
    let start = Instant::now();
    for seq in 0u64.. {
        record(seq, &mut buf);
        if conn.write_all(&buf).is_err() {
            return;
        }
        if !interval.is_zero() {
            // Keep the rate even: sleep to the next slot rather than a fixed interval.
            let next = interval * u32::try_from(seq + 1).unwrap_or(u32::MAX);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// What the client saw.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct StreamReport {
    pub records: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records whose sequence number was not the next one expected, or whose bytes were wrong.
    pub corrupt_records: u64,
    /// Largest time between two consecutive records, in ms.
    pub max_gap_ms: f64,
    /// When that gap ended, in ms since the stream started.
    pub max_gap_end_ms: f64,
    /// Set when the connection ended before the duration did.
    pub disconnected: Option<String>,
    /// Every byte arrived, once, in order, over one connection.
    pub intact: bool,
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
}

/// Connects once and checks the stream for `duration`. Never reconnects.
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
    let record_bytes = record_bytes.max(MIN_RECORD);
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut rep = StreamReport::default();
    let mut buf = vec![0u8; record_bytes];
    let mut want = vec![0u8; record_bytes];
    let mut filled = 0;
    let start = Instant::now();
    let mut last_arrival: Option<Instant> = None;
    while start.elapsed() < duration && !watch.stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf[filled..]) {
            Ok(0) => {
                rep.disconnected = Some("connection closed by the server".into());
                break;
            }
            Ok(n) => {
                filled += n;
                rep.bytes += n as u64;
                if filled < record_bytes {
                    continue;
                }
                filled = 0;
                let now = Instant::now();
                if let Some(prev) = last_arrival {
                    let gap = now.duration_since(prev).as_secs_f64() * 1e3;
                    if gap > rep.max_gap_ms {
                        rep.max_gap_ms = gap;
                        rep.max_gap_end_ms = now.duration_since(start).as_secs_f64() * 1e3;
                    }
                }
                last_arrival = Some(now);
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                let expected = rep.last_seq.map_or(seq, |l| l + 1);
                record(expected, &mut want);
                if seq != expected || buf != want {
                    rep.corrupt_records += 1;
                    watch.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                rep.first_seq.get_or_insert(seq);
                rep.last_seq = Some(seq);
                rep.records += 1;
                watch.records.fetch_add(1, Ordering::Relaxed);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                rep.disconnected = Some(e.to_string());
                break;
            }
        }
    }
    rep.intact = rep.disconnected.is_none() && rep.corrupt_records == 0 && rep.records > 0;
    Ok(rep)
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

//! 25 000 junk datagrams (PFCP and GTP-U to a UPF, PFCP to the SMF's N4 endpoint) on 127.0.0.1:
//! no crash, every one counted, and the log lines about them bounded to a few per second.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emu_5gc::smf::n4::N4;
use emu_5gc::upf::port::ChannelPort;
use emu_5gc::upf::{Upf, UpfConfig};
use sbi::ratelog::LogLimiter;
use tokio::net::UdpSocket;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const JUNK: u64 = 25_000;

/// Log lines, captured.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Datagram `i` of a deterministic junk stream: 0..120 octets. Every fourth starts like a PFCP
/// or GTP-U header (version bits set) so the parsers get past their first check.
fn junk(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let len = (x >> 33) % 120;
    let mut d: Vec<u8> = (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect();
    if i.is_multiple_of(4) {
        if let Some(first) = d.first_mut() {
            *first = if i.is_multiple_of(8) { 0x21 } else { 0x30 };
        }
    }
    d
}

#[tokio::test(flavor = "current_thread")]
async fn junk_is_counted_and_logged_at_a_bounded_rate() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = UpfConfig {
        name: "upf-junk".into(),
        pfcp_addr: SocketAddrV4::new(LOCALHOST, 0),
        n3_addr: LOCALHOST,
        n9_addr: LOCALHOST,
        gtpu_bind: SocketAddrV4::new(LOCALHOST, 0),
        tun: "unused".into(),
        tun_addr: Ipv4Addr::new(10, 255, 0, 1),
    };
    let (port, _n6) = ChannelPort::pair();
    let upf = Upf::bind(config, port, 2152).await.expect("upf binds");
    let (upf_pfcp, upf_gtpu, handle) = (
        upf.pfcp_addr().expect("addr"),
        upf.gtpu_addr().expect("addr"),
        upf.handle(),
    );
    let (stop, shutdown) = sbi::nf::Shutdown::new();
    let upf_task = tokio::spawn(upf.serve(shutdown));
    let n4 = N4::new(
        UdpSocket::bind((LOCALHOST, 0)).await.expect("bind"),
        LOCALHOST,
    );
    let smf_pfcp = n4.local_addr().expect("addr");
    let n4_task = tokio::spawn(n4.clone().receive());

    let sender = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    let started = Instant::now();
    let targets: [SocketAddr; 3] = [upf_pfcp, upf_gtpu, smf_pfcp];
    for i in 0..JUNK {
        let to = targets[(i % 3) as usize];
        sender.send_to(&junk(i), to).await.expect("send");
        if i.is_multiple_of(64) {
            // Let the receivers keep up (loopback drops what overflows a socket buffer).
            tokio::task::yield_now().await;
        }
    }
    // Everything that arrived is counted as a message; wait until nothing more comes.
    let received = || {
        let c = handle.status().counters;
        c.pfcp_messages + c.gtpu_messages + n4.counters.received.load(Ordering::Relaxed)
    };
    let mut last = (received(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = received();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let took = started.elapsed();
    let _ = stop.send(true);
    let status = upf_task.await.expect("upf task");
    n4_task.abort();

    let c = status.counters;
    let n4_malformed = n4.counters.malformed.load(Ordering::Relaxed);
    println!(
        "{JUNK} datagrams in {took:?}: upf pfcp {} (malformed {}, unexpected {}, unknown seid {}), \
         upf gtp-u {} (malformed {}), smf n4 {} (malformed {n4_malformed})",
        c.pfcp_messages,
        c.pfcp_malformed,
        c.pfcp_unexpected,
        c.pfcp_unknown_seid,
        c.gtpu_messages,
        c.gtpu_malformed,
        n4.counters.received.load(Ordering::Relaxed),
    );
    assert!(
        received() > JUNK / 2,
        "most junk must arrive to mean anything: {}",
        received()
    );
    assert!(
        c.pfcp_malformed > 0 && c.gtpu_malformed > 0 && n4_malformed > 0,
        "{c:?}"
    );
    let text = lines.text();
    let warn_lines = text.lines().filter(|l| l.contains("WARN")).count();
    // Three limiters (UPF PFCP, UPF GTP-U, SMF N4), each at most BURST lines a second.
    let seconds = took.as_secs() + 1;
    let bound = 3 * LogLimiter::BURST as u64 * seconds;
    println!(
        "{warn_lines} warn lines ({} bytes of log) in {took:?}; bound {bound}",
        text.len()
    );
    assert!(
        warn_lines as u64 <= bound,
        "{warn_lines} warn lines for {JUNK} junk datagrams in {took:?} (bound {bound}):\n{}",
        text.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        text.contains("suppressed="),
        "the lines say how many were left out"
    );
}

//! The IP side of a user-plane function: where decapsulated packets go and where packets to
//! encapsulate come from. The real one is a TUN device ([`TunPort`]); the fake one is a pair of
//! channels ([`ChannelPort`]) so the data path runs on 127.0.0.1 without root. The UPF (N6) and
//! the IAP (its `iap0`) both use it.

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use tokio::sync::{mpsc, Mutex};

/// A source and sink of whole IP packets.
pub trait PacketPort: Send + Sync + 'static {
    /// Writes one IP packet.
    fn send(&self, packet: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads one IP packet into `buf`, returning its length. Cancel-safe.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
}

/// A TUN device (no packet information header).
pub struct TunPort {
    device: tun_rs::AsyncDevice,
    name: String,
}

impl TunPort {
    /// Creates (or opens) TUN device `name` with `addr/32`, MTU 1500, and brings it up.
    pub fn create(name: &str, addr: Ipv4Addr) -> io::Result<Self> {
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .ipv4(addr, 32, None)
            .mtu(1500)
            .build_async()?;
        Ok(Self {
            device,
            name: name.to_owned(),
        })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for TunPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunPort").field("name", &self.name).finish()
    }
}

impl PacketPort for TunPort {
    async fn send(&self, packet: &[u8]) -> io::Result<()> {
        self.device.send(packet).await.map(drop)
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf).await
    }
}

/// The fake port: packets sent into it come out of its [`ChannelPortPeer`], and packets the peer
/// injects are read from it.
#[derive(Debug)]
pub struct ChannelPort {
    to_peer: mpsc::UnboundedSender<Vec<u8>>,
    from_peer: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
}

/// The test's end of a [`ChannelPort`]: what the "kernel" would see.
#[derive(Debug)]
pub struct ChannelPortPeer {
    /// Packets the function wrote into the port.
    pub written: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Inject packets for the function to read.
    pub inject: mpsc::UnboundedSender<Vec<u8>>,
}

impl ChannelPort {
    /// A connected port and peer.
    pub fn pair() -> (ChannelPort, ChannelPortPeer) {
        let (to_peer, written) = mpsc::unbounded_channel();
        let (inject, from_peer) = mpsc::unbounded_channel();
        (
            ChannelPort {
                to_peer,
                from_peer: Mutex::new(from_peer),
            },
            ChannelPortPeer { written, inject },
        )
    }
}

impl PacketPort for ChannelPort {
    async fn send(&self, packet: &[u8]) -> io::Result<()> {
        self.to_peer
            .send(packet.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "channel port peer gone"))
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // Only ever one reader; the lock is cancel-safe and so is `recv`.
        let mut rx = self.from_peer.lock().await;
        match rx.recv().await {
            Some(p) => {
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                Ok(n)
            }
            // Peer gone: nothing will ever arrive again.
            None => std::future::pending().await,
        }
    }
}

/// Writes `packet` into `buf` as a downlink G-PDU: TEID `teid`, PDU Session Container DL with
/// `qfi`. Returns the G-PDU's length. What [`send_downlink`] sends; no I/O.
pub fn encapsulate_downlink(
    packet: &[u8],
    teid: u32,
    qfi: wire::gtpu::Qfi,
    buf: &mut [u8],
) -> Result<usize, wire::gtpu::Error> {
    use wire::gtpu::{GtpuRepr, PduSessionInfo, Teid};
    let repr = GtpuRepr::g_pdu(Teid(teid), Some(PduSessionInfo::downlink(qfi)));
    wire::gtpu::encapsulate(&repr, packet, buf)
}

/// Sends `packet` as a downlink G-PDU (PDU Session Container DL with `qfi`) with TEID `teid` to
/// `ipv4` at `port`, through `buf`. The IAP (towards the serving UPF) and the UPF (towards the gNB) both
/// send downlink this way. Returns whether it went out; failures are logged at debug level.
pub async fn send_downlink(
    socket: &tokio::net::UdpSocket,
    packet: &[u8],
    ipv4: Ipv4Addr,
    teid: u32,
    qfi: wire::gtpu::Qfi,
    port: u16,
    buf: &mut [u8],
) -> bool {
    let to = std::net::SocketAddr::from((ipv4, port));
    match encapsulate_downlink(packet, teid, qfi, buf) {
        Ok(n) => match socket.send_to(&buf[..n], to).await {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%error, %to, "downlink g-pdu send failed");
                false
            }
        },
        Err(error) => {
            tracing::debug!(%error, "cannot encapsulate downlink packet");
            false
        }
    }
}

//! The SMF's PFCP (N4) endpoint: one UDP socket, requests with sequence numbers, answers matched
//! by peer and sequence number, a 1 s answer timeout and 3 retransmissions of the same bytes
//! (TS 29.244 clause 6.4), association setup with backoff and heartbeats per UPF.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use wire::pfcp::{AssociationSetup, Cause, Heartbeat, Message, NodeId};

/// How long to wait for an answer before retransmitting.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Retransmissions after the first try.
pub const RETRIES: u32 = 3;
/// Interval of heartbeats to an associated UPF.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A failed PFCP exchange.
#[derive(Debug, thiserror::Error)]
pub enum N4Error {
    #[error("cannot encode pfcp message")]
    Encode(#[source] wire::pfcp::Error),
    #[error("cannot send to {peer}")]
    Send {
        peer: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {peer} after {attempts} attempts")]
    NoAnswer { peer: SocketAddrV4, attempts: u32 },
    #[error("{peer} rejected the request with cause {cause}")]
    Rejected { peer: SocketAddrV4, cause: u8 },
    #[error("{peer} answered with an unexpected message type {msg_type}")]
    UnexpectedAnswer { peer: SocketAddrV4, msg_type: u8 },
    #[error("{peer} accepted the session without an F-SEID")]
    MissingFSeid { peer: SocketAddrV4 },
}

/// Counters of the N4 endpoint.
#[derive(Debug, Default)]
pub struct N4Counters {
    /// Datagrams received (parsed or not).
    pub received: AtomicU64,
    /// Requests sent (first tries).
    pub requests: AtomicU64,
    /// Retransmissions.
    pub retransmissions: AtomicU64,
    /// Datagrams that did not parse.
    pub malformed: AtomicU64,
    /// Answers nobody waited for (late, duplicate or unknown).
    pub unmatched: AtomicU64,
}

type Pending = HashMap<(SocketAddr, u32), oneshot::Sender<Message>>;

/// The SMF's PFCP endpoint.
#[derive(Debug)]
pub struct N4 {
    socket: UdpSocket,
    node: Ipv4Addr,
    recovery_time_stamp: u32,
    next_seq: AtomicU32,
    pending: Mutex<Pending>,
    /// What happened on the socket.
    pub counters: N4Counters,
}

/// NTP seconds (TS 29.244 Recovery Time Stamp) of `time`, wrapping as NTP does.
pub fn ntp_seconds(time: SystemTime) -> u32 {
    let unix = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((unix + NTP_UNIX_OFFSET) & u64::from(u32::MAX)) as u32
}

/// `message` with its sequence number set to `seq`.
fn with_seq(mut message: Message, seq: u32) -> Message {
    match &mut message {
        Message::HeartbeatRequest(m) | Message::HeartbeatResponse(m) => m.seq = seq,
        Message::AssociationSetupRequest(m) | Message::AssociationSetupResponse(m) => m.seq = seq,
        Message::SessionEstablishmentRequest(m) => m.seq = seq,
        Message::SessionEstablishmentResponse(m) => m.seq = seq,
        Message::SessionModificationRequest(m) => m.seq = seq,
        Message::SessionModificationResponse(m) | Message::SessionDeletionResponse(m) => {
            m.seq = seq
        }
        Message::SessionDeletionRequest(m) => m.seq = seq,
    }
    message
}

fn is_answer(m: &Message) -> bool {
    matches!(
        m,
        Message::HeartbeatResponse(_)
            | Message::AssociationSetupResponse(_)
            | Message::SessionEstablishmentResponse(_)
            | Message::SessionModificationResponse(_)
            | Message::SessionDeletionResponse(_)
    )
}

impl N4 {
    /// An endpoint on `socket` whose Node ID and F-SEID address is `node`. Its sequence numbers
    /// start at a random point: a restarted SMF must not reuse the numbers of its previous run,
    /// whose answers a UPF may still keep for retransmissions (it would answer a new request
    /// with an old answer).
    pub fn new(socket: UdpSocket, node: Ipv4Addr) -> Arc<Self> {
        Arc::new(Self {
            socket,
            node,
            recovery_time_stamp: ntp_seconds(SystemTime::now()),
            next_seq: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            pending: Mutex::new(HashMap::new()),
            counters: N4Counters::default(),
        })
    }

    /// The SMF's Node ID address.
    pub fn node(&self) -> Ipv4Addr {
        self.node
    }

    /// The bound PFCP socket's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Receives forever: hands answers to their requests and answers the UPFs' heartbeats.
    pub async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 65_536];
        // A UPF (or anyone) may send junk as often as it likes: its log lines are bounded.
        let mut noise = sbi::ratelog::LogLimiter::new();
        loop {
            let (len, from) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!(%error, "pfcp receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let message = match Message::parse(&buf[..len]) {
                Ok(m) => m,
                Err(error) => {
                    let malformed = self.counters.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(suppressed) = noise.allow() {
                        tracing::warn!(%from, %error, malformed, suppressed, "malformed pfcp message dropped");
                    }
                    continue;
                }
            };
            let seq = message.header().seq;
            if is_answer(&message) {
                match self.pending().remove(&(from, seq)) {
                    Some(waiter) => drop(waiter.send(message)),
                    None => {
                        self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%from, seq, "unmatched pfcp answer dropped");
                    }
                }
                continue;
            }
            let answer = match message {
                Message::HeartbeatRequest(_) => Message::HeartbeatResponse(Heartbeat {
                    seq,
                    recovery_time_stamp: self.recovery_time_stamp,
                }),
                Message::AssociationSetupRequest(_) => {
                    Message::AssociationSetupResponse(AssociationSetup {
                        seq,
                        node_id: NodeId::Ipv4(self.node),
                        cause: Some(Cause::ACCEPTED),
                        recovery_time_stamp: self.recovery_time_stamp,
                    })
                }
                other => {
                    if let Some(suppressed) = noise.allow() {
                        tracing::warn!(%from, msg_type = other.header().msg_type, suppressed, "unexpected pfcp request dropped");
                    }
                    continue;
                }
            };
            if let Ok(bytes) = answer.to_vec() {
                if let Err(error) = self.socket.send_to(&bytes, from).await {
                    tracing::warn!(%from, %error, "cannot answer pfcp request");
                }
            }
        }
    }

    /// Sends `request` (its sequence number is assigned here) to `peer` and waits for the answer,
    /// retransmitting the same bytes up to [`RETRIES`] times, [`ANSWER_TIMEOUT`] apart.
    pub async fn request(&self, peer: SocketAddrV4, request: Message) -> Result<Message, N4Error> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let request = with_seq(request, seq);
        let bytes = request.to_vec().map_err(N4Error::Encode)?;
        let key = (SocketAddr::V4(peer), seq);
        let (tx, mut rx) = oneshot::channel();
        self.pending().insert(key, tx);
        let _cleanup = PendingGuard { n4: self, key };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                self.counters
                    .retransmissions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, seq, attempt, "pfcp retransmission");
            }
            self.socket
                .send_to(&bytes, peer)
                .await
                .map_err(|source| N4Error::Send { peer, source })?;
            // A closed channel cannot happen while the entry is pending; treat it as silence.
            if let Ok(Ok(answer)) = tokio::time::timeout(ANSWER_TIMEOUT, &mut rx).await {
                return Ok(answer);
            }
        }
        Err(N4Error::NoAnswer {
            peer,
            attempts: RETRIES + 1,
        })
    }

    /// One Association Setup exchange with `peer`.
    pub async fn associate(&self, peer: SocketAddrV4) -> Result<(), N4Error> {
        let request = Message::AssociationSetupRequest(AssociationSetup {
            seq: 0,
            node_id: NodeId::Ipv4(self.node),
            cause: None,
            recovery_time_stamp: self.recovery_time_stamp,
        });
        match self.request(peer, request).await? {
            Message::AssociationSetupResponse(AssociationSetup {
                cause: Some(Cause::ACCEPTED),
                ..
            }) => Ok(()),
            Message::AssociationSetupResponse(r) => Err(N4Error::Rejected {
                peer,
                cause: r.cause.map_or(0, |c| c.0),
            }),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// One Heartbeat exchange with `peer`; returns the peer's Recovery Time Stamp.
    pub async fn heartbeat(&self, peer: SocketAddrV4) -> Result<u32, N4Error> {
        let request = Message::HeartbeatRequest(Heartbeat {
            seq: 0,
            recovery_time_stamp: self.recovery_time_stamp,
        });
        match self.request(peer, request).await? {
            Message::HeartbeatResponse(h) => Ok(h.recovery_time_stamp),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// Establishes a session; returns the UPF's SEID.
    pub async fn establish(&self, peer: SocketAddrV4, request: Message) -> Result<u64, N4Error> {
        match self.request(peer, request).await? {
            Message::SessionEstablishmentResponse(r) if r.cause == Cause::ACCEPTED => r
                .up_f_seid
                .map(|f| f.seid)
                .ok_or(N4Error::MissingFSeid { peer }),
            Message::SessionEstablishmentResponse(r) => Err(N4Error::Rejected {
                peer,
                cause: r.cause.0,
            }),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// Modifies a session.
    pub async fn modify(&self, peer: SocketAddrV4, request: Message) -> Result<(), N4Error> {
        match self.request(peer, request).await? {
            Message::SessionModificationResponse(r) => accepted(peer, r.cause),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// Deletes a session.
    pub async fn delete(&self, peer: SocketAddrV4, request: Message) -> Result<(), N4Error> {
        match self.request(peer, request).await? {
            Message::SessionDeletionResponse(r) => accepted(peer, r.cause),
            other => Err(unexpected(peer, &other)),
        }
    }
}

fn accepted(peer: SocketAddrV4, cause: Cause) -> Result<(), N4Error> {
    if cause == Cause::ACCEPTED {
        Ok(())
    } else {
        Err(N4Error::Rejected {
            peer,
            cause: cause.0,
        })
    }
}

fn unexpected(peer: SocketAddrV4, m: &Message) -> N4Error {
    N4Error::UnexpectedAnswer {
        peer,
        msg_type: m.header().msg_type,
    }
}

/// Removes a request's entry when its waiter goes (answered, timed out or cancelled).
struct PendingGuard<'a> {
    n4: &'a N4,
    key: (SocketAddr, u32),
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.n4.pending().remove(&self.key);
    }
}

/// Keeps the association with one UPF: Association Setup with backoff (0.5 s doubling to 5 s)
/// until accepted, then a Heartbeat every [`HEARTBEAT_INTERVAL`]; a missed heartbeat or a new
/// Recovery Time Stamp (the UPF restarted) starts over. `associated` is told every time the
/// association is (re)established.
pub async fn keep_associated(
    n4: Arc<N4>,
    name: String,
    peer: SocketAddrV4,
    associated: tokio::sync::mpsc::UnboundedSender<String>,
) {
    loop {
        let mut backoff = Duration::from_millis(500);
        loop {
            match n4.associate(peer).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(upf = %name, %peer, %error, retry_in_ms = backoff.as_millis() as u64,
                        "pfcp association setup failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(upf = %name, %peer, "pfcp association set up");
        let _ = associated.send(name.clone());
        let mut recovery = None;
        loop {
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            match n4.heartbeat(peer).await {
                Ok(stamp) if recovery.is_none_or(|r| r == stamp) => recovery = Some(stamp),
                Ok(stamp) => {
                    tracing::warn!(upf = %name, %peer, stamp, "upf restarted: associating again");
                    break;
                }
                Err(error) => {
                    tracing::warn!(upf = %name, %peer, %error, "pfcp heartbeat failed: associating again");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::pfcp::SessionDeletionRequest;

    async fn pair() -> (Arc<N4>, UdpSocket, SocketAddrV4) {
        let smf = UdpSocket::bind("127.0.0.1:0").await.expect("bind smf");
        let upf = UdpSocket::bind("127.0.0.1:0").await.expect("bind upf");
        let n4 = N4::new(smf, Ipv4Addr::LOCALHOST);
        tokio::spawn(n4.clone().receive());
        let peer = match upf.local_addr().expect("addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => panic!("v6"),
        };
        (n4, upf, peer)
    }

    async fn recv(upf: &UdpSocket) -> (Message, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (len, from) = upf.recv_from(&mut buf).await.expect("recv");
        (Message::parse(&buf[..len]).expect("parse"), from)
    }

    #[test]
    fn ntp_seconds_of_the_unix_epoch() {
        assert_eq!(ntp_seconds(SystemTime::UNIX_EPOCH), 2_208_988_800);
    }

    #[tokio::test(start_paused = true)]
    async fn retransmits_the_same_request_then_gives_up() {
        let (n4, upf, peer) = pair().await;
        let task = tokio::spawn({
            let n4 = n4.clone();
            async move {
                n4.delete(
                    peer,
                    Message::SessionDeletionRequest(SessionDeletionRequest { seid: 7, seq: 0 }),
                )
                .await
            }
        });
        let mut seqs = Vec::new();
        for _ in 0..=RETRIES {
            let (m, _) = recv(&upf).await;
            seqs.push(m.header().seq);
        }
        let result = task.await.expect("join");
        assert!(
            matches!(result, Err(N4Error::NoAnswer { attempts: 4, .. })),
            "{result:?}"
        );
        assert!(
            seqs.windows(2).all(|w| w[0] == w[1]),
            "same sequence number: {seqs:?}"
        );
        assert_eq!(n4.counters.retransmissions.load(Ordering::Relaxed), 3);
        assert!(n4.pending().is_empty());
    }

    #[tokio::test]
    async fn answers_are_matched_by_sequence_number() {
        let (n4, upf, peer) = pair().await;
        let task = tokio::spawn({
            let n4 = n4.clone();
            async move { n4.associate(peer).await }
        });
        let (m, from) = recv(&upf).await;
        let Message::AssociationSetupRequest(r) = m else {
            panic!("not an association request: {m:?}");
        };
        assert_eq!(r.node_id, NodeId::Ipv4(Ipv4Addr::LOCALHOST));
        let answer = |seq, cause| {
            Message::AssociationSetupResponse(AssociationSetup {
                seq,
                node_id: NodeId::Ipv4(Ipv4Addr::LOCALHOST),
                cause: Some(cause),
                recovery_time_stamp: 1,
            })
            .to_vec()
            .expect("encode")
        };
        // A stray answer and garbage first: ignored and counted.
        upf.send_to(&answer(r.seq + 100, Cause::REJECTED), from)
            .await
            .expect("send");
        upf.send_to(&[0x20, 1], from).await.expect("send");
        upf.send_to(&answer(r.seq, Cause::ACCEPTED), from)
            .await
            .expect("send");
        task.await.expect("join").expect("associated");
        assert_eq!(n4.counters.unmatched.load(Ordering::Relaxed), 1);
        assert_eq!(n4.counters.malformed.load(Ordering::Relaxed), 1);

        // The UPF's heartbeat is answered.
        let hb = Message::HeartbeatRequest(Heartbeat {
            seq: 9,
            recovery_time_stamp: 1,
        });
        upf.send_to(&hb.to_vec().expect("encode"), from)
            .await
            .expect("send");
        let (m, _) = recv(&upf).await;
        assert!(
            matches!(m, Message::HeartbeatResponse(Heartbeat { seq: 9, .. })),
            "{m:?}"
        );
    }
}

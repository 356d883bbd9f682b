//! The migration connection between two service modules: one TCP connection on the backhaul,
//! opened from the source module's edge namespace to the target module's `notifAddress`. It carries
//! the control messages of one migration and the image files, in frames:
//!
//! ```text
//! 'M' len:u32 json                    a control message (Message)
//! 'F' name_len:u16 name len:u64 bytes  one image file
//! 'E' files:u32 bytes:u64              end of the image files (count and total, checked)
//! ```
//!
//! All integers big endian. File names are single path components (no `/`, not `.`/`..`), so the
//! receiver only ever writes inside its own directory. Every byte written and read is counted.

use model::smo::Service;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};

use netkit::Netns;

/// Largest control message accepted.
pub const MAX_MESSAGE: u32 = 1 << 20;
/// Largest total of image files accepted in one migration.
pub const MAX_IMAGE_BYTES: u64 = 16 << 30;

/// A control message of the migration protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Message {
    /// Source → target: take this service: make its container, silent, and get ready for it.
    Prepare {
        relocation_id: String,
        service: Service,
        /// What the target's runtime needs besides the service, as the source's runtime wrote it
        /// (LXC: the container's spec; LXD: the instance and where to pull it from; CRIU: lazy
        /// pages' page server). Opaque here: the target's runtime decodes and checks it.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        offer: serde_json::Value,
    },
    /// Target → source: ready; how long preparing took.
    Prepared { took_us: u64 },
    /// Target → source: cannot take the service (nothing was stopped).
    Refused { cause: String },
    /// Source → target: restore the service (images: all sent; pull: pull it now).
    Restore,
    /// Target → source: the service is restored (images: every task stopped, carrier down; pull:
    /// it runs).
    Restored { restore_us: u64 },
    /// Target → source: the restore failed (the target holds nothing of the service).
    Failed { cause: String },
    /// Source → target: go live (the point of no return).
    Commit,
    /// Target → source: the service runs at the target.
    Done { resume_us: u64 },
}

impl Message {
    /// The message's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Prepare { .. } => "prepare",
            Self::Prepared { .. } => "prepared",
            Self::Refused { .. } => "refused",
            Self::Restore => "restore",
            Self::Restored { .. } => "restored",
            Self::Failed { .. } => "failed",
            Self::Commit => "commit",
            Self::Done { .. } => "done",
        }
    }
}

/// A failure on the migration connection.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("migration connection: {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("migration protocol: {0}")]
    Protocol(String),
    #[error("migration connection: no {what} within {limit_ms} ms")]
    Timeout { what: String, limit_ms: u64 },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransferError {
    let what = what.into();
    move |source| TransferError::Io { what, source }
}

/// What one image transfer moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageStats {
    pub files: u32,
    /// Bytes of file contents.
    pub image_bytes: u64,
}

/// Whether `name` is a safe single file name.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

/// One end of a migration connection (any byte stream; a TCP socket in real use).
#[derive(Debug)]
pub struct Conn<S = TcpStream> {
    stream: BufStream<S>,
    sent: u64,
    received: u64,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream: BufStream::with_capacity(256 << 10, 256 << 10, stream),
            sent: 0,
            received: 0,
        }
    }

    /// Bytes written so far (frames included).
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Bytes read so far (frames included).
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Sends one control message and flushes.
    pub async fn send(&mut self, msg: &Message) -> Result<(), TransferError> {
        let json = serde_json::to_vec(msg)
            .map_err(|e| TransferError::Protocol(format!("cannot encode {}: {e}", msg.kind())))?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|l| *l <= MAX_MESSAGE)
            .ok_or_else(|| TransferError::Protocol(format!("{} too large", msg.kind())))?;
        let what = format!("sending {}", msg.kind());
        let s = &mut self.stream;
        s.write_u8(b'M').await.map_err(io(&what))?;
        s.write_u32(len).await.map_err(io(&what))?;
        s.write_all(&json).await.map_err(io(&what))?;
        s.flush().await.map_err(io(&what))?;
        self.sent += 5 + u64::from(len);
        Ok(())
    }

    /// Receives one control message.
    pub async fn recv(&mut self) -> Result<Message, TransferError> {
        let tag = self
            .stream
            .read_u8()
            .await
            .map_err(io("reading a message"))?;
        if tag != b'M' {
            return Err(TransferError::Protocol(format!(
                "expected a message, got frame {:?}",
                char::from(tag)
            )));
        }
        self.read_message_body().await
    }

    async fn read_message_body(&mut self) -> Result<Message, TransferError> {
        let len = self
            .stream
            .read_u32()
            .await
            .map_err(io("reading a message"))?;
        if len > MAX_MESSAGE {
            return Err(TransferError::Protocol(format!(
                "message of {len} bytes is too large"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut buf)
            .await
            .map_err(io("reading a message"))?;
        self.received += 5 + u64::from(len);
        serde_json::from_slice(&buf)
            .map_err(|e| TransferError::Protocol(format!("bad message: {e}")))
    }

    /// Receives one control message within `limit`.
    pub async fn recv_within(
        &mut self,
        limit: Duration,
        what: &str,
    ) -> Result<Message, TransferError> {
        tokio::time::timeout(limit, self.recv())
            .await
            .map_err(|_| TransferError::Timeout {
                what: what.to_owned(),
                limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            })?
    }

    /// Sends every regular file directly in `dir`, then the end frame.
    pub async fn send_images(&mut self, dir: &Path) -> Result<ImageStats, TransferError> {
        // One hop to the blocking pool lists the images and reads the small ones (tmpfs: the
        // whole set of a small service is read in well under a millisecond); a hop per file
        // operation would cost more than the copy inside the service's freeze.
        let listed = {
            let owned = dir.to_owned();
            tokio::task::spawn_blocking(move || read_small_images(&owned))
                .await
                .map_err(|e| io("reading images")(std::io::Error::other(e)))?
                .map_err(io(format!("reading images in {}", dir.display())))?
        };
        let mut stats = ImageStats::default();
        for (name, len, data) in listed {
            let what = format!("sending image {name}");
            let s = &mut self.stream;
            s.write_u8(b'F').await.map_err(io(&what))?;
            s.write_u16(u16::try_from(name.len()).unwrap_or(u16::MAX))
                .await
                .map_err(io(&what))?;
            s.write_all(name.as_bytes()).await.map_err(io(&what))?;
            s.write_u64(len).await.map_err(io(&what))?;
            let copied = match data {
                Some(bytes) => {
                    s.write_all(&bytes).await.map_err(io(&what))?;
                    len
                }
                None => {
                    let mut file = tokio::fs::File::open(dir.join(&name))
                        .await
                        .map_err(io(&what))?;
                    copy_exact(&mut file, s, len).await.map_err(io(&what))?
                }
            };
            if copied != len {
                return Err(TransferError::Protocol(format!(
                    "image {name} shrank while sending ({copied} of {len} bytes)"
                )));
            }
            self.sent += 1 + 2 + name.len() as u64 + 8 + len;
            stats.files += 1;
            stats.image_bytes += len;
        }
        let s = &mut self.stream;
        s.write_u8(b'E').await.map_err(io("ending images"))?;
        s.write_u32(stats.files)
            .await
            .map_err(io("ending images"))?;
        s.write_u64(stats.image_bytes)
            .await
            .map_err(io("ending images"))?;
        s.flush().await.map_err(io("ending images"))?;
        self.sent += 13;
        Ok(stats)
    }

    /// Receives image files into `dir` (which must exist) until the end frame, checking names,
    /// lengths, the count and the total against `max_bytes`.
    pub async fn recv_images(
        &mut self,
        dir: &Path,
        max_bytes: u64,
    ) -> Result<ImageStats, TransferError> {
        let mut stats = ImageStats::default();
        let mut small: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        loop {
            let tag = self.stream.read_u8().await.map_err(io("reading images"))?;
            match tag {
                b'F' => {
                    let name_len = self.stream.read_u16().await.map_err(io("reading images"))?;
                    let mut name = vec![0u8; usize::from(name_len)];
                    self.stream
                        .read_exact(&mut name)
                        .await
                        .map_err(io("reading images"))?;
                    let name = String::from_utf8(name)
                        .ok()
                        .filter(|n| valid_file_name(n))
                        .ok_or_else(|| TransferError::Protocol("bad image file name".into()))?;
                    let len = self.stream.read_u64().await.map_err(io("reading images"))?;
                    if stats.image_bytes.saturating_add(len) > max_bytes {
                        return Err(TransferError::Protocol(format!(
                            "images exceed {max_bytes} bytes"
                        )));
                    }
                    let what = format!("receiving image {name}");
                    let path: PathBuf = dir.join(&name);
                    if len <= SMALL_IMAGE {
                        // Kept in memory and written with the others at the end (one hop).
                        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
                        self.stream
                            .read_exact(&mut bytes)
                            .await
                            .map_err(io(&what))?;
                        small.push((path, bytes));
                    } else {
                        let mut file = tokio::fs::File::create(&path).await.map_err(io(&what))?;
                        let copied = copy_exact(&mut self.stream, &mut file, len)
                            .await
                            .map_err(io(&what))?;
                        if copied != len {
                            return Err(TransferError::Protocol(format!(
                                "image {name} cut short ({copied} of {len} bytes)"
                            )));
                        }
                        file.flush().await.map_err(io(&what))?;
                    }
                    self.received += 1 + 2 + u64::from(name_len) + 8 + len;
                    stats.files += 1;
                    stats.image_bytes += len;
                }
                b'E' => {
                    let files = self.stream.read_u32().await.map_err(io("reading images"))?;
                    let bytes = self.stream.read_u64().await.map_err(io("reading images"))?;
                    self.received += 13;
                    if files != stats.files || bytes != stats.image_bytes {
                        return Err(TransferError::Protocol(format!(
                            "sender announced {files} files / {bytes} bytes, got {} / {}",
                            stats.files, stats.image_bytes
                        )));
                    }
                    tokio::task::spawn_blocking(move || {
                        small
                            .iter()
                            .try_for_each(|(path, bytes)| std::fs::write(path, bytes))
                    })
                    .await
                    .map_err(|e| io("writing images")(std::io::Error::other(e)))?
                    .map_err(io(format!("writing images in {}", dir.display())))?;
                    return Ok(stats);
                }
                b'M' => {
                    let msg = self.read_message_body().await?;
                    return Err(TransferError::Protocol(format!(
                        "expected images, got {}",
                        msg.kind()
                    )));
                }
                other => {
                    return Err(TransferError::Protocol(format!(
                        "unknown frame {:?}",
                        char::from(other)
                    )))
                }
            }
        }
    }
}

/// Copy chunk: large, because every `tokio::fs` read or write is a hop to the blocking pool.
const CHUNK: usize = 1 << 20;

/// Images up to this size move through memory in one blocking hop per side; larger ones
/// (a service's big memory pages) are streamed in [`CHUNK`]s.
const SMALL_IMAGE: u64 = 8 << 20;

/// An image file to send: name, size, and its contents if it is small.
type ListedImage = (String, u64, Option<Vec<u8>>);

/// The image files in `dir` (sorted by name, unsafe names skipped) with their sizes, and the
/// contents of those up to [`SMALL_IMAGE`].
fn read_small_images(dir: &Path) -> std::io::Result<Vec<ListedImage>> {
    let mut listed = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let Some(name) = e
            .file_name()
            .to_str()
            .filter(|n| valid_file_name(n))
            .map(str::to_owned)
        else {
            continue;
        };
        let data = if meta.len() <= SMALL_IMAGE {
            Some(std::fs::read(e.path())?)
        } else {
            None
        };
        let len = data.as_ref().map_or(meta.len(), |d| d.len() as u64);
        listed.push((name, len, data));
    }
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(listed)
}

/// Copies up to `len` bytes from `from` to `to` in large chunks; returns how many were copied
/// (fewer only when `from` ended early).
async fn copy_exact<R, W>(from: &mut R, to: &mut W, len: u64) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK)).max(1)];
    let mut copied = 0u64;
    while copied < len {
        let want = usize::try_from(len - copied)
            .unwrap_or(CHUNK)
            .min(buf.len());
        // Fill the whole chunk before writing it: a socket hands out a few kB per read, and
        // each write to a `tokio::fs` file is a hop to the blocking pool.
        let mut filled = 0;
        while filled < want {
            let n = from.read(&mut buf[filled..want]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        to.write_all(&buf[..filled]).await?;
        copied += filled as u64;
        if filled < want {
            break;
        }
    }
    Ok(copied)
}

/// Binds a TCP listener inside namespace `ns` (the socket stays in that namespace).
pub async fn listen_in(ns: &Netns, addr: SocketAddr) -> Result<TcpListener, TransferError> {
    let ns = ns.clone();
    let what = format!("listening on {addr} in {ns}");
    let std_listener = tokio::task::spawn_blocking(move || {
        ns.run_in(move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
    })
    .await
    .map_err(|e| io(&what)(std::io::Error::other(e)))?
    .and_then(|r| r)
    .map_err(io(&what))?;
    TcpListener::from_std(std_listener).map_err(io(&what))
}

/// Connects to `addr` from inside namespace `ns`.
pub async fn connect_in(
    ns: &Netns,
    addr: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, TransferError> {
    let ns = ns.clone();
    let what = format!("connecting to {addr} from {ns}");
    let stream = tokio::task::spawn_blocking(move || {
        ns.run_in(move || {
            let s = std::net::TcpStream::connect_timeout(&addr, limit)?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok::<_, std::io::Error>(s)
        })
    })
    .await
    .map_err(|e| io(&what)(std::io::Error::other(e)))?
    .and_then(|r| r)
    .map_err(io(&what))?;
    TcpStream::from_std(stream).map_err(io(&what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::smo::RelocationType;

    fn service() -> Service {
        crate::fake::service("p50", RelocationType::Criu)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("svcmod-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn messages_are_tagged_camel_case_json() {
        let v = serde_json::to_value(Message::Prepared { took_us: 5 }).expect("json");
        assert_eq!(v, serde_json::json!({"type": "prepared", "tookUs": 5}));
        let v = serde_json::to_value(Message::Prepare {
            relocation_id: "r".into(),
            service: service(),
            offer: serde_json::Value::Null,
        })
        .expect("json");
        assert!(v.get("offer").is_none(), "no offer, no field");
        let offer = serde_json::json!({"command": ["x"], "binds": []});
        let v = serde_json::to_value(Message::Prepare {
            relocation_id: "r".into(),
            service: service(),
            offer: offer.clone(),
        })
        .expect("json");
        assert_eq!(
            v["offer"], offer,
            "the offer travels as the runtime wrote it"
        );
        let back: Message = serde_json::from_value(v).expect("parse");
        assert!(matches!(back, Message::Prepare { offer: o, .. } if o == offer));
        let v = serde_json::to_value(Message::Restore).expect("json");
        assert_eq!(v, serde_json::json!({"type": "restore"}));
        assert_eq!(
            serde_json::to_value(Message::Commit).expect("json"),
            serde_json::json!({"type": "commit"})
        );
    }

    #[test]
    fn file_names_stay_in_their_directory() {
        assert!(valid_file_name("pages-1.img"));
        for bad in ["", ".", "..", "a/b", "/etc", "x\0y"] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn messages_and_images_round_trip_with_byte_counts() {
        let src = temp_dir("tx-src");
        let dst = temp_dir("tx-dst");
        std::fs::write(src.join("core-1.img"), vec![7u8; 100_000]).expect("write");
        std::fs::write(src.join("inventory.img"), b"inv").expect("write");
        // Larger than SMALL_IMAGE: streamed in chunks instead of through memory.
        let big: Vec<u8> = (0..SMALL_IMAGE + 12_345).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("pages-1.img"), &big).expect("write");
        std::fs::create_dir_all(src.join("subdir")).expect("subdir is skipped");
        let (a, b) = tokio::io::duplex(4096);
        let (mut tx, mut rx) = (Conn::new(a), Conn::new(b));
        let sender = {
            let src = src.clone();
            tokio::spawn(async move {
                tx.send(&Message::Prepare {
                    relocation_id: "r1".into(),
                    service: service(),
                    offer: serde_json::Value::Null,
                })
                .await?;
                let stats = tx.send_images(&src).await?;
                tx.send(&Message::Commit).await?;
                Ok::<_, TransferError>((stats, tx.bytes_sent()))
            })
        };
        let first = rx.recv().await.expect("prepare");
        assert!(
            matches!(first, Message::Prepare { ref relocation_id, .. } if relocation_id == "r1")
        );
        let got = rx.recv_images(&dst, MAX_IMAGE_BYTES).await.expect("images");
        assert_eq!(rx.recv().await.expect("commit"), Message::Commit);
        let (sent, sent_bytes) = sender.await.expect("join").expect("send");
        assert_eq!(got, sent);
        assert_eq!(got.files, 3);
        assert_eq!(got.image_bytes, 100_003 + big.len() as u64);
        assert_eq!(rx.bytes_received(), sent_bytes);
        assert!(sent_bytes > got.image_bytes);
        assert_eq!(
            std::fs::read(dst.join("core-1.img")).expect("read"),
            vec![7u8; 100_000]
        );
        assert_eq!(
            std::fs::read(dst.join("inventory.img")).expect("read"),
            b"inv"
        );
        assert!(std::fs::read(dst.join("pages-1.img")).expect("read") == big);
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }

    #[tokio::test]
    async fn oversized_or_hostile_images_are_refused() {
        let dst = temp_dir("tx-bad");
        // A name that climbs out of the directory.
        let (mut a, b) = tokio::io::duplex(4096);
        let mut rx = Conn::new(b);
        let mut frame = vec![b'F'];
        frame.extend_from_slice(&5u16.to_be_bytes());
        frame.extend_from_slice(b"../x1");
        frame.extend_from_slice(&1u64.to_be_bytes());
        frame.push(0);
        a.write_all(&frame).await.expect("write");
        let err = rx.recv_images(&dst, 10).await.expect_err("bad name");
        assert!(err.to_string().contains("bad image file name"), "{err}");
        // More bytes than allowed.
        let (mut a, b) = tokio::io::duplex(4096);
        let mut rx = Conn::new(b);
        let mut frame = vec![b'F'];
        frame.extend_from_slice(&1u16.to_be_bytes());
        frame.extend_from_slice(b"x");
        frame.extend_from_slice(&11u64.to_be_bytes());
        a.write_all(&frame).await.expect("write");
        let err = rx.recv_images(&dst, 10).await.expect_err("too large");
        assert!(err.to_string().contains("exceed"), "{err}");
        // A control message where images were expected.
        let (a, b) = tokio::io::duplex(4096);
        let (mut tx, mut rx) = (Conn::new(a), Conn::new(b));
        tx.send(&Message::Failed { cause: "no".into() })
            .await
            .expect("send");
        let err = rx.recv_images(&dst, 10).await.expect_err("message");
        assert!(err.to_string().contains("got failed"), "{err}");
        assert!(
            !dst.join("x").exists()
                && !dst.parent().map(|p| p.join("x1").exists()).unwrap_or(false)
        );
        let _ = std::fs::remove_dir_all(&dst);
    }
}

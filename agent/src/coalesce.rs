//! Fewer, larger reads of a bulk stream over TCP.
//!
//! A server relays a snapshot to a replica in the pieces it reads them from its fork's
//! pipe, about 16 KiB each, and a reader that keeps up wakes for every one: on a 1 GiB
//! backup the agent made about 52,000 reads and as many `epoll_wait`s (measured with
//! `perf record -e 'syscalls:sys_exit_recvfrom'`), each a wake-up and two system calls
//! for 20 KiB. [`Coalescer`] raises the socket's `SO_RCVLOWAT` to [`LOW_WATER`], so the
//! kernel reports the socket readable only once that much has arrived (or the peer
//! closed), and each read takes a quarter MiB.
//!
//! A stream's last bytes may be fewer than that, and a peer may pause: whenever a read
//! has waited [`TAIL_WAIT`] with the mark raised, it is lowered to one byte (the kernel
//! then reports whatever is there at once) and raised again after the next read. So
//! no byte waits more than [`TAIL_WAIT`] beyond its arrival, whether or not the peer
//! closes the connection, and the stall limits of the reads above are unaffected.
//!
//! The mark is advice: a socket that refuses it is read as before.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How much must have arrived before the socket counts as readable.
pub const LOW_WATER: usize = 256 * 1024;
/// The longest a read waits with the mark raised before it is lowered.
pub const TAIL_WAIT: Duration = Duration::from_millis(5);

/// The low-water mark of one TCP socket; see the module docs.
pub struct Coalescer {
    /// A duplicate of the connection's socket descriptor (same socket, own lifetime).
    socket: OwnedFd,
    raised: bool,
    armed: bool,
    tail: Pin<Box<Sleep>>,
}

impl Coalescer {
    /// Raises the mark on `socket`; `None` when the socket refuses it.
    pub fn new(socket: OwnedFd) -> Option<Self> {
        if !set_low_water(&socket, LOW_WATER) {
            return None;
        }
        Some(Coalescer {
            socket,
            raised: true,
            armed: false,
            tail: Box::pin(tokio::time::sleep(TAIL_WAIT)),
        })
    }

    /// Called after every poll of the socket's read, with whether it was `Pending`.
    pub fn after_read(&mut self, cx: &mut Context<'_>, pending: bool) {
        if !pending {
            self.armed = false;
            if !self.raised {
                self.raised = set_low_water(&self.socket, LOW_WATER);
            }
            return;
        }
        if !self.raised {
            return;
        }
        if !self.armed {
            self.tail.as_mut().reset(Instant::now() + TAIL_WAIT);
            self.armed = true;
        }
        if self.tail.as_mut().poll(cx).is_ready() {
            // Lowering the mark makes the kernel signal what has arrived; the wake-up
            // below polls the read again in any case.
            set_low_water(&self.socket, 1);
            self.raised = false;
            self.armed = false;
            cx.waker().wake_by_ref();
        }
    }

    /// Whether the mark is raised now (for tests).
    pub fn raised(&self) -> bool {
        self.raised
    }
}

/// `setsockopt(SO_RCVLOWAT)`; whether the socket took it.
fn set_low_water(socket: &OwnedFd, bytes: usize) -> bool {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `socket` is an open descriptor for the duration of the call, and the
    // option value is a c_int that lives across it, its size passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

    /// A connected pair on loopback: (the reading side, the writing side).
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reader, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (reader.unwrap(), accepted.unwrap().0)
    }

    /// Reads through a coalescer until `want` bytes have come.
    async fn read_coalesced(
        stream: &mut tokio::net::TcpStream,
        c: &mut Coalescer,
        want: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        while got.len() < want {
            let n = std::future::poll_fn(|cx| {
                let mut rb = tokio::io::ReadBuf::new(&mut buf);
                let r = Pin::new(&mut *stream).poll_read(cx, &mut rb);
                c.after_read(cx, r.is_pending());
                r.map(|res| res.map(|()| rb.filled().len()))
            })
            .await
            .unwrap();
            assert!(n > 0, "the writer closed early");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// The socket's `SO_RCVLOWAT` as the kernel holds it.
    fn low_water_of(stream: &tokio::net::TcpStream) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is open; `value` and `len` outlive the call.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    }

    #[tokio::test]
    async fn the_mark_is_raised_on_the_socket_itself() {
        let (reader, _writer) = pair().await;
        assert_eq!(low_water_of(&reader), 1);
        let _c = Coalescer::new(reader.as_fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(low_water_of(&reader), LOW_WATER as libc::c_int);
    }

    #[tokio::test]
    async fn a_tail_below_the_mark_arrives_while_the_peer_keeps_the_connection_open() {
        let (mut reader, mut writer) = pair().await;
        let mut c = Coalescer::new(reader.as_fd().try_clone_to_owned().unwrap())
            .expect("Linux TCP takes SO_RCVLOWAT");
        writer.write_all(b"tail").await.unwrap();
        // The writer stays open: only the lowered mark can deliver these 4 bytes. A
        // hang here fails the test through its deadline.
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            read_coalesced(&mut reader, &mut c, 4),
        )
        .await
        .expect("the tail below the mark was never delivered");
        assert_eq!(got, b"tail");
        drop(writer);
    }

    #[tokio::test]
    async fn a_bulk_stream_arrives_whole_and_the_mark_is_raised_again_after_a_tail() {
        let (mut reader, mut writer) = pair().await;
        let mut c = Coalescer::new(reader.as_fd().try_clone_to_owned().unwrap()).unwrap();
        let data: Vec<u8> = (0..3 * LOW_WATER + 1234).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let feed = tokio::spawn(async move {
            for piece in sent.chunks(16 * 1024) {
                writer.write_all(piece).await.unwrap();
            }
            writer
        });
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            read_coalesced(&mut reader, &mut c, data.len()),
        )
        .await
        .unwrap();
        assert_eq!(got, data);
        let mut writer = feed.await.unwrap();
        // A tail lowered the mark; the next read raises it again.
        writer.write_all(b"more").await.unwrap();
        let got = read_coalesced(&mut reader, &mut c, 4).await;
        assert_eq!(got, b"more");
        assert!(c.raised(), "the mark stays lowered after a read");
        writer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}

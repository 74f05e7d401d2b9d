//! The agent's own Valkey connection: TCP, TLS or a Unix socket, speaking RESP.
//!
//! Used for the few commands the agent sends itself (`AUTH`, `INFO`, `CONFIG GET`,
//! `PING`) and as the transport of [`crate::replication`]. Every reply is read with a
//! size bound and a deadline, so a wrong peer can neither grow the agent's memory nor
//! hang an operation. Credentials go only into `AUTH` on the wire; they never appear in
//! an error, because errors are built from the server's reply *to* `AUTH`, which never
//! repeats them.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::coalesce::Coalescer;
use crate::config::ValkeySettings;
use crate::resp::{self, Reply, RespError};
use crate::valkey::{ServerInfo, ValkeyError};
use crate::valkey_tls;

/// How long connecting (TCP and TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one command's reply may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `INFO` reply accepted (`INFO everything` is tens of KiB).
pub const MAX_INFO_REPLY: usize = 4 << 20;
/// The largest reply to any other command the agent sends.
pub const MAX_SMALL_REPLY: usize = 64 << 10;
/// How much is read from the socket at once.
const READ_CHUNK: usize = 64 << 10;

/// A byte stream to a server: TCP, TLS over TCP, a Unix socket, or (in tests) memory.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> ByteStream for T {}

/// One connection, with the bytes received but not yet consumed.
pub struct Connection {
    io: Box<dyn ByteStream>,
    buf: Vec<u8>,
    addr: String,
    /// The TCP socket under `io` (a duplicate descriptor), for socket options.
    socket: Option<OwnedFd>,
    /// Set by [`Connection::coalesce_reads`].
    coalesce: Option<Coalescer>,
}

impl Connection {
    /// Wraps an open stream; `addr` is what error messages call the peer.
    pub fn new(io: Box<dyn ByteStream>, addr: impl Into<String>) -> Self {
        Connection {
            io,
            buf: Vec::new(),
            addr: addr.into(),
            socket: None,
            coalesce: None,
        }
    }

    /// Keeps a duplicate of the TCP socket's descriptor under the stream (plain or TLS).
    fn with_socket(mut self, socket: Option<OwnedFd>) -> Self {
        self.socket = socket;
        self
    }

    /// From now on, reads wait for a quarter MiB rather than waking for every piece
    /// (see [`crate::coalesce`]); for a bulk stream such as a snapshot. Over a Unix
    /// socket, or where the socket refuses the option, reads stay as they were.
    pub fn coalesce_reads(&mut self) {
        if self.coalesce.is_none() {
            self.coalesce = self.socket.take().and_then(Coalescer::new);
        }
    }

    /// The peer as error messages name it (`host:port` or a socket path).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// An I/O failure on this connection, as an unreachable-server error.
    pub fn io_error(&self, what: &str, e: &std::io::Error) -> ValkeyError {
        ValkeyError::Unreachable {
            addr: self.addr.clone(),
            detail: format!("{what}: {}", io_detail(e)),
        }
    }

    /// Writes one command.
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), ValkeyError> {
        let bytes = resp::encode(args);
        match tokio::time::timeout(REPLY_TIMEOUT, self.io.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.io_error("sending a command", &e)),
            Err(_) => return Err(self.timed_out("sending a command")),
        }
        match tokio::time::timeout(REPLY_TIMEOUT, self.io.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.io_error("sending a command", &e)),
            Err(_) => Err(self.timed_out("sending a command")),
        }
    }

    /// Sends raw bytes (the inline `SYNC` of the replication handshake).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ValkeyError> {
        match tokio::time::timeout(REPLY_TIMEOUT, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.io_error("sending a command", &e)),
            Err(_) => Err(self.timed_out("sending a command")),
        }
    }

    fn timed_out(&self, what: &str) -> ValkeyError {
        ValkeyError::Unreachable {
            addr: self.addr.clone(),
            detail: format!("{what} timed out"),
        }
    }

    /// Reads one reply of at most `max` bytes, within [`REPLY_TIMEOUT`].
    pub async fn reply(&mut self, max: usize) -> Result<Reply, ValkeyError> {
        match tokio::time::timeout(REPLY_TIMEOUT, self.read_reply(max)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out("waiting for a reply")),
        }
    }

    async fn read_reply(&mut self, max: usize) -> Result<Reply, ValkeyError> {
        loop {
            match resp::parse(&self.buf, max) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(self.protocol_error(&e)),
            }
            let n = self
                .fill()
                .await
                .map_err(|e| self.io_error("reading a reply", &e))?;
            if n == 0 {
                return Err(ValkeyError::Unreachable {
                    addr: self.addr.clone(),
                    detail: "the server closed the connection".into(),
                });
            }
        }
    }

    /// A reply that is not RESP, as an error naming the peer.
    pub fn protocol_error(&self, e: &RespError) -> ValkeyError {
        ValkeyError::Protocol {
            addr: self.addr.clone(),
            detail: e.to_string(),
        }
    }

    /// Sends a command and reads its reply; a server error becomes [`ValkeyError`].
    pub async fn call(&mut self, args: &[&[u8]], max: usize) -> Result<Reply, ValkeyError> {
        self.send(args).await?;
        match self.reply(max).await? {
            Reply::Error(e) => Err(classify_error(&e, &String::from_utf8_lossy(args[0]))),
            other => Ok(other),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let r = self.io.read(&mut self.buf[start..]).await;
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(start + n);
        r
    }

    /// The bytes received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }

    /// Reads into `out` without waiting: first from the buffer, then from the stream
    /// (what [`crate::replication::ReplicationStream`]'s `AsyncRead` is built on).
    pub fn poll_read_into(
        &mut self,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.remaining());
            out.put_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return std::task::Poll::Ready(Ok(()));
        }
        let r = std::pin::Pin::new(&mut *self.io).poll_read(cx, out);
        if let Some(c) = &mut self.coalesce {
            c.after_read(cx, r.is_pending());
        }
        r
    }

    /// Reads into `out`, first from the buffer, then from the stream.
    pub async fn read_into(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(n);
        }
        self.io.read(out).await
    }

    /// Logs in with `AUTH [user] password` (nothing when no password is configured).
    pub async fn auth(
        &mut self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<(), ValkeyError> {
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = username {
            args.push(u.as_bytes());
        }
        args.push(password.as_bytes());
        self.send(&args).await?;
        match self.reply(MAX_SMALL_REPLY).await? {
            Reply::Simple(_) => Ok(()),
            // Whatever the server says about a failed AUTH is about the credentials.
            Reply::Error(e) => Err(ValkeyError::Auth {
                detail: safe_line(&e),
            }),
            other => Err(self.unexpected("AUTH", &other)),
        }
    }

    /// An answer of the wrong type to `command`.
    pub fn unexpected(&self, command: &str, reply: &Reply) -> ValkeyError {
        ValkeyError::Protocol {
            addr: self.addr.clone(),
            detail: format!("unexpected answer to {command}: {}", describe(reply)),
        }
    }
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Simple(s) => format!("+{}", safe_line(s)),
        Reply::Error(s) => format!("-{}", safe_line(s)),
        Reply::Integer(i) => format!(":{i}"),
        Reply::Bulk(None) => "a null bulk string".into(),
        Reply::Bulk(Some(b)) => format!("a bulk string of {} bytes", b.len()),
        Reply::Array(None) => "a null array".into(),
        Reply::Array(Some(a)) => format!("an array of {} items", a.len()),
    }
}

/// One server error line, trimmed to printable ASCII and 200 characters.
pub fn safe_line(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

/// Turns a server's error reply to `command` into a classified error.
pub fn classify_error(e: &str, command: &str) -> ValkeyError {
    let line = safe_line(e);
    let upper = line.to_ascii_uppercase();
    if upper.starts_with("NOPERM") {
        return ValkeyError::Permission { detail: line };
    }
    if upper.starts_with("NOAUTH") || upper.starts_with("WRONGPASS") {
        return ValkeyError::Auth { detail: line };
    }
    ValkeyError::Refused {
        command: command.to_owned(),
        detail: line,
    }
}

fn io_detail(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::InvalidData => format!("TLS: {e}"),
        kind => {
            let msg = e.to_string();
            if msg.is_empty() {
                kind.to_string()
            } else {
                safe_line(&msg)
            }
        }
    }
}

/// Where the agent's own client connects.
#[derive(Debug, Clone)]
pub struct NativeClient {
    settings: ValkeySettings,
    /// Talk over this Unix socket instead of TCP (scratch servers for `verify --load`).
    unix_socket: Option<PathBuf>,
}

impl NativeClient {
    /// A client for the configured server.
    pub fn new(settings: ValkeySettings) -> Self {
        NativeClient {
            settings,
            unix_socket: None,
        }
    }

    /// A client for a password-less scratch server listening only on `socket`.
    pub fn scratch(socket: PathBuf) -> Self {
        NativeClient {
            settings: ValkeySettings::local_default(),
            unix_socket: Some(socket),
        }
    }

    /// The configured server settings.
    pub fn settings(&self) -> &ValkeySettings {
        &self.settings
    }

    /// `host:port` or the socket path.
    pub fn addr(&self) -> String {
        match &self.unix_socket {
            Some(p) => p.display().to_string(),
            None => format!("{}:{}", self.settings.host, self.settings.port),
        }
    }

    /// Opens a connection (TCP, TLS or Unix socket), not yet logged in.
    pub async fn open(&self) -> Result<Connection, ValkeyError> {
        let addr = self.addr();
        let unreachable = |detail: String| ValkeyError::Unreachable {
            addr: addr.clone(),
            detail,
        };
        if let Some(path) = &self.unix_socket {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
                .await
                .map_err(|_| unreachable("connecting timed out".into()))?
                .map_err(|e| unreachable(io_detail(&e)))?;
            return Ok(Connection::new(Box::new(s), addr));
        }
        let s = &self.settings;
        let host = s.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, s.port)))
            .await
            .map_err(|_| unreachable("connecting timed out".into()))?
            .map_err(|e| unreachable(io_detail(&e)))?;
        let _ = tcp.set_nodelay(true);
        let socket = tcp.as_fd().try_clone_to_owned().ok();
        let Some(tls) = s.tls.as_ref().filter(|t| t.enabled) else {
            return Ok(Connection::new(Box::new(tcp), addr).with_socket(socket));
        };
        let (tls, host) = (tls.clone(), s.host.clone());
        let client = tokio::task::spawn_blocking(move || valkey_tls::client(&tls, &host))
            .await
            .map_err(|e| ValkeyError::Protocol {
                addr: addr.clone(),
                detail: format!("TLS setup: {e}"),
            })?
            .map_err(|e| unreachable(format!("TLS setup: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(client.config);
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(client.server_name, tcp))
                .await
                .map_err(|_| unreachable("TLS handshake timed out".into()))?
                .map_err(|e| {
                    unreachable(format!(
                        "TLS handshake failed: {}",
                        safe_line(&e.to_string())
                    ))
                })?;
        Ok(Connection::new(Box::new(stream), addr).with_socket(socket))
    }

    /// Opens a connection and logs in.
    pub async fn connect(&self) -> Result<Connection, ValkeyError> {
        let mut conn = self.open().await?;
        let s = &self.settings;
        conn.auth(
            s.username.as_deref(),
            s.password.as_ref().map(|p| p.expose()),
        )
        .await?;
        Ok(conn)
    }

    /// `INFO everything`, parsed.
    pub async fn info(&self) -> Result<ServerInfo, ValkeyError> {
        let mut conn = self.connect().await?;
        info_on(&mut conn).await
    }

    /// `CONFIG GET name`: the value, or `None` when the server has no such parameter.
    pub async fn config_get(&self, name: &str) -> Result<Option<String>, ValkeyError> {
        let mut conn = self.connect().await?;
        let reply = conn
            .call(&[b"CONFIG", b"GET", name.as_bytes()], MAX_INFO_REPLY)
            .await?;
        match reply {
            Reply::Array(Some(items)) => {
                let mut it = items.iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if k.as_text().is_some_and(|k| k.eq_ignore_ascii_case(name)) {
                        return Ok(v.as_text());
                    }
                }
                Ok(None)
            }
            other => Err(conn.unexpected("CONFIG GET", &other)),
        }
    }

    /// Whether the server is definitely stopped: only a refused connection (or a missing
    /// socket file) counts. Any answer, a timeout or a TLS failure means "not known to be
    /// stopped", because replacing a live server's dump would be silently undone by its
    /// next save.
    pub async fn is_stopped(&self) -> bool {
        match self.open().await {
            Err(ValkeyError::Unreachable { detail, .. }) => {
                detail == "connection refused" || detail == "no such file or directory"
            }
            _ => false,
        }
    }
}

/// `INFO everything` on an open, logged-in connection.
pub async fn info_on(conn: &mut Connection) -> Result<ServerInfo, ValkeyError> {
    let reply = conn.call(&[b"INFO", b"everything"], MAX_INFO_REPLY).await?;
    let text = match reply {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => return Err(conn.unexpected("INFO", &other)),
    };
    if !text.contains("_version:") {
        return Err(ValkeyError::Protocol {
            addr: conn.addr().to_owned(),
            detail: "INFO returned no server section".into(),
        });
    }
    Ok(ServerInfo::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_classified() {
        assert!(matches!(
            classify_error(
                "NOPERM User backup has no permissions to run the 'sync' command",
                "SYNC"
            ),
            ValkeyError::Permission { .. }
        ));
        assert!(matches!(
            classify_error("NOAUTH Authentication required.", "INFO"),
            ValkeyError::Auth { .. }
        ));
        let refused = classify_error(
            "ERR Unrecognized REPLCONF option: version",
            "REPLCONF version",
        );
        assert!(
            refused.to_string().contains("REPLCONF version")
                && refused.to_string().contains("Unrecognized"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn auth_sends_user_and_password_and_maps_wrongpass() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut conn = Connection::new(Box::new(client), "mem");
        let peer = tokio::spawn(async move {
            let mut got = vec![0u8; 256];
            let n = server.read(&mut got).await.unwrap();
            server
                .write_all(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
                .await
                .unwrap();
            got.truncate(n);
            got
        });
        let err = conn.auth(Some("op"), Some("s3cret")).await.unwrap_err();
        assert_eq!(
            peer.await.unwrap(),
            b"*3\r\n$4\r\nAUTH\r\n$2\r\nop\r\n$6\r\ns3cret\r\n"
        );
        assert!(matches!(err, ValkeyError::Auth { .. }), "{err}");
        assert!(!err.to_string().contains("s3cret"));
    }
}

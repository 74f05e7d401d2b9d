//! RESP2 framing: the few Valkey replies the agent reads, parsed with hard bounds.
//!
//! The agent speaks to Valkey itself (see [`crate::replication`]) and needs only a handful
//! of commands: `AUTH`, `INFO`, `CONFIG GET`, `PING`, `REPLCONF`, `SYNC`. Their replies are
//! simple strings, errors, integers, bulk strings and flat arrays. A peer is not trusted to
//! be well-behaved — it may be a proxy, a wrong port or a broken server — so every length is
//! checked against a caller-given bound *before* any memory is reserved for it, and
//! nesting is limited. Nothing here does I/O: [`parse`] works on the bytes received so far
//! and says "need more" until a whole reply is there.

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`, `-NOPERM …`: the server refused the command.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$n` followed by n bytes; `None` for the null bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` followed by n replies; `None` for the null array `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text when it is a simple or bulk string.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Why bytes are not an acceptable reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The peer does not speak RESP (a wrong port, an HTTP server, line noise).
    #[error("the server's answer is not RESP: {0}")]
    Protocol(String),
    /// A length or a line exceeds what the agent accepts for this reply.
    #[error("the server's answer exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

/// How deep arrays may nest (the commands the agent sends return at most flat arrays).
const MAX_DEPTH: usize = 4;

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the start of `buf`.
///
/// Returns `Ok(None)` while the reply is incomplete, `Ok(Some((reply, used)))` once it is
/// whole (`used` bytes of `buf` belong to it). `max` bounds the reply's total size: a
/// declared length, or a line without its end, beyond it is [`RespError::TooLarge`], so
/// the caller may stop reading once `buf` holds `max` bytes and no reply.
pub fn parse(buf: &[u8], max: usize) -> Result<Option<(Reply, usize)>, RespError> {
    let mut budget = max;
    parse_at(buf, 0, &mut budget, max, 0)
}

fn parse_at(
    buf: &[u8],
    at: usize,
    budget: &mut usize,
    limit: usize,
    depth: usize,
) -> Result<Option<(Reply, usize)>, RespError> {
    let Some((line, next)) = line_at(buf, at, *budget, limit)? else {
        return Ok(None);
    };
    charge(budget, next - at, limit)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(RespError::Protocol("empty line".into()));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), next))),
        b'-' => Ok(Some((Reply::Error(text()), next))),
        b':' => Ok(Some((Reply::Integer(number(rest)?), next))),
        b'$' => {
            let n = number(rest)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let n =
                usize::try_from(n).map_err(|_| RespError::Protocol("negative length".into()))?;
            charge(budget, n.saturating_add(2), limit)?;
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return Err(RespError::Protocol("bulk string without CRLF".into()));
            }
            Ok(Some((
                Reply::Bulk(Some(buf[next..next + n].to_vec())),
                next + n + 2,
            )))
        }
        b'*' => {
            let n = number(rest)?;
            if n == -1 {
                return Ok(Some((Reply::Array(None), next)));
            }
            if depth >= MAX_DEPTH {
                return Err(RespError::Protocol("arrays nested too deeply".into()));
            }
            let n =
                usize::try_from(n).map_err(|_| RespError::Protocol("negative length".into()))?;
            // Every element takes at least 3 bytes ("+\r\n"): a count that cannot fit the
            // budget is refused before a vector is reserved for it.
            if n.saturating_mul(3) > *budget {
                return Err(RespError::TooLarge { limit });
            }
            let mut items = Vec::with_capacity(n);
            let mut pos = next;
            for _ in 0..n {
                match parse_at(buf, pos, budget, limit, depth + 1)? {
                    Some((item, end)) => {
                        items.push(item);
                        pos = end;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), pos)))
        }
        other => Err(RespError::Protocol(format!(
            "unexpected first byte {}",
            shown(&[other])
        ))),
    }
}

fn charge(budget: &mut usize, n: usize, limit: usize) -> Result<(), RespError> {
    *budget = budget.checked_sub(n).ok_or(RespError::TooLarge { limit })?;
    Ok(())
}

/// The line starting at `at` (without CRLF) and where the next one starts.
fn line_at(
    buf: &[u8],
    at: usize,
    budget: usize,
    limit: usize,
) -> Result<Option<(&[u8], usize)>, RespError> {
    let window = &buf[at.min(buf.len())..];
    match memchr::memchr(b'\n', window) {
        Some(i) => {
            if i == 0 || window[i - 1] != b'\r' {
                return Err(RespError::Protocol("line without CRLF".into()));
            }
            if i + 1 > budget {
                return Err(RespError::TooLarge { limit });
            }
            Ok(Some((&window[..i - 1], at + i + 1)))
        }
        None if window.len() > budget => Err(RespError::TooLarge { limit }),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 20)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RespError::Protocol(format!("bad number {}", shown(digits))))
}

/// Up to 40 bytes shown safely (printable ASCII, others as `\xNN`).
pub fn shown(bytes: &[u8]) -> String {
    let mut s: String = bytes
        .iter()
        .take(40)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > 40 {
        s.push('…');
    }
    format!("\"{s}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Reply {
        let (r, used) = parse(bytes, 1 << 20).unwrap().expect("complete");
        assert_eq!(used, bytes.len());
        r
    }

    #[test]
    fn encodes_bulk_arrays() {
        assert_eq!(
            encode(&[b"AUTH", b"u", b"p w"]),
            b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$3\r\np w\r\n"
        );
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(whole(b"+OK\r\n"), Reply::Simple("OK".into()));
        assert_eq!(whole(b"-NOPERM no\r\n"), Reply::Error("NOPERM no".into()));
        assert_eq!(whole(b":-7\r\n"), Reply::Integer(-7));
        assert_eq!(
            whole(b"$3\r\na\nb\r\n"),
            Reply::Bulk(Some(b"a\nb".to_vec()))
        );
        assert_eq!(whole(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(whole(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(
            whole(b"*2\r\n$3\r\ndir\r\n$4\r\n/tmp\r\n"),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"dir".to_vec())),
                Reply::Bulk(Some(b"/tmp".to_vec()))
            ]))
        );
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete_not_an_error() {
        let full = b"*3\r\n$3\r\ndir\r\n:12\r\n+OK\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut], 1024), Ok(None), "cut {cut}");
        }
        let (_, used) = parse(full, 1024).unwrap().unwrap();
        assert_eq!(used, full.len());
    }

    #[test]
    fn trailing_bytes_are_left_for_the_next_reply() {
        let (r, used) = parse(b"+OK\r\n+PONG\r\n", 64).unwrap().unwrap();
        assert_eq!((r, used), (Reply::Simple("OK".into()), 5));
    }

    #[test]
    fn lengths_beyond_the_bound_are_refused_before_any_allocation() {
        assert_eq!(
            parse(b"$999999999999\r\n", 1024),
            Err(RespError::TooLarge { limit: 1024 })
        );
        assert_eq!(
            parse(b"*99999999\r\n", 1024),
            Err(RespError::TooLarge { limit: 1024 })
        );
        let long_line = [b'+'; 2000];
        assert_eq!(
            parse(&long_line, 1024),
            Err(RespError::TooLarge { limit: 1024 })
        );
        // The bound covers the whole reply, not each element.
        let two = b"*2\r\n$600\r\n";
        let mut two = two.to_vec();
        two.extend_from_slice(&[b'a'; 600]);
        two.extend_from_slice(b"\r\n$600\r\n");
        assert_eq!(parse(&two, 1024), Err(RespError::TooLarge { limit: 1024 }));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for bad in [
            &b"HTTP/1.1 400 Bad Request\r\n"[..],
            b"+OK\n",
            b"$abc\r\n",
            b"$3\r\nabcXY",
            b"$-5\r\n",
            b"\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(
                matches!(parse(bad, 1024), Err(RespError::Protocol(_))),
                "{}",
                shown(bad)
            );
        }
    }
}

//! A plain object read as parallel ranged GETs, handed on in order.
//!
//! Several connections download at once while the bytes still reach the checker (and its
//! SHA-256) in stream order. The range at the head is handed on piece by piece as it
//! arrives; the ranges behind it are read into memory until the head is done. So the
//! memory held is at most `in_flight` ranges (the head's pieces that have arrived and
//! not been taken count among them), never a whole range more for the one being handed
//! on. Nothing is read while the consumer does not ask: a full disk slows the downloads
//! through TCP's own flow control.
//!
//! Every range must come back with exactly the length asked for: a store that announces
//! or sends another length (the object changed, a store that ignored `Range`, a cut
//! body) ends the stream with an error. So does any range's failure, at once, even while
//! pieces of an earlier range are still waiting: the download has failed either way.

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Future, Stream};

use crate::storage::{GetResult, ObjectStore, StoreError};

/// How large the ranges of a parallel download are. Per-request costs dominate small
/// ranges: two of 2 MiB measured slower than a plain download (`bench/run.sh --anchors`,
/// against Garage on two cores).
pub const RANGE_BYTES: u64 = 4 * 1024 * 1024;
/// How many ranges are downloaded at once, the one being handed on included.
pub const RANGES_IN_FLIGHT: usize = 2;

/// The byte ranges, of `range` bytes each but the last, that make up `size` bytes.
pub fn ranges(size: u64, range: u64) -> impl Iterator<Item = Range<u64>> {
    (0..range_count(size, range)).map(move |i| range_at(i, size, range))
}

fn range_count(size: u64, range: u64) -> u64 {
    size.div_ceil(range.max(1))
}

/// The `i`-th of [`ranges`].
fn range_at(i: u64, size: u64, range: u64) -> Range<u64> {
    let range = range.max(1);
    i * range..((i + 1) * range).min(size)
}

/// An object of `size` bytes from `store` as ranged GETs of `range` bytes, `in_flight`
/// at a time, in order.
pub fn ranged_body<'a>(
    store: &'a dyn ObjectStore,
    key: &'a str,
    size: u64,
    range: u64,
    in_flight: usize,
) -> BoxStream<'a, Result<Bytes, StoreError>> {
    Box::pin(Ranged::new(
        key,
        move |r| store.get_range(key, r),
        size,
        range,
        in_flight,
    ))
}

type Open<'a> = BoxFuture<'a, Result<GetResult, StoreError>>;

/// The stream behind [`ranged_body`], over any way of opening a range (tests open
/// ranges whose bodies they control).
pub struct Ranged<'a, F> {
    key: &'a str,
    open: F,
    size: u64,
    range: u64,
    /// The indices of the ranges not opened yet.
    pending: Range<u64>,
    slots: VecDeque<Slot<'a>>,
    in_flight: usize,
    ended: bool,
}

impl<'a, F> Ranged<'a, F>
where
    F: FnMut(Range<u64>) -> Open<'a>,
{
    /// `key` only names the object in errors.
    pub fn new(key: &'a str, open: F, size: u64, range: u64, in_flight: usize) -> Self {
        Ranged {
            key,
            open,
            size,
            range,
            pending: 0..range_count(size, range),
            slots: VecDeque::new(),
            in_flight: in_flight.max(1),
            ended: false,
        }
    }
}

impl<'a, F> Stream for Ranged<'a, F>
where
    F: FnMut(Range<u64>) -> Open<'a> + Unpin,
{
    type Item = Result<Bytes, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            while this.slots.len() < this.in_flight {
                let Some(i) = this.pending.next() else { break };
                let r = range_at(i, this.size, this.range);
                this.slots.push_back(Slot {
                    state: State::Opening((this.open)(r.clone())),
                    pieces: VecDeque::new(),
                    received: 0,
                    range: r,
                });
            }
            // Every range in flight moves on, not only the head: that is the parallelism.
            for slot in this.slots.iter_mut() {
                if let Err(e) = slot.fill(this.key, cx) {
                    this.ended = true;
                    this.slots.clear();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(head) = this.slots.front_mut() else {
                this.ended = true;
                return Poll::Ready(None);
            };
            if let Some(piece) = head.pieces.pop_front() {
                return Poll::Ready(Some(Ok(piece)));
            }
            if !matches!(head.state, State::Done) {
                return Poll::Pending;
            }
            this.slots.pop_front();
        }
    }
}

enum State<'a> {
    Opening(Open<'a>),
    Reading(BoxStream<'static, Result<Bytes, StoreError>>),
    Done,
}

/// One range in flight: its request or body, and what arrived and was not taken yet.
struct Slot<'a> {
    state: State<'a>,
    pieces: VecDeque<Bytes>,
    received: u64,
    range: Range<u64>,
}

impl Slot<'_> {
    fn wrong_length(&self, key: &str, how: &str, got: u64) -> StoreError {
        let Range { start, end } = self.range;
        StoreError::Answer {
            operation: "GetObject",
            detail: format!(
                "bytes {start}-{} of {key} {how} {got} bytes instead of {} (the object changed, or the store ignored the range or cut it short)",
                end - 1,
                end - start
            ),
        }
    }

    /// Moves whatever has arrived into `pieces`; returns once nothing more is ready
    /// (the context is then registered for more) or the range is complete.
    fn fill(&mut self, key: &str, cx: &mut Context<'_>) -> Result<(), StoreError> {
        let want = self.range.end - self.range.start;
        loop {
            match &mut self.state {
                State::Opening(open) => match Pin::new(open).poll(cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Ready(Ok(got)) if got.size != want => {
                        return Err(self.wrong_length(key, "were announced as", got.size));
                    }
                    Poll::Ready(Ok(got)) => self.state = State::Reading(got.body),
                },
                State::Reading(body) => match body.as_mut().poll_next(cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Some(Err(e))) => return Err(e),
                    Poll::Ready(Some(Ok(piece))) => {
                        self.received += piece.len() as u64;
                        if self.received > want {
                            return Err(self.wrong_length(key, "came as", self.received));
                        }
                        if !piece.is_empty() {
                            self.pieces.push_back(piece);
                        }
                    }
                    Poll::Ready(None) if self.received != want => {
                        return Err(self.wrong_length(key, "came as", self.received));
                    }
                    Poll::Ready(None) => self.state = State::Done,
                },
                State::Done => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::store_reader;
    use crate::pipeline::testing::{check, rdb, stream_limits, Collect};
    use futures::{FutureExt, StreamExt};
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn ranges_cover_the_object_once_in_order() {
        let r: Vec<_> = ranges(20, 8).collect();
        assert_eq!(r, vec![0..8, 8..16, 16..20]);
        assert_eq!(ranges(16, 8).collect::<Vec<_>>(), vec![0..8, 8..16]);
        assert_eq!(ranges(0, 8).count(), 0);
    }

    #[tokio::test]
    async fn a_ranged_download_is_the_object_in_order_through_the_checker() {
        use crate::storage::memory::InMemory;
        use crate::storage::PutOptions;
        let data = rdb(100_000);
        let store = InMemory::default();
        store
            .put("k", Bytes::from(data.clone()), &PutOptions::create("x"))
            .await
            .unwrap();
        for in_flight in [1, 2, 3] {
            let cancel = CancellationToken::new();
            let limits = stream_limits(&cancel, false);
            let body = ranged_body(&store, "k", data.len() as u64, 7_777, in_flight);
            let mut sink = Collect(Vec::new());
            let out = check(store_reader(body), &mut sink, limits).await.unwrap();
            assert_eq!(sink.0, data, "{in_flight} in flight");
            assert_eq!(out.rdb.unwrap().sha256, hex::encode(Sha256::digest(&data)));
        }
        // Asking for more than the object holds is an error, not a short stream.
        let body = ranged_body(&store, "k", data.len() as u64 + 10, 7_777, 3);
        let results: Vec<_> = body.collect().await;
        let err = results.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(
            err.contains("bytes 93324-100027 of k were announced as 6694 bytes instead of 6704"),
            "{err}"
        );
        // A missing object: the store's own error.
        let err = ranged_body(&store, "nope", 10, 4, 2).next().await.unwrap();
        assert!(matches!(err, Err(StoreError::NotFound { .. })), "{err:?}");
    }

    type Feed = (Range<u64>, mpsc::UnboundedSender<Result<Bytes, StoreError>>);

    /// Ranges whose bodies the test feeds by hand; records which ranges were opened and
    /// how many bytes the stream has taken from their bodies.
    #[derive(Default)]
    struct Hand {
        opened: Arc<Mutex<Vec<Range<u64>>>>,
        feeds: Arc<Mutex<Vec<Feed>>>,
        taken: Arc<AtomicU64>,
        announced: Option<u64>,
    }

    impl Hand {
        fn open(&self) -> impl FnMut(Range<u64>) -> Open<'static> + Unpin {
            let opened = self.opened.clone();
            let feeds = self.feeds.clone();
            let taken = self.taken.clone();
            let announced = self.announced;
            move |r| {
                opened.lock().unwrap().push(r.clone());
                let (tx, mut rx) = mpsc::unbounded_channel::<Result<Bytes, StoreError>>();
                let size = announced.unwrap_or(r.end - r.start);
                feeds.lock().unwrap().push((r, tx));
                let taken = taken.clone();
                let body: BoxStream<'static, _> = Box::pin(futures::stream::poll_fn(move |cx| {
                    let next = rx.poll_recv(cx);
                    if let Poll::Ready(Some(Ok(b))) = &next {
                        taken.fetch_add(b.len() as u64, Ordering::SeqCst);
                    }
                    next
                }));
                async move { Ok(GetResult { size, body }) }.boxed()
            }
        }

        /// The feeds of the ranges opened since the last call (the test then holds the
        /// only sender: dropping it ends that range's body).
        fn take(&self) -> Vec<Feed> {
            self.feeds.lock().unwrap().drain(..).collect()
        }

        fn opened(&self) -> usize {
            self.opened.lock().unwrap().len()
        }

        fn taken(&self) -> u64 {
            self.taken.load(Ordering::SeqCst)
        }
    }

    /// The next item if one is ready now: a test that waits for one could hang.
    fn ready<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        s.next().now_or_never().flatten()
    }

    #[tokio::test]
    async fn the_head_range_is_handed_on_as_it_arrives_and_no_more_than_in_flight_are_open() {
        let data = Bytes::from((0..40u8).collect::<Vec<_>>());
        let hand = Hand::default();
        let mut body = Ranged::new("k", hand.open(), 40, 10, 2);
        // Nothing has arrived: the stream waits, with two ranges asked for, not more.
        assert!(body.next().now_or_never().is_none());
        assert_eq!(*hand.opened.lock().unwrap(), vec![0..10, 10..20]);
        let mut feeds = hand.take();
        // The second range arrives whole before the head: it is read (the downloads run
        // side by side), held, and not handed on.
        let (_, second) = feeds.pop().unwrap();
        second.send(Ok(data.slice(10..20))).unwrap();
        drop(second);
        assert!(body.next().now_or_never().is_none());
        assert_eq!(hand.taken(), 10);
        // Half the head arrives, the rest of it not yet: that half is handed on at once.
        let (_, head) = feeds.pop().unwrap();
        head.send(Ok(data.slice(0..5))).unwrap();
        let mut got = ready(&mut body).unwrap().unwrap().to_vec();
        assert_eq!(got, data[..5]);
        assert_eq!(
            hand.opened(),
            2,
            "the head counts among the ranges in flight"
        );
        head.send(Ok(data.slice(5..10))).unwrap();
        drop(head);
        got.extend_from_slice(&ready(&mut body).unwrap().unwrap());
        got.extend_from_slice(&ready(&mut body).unwrap().unwrap());
        assert_eq!(got, data[..20]);
        // The head done, one more range was asked for; the next once the second is done.
        assert_eq!(hand.opened(), 3);
        loop {
            for (r, feed) in hand.take() {
                feed.send(Ok(data.slice(r.start as usize..r.end as usize)))
                    .unwrap();
            }
            match ready(&mut body) {
                Some(piece) => got.extend_from_slice(&piece.unwrap()),
                None => break,
            }
        }
        assert_eq!(got, data);
        assert_eq!(hand.opened(), 4);
        assert!(
            body.next().now_or_never().flatten().is_none(),
            "it has ended"
        );
    }

    #[tokio::test]
    async fn a_range_cut_short_too_long_or_announced_with_another_length_is_an_error() {
        // Cut short: the body ends early.
        let hand = Hand::default();
        let mut body = Ranged::new("k", hand.open(), 10, 10, 2);
        assert!(body.next().now_or_never().is_none());
        let (_, feed) = hand.take().pop().unwrap();
        feed.send(Ok(Bytes::from_static(b"12345"))).unwrap();
        drop(feed);
        let err = ready(&mut body).unwrap().unwrap_err().to_string();
        assert!(
            err.contains("bytes 0-9 of k came as 5 bytes instead of 10"),
            "{err}"
        );
        assert!(ready(&mut body).is_none(), "the stream ends after an error");
        // Longer than asked, the body still open: refused as the extra bytes arrive.
        let hand = Hand::default();
        let mut body = Ranged::new("k", hand.open(), 10, 10, 2);
        assert!(body.next().now_or_never().is_none());
        let (_, feed) = hand.take().pop().unwrap();
        feed.send(Ok(Bytes::from_static(b"0123456789ab"))).unwrap();
        let err = ready(&mut body).unwrap().unwrap_err().to_string();
        assert!(err.contains("came as 12 bytes instead of 10"), "{err}");
        // A store that ignored the Range header and announced the whole object: refused
        // before its body is read.
        let hand = Hand {
            announced: Some(1000),
            ..Hand::default()
        };
        let mut body = Ranged::new("k", hand.open(), 20, 10, 2);
        let err = ready(&mut body).unwrap().unwrap_err().to_string();
        assert!(
            err.contains("were announced as 1000 bytes instead of 10"),
            "{err}"
        );
        assert_eq!(hand.taken(), 0);
        // A body that errs in the middle: its error, as the store gave it.
        let hand = Hand::default();
        let mut body = Ranged::new("k", hand.open(), 10, 10, 1);
        assert!(body.next().now_or_never().is_none());
        let (_, feed) = hand.take().pop().unwrap();
        feed.send(Err(StoreError::Answer {
            operation: "GetObject",
            detail: "cut".into(),
        }))
        .unwrap();
        let err = ready(&mut body).unwrap().unwrap_err().to_string();
        assert!(err.contains("cut"), "{err}");
    }
}

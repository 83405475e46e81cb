//! Connections that go quiet, or that trickle a request without ever completing it, are closed: a client
//! that completes the TLS handshake and then sends nothing, leaves a keep-alive connection open and unused,
//! or sends a header a byte at a time (slowloris) would otherwise hold one of the server's connection slots
//! (and a file descriptor) for as long as it likes, and enough of them lock everyone out.
//!
//! [`IdleIo`] wraps a connection's byte stream and ends its input (as when the client closes; hyper then
//! closes the connection) once either
//! - neither side has sent a byte for the idle limit, or
//! - the client has been sending for the answer limit while the server wrote nothing back (a request the
//!   server never got whole: a complete request is answered in far less) — counted again from each time
//!   another answer limit's worth of bytes at the minimum upload rate (`http::limits::BODY_MIN_RATE`) has
//!   come: a large upload over a slow link goes on as long as it keeps that rate, a trickle (or a burst
//!   followed by a trickle) is cut off an answer limit after its last such renewal.
//!
//! and fails its writes once one has waited for the write-stall limit ([`IdleIo::limit_write_stalls`]):
//! the client takes nothing of an answer, while hyper may not be reading at all.
//!
//! Neither of the first two cuts a connection while one of its requests is being handled
//! ([`IdleIo::wait_for_requests`]): a whole request whose handling takes long (a PostgreSQL purge may take
//! 120 s, a set queued behind a batch up to a minute) is answered, not cut off at the answer limit with its
//! work given up. Handlers bound their own waits (a body's arrival rate, a backup place, the store's).
//!
//! The clock is read on each read and write that moves bytes. The one timer per connection fires at the
//! earliest deadline, or within the answer limit at most, and is re-armed only then: no timer is made or
//! moved per request (hyper's `header_read_timeout` does both, for 2.8 % of a GET's instructions).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// A byte stream whose input ends when the connection is idle or a request goes unanswered (see above).
pub(crate) struct IdleIo<T> {
    inner: T,
    idle: Duration,
    answer: Duration,
    /// Bytes read unanswered whose arrival renews the answer limit (0: none do).
    renewal: u64,
    /// When the last byte was read or written.
    last: Instant,
    /// Bytes read since the server last wrote.
    asked_bytes: u64,
    /// When the answer limit was last renewed: when the client started sending what the server has not
    /// answered yet (the first byte read since the server last wrote), or the last time `asked_bytes` passed a
    /// multiple of `renewal`.
    renewed: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// How long a write may wait before the connection counts as stalled ([`IdleIo::limit_write_stalls`]);
    /// `None`: writes are not watched.
    write_stall: Option<Duration>,
    /// Whether a write is waiting now (none went through since it began to), with its own timer, made the
    /// first time one waits (most connections never have a write wait).
    write_waiting: bool,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Told once when the connection goes quiet, before its input ends (HTTP/2: the connection then sends
    /// GOAWAY); the input ends [`CLOSING_GRACE`] later if the connection has not closed by then.
    on_idle: Option<Arc<Notify>>,
    /// When the input ends after `on_idle` was told.
    closing: Option<Instant>,
    /// The connection's requests being handled now ([`IdleIo::wait_for_requests`]).
    handling: Option<Arc<AtomicU64>>,
}

/// How long a connection told it is idle has to close before its input ends: an HTTP/2 peer acknowledges a
/// GOAWAY's PING in a round trip; one that does not (gone, or stalling) is cut off.
pub(crate) const CLOSING_GRACE: Duration = Duration::from_secs(5);

impl<T> IdleIo<T> {
    /// Quiet for `idle`, or sending unanswered for `answer` (at most `idle`) since the start or the last time
    /// another `answer`'s worth of bytes at `min_rate` bytes a second (0: none) came, ends the input.
    pub(crate) fn new(inner: T, idle: Duration, answer: Duration, min_rate: u64) -> Self {
        let now = Instant::now();
        let answer = answer.min(idle);
        IdleIo {
            inner,
            idle,
            answer,
            renewal: crate::http::limits::renewal_bytes(answer, min_rate),
            last: now,
            asked_bytes: 0,
            renewed: None,
            timer: Box::pin(tokio::time::sleep_until(now + answer)),
            write_stall: None,
            write_waiting: false,
            write_timer: None,
            on_idle: None,
            closing: None,
            handling: None,
        }
    }

    /// While `handling` (the connection's requests being handled, counted by the service) is above zero,
    /// the idle and answer limits do not end the input: they are looked at again an answer limit later.
    pub(crate) fn wait_for_requests(&mut self, handling: Arc<AtomicU64>) {
        self.handling = Some(handling);
    }

    /// A write that has waited `limit` (the client taking nothing of the answer) fails the connection. Needed
    /// because hyper may be waiting on that write alone: an HTTP/1.1 connection writing an answer does not
    /// read while a pipelined request is already buffered, so the read side's limits never come round. (When
    /// the read side is polled, a write that waits the idle limit ends the connection there too: no byte
    /// moved either way. A client reading a large answer so slowly that a write waits that long — its
    /// receive window opens seconds apart — is cut off either way.)
    pub(crate) fn limit_write_stalls(&mut self, limit: Duration) {
        self.write_stall = Some(limit);
    }

    /// Whether the write waiting now has waited past [`IdleIo::limit_write_stalls`]'s limit (its timer armed
    /// when it began to wait, and polled here).
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.write_stall else {
            return false;
        };
        if !self.write_waiting {
            self.write_waiting = true;
            let at = Instant::now() + limit;
            match &mut self.write_timer {
                Some(timer) => timer.as_mut().reset(at),
                None => self.write_timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.write_timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    /// When a limit passes, `on_idle` is notified first and the input ends [`CLOSING_GRACE`] later (for
    /// HTTP/2, whose answer limit is its idle limit).
    pub(crate) fn notify_when_idle(&mut self, on_idle: Arc<Notify>) {
        self.on_idle = Some(on_idle);
    }

    fn due(&self) -> Instant {
        let quiet = self.last + self.idle;
        self.renewed
            .map_or(quiet, |renewed| quiet.min(renewed + self.answer))
    }

    /// Whether a deadline has passed (re-arming the timer when it fired before one).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(closing) = self.closing {
                if now >= closing {
                    return true;
                }
                self.timer.as_mut().reset(closing);
                continue;
            }
            let due = self.due();
            if now >= due && (self.handling.as_ref()).is_some_and(|n| n.load(Ordering::Acquire) > 0)
            {
                // A request is being handled: its answer will come (or its handler gives up).
                self.timer.as_mut().reset(now + self.answer);
                continue;
            }
            if now >= due {
                // Told first, when someone listens.
                let Some(on_idle) = self.on_idle.take() else {
                    return true;
                };
                on_idle.notify_one();
                let closing = now + CLOSING_GRACE;
                self.closing = Some(closing);
                self.timer.as_mut().reset(closing);
                continue;
            }
            // An unanswered request may start after this: look again within the answer limit.
            self.timer.as_mut().reset(due.min(now + self.answer));
        }
        false
    }

    fn wrote(&mut self, n: usize) {
        self.write_waiting = false;
        if n > 0 {
            self.last = Instant::now();
            self.asked_bytes = 0;
            self.renewed = None;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    let now = Instant::now();
                    this.last = now;
                    this.renewed.get_or_insert(now);
                    let before = this.asked_bytes;
                    this.asked_bytes += read as u64;
                    if this.renewal > 0 && this.asked_bytes / this.renewal > before / this.renewal {
                        this.renewed = Some(now);
                    }
                }
                Poll::Ready(result)
            }
            // Nothing filled: the end of input.
            Poll::Pending if this.expired(cx) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A write (or flush) that waits: failed once it has waited past the write-stall limit
/// ([`IdleIo::limit_write_stalls`]).
fn stalled<R>(
    this: &mut IdleIo<impl Unpin>,
    cx: &mut Context<'_>,
    result: Poll<io::Result<R>>,
) -> Poll<io::Result<R>> {
    if result.is_pending() && this.write_stalled(cx) {
        return Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took nothing of the answer for the write-stall limit",
        )));
    }
    result
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.wrote(n);
        }
        stalled(this, cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            this.wrote(n);
        }
        stalled(this, cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        if result.is_ready() {
            this.write_waiting = false;
        }
        stalled(this, cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Quiet for the idle limit: the read ends. Requests that are answered keep the connection open.
    #[tokio::test(start_paused = true)]
    async fn quiet_for_the_idle_limit_ends_the_input() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, Duration::from_secs(10), Duration::from_secs(4), 0);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let started = Instant::now();
        // A request every 6 s for 30 s, each answered at once: never idle for 10, never unanswered for 4.
        let talker = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                client_write.write_all(b"x").await.unwrap();
                assert_eq!(client_read.read(&mut buf).await.unwrap(), 1);
            }
            (client_read, client_write)
        });
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
            io.write_all(b"y").await.unwrap();
        }
        let _keep = talker.await.unwrap();
        // Then quiet: the read ends 10 s after the last byte, not before.
        let quiet_from = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(quiet_from.elapsed(), Duration::from_secs(10));
        assert!(started.elapsed() >= Duration::from_secs(40));
    }

    /// A client that keeps sending (a byte every second, well within the idle limit) but is never answered is
    /// cut off at the answer limit, counted from its first unanswered byte.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_ends_at_the_answer_limit() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, Duration::from_secs(10), Duration::from_secs(4), 0);
        let (_client_read, mut client_write) = tokio::io::split(client);
        tokio::spawn(async move {
            for _ in 0..60 {
                if client_write.write_all(b"G").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let mut got = 0;
        loop {
            match io.read(&mut buf).await.unwrap() {
                0 => break,
                n => got += n,
            }
        }
        assert!(got >= 4, "{got}");
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }

    /// A whole request being handled holds the connection past both limits: read at once, answered 25 s
    /// later (the idle limit 10 s, the answer limit 4 s), then quiet: the read ends the idle limit after the
    /// answer.
    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_outlasts_both_limits() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, Duration::from_secs(10), Duration::from_secs(4), 0);
        let handling = Arc::new(AtomicU64::new(0));
        io.wait_for_requests(handling.clone());
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        handling.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        // The handler: 25 s, then its answer.
        let handler = {
            let handling = handling.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(25)).await;
                handling.fetch_sub(1, Ordering::AcqRel);
            })
        };
        // Meanwhile the connection is read (as hyper does, to notice a client going away): no end.
        let read = tokio::time::timeout(Duration::from_secs(25), io.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "the input ended while the request was handled: {read:?}"
        );
        handler.await.unwrap();
        io.write_all(b"200").await.unwrap();
        assert_eq!(client_read.read(&mut buf).await.unwrap(), 3);
        let answered = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(answered.elapsed(), Duration::from_secs(10));
        assert!(started.elapsed() >= Duration::from_secs(35));

        // Without a request being handled, the same wait ends at the answer limit.
        let (client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, Duration::from_secs(10), Duration::from_secs(4), 0);
        io.wait_for_requests(Arc::new(AtomicU64::new(0)));
        let (_client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let asked = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(asked.elapsed(), Duration::from_secs(4));
    }

    /// With a minimum rate, an upload that keeps it goes on past the answer limit until it is answered; one
    /// below it, or a burst followed by a trickle, is cut off an answer limit after its last renewal.
    #[tokio::test(start_paused = true)]
    async fn an_upload_that_keeps_the_minimum_rate_outlasts_the_answer_limit() {
        /// `burst` bytes at once, then `per_second` bytes a second for `seconds`: what was read, and when the
        /// input ended (or the whole was read and answered).
        async fn upload(burst: usize, per_second: usize, seconds: usize) -> (usize, Duration) {
            let (client, server) = tokio::io::duplex(64);
            // 4 s to answer, renewed by every 400 bytes (4 s at 100 bytes a second).
            let mut io = IdleIo::new(server, Duration::from_secs(10), Duration::from_secs(4), 100);
            let (_client_read, mut client_write) = tokio::io::split(client);
            tokio::spawn(async move {
                if client_write.write_all(&vec![b'x'; burst]).await.is_err() {
                    return;
                }
                for _ in 0..seconds {
                    if client_write
                        .write_all(&vec![b'x'; per_second])
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Then nothing more: the request is whole and waits for its answer.
                std::future::pending::<()>().await;
            });
            let started = Instant::now();
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < burst + per_second * seconds {
                match io.read(&mut buf).await.unwrap() {
                    0 => return (got, started.elapsed()),
                    n => got += n,
                }
            }
            io.write_all(b"answer").await.unwrap();
            (got, started.elapsed())
        }
        // 200 bytes a second for 20 s: 5 times the answer limit, read whole.
        let (got, took) = upload(0, 200, 20).await;
        assert_eq!(got, 4000);
        assert!(took >= Duration::from_secs(19), "{took:?}");
        // 50 bytes a second: 400 bytes take 8 s, so the first renewal never comes: cut at 4 s.
        let (got, took) = upload(0, 50, 20).await;
        assert!(got <= 250, "{got}");
        assert_eq!(took, Duration::from_secs(4));
        // 4,000 bytes at once, then a byte a second: the burst renews once (time is not banked), cut 4 s later.
        let (got, took) = upload(4000, 1, 60).await;
        assert!((4000..4010).contains(&got), "{got}");
        assert!(took <= Duration::from_secs(5), "{took:?}");
    }

    /// A client that stops taking the answer (its window full, nothing read): the write fails at the
    /// write-stall limit, counted from the last byte it took, whether or not anything reads the connection
    /// meanwhile; before, a write that waits less than that (a slow reader) goes on.
    #[tokio::test(start_paused = true)]
    async fn an_answer_nobody_takes_fails_at_the_idle_limit() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, Duration::from_secs(10), Duration::from_secs(4), 0);
        io.limit_write_stalls(Duration::from_secs(10));
        let (mut client_read, _client_write) = tokio::io::split(client);
        // The client takes 64 bytes a second for 20 s, then nothing.
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = client_read.read(&mut buf).await;
            }
            std::future::pending::<()>().await;
        });
        let started = Instant::now();
        let e = io.write_all(&[b'a'; 64 * 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // Taking bytes kept it going for 20 s; the last one's write came at 20 s; cut 10 s later.
        let took = started.elapsed();
        assert!(
            (Duration::from_secs(29)..=Duration::from_secs(31)).contains(&took),
            "{took:?}"
        );
    }

    /// Told when idle: the listener hears at the idle limit, and the input ends the closing grace later (a
    /// connection that closes by itself in between is never cut off).
    #[tokio::test(start_paused = true)]
    async fn a_listener_is_told_before_the_input_ends() {
        let (_client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, Duration::from_secs(10), Duration::from_secs(10), 0);
        let told = Arc::new(Notify::new());
        io.notify_when_idle(told.clone());
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            assert_eq!(io.read(&mut buf).await.unwrap(), 0);
            started.elapsed()
        });
        told.notified().await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(
            reader.await.unwrap(),
            Duration::from_secs(10) + CLOSING_GRACE
        );
    }
}

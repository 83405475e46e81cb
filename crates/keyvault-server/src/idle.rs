//! Connections that go quiet are closed: a client that completes the TLS handshake and then sends nothing, or
//! leaves a keep-alive connection open and unused, would otherwise hold one of the server's connection slots
//! (and a file descriptor) for ever, and enough of them lock everyone out.
//!
//! [`IdleIo`] wraps a connection's byte stream. Once neither side has sent a byte for the limit, its reads end
//! (end of input, as when the client closes): hyper then closes the connection as it closes one the client
//! ended. The clock is read on each read and write that moves bytes; the one timer per connection is re-armed
//! only when it fires early, so an active connection costs no timer operations.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A byte stream that ends its input after `limit` without traffic either way.
pub(crate) struct IdleIo<T> {
    inner: T,
    limit: Duration,
    /// When the last byte was read or written.
    last: Instant,
    /// Fires at or before `last + limit`.
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleIo<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> Self {
        let now = Instant::now();
        IdleIo {
            inner,
            limit,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    /// Whether the connection has been quiet for the limit (re-arming the timer if it fired early).
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let due = self.last + self.limit;
            if Instant::now() >= due {
                return true;
            }
            self.timer.as_mut().reset(due);
        }
        false
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
                if buf.filled().len() > before {
                    this.last = Instant::now();
                }
                Poll::Ready(result)
            }
            // Nothing filled: the end of input.
            Poll::Pending if this.idle(cx) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.last = Instant::now();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.last = Instant::now();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Quiet for the limit: the read ends. Traffic either way keeps the connection open past the limit.
    #[tokio::test(start_paused = true)]
    async fn reads_end_after_the_limit_without_traffic() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = IdleIo::new(server, Duration::from_secs(10));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let started = Instant::now();
        // Traffic every 6 s for 30 s: never idle for 10.
        let talker = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                client_write.write_all(b"x").await.unwrap();
            }
            client_write
        });
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        // Writes count as traffic too.
        tokio::time::sleep(Duration::from_secs(8)).await;
        io.write_all(b"y").await.unwrap();
        assert_eq!(client_read.read(&mut buf).await.unwrap(), 1);
        let _keep = talker.await.unwrap();
        // Then quiet: the read ends 10 s after the last byte, not before.
        let quiet_from = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(quiet_from.elapsed(), Duration::from_secs(10));
        assert!(started.elapsed() >= Duration::from_secs(48));
    }
}

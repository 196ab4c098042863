//! Capped in-memory capture of the guest's stdout / stderr.
//!
//! Unlike wasmtime-wasi's `MemoryOutputPipe`, a full capture never reports an error to the
//! guest: bytes past the cap are counted and dropped, so a program that prints a lot keeps
//! running exactly as it would with a terminal attached (and is stopped by the time limit,
//! not by an `OSError` in `print`). Besides the first `head_cap` bytes it keeps the last
//! `tail_cap` bytes, which is where the driver's completion record and tracebacks live.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Largest write permit handed to the guest at a time.
const WRITE_PERMIT: usize = 1 << 20;

#[derive(Default)]
struct Buf {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    /// Holds at least the last `tail_cap` bytes written (up to twice that before compaction).
    tail: Vec<u8>,
    total: u64,
}

impl Buf {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap.saturating_sub(self.head.len());
        if room > 0 {
            self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
        }
        if self.tail_cap == 0 {
            return;
        }
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            self.tail
                .extend_from_slice(&bytes[bytes.len() - self.tail_cap..]);
        } else {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > 2 * self.tail_cap {
                let excess = self.tail.len() - self.tail_cap;
                self.tail.drain(..excess);
            }
        }
    }
}

/// A clonable handle on one captured stream (guest side and host side share the buffer).
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Buf>>);

/// What a capture held at the end of a run.
pub(crate) struct Captured {
    /// The first `head_cap` bytes.
    pub head: Vec<u8>,
    /// The last `tail_cap` bytes (fewer if fewer were written).
    pub tail: Vec<u8>,
    /// Bytes written in all.
    pub total: u64,
}

impl Capture {
    pub fn new(head_cap: usize, tail_cap: usize) -> Self {
        Capture(Arc::new(Mutex::new(Buf {
            head_cap,
            tail_cap,
            ..Buf::default()
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Buf> {
        // A poisoned lock only means a panic elsewhere; the bytes are still valid.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        self.lock().push(bytes);
    }

    pub fn finish(&self) -> Captured {
        let mut b = self.lock();
        let keep = b.tail.len().min(b.tail_cap);
        let tail_start = b.tail.len() - keep;
        Captured {
            head: std::mem::take(&mut b.head),
            tail: b.tail.split_off(tail_start),
            total: b.total,
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_are_kept() {
        let c = Capture::new(4, 3);
        c.push(b"ab");
        c.push(b"cdef");
        c.push(b"g");
        let got = c.finish();
        assert_eq!(got.head, b"abcd");
        assert_eq!(got.tail, b"efg");
        assert_eq!(got.total, 7);
    }

    #[test]
    fn large_write_replaces_tail() {
        let c = Capture::new(0, 4);
        c.push(&[b'x'; 100]);
        c.push(b"12");
        let got = c.finish();
        assert!(got.head.is_empty());
        assert_eq!(got.tail, b"xx12");
        assert_eq!(got.total, 102);
    }

    #[test]
    fn many_small_writes_stay_bounded() {
        let c = Capture::new(0, 8);
        for i in 0..10_000u32 {
            c.push(&i.to_le_bytes());
        }
        assert!(c.lock().tail.len() <= 16);
        let got = c.finish();
        assert_eq!(got.tail.len(), 8);
        assert_eq!(&got.tail[4..], &9_999u32.to_le_bytes());
    }
}

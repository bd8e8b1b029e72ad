//! One MQTT connection's byte I/O: a read buffer that is freed while the session is idle, a
//! write buffer flushed once per turn of the session loop, and the codec.

use super::codec::{CodecError, Decoder, Encoder, Incoming, Version};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes reserved for a read while the buffer is empty: what an idle session holds (rustls
/// keeps its own 4 KiB record buffer below this). Larger packets grow the buffer as they arrive.
const READ_CHUNK: usize = 1024;
/// Buffers larger than this are released once drained (keeps idle sessions small).
const KEEP_CAPACITY: usize = 8 * 1024;

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer did not read for {0:?}")]
    WriteTimeout(Duration),
}

#[derive(Debug)]
pub struct Conn<S> {
    /// Boxed: a TLS stream is ~1.2 KiB, and the session future would otherwise carry it (and
    /// rustc's copies of moved arguments) inline.
    stream: Box<S>,
    rbuf: BytesMut,
    pub out: BytesMut,
    decoder: Decoder,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, max_packet: usize, write_timeout: Duration) -> Self {
        Conn {
            stream: Box::new(stream),
            rbuf: BytesMut::new(),
            out: BytesMut::new(),
            decoder: Decoder::new(max_packet),
            write_timeout,
        }
    }

    /// The encoder for this session (after CONNECT; v3.1.1 before).
    pub fn encoder(&self) -> Encoder {
        Encoder {
            version: self.decoder.version().unwrap_or(Version::V311),
        }
    }

    /// Reads more bytes; `Ok(0)` at end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < 256 {
            self.rbuf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// The next complete packet already buffered.
    pub fn next_packet(&mut self) -> Result<Option<Incoming>, CodecError> {
        let packet = self.decoder.decode(&mut self.rbuf)?;
        if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_CAPACITY {
            self.rbuf = BytesMut::new();
        }
        Ok(packet)
    }

    /// Reads until one packet is complete; `None` at end of stream.
    pub async fn read_packet(&mut self) -> Result<Option<Incoming>, ConnError> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(Some(p));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes everything encoded so far.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::WriteTimeout(self.write_timeout)),
        }
        self.out.clear();
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Flushes and closes the write side (TLS close_notify), bounded by the write timeout.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
    }
}

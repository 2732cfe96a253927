//! Read buffers, reused. A chunk read from the store is a [`Bytes`] that
//! owns a [`READ_CHUNK`]-sized buffer; when hyper has sent it and drops
//! it, the buffer goes back here for the next read, instead of a fresh
//! allocation that the kernel (and a zeroing `memset`) would touch again:
//! on the warm path that zeroing alone cost a tenth of the CPU.
//!
//! Bounded: at most [`POOLED`] idle buffers are kept (8 MiB); more in use
//! at once (many clients reading) are allocated and freed as before.

use std::sync::Mutex;

use bytes::Bytes;

use super::read::READ_CHUNK;

/// Idle buffers kept for reuse.
pub const POOLED: usize = 8;

static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of [`READ_CHUNK`] bytes, from the pool when one is idle.
pub fn take() -> Buffer {
    let idle = IDLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop();
    Buffer {
        bytes: idle.unwrap_or_else(|| vec![0; READ_CHUNK]),
        len: 0,
    }
}

/// A read buffer: `len` bytes of it are filled.
#[derive(Debug)]
pub struct Buffer {
    bytes: Vec<u8>,
    len: usize,
}

impl Buffer {
    /// The first `len` bytes (at most [`READ_CHUNK`]), to be filled.
    pub fn fill(&mut self, len: usize) -> &mut [u8] {
        self.len = len.min(self.bytes.len());
        &mut self.bytes[..self.len]
    }

    /// The filled bytes, as a [`Bytes`] that returns the buffer when the
    /// last reference goes.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.len() != READ_CHUNK {
            return;
        }
        let mut idle = IDLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < POOLED {
            idle.push(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_holds_what_was_filled_and_comes_back() {
        let mut buffer = take();
        buffer.fill(3).copy_from_slice(b"abc");
        let bytes = buffer.freeze();
        assert_eq!(&bytes[..], b"abc");
        let clone = bytes.slice(1..);
        drop(bytes);
        assert_eq!(&clone[..], b"bc");
        drop(clone);
        // Reused: a second buffer is full-sized whatever the first held.
        let mut again = take();
        assert_eq!(again.fill(READ_CHUNK).len(), READ_CHUNK);
        assert!(IDLE
            .lock()
            .map(|idle| idle.len() <= POOLED)
            .unwrap_or(false));
    }

    #[test]
    fn a_fill_never_exceeds_the_buffer() {
        let mut buffer = take();
        assert_eq!(buffer.fill(READ_CHUNK + 10).len(), READ_CHUNK);
    }
}

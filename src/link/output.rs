//! A connection's unsent output, and the shard's shared encodings that many
//! connections' output refers to.
//!
//! A QoS 0 message fanned out to many subscribers is encoded once, into the shard's
//! current [`Chunk`]; each subscriber's [`Output`] records the byte range, not a copy.
//! The writer sends each connection's output with one `sendmsg`, gathering its own
//! bytes and the shared ranges in order, so the kernel copies from one hot buffer
//! instead of hundreds of cold ones. Consecutive messages land next to each other in
//! the chunk, so a subscriber's share of a whole batch is usually one range.
//!
//! Encoded ranges live only until the writer's next pass: a connection whose socket
//! is full copies what is left into its own buffer before it waits
//! ([`Output::send_now`]), and one that is already waiting copies at once
//! ([`super::Conn::write_shared`]). So a slow subscriber never pins a chunk, and the
//! shard reuses one chunk pass after pass ([`Chunks::recycle`]).

use bytes::BytesMut;
use smallvec::SmallVec;
use std::cell::{Ref, RefCell};
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::rc::Rc;

/// A chunk is not appended to past this; the next encoding starts a new one.
const CHUNK_ROTATE: usize = 64 * 1024;
/// A chunk grown past this by one pass's burst is released, not reused.
const CHUNK_KEEP: usize = 256 * 1024;
/// An own buffer grown past this by a burst is released once sent.
const KEEP_OWN_BUFFER: usize = 1024 * 1024;
/// Ranges gathered per `sendmsg`.
const MAX_IOV: usize = 64;

/// Append-only bytes shared by many connections' output.
#[derive(Default)]
pub struct Chunk(RefCell<BytesMut>);

/// One encoding in a shared chunk.
pub struct Encoded {
    chunk: Rc<Chunk>,
    start: u32,
    end: u32,
}

impl Encoded {
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    fn copy_into(&self, buf: &mut BytesMut) {
        buf.extend_from_slice(&self.chunk.0.borrow()[self.start as usize..self.end as usize]);
    }
}

/// A shard's current chunk.
#[derive(Default)]
pub(crate) struct Chunks {
    current: RefCell<Rc<Chunk>>,
}

impl Chunks {
    /// Encodes once with `encode`; the result can go to any number of connections.
    pub fn share(&self, encode: impl FnOnce(&mut BytesMut)) -> Encoded {
        let mut current = self.current.borrow_mut();
        if current.0.borrow().len() >= CHUNK_ROTATE {
            if Rc::strong_count(&current) == 1 {
                current.0.borrow_mut().clear();
            } else {
                // Still referred to by output not yet sent: that output keeps it.
                *current = Rc::default();
            }
        }
        let mut buf = current.0.borrow_mut();
        let start = buf.len();
        encode(&mut buf);
        let end = buf.len();
        drop(buf);
        Encoded {
            chunk: current.clone(),
            start: to_u32(start),
            end: to_u32(end),
        }
    }

    /// After a writer pass: if no output refers to the chunk any more, refill it from
    /// its start (or release it, after a burst).
    pub fn recycle(&self) {
        let current = self.current.borrow();
        if Rc::strong_count(&current) == 1 {
            let mut buf = current.0.borrow_mut();
            if buf.capacity() > CHUNK_KEEP {
                *buf = BytesMut::new();
            } else {
                buf.clear();
            }
        }
    }
}

fn to_u32(n: usize) -> u32 {
    // Packets are at most 256 MiB (the Remaining Length's limit) and a chunk is
    // rotated at 64 KiB, so an offset always fits.
    u32::try_from(n).expect("shared chunk offset over 4 GiB")
}

/// A range of output: in the connection's own buffer (`chunk` None) or in a chunk.
struct Seg {
    chunk: Option<Rc<Chunk>>,
    start: u32,
    end: u32,
}

/// A connection's unsent output, in order, and the buffers it keeps for the next
/// write: none at all once released ([`Output::release`], for a parked connection),
/// so an idle connection's output costs one word.
#[derive(Default)]
pub(crate) struct Output(Option<Box<Buffers>>);

impl Output {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.len)
    }

    fn bufs(&mut self) -> &mut Buffers {
        self.0.get_or_insert_with(Box::default)
    }

    /// Appends with `encode` to the connection's own bytes.
    pub fn push_own(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        self.bufs().push_own(encode);
    }

    /// Appends a shared encoding by reference.
    pub fn push_shared(&mut self, s: &Encoded) {
        self.bufs().push_shared(s);
    }

    /// Appends a copy of a shared encoding (for a connection that is waiting for its
    /// socket: it must not hold on to the chunk).
    pub fn push_copy(&mut self, s: &Encoded) {
        self.push_own(|buf| s.copy_into(buf));
    }

    /// The plain output not yet sent (for a write that waits for the socket).
    pub fn plain_unsent(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Buffers::plain_unsent)
    }

    /// `n` more bytes of plain output went to the kernel.
    pub fn consume(&mut self, n: usize) {
        if let Some(b) = self.0.as_mut() {
            b.consume(n);
        }
    }

    /// Drops whatever is unsent.
    pub fn discard(&mut self) {
        if let Some(b) = self.0.as_mut() {
            b.reset();
        }
    }

    /// Hands everything unsent to `f` as one slice (for a transport that frames or
    /// encrypts it), then empties the output.
    pub fn take_all<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self.0.as_mut() {
            Some(b) => b.take_all(f),
            None => f(&[]),
        }
    }

    /// Gives back the buffers kept for the next write, when nothing is unsent (an
    /// idle connection being parked keeps nothing it may never use again).
    pub fn release(&mut self) {
        if self.len() == 0 {
            self.0 = None;
        }
    }

    /// Sends as much as the socket takes now, without waiting. `Ok(true)`: all sent.
    /// `Ok(false)`: the socket is full, and what is left is plain (shared ranges were
    /// copied), for a write that waits.
    pub fn send_now(&mut self, fd: RawFd) -> io::Result<bool> {
        match self.0.as_mut() {
            Some(b) => b.send_now(fd),
            None => Ok(true),
        }
    }
}

/// Unsent output and the connection's own buffer.
///
/// Either plain: `buf[sent..]` is everything unsent, or gathered: `segs` lists
/// everything unsent, own ranges (into `buf`) and shared ranges in order.
#[derive(Default)]
struct Buffers {
    buf: BytesMut,
    /// Plain: bytes at the front of `buf` already sent. The buffer is cleared, not
    /// advanced, once all is sent, so it is refilled from its start: advancing would
    /// walk every connection's writes through its whole capacity, out of the cache.
    sent: usize,
    segs: Vec<Seg>,
    /// Unsent bytes in all.
    len: usize,
}

impl Buffers {
    /// Appends with `encode` to the connection's own bytes.
    pub fn push_own(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        let start = self.buf.len();
        encode(&mut self.buf);
        let end = self.buf.len();
        self.len += end - start;
        if self.segs.is_empty() || start == end {
            return;
        }
        let last = self.segs.last_mut().expect("gathered output has ranges");
        if last.chunk.is_none() && last.end as usize == start {
            last.end = to_u32(end);
        } else {
            self.segs.push(Seg {
                chunk: None,
                start: to_u32(start),
                end: to_u32(end),
            });
        }
    }

    /// Appends a shared encoding by reference.
    pub fn push_shared(&mut self, s: &Encoded) {
        if s.start == s.end {
            return;
        }
        self.len += s.len();
        if self.segs.is_empty() {
            // From plain to gathered: what is unsent of our own goes first.
            if self.sent < self.buf.len() {
                self.segs.push(Seg {
                    chunk: None,
                    start: to_u32(self.sent),
                    end: to_u32(self.buf.len()),
                });
            }
        } else if let Some(last) = self.segs.last_mut() {
            if last.end == s.start && last.chunk.as_ref().is_some_and(|c| Rc::ptr_eq(c, &s.chunk)) {
                last.end = s.end;
                return;
            }
        }
        self.segs.push(Seg {
            chunk: Some(s.chunk.clone()),
            start: s.start,
            end: s.end,
        });
    }

    /// The plain output not yet sent (for a write that waits for the socket).
    pub fn plain_unsent(&self) -> &[u8] {
        debug_assert!(self.segs.is_empty());
        &self.buf[self.sent..]
    }

    /// `n` more bytes of plain output went to the kernel.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.segs.is_empty());
        self.sent += n;
        self.len -= n;
        if self.sent >= self.buf.len() {
            self.reset();
        }
    }

    /// Hands everything unsent to `f` as one slice (for a transport that frames or
    /// encrypts it), then empties the output.
    pub fn take_all<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        if !self.segs.is_empty() {
            self.make_plain();
        }
        let r = f(&self.buf[self.sent..]);
        self.reset();
        r
    }

    fn reset(&mut self) {
        if self.buf.capacity() > KEEP_OWN_BUFFER {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
        self.sent = 0;
        self.segs.clear();
        self.len = 0;
    }

    /// Sends as much as the socket takes now, without waiting. `Ok(true)`: all sent.
    /// `Ok(false)`: the socket is full, and what is left is plain (shared ranges were
    /// copied), for a write that waits.
    pub fn send_now(&mut self, fd: RawFd) -> io::Result<bool> {
        loop {
            if self.len == 0 {
                self.reset();
                return Ok(true);
            }
            if self.segs.is_empty() {
                match send(fd, &[IoSlice::new(&self.buf[self.sent..])]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.consume(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
                continue;
            }
            let res = {
                let n = self.segs.len().min(MAX_IOV);
                let guards: SmallVec<[Option<Ref<'_, BytesMut>>; 8]> = self.segs[..n]
                    .iter()
                    .map(|s| s.chunk.as_ref().map(|c| c.0.borrow()))
                    .collect();
                let iov: SmallVec<[IoSlice<'_>; 8]> = self.segs[..n]
                    .iter()
                    .zip(&guards)
                    .map(|(s, g)| {
                        let bytes: &[u8] = match g {
                            Some(chunk) => chunk,
                            None => &self.buf,
                        };
                        IoSlice::new(&bytes[s.start as usize..s.end as usize])
                    })
                    .collect();
                send(fd, &iov)
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance_gathered(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.make_plain();
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `n` more bytes of gathered output went to the kernel.
    fn advance_gathered(&mut self, mut n: usize) {
        self.len -= n;
        let mut done = 0;
        for s in &mut self.segs {
            let l = (s.end - s.start) as usize;
            if n < l {
                s.start += n as u32;
                break;
            }
            n -= l;
            done += 1;
        }
        self.segs.drain(..done);
        if self.segs.is_empty() {
            self.reset();
        }
    }

    /// Copies what is unsent into a plain buffer of its own, releasing the chunks.
    fn make_plain(&mut self) {
        let mut plain = BytesMut::with_capacity(self.len);
        for s in self.segs.drain(..) {
            let (start, end) = (s.start as usize, s.end as usize);
            match &s.chunk {
                Some(c) => plain.extend_from_slice(&c.0.borrow()[start..end]),
                None => plain.extend_from_slice(&self.buf[start..end]),
            }
        }
        debug_assert_eq!(plain.len(), self.len);
        self.buf = plain;
        self.sent = 0;
    }
}

/// Sends as much of `buf` as the socket takes now, without waiting; `Ok(true)` when
/// all of it went.
pub(crate) fn send_bytes(fd: RawFd, buf: &mut BytesMut) -> io::Result<bool> {
    while !buf.is_empty() {
        match send(fd, &[IoSlice::new(buf)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes::Buf::advance(buf, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// One `sendmsg` that does not wait (the socket is left blocking by the runtime).
fn send(fd: RawFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; sendmsg only reads it.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov`, which outlives the call; `fd` is open (the
        // caller's stream owns it).
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            super::count_sent(n as usize);
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        s.read_exact(&mut v).unwrap();
        v
    }

    #[test]
    fn own_and_shared_ranges_go_out_in_order_and_adjacent_ranges_merge() {
        let chunks = Chunks::default();
        let a = chunks.share(|b| b.extend_from_slice(b"AAA"));
        let b = chunks.share(|b| b.extend_from_slice(b"BB"));
        let mut out = Output::default();
        out.push_own(|b| b.extend_from_slice(b"x"));
        out.push_shared(&a);
        out.push_shared(&b);
        out.push_own(|b| b.extend_from_slice(b"yz"));
        out.push_shared(&b);
        assert_eq!(out.bufs().segs.len(), 4, "A and B are adjacent: one range");
        assert_eq!(out.len(), 1 + 3 + 2 + 2 + 2);
        let (tx, mut rx) = pair();
        assert!(out.send_now(tx.as_raw_fd()).unwrap());
        assert_eq!(out.len(), 0);
        assert!(out.bufs().segs.is_empty());
        assert_eq!(read_exact(&mut rx, 10), b"xAAABByzBB");
    }

    #[test]
    fn chunk_is_reused_once_nothing_refers_to_it() {
        let chunks = Chunks::default();
        let a = chunks.share(|b| b.extend_from_slice(b"hello"));
        let mut out = Output::default();
        out.push_shared(&a);
        drop(a);
        chunks.recycle();
        assert_eq!(
            chunks.current.borrow().0.borrow().len(),
            5,
            "still referred to"
        );
        let (tx, mut rx) = pair();
        assert!(out.send_now(tx.as_raw_fd()).unwrap());
        assert_eq!(read_exact(&mut rx, 5), b"hello");
        chunks.recycle();
        assert_eq!(chunks.current.borrow().0.borrow().len(), 0);
    }

    #[test]
    fn a_full_socket_leaves_a_plain_copy_and_releases_the_chunk() {
        let chunks = Chunks::default();
        let big = vec![7u8; 60 * 1024];
        let (tx, mut rx) = pair();
        let mut out = Output::default();
        let mut total = 0;
        // Fill the socket (loopback buffers are a few MiB at most).
        loop {
            let s = chunks.share(|b| b.extend_from_slice(&big));
            out.push_own(|b| b.extend_from_slice(b"!"));
            out.push_shared(&s);
            total += 1 + big.len();
            drop(s);
            if !out.send_now(tx.as_raw_fd()).unwrap() {
                break;
            }
            assert!(total < 64 << 20, "socket never filled");
        }
        assert!(out.bufs().segs.is_empty(), "what is left is plain");
        assert!(out.len() > 0);
        assert_eq!(Rc::strong_count(&chunks.current.borrow()), 1);
        // Everything arrives, in order, once the peer reads.
        let left = out.len();
        let sent = total - left;
        let got = read_exact(&mut rx, sent);
        let mut rest = Vec::new();
        let reader = std::thread::spawn(move || {
            rx.read_to_end(&mut rest).unwrap();
            rest
        });
        while out.len() > 0 {
            tx.set_nonblocking(false).unwrap();
            let n = std::io::Write::write(&mut &tx, out.plain_unsent()).unwrap();
            out.consume(n);
        }
        drop(tx);
        let rest = reader.join().unwrap();
        let all: Vec<u8> = got.into_iter().chain(rest).collect();
        assert_eq!(all.len(), total);
        let unit: Vec<u8> = std::iter::once(b'!').chain(big.iter().copied()).collect();
        for (i, c) in all.chunks(unit.len()).enumerate() {
            assert!(c == unit, "unit {i} differs");
        }
    }
}

//! Parked connections: an idle connection without a task or an I/O source.
//!
//! A connection that is read by a task costs that task (its future holds the whole
//! read loop) and glommio's readiness source for the socket, together about half
//! of what an idle connection costs. Most of a fleet's connections are idle most of
//! the time: a device sends a PINGREQ every keep-alive and little else. So once a
//! connection has sent nothing for `park_idle_after_ms` (30 ms, at first; see
//! below) with nothing half-read, its read times out, its reader ends
//! ([`super::End::Park`]), the glommio stream is dropped and the bare socket goes
//! into the shard's epoll set. The shard's park task waits
//! on that set (on a blocking thread, so the shard never blocks) and, when the
//! socket becomes readable or hangs up, rebuilds the stream and starts a new reader.
//!
//! The delay is short on purpose: the memory a reader frees is reused by the
//! readers of the connections that come next only if it is freed while they come.
//! Parked late, after a whole storm of connections has been read at once, readers
//! leave holes between the connections' lasting allocations that the allocator can
//! neither reuse nor give back.
//!
//! A parked connection is still a connection: the shard writes to it as to any other
//! (the writer sends on the descriptor), and closing it (keep-alive, takeover,
//! shutdown) starts its reader, which then finds it closing and ends it as usual.
//! A write that finds the socket full unparks it first, as waiting for room needs a
//! stream.
//!
//! Parking and unparking cost a few system calls and a task, so a connection that
//! is read again soon after it parked waits longer before it parks the next time
//! ([`delay`] doubles, up to about a minute): a device that publishes every few
//! seconds soon stops parking, one that only pings stays parked.
//!
//! A parked connection is found by its epoll token: its session's key on the shard
//! and the low half of its connection id, so the shard keeps no table of its own.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future::poll_fn;
use glommio::net::TcpStream;
use glommio::spawn_local;

use crate::link::{Conn, Park, Sock};
use crate::shard::Shard;
use crate::ConnectionSlot;

thread_local! {
    /// How long a new connection must have sent nothing before its reader parks it
    /// (`park_idle_after_ms`, 30 ms by default): long enough that a connection in
    /// use seldom parks between two packets, short enough that a storm's readers are
    /// gone (and their memory reused) while it goes on.
    static PARK_AFTER: Cell<Duration> = const { Cell::new(Duration::from_millis(30)) };
}

/// The highest [`delay`] level: 30 ms doubled 11 times, about a minute.
const MAX_LEVEL: u8 = 11;

/// The longest [`delay`] (unless `park_idle_after_ms` is longer still).
const LONGEST: Duration = Duration::from_millis(61_440);

/// A connection read again within this many times its delay after it parked waits
/// twice as long before it parks again.
const SOON: u32 = 16;

/// A connection that stayed parked more than this many times its delay waits half
/// as long before it parks again.
const LONG: u32 = 256;

/// How long a connection at `level` must have sent nothing before it parks.
pub(crate) fn delay(level: u8) -> Duration {
    let base = PARK_AFTER.with(Cell::get);
    (base * (1u32 << level.min(MAX_LEVEL))).min(base.max(LONGEST))
}

/// Milliseconds on this thread's clock (wraps after 49 days; only differences of
/// a few minutes matter).
fn now_ms() -> u32 {
    thread_local! {
        static EPOCH: std::time::Instant = std::time::Instant::now();
    }
    EPOCH.with(|e| e.elapsed().as_millis() as u32)
}

/// Adjusts `conn`'s [`delay`] level as it is read again after parking: up if it
/// came back soon, down if it stayed away long.
fn learn(conn: &Conn) {
    let napped = now_ms().wrapping_sub(conn.parked_at.get());
    let level = conn.park_level.get();
    let d = delay(level).as_millis() as u32;
    if napped < d.saturating_mul(SOON) {
        conn.park_level.set((level + 1).min(MAX_LEVEL));
    } else if napped > d.saturating_mul(LONG) {
        conn.park_level.set(level.saturating_sub(1));
    }
}

/// How long one wait on the epoll set lasts at most (the wait holds a blocking
/// thread; this bounds how long that thread is held after the shard stops).
const WAIT_MS: i32 = 200;

/// Events taken from the epoll set per wait.
const EVENTS: usize = 256;

/// The epoll token of the shard's eventfd, which interrupts a wait.
const WAKE: u64 = u64::MAX;

thread_local! {
    /// This shard's parking (a shard is one thread), if the epoll set could be made.
    static PARKING: RefCell<Option<Rc<Parking>>> = const { RefCell::new(None) };
}

/// One shard's epoll set and what its park task needs to know.
struct Parking {
    epoll: OwnedFd,
    /// In the epoll set; written to end a wait early (an unpark request).
    wake: OwnedFd,
    /// Parked connections something wants read again (closing them, for one).
    requests: RefCell<Vec<Rc<Conn>>>,
    /// The park task, when it waits for a first parked connection or a request.
    waiter: Cell<Option<Waker>>,
    /// The park task is waiting on the epoll set.
    in_wait: Cell<bool>,
}

/// Makes this shard's epoll set and starts its park task, for connections silent
/// for `after_ms` (0: none ever parks). Without an epoll set (the call failing is
/// not expected) connections never park.
pub(crate) fn start(shard: Rc<RefCell<Shard>>, after_ms: u32) {
    if after_ms == 0 {
        return;
    }
    PARK_AFTER.with(|p| p.set(Duration::from_millis(u64::from(after_ms))));
    let made = (|| -> io::Result<Parking> {
        // SAFETY: plain syscalls; each result is checked and owned at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `epoll` is a new descriptor owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: as above.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        epoll_ctl(
            &epoll,
            libc::EPOLL_CTL_ADD,
            wake.as_raw_fd(),
            WAKE,
            libc::EPOLLIN,
        )?;
        Ok(Parking {
            epoll,
            wake,
            requests: RefCell::new(Vec::new()),
            waiter: Cell::new(None),
            in_wait: Cell::new(false),
        })
    })();
    match made {
        Ok(p) => {
            let p = Rc::new(p);
            PARKING.with(|cell| *cell.borrow_mut() = Some(p.clone()));
            spawn_local(park_loop(shard, p)).detach();
        }
        Err(e) => tracing::warn!(error = %e, "no epoll set: idle connections keep their readers"),
    }
}

/// Whether this shard parks idle connections.
pub(crate) fn enabled() -> bool {
    PARKING.with(|cell| cell.borrow().is_some())
}

/// The epoll token of `conn`: its session's key and the low half of its id.
fn token(conn: &Conn) -> Option<u64> {
    let key = u32::try_from(conn.key.get())
        .ok()
        .filter(|&k| k != u32::MAX)?;
    Some((u64::from(key) << 32) | (conn.id & 0xffff_ffff))
}

/// Parks `conn`, whose reader just ended with [`super::End::Park`]: the stream is
/// dropped and its socket waits in the epoll set. `Err` gives the slot back when the
/// connection cannot park now (a write waits for room, it is closing or congested);
/// the caller then goes on reading.
pub(crate) fn park(
    shard: &Rc<RefCell<Shard>>,
    conn: &Rc<Conn>,
    slot: ConnectionSlot,
) -> Result<(), ConnectionSlot> {
    let Some(parking) = PARKING.with(|cell| cell.borrow().clone()) else {
        return Err(slot);
    };
    if conn.blocked.get() || conn.closing.get() || conn.congested() || shard.borrow().paused {
        return Err(slot);
    }
    let Some(token) = token(conn) else {
        return Err(slot);
    };
    let fd = conn.stream.borrow().fd();
    // SAFETY: the descriptor belongs to the connection's stream, alive for this
    // statement; the clone is a new descriptor for the same socket.
    let added = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .and_then(|owned| {
            let events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT;
            epoll_ctl(
                &parking.epoll,
                libc::EPOLL_CTL_ADD,
                owned.as_raw_fd(),
                token,
                events,
            )
            .map(|()| owned)
        });
    let owned = match added {
        Ok(owned) => owned,
        Err(e) => {
            // Out of descriptors (the open-file limit) or of epoll entries
            // (`fs.epoll.max_user_watches`): the connection keeps its reader, and
            // tries again only after the longest delay, not every few milliseconds.
            conn.park_level.set(MAX_LEVEL);
            warn_once(&e);
            return Err(slot);
        }
    };
    // Dropping the stream cancels its pending poll and closes the first descriptor.
    let live = std::mem::replace(&mut *conn.stream.borrow_mut(), Sock::Parked(owned, slot));
    drop(live);
    conn.park.set(Park::Parked);
    conn.parked_at.set(now_ms());
    // The reader's waker keeps the ended task's memory until it is dropped.
    drop(conn.reader.take());
    conn.out.borrow_mut().release();
    {
        let mut s = shard.borrow_mut();
        s.stats.connections_parked += 1;
        s.stats.parks += 1;
    }
    if let Some(w) = parking.waiter.take() {
        w.wake();
    }
    Ok(())
}

/// Logs, once per shard, why a connection could not be parked.
fn warn_once(e: &io::Error) {
    thread_local! {
        static WARNED: Cell<bool> = const { Cell::new(false) };
    }
    if !WARNED.with(|w| w.replace(true)) {
        tracing::warn!(
            error = %e,
            "an idle connection could not be parked (open-file limit or \
             fs.epoll.max_user_watches?); such connections keep their readers"
        );
    }
}

/// Asks for `conn` (parked) to be read again: its reader starts from the park task,
/// never from here, as this may run inside a borrow of the shard.
pub(crate) fn request_unpark(conn: &Rc<Conn>) {
    PARKING.with(|cell| {
        let cell = cell.borrow();
        let Some(parking) = cell.as_ref() else {
            return;
        };
        parking.requests.borrow_mut().push(conn.clone());
        if let Some(w) = parking.waiter.take() {
            w.wake();
        } else if parking.in_wait.get() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a local to the shard's eventfd.
            let _ = unsafe {
                libc::write(
                    parking.wake.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    });
}

/// Rebuilds `conn`'s stream and starts its reader again, at once. For a task that
/// needs the stream now (a write that found the socket full); holds no borrow of the
/// shard, as starting a task may run it.
pub(crate) fn unpark_now(shard: &Rc<RefCell<Shard>>, conn: &Rc<Conn>) {
    if let Some(parking) = PARKING.with(|cell| cell.borrow().clone()) {
        unpark(shard, &parking, conn);
    }
}

/// Takes `conn` out of the epoll set and starts its reader, if it is parked.
fn unpark(shard: &Rc<RefCell<Shard>>, parking: &Parking, conn: &Rc<Conn>) {
    if conn.park.get() != Park::Parked {
        return;
    }
    let sock = std::mem::replace(&mut *conn.stream.borrow_mut(), Sock::Gone);
    let Sock::Parked(owned, slot) = sock else {
        *conn.stream.borrow_mut() = sock;
        return;
    };
    {
        let mut s = shard.borrow_mut();
        s.stats.connections_parked = s.stats.connections_parked.saturating_sub(1);
    }
    let _ = epoll_ctl(&parking.epoll, libc::EPOLL_CTL_DEL, owned.as_raw_fd(), 0, 0);
    // SAFETY: `owned` is an open, connected TCP socket; ownership moves into the
    // stream, which closes it when dropped.
    let stream = unsafe { TcpStream::from_raw_fd(owned.into_raw_fd()) };
    *conn.stream.borrow_mut() = Sock::live(stream);
    conn.allow_parking();
    conn.park.set(Park::Active);
    spawn_local(super::run(
        shard.clone(),
        conn.clone(),
        BytesMut::new(),
        slot,
        true,
    ))
    .detach();
}

/// The shard's park task: unparks what was asked for, and waits on the epoll set
/// while anything is parked.
async fn park_loop(shard: Rc<RefCell<Shard>>, parking: Rc<Parking>) {
    loop {
        let asked = std::mem::take(&mut *parking.requests.borrow_mut());
        for conn in asked {
            unpark(&shard, &parking, &conn);
        }
        if shard.borrow().stats.connections_parked == 0 {
            poll_fn(|cx| {
                if shard.borrow().stats.connections_parked > 0
                    || !parking.requests.borrow().is_empty()
                {
                    return Poll::Ready(());
                }
                parking.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            continue;
        }
        let epoll = parking.epoll.as_raw_fd();
        parking.in_wait.set(true);
        let ready = glommio::executor()
            .spawn_blocking(move || wait(epoll))
            .await;
        parking.in_wait.set(false);
        for token in ready {
            if token == WAKE {
                let mut n = 0u64;
                // SAFETY: reads 8 bytes into a local from the shard's eventfd
                // (non-blocking; nothing to read is fine).
                let _ = unsafe {
                    libc::read(
                        parking.wake.as_raw_fd(),
                        (&mut n as *mut u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                continue;
            }
            let key = (token >> 32) as usize;
            let conn = shard.borrow().conn_at(key, token & 0xffff_ffff);
            // Gone meanwhile (unparked and closed): nothing to do.
            if let Some(conn) = conn {
                if conn.park.get() == Park::Parked {
                    learn(&conn);
                }
                unpark(&shard, &parking, &conn);
            }
        }
    }
}

/// One wait on the epoll set (on a blocking thread): the tokens of what is ready.
fn wait(epoll: RawFd) -> Vec<u64> {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    // SAFETY: `events` has room for EVENTS entries; `epoll` stays open while the
    // shard runs (a closed one makes the call fail, which is handled).
    let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), EVENTS as i32, WAIT_MS) };
    let n = usize::try_from(n).unwrap_or(0);
    events.truncate(n);
    events.into_iter().map(|e| e.u64).collect()
}

fn epoll_ctl(epoll: &OwnedFd, op: i32, fd: RawFd, token: u64, events: i32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: `ev` is a valid event for the call's duration.
    let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

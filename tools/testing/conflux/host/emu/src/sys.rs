// SPDX-License-Identifier: GPL-2.0

//! Thin safe wrappers over the Linux system calls the server needs and the
//! standard library lacks: eventfds, epoll, signalfd, and file descriptors
//! passed over UNIX sockets (`SCM_RIGHTS`). The memfds are in
//! [`conflux_device::shm`].

#![allow(unsafe_code)]

use std::{
    io, mem,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    ptr,
    time::Duration,
};

/// `Err(last OS error)` when `ret` is negative, `Ok(ret)` otherwise.
fn check<T: Default + PartialOrd>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor a system call just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An eventfd: a 64-bit counter that wakes pollers when it is not zero.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-blocking eventfd with a zero count.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call without pointers.
        let fd = owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        Ok(Self(fd))
    }

    /// Adds 1 to the counter: wakes whoever waits on it. A counter about
    /// to overflow already wakes its waiters, so `EAGAIN` is not an error.
    pub fn signal(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer of 8 bytes.
        let n = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        match check(n) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Another descriptor of the same eventfd.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }

    /// Reads and clears the counter; returns the sum of what was read, 0
    /// when it was already clear. The file description may be shared with
    /// another process that made it non-blocking or not: this only reads
    /// while [`poll_readable`] says it can.
    pub fn drain(&self) -> io::Result<u64> {
        let mut sum = 0u64;
        while poll_readable(self.0.as_fd(), Some(Duration::ZERO))? {
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer of 8 bytes.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match check(n) {
                Ok(8) => sum = sum.wrapping_add(u64::from_ne_bytes(buf)),
                Ok(_) => return Err(io::Error::other("short read from an eventfd")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sum)
    }
}

impl From<OwnedFd> for EventFd {
    fn from(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Whether `fd` is readable (or hung up) within `timeout` (`None`: wait
/// as long as it takes).
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
    });
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        match check(unsafe { libc::poll(&mut p, 1, ms) }) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sends an 8-byte little-endian `value` on `sock`, with `fd` attached
/// (`SCM_RIGHTS`) if given: one message of the `ivshmem` server protocol.
pub fn send_message(sock: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let data = value.to_le_bytes();
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let raw: RawFd = fd.as_raw_fd();
        // SAFETY: CMSG_SPACE and CMSG_LEN are pure computations.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32),
                libc::CMSG_LEN(mem::size_of::<RawFd>() as u32),
            )
        };
        if space as usize > mem::size_of_val(&control) {
            return Err(io::Error::other("control buffer too small"));
        }
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` has a control buffer of `space` bytes, enough for
        // one cmsghdr carrying one descriptor.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null() {
                return Err(io::Error::other("no room for a control message"));
            }
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len as _;
            ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), raw);
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = check(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    if n as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {n} of {} bytes", data.len()),
        ));
    }
    Ok(())
}

/// Receives one message that [`send_message`] sent: the value and the
/// descriptor attached to it, if any. Fails on end of file.
pub fn recv_message(sock: &UnixStream) -> io::Result<(i64, Option<OwnedFd>)> {
    let mut data = [0u8; 8];
    let mut got = 0;
    let mut fd = None;
    while got < data.len() {
        let mut iov = libc::iovec {
            iov_base: data[got..].as_mut_ptr().cast(),
            iov_len: data.len() - got,
        };
        let mut control = [0u64; 8];
        // SAFETY: a zeroed msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        let n = match check(n) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        got += n;
        // SAFETY: the kernel filled `msg_controllen` bytes of `control`;
        // the CMSG macros walk exactly those.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    // CAST: `cmsg_len` is `size_t` on glibc and `socklen_t` on musl.
                    let cmsg_len: usize = (*c).cmsg_len as _;
                    let data_len = cmsg_len - libc::CMSG_LEN(0) as usize;
                    let count = data_len / mem::size_of::<RawFd>();
                    let first = libc::CMSG_DATA(c).cast::<RawFd>();
                    for k in 0..count {
                        let raw = ptr::read_unaligned(first.add(k));
                        // Keep the first descriptor, close any other.
                        let o = OwnedFd::from_raw_fd(raw);
                        if fd.is_none() {
                            fd = Some(o);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    Ok((i64::from_le_bytes(data), fd))
}

/// An epoll instance whose events carry a `u64` token.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

/// Readable.
pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
/// The peer closed its end.
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
/// Hung up.
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
/// Error.
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call without pointers.
        Ok(Self(owned(unsafe {
            libc::epoll_create1(libc::EPOLL_CLOEXEC)
        })?))
    }

    /// Watches `fd` for `events` (`EPOLL*`), reported with `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid event for the duration of the call.
        check(unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer.
        check(unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Waits up to `timeout` (`None`: forever) for events; returns their
    /// tokens and event bits (none on timeout or on a signal).
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Vec<(u64, u32)>> {
        let ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
        });
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: `evs` has room for the number of events passed.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                evs.as_mut_ptr(),
                evs.len() as libc::c_int,
                ms,
            )
        };
        match check(n) {
            Ok(n) => Ok(evs[..n as usize]
                .iter()
                .map(|e| (e.u64, e.events))
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// A signalfd for termination signals, which it blocks for the calling
/// thread (create it before starting threads so that they inherit the
/// mask).
#[derive(Debug)]
pub struct SignalFd(OwnedFd);

impl SignalFd {
    /// Blocks `signals` and returns a non-blocking descriptor that becomes
    /// readable when one of them is pending.
    pub fn new(signals: &[libc::c_int]) -> io::Result<Self> {
        // SAFETY: `set` is initialised by sigemptyset before use.
        unsafe {
            let mut set: libc::sigset_t = mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                check(libc::sigaddset(&mut set, s))?;
            }
            let err = libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut());
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
            let fd = owned(libc::signalfd(
                -1,
                &set,
                libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
            ))?;
            Ok(Self(fd))
        }
    }

    /// The next pending signal, if any.
    pub fn read(&self) -> io::Result<Option<u32>> {
        // SAFETY: signalfd_siginfo is plain data; read fills it whole.
        unsafe {
            let mut info: libc::signalfd_siginfo = mem::zeroed();
            let size = mem::size_of::<libc::signalfd_siginfo>();
            let n = libc::read(self.0.as_raw_fd(), ptr::addr_of_mut!(info).cast(), size);
            match check(n) {
                Ok(n) if n as usize == size => Ok(Some(info.ssi_signo)),
                Ok(_) => Err(io::Error::other("short read from a signalfd")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: plain system call without pointers.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// Makes the calling thread's sleeps as short as asked: a timer slack of
/// one microsecond instead of the default 50.
pub fn fine_timers() -> io::Result<()> {
    // SAFETY: `PR_SET_TIMERSLACK` takes a value and no pointer.
    check(unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, FINE_SLACK_NS, 0, 0, 0) }).map(|_| ())
}

/// The timer slack of [`fine_timers`], in nanoseconds.
const FINE_SLACK_NS: libc::c_ulong = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_signal_and_drain() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.drain().unwrap(), 0);
        assert!(!poll_readable(e.as_fd(), Some(Duration::ZERO)).unwrap());
        e.signal().unwrap();
        e.signal().unwrap();
        assert!(poll_readable(e.as_fd(), Some(Duration::from_millis(100))).unwrap());
        assert_eq!(e.drain().unwrap(), 2);
        assert_eq!(e.drain().unwrap(), 0);
    }

    #[test]
    fn messages_carry_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let e = EventFd::new().unwrap();
        send_message(&a, 0, None).unwrap();
        send_message(&a, -1, Some(e.as_fd())).unwrap();
        send_message(&a, i64::MAX, None).unwrap();
        let (v, fd) = recv_message(&b).unwrap();
        assert_eq!((v, fd.is_none()), (0, true));
        let (v, fd) = recv_message(&b).unwrap();
        assert_eq!(v, -1);
        // The received descriptor is the same eventfd.
        let got = EventFd::from(fd.unwrap());
        got.signal().unwrap();
        assert_eq!(e.drain().unwrap(), 1);
        assert_eq!(recv_message(&b).unwrap().0, i64::MAX);
        drop(a);
        assert_eq!(
            recv_message(&b).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn epoll_reports_tokens() {
        let ep = Epoll::new().unwrap();
        let (e1, e2) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        ep.add(e1.as_fd(), 7, EPOLLIN).unwrap();
        ep.add(e2.as_fd(), 9, EPOLLIN).unwrap();
        assert!(ep.wait(Some(Duration::ZERO)).unwrap().is_empty());
        e2.signal().unwrap();
        assert_eq!(
            ep.wait(Some(Duration::from_secs(1))).unwrap(),
            [(9, EPOLLIN)]
        );
        e2.drain().unwrap();
        ep.delete(e1.as_fd()).unwrap();
        e1.signal().unwrap();
        assert!(ep.wait(Some(Duration::ZERO)).unwrap().is_empty());
        assert!(ep.delete(e1.as_fd()).is_err());
    }
}

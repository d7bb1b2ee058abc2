//! Hooks that move bytes: read/recv family (including the _FORTIFY_SOURCE
//! `__*_chk` variants, which fortified C programs call instead) and the
//! write/send family, including sendfile.
//!
//! Each one: `observe(fd)`, or `sending(fd, ..)` for sends (one relaxed
//! load for files and pipes) → the real call, unless the send is a helper
//! hint, which is consumed instead → hand the bytes that actually moved to
//! the layer (for reads, end-of-file too) → return the real result, errno
//! untouched.

use libc::{c_int, c_void, iovec, msghdr, off_t, size_t, sockaddr, socklen_t, ssize_t};

use koala_runtime::{FdKind, fdkind, sockaddr as addr};

use crate::layer::{self, Observed, Sending, Way};
use crate::real::hook;

/// Recording reads the bytes the kernel copied, so flags that leave the
/// data in the socket (MSG_PEEK) or discard it (MSG_TRUNC on TCP) are not data.
fn consumes_data(flags: c_int) -> bool {
    flags & (libc::MSG_PEEK | libc::MSG_TRUNC) == 0
}

/// The first `len` bytes of `buf`.
///
/// # Safety
/// The real call just wrote `len` bytes there.
unsafe fn bytes<'a>(buf: *const c_void, len: ssize_t) -> &'a [u8] {
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len as usize) }
}

/// Calls `with` on the first `len` bytes spread over `iov`, as slices of
/// the caller's buffers (no copy) for up to 16 iovecs, gathered beyond.
///
/// # Safety
/// `iov` points to `count` iovecs describing at least `len` valid bytes.
unsafe fn with_iov_bytes(
    iov: *const iovec,
    count: c_int,
    len: ssize_t,
    with: impl FnOnce(&[&[u8]]),
) {
    const ON_STACK: usize = 16;
    let count = count.max(0) as usize;
    let mut left = len.max(0) as usize;
    // SAFETY: per the caller; iov_base holds iov_len bytes, `take` of them in range.
    let part = |i: usize, left: usize| unsafe {
        let vec = &*iov.add(i);
        std::slice::from_raw_parts(vec.iov_base.cast::<u8>(), vec.iov_len.min(left))
    };
    if count <= ON_STACK {
        let mut parts: [&[u8]; ON_STACK] = [&[]; ON_STACK];
        let mut used = 0;
        while used < count && left > 0 {
            parts[used] = part(used, left);
            left -= parts[used].len();
            used += 1;
        }
        with(&parts[..used]);
    } else {
        let mut gathered = Vec::with_capacity(left);
        for i in 0..count {
            if left == 0 {
                break;
            }
            let bytes = part(i, left);
            gathered.extend_from_slice(bytes);
            left -= bytes.len();
        }
        with(&[&gathered]);
    }
}

/// Copies the first `len` bytes spread over `iov` (hint payloads).
///
/// # Safety
/// As [`with_iov_bytes`].
unsafe fn gather(iov: *const iovec, count: c_int, len: ssize_t) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.max(0) as usize);
    // SAFETY: per the caller.
    unsafe {
        with_iov_bytes(iov, count, len, |parts| {
            parts.iter().for_each(|p| out.extend_from_slice(p))
        })
    };
    out
}

/// Hands the bytes a call moved (`n > 0`, from or into `buf`) to the layer.
fn moved(observed: Option<Observed>, fd: c_int, way: Way, n: ssize_t, buf: *const c_void) {
    if let Some(observed) = observed.filter(|_| n > 0) {
        // SAFETY: the kernel moved n bytes to or from buf.
        observed.moved(fd, way, &[unsafe { bytes(buf, n) }]);
    }
}

/// Hands what a read of up to `requested` bytes returned to the layer: the
/// bytes (`n > 0`), or end-of-file (`n == 0`; a read of 0 bytes also
/// returns 0, and is no end-of-file).
fn received(
    observed: Option<Observed>,
    fd: c_int,
    n: ssize_t,
    buf: *const c_void,
    requested: size_t,
) {
    match observed {
        Some(observed) if n == 0 && requested > 0 => observed.peer_closed(fd),
        // SAFETY: the kernel wrote n bytes to buf.
        Some(observed) if n > 0 => observed.moved(fd, Way::Received, &[unsafe { bytes(buf, n) }]),
        _ => {}
    }
}

/// As [`received`], for a vectored read into `count` iovecs at `iov`.
///
/// # Safety
/// `iov` points to `count` valid iovecs, the first `n` bytes of which the
/// kernel filled.
unsafe fn received_iov(
    observed: Option<Observed>,
    fd: c_int,
    n: ssize_t,
    iov: *const iovec,
    count: c_int,
) {
    let Some(observed) = observed else { return };
    if n > 0 {
        // SAFETY: per the caller.
        unsafe {
            with_iov_bytes(iov, count, n, |parts| {
                observed.moved(fd, Way::Received, parts)
            })
        };
    } else if n == 0 && !iov.is_null() {
        // SAFETY: per the caller (only looked at once the read returned 0).
        let requested = (0..count.max(0) as usize).any(|i| unsafe { (*iov.add(i)).iov_len } > 0);
        if requested {
            observed.peer_closed(fd);
        }
    }
}

/// Hands the bytes a vectored call moved (`n > 0`) to the layer.
///
/// # Safety
/// The kernel moved `n` bytes across the `count` iovecs at `iov`.
unsafe fn moved_iov(
    observed: Option<Observed>,
    fd: c_int,
    way: Way,
    n: ssize_t,
    iov: *const iovec,
    count: c_int,
) {
    if let Some(observed) = observed.filter(|_| n > 0) {
        // SAFETY: per the caller.
        unsafe { with_iov_bytes(iov, count, n, |parts| observed.moved(fd, way, parts)) };
    }
}

// ---- reading -------------------------------------------------------------------

type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
type ReadChkFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t;
type RecvFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, c_int) -> ssize_t;
type RecvChkFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t, c_int) -> ssize_t;
type RecvFromFn = unsafe extern "C" fn(
    c_int,
    *mut c_void,
    size_t,
    c_int,
    *mut sockaddr,
    *mut socklen_t,
) -> ssize_t;
type RecvFromChkFn = unsafe extern "C" fn(
    c_int,
    *mut c_void,
    size_t,
    size_t,
    c_int,
    *mut sockaddr,
    *mut socklen_t,
) -> ssize_t;
type ReadvFn = unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
type RecvMsgFn = unsafe extern "C" fn(c_int, *mut msghdr, c_int) -> ssize_t;

hook! { fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t => koala_read = read_detour; }
hook! { fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buflen: size_t) -> ssize_t => koala_read_chk = read_chk_detour; }
hook! { fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t => koala_recv = recv_detour; }
hook! { fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t => koala_recv_chk = recv_chk_detour; }
hook! { fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t => koala_recvfrom = recvfrom_detour; }
hook! { fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t => koala_recvfrom_chk = recvfrom_chk_detour; }
hook! { fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t => koala_readv = readv_detour; }
hook! { fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t => koala_recvmsg = recvmsg_detour; }

/// What a `read` of up to `count` bytes into `buf` returned: from a random
/// device, randomness drawn (recorded, or the recorded bytes in replay);
/// otherwise as [`received`].
///
/// # Safety
/// The real read just returned `n` (bytes written to `buf` when positive).
unsafe fn read_returned(
    observed: Option<Observed>,
    fd: c_int,
    n: ssize_t,
    buf: *mut c_void,
    count: size_t,
) {
    match observed {
        Some(device) if device.is_random_device() => {
            if n > 0 {
                // SAFETY: per the caller.
                device.drew(unsafe { std::slice::from_raw_parts_mut(buf.cast(), n as usize) });
            }
        }
        observed => received(observed, fd, n, buf, count),
    }
}

unsafe fn read_detour(real: ReadFn, fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    let observed = layer::observe(fd);
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, count) };
    // SAFETY: the real read returned n.
    unsafe { read_returned(observed, fd, n, buf, count) };
    n
}

unsafe fn read_chk_detour(
    real: ReadChkFn,
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    buflen: size_t,
) -> ssize_t {
    let observed = layer::observe(fd);
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, count, buflen) };
    // SAFETY: the real read returned n.
    unsafe { read_returned(observed, fd, n, buf, count) };
    n
}

unsafe fn recv_detour(
    real: RecvFn,
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    let observed = layer::observe(fd).filter(|_| consumes_data(flags));
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, len, flags) };
    received(observed, fd, n, buf, len);
    n
}

unsafe fn recv_chk_detour(
    real: RecvChkFn,
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    let observed = layer::observe(fd).filter(|_| consumes_data(flags));
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, len, buflen, flags) };
    received(observed, fd, n, buf, len);
    n
}

unsafe fn recvfrom_detour(
    real: RecvFromFn,
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    let observed = layer::observe(fd).filter(|_| consumes_data(flags));
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, len, flags, addr, addr_len) };
    received(observed, fd, n, buf, len);
    n
}

#[allow(clippy::too_many_arguments)]
unsafe fn recvfrom_chk_detour(
    real: RecvFromChkFn,
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    let observed = layer::observe(fd).filter(|_| consumes_data(flags));
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, len, buflen, flags, addr, addr_len) };
    received(observed, fd, n, buf, len);
    n
}

unsafe fn readv_detour(real: ReadvFn, fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    let observed = layer::observe(fd);
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, iov, iovcnt) };
    // SAFETY: the kernel filled n bytes across iov.
    unsafe { received_iov(observed, fd, n, iov, iovcnt) };
    n
}

unsafe fn recvmsg_detour(real: RecvMsgFn, fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let observed = layer::observe(fd).filter(|_| consumes_data(flags));
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, msg, flags) };
    let observed = observed.filter(|_| !msg.is_null());
    // SAFETY: the kernel filled n bytes across msg's iovecs.
    unsafe { received_iov(observed, fd, n, (*msg).msg_iov, (*msg).msg_iovlen as c_int) };
    n
}

// ---- writing -------------------------------------------------------------------

type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type SendFn = unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> ssize_t;
type SendToFn = unsafe extern "C" fn(
    c_int,
    *const c_void,
    size_t,
    c_int,
    *const sockaddr,
    socklen_t,
) -> ssize_t;
type WritevFn = unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
type SendMsgFn = unsafe extern "C" fn(c_int, *const msghdr, c_int) -> ssize_t;
type SendFileFn = unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;

hook! { fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t => koala_write = write_detour; }
hook! { fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t => koala_send = send_detour; }
hook! { fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addr_len: socklen_t) -> ssize_t => koala_sendto = sendto_detour; }
hook! { fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t => koala_writev = writev_detour; }
hook! { fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t => koala_sendmsg = sendmsg_detour; }
hook! { fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t => koala_sendfile = sendfile_detour; }
hook! { fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t => koala_sendfile64 = sendfile_detour; }

/// A helper hint is consumed, not sent: the call reports every byte sent.
fn consume_hint(payload: &[u8], flags: c_int) -> ssize_t {
    layer::consume_hint(payload, flags);
    payload.len() as ssize_t
}

/// A hint spread over iovecs: at most one byte over the hint limit is
/// copied (enough to reject it), and the full length is reported sent.
///
/// # Safety
/// `iov` points to `count` valid iovecs.
unsafe fn consume_hint_iov(iov: *const iovec, count: c_int, flags: c_int) -> ssize_t {
    let mut total: usize = 0;
    for i in 0..count.max(0) as usize {
        // SAFETY: per the caller.
        total = total.saturating_add(unsafe { (*iov.add(i)).iov_len });
    }
    let copied = total.min(koala_hints::MAX_HINT_BYTES + 1) as ssize_t;
    // SAFETY: per the caller.
    layer::consume_hint(&unsafe { gather(iov, count, copied) }, flags);
    total.min(ssize_t::MAX as usize) as ssize_t
}

unsafe fn write_detour(real: WriteFn, fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    let sending = layer::sending(fd, std::ptr::null(), 0);
    if let Sending::Hint = sending {
        // SAFETY: the caller's buffer of `count` bytes.
        return consume_hint(unsafe { bytes(buf, count as ssize_t) }, 0);
    }
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, count) };
    moved(sending.observed(), fd, Way::Sent, n, buf);
    n
}

unsafe fn send_detour(
    real: SendFn,
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    let sending = layer::sending(fd, std::ptr::null(), 0);
    if let Sending::Hint = sending {
        // SAFETY: the caller's buffer of `len` bytes.
        return consume_hint(unsafe { bytes(buf, len as ssize_t) }, flags);
    }
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, len, flags) };
    moved(sending.observed(), fd, Way::Sent, n, buf);
    n
}

/// TCP Fast Open: `sendto`/`sendmsg` with `MSG_FASTOPEN` and a destination
/// on a TCP socket not connected yet connects and sends in one call, with no
/// connect() for the connect hook to see. It is treated as connect() is:
/// redirected to the outbound server in replay (so replay still fails
/// closed), recorded as an outbound connection; its bytes are then handed
/// over as any send's.
struct FastOpen {
    peer: std::net::SocketAddr,
    /// In replay: the address to send to instead.
    target: Option<(libc::sockaddr_storage, socklen_t)>,
}

impl FastOpen {
    /// `Some` for a fast-open send the library must see. Other sends cost
    /// one test of `flags`.
    fn starting(fd: c_int, flags: c_int, to: *const sockaddr, to_len: socklen_t) -> Option<Self> {
        if flags & libc::MSG_FASTOPEN == 0 || to.is_null() {
            return None;
        }
        let _busy = layer::enter()?;
        // Classifying an fd never seen may fail a syscall: the host's errno
        // stays as it was.
        let errno = koala_runtime::errno::get();
        let kind = fdkind::get_or_classify(fd);
        koala_runtime::errno::set(errno);
        if kind != FdKind::TcpSocket {
            return None;
        }
        // SAFETY: the caller passes `to_len` readable bytes at `to`.
        let peer = unsafe { addr::from_raw(to, to_len) }?;
        let target = layer::redirect(fd, peer);
        Some(FastOpen { peer, target })
    }

    /// Where to send: the outbound server in replay, else as asked.
    fn destination(&self, to: *const sockaddr, to_len: socklen_t) -> (*const sockaddr, socklen_t) {
        match &self.target {
            Some((target, len)) => ((target as *const libc::sockaddr_storage).cast(), *len),
            None => (to, to_len),
        }
    }

    /// The real call returned `n`: the connection is open (or opening), and
    /// the bytes sent are recorded as on any outbound connection.
    fn finish(self, fd: c_int) -> Option<Observed> {
        {
            let _busy = layer::enter()?;
            layer::connected(fd, self.peer);
        }
        layer::observe(fd)
    }
}

unsafe fn sendto_detour(
    real: SendToFn,
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addr_len: socklen_t,
) -> ssize_t {
    if let Some(open) = FastOpen::starting(fd, flags, addr, addr_len) {
        let (to, to_len) = open.destination(addr, addr_len);
        // SAFETY: the caller's arguments, the destination redirected in replay.
        let n = unsafe { real(fd, buf, len, flags, to, to_len) };
        if layer::connect_started(if n >= 0 { 0 } else { -1 }) {
            moved(open.finish(fd), fd, Way::Sent, n, buf);
        }
        return n;
    }
    let sending = layer::sending(fd, addr, addr_len);
    if let Sending::Hint = sending {
        // SAFETY: the caller's buffer of `len` bytes.
        return consume_hint(unsafe { bytes(buf, len as ssize_t) }, flags);
    }
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, buf, len, flags, addr, addr_len) };
    moved(sending.observed(), fd, Way::Sent, n, buf);
    n
}

unsafe fn writev_detour(real: WritevFn, fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    let sending = layer::sending(fd, std::ptr::null(), 0);
    if let Sending::Hint = sending {
        // SAFETY: the caller's iovecs.
        return unsafe { consume_hint_iov(iov, iovcnt, 0) };
    }
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, iov, iovcnt) };
    // SAFETY: the kernel took the first n bytes across iov.
    unsafe { moved_iov(sending.observed(), fd, Way::Sent, n, iov, iovcnt) };
    n
}

unsafe fn sendmsg_detour(real: SendMsgFn, fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // Only a fast-open send looks at the msghdr before the real call (and
    // a bad one then faults in the real call, not here): other sends pay
    // one test of their flags.
    let fast_open = if flags & libc::MSG_FASTOPEN != 0 && !msg.is_null() {
        // SAFETY: the caller's msghdr, which a fast-open send must pass.
        let (to, to_len) = unsafe { ((*msg).msg_name.cast(), (*msg).msg_namelen) };
        FastOpen::starting(fd, flags, to, to_len).map(|open| (open, to, to_len))
    } else {
        None
    };
    if let Some((open, to, to_len)) = fast_open {
        let (to, to_len) = open.destination(to, to_len);
        // SAFETY: the caller's msghdr, the destination redirected in replay.
        let mut redirected = unsafe { *msg };
        redirected.msg_name = to.cast_mut().cast();
        redirected.msg_namelen = to_len;
        // SAFETY: as the caller's, with a valid destination.
        let n = unsafe { real(fd, &redirected, flags) };
        if layer::connect_started(if n >= 0 { 0 } else { -1 }) {
            let observed = open.finish(fd);
            // SAFETY: the kernel took the first n bytes across msg's iovecs.
            unsafe {
                moved_iov(
                    observed,
                    fd,
                    Way::Sent,
                    n,
                    (*msg).msg_iov,
                    (*msg).msg_iovlen as c_int,
                )
            };
        }
        return n;
    }
    // Passive: the msghdr is not read (one relaxed load, as every hook).
    let sending = if msg.is_null() || !layer::is_active() {
        Sending::Pass
    } else {
        // SAFETY: the caller's valid msghdr.
        layer::sending(fd, unsafe { (*msg).msg_name.cast() }, unsafe {
            (*msg).msg_namelen
        })
    };
    if let Sending::Hint = sending {
        // SAFETY: the caller's iovecs.
        return unsafe { consume_hint_iov((*msg).msg_iov, (*msg).msg_iovlen as c_int, flags) };
    }
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(fd, msg, flags) };
    let observed = sending.observed();
    // SAFETY: the kernel took the first n bytes across msg's iovecs.
    unsafe {
        moved_iov(
            observed,
            fd,
            Way::Sent,
            n,
            (*msg).msg_iov,
            (*msg).msg_iovlen as c_int,
        )
    };
    n
}

unsafe fn sendfile_detour(
    real: SendFileFn,
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    // A hint is never sent with sendfile: that one goes out for real.
    let observed = layer::sending(out_fd, std::ptr::null(), 0).observed();
    // SAFETY: offset is null or the caller's valid pointer.
    let start = (observed.is_some() && !offset.is_null()).then(|| unsafe { *offset });
    // SAFETY: the caller's arguments, unchanged.
    let n = unsafe { real(out_fd, in_fd, offset, count) };
    if let Some(observed) = observed.filter(|_| n > 0) {
        observed.sent_file(out_fd, in_fd, start, n as usize);
    }
    n
}

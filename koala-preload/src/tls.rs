//! The glue of the TLS hooks (`hooks/tls.rs`): finding the caller's own
//! OpenSSL, tying an `SSL*` to its connection, and the plaintext answers
//! of a TLS connection the replayer redirected.
//!
//! **Which OpenSSL.** A process may carry two copies of libssl (Python's
//! `_ssl` uses the system one, psycopg2-binary's libpq a bundled copy with
//! a hashed soname): calling one copy's `SSL_read` on the other's `SSL*`
//! would crash the host. `dlsym(RTLD_NEXT)` finds only the first copy in
//! the global scope, and none at all when libssl was dlopen'ed locally (a
//! Python extension). So each hook is entered through a trampoline that
//! passes its return address: the object that called (`dladdr`) is opened
//! again (`RTLD_NOLOAD`: no new load) and the symbol looked up in *its*
//! dependency scope — exactly the library it was linked against. The main
//! program (nginx) binds through the global scope, where `RTLD_NEXT`
//! gives the same answer. Results are cached per call site and per object.
//!
//! **Tying an `SSL*` to its fd.** While a host thread is inside a TLS call
//! ([`Call`]), socket I/O it makes on a connection is the TLS library's
//! ciphertext: the layer marks the fd as a TLS connection (the socket
//! hooks no longer record it) and tells [`saw_fd`] which fd it was. This
//! works whatever the BIO (libcurl and libpq use their own); the fd of a
//! call that did no I/O (buffered plaintext) comes from the table of
//! `SSL*`s, or from `SSL_get_rfd` for a socket BIO.

use std::cell::Cell;
use std::ffi::{CStr, c_int, c_long, c_void};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use koala_runtime::FdKind;
use koala_runtime::errno::SavedErrno;
use koala_runtime::fdkind;

use crate::layer::{self, Way};

// ---- the caller's OpenSSL ------------------------------------------------------

pub type Ssl = *mut c_void;

/// The entry points of one libssl, as its callers bind them.
pub struct OpenSsl {
    pub read: unsafe extern "C" fn(Ssl, *mut c_void, c_int) -> c_int,
    pub read_ex: Option<unsafe extern "C" fn(Ssl, *mut c_void, usize, *mut usize) -> c_int>,
    pub peek: unsafe extern "C" fn(Ssl, *mut c_void, c_int) -> c_int,
    pub peek_ex: Option<unsafe extern "C" fn(Ssl, *mut c_void, usize, *mut usize) -> c_int>,
    pub write: unsafe extern "C" fn(Ssl, *const c_void, c_int) -> c_int,
    pub write_ex: Option<unsafe extern "C" fn(Ssl, *const c_void, usize, *mut usize) -> c_int>,
    pub do_handshake: unsafe extern "C" fn(Ssl) -> c_int,
    pub connect: unsafe extern "C" fn(Ssl) -> c_int,
    pub accept: unsafe extern "C" fn(Ssl) -> c_int,
    pub shutdown: unsafe extern "C" fn(Ssl) -> c_int,
    pub get_error: unsafe extern "C" fn(Ssl, c_int) -> c_int,
    pub get_shutdown: unsafe extern "C" fn(Ssl) -> c_int,
    pub is_init_finished: Option<unsafe extern "C" fn(Ssl) -> c_int>,
    pub get_verify_result: unsafe extern "C" fn(Ssl) -> c_long,
    pub free: unsafe extern "C" fn(Ssl),
    pub get_rbio: unsafe extern "C" fn(Ssl) -> *mut c_void,
    pub get_rfd: unsafe extern "C" fn(Ssl) -> c_int,
    pub is_server: Option<unsafe extern "C" fn(Ssl) -> c_int>,
    pub get1_peer_certificate: Option<unsafe extern "C" fn(Ssl) -> *mut c_void>,
    pub get_servername: Option<unsafe extern "C" fn(Ssl, c_int) -> *const libc::c_char>,
    /// libcrypto's, in the same scope.
    pub d2i_x509:
        Option<unsafe extern "C" fn(*mut *mut c_void, *mut *const u8, c_long) -> *mut c_void>,
    /// The object the functions were found in (`dli_fbase`), for the log.
    base: usize,
}

/// Objects resolved so far: one leaked `OpenSsl` per calling object.
const OBJECTS: usize = 32;
static BY_OBJECT: [AtomicPtr<ObjectEntry>; OBJECTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; OBJECTS];

struct ObjectEntry {
    /// `dli_fbase` of the calling object.
    caller_base: usize,
    ssl: Option<&'static OpenSsl>,
}

/// Call sites seen: `return address << 8 | object slot + 1`, direct-mapped.
const SITES: usize = 256;
static BY_SITE: [AtomicU64; SITES] = [const { AtomicU64::new(0) }; SITES];

/// A site-cache slot meaning "the call came from libkoala.so itself".
const OWN_SLOT: u64 = 0xff;

thread_local! {
    /// The libssl of the last hooked call this thread made from outside
    /// libkoala.so: the one a nested hook belongs to.
    static CURRENT: Cell<*const OpenSsl> = const { Cell::new(std::ptr::null()) };
}

/// The libssl the code at `caller` (a return address) is linked against.
/// After the first call from a site: one load and a compare.
///
/// A hook entered from libssl by a *tail call* (`SSL_connect` ends with
/// `return SSL_do_handshake(s)`, compiled as a jump) sees the return
/// address of the outer call: our own detour's call of the real
/// `SSL_connect`. Such a nested hook belongs to the libssl of the outer
/// call on the same thread ([`CURRENT`]).
#[inline]
pub fn library(caller: *const c_void) -> Option<&'static OpenSsl> {
    let address = caller as u64;
    let site = &BY_SITE[((address >> 2) as usize ^ (address >> 12) as usize) % SITES];
    let cached = site.load(Ordering::Relaxed);
    let found = if cached != 0 && cached >> 8 == address && address < 1 << 56 {
        match cached & 0xff {
            OWN_SLOT => return current(),
            slot => {
                let entry = BY_OBJECT[slot as usize - 1].load(Ordering::Acquire);
                // SAFETY: entries are leaked, never freed.
                unsafe { entry.as_ref() }.and_then(|e| e.ssl)
            }
        }
    } else {
        match resolve_for(caller, site) {
            Resolved::Own => return current(),
            Resolved::Object(found) => found,
        }
    };
    if let Some(lib) = found {
        CURRENT.with(|c| c.set(lib));
    }
    found
}

/// The libssl of the outer hooked call on this thread.
fn current() -> Option<&'static OpenSsl> {
    // SAFETY: only leaked `OpenSsl`s are stored there.
    CURRENT.with(|c| unsafe { c.get().as_ref() })
}

enum Resolved {
    /// Called from libkoala.so: a nested hook.
    Own,
    Object(Option<&'static OpenSsl>),
}

#[cold]
fn resolve_for(caller: *const c_void, site: &AtomicU64) -> Resolved {
    let errno = SavedErrno::save();
    let found = (|| {
        // SAFETY: dladdr only reads the loader's tables.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        if unsafe { libc::dladdr(caller, &mut info) } == 0 {
            return Resolved::Object(None);
        }
        let base = info.dli_fbase as usize;
        let cacheable = (caller as u64) < 1 << 56;
        if base == own_base() {
            if cacheable {
                site.store((caller as u64) << 8 | OWN_SLOT, Ordering::Relaxed);
            }
            return Resolved::Own;
        }
        let (slot, entry) = object_entry(base, info.dli_fname);
        if cacheable && (slot as u64) < OWN_SLOT - 1 {
            site.store((caller as u64) << 8 | (slot as u64 + 1), Ordering::Relaxed);
        }
        Resolved::Object(entry.ssl)
    })();
    errno.restore();
    found
}

/// The entry of the object at `base`, resolving it on first sight.
fn object_entry(base: usize, name: *const libc::c_char) -> (usize, &'static ObjectEntry) {
    for (slot, entry) in BY_OBJECT.iter().enumerate() {
        // SAFETY: entries are leaked, never freed.
        match unsafe { entry.load(Ordering::Acquire).as_ref() } {
            Some(known) if known.caller_base == base => return (slot, known),
            Some(_) => continue,
            None => {
                let fresh: &'static ObjectEntry = Box::leak(Box::new(ObjectEntry {
                    caller_base: base,
                    ssl: resolve_object(base, name),
                }));
                let pointer = fresh as *const ObjectEntry as *mut ObjectEntry;
                match entry.compare_exchange(
                    std::ptr::null_mut(),
                    pointer,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return (slot, fresh),
                    // Another thread took the slot: look again from here.
                    Err(_) => continue,
                }
            }
        }
    }
    // More calling objects than slots: resolve each time (not cached).
    let fresh: &'static ObjectEntry = Box::leak(Box::new(ObjectEntry {
        caller_base: base,
        ssl: resolve_object(base, name),
    }));
    (OBJECTS - 1, fresh)
}

/// Looks the libssl functions up in the scope of the object at `base`.
fn resolve_object(base: usize, name: *const libc::c_char) -> Option<&'static OpenSsl> {
    let main_program = is_main_program(base);
    let handle = if main_program || name.is_null() {
        libc::RTLD_NEXT
    } else {
        // SAFETY: a loaded object's own path; NOLOAD never loads anything.
        let handle = unsafe { libc::dlopen(name, libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            libc::RTLD_NEXT
        } else {
            handle
        }
    };
    let own_base = own_base();
    let find = |symbol: &CStr| -> Option<*mut c_void> {
        // SAFETY: dlsym on a valid handle with a NUL-terminated name.
        let mut address = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
        if !address.is_null() && object_base(address) == own_base {
            // Our own hook (the caller's scope reached libkoala.so): the
            // next definition is the real one.
            // SAFETY: as above.
            address = unsafe { libc::dlsym(libc::RTLD_NEXT, symbol.as_ptr()) };
        }
        (!address.is_null()).then_some(address)
    };
    macro_rules! need {
        ($name:literal) => {
            // SAFETY: the libssl function of that name has this signature.
            unsafe { as_fn(find($name)?) }
        };
    }
    macro_rules! may {
        ($name:literal) => {
            // SAFETY: as `need`.
            find($name).map(|a| unsafe { as_fn(a) })
        };
    }
    let ssl = OpenSsl {
        read: need!(c"SSL_read"),
        read_ex: may!(c"SSL_read_ex"),
        peek: need!(c"SSL_peek"),
        peek_ex: may!(c"SSL_peek_ex"),
        write: need!(c"SSL_write"),
        write_ex: may!(c"SSL_write_ex"),
        do_handshake: need!(c"SSL_do_handshake"),
        connect: need!(c"SSL_connect"),
        accept: need!(c"SSL_accept"),
        shutdown: need!(c"SSL_shutdown"),
        get_error: need!(c"SSL_get_error"),
        get_shutdown: need!(c"SSL_get_shutdown"),
        is_init_finished: may!(c"SSL_is_init_finished"),
        get_verify_result: need!(c"SSL_get_verify_result"),
        free: need!(c"SSL_free"),
        get_rbio: need!(c"SSL_get_rbio"),
        get_rfd: need!(c"SSL_get_rfd"),
        is_server: may!(c"SSL_is_server"),
        // OpenSSL 3's name, or 1.1's (the same function: a new reference;
        // each version exports only its own name).
        get1_peer_certificate: may!(c"SSL_get1_peer_certificate")
            .or_else(|| may!(c"SSL_get_peer_certificate")),
        get_servername: may!(c"SSL_get_servername"),
        d2i_x509: may!(c"d2i_X509"),
        base: object_base(find(c"SSL_read")?),
    };
    Some(Box::leak(Box::new(ssl)))
}

/// A symbol's address as its function pointer type.
///
/// # Safety
/// `F` is the function pointer type of the symbol at `address`.
unsafe fn as_fn<F: Copy>(address: *mut c_void) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    // SAFETY: per the caller.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&address) }
}

fn object_base(address: *const c_void) -> usize {
    // SAFETY: dladdr only reads the loader's tables.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    if unsafe { libc::dladdr(address, &mut info) } == 0 {
        return 0;
    }
    info.dli_fbase as usize
}

/// Where libkoala.so is loaded (looked up once).
fn own_base() -> usize {
    static OWN: AtomicUsize = AtomicUsize::new(0);
    match OWN.load(Ordering::Relaxed) {
        0 => {
            let base = object_base(own_base as *const c_void);
            OWN.store(base, Ordering::Relaxed);
            base
        }
        base => base,
    }
}

/// Whether the object at `base` is the main program: its link map (the
/// first one) has an empty name.
fn is_main_program(base: usize) -> bool {
    // SAFETY: dlopen(NULL) returns the main program's link map, which lives
    // as long as the process; only its fields are read.
    unsafe {
        let main = libc::dlopen(std::ptr::null(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if main.is_null() {
            return false;
        }
        let map = main as *const LinkMap;
        let mut info: libc::Dl_info = std::mem::zeroed();
        // The main program's l_addr is its load bias (0 unless PIE); compare
        // through an address inside it: its dynamic section.
        let inside = (*map).l_ld;
        !inside.is_null() && libc::dladdr(inside, &mut info) != 0 && info.dli_fbase as usize == base
    }
}

/// The head of glibc's `struct link_map` (public in <link.h>).
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const libc::c_char,
    l_ld: *const c_void,
}

impl OpenSsl {
    /// Where the functions were found (for the log).
    pub fn base(&self) -> usize {
        self.base
    }
}

// ---- a TLS call in progress --------------------------------------------------------

thread_local! {
    /// How deep this thread is in TLS calls (SSL_connect calls
    /// SSL_do_handshake: both hooked).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The connection the current TLS call did socket I/O on (-1: none).
    static SEEN_FD: Cell<i32> = const { Cell::new(-1) };
}

thread_local! {
    /// The connection this thread connected last, and where to: a client
    /// whose TLS library reads through its own BIO (libcurl) hides its fd,
    /// and connects just before its handshake, on the same thread.
    static LAST_CONNECTED: Cell<(i32, Option<std::net::IpAddr>)> = const { Cell::new((-1, None)) };
}

/// connect() on TCP socket `fd` to `peer` started (the layer tells).
pub fn connected(fd: i32, peer: std::net::SocketAddr) {
    LAST_CONNECTED.with(|last| last.set((fd, Some(peer.ip()))));
}

/// Whether this thread is inside a TLS call: its socket I/O on a
/// connection is the TLS library's ciphertext.
#[inline]
pub fn in_call() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// Socket I/O on `fd` (a connection of `kind`). Inside a TLS call it ties
/// the connection to TLS.
pub fn saw_fd(fd: i32, kind: FdKind) {
    if !in_call() {
        return;
    }
    SEEN_FD.with(|seen| {
        if seen.get() < 0 {
            seen.set(fd);
        }
    });
    if !matches!(kind, FdKind::InboundTls | FdKind::OutboundTls) {
        layer::tie_tls(fd, kind);
    }
}

/// A host thread inside a real TLS call (record mode).
pub struct Call {
    ssl: Ssl,
    outer_seen: i32,
}

impl Call {
    pub fn enter(ssl: Ssl) -> Call {
        DEPTH.with(|d| d.set(d.get() + 1));
        let outer_seen = SEEN_FD.with(|s| s.replace(-1));
        Call { ssl, outer_seen }
    }

    /// The call returned; `moved` bytes of `buf` went `way` (0: none), and
    /// `eof` if a read saw the peer's close. Records the plaintext.
    pub fn done(self, lib: &OpenSsl, way: Way, buf: *const c_void, moved: usize, eof: bool) {
        let seen = SEEN_FD.with(|s| s.replace(self.outer_seen));
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if moved == 0 && !eof && seen < 0 {
            return;
        }
        let errno = SavedErrno::save();
        layer::contain("tls call", || {
            let fd = if seen >= 0 {
                table::remember(self.ssl, seen);
                seen
            } else {
                match fd_of(lib, self.ssl) {
                    Some(fd) => fd,
                    None => return,
                }
            };
            if !fdkind::get(fd).is_connection() {
                return;
            }
            layer::tie_tls(fd, fdkind::get(fd));
            let Some(observed) = layer::observe_tls(fd) else {
                return;
            };
            if moved > 0 {
                // SAFETY: the TLS library moved `moved` bytes of `buf`.
                let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), moved) };
                observed.moved(fd, way, &[bytes]);
            } else if eof {
                observed.peer_closed(fd);
            }
        });
        errno.restore();
    }
}

/// The fd `ssl` was tied to, or (a socket BIO) the fd of its read BIO.
fn fd_of(lib: &OpenSsl, ssl: Ssl) -> Option<i32> {
    if let Some(fd) = table::fd(ssl) {
        return Some(fd);
    }
    // SAFETY: plain accessors of the caller's own libssl on its SSL*; the
    // read BIO is checked first, as SSL_get_rfd would raise an error on the
    // error queue without one.
    let fd = unsafe {
        if (lib.get_rbio)(ssl).is_null() {
            return None;
        }
        (lib.get_rfd)(ssl)
    };
    (fd >= 0).then(|| {
        table::remember(ssl, fd);
        fd
    })
}

// ---- replay: TLS answered in plaintext ---------------------------------------------

/// The `SSL_get_error` answers of faked connections.
pub const SSL_ERROR_NONE: c_int = 0;
pub const SSL_ERROR_WANT_READ: c_int = 2;
pub const SSL_ERROR_WANT_WRITE: c_int = 3;
pub const SSL_ERROR_SYSCALL: c_int = 5;
pub const SSL_ERROR_ZERO_RETURN: c_int = 6;
pub const SSL_SENT_SHUTDOWN: c_int = 1;
pub const SSL_RECEIVED_SHUTDOWN: c_int = 2;

/// A TLS connection the replayer redirected: its TLS calls are answered in
/// plaintext on `fd`, the handshake succeeds without I/O.
#[derive(Clone, Copy)]
pub struct Faked {
    ssl: Ssl,
    pub fd: i32,
}

/// In replay mode: the faked connection of `ssl`, deciding on first sight
/// (`decide`: a handshake or data call; other calls only look). Faked only
/// when `ssl` is a client whose fd the replayer redirected to its outbound
/// server (its socket BIO's fd; for a BIO of the client's own, which hides
/// it, the connection this thread connected last), or a server whose fd carries a request the
/// replayer's inbound server injected: nothing real is on the other end to
/// talk TLS with.
pub fn faked(lib: &OpenSsl, ssl: Ssl, decide: bool) -> Option<Faked> {
    faked_as(lib, ssl, decide, None)
}

/// [`faked`] from a handshake entry point that says which side `ssl` is
/// (`SSL_connect`: a client, `SSL_accept`: a server). Before its handshake
/// an `SSL*` of a context made with the generic `TLS_method` (libpq's)
/// reports itself a server (`SSL_is_server`) until `SSL_connect` sets it.
pub fn faked_as(lib: &OpenSsl, ssl: Ssl, decide: bool, server: Option<bool>) -> Option<Faked> {
    if ssl.is_null() || !layer::is_active() {
        return None;
    }
    match table::state(ssl) {
        Some(state) if state & table::FAKED != 0 => {
            return Some(Faked {
                ssl,
                fd: table::fd(ssl)?,
            });
        }
        Some(state) if state & table::REAL != 0 => return None,
        _ => {}
    }
    if !decide {
        return None;
    }
    let _busy = layer::enter()?;
    let errno = SavedErrno::save();
    let mut fake = None;
    layer::contain("tls replay", || {
        // SAFETY: accessors of the caller's own libssl (see fd_of).
        let (fd, server) = unsafe {
            if (lib.get_rbio)(ssl).is_null() {
                return;
            }
            let server = server.unwrap_or_else(|| lib.is_server.is_some_and(|f| f(ssl) == 1));
            ((lib.get_rfd)(ssl), server)
        };
        // A BIO of the client's own (libcurl): the connection this thread
        // just connected.
        let fd = match fd {
            -1 if !server => LAST_CONNECTED.with(Cell::get).0,
            fd => fd,
        };
        let kind = fdkind::get(fd);
        let redirected = fd >= 0
            && !server
            && matches!(kind, FdKind::Outbound | FdKind::OutboundTls)
            && layer::tls_redirected(fd);
        let injected = fd >= 0
            && server
            && matches!(kind, FdKind::Inbound | FdKind::InboundTls)
            && layer::tls_injected(fd);
        // An injected request starts with the inbound server's marker byte;
        // a redirected client may be shown a stand-in peer certificate.
        let flags = if injected {
            table::FAKED | table::MARKER
        } else {
            table::FAKED | table::CLIENT
        };
        if (redirected || injected) && table::insert(ssl, fd, flags) {
            layer::tie_tls(fd, kind);
            tracing::debug!(
                fd,
                libssl = format_args!("{:#x}", lib.base()),
                "replay: TLS on a redirected connection answered in plaintext"
            );
            fake = Some(Faked { ssl, fd });
        } else if fd >= 0 {
            table::insert(ssl, fd, table::REAL);
        }
    });
    errno.restore();
    fake
}

/// Whether `ssl` is a faked connection (no decision made here).
pub fn is_faked(ssl: Ssl) -> bool {
    table::state(ssl).is_some_and(|s| s & table::FAKED != 0)
}

impl Faked {
    fn set_error(&self, error: c_int) {
        table::set_error(self.ssl, error);
    }

    /// SSL_read/SSL_peek as a plain read: the bytes read, 0 at end-of-file
    /// (SSL_ERROR_ZERO_RETURN, as after the peer's close_notify), -1 with
    /// SSL_ERROR_WANT_READ when a non-blocking socket has nothing yet, or
    /// SSL_ERROR_SYSCALL with errno for other failures.
    pub fn read(&self, buf: *mut c_void, len: usize, peek: bool) -> isize {
        self.take_marker();
        let flags = if peek { libc::MSG_PEEK } else { 0 };
        // SAFETY: the caller's buffer of `len` bytes; the host's own fd.
        let n = unsafe { libc::recv(self.fd, buf, len, flags) };
        if n > 0 {
            self.set_error(SSL_ERROR_NONE);
            if !peek {
                self.record(Way::Received, buf, n as usize);
            }
        } else if n == 0 && len > 0 {
            table::add_flags(self.ssl, table::EOF);
            self.set_error(SSL_ERROR_ZERO_RETURN);
            if let Some(observed) = layer::observe_tls(self.fd) {
                observed.peer_closed(self.fd);
            }
        } else if n < 0 {
            self.set_error(would_block(SSL_ERROR_WANT_READ));
        }
        n
    }

    /// Before the first read of an injected request: the inbound server's
    /// marker byte ([`koala_replayer::inbound::TLS_MARKER`]) is taken off
    /// the socket, once it is there (a non-blocking socket may not have it
    /// yet: the next read tries again).
    fn take_marker(&self) {
        if table::state(self.ssl).is_none_or(|s| s & table::MARKER == 0) {
            return;
        }
        let mut byte = 0u8;
        // SAFETY: one byte into our own buffer; the host's own fd.
        let seen = unsafe { libc::recv(self.fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK) };
        if seen != 1 {
            return;
        }
        if byte == koala_replayer::inbound::TLS_MARKER {
            // SAFETY: as above.
            unsafe { libc::recv(self.fd, (&mut byte as *mut u8).cast(), 1, 0) };
        }
        table::clear_flags(self.ssl, table::MARKER);
    }

    /// SSL_write as a plain write of the whole buffer: a partial write on a
    /// non-blocking socket waits for room (the host's own socket, as a
    /// blocking SSL_write would), since SSL_write reports all or nothing.
    pub fn write(&self, buf: *const c_void, len: usize) -> isize {
        layer::tls_before_send(self.fd);
        let mut done = 0usize;
        while done < len {
            // SAFETY: the caller's buffer of `len` bytes; the host's own fd.
            let n = unsafe { libc::write(self.fd, buf.cast::<u8>().add(done).cast(), len - done) };
            if n > 0 {
                done += n as usize;
                continue;
            }
            let error = koala_runtime::errno::get();
            if n < 0 && (error == libc::EAGAIN || error == libc::EWOULDBLOCK) && done > 0 {
                let mut poll = libc::pollfd {
                    fd: self.fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut poll, 1, -1) };
                continue;
            }
            if n < 0 && error == libc::EINTR {
                continue;
            }
            if done == 0 {
                self.set_error(would_block(SSL_ERROR_WANT_WRITE));
                return -1;
            }
            break;
        }
        self.set_error(SSL_ERROR_NONE);
        self.record(Way::Sent, buf, done);
        done as isize
    }

    /// In record+replay mode, the plaintext is recorded as any TLS call's.
    fn record(&self, way: Way, buf: *const c_void, n: usize) {
        if n == 0 {
            return;
        }
        let errno = SavedErrno::save();
        if let Some(observed) = layer::observe_tls(self.fd) {
            // SAFETY: n bytes of buf just moved.
            let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) };
            observed.moved(self.fd, way, &[bytes]);
        }
        errno.restore();
    }

    /// A new reference to a stand-in certificate naming the host the client
    /// asked for (its SNI name, or the address it connected to), for
    /// clients that read the peer's certificate (libcurl, when verifying,
    /// gives up without one and checks the host name against it). Null on
    /// the server side of an injected request (a client recorded without a
    /// certificate has none), or if the caller's libcrypto cannot be
    /// reached.
    pub fn peer_certificate(&self, lib: &OpenSsl) -> *mut c_void {
        if table::state(self.ssl).is_none_or(|s| s & table::CLIENT == 0) {
            return std::ptr::null_mut();
        }
        let Some(d2i) = lib.d2i_x509 else {
            return std::ptr::null_mut();
        };
        let errno = SavedErrno::save();
        // SAFETY: an accessor of the caller's own libssl; the name it
        // returns lives as long as the SSL*.
        let dns = lib.get_servername.and_then(|f| unsafe {
            let name = f(self.ssl, 0); // TLSEXT_NAMETYPE_host_name
            (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
        });
        let ip = match LAST_CONNECTED.with(Cell::get) {
            (fd, ip) if fd == self.fd => ip,
            _ => None,
        };
        let der = koala_replayer::inbound::stand_in_certificate(dns.as_deref(), ip);
        let mut cursor = der.as_ptr();
        // SAFETY: d2i reads `der.len()` bytes at `cursor` and returns a new
        // X509 the caller owns (and frees, as a real peer certificate).
        let certificate = unsafe { d2i(std::ptr::null_mut(), &mut cursor, der.len() as c_long) };
        errno.restore();
        certificate
    }

    /// What SSL_get_error answers for a call that returned `ret`.
    pub fn error(&self, ret: c_int) -> c_int {
        if ret > 0 {
            SSL_ERROR_NONE
        } else {
            table::error(self.ssl)
        }
    }

    /// SSL_shutdown: no close_notify to send; reported done.
    pub fn shutdown(&self) -> c_int {
        table::add_flags(self.ssl, table::SENT_SHUTDOWN);
        1
    }

    /// The shutdown flags faked calls add to the real (empty) ones.
    pub fn shutdown_flags(&self) -> c_int {
        let state = table::state(self.ssl).unwrap_or(0);
        let mut flags = 0;
        if state & table::EOF != 0 {
            flags |= SSL_RECEIVED_SHUTDOWN;
        }
        if state & table::SENT_SHUTDOWN != 0 {
            flags |= SSL_SENT_SHUTDOWN;
        }
        flags
    }
}

/// The error a failed socket call maps to: `retry` for a call that would
/// block (or was interrupted, which the socket BIO retries as well).
fn would_block(retry: c_int) -> c_int {
    match koala_runtime::errno::get() {
        libc::EAGAIN | libc::EINTR => retry,
        #[allow(unreachable_patterns)]
        libc::EWOULDBLOCK => retry,
        _ => SSL_ERROR_SYSCALL,
    }
}

/// `SSL_free(ssl)`: its entry goes (the pointer may be reused).
pub fn forget(ssl: Ssl) {
    if layer::is_active() {
        table::remove(ssl);
    }
}

// ---- the table of SSL*s --------------------------------------------------------

/// `SSL*` → (fd, state): open addressing over atomics, no lock (the hooks
/// run on any thread, across fork, in signal-unsafe places). Full: new
/// `SSL*`s are not remembered (their fd is found per call; in replay they
/// are not faked).
mod table {
    use super::*;

    pub const FAKED: u64 = 1;
    pub const REAL: u64 = 2;
    pub const EOF: u64 = 4;
    pub const SENT_SHUTDOWN: u64 = 8;
    /// An injected request's marker byte is still on the socket.
    pub const MARKER: u64 = 16;
    /// The client side of a connection the replayer redirected.
    pub const CLIENT: u64 = 32;

    const SLOTS: usize = 4096;
    const EMPTY: usize = 0;
    const GONE: usize = 1;
    static KEYS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(EMPTY) }; SLOTS];
    /// `fd << 32 | error << 16 | flags`
    static VALUES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

    fn start(ssl: Ssl) -> usize {
        let key = ssl as usize;
        (key >> 4 ^ key >> 16) % SLOTS
    }

    fn find(ssl: Ssl) -> Option<usize> {
        let key = ssl as usize;
        let first = start(ssl);
        for i in 0..SLOTS {
            let slot = (first + i) % SLOTS;
            match KEYS[slot].load(Ordering::Acquire) {
                k if k == key => return Some(slot),
                EMPTY => return None,
                _ => {}
            }
        }
        None
    }

    /// Adds `ssl` (or updates it); false when the table is full.
    pub fn insert(ssl: Ssl, fd: i32, flags: u64) -> bool {
        let value = (fd as u32 as u64) << 32 | flags;
        if let Some(slot) = find(ssl) {
            VALUES[slot].store(value, Ordering::Release);
            return true;
        }
        let key = ssl as usize;
        let first = start(ssl);
        for i in 0..SLOTS {
            let slot = (first + i) % SLOTS;
            let current = KEYS[slot].load(Ordering::Acquire);
            if (current == EMPTY || current == GONE)
                && KEYS[slot]
                    .compare_exchange(current, key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                VALUES[slot].store(value, Ordering::Release);
                return true;
            }
        }
        false
    }

    /// Remembers the fd of a recorded `ssl` (not faked).
    pub fn remember(ssl: Ssl, fd: i32) {
        match state(ssl) {
            Some(_) if self::fd(ssl) == Some(fd) => {}
            Some(flags) => {
                insert(ssl, fd, flags & (FAKED | REAL | CLIENT));
            }
            None => {
                insert(ssl, fd, REAL);
            }
        }
    }

    pub fn fd(ssl: Ssl) -> Option<i32> {
        find(ssl).map(|slot| (VALUES[slot].load(Ordering::Acquire) >> 32) as u32 as i32)
    }

    pub fn state(ssl: Ssl) -> Option<u64> {
        find(ssl).map(|slot| VALUES[slot].load(Ordering::Acquire) & 0xffff)
    }

    pub fn error(ssl: Ssl) -> c_int {
        find(ssl).map_or(SSL_ERROR_SYSCALL, |slot| {
            (VALUES[slot].load(Ordering::Acquire) >> 16 & 0xffff) as c_int
        })
    }

    pub fn set_error(ssl: Ssl, error: c_int) {
        if let Some(slot) = find(ssl) {
            let _ = VALUES[slot].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v & !(0xffff << 16) | (error as u64 & 0xffff) << 16)
            });
        }
    }

    pub fn add_flags(ssl: Ssl, flags: u64) {
        if let Some(slot) = find(ssl) {
            VALUES[slot].fetch_or(flags, Ordering::AcqRel);
        }
    }

    pub fn clear_flags(ssl: Ssl, flags: u64) {
        if let Some(slot) = find(ssl) {
            VALUES[slot].fetch_and(!flags, Ordering::AcqRel);
        }
    }

    pub fn remove(ssl: Ssl) {
        if let Some(slot) = find(ssl) {
            VALUES[slot].store(0, Ordering::Release);
            KEYS[slot].store(GONE, Ordering::Release);
        }
    }
}

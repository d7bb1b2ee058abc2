//! What each file descriptor is, cached in a lock-free table.
//!
//! The table is a static array of atomics indexed by fd (1 MiB of .bss;
//! the kernel commits only the pages that are touched). Hooks read it with
//! one relaxed load, so the path of a file, pipe or tty costs no lock, no
//! allocation and, once the fd is classified, no syscall. Every call that
//! hands out an fd number overwrites its entry: closes can be missed (fclose,
//! raw syscalls), so a stale entry must never survive reuse of the number.

use std::sync::atomic::{AtomicU8, Ordering};

/// fds at or above this are not tracked (`/proc/sys/fs/nr_open` defaults to 2^20).
pub const MAX_TRACKED_FD: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FdKind {
    /// Never seen, or closed: classify on next use.
    Unknown = 0,
    /// A file, pipe, tty, eventfd...: never observed.
    NotSocket = 1,
    /// A socket koala ignores: unix, raw, or TCP of unknown direction.
    OtherSocket = 2,
    /// An IPv4/IPv6 TCP socket neither accepted nor connected (yet).
    TcpSocket = 3,
    /// An accepted TCP connection: the service's clients.
    Inbound = 4,
    /// A connected TCP connection: the service's dependencies.
    Outbound = 5,
    /// An IPv4/IPv6 UDP socket: may carry helper hints.
    Udp = 6,
    /// A UDP socket connected to the helper-hint address.
    Hint = 7,
    /// Opened by one of the library's own threads.
    Library = 8,
    /// An inbound connection whose bytes go through the host's TLS library:
    /// its plaintext is recorded by the TLS hooks, so the socket hooks pass
    /// its ciphertext through unrecorded.
    InboundTls = 9,
    /// An outbound connection carrying TLS, as [`FdKind::InboundTls`].
    OutboundTls = 10,
    /// `/dev/urandom` or `/dev/random`, opened by the host: what it reads
    /// from it is randomness drawn (recorded per session, handed back in
    /// replay), like `getrandom`'s.
    RandomDevice = 11,
}

impl FdKind {
    fn from_u8(value: u8) -> FdKind {
        match value {
            1 => FdKind::NotSocket,
            2 => FdKind::OtherSocket,
            3 => FdKind::TcpSocket,
            4 => FdKind::Inbound,
            5 => FdKind::Outbound,
            6 => FdKind::Udp,
            7 => FdKind::Hint,
            8 => FdKind::Library,
            9 => FdKind::InboundTls,
            10 => FdKind::OutboundTls,
            11 => FdKind::RandomDevice,
            _ => FdKind::Unknown,
        }
    }

    /// A TCP connection whose bytes are observed (through the socket
    /// hooks, or for TLS connections through the TLS hooks).
    pub fn is_connection(self) -> bool {
        matches!(
            self,
            FdKind::Inbound | FdKind::Outbound | FdKind::InboundTls | FdKind::OutboundTls
        )
    }

    /// The same connection, its bytes going through the TLS library.
    pub fn with_tls(self) -> FdKind {
        match self {
            FdKind::Inbound => FdKind::InboundTls,
            FdKind::Outbound => FdKind::OutboundTls,
            other => other,
        }
    }

    /// The direction of a connection, TLS or not.
    pub fn without_tls(self) -> FdKind {
        match self {
            FdKind::InboundTls => FdKind::Inbound,
            FdKind::OutboundTls => FdKind::Outbound,
            other => other,
        }
    }
}

/// Whether `path` (as passed to `open`) names the kernel's random devices.
/// Only these exact spellings: a relative or roundabout path to them is
/// read as a file.
pub fn is_random_device(path: &[u8]) -> bool {
    path == b"/dev/urandom" || path == b"/dev/random"
}

#[allow(clippy::declare_interior_mutable_const)]
const UNKNOWN: AtomicU8 = AtomicU8::new(0);
static KINDS: [AtomicU8; MAX_TRACKED_FD] = [UNKNOWN; MAX_TRACKED_FD];

/// The cached kind; [`FdKind::Unknown`] for negative or untracked fds.
#[inline]
pub fn get(fd: i32) -> FdKind {
    match KINDS.get(fd as u32 as usize) {
        Some(slot) => FdKind::from_u8(slot.load(Ordering::Relaxed)),
        None => FdKind::Unknown,
    }
}

#[inline]
pub fn set(fd: i32, kind: FdKind) {
    if let Some(slot) = KINDS.get(fd as u32 as usize) {
        slot.store(kind as u8, Ordering::Relaxed);
    }
}

/// The kind of `fd`, classifying it with a few syscalls if unknown.
/// Untracked fds (negative or huge) are reported as [`FdKind::NotSocket`].
#[inline]
pub fn get_or_classify(fd: i32) -> FdKind {
    if fd < 0 || fd as usize >= MAX_TRACKED_FD {
        return FdKind::NotSocket;
    }
    match get(fd) {
        FdKind::Unknown => {
            let kind = classify(fd);
            if kind != FdKind::Unknown {
                set(fd, kind);
            }
            kind
        }
        known => known,
    }
}

/// Asks the kernel what `fd` is. Sockets created before the library loaded
/// (or through calls it does not hook) are connected TCP of unknown
/// direction: they are ignored rather than guessed.
fn classify(fd: i32) -> FdKind {
    // SAFETY: plain syscalls on an fd number with valid out-pointers; a
    // closed fd just fails.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) != 0 {
            return FdKind::Unknown;
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return FdKind::NotSocket;
        }
        let domain = sockopt(fd, libc::SO_DOMAIN);
        let kind = sockopt(fd, libc::SO_TYPE);
        match (domain, kind) {
            (Some(libc::AF_INET | libc::AF_INET6), Some(libc::SOCK_STREAM)) => {
                let connected = crate::sockaddr::peer_addr(fd).is_some();
                if sockopt(fd, libc::SO_ACCEPTCONN) == Some(1) || !connected {
                    FdKind::TcpSocket
                } else {
                    FdKind::OtherSocket
                }
            }
            (Some(libc::AF_INET | libc::AF_INET6), Some(libc::SOCK_DGRAM)) => FdKind::Udp,
            _ => FdKind::OtherSocket,
        }
    }
}

/// Kind of a socket about to be created with `socket(domain, type, _)`.
pub fn kind_for_new_socket(domain: i32, socket_type: i32) -> FdKind {
    let base_type = socket_type & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    match (domain, base_type) {
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM) => FdKind::TcpSocket,
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM) => FdKind::Udp,
        _ => FdKind::OtherSocket,
    }
}

fn sockopt(fd: i32, option: i32) -> Option<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value/len are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;

    #[test]
    fn classifies_what_the_kernel_says() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(classify(file.as_raw_fd()), FdKind::NotSocket);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(classify(listener.as_raw_fd()), FdKind::TcpSocket);
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(classify(client.as_raw_fd()), FdKind::OtherSocket);
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(classify(udp.as_raw_fd()), FdKind::Udp);
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(classify(unix.as_raw_fd()), FdKind::OtherSocket);
        assert_eq!(classify(-1), FdKind::Unknown);
    }

    #[test]
    fn the_table_caches_and_resets() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let fd = file.as_raw_fd();
        set(fd, FdKind::Unknown);
        assert_eq!(get_or_classify(fd), FdKind::NotSocket);
        assert_eq!(get(fd), FdKind::NotSocket);
        set(fd, FdKind::Inbound);
        assert_eq!(get(fd), FdKind::Inbound);
        assert_eq!(get(-3), FdKind::Unknown);
        assert_eq!(get_or_classify(MAX_TRACKED_FD as i32), FdKind::NotSocket);
    }

    #[test]
    fn tls_kinds_round_trip_and_stay_connections() {
        for kind in [FdKind::InboundTls, FdKind::OutboundTls] {
            assert_eq!(FdKind::from_u8(kind as u8), kind);
            assert!(kind.is_connection());
        }
        assert_eq!(FdKind::Inbound.with_tls(), FdKind::InboundTls);
        assert_eq!(FdKind::OutboundTls.without_tls(), FdKind::Outbound);
        assert_eq!(FdKind::NotSocket.with_tls(), FdKind::NotSocket);
    }

    #[test]
    fn random_devices() {
        assert_eq!(
            FdKind::from_u8(FdKind::RandomDevice as u8),
            FdKind::RandomDevice
        );
        assert!(!FdKind::RandomDevice.is_connection());
        assert!(is_random_device(b"/dev/urandom"));
        assert!(is_random_device(b"/dev/random"));
        for other in [&b"/dev/urandom2"[..], b"dev/random", b"/dev/null", b""] {
            assert!(!is_random_device(other), "{other:?}");
        }
    }

    #[test]
    fn new_socket_kinds() {
        let stream = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        assert_eq!(
            kind_for_new_socket(libc::AF_INET6, stream),
            FdKind::TcpSocket
        );
        assert_eq!(
            kind_for_new_socket(libc::AF_INET, libc::SOCK_DGRAM),
            FdKind::Udp
        );
        assert_eq!(
            kind_for_new_socket(libc::AF_UNIX, libc::SOCK_STREAM),
            FdKind::OtherSocket
        );
    }
}

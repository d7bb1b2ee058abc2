//! Socket addresses as the kernel hands them over.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Reads an IPv4/IPv6 address from a raw `sockaddr`; `None` for other
/// families, null pointers or short lengths.
///
/// # Safety
/// `addr` must be null or point to at least `len` readable bytes.
pub unsafe fn from_raw(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes; every read below
    // is checked against `len` and uses read_unaligned.
    unsafe {
        match (*addr).sa_family as i32 {
            libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                let v4 = std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>());
                let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                let v6 = std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in6>());
                let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// A `sockaddr_storage` holding `addr`, and its length.
pub fn to_raw(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), raw) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let raw = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), raw) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The local address of a socket (getsockname).
pub fn local_addr(fd: i32) -> Option<SocketAddr> {
    query(fd, libc::getsockname)
}

/// The remote address of a connected socket (getpeername).
pub fn peer_addr(fd: i32) -> Option<SocketAddr> {
    query(fd, libc::getpeername)
}

type AddrQuery = unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32;

fn query(fd: i32, call: AddrQuery) -> Option<SocketAddr> {
    // SAFETY: storage/len are valid out-pointers of matching size.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let raw = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
        if call(fd, raw, &mut len) != 0 {
            return None;
        }
        from_raw(raw, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn raw_round_trip() {
        for text in ["127.0.0.1:8080", "[::1]:443", "[fe80::1%2]:53", "0.0.0.0:0"] {
            let addr: SocketAddr = text.parse().unwrap();
            let (storage, len) = to_raw(&addr);
            let back = unsafe { from_raw((&storage as *const libc::sockaddr_storage).cast(), len) };
            assert_eq!(back, Some(addr), "{text}");
        }
    }

    #[test]
    fn short_or_foreign_addresses_are_none() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (storage, len) = to_raw(&addr);
        let raw = (&storage as *const libc::sockaddr_storage).cast();
        assert_eq!(unsafe { from_raw(raw, len - 1) }, None);
        assert_eq!(unsafe { from_raw(std::ptr::null(), len) }, None);
        let unix: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let unix_len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(
            unsafe { from_raw((&unix as *const libc::sockaddr_un).cast(), unix_len) },
            None
        );
    }

    #[test]
    fn socket_queries() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(
            peer_addr(client.as_raw_fd()),
            Some(listener.local_addr().unwrap())
        );
        assert_eq!(
            local_addr(client.as_raw_fd()),
            Some(client.local_addr().unwrap())
        );
        assert_eq!(peer_addr(listener.as_raw_fd()), None);
    }
}

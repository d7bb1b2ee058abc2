//! The attribution tables shared by every process of the service under test.
//!
//! The outbound server must know which replayed session a request belongs
//! to, also when the request comes from a forked child (nginx workers,
//! prefork servers) that has no link to the server's memory. So the link
//! lives in shared memory, keyed by TCP port:
//!
//! - `inbound[p]`: the inbound server connects to the service from local
//!   port `p` and writes the replay id there *before* sending the request;
//!   the service's hooks (in whatever process accepted) read it at the
//!   connection's first read.
//! - `outbound[p]`: the service's connect hook writes the replay id and the
//!   original destination of a redirected connection from local port `p`
//!   as soon as connect() assigned the port, before the service can send,
//!   and refreshes the id before each send; the outbound server reads it
//!   after each request arrives (and, for a greeting, waits at accept for a
//!   slot written since the connection began).
//!
//! A write always precedes the syscall that makes the peer act on it
//! (send), and the reader reads after the matching syscall (recv)
//! returned, so the reader always sees the current value.
//!
//! The mapping is a file in /dev/shm (MAP_SHARED): forked children inherit
//! it, and `exec`'d descendants find it through `KOALA_REPLAY_TABLE`. Where
//! /dev/shm is unavailable an anonymous shared mapping serves forked children.
//!
//! Nothing is left behind for long: the creating process removes its file at
//! exit; a process killed before (SIGKILL) or replaced by `exec` leaves one,
//! which the next [`SharedTables::create`] on the machine removes (its owner
//! pid, in the name, is gone or is the creator's own earlier image).

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: u64 = 0x6b6f_616c_615f_7631; // "koala_v1"
const PORTS: usize = 1 << 16;
const SHM_DIR: &str = "/dev/shm";
/// Table files are named `koala-replay-<creator pid>-<CLOCK_REALTIME ns>`.
const FILE_PREFIX: &str = "koala-replay-";

/// The table files this program image created (normally one).
static CREATED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Where a redirected connection was going, and for which replay.
#[repr(C)]
struct OutboundSlot {
    replay: AtomicU64,
    /// CLOCK_MONOTONIC when the connection's slot was written, or [`TAKEN`]
    /// once the outbound server accepted the connection it belongs to.
    written_at: AtomicU64,
    /// family (4/6) << 16 | port
    family_port: AtomicU64,
    ip_high: AtomicU64,
    ip_low: AtomicU64,
}

/// `OutboundSlot::written_at` of a slot a connection took (or never written).
const TAKEN: u64 = 0;

#[repr(C)]
struct Layout {
    magic: AtomicU64,
    /// The process running the servers.
    server_pid: AtomicU64,
    inbound: [AtomicU64; PORTS],
    outbound: [OutboundSlot; PORTS],
}

/// The mapped tables. Lives for the whole process (never unmapped).
pub struct SharedTables {
    layout: &'static Layout,
    /// The /dev/shm file, for the creating process to remove at exit.
    path: Option<PathBuf>,
}

impl SharedTables {
    /// Creates the tables for a new replay server (in /dev/shm if possible).
    pub fn create() -> io::Result<SharedTables> {
        // Held while cleaning and creating, so that a table this image just
        // made is never taken for one of an earlier image.
        let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
        remove_stale(Path::new(SHM_DIR), &created);
        let path = Path::new(SHM_DIR).join(format!(
            "{FILE_PREFIX}{}-{}",
            std::process::id(),
            koala_runtime::clock::now_ns()
        ));
        match map_file(&path, true) {
            Ok(layout) => Ok(SharedTables {
                layout,
                path: Some({
                    created.push(path.clone());
                    path
                }),
            }),
            Err(_) => Ok(SharedTables {
                layout: map_anonymous()?,
                path: None,
            }),
        }
    }

    /// Joins the tables of an ancestor's replay server.
    pub fn open(path: &Path) -> io::Result<SharedTables> {
        let layout = map_file(path, false)?;
        Ok(SharedTables { layout, path: None })
    }

    /// The process that runs the servers these tables belong to.
    pub fn server_pid(&self) -> u32 {
        self.layout.server_pid.load(Ordering::Acquire) as u32
    }

    pub fn set_server_pid(&self, pid: u32) {
        self.layout.server_pid.store(pid as u64, Ordering::Release);
    }

    /// The file descendants open, if the tables live in one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Removes the /dev/shm file (the mapping stays valid).
    pub fn remove_file(&self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn set_inbound(&self, port: u16, replay: u64) {
        self.layout.inbound[port as usize].store(replay, Ordering::Release);
    }

    pub fn inbound(&self, port: u16) -> u64 {
        self.layout.inbound[port as usize].load(Ordering::Acquire)
    }

    /// A redirected connection from local `port` to `destination`.
    pub fn set_outbound(&self, port: u16, replay: u64, destination: SocketAddr) {
        let slot = &self.layout.outbound[port as usize];
        let (family_port, high, low) = encode(destination);
        slot.family_port.store(family_port, Ordering::Relaxed);
        slot.ip_high.store(high, Ordering::Relaxed);
        slot.ip_low.store(low, Ordering::Relaxed);
        // Never TAKEN, even at boot. Release: whoever takes the slot by this
        // time sees the destination stored above.
        let now = koala_runtime::clock::monotonic_ns().max(TAKEN + 1);
        slot.written_at.store(now, Ordering::Release);
        slot.replay.store(replay, Ordering::Release);
    }

    /// The redirected connection from local `port` is closed.
    pub fn clear_outbound(&self, port: u16) {
        let slot = &self.layout.outbound[port as usize];
        slot.replay.store(0, Ordering::Relaxed);
        slot.family_port.store(0, Ordering::Release);
    }

    /// Which replay the next bytes on connection `port` belong to.
    pub fn set_outbound_replay(&self, port: u16, replay: u64) {
        let slot = &self.layout.outbound[port as usize];
        if slot.replay.load(Ordering::Relaxed) != replay {
            slot.replay.store(replay, Ordering::Release);
        }
    }

    pub fn outbound_replay(&self, port: u16) -> u64 {
        self.layout.outbound[port as usize]
            .replay
            .load(Ordering::Acquire)
    }

    /// Takes the original destination of the connection from `port`, if its
    /// slot was written at or after `since` (CLOCK_MONOTONIC ns) and no
    /// connection took it yet: the outbound server takes it when it accepts
    /// the connection, so that another connection from the same port (a
    /// local user who bound it after the service closed it) finds none.
    /// The replay id stays, for the requests of the connection that took it.
    pub fn take_outbound_destination(&self, port: u16, since: u64) -> Option<SocketAddr> {
        let slot = &self.layout.outbound[port as usize];
        slot.replay.load(Ordering::Acquire);
        let written_at = slot.written_at.load(Ordering::Acquire);
        if written_at == TAKEN || written_at < since {
            return None;
        }
        let destination = self.outbound_destination(port)?;
        // Only one accept takes a slot, and only the one it read.
        slot.written_at
            .compare_exchange(written_at, TAKEN, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| destination)
    }

    pub fn outbound_destination(&self, port: u16) -> Option<SocketAddr> {
        let slot = &self.layout.outbound[port as usize];
        slot.replay.load(Ordering::Acquire);
        decode(
            slot.family_port.load(Ordering::Relaxed),
            slot.ip_high.load(Ordering::Relaxed),
            slot.ip_low.load(Ordering::Relaxed),
        )
    }
}

/// The pid that created the table file `name`, if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, nanos) = name.strip_prefix(FILE_PREFIX)?.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(nanos) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a table file created by `owner` may be removed by process `me`:
/// its creator is gone, or is this very process, which creates tables once
/// per program image: the file is from the image an `exec` replaced.
fn is_stale(owner: u32, me: u32, alive: impl Fn(u32) -> bool) -> bool {
    owner == me || !alive(owner)
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) }) == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the table files in `dir` whose creator is gone (SIGKILL, or
/// replaced by `exec`), except `keep` (this image's own). Best effort:
/// another user's files stay (sticky /dev/shm).
fn remove_stale(dir: &Path, keep: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if is_stale(owner, me, process_exists)
            && !keep.contains(&entry.path())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            tracing::debug!(file = %entry.path().display(), owner, "replay: removed a stale replay table");
        }
    }
}

fn encode(addr: SocketAddr) -> (u64, u64, u64) {
    let bits = match addr.ip() {
        IpAddr::V4(ip) => u32::from(ip) as u128,
        IpAddr::V6(ip) => u128::from(ip),
    };
    let family: u64 = if addr.is_ipv4() { 4 } else { 6 };
    (
        family << 16 | addr.port() as u64,
        (bits >> 64) as u64,
        bits as u64,
    )
}

fn decode(family_port: u64, high: u64, low: u64) -> Option<SocketAddr> {
    let port = family_port as u16;
    let bits = (high as u128) << 64 | low as u128;
    let ip = match family_port >> 16 {
        4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        6 => IpAddr::V6(Ipv6Addr::from(bits)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn map_file(path: &Path, create: bool) -> io::Result<&'static Layout> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let flags = libc::O_RDWR
        | libc::O_CLOEXEC
        | if create {
            libc::O_CREAT | libc::O_EXCL
        } else {
            0
        };
    // SAFETY: a valid C path; the fd is closed below (the mapping keeps the file).
    let fd = unsafe { libc::open(c_path.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let size = std::mem::size_of::<Layout>();
    // SAFETY: fd is ours; ftruncate makes a sparse file of the layout's size.
    let result = unsafe {
        if create && libc::ftruncate(fd, size as libc::off_t) != 0 {
            Err(io::Error::last_os_error())
        } else {
            map(fd, libc::MAP_SHARED)
        }
    };
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    let layout = result?;
    if create {
        layout.magic.store(MAGIC, Ordering::Release);
    } else if layout.magic.load(Ordering::Acquire) != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a koala replay table",
        ));
    }
    Ok(layout)
}

fn map_anonymous() -> io::Result<&'static Layout> {
    // SAFETY: an anonymous shared mapping, zero-filled.
    let layout = unsafe { map(-1, libc::MAP_SHARED | libc::MAP_ANONYMOUS)? };
    layout.magic.store(MAGIC, Ordering::Release);
    Ok(layout)
}

/// # Safety
/// `fd` is -1 (anonymous) or a file at least `size_of::<Layout>()` long.
unsafe fn map(fd: i32, flags: i32) -> io::Result<&'static Layout> {
    let size = std::mem::size_of::<Layout>();
    // SAFETY: per the caller; NORESERVE: pages are committed only when touched.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_NORESERVE,
            fd,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a zero-filled (or previously initialised) mapping of the
    // layout's size; atomics are valid at any bit pattern; never unmapped.
    Ok(unsafe { &*address.cast::<Layout>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_file_names_give_their_owner() {
        assert_eq!(
            owner_pid("koala-replay-4242-1700000000123456789"),
            Some(4242)
        );
        for other in [
            "koala-replay-",
            "koala-replay-4242",
            "koala-replay-4242-",
            "koala-replay--17",
            "koala-replay-42a-17",
            "koala-replay-42-17.tmp",
            "koala-replay-99999999999-1",
            "sem.koala-replay-1-2",
            "pulse-shm-1234",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn stale_means_owner_gone_or_an_earlier_image_of_this_process() {
        let alive = |pid: u32| pid == 10 || pid == 20;
        assert!(!is_stale(10, 20, alive), "a living owner keeps its table");
        assert!(is_stale(30, 20, alive), "a dead owner's table goes");
        assert!(
            is_stale(20, 20, alive),
            "this pid's table is from before exec"
        );
    }

    #[test]
    fn stale_files_are_removed_and_living_ones_kept() {
        let dir = std::env::temp_dir().join(format!("koala-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // pid 1 lives; i32::MAX is above any pid_max, so never a process.
        let living = dir.join("koala-replay-1-5");
        let dead = dir.join(format!("koala-replay-{}-5", i32::MAX));
        let own = dir.join(format!("koala-replay-{}-5", std::process::id()));
        let unrelated = dir.join(format!("other-{}-5", i32::MAX));
        let mine = dir.join(format!("koala-replay-{}-6", std::process::id()));
        for file in [&living, &dead, &own, &unrelated, &mine] {
            std::fs::write(file, b"x").unwrap();
        }
        remove_stale(&dir, std::slice::from_ref(&mine));
        let left: Vec<bool> = [&living, &dead, &own, &unrelated, &mine]
            .iter()
            .map(|f| f.exists())
            .collect();
        assert_eq!(
            left,
            [true, false, false, true, true],
            "living, dead, own from an earlier image, unrelated, this image's"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn addresses_round_trip() {
        for text in [
            "127.0.0.1:6379",
            "[::1]:443",
            "10.1.2.3:1",
            "[2001:db8::5]:65535",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let (a, b, c) = encode(addr);
            assert_eq!(decode(a, b, c), Some(addr));
        }
        assert_eq!(decode(0, 0, 0), None, "an unused slot has no destination");
    }

    #[test]
    fn a_forked_child_sees_and_writes_the_same_tables() {
        let tables = SharedTables::create().unwrap();
        let destination: SocketAddr = "10.0.0.7:3306".parse().unwrap();
        tables.set_inbound(40001, 7);
        // SAFETY: the child only touches the mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = tables.inbound(40001) == 7;
            tables.set_outbound(50001, 9, destination);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child read the parent's entry"
        );
        assert_eq!(tables.outbound_replay(50001), 9);
        assert_eq!(tables.outbound_destination(50001), Some(destination));
        tables.remove_file();
    }

    #[test]
    fn an_outbound_slot_is_taken_by_one_connection_only() {
        let tables = SharedTables::create().unwrap();
        let destination: SocketAddr = "10.0.0.7:6379".parse().unwrap();
        let port = 50002;
        tables.set_outbound(port, 3, destination);
        assert_eq!(
            tables.take_outbound_destination(port, 0),
            Some(destination),
            "the connection the slot was written for"
        );
        assert_eq!(
            tables.take_outbound_destination(port, 0),
            None,
            "another connection from the same port, within the slot's freshness"
        );
        assert_eq!(
            tables.outbound_replay(port),
            3,
            "the taking connection's requests still find their replay"
        );
        tables.set_outbound(port, 4, destination);
        assert_eq!(
            tables.take_outbound_destination(port, 0),
            Some(destination),
            "the port's next redirected connection writes a new slot"
        );
        tables.set_outbound(port, 5, destination);
        let after = koala_runtime::clock::monotonic_ns() + 1;
        assert_eq!(
            tables.take_outbound_destination(port, after),
            None,
            "a slot written before the connection began is not its own"
        );
        tables.clear_outbound(port);
        assert_eq!(
            tables.take_outbound_destination(50003, 0),
            None,
            "never written"
        );
        tables.remove_file();
    }

    #[test]
    fn a_descendant_joins_through_the_file() {
        let tables = SharedTables::create().unwrap();
        let path = tables.path().expect("/dev/shm exists here").to_path_buf();
        let joined = SharedTables::open(&path).unwrap();
        tables.set_outbound_replay(1234, 5);
        assert_eq!(joined.outbound_replay(1234), 5);
        tables.remove_file();
        let bogus = std::env::temp_dir().join(format!("koala-not-a-table-{}", std::process::id()));
        std::fs::write(&bogus, vec![0u8; std::mem::size_of::<Layout>()]).unwrap();
        assert!(
            SharedTables::open(&bogus).is_err(),
            "a file without the magic is refused"
        );
        std::fs::remove_file(bogus).unwrap();
    }
}

//! Finding the real libc functions behind the hooks.

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The next definition of a symbol after this library, resolved on first
/// use. No lock and no `Once`: if `dlsym` itself ends up in a hook, or two
/// threads race, each simply resolves again and stores the same pointer.
pub struct RealSymbol {
    name: &'static CStr,
    address: AtomicPtr<c_void>,
}

impl RealSymbol {
    pub const fn new(name: &'static CStr) -> Self {
        RealSymbol {
            name,
            address: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The address, or null if no later object defines the symbol.
    #[inline]
    pub fn get(&self) -> *mut c_void {
        let cached = self.address.load(Ordering::Relaxed);
        if !cached.is_null() {
            return cached;
        }
        // SAFETY: a valid NUL-terminated name; RTLD_NEXT is always valid here.
        let found = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        self.address.store(found, Ordering::Relaxed);
        found
    }

    /// The real function as `F`, or `None` with errno set to ENOSYS when
    /// no later object defines it (the hook then fails as libc would).
    ///
    /// # Safety
    /// `F` is the function pointer type of the symbol.
    pub unsafe fn function<F: Copy>(&self) -> Option<F> {
        const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
        let address = self.get();
        if address.is_null() {
            koala_runtime::errno::set(libc::ENOSYS);
            return None;
        }
        // SAFETY: per the caller, F is a function pointer of the symbol's type.
        Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&address) })
    }
}

/// `concat!`ed names as a `&'static CStr`, checked at compile time.
#[macro_export]
macro_rules! c_name {
    ($name:ident) => {
        match ::core::ffi::CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
            Ok(name) => name,
            Err(_) => panic!("symbol names have no NUL"),
        }
    };
}

/// Exports `$name` with redhook and hands the real function to `$detour`.
///
/// redhook calls the real function a second time if the body panics; the
/// body here cannot panic: it only resolves a pointer and calls the detour,
/// whose bookkeeping runs under `catch_unwind` (`layer::contain`). A symbol
/// that cannot be found fails like libc does (-1, ENOSYS) instead of
/// panicking in redhook's resolver.
macro_rules! hook {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $export:ident = $detour:path;) => {
        redhook::hook! {
            unsafe fn $name($($arg: $ty),*) -> $ret => $export {
                static REAL: $crate::real::RealSymbol = $crate::real::RealSymbol::new($crate::c_name!($name));
                // SAFETY: the symbol is the libc function of this signature.
                let Some(real) = (unsafe { REAL.function::<unsafe extern "C" fn($($ty),*) -> $ret>() }) else {
                    return -1 as $ret;
                };
                // SAFETY: forwarding the caller's arguments unchanged.
                unsafe { $detour(real, $($arg),*) }
            }
        }
    };
}

pub(crate) use hook;

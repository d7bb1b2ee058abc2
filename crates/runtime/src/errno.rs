//! Keeping the host's errno intact across the library's own work.

/// errno as it was when saved; [`SavedErrno::restore`] puts it back.
pub struct SavedErrno(i32);

impl SavedErrno {
    pub fn save() -> Self {
        // SAFETY: __errno_location always returns this thread's errno slot.
        SavedErrno(unsafe { *libc::__errno_location() })
    }

    pub fn restore(self) {
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// Sets errno, for fallbacks that must fail like libc does.
pub fn set(value: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = value };
}

pub fn get() -> i32 {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

//! The exported libc entry points, grouped by what they do.

mod fd;
mod io;
mod process;

//! Shared mappings of mmapable BPF arrays (lookup tables, address filters): user space writes
//! their values with aligned stores, one syscall per mapping instead of one per element.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::MapData;

/// The first `len` bytes of an mmapable array's data, mapped shared; unmapped on drop.
pub struct Mapping {
    /// Start of the mapping.
    ptr: NonNull<u8>,
    /// Bytes mapped.
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `map`'s data (`map` must be an mmapable array; `len` at most its
    /// data, a whole number of pages). The mapping keeps its own reference to the map.
    pub fn new(map: &MapData, len: usize) -> io::Result<Self> {
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks `len` and the flag.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(io::ErrorKind::Other)?;
        Ok(Self { ptr, len })
    }

    /// Maps all of `map`, an mmapable array that must have `entries` values of `value_bytes`
    /// (`what` names it in the error): a map of another size, from another build, would
    /// otherwise be mapped short or read out of bounds.
    pub fn array(map: &MapData, entries: u32, value_bytes: usize, what: &str) -> io::Result<Self> {
        let found = map.info().map_err(io::Error::other)?.max_entries();
        if found != entries {
            return Err(io::Error::other(format!(
                "{what} has {found} entries, this build uses {entries}"
            )));
        }
        Self::new(map, entries as usize * value_bytes)
    }

    /// The mapping as a slice of `T`.
    ///
    /// # Safety
    /// `T` must be plain data of an alignment the page start satisfies, and every concurrent
    /// writer (the kernel, another process) must only do what `T` tolerates: `&[T]` of
    /// non-atomic values assumes nobody else writes.
    pub unsafe fn slice<T>(&self) -> &[T] {
        // SAFETY: the caller's contract; `len` bytes are mapped for as long as `self` lives.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().cast::<T>(), self.len / size_of::<T>())
        }
    }

    /// The mapping as a mutable slice of `T`.
    ///
    /// # Safety
    /// As `slice`; readers elsewhere see each aligned value either old or new.
    pub unsafe fn slice_mut<T>(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` makes this the only slice of this mapping.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<T>(), self.len / size_of::<T>())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: process-wide shared memory; access goes through `slice`/`slice_mut`, whose callers
// uphold the aliasing rules.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

//! glibc's allocator, told to give large freed blocks back to the system.
//!
//! glibc raises its mmap threshold to the size of each large block freed
//! (up to 32 MB). After the first GeoIP reload, the next database's tables
//! (tens of MB for a city database) therefore come from the heap, and
//! freeing them leaves their pages resident: five reloads of DB-IP's full
//! city database took the service from 39 MB to 165 MB. With the threshold
//! fixed (at glibc's own default, 128 KiB; fixing it also stops it moving)
//! every large block is a mapping of its own, returned when freed: 36 MB
//! flat over the same reloads (benches/RESULTS.md).

/// Sets the threshold; called once when the service starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn return_large_blocks() {
    // SAFETY: mallopt takes plain integers and only changes the
    // allocator's parameters, under its own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Other allocators keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_large_blocks() {}

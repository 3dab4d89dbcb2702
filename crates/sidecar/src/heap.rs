//! Live-heap accounting for benchmarks (cargo feature `heap-stats`): a counting global
//! allocator that the binary installs over its own, and the census `GET /debug/heap` serves.
//!
//! Built only with the feature, so production binaries allocate straight from their
//! allocator. The counting adds no bytes to any allocation (it keeps no headers): a process
//! built with it has the same RSS as one without, and its census tells how many live
//! allocations of each exact size there are, which is how the sidecar bench explains where a
//! stream's bytes go.
//!
//! ```text
//! #[global_allocator]
//! static ALLOC: Counting<tikv_jemallocator::Jemalloc> = Counting(tikv_jemallocator::Jemalloc);
//! ```

use std::{
    alloc::{GlobalAlloc, Layout, System},
    fmt::Write as _,
    sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed},
};

/// Sizes counted exactly below this; this size and larger ones share the last slot (their
/// bytes are summed apart).
pub const TRACKED: usize = 8192;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BY_SIZE: [AtomicIsize; TRACKED + 1] = [const { AtomicIsize::new(0) }; TRACKED + 1];

/// Distinct sizes of [`TRACKED`] bytes and more kept apart (maps' tables, big buffers: few,
/// but together a large share of a stream's bytes); a size past the table's room is counted in
/// the large bytes only.
const LARGE_SLOTS: usize = 256;
/// Each large slot's size (0: free), claimed once and never given back.
static LARGE_SIZE: [AtomicUsize; LARGE_SLOTS] = [const { AtomicUsize::new(0) }; LARGE_SLOTS];
static LARGE_COUNT: [AtomicIsize; LARGE_SLOTS] = [const { AtomicIsize::new(0) }; LARGE_SLOTS];

/// Counts a large allocation of `size` by its exact size (open addressing; never allocates).
fn record_large(size: usize, delta: isize) {
    let start = size.wrapping_mul(0x9E37_79B9_7F4A_7C15) % LARGE_SLOTS;
    for i in 0..LARGE_SLOTS {
        let slot = (start + i) % LARGE_SLOTS;
        let have = LARGE_SIZE[slot].load(Relaxed);
        let mine = have == size
            || (have == 0
                && match LARGE_SIZE[slot].compare_exchange(0, size, Relaxed, Relaxed) {
                    Ok(_) => true,
                    Err(other) => other == size,
                });
        if mine {
            LARGE_COUNT[slot].fetch_add(delta, Relaxed);
            return;
        }
    }
}

/// The allocator `A` (the system's by default), counting live bytes and live allocations by
/// exact size.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting<A = System>(pub A);

fn record(size: usize, delta: isize) {
    if delta > 0 {
        LIVE_BYTES.fetch_add(size, Relaxed);
        if size >= TRACKED {
            LARGE_BYTES.fetch_add(size, Relaxed);
            record_large(size, 1);
        }
    } else {
        LIVE_BYTES.fetch_sub(size, Relaxed);
        if size >= TRACKED {
            LARGE_BYTES.fetch_sub(size, Relaxed);
            record_large(size, -1);
        }
    }
    LIVE_BY_SIZE[size.min(TRACKED)].fetch_add(delta, Relaxed);
}

// A global allocator cannot be written without `unsafe`; this one only forwards to `A` and
// counts.
#[allow(unsafe_code)]
// SAFETY: every method forwards its arguments unchanged to `A`, a `GlobalAlloc` that upholds
// the contract; the counting touches only atomics and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() {
            record(layout.size(), 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        if !ptr.is_null() {
            record(layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `A`, with `layout`.
        unsafe { self.0.dealloc(ptr, layout) };
        record(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is passed on unchanged.
        let new = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            record(layout.size(), -1);
            record(new_size, 1);
        }
        new
    }
}

/// Bytes allocated and not yet freed, process-wide.
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Relaxed)
}

/// Reads the live allocation counts by exact size into `out` (slot [`TRACKED`] stands for it
/// and every larger size). `out` is the caller's, allocated up front, so reading allocates
/// nothing and a census does not change what it counts.
pub fn read_by_size(out: &mut [isize; TRACKED + 1]) {
    for (slot, count) in out.iter_mut().zip(&LIVE_BY_SIZE) {
        *slot = count.load(Relaxed);
    }
}

/// The census as JSON: `{"liveBytes":N,"largeBytes":N,"bySize":[[size,count],...],
/// "large":[[size,count],...]}`, live allocations by exact size (the last size of `bySize`,
/// [`TRACKED`], stands for it and every larger one, whose bytes are `largeBytes`; `large` has
/// those by exact size). Taking it leaves nothing behind: its own buffer is read out of the
/// figures.
pub fn census_json() -> String {
    // Allocated before the counters are read, so it can be subtracted exactly.
    let mut counts = vec![0isize; TRACKED + 1].into_boxed_slice();
    let own = size_of_val(&*counts);
    let live = LIVE_BYTES.load(Relaxed).saturating_sub(own);
    let mut large = LARGE_BYTES.load(Relaxed);
    for (slot, count) in counts.iter_mut().zip(&LIVE_BY_SIZE) {
        *slot = count.load(Relaxed);
    }
    if own >= TRACKED {
        counts[TRACKED] -= 1;
        large = large.saturating_sub(own);
    } else {
        counts[own] -= 1;
    }
    let mut large_counts = [(0usize, 0isize); LARGE_SLOTS];
    for (out, (size, count)) in large_counts
        .iter_mut()
        .zip(LARGE_SIZE.iter().zip(&LARGE_COUNT))
    {
        *out = (size.load(Relaxed), count.load(Relaxed));
    }
    if own >= TRACKED
        && let Some(slot) = large_counts.iter_mut().find(|(s, _)| *s == own)
    {
        slot.1 -= 1;
    }
    let mut out = format!("{{\"liveBytes\":{live},\"largeBytes\":{large},\"bySize\":[");
    let mut first = true;
    for (size, &count) in counts.iter().enumerate() {
        if count != 0 {
            let comma = if first { "" } else { "," };
            first = false;
            let _ = write!(out, "{comma}[{size},{count}]");
        }
    }
    out.push_str("],\"large\":[");
    let mut first = true;
    for &(size, count) in large_counts.iter().filter(|(s, c)| *s != 0 && *c != 0) {
        let comma = if first { "" } else { "," };
        first = false;
        let _ = write!(out, "{comma}[{size},{count}]");
    }
    out.push_str("]}");
    out
}

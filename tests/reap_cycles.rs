//! 1,000 reap-and-reconnect cycles leave open file descriptors, live tokio tasks and heap bytes
//! back at their baseline: reaping releases everything a connection held.
//!
//! The heap is measured by a counting global allocator (live bytes of this whole process: the
//! emulator, the pod, its app server and an app).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use streamkeeper_api::{DropReason, StreamState, app_protocol::AppFrame, config::ReconnectSpec};
use streamkeeper_e2e::{AckMode, App, FromServer, Harness, Options};
use streamkeeper_emulator::Fault;
use tokio::time::Instant;

/// Live heap bytes of the process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes.
struct Counting;

#[allow(
    unsafe_code,
    reason = "a global allocator is unsafe by contract; this one forwards to System and counts"
)]
// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters do not touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's `layout` contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const WARM_UP: usize = 20;
const CYCLES: usize = 1_000;
const FD_TOLERANCE: usize = 2;
const TASK_TOLERANCE: usize = 2;
const HEAP_TOLERANCE: usize = 64 * 1024;

/// What one connection could leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    tasks: usize,
    heap: usize,
}

fn footprint() -> Footprint {
    Footprint {
        fds: std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .count(),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        heap: LIVE.load(Ordering::Relaxed),
    }
}

fn within(now: Footprint, base: Footprint) -> bool {
    now.fds.abs_diff(base.fds) <= FD_TOLERANCE
        && now.tasks.abs_diff(base.tasks) <= TASK_TOLERANCE
        && now.heap <= base.heap + HEAP_TOLERANCE
}

/// Samples until `ok` holds for a sample (short-lived tasks of the last cycle, such as a
/// transition publish, finish within milliseconds), at most `bound`; returns the last sample.
async fn settle(bound: Duration, mut ok: impl FnMut(Footprint) -> bool) -> Footprint {
    let deadline = Instant::now() + bound;
    loop {
        let now = footprint();
        if ok(now) || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One reap and reconnect: the emulator resets the socket, the session reaps it (tcp_error),
/// backs off and is ACTIVE again on a new socket.
async fn cycle(h: &Harness, name: &str, n: usize) {
    let id = h.stream_id(name);
    let mark = h.recorder.mark();
    let applied = h
        .emu
        .fault(Fault::Reset {
            stream: Some(name.into()),
        })
        .applied;
    assert_eq!(
        applied, 1,
        "cycle {n}: the reset reached exactly one socket"
    );
    let dropped = h
        .recorder
        .wait_for(
            mark,
            Duration::from_secs(3),
            &format!("cycle {n}: the reap"),
            |s| s.stream == id && s.is_any_drop(),
        )
        .await;
    assert!(
        dropped.is_dropped(DropReason::TcpError),
        "cycle {n}: {:?}",
        dropped.event
    );
    h.recorder
        .wait_for(
            dropped.index,
            Duration::from_secs(3),
            &format!("cycle {n}: ACTIVE again"),
            |s| s.stream == id && s.is_state(StreamState::Active),
        )
        .await;
    h.recorder.forget();
}

/// Reads what the app got; returns the `dropped` frames among it.
fn drain_drops(app: &mut App) -> usize {
    app.drain()
        .iter()
        .map(|seen| match seen {
            FromServer::Frame(AppFrame::Dropped { reason, .. }) => {
                assert_eq!(*reason, DropReason::TcpError);
                1
            }
            FromServer::Frame(_) => 0,
            other => panic!("the app socket ended: {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reap_and_reconnect_cycles_leave_fds_tasks_and_heap_at_baseline() {
    let name = "reaped";
    let opts = Options {
        event_interval: Duration::ZERO,
        reconnect: ReconnectSpec {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        history: 16,
        ..Options::new(&[name])
    };
    let h = Harness::start(opts).await;
    let id = h.stream_id(name);
    h.wait_active(&id).await;
    h.recorder.forget();
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;

    let mut drops = 0;
    for n in 0..WARM_UP {
        cycle(&h, name, n).await;
        drops += drain_drops(&mut app);
    }
    // The baseline: a sample that holds still for a moment (two in a row, 10 ms apart).
    let mut prev = footprint();
    let base = settle(Duration::from_secs(2), |now| {
        let same = now.fds == prev.fds && now.tasks == prev.tasks;
        prev = now;
        same
    })
    .await;

    let started = Instant::now();
    for n in 0..CYCLES {
        cycle(&h, name, WARM_UP + n).await;
        drops += drain_drops(&mut app);
    }
    let took = started.elapsed();
    let end = settle(Duration::from_secs(3), |now| within(now, base)).await;
    // The app heard every reap (the last `dropped` may still be on its way).
    let deadline = Instant::now() + Duration::from_secs(2);
    while drops < WARM_UP + CYCLES {
        match app
            .try_recv(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(FromServer::Frame(AppFrame::Dropped { .. })) => drops += 1,
            Some(FromServer::Frame(_)) => {}
            Some(other) => panic!("the app socket ended: {other:?}"),
            None => break,
        }
    }
    eprintln!(
        "{CYCLES} cycles in {took:?} ({:.1} ms each): fds {} -> {}, tasks {} -> {}, heap {} -> {} bytes ({:+}); \
         {drops} dropped frames; emulator saw {} connections",
        took.as_secs_f64() * 1000.0 / CYCLES as f64,
        base.fds,
        end.fds,
        base.tasks,
        end.tasks,
        base.heap,
        end.heap,
        end.heap as i64 - base.heap as i64,
        h.emu.stats().connections_total,
    );
    assert!(
        end.fds.abs_diff(base.fds) <= FD_TOLERANCE,
        "open fds {} -> {}",
        base.fds,
        end.fds
    );
    assert!(
        end.tasks.abs_diff(base.tasks) <= TASK_TOLERANCE,
        "alive tasks {} -> {}",
        base.tasks,
        end.tasks
    );
    assert!(
        end.heap <= base.heap + HEAP_TOLERANCE,
        "live heap grew by {} bytes over {CYCLES} cycles",
        end.heap - base.heap
    );
    assert_eq!(
        h.emu.stats().connections_open,
        1,
        "the emulator holds only the live socket"
    );
    assert_eq!(
        drops,
        WARM_UP + CYCLES,
        "the app heard a `dropped` for every reap"
    );
    drop(app);
    h.shutdown().await;
}

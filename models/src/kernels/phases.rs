//! A fixed sequence of phases, each of independent tasks, run by every pool thread that
//! joins in, with no fork and join between phases.
//!
//! A decoder step is about 200 small parallel pieces of work (projections, attention
//! heads), each of a few tens of microseconds. Run as separate parallel regions, every
//! region wakes the pool, waits for its slowest task and leaves the other threads idle
//! through the serial code between regions. Here the thread that finishes a phase's last
//! task prepares the next phase (normalising, quantizing) and publishes it, and the
//! others, spinning meanwhile, start on it at once.
//!
//! Each phase's tasks are split into one contiguous segment per pool thread, and a thread
//! works through its own segment in order before taking what is left of the others': the
//! tasks of a projection are consecutive rows of its weights, and a thread streaming
//! through adjacent memory keeps the hardware prefetcher ahead of it (handing out tasks
//! alternately measured no faster than forking and joining). Every segment's counter
//! carries the phase's number with the next task's index, so a claim is one atomic add.
//! No thread ever waits for one that has not joined: segments of threads that never get
//! to run are taken by the others, so the work finishes on any number of threads, and two
//! steps never wait on each other.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Spins while waiting for the next phase before yielding the core to other threads.
const SPINS_BEFORE_YIELD: u32 = 256;

/// Runs `phases` phases of `tasks(p)` tasks each. `prepare(p)` runs once before phase
/// `p`'s tasks, on one thread, after every task of the phases before it has finished;
/// `task(scratch, p, i)` runs once for every `i < tasks(p)`, on any thread, with that
/// thread's `scratch` (made by `scratch()` when the thread joins). Every write of a
/// phase's tasks is visible to the next phase's `prepare` and tasks.
///
/// The calling thread works through every phase itself; as many other pool threads as
/// join in share the tasks.
pub(crate) fn run<S>(
    phases: usize,
    tasks: impl Fn(usize) -> usize + Sync,
    prepare: impl Fn(usize) + Sync,
    task: impl Fn(&mut S, usize, usize) + Sync,
    scratch: impl Fn() -> S + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let state = State {
        segments: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        phase: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        joined: AtomicUsize::new(0),
        phases,
        panic: Mutex::new(None),
    };
    state.publish(state.next_with_tasks(0, &tasks, &prepare));
    let work = || state.work(&tasks, &prepare, &task, scratch());
    if threads == 1 || state.phase.load(Ordering::Relaxed) == phases {
        work();
    } else {
        rayon::scope(|s| {
            for _ in 1..threads {
                s.spawn(|_| work());
            }
            work();
        });
    }
    let panic = state.panic.into_inner();
    if let Some(payload) = panic.unwrap_or_else(PoisonError::into_inner) {
        std::panic::resume_unwind(payload);
    }
}

/// A segment's counter: the phase in the high 32 bits, the segment's next task in the low
/// 32 (claims past the segment's end push it further, harmlessly).
fn pack(phase: usize, task: usize) -> u64 {
    ((phase as u64) << 32) | task as u64
}

fn unpack(claim: u64) -> (usize, usize) {
    (
        (claim >> 32) as usize,
        (claim & u64::from(u32::MAX)) as usize,
    )
}

struct State {
    /// One claim counter per thread's segment.
    segments: Vec<AtomicU64>,
    /// The phase being run (`phases` once all are done), published after its segments.
    phase: AtomicUsize,
    /// Tasks of the current phase finished so far.
    finished: AtomicUsize,
    /// Threads that have joined, numbering them.
    joined: AtomicUsize,
    phases: usize,
    /// The first panic of a task or a preparation, raised again on the calling thread once
    /// every thread has stopped (it ends the run: no other thread waits for its phase).
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl State {
    /// Prepares phases from `phase` on until one has tasks; returns it, or `phases` when
    /// none is left.
    fn next_with_tasks(
        &self,
        mut phase: usize,
        tasks: &impl Fn(usize) -> usize,
        prepare: &impl Fn(usize),
    ) -> usize {
        while phase < self.phases {
            if !self.guarded(|| prepare(phase)) {
                return self.phases;
            }
            if tasks(phase) > 0 {
                break;
            }
            phase += 1;
        }
        phase
    }

    /// Runs `f`; on a panic, keeps the first one and ends the run (returns `false`).
    fn guarded(&self, f: impl FnOnce()) -> bool {
        let Err(payload) = catch_unwind(AssertUnwindSafe(f)) else {
            return true;
        };
        let mut panic = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
        panic.get_or_insert(payload);
        drop(panic);
        self.publish(self.phases);
        false
    }

    /// Opens `phase`'s segments, then announces it (after a panic, the end instead).
    /// Release: what the phase before wrote and what its preparation wrote reach every
    /// thread that claims one of its tasks. The announced phase never goes back, even if
    /// this thread is preempted between the two steps while later phases run.
    fn publish(&self, phase: usize) {
        let panicked = self.panic.lock().map_or(true, |panic| panic.is_some());
        let phase = if panicked { self.phases } else { phase };
        self.finished.store(0, Ordering::Relaxed);
        for segment in &self.segments {
            segment.store(pack(phase, 0), Ordering::Release);
        }
        self.phase.fetch_max(phase, Ordering::Release);
    }

    /// Tasks `range` of a phase of `count` tasks form segment `s`.
    fn segment(&self, count: usize, s: usize) -> std::ops::Range<usize> {
        let n = self.segments.len();
        count * s / n..count * (s + 1) / n
    }

    /// One thread's part: claims and runs tasks, its own segment first, until the last
    /// phase is done.
    fn work<S>(
        &self,
        tasks: &impl Fn(usize) -> usize,
        prepare: &impl Fn(usize),
        task: &impl Fn(&mut S, usize, usize),
        mut scratch: S,
    ) {
        let n = self.segments.len();
        let me = self.joined.fetch_add(1, Ordering::Relaxed) % n;
        loop {
            let phase = self.phase.load(Ordering::Acquire);
            if phase >= self.phases {
                return;
            }
            'segments: for s in (me..me + n).map(|s| s % n) {
                loop {
                    // A segment may already hold a later phase than the one read above;
                    // its claim is then that phase's, and valid.
                    let (p, i) = unpack(self.segments[s].fetch_add(1, Ordering::Acquire));
                    if p >= self.phases {
                        return;
                    }
                    let count = tasks(p);
                    let range = self.segment(count, s);
                    if i >= range.len() {
                        break;
                    }
                    if !self.guarded(|| task(&mut scratch, p, range.start + i)) {
                        return;
                    }
                    // The last task's thread acquires every other task's writes through
                    // this counter, prepares the next phase and releases it.
                    if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == count {
                        self.publish(self.next_with_tasks(p + 1, tasks, prepare));
                    }
                    if self.phase.load(Ordering::Relaxed) != phase {
                        // A later phase has begun: start it from this thread's segment.
                        break 'segments;
                    }
                }
            }
            // Every task of the phase is taken: wait for its last one to finish.
            let mut spins = 0u32;
            while self.phase.load(Ordering::Acquire) == phase {
                if spins < SPINS_BEFORE_YIELD {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// A value that [`run`]'s `prepare` rewrites (no task runs then) and the tasks only read.
pub(crate) struct Shared<T> {
    cell: UnsafeCell<T>,
}

// SAFETY: access goes through the unsafe methods below, whose callers promise that no two
// threads touch the same value or element at once unless both only read.
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            cell: UnsafeCell::new(value),
        }
    }

    /// The whole value, to read.
    ///
    /// # Safety
    ///
    /// No thread may write any part of it while the reference lives.
    pub(crate) unsafe fn get(&self) -> &T {
        // SAFETY: nobody writes the value while the reference lives (the caller's contract).
        unsafe { &*self.cell.get() }
    }

    /// The whole value, to write.
    ///
    /// # Safety
    ///
    /// No other thread may read or write any part of it while the reference lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn whole_mut(&self) -> &mut T {
        // SAFETY: nobody else reads or writes the value while the reference lives (the
        // caller's contract).
        unsafe { &mut *self.cell.get() }
    }
}

/// A slice that a phase's tasks write in disjoint ranges while the others read ranges
/// nobody writes in that phase. Its elements are cells, so taking one range mutably never
/// borrows the others.
pub(crate) struct SharedSlice<E> {
    cells: Box<[UnsafeCell<E>]>,
}

// SAFETY: as for `Shared`.
unsafe impl<E: Send + Sync> Sync for SharedSlice<E> {}

impl<E> SharedSlice<E> {
    /// Shares `values` without copying them (zeroed pages stay unmapped until written).
    pub(crate) fn new(values: Vec<E>) -> Self {
        let values = Box::into_raw(values.into_boxed_slice());
        // SAFETY: `UnsafeCell<E>` has the layout of `E`, so the allocation holds the same
        // elements as cells, and the box takes it over.
        let cells = unsafe { Box::from_raw(values as *mut [UnsafeCell<E>]) };
        Self { cells }
    }

    /// Elements in the slice.
    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    /// Where the elements start, for prefetching: reads through it need the same care as
    /// [`Self::slice`].
    pub(crate) fn as_ptr(&self) -> *const E {
        UnsafeCell::raw_get(self.cells.as_ptr())
    }

    /// Every element, mutably, where no other reference exists.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [E] {
        let len = self.cells.len();
        // SAFETY: `&mut self` excludes every other access; cells have `E`'s layout.
        unsafe { std::slice::from_raw_parts_mut(self.cells.as_mut_ptr().cast(), len) }
    }

    /// Elements `range`, to read.
    ///
    /// # Safety
    ///
    /// No thread may write any of them while the slice lives.
    pub(crate) unsafe fn slice(&self, range: std::ops::Range<usize>) -> &[E] {
        let cells = &self.cells[range];
        // SAFETY: cells have `E`'s layout, and nobody writes these while the slice lives
        // (the caller's contract).
        unsafe { std::slice::from_raw_parts(UnsafeCell::raw_get(cells.as_ptr()), cells.len()) }
    }

    /// Elements `range`, to write.
    ///
    /// # Safety
    ///
    /// No other thread may read or write any of them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, range: std::ops::Range<usize>) -> &mut [E] {
        let cells = &self.cells[range];
        // SAFETY: cells have `E`'s layout, and nobody else reads or writes these while the
        // slice lives (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(cells.as_ptr()), cells.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of its own, so the test controls how many threads join a run.
    fn pool_of(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Phase `p` adds `p + 1` to every element of a shared array (one task per element),
    /// and its `prepare` records the array's sum before the phase, which only equals the
    /// expected total when every task of the phases before has finished and is visible.
    #[test]
    fn every_task_runs_once_per_phase_after_the_phase_before_it() {
        for threads in [1, 2, 4] {
            let pool = pool_of(threads);
            let n = 97;
            let phases = 12;
            // Phase 5 has no tasks: it is prepared and skipped.
            let tasks = |p: usize| if p == 5 { 0 } else { n };
            let values = SharedSlice::new(vec![0u64; n]);
            let sums_seen = SharedSlice::new(vec![u64::MAX; phases]);
            pool.install(|| {
                run(
                    phases,
                    tasks,
                    // SAFETY: a phase is prepared while no task runs, and each task
                    // writes only its own element.
                    |p| unsafe {
                        let sum = values.slice(0..n).iter().sum();
                        sums_seen.slice_mut(p..p + 1)[0] = sum;
                    },
                    // SAFETY: as above.
                    |_: &mut (), p, i| unsafe { values.slice_mut(i..i + 1)[0] += p as u64 + 1 },
                    || (),
                )
            });
            let added = |p: usize| if tasks(p) == 0 { 0 } else { p as u64 + 1 };
            let mut expected = 0;
            for p in 0..phases {
                assert_eq!(
                    // SAFETY: the run is over: nothing writes any more.
                    unsafe { sums_seen.slice(p..p + 1)[0] },
                    expected,
                    "{threads} threads, phase {p}"
                );
                expected += added(p) * n as u64;
            }
            let total: u64 = (0..phases).map(added).sum();
            // SAFETY: the run is over: nothing writes any more.
            let values = unsafe { values.slice(0..n) };
            assert!(values.iter().all(|&v| v == total));
        }
    }

    /// A panicking task ends the run on every thread and is raised on the caller, rather
    /// than leaving the others waiting for its phase to finish.
    #[test]
    fn a_panicking_task_is_raised_once_every_thread_has_stopped() {
        for threads in [1, 2, 3] {
            let pool = pool_of(threads);
            let ran_after = AtomicUsize::new(0);
            let outcome = pool.install(|| {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run(
                        6,
                        |_| 8,
                        |_| {},
                        |_: &mut (), p, i| {
                            if p == 2 && i == 5 {
                                panic!("task 5 of phase 2");
                            }
                            if p > 2 {
                                ran_after.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        || (),
                    )
                }))
            });
            let payload = outcome.expect_err("the panic reaches the caller");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"task 5 of phase 2"));
            assert_eq!(ran_after.load(Ordering::Relaxed), 0, "{threads} threads");
        }
    }

    #[test]
    fn no_phases_or_only_empty_ones_return_at_once() {
        let prepared = AtomicUsize::new(0);
        let count = |_: usize| 0;
        let prepare = |_: usize| {
            prepared.fetch_add(1, Ordering::Relaxed);
        };
        run(0, count, prepare, |_: &mut (), _, _| unreachable!(), || ());
        run(3, count, prepare, |_: &mut (), _, _| unreachable!(), || ());
        assert_eq!(prepared.load(Ordering::Relaxed), 3);
    }
}

//! The threads our ops split their work across: the thread that runs the
//! plan and `n - 1` workers that spin between ops instead of sleeping.
//!
//! A ViT at batch 1 is a few hundred products of a few hundred microseconds
//! each with short serial ops between them. rayon's workers fall asleep
//! between two products and are woken by a futex for the next, which on a
//! virtual machine's halted vCPU costs tens of microseconds each time, and
//! its `install` from outside the pool makes the caller wait instead of
//! work. Here the caller publishes a job (a task count and a function),
//! takes tasks itself, and the workers, spinning, take the rest within a
//! few hundred nanoseconds. A worker that has seen no job for
//! [`SPIN`] parks until the next, so an idle camera loop costs no CPU.
//! onnxruntime's intra-op pool works the same way.
//!
//! [`Pool::scope`] makes a pool the current one on this thread for the
//! length of a plan run; ops call [`for_each`], which runs on the calling
//! thread alone when there is no pool.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker spins for the next job before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// What workers and the caller share.
struct Shared {
    /// The job's number in the high 32 bits, the next task to take in the
    /// low 32: taking a task is one compare-and-swap that also checks the
    /// job is still the one whose fields the taker read.
    state: AtomicU64,
    /// The job: a type-erased `&F` and the function that calls it.
    data: AtomicPtr<()>,
    call: AtomicUsize,
    tasks: AtomicUsize,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    /// A task of the current job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers parked on `wake`, counted under `parked_lock`.
    parked: AtomicUsize,
    parked_lock: Mutex<()>,
    wake: Condvar,
}

/// Calls the `F` at `data` with task `i`.
///
/// # Safety
/// `data` points to a live `F`.
unsafe fn call<F: Fn(usize) + Sync>(data: *const (), i: usize) {
    // SAFETY: the caller's contract.
    unsafe { (*(data as *const F))(i) }
}

impl Shared {
    /// Takes and runs tasks of job `job` until none is left; returns whether
    /// it ran any.
    fn work(&self, job: u32) -> bool {
        let mut worked = false;
        loop {
            let state = self.state.load(Ordering::Acquire);
            let (current, next) = ((state >> 32) as u32, state as u32 as usize);
            let tasks = self.tasks.load(Ordering::Acquire);
            if current != job || next >= tasks {
                return worked;
            }
            let (data, f) = (self.data.load(Ordering::Acquire), self.call.load(Ordering::Acquire));
            if self
                .state
                .compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // The swap succeeded with the job unchanged and a task left, so
            // the fields read before it are this job's, and its caller waits
            // for this task before the closure they point to goes away.
            // SAFETY: `f` is `call::<F>` for the `F` at `data` (see `Pool::for_each`).
            let f: unsafe fn(*const (), usize) = unsafe { std::mem::transmute::<usize, _>(f) };
            // SAFETY: as above, `data` is live until this task is counted done.
            if catch_unwind(AssertUnwindSafe(|| unsafe { f(data, next) })).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
            worked = true;
        }
    }
}

/// `n - 1` workers and the caller (see the module's doc).
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Jobs published.
    jobs: AtomicU64,
    /// A job is in flight: a `for_each` from inside a task, or from a second
    /// thread, runs its tasks on its own thread instead.
    busy: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

impl Pool {
    /// A pool of `threads` threads in all: the caller and `threads - 1`
    /// workers. Fails when the system cannot start a thread.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            data: AtomicPtr::new(std::ptr::null_mut()),
            call: AtomicUsize::new(0),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            parked_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Pool {
            shared: shared.clone(),
            workers: Vec::new(),
            jobs: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        };
        for i in 1..threads.max(1) {
            let shared = shared.clone();
            let worker = std::thread::Builder::new()
                .name(format!("edgevit-cpu-{i}"))
                .spawn(move || worker(&shared))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads that run tasks, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0)`, ..., `f(tasks - 1)` across the pool and returns when all
    /// have; a panic in one is raised here after the others finish.
    pub fn for_each<F: Fn(usize) + Sync>(&self, tasks: usize, f: F) {
        /// Marks the pool free again, even when a task panics.
        struct Free<'a>(&'a AtomicBool);
        impl Drop for Free<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if tasks <= 1 || self.workers.is_empty() || self.busy.swap(true, Ordering::Acquire) {
            (0..tasks).for_each(f);
            return;
        }
        let _free = Free(&self.busy);
        assert!(tasks < u32::MAX as usize, "too many tasks");
        let s = &*self.shared;
        let job = (self.jobs.fetch_add(1, Ordering::Relaxed) + 1) as u32;
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        s.data.store(&f as *const F as *mut (), Ordering::Release);
        s.call.store(call::<F> as unsafe fn(*const (), usize) as usize, Ordering::Release);
        s.tasks.store(tasks, Ordering::Release);
        s.state.store((job as u64) << 32, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _guard = s.parked_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(job);
        // Every task is taken; wait for the workers' to finish.
        while s.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        if s.panicked.load(Ordering::Relaxed) {
            panic!("a task of the CPU thread pool panicked");
        }
    }

    /// Runs `f` with this pool as the current one on this thread.
    pub fn scope<R>(self: &Arc<Pool>, f: impl FnOnce() -> R) -> R {
        /// Puts the previous pool back, even when `f` panics.
        struct Restore(Option<Arc<Pool>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0.take()));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(self.clone()))));
        f()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        {
            let _guard = s.parked_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u32;
    let mut idle_since = Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        let job = (s.state.load(Ordering::Acquire) >> 32) as u32;
        if job != seen {
            s.work(job);
            seen = job;
            idle_since = Instant::now();
            continue;
        }
        if idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        let guard = s.parked_lock.lock().unwrap_or_else(|e| e.into_inner());
        s.parked.fetch_add(1, Ordering::SeqCst);
        let unchanged = (s.state.load(Ordering::SeqCst) >> 32) as u32 == seen;
        if unchanged && !s.stop.load(Ordering::SeqCst) {
            drop(s.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
        } else {
            drop(guard);
        }
        s.parked.fetch_sub(1, Ordering::SeqCst);
        idle_since = Instant::now();
    }
}

thread_local! {
    static CURRENT: Cell<Option<Arc<Pool>>> = const { Cell::new(None) };
}

/// The pool current on this thread ([`Pool::scope`]), if any.
fn current() -> Option<Arc<Pool>> {
    CURRENT.with(|c| {
        let pool = c.take();
        c.set(pool.clone());
        pool
    })
}

/// Threads the current pool runs tasks on: 1 without one.
pub fn threads() -> usize {
    current().map_or(1, |p| p.threads())
}

/// `f(0)`, ..., `f(tasks - 1)` on the current pool, or here in order.
pub fn for_each<F: Fn(usize) + Sync>(tasks: usize, f: F) {
    match current() {
        Some(pool) => pool.for_each(tasks, f),
        None => (0..tasks).for_each(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = Arc::new(Pool::new(3).unwrap());
        for tasks in [0, 1, 2, 3, 7, 100] {
            for _ in 0..200 {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.scope(|| for_each(tasks, |i| _ = counts[i].fetch_add(1, Ordering::Relaxed)));
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{tasks} tasks");
            }
        }
    }

    #[test]
    fn parked_workers_wake_for_the_next_job() {
        let pool = Pool::new(2).unwrap();
        std::thread::sleep(SPIN * 3);
        let ran = AtomicUsize::new(0);
        pool.for_each(64, |_| {
            std::thread::sleep(Duration::from_micros(200));
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_panicking_task_is_raised_to_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| pool.for_each(8, |i| assert!(i != 5, "task 5"))));
        assert!(result.is_err());
        let ran = AtomicUsize::new(0);
        pool.for_each(8, |_| _ = ran.fetch_add(1, Ordering::Relaxed));
        assert_eq!(ran.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn a_job_started_inside_a_task_runs_on_that_thread() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let ran = AtomicUsize::new(0);
        pool.scope(|| {
            for_each(4, |_| for_each(3, |_| _ = ran.fetch_add(1, Ordering::Relaxed)));
        });
        assert_eq!(ran.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn without_a_pool_tasks_run_here_in_order() {
        let order = Mutex::new(Vec::new());
        for_each(4, |i| order.lock().unwrap().push(i));
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
        assert_eq!(threads(), 1);
    }
}

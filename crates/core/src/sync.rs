//! The core's locks: spin locks, as a TEE core has no scheduler to sleep on. On the host (the
//! `std` feature, which the simulator enables) a waiter spins briefly and yields its CPU every
//! few waits, so simulated CPUs that outnumber the host's cores do not starve the thread
//! holding the lock.

#[cfg(feature = "std")]
type Relax = SpinThenYield;

/// The host's wait: a few dozen spins (a core lock is held for well under a microsecond, and
/// a yield costs a system call), and every 16th wait of a thread a yield of its CPU, so a
/// thread holding the lock but descheduled (more simulated CPUs than host cores) still runs.
#[cfg(feature = "std")]
pub struct SpinThenYield;

#[cfg(feature = "std")]
impl spin::relax::RelaxStrategy for SpinThenYield {
    fn relax() {
        extern crate std;
        std::thread_local! {
            static WAITS: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
        }
        let waits = WAITS.with(|w| {
            let n = w.get().wrapping_add(1);
            w.set(n);
            n
        });
        if waits % 16 == 0 {
            std::thread::yield_now();
        } else {
            for _ in 0..32 {
                core::hint::spin_loop();
            }
        }
    }
}
#[cfg(not(feature = "std"))]
type Relax = spin::relax::Spin;

/// A mutual-exclusion lock.
pub type Mutex<T> = spin::mutex::Mutex<T, Relax>;
/// Its guard.
pub type MutexGuard<'a, T> = spin::mutex::MutexGuard<'a, T, Relax>;
/// A reader-writer lock.
pub type RwLock<T> = spin::rwlock::RwLock<T, Relax>;
/// Its read guard.
pub type RwLockReadGuard<'a, T> = spin::rwlock::RwLockReadGuard<'a, T, Relax>;
/// Its write guard.
pub type RwLockWriteGuard<'a, T> = spin::rwlock::RwLockWriteGuard<'a, T, Relax>;

/// What a waiter does while it waits for another CPU (spin, or yield on the host).
pub fn relax() {
    <Relax as spin::relax::RelaxStrategy>::relax();
}

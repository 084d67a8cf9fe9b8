//! The core's locks: spin locks, as a TEE core has no scheduler to sleep on. On the host (the
//! `std` feature, which the simulator enables) a waiter yields its CPU instead of spinning, so
//! simulated CPUs that outnumber the host's cores do not starve the thread holding the lock.

#[cfg(feature = "std")]
type Relax = spin::relax::Yield;
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

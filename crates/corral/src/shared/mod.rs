//! Shared memory: [`Value`], [`Array`], their unlocked forms [`RawValue`]
//! and [`RawArray`], and byte segments ([`SharedMemory`]).
//!
//! Like Python's `multiprocessing.Value` and `Array`, these hold plain data
//! (here: any [`bytemuck::Pod`] type) in memory every process maps. `Value`
//! and `Array` carry a robust lock and take it for every access, as
//! Python's do; the `Raw` forms have no lock, and a reader may see a value
//! half-written by another process (any bit pattern is a valid `Pod`, so
//! that is a torn value, never undefined behaviour in Rust).
//!
//! Every handle is a serde value: pass it to [`crate::spawn`] or a pool
//! task. The memory goes away when the last process holding it drops its
//! handle, whatever process dies, so nothing is left in `/dev/shm` — except
//! for [`SharedMemory::create`], which names a segment so that unrelated
//! processes can [`open`](SharedMemory::open) it; named segments are removed
//! by [`SharedMemory::unlink`] or, at the latest, when their creator exits or
//! is killed.
//!
//! ```no_run
//! use corral::Value;
//! fn add(counter: Value<u64>) {
//!     for _ in 0..10_000 {
//!         *counter.lock() += 1;
//!     }
//! }
//! corral::init();
//! let counter = Value::new(0u64).unwrap();
//! let kids: Vec<_> = (0..2).map(|_| corral::spawn(add, counter.clone()).unwrap()).collect();
//! for k in kids { k.join().unwrap(); }
//! assert_eq!(counter.get(), 20_000);
//! ```
#![expect(
    unsafe_code,
    reason = "plain data in shared memory is read and written through raw pointers"
)]

pub(crate) mod memory;
#[cfg(test)]
pub(crate) mod model;
pub(crate) mod object;
mod segment;

use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};

use bytemuck::Pod;

pub use segment::SharedMemory;

use crate::sys::{self, Acquired, NotAcquired, RobustMutex};
use crate::{Error, Lock};
use object::{HEADER, Kind, Object, object_handle_serde};

/// Where the lock of a locked value lives.
const LOCK: usize = HEADER;
/// Where a locked value's data starts (a raw value's starts at `HEADER`).
const LOCKED_DATA: usize = HEADER + sys::MUTEX_BYTES;

fn check_layout<T>() -> Result<(), Error> {
    if std::mem::align_of::<T>() > 64 {
        return Err(Error::Unsupported(
            "shared values must have an alignment of at most 64 bytes",
        ));
    }
    Ok(())
}

/// Creates the region for `len` elements of `T` at `data`, with `init`
/// copied in; the lock (if `data` leaves room for one) initialised.
fn create<T: Pod>(kind: Kind, data: usize, init: &[T]) -> Result<Object, Error> {
    check_layout::<T>()?;
    let bytes = std::mem::size_of_val(init);
    let obj = Object::create(
        kind,
        data + bytes,
        &[std::mem::size_of::<T>() as u64, init.len() as u64],
    )?;
    if data == LOCKED_DATA {
        obj.region()
            .robust_mutex(LOCK)
            .init(false)
            .map_err(Error::io("initialising a process-shared mutex"))?;
    }
    obj.region().store_bytes(data, bytemuck::cast_slice(init));
    Ok(obj)
}

/// Checks a received region against `T` and returns its element count.
fn check_received<T>(obj: &Object, data: usize) -> Result<usize, String> {
    let size = obj.param(0) as usize;
    let len = obj.param(1) as usize;
    let fits = len
        .checked_mul(size)
        .and_then(|b| b.checked_add(data))
        .is_some_and(|end| end <= obj.region().len());
    if size != std::mem::size_of::<T>() || !fits || std::mem::align_of::<T>() > 64 {
        return Err(format!(
            "the shared value received does not hold {} (the two sides disagree on the type)",
            std::any::type_name::<T>()
        ));
    }
    Ok(len)
}

/// The elements at `data` as a raw slice pointer.
fn elements<T>(obj: &Object, data: usize, len: usize) -> *mut T {
    obj.region()
        .ptr_at(data, len * std::mem::size_of::<T>())
        .cast::<T>()
}

/// Takes the lock in `lock` (a value's own region, or the region of the
/// [`Lock`] it was built around) for the data at `ptr`.
fn lock_region<'a, U: ?Sized>(lock: &'a Object, ptr: *mut U) -> SharedGuard<'a, U> {
    let mutex = lock.region().robust_mutex(LOCK);
    let owner_died = match mutex.lock() {
        Ok(Acquired::Clean) => false,
        Ok(Acquired::OwnerDied) => true,
        Err(NotAcquired::Deadlock) => panic!(
            "this thread already holds this shared value's lock (a guard from `lock()` is \
             alive): taking it again would deadlock"
        ),
        Err(e) => panic!("the shared value's lock is corrupt: {e:?}"),
    };
    SharedGuard {
        mutex,
        ptr,
        owner_died,
        _not_send: PhantomData,
    }
}

/// Holds the lock of a [`Value`] or an [`Array`] and derefs to what it
/// protects (a `T`, or the elements `[T]`); unlocks on drop.
///
/// # Examples
///
/// ```
/// let v = corral::Value::new(1u64).unwrap();
/// let mut g: corral::ValueGuard<'_, u64> = v.lock();
/// *g *= 10;
/// assert!(!g.previous_owner_died());
/// drop(g);
/// let a = corral::Array::from_slice(&[1u8, 2]).unwrap();
/// let mut elems: corral::ArrayGuard<'_, u8> = a.lock();
/// elems.reverse();
/// drop(elems);
/// assert_eq!((v.get(), a.to_vec()), (10, vec![2, 1]));
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SharedGuard<'a, U: ?Sized> {
    mutex: RobustMutex<'a>,
    ptr: *mut U,
    owner_died: bool,
    _not_send: PhantomData<(&'a mut U, *const ())>,
}

/// The guard of a [`Value`]: derefs to its value.
pub type ValueGuard<'a, T> = SharedGuard<'a, T>;

/// The guard of an [`Array`]: derefs to its elements.
pub type ArrayGuard<'a, T> = SharedGuard<'a, [T]>;

impl<U: ?Sized> SharedGuard<'_, U> {
    /// Did the previous holder of the lock die holding it? What it protects
    /// may then be half-updated.
    pub fn previous_owner_died(&self) -> bool {
        self.owner_died
    }
}

impl<U: ?Sized> Deref for SharedGuard<'_, U> {
    type Target = U;
    fn deref(&self) -> &U {
        // SAFETY: `ptr` (with its length, for a slice) is in bounds and
        // aligned (checked when the handle was made or received) for the
        // life of the guard, which holds the object's lock: every access by
        // any process through `Value` or `Array` takes that lock, so nothing
        // writes the data while this reference lives.
        unsafe { &*self.ptr }
    }
}

impl<U: ?Sized> DerefMut for SharedGuard<'_, U> {
    fn deref_mut(&mut self) -> &mut U {
        // SAFETY: as in `deref`; the lock makes this access exclusive.
        unsafe { &mut *self.ptr }
    }
}

impl<U: ?Sized> Drop for SharedGuard<'_, U> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl<U: ?Sized + fmt::Debug> fmt::Debug for SharedGuard<'_, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The region of a `Value` or `Array` as a serde field.
struct Region<'a>(&'a Object);

impl serde::Serialize for Region<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A received region of the kind `K` names.
struct ReceivedRegion<const K: u32>(Object);

impl<'de, const K: u32> serde::Deserialize<'de> for ReceivedRegion<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = if K == Kind::Value as u32 {
            Kind::Value
        } else {
            Kind::Array
        };
        Object::deserialize(d, kind).map(ReceivedRegion)
    }
}

/// Serde for a handle made of its region and the [`Lock`] it was built
/// around, if any (which travels as a handle of its own).
macro_rules! guarded_serde {
    ($ty:ident<T: Pod>, $kind:expr, |$this:ident| $parts:expr, |$obj:ident, $lock:ident| $make:expr) => {
        impl<T: Pod> serde::Serialize for $ty<T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $this = self;
                let (obj, lock) = $parts;
                serde::Serialize::serialize(&(Region(obj), lock), s)
            }
        }

        impl<'de, T: Pod> serde::Deserialize<'de> for $ty<T> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let (region, $lock): (ReceivedRegion<{ $kind as u32 }>, Option<Lock>) =
                    serde::Deserialize::deserialize(d)?;
                let $obj = region.0;
                $make.map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A value of plain data in shared memory, with a lock (Python's
/// `multiprocessing.Value`).
///
/// [`Value::get`] and [`Value::set`] take the lock for one access;
/// [`Value::lock`] holds it for a read-modify-write such as
/// `*v.lock() += 1`, which Python gets wrong by default (`v.value += 1` is
/// two locked accesses, not one).
///
/// # Examples
///
/// ```
/// let v = corral::Value::new(41u32).unwrap();
/// *v.lock() += 1;
/// assert_eq!(v.get(), 42);
/// ```
#[derive(Clone)]
pub struct Value<T> {
    obj: Object,
    /// The lock it was built around, if not its own.
    lock: Option<Lock>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Pod> Value<T> {
    /// Puts `v` in fresh shared memory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if shared memory cannot be created;
    /// [`Error::Unsupported`] for a type aligned to more than 64 bytes.
    pub fn new(v: T) -> Result<Value<T>, Error> {
        Ok(Value {
            obj: create(Kind::Value, LOCKED_DATA, &[v])?,
            lock: None,
            _type: PhantomData,
        })
    }

    /// Puts `v` in fresh shared memory guarded by `lock` (Python's
    /// `Value(typecode, v, lock=lock)`): values and arrays built around one
    /// lock are updated together under it.
    ///
    /// # Errors
    ///
    /// As [`Value::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = corral::Lock::new().unwrap();
    /// let debit = corral::Value::with_lock(100i64, lock.clone()).unwrap();
    /// let credit = corral::Value::with_lock(0i64, lock.clone()).unwrap();
    /// {
    ///     let _both = lock.acquire().unwrap(); // one transfer, atomically
    ///     debit.set_unlocked(90);
    ///     credit.set_unlocked(10);
    /// }
    /// assert_eq!(debit.get() + credit.get(), 100);
    /// ```
    pub fn with_lock(v: T, lock: Lock) -> Result<Value<T>, Error> {
        Ok(Value {
            lock: Some(lock),
            ..Value::new(v)?
        })
    }

    fn from_parts(obj: Object, lock: Option<Lock>) -> Result<Value<T>, String> {
        match check_received::<T>(&obj, LOCKED_DATA)? {
            1 => Ok(Value {
                obj,
                lock,
                _type: PhantomData,
            }),
            _ => Err("a corrupt Value handle".into()),
        }
    }

    /// The lock that guards it (Python's `get_lock()`): its own, or the one
    /// it was built around. Hold it to make several accesses one.
    ///
    /// # Examples
    ///
    /// ```
    /// let v = corral::Value::new(0u32).unwrap();
    /// let lock = v.get_lock();
    /// let held = lock.acquire().unwrap();
    /// v.set_unlocked(v.get_unlocked() + 1); // under the lock already
    /// drop(held);
    /// assert_eq!(v.get(), 1);
    /// ```
    pub fn get_lock(&self) -> Lock {
        self.lock
            .clone()
            .unwrap_or_else(|| Lock::over(self.obj.clone()))
    }

    fn lock_object(&self) -> &Object {
        self.lock.as_ref().map_or(&self.obj, Lock::object)
    }

    /// Reads the value without taking the lock: for a caller that holds it
    /// (through [`get_lock`](Value::get_lock)). Without the lock, a reader
    /// racing a writer may see a torn value, as with [`RawValue`].
    pub fn get_unlocked(&self) -> T {
        // SAFETY: in bounds and aligned (checked when the handle was made or
        // received); a torn read of a `Pod` is still a valid `T` (see
        // `RawValue::get`).
        unsafe { elements::<T>(&self.obj, LOCKED_DATA, 1).read_volatile() }
    }

    /// Writes the value without taking the lock (see
    /// [`get_unlocked`](Value::get_unlocked)).
    pub fn set_unlocked(&self, v: T) {
        // SAFETY: as in `get_unlocked`; every bit pattern written is a `T`.
        unsafe { elements::<T>(&self.obj, LOCKED_DATA, 1).write_volatile(v) }
    }

    /// Takes the lock; the guard derefs to the value.
    ///
    /// A holder that died holding the lock does not block: the guard says
    /// so through [`ValueGuard::previous_owner_died`].
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (that would deadlock).
    pub fn lock(&self) -> ValueGuard<'_, T> {
        lock_region(self.lock_object(), elements::<T>(&self.obj, LOCKED_DATA, 1))
    }

    /// Reads the value (under the lock).
    pub fn get(&self) -> T {
        *self.lock()
    }

    /// Writes the value (under the lock).
    ///
    /// # Examples
    ///
    /// ```
    /// let v = corral::Value::new(1.5f64).unwrap();
    /// v.set(2.5);
    /// assert_eq!(v.get(), 2.5);
    /// ```
    pub fn set(&self, v: T) {
        *self.lock() = v;
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

guarded_serde!(Value<T: Pod>, Kind::Value, |this| (&this.obj, &this.lock), |obj, lock| {
    Value::from_parts(obj, lock)
});

/// The constructors and size of an array type (`Array`, `RawArray`) whose
/// elements start at byte `$data` of its object.
macro_rules! array_common {
    ($ty:ident, $kind:expr, $data:expr) => {
        impl<T: Pod> $ty<T> {
            /// An array holding a copy of `items`.
            ///
            /// # Errors
            ///
            /// [`Error::Io`] if shared memory cannot be created;
            /// [`Error::Unsupported`] for a type aligned to more than 64 bytes.
            pub fn from_slice(items: &[T]) -> Result<$ty<T>, Error> {
                Ok($ty::assemble(create($kind, $data, items)?, items.len()))
            }

            /// An array of `len` zeroed elements.
            ///
            /// # Errors
            ///
            #[doc = concat!("As [`", stringify!($ty), "::from_slice`].")]
            pub fn zeroed(len: usize) -> Result<$ty<T>, Error> {
                $ty::from_slice(&vec![T::zeroed(); len])
            }

            fn from_object(obj: Object) -> Result<$ty<T>, String> {
                let len = check_received::<T>(&obj, $data)?;
                Ok($ty::assemble(obj, len))
            }

            /// The number of elements.
            pub fn len(&self) -> usize {
                self.len
            }

            /// Is the array empty?
            pub fn is_empty(&self) -> bool {
                self.len == 0
            }
        }
    };
}

/// A fixed-length array of plain data in shared memory, with a lock
/// (Python's `multiprocessing.Array`).
///
/// # Examples
///
/// ```
/// let a = corral::Array::from_slice(&[1u32, 2, 3]).unwrap();
/// a.lock()[1] = 20;
/// assert_eq!(a.to_vec(), [1, 20, 3]);
/// let zeros = corral::Array::<f64>::zeroed(1_000).unwrap();
/// assert_eq!(zeros.len(), 1_000);
/// ```
#[derive(Clone)]
pub struct Array<T> {
    obj: Object,
    len: usize,
    /// The lock it was built around, if not its own.
    lock: Option<Lock>,
    _type: PhantomData<fn() -> T>,
}

array_common!(Array, Kind::Array, LOCKED_DATA);

impl<T: Pod> Array<T> {
    fn assemble(obj: Object, len: usize) -> Array<T> {
        Array {
            obj,
            len,
            lock: None,
            _type: PhantomData,
        }
    }

    /// An array holding a copy of `items`, guarded by `lock` (Python's
    /// `Array(typecode, items, lock=lock)`).
    ///
    /// # Errors
    ///
    /// As [`Array::from_slice`].
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = corral::Lock::new().unwrap();
    /// let a = corral::Array::with_lock(&[1u8, 2], lock.clone()).unwrap();
    /// let total = corral::Value::with_lock(3u32, lock).unwrap();
    /// a.lock()[0] = 5; // takes the shared lock
    /// assert_eq!(a.to_vec(), [5, 2]);
    /// assert_eq!(total.get(), 3);
    /// ```
    pub fn with_lock(items: &[T], lock: Lock) -> Result<Array<T>, Error> {
        Ok(Array {
            lock: Some(lock),
            ..Array::from_slice(items)?
        })
    }

    fn from_parts(obj: Object, lock: Option<Lock>) -> Result<Array<T>, String> {
        Ok(Array {
            lock,
            ..Array::from_object(obj)?
        })
    }

    /// The lock that guards it (Python's `get_lock()`): its own, or the one
    /// it was built around.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = corral::Array::from_slice(&[0u16; 4]).unwrap();
    /// let lock = a.get_lock();
    /// let held = lock.acquire().unwrap();
    /// assert!(a.get_lock().locked());
    /// drop(held);
    /// ```
    pub fn get_lock(&self) -> Lock {
        self.lock
            .clone()
            .unwrap_or_else(|| Lock::over(self.obj.clone()))
    }

    /// Takes the lock; the guard derefs to the elements.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (that would deadlock).
    pub fn lock(&self) -> ArrayGuard<'_, T> {
        let first = elements::<T>(&self.obj, LOCKED_DATA, self.len);
        lock_region(
            self.lock.as_ref().map_or(&self.obj, Lock::object),
            std::ptr::slice_from_raw_parts_mut(first, self.len),
        )
    }

    /// Element `index` (under the lock), or `None` past the end.
    pub fn get(&self, index: usize) -> Option<T> {
        self.lock().get(index).copied()
    }

    /// Writes element `index` (under the lock).
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub fn set(&self, index: usize, v: T) {
        self.lock()[index] = v;
    }

    /// A copy of every element (under the lock).
    pub fn to_vec(&self) -> Vec<T> {
        self.lock().to_vec()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

guarded_serde!(Array<T: Pod>, Kind::Array, |this| (&this.obj, &this.lock), |obj, lock| {
    Array::from_parts(obj, lock)
});

/// A value of plain data in shared memory without a lock (Python's
/// `multiprocessing.RawValue`). Reads and writes are single copies; a
/// reader racing a writer may see a torn value.
///
/// # Examples
///
/// ```
/// let v = corral::RawValue::new([0u8; 16]).unwrap();
/// v.set([7; 16]);
/// assert_eq!(v.get(), [7; 16]);
/// ```
#[derive(Clone)]
pub struct RawValue<T> {
    obj: Object,
    _type: PhantomData<fn() -> T>,
}

impl<T: Pod> RawValue<T> {
    /// Puts `v` in fresh shared memory.
    ///
    /// # Errors
    ///
    /// As [`Value::new`].
    pub fn new(v: T) -> Result<RawValue<T>, Error> {
        Ok(RawValue {
            obj: create(Kind::RawValue, HEADER, &[v])?,
            _type: PhantomData,
        })
    }

    fn from_object(obj: Object) -> Result<RawValue<T>, String> {
        match check_received::<T>(&obj, HEADER)? {
            1 => Ok(RawValue {
                obj,
                _type: PhantomData,
            }),
            _ => Err("a corrupt RawValue handle".into()),
        }
    }

    /// Reads the value.
    pub fn get(&self) -> T {
        // SAFETY: the pointer is in bounds and aligned (checked when the
        // handle was made or received). Other processes may write the bytes
        // concurrently; they are outside this program's memory model, and a
        // torn read of a `Pod` type is still a valid `T`.
        unsafe { elements::<T>(&self.obj, HEADER, 1).read_volatile() }
    }

    /// Writes the value.
    pub fn set(&self, v: T) {
        // SAFETY: as in `get`; every bit pattern written is a valid `T`.
        unsafe { elements::<T>(&self.obj, HEADER, 1).write_volatile(v) }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawValue").field(&self.get()).finish()
    }
}

object_handle_serde!(RawValue<T: Pod>, Kind::RawValue);

/// A fixed-length array of plain data in shared memory without a lock
/// (Python's `multiprocessing.RawArray`).
///
/// # Examples
///
/// ```
/// let a = corral::RawArray::<u64>::zeroed(4).unwrap();
/// a.set(2, 9);
/// assert_eq!(a.get(2), Some(9));
/// assert_eq!(a.to_vec(), [0, 0, 9, 0]);
/// ```
#[derive(Clone)]
pub struct RawArray<T> {
    obj: Object,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T: Pod> RawArray<T> {
    fn assemble(obj: Object, len: usize) -> RawArray<T> {
        RawArray {
            obj,
            len,
            _type: PhantomData,
        }
    }
}

array_common!(RawArray, Kind::RawArray, HEADER);

impl<T: Pod> RawArray<T> {
    /// Element `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<T> {
        (index < self.len).then(|| {
            // SAFETY: in bounds (checked) and aligned; see `RawValue::get`.
            unsafe {
                elements::<T>(&self.obj, HEADER, self.len)
                    .add(index)
                    .read_volatile()
            }
        })
    }

    /// Writes element `index`.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub fn set(&self, index: usize, v: T) {
        assert!(
            index < self.len,
            "index {index} out of bounds ({})",
            self.len
        );
        // SAFETY: in bounds (checked) and aligned; see `RawValue::set`.
        unsafe {
            elements::<T>(&self.obj, HEADER, self.len)
                .add(index)
                .write_volatile(v)
        }
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        self.read_range(0..self.len)
    }

    /// The array behind a received descriptor (as deserializing does).
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd) -> Result<RawArray<T>, String> {
        RawArray::from_object(Object::from_fd(fd, Kind::RawArray)?)
    }

    /// A duplicate of its descriptor, to send by hand.
    pub(crate) fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.obj.region().as_fd().try_clone_to_owned()
    }

    /// An array of `len` zero elements whose memory is not touched (a fresh
    /// shared mapping reads zero), for scratch space.
    pub(crate) fn untouched(len: usize) -> Result<RawArray<T>, Error> {
        check_layout::<T>()?;
        let obj = Object::create(
            Kind::RawArray,
            HEADER + len * std::mem::size_of::<T>(),
            &[std::mem::size_of::<T>() as u64, len as u64],
        )?;
        Ok(RawArray::assemble(obj, len))
    }

    /// The 8 bytes at byte `at` of the elements (a multiple of 8) as an
    /// atomic word: `map_pod`'s progress counts.
    ///
    /// # Panics
    ///
    /// If the word reaches past the end or is misaligned.
    pub(crate) fn word_at(&self, at: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(
            at + 8 <= self.len * std::mem::size_of::<T>(),
            "word out of bounds"
        );
        self.obj.region().word64(HEADER + at)
    }

    /// Copies `out.len()` bytes from byte `at` of the elements into `out`.
    ///
    /// # Panics
    ///
    /// If the bytes reach past the end.
    pub(crate) fn load_bytes_into(&self, at: usize, out: &mut [u8]) {
        assert!(
            at + out.len() <= self.len * std::mem::size_of::<T>(),
            "range out of bounds"
        );
        self.obj.region().load_into(HEADER + at, out);
    }

    /// [`load_bytes_into`](Self::load_bytes_into) for memory not yet
    /// written: afterwards every byte of `out` is.
    ///
    /// # Panics
    ///
    /// If the bytes reach past the end.
    pub(crate) fn load_bytes_into_uninit(&self, at: usize, out: &mut [MaybeUninit<u8>]) {
        assert!(
            at + out.len() <= self.len * std::mem::size_of::<T>(),
            "range out of bounds"
        );
        self.obj.region().load_into_uninit(HEADER + at, out);
    }

    /// Copies `bytes` to byte `at` of the elements.
    ///
    /// # Panics
    ///
    /// If the bytes reach past the end.
    pub(crate) fn store_bytes_at(&self, at: usize, bytes: &[u8]) {
        assert!(
            at + bytes.len() <= self.len * std::mem::size_of::<T>(),
            "range out of bounds"
        );
        self.obj.region().store_bytes(HEADER + at, bytes);
    }

    /// A copy of the elements in `range`, in one copy.
    ///
    /// # Panics
    ///
    /// If `range` reaches past the end.
    pub(crate) fn read_range(&self, range: std::ops::Range<usize>) -> Vec<T> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range out of bounds"
        );
        let mut out = vec![T::zeroed(); range.len()];
        let at = HEADER + range.start * std::mem::size_of::<T>();
        self.obj
            .region()
            .load_into(at, bytemuck::cast_slice_mut(&mut out));
        out
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawArray").field(&self.to_vec()).finish()
    }
}

object_handle_serde!(RawArray<T: Pod>, Kind::RawArray);

//! The one handle type behind every process-shared object: a memfd region
//! whose first 64 bytes say what it is.

use std::fmt;
use std::os::fd::AsFd;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserializer, Serializer};

use crate::{Error, sys, wire};

const MAGIC: u64 = u64::from_le_bytes(*b"corral\x00\x01");

/// Bytes of the header every object region starts with.
pub(crate) const HEADER: usize = 64;

/// What an object region holds; checked when a handle arrives from another
/// process, so a `Lock` can never be decoded as a `Queue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    Condition = 4,
    Event = 5,
    Barrier = 6,
    Value = 7,
    Array = 8,
    RawValue = 9,
    RawArray = 10,
    Queue = 11,
}

/// A shared object: a region mapped in this process. Clones share the
/// mapping; other processes get the descriptor (see [`Object::serialize`]).
#[derive(Clone)]
pub(crate) struct Object {
    region: Arc<sys::SharedRegion>,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("fd", &self.region.as_fd())
            .field("len", &self.region.len())
            .finish()
    }
}

impl Object {
    /// Creates a zeroed region of `len` bytes (header included) for `kind`,
    /// with `params` stored in the header words 2.. (at most 6). The magic
    /// word is stored last (a release store), so a process that maps the
    /// region and finds the magic also finds the kind and parameters.
    pub(crate) fn create(kind: Kind, len: usize, params: &[u64]) -> Result<Object, Error> {
        assert!(params.len() <= 6, "at most 6 header parameters");
        let region = sys::SharedRegion::create(c"corral-object", len.max(HEADER))
            .map_err(Error::io("creating process-shared memory"))?;
        region
            .word(1)
            .store(kind as u64, std::sync::atomic::Ordering::Relaxed);
        for (i, p) in params.iter().enumerate() {
            region
                .word(2 + i)
                .store(*p, std::sync::atomic::Ordering::Relaxed);
        }
        region
            .word(0)
            .store(MAGIC, std::sync::atomic::Ordering::Release);
        Ok(Object {
            region: Arc::new(region),
        })
    }

    /// The region.
    pub(crate) fn region(&self) -> &sys::SharedRegion {
        &self.region
    }

    /// Header parameter `i` (as given to [`Object::create`]).
    pub(crate) fn param(&self, i: usize) -> u64 {
        self.region
            .word(2 + i)
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serializes the handle: its descriptor travels out of band.
    pub(crate) fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire::serialize_fd(self.region.as_fd(), s)
    }

    /// Deserializes a handle of `kind`, refusing any other region.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
    ) -> Result<Object, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        Object::from_fd(fd, kind).map_err(D::Error::custom)
    }

    /// Maps a received region of `kind`, refusing any other.
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd, kind: Kind) -> Result<Object, String> {
        let region = sys::SharedRegion::map(fd).map_err(|e| e.to_string())?;
        let magic = region.word(0).load(std::sync::atomic::Ordering::Acquire);
        let found = region.word(1).load(std::sync::atomic::Ordering::Relaxed);
        // A Value's or Array's own lock sits where a Lock's does, so their
        // region also serves as a Lock (`Value::get_lock`).
        let lock_of_value =
            kind == Kind::Lock && (found == Kind::Value as u64 || found == Kind::Array as u64);
        if region.len() < HEADER || magic != MAGIC || (found != kind as u64 && !lock_of_value) {
            return Err(format!(
                "the handle received is not a corral {kind:?} (the two sides disagree on the type)"
            ));
        }
        Ok(Object {
            region: Arc::new(region),
        })
    }
}

/// Implements `Serialize` and `Deserialize` for a handle type whose only
/// shared state is an [`Object`] (`self.obj`, or what the accessor gives);
/// `Self::from_object` rebuilds the handle.
macro_rules! object_handle_serde {
    ($ty:ident $(<$g:ident $(: $b:path)?>)?, $kind:expr) => {
        $crate::shared::object::object_handle_serde!(
            $ty $(<$g $(: $b)?>)?, $kind, |this| &this.obj
        );
    };
    ($ty:ident $(<$g:ident $(: $b:path)?>)?, $kind:expr, |$this:ident| $object:expr) => {
        impl$(<$g $(: $b)?>)? serde::Serialize for $ty$(<$g>)? {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $this = self;
                $crate::shared::object::Object::serialize($object, s)
            }
        }

        impl<'de $(, $g $(: $b)?)?> serde::Deserialize<'de> for $ty$(<$g>)? {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let obj = $crate::shared::object::Object::deserialize(d, $kind)?;
                Self::from_object(obj).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use object_handle_serde;

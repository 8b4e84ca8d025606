//! Proxies: typed handles on a manager's objects.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_pickle::Value;

use super::client::{LIVENESS, Link};
use super::error::ManagerError;
use super::protocol::{self, Kind, PROXY_MARK};
use crate::Data;
use crate::poison;

thread_local! {
    /// Set while a value is turned into manager data: a proxy inside is
    /// held by the object that stores it, not pinned by this process.
    static STORING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A value as plain data (what the manager stores).
pub(crate) fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value, ManagerError> {
    let outer = STORING.with(|s| s.replace(true));
    let value = serde_pickle::to_value(v).map_err(|e| ManagerError::Codec(e.to_string()));
    STORING.with(|s| s.set(outer));
    value
}

/// Plain data back as a `T`.
pub(crate) fn from_value<T: Data>(v: Value) -> Result<T, ManagerError> {
    serde_pickle::from_value(v).map_err(|e| ManagerError::Codec(e.to_string()))
}

/// The untyped handle under every proxy.
#[doc(hidden)]
pub struct Handle {
    link: Arc<Link>,
    /// (server instance, object id): found again by name after a restart.
    target: Mutex<(u64, u64)>,
    pub(crate) kind: Kind,
    name: Option<String>,
    timeout: Option<Duration>,
}

/// How a proxy travels: `(MARK, address, authkey hex, id, typeid, name,
/// instance)`; the server finds the id at index 3 inside stored values.
#[derive(Serialize, Deserialize)]
struct Wire(String, String, String, u64, String, Option<String>, u64);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// `(ident, …, typeid)` from a `create` reply.
fn created(v: Value) -> Result<(u64, Kind), ManagerError> {
    let bad = || ManagerError::Refused("a malformed create reply".into());
    let Value::Tuple(parts) = v else {
        return Err(bad());
    };
    match parts.as_slice() {
        [Value::String(id), _, Value::String(typeid)] => Ok((
            protocol::parse_ident(id).ok_or_else(bad)?,
            Kind::from_typeid(typeid).ok_or_else(bad)?,
        )),
        _ => Err(bad()),
    }
}

impl Handle {
    /// A new object of `kind` on the manager.
    pub(crate) fn create(
        link: &Arc<Link>,
        kind: Kind,
        mut args: Vec<Value>,
    ) -> Result<Handle, ManagerError> {
        args.insert(0, Value::String(kind.typeid().into()));
        let (session, v) = link.server_call("create", args)?;
        let (id, _) = created(v)?;
        link.retain(session.instance, id, false);
        Ok(Handle {
            link: link.clone(),
            target: Mutex::new((session.instance, id)),
            kind,
            name: None,
            timeout: None,
        })
    }

    /// The object registered as `name`, which must be of `kind`.
    pub(crate) fn named(link: &Arc<Link>, name: &str, kind: Kind) -> Result<Handle, ManagerError> {
        let (instance, id) = Handle::resolve(link, name, kind)?;
        link.retain(instance, id, false);
        Ok(Handle {
            link: link.clone(),
            target: Mutex::new((instance, id)),
            kind,
            name: Some(name.to_owned()),
            timeout: None,
        })
    }

    fn resolve(link: &Arc<Link>, name: &str, kind: Kind) -> Result<(u64, u64), ManagerError> {
        let (session, v) = link.server_call("create", vec![Value::String(name.into())])?;
        let (id, found) = created(v)?;
        if found != kind {
            return Err(ManagerError::Refused(format!(
                "{name:?} is a {}, not a {}",
                found.typeid(),
                kind.typeid()
            )));
        }
        Ok((session.instance, id))
    }

    pub(crate) fn with_timeout(&self, timeout: Option<Duration>) -> Handle {
        let (instance, id) = *poison::lock(&self.target);
        self.link.retain(instance, id, false);
        Handle {
            link: self.link.clone(),
            target: Mutex::new((instance, id)),
            kind: self.kind,
            name: self.name.clone(),
            timeout,
        }
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The object's id on the current server: after a restart, a named
    /// object is found again; an anonymous one is lost.
    fn current(&self, instance: u64) -> Result<u64, ManagerError> {
        let mut target = poison::lock(&self.target);
        if target.0 == instance {
            return Ok(target.1);
        }
        let Some(name) = &self.name else {
            return Err(ManagerError::ObjectLost(format!(
                "object {:x} was on a manager instance that is gone",
                target.1
            )));
        };
        let (inst, id) = Handle::resolve(&self.link, name, self.kind)?;
        self.link.retain(inst, id, false);
        self.link.release(target.0, target.1);
        *target = (inst, id);
        Ok(id)
    }

    /// Calls `method`; waits at most the proxy's timeout.
    pub(crate) fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, ManagerError> {
        self.call_for(method, args, self.timeout)
    }

    /// Calls `method`, waiting at most `wait` for the reply.
    pub(crate) fn call_for(
        &self,
        method: &str,
        args: Vec<Value>,
        wait: Option<Duration>,
    ) -> Result<Value, ManagerError> {
        let session = self.link.session()?;
        let id = self.current(session.instance)?;
        self.link.exchange(&session, Some(id), method, args, wait)
    }

    /// Calls a method that waits on the server for up to `timeout` (`None`:
    /// the proxy's own timeout, else for ever); the reply is awaited a
    /// little longer than the server waits.
    pub(crate) fn call_waiting(
        &self,
        method: &str,
        mut args: Vec<Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, ManagerError> {
        let timeout = timeout.or(self.timeout);
        args.push(timeout.map_or(Value::None, |t| Value::F64(t.as_secs_f64())));
        self.call_for(method, args, timeout.map(|t| t.saturating_add(LIVENESS)))
    }

    /// Sends `method` wanting no reply, on the live session only (from
    /// `Drop`: a dead manager took the object's state with it).
    pub(crate) fn post(&self, method: &str, args: Vec<Value>) {
        let (instance, id) = *poison::lock(&self.target);
        if let Some(session) = self.link.live_session()
            && session.instance == instance
        {
            session.post(Some(id), method, args);
        }
    }
}

impl Clone for Handle {
    fn clone(&self) -> Handle {
        self.with_timeout(self.timeout)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let (instance, id) = *self.target.get_mut().unwrap_or_else(|p| p.into_inner());
        self.link.release(instance, id);
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, id) = *poison::lock(&self.target);
        f.debug_struct("Proxy")
            .field("typeid", &self.kind.typeid())
            .field("id", &format_args!("{id:x}"))
            .field("manager", &self.link.address)
            .finish()
    }
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (instance, id) = *poison::lock(&self.target);
        // Whoever receives it must still find the object (unless a manager
        // object stores it, which then holds it).
        if !STORING.with(|s| s.get()) {
            self.link.pin(instance, id);
        }
        Wire(
            PROXY_MARK.into(),
            self.link.address.to_string(),
            hex(&self.link.authkey),
            id,
            self.kind.typeid().into(),
            self.name.clone(),
            instance,
        )
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Handle, D::Error> {
        use serde::de::Error as _;
        let Wire(mark, address, key, id, typeid, name, instance) = Wire::deserialize(d)?;
        if mark != PROXY_MARK {
            return Err(D::Error::custom("not a corral manager proxy"));
        }
        let address = address.parse().map_err(D::Error::custom)?;
        let key = unhex(&key).ok_or_else(|| D::Error::custom("a proxy's key is hex"))?;
        let kind = Kind::from_typeid(&typeid).ok_or_else(|| D::Error::custom("unknown typeid"))?;
        let link = Link::get(&address, &key);
        link.retain(instance, id, true);
        Ok(Handle {
            link,
            target: Mutex::new((instance, id)),
            kind,
            name,
            timeout: None,
        })
    }
}

/// A proxy type: what [`Manager::registered`](super::Manager::registered)
/// can return.
pub trait Proxy: Sized {
    #[doc(hidden)]
    const KIND: Kind;
    #[doc(hidden)]
    fn from_handle(h: Handle) -> Self;
}

macro_rules! proxy {
    ($(#[$doc:meta])* $name:ident < $($t:ident),* > = $kind:expr) => {
        $(#[$doc])*
        pub struct $name<$($t),*> {
            pub(crate) h: Handle,
            _t: ::std::marker::PhantomData<fn() -> ($($t,)*)>,
        }

        impl<$($t),*> Proxy for $name<$($t),*> {
            const KIND: Kind = $kind;
            fn from_handle(h: Handle) -> Self {
                $name { h, _t: ::std::marker::PhantomData }
            }
        }

        impl<$($t),*> $name<$($t),*> {
            /// The same proxy, whose calls give up after `timeout` with
            /// [`ManagerError::Timeout`] (the `_timeout` form of every
            /// call); blocking calls wait on the server at most that long.
            pub fn with_timeout(&self, timeout: ::std::time::Duration) -> Self {
                $name { h: self.h.with_timeout(Some(timeout)), _t: ::std::marker::PhantomData }
            }
        }

        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                $name { h: self.h.clone(), _t: ::std::marker::PhantomData }
            }
        }

        impl<$($t),*> ::std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.h.fmt(f)
            }
        }

        impl<$($t),*> ::serde::Serialize for $name<$($t),*> {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.h.serialize(s)
            }
        }

        impl<'de, $($t),*> ::serde::Deserialize<'de> for $name<$($t),*> {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let h = <Handle as ::serde::Deserialize>::deserialize(d)?;
                if h.kind != $kind {
                    use serde::de::Error as _;
                    return Err(D::Error::custom(format!(
                        "a proxy to a {}, not a {}",
                        h.kind.typeid(),
                        $kind.typeid()
                    )));
                }
                Ok($name { h, _t: ::std::marker::PhantomData })
            }
        }
    };
}

pub(crate) use proxy;

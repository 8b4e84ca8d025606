//! The manager's messages: CPython's manager protocol (pickled tuples), with
//! two more fields for corral clients so one connection carries many calls.
//!
//! ```text
//! request   (ident, method, args, kwds)                  a Python client
//!           (ident, method, args, kwds, call, owner)     a corral client
//! reply     ('#RETURN', value) | ('#ERROR', exception) | ('#TRACEBACK', text)
//!           (kind, value, call) to a corral client; call 0 with '#ALIVE'
//!           is the server's heartbeat while a call waits
//! ```
//!
//! `ident` is `None` for the server's own functions, else an object's id in
//! hex (as Python's `'%x' % id(obj)`). Pickles are decoded by `serde-pickle`,
//! which builds data and never imports or calls anything: a request naming
//! any Python object (a `GLOBAL`) is refused.

use std::collections::BTreeMap;

use serde_pickle::{DeOptions, HashableValue, SerOptions, Value};

/// Marks a proxy inside a value: `(MARK, address, authkey, id, typeid,
/// name, instance)`.
pub(crate) const PROXY_MARK: &str = "__corral_proxy__";

/// The kinds of object a manager holds (Python's `SyncManager` typeids),
/// for [`ManagerBuilder::register`](super::ManagerBuilder::register).
///
/// ```
/// use corral::manager::Kind;
/// assert_eq!(Kind::Dict.typeid(), "dict");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Kind {
    /// `dict`.
    Dict,
    /// `list`.
    List,
    /// `Queue` (unbounded).
    Queue,
    /// `JoinableQueue`.
    JoinableQueue,
    /// `Value` (holding `None` until set).
    Value,
    /// `Lock`.
    Lock,
    /// `RLock`.
    RLock,
    /// `Semaphore` (one permit).
    Semaphore,
    /// `BoundedSemaphore` (one permit).
    BoundedSemaphore,
    /// `Condition`.
    Condition,
    /// `Event`.
    Event,
    /// `Barrier` (Python requires parties; registered ones have 1).
    Barrier,
    /// `Namespace`.
    Namespace,
}

impl Kind {
    /// Python's `SyncManager` typeid.
    pub fn typeid(self) -> &'static str {
        match self {
            Kind::Dict => "dict",
            Kind::List => "list",
            Kind::Queue => "Queue",
            Kind::JoinableQueue => "JoinableQueue",
            Kind::Value => "Value",
            Kind::Lock => "Lock",
            Kind::RLock => "RLock",
            Kind::Semaphore => "Semaphore",
            Kind::BoundedSemaphore => "BoundedSemaphore",
            Kind::Condition => "Condition",
            Kind::Event => "Event",
            Kind::Barrier => "Barrier",
            Kind::Namespace => "Namespace",
        }
    }

    pub(crate) fn from_typeid(typeid: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.typeid() == typeid)
    }

    /// Every kind.
    pub(crate) const ALL: [Kind; 13] = [
        Kind::Dict,
        Kind::List,
        Kind::Queue,
        Kind::JoinableQueue,
        Kind::Value,
        Kind::Lock,
        Kind::RLock,
        Kind::Semaphore,
        Kind::BoundedSemaphore,
        Kind::Condition,
        Kind::Event,
        Kind::Barrier,
        Kind::Namespace,
    ];

    /// The methods a Python `AutoProxy` gets (the `exposed` tuple); the
    /// server answers every method of the kind whatever the proxy class.
    pub(crate) fn exposed(self) -> &'static [&'static str] {
        match self {
            Kind::Dict => &[
                "__contains__",
                "__delitem__",
                "__getitem__",
                "__iter__",
                "__len__",
                "__setitem__",
                "clear",
                "copy",
                "get",
                "items",
                "keys",
                "pop",
                "popitem",
                "setdefault",
                "update",
                "values",
            ],
            Kind::List => &[
                "__add__",
                "__contains__",
                "__delitem__",
                "__getitem__",
                "__len__",
                "__setitem__",
                "append",
                "clear",
                "copy",
                "count",
                "extend",
                "index",
                "insert",
                "pop",
                "remove",
                "reverse",
            ],
            Kind::Queue | Kind::JoinableQueue => &[
                "empty",
                "full",
                "get",
                "get_nowait",
                "join",
                "put",
                "put_nowait",
                "qsize",
                "task_done",
            ],
            Kind::Value => &["get", "set"],
            Kind::Lock | Kind::RLock | Kind::Semaphore | Kind::BoundedSemaphore => {
                &["acquire", "release"]
            }
            Kind::Condition => &["acquire", "release", "wait", "notify", "notify_all"],
            Kind::Event => &["is_set", "set", "clear", "wait"],
            Kind::Barrier => &["wait", "abort", "reset"],
            // Python reaches a namespace through its own `NamespaceProxy`
            // (`register(name, proxytype=NamespaceProxy)`); exposing the
            // attribute hooks to an `AutoProxy` would make it recurse.
            Kind::Namespace => &[],
        }
    }
}

/// An object's id on the wire: lowercase hex, as Python's.
pub(crate) fn ident(id: u64) -> String {
    format!("{id:x}")
}

pub(crate) fn parse_ident(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// A decoded request.
#[derive(Debug)]
pub(crate) struct Request {
    /// `None`: one of the server's own functions.
    pub(crate) ident: Option<String>,
    pub(crate) method: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwds: BTreeMap<HashableValue, Value>,
    /// A corral client's call number (0: no reply wanted) and the thread
    /// that called (the owner of locks it takes).
    pub(crate) corral: Option<(u64, u64)>,
}

/// Why a request was refused before it reached an object.
pub(crate) type Malformed = String;

fn strict() -> DeOptions {
    DeOptions::new()
}

thread_local! {
    /// Set while a peer's pickle is decoded (see [`decode_plain`]).
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is decoding a peer's pickle: a panic there is caught
/// and becomes a refusal (for the fuzz target's panic hook).
pub(crate) fn decoding() -> bool {
    DECODING.with(|d| d.get())
}

/// A pickle as plain data. serde-pickle sorts set members with an order
/// that is not total for some floats (NaN), and Rust's sort may panic on
/// that (found by the fuzz target): a peer's pickle must not take the
/// server down, so such a panic is caught and refused like any bad input.
fn decode_plain(frame: &[u8]) -> Result<Value, String> {
    super::guard::check(frame)?;
    DECODING.with(|d| d.set(true));
    let decoded = std::panic::catch_unwind(|| serde_pickle::value_from_slice(frame, strict()));
    DECODING.with(|d| d.set(false));
    match decoded {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a set or dict whose members cannot be ordered (NaN?)".into()),
    }
}

/// Decodes a request frame. Anything but the two tuple shapes, or any
/// Python object inside, is refused with a message.
pub(crate) fn decode_request(frame: &[u8]) -> Result<Request, Malformed> {
    let value = decode_plain(frame).map_err(|e| {
        format!(
            "corral's manager accepts plain data only (None, bool, int, float, str, bytes, \
             list, tuple, dict, set); this request could not be read as such: {e}"
        )
    })?;
    let (Value::Tuple(mut parts) | Value::List(mut parts)) = value else {
        return Err("a request is a tuple (ident, method, args, kwds)".into());
    };
    if parts.len() != 4 && parts.len() != 6 {
        return Err("a request is a tuple (ident, method, args, kwds)".into());
    }
    let corral = if parts.len() == 6 {
        let owner = as_u64(parts.pop().unwrap_or(Value::None));
        let call = as_u64(parts.pop().unwrap_or(Value::None));
        Some((
            call.ok_or("a bad call number")?,
            owner.ok_or("a bad owner")?,
        ))
    } else {
        None
    };
    let kwds = match parts.pop() {
        Some(Value::Dict(d)) => d,
        Some(Value::None) => BTreeMap::new(),
        _ => return Err("keyword arguments are a dict".into()),
    };
    let args = match parts.pop() {
        Some(Value::Tuple(a) | Value::List(a)) => a,
        _ => return Err("arguments are a tuple".into()),
    };
    let method = match parts.pop() {
        Some(Value::String(m)) => m,
        _ => return Err("a method name is a str".into()),
    };
    let ident = match parts.pop() {
        Some(Value::String(i)) => Some(i),
        Some(Value::None) => None,
        _ => return Err("an object id is a str or None".into()),
    };
    Ok(Request {
        ident,
        method,
        args,
        kwds,
        corral,
    })
}

fn as_u64(v: Value) -> Option<u64> {
    match v {
        Value::I64(i) => u64::try_from(i).ok(),
        Value::Int(i) => u64::try_from(i).ok(),
        _ => None,
    }
}

/// Encodes a corral client's request.
pub(crate) fn encode_request(
    ident: Option<u64>,
    method: &str,
    args: Vec<Value>,
    call: u64,
    owner: u64,
) -> Vec<u8> {
    let value = Value::Tuple(vec![
        ident.map_or(Value::None, |i| Value::String(self::ident(i))),
        Value::String(method.to_owned()),
        Value::Tuple(args),
        Value::Dict(BTreeMap::new()),
        Value::I64(call as i64),
        Value::I64(owner as i64),
    ]);
    encode(&value)
}

/// A pickle of plain data (protocol 3, which every Python 3 reads).
pub(crate) fn encode(value: &Value) -> Vec<u8> {
    serde_pickle::value_to_vec(value, SerOptions::new()).expect("plain data always pickles")
}

/// An exception raised by a method: a builtin (or `queue`) class and its
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exc {
    pub(crate) module: &'static str,
    pub(crate) class: &'static str,
    pub(crate) message: String,
}

impl Exc {
    pub(crate) fn new(class: &'static str, message: impl Into<String>) -> Exc {
        let module = match class {
            "Empty" | "Full" => "queue",
            "BrokenBarrierError" => "threading",
            _ => "builtins",
        };
        Exc {
            module,
            class,
            message: message.into(),
        }
    }
}

/// What a call answers.
#[derive(Debug)]
pub(crate) enum Reply {
    Return(Value),
    Raise(Exc),
    /// A failure of the request itself (unknown object or method).
    Traceback(String),
}

/// A reply as a Python client reads it. Exceptions are written by hand: the
/// one pickle construct serde-pickle cannot write is a class reference.
pub(crate) fn encode_python_reply(reply: &Reply) -> Vec<u8> {
    match reply {
        Reply::Return(v) => encode(&Value::Tuple(vec![
            Value::String("#RETURN".into()),
            v.clone(),
        ])),
        Reply::Traceback(t) => encode(&Value::Tuple(vec![
            Value::String("#TRACEBACK".into()),
            Value::String(t.clone()),
        ])),
        Reply::Raise(e) => python_exception(e),
    }
}

/// `('#ERROR', module.Class(message))` in pickle protocol 2.
fn python_exception(e: &Exc) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    unicode(&mut out, "#ERROR");
    out.push(b'c');
    out.extend_from_slice(e.module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(e.class.as_bytes());
    out.push(b'\n');
    unicode(&mut out, &e.message);
    out.extend_from_slice(&[0x85, b'R', 0x86, b'.']); // TUPLE1 REDUCE TUPLE2 STOP
    out
}

/// `BINUNICODE`: a 4-byte little-endian length, then UTF-8.
fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A reply as a corral client reads it: `(kind, value, call)`; an exception
/// travels as `(class, message)`.
pub(crate) fn encode_corral_reply(reply: &Reply, call: u64) -> Vec<u8> {
    let (kind, value) = match reply {
        Reply::Return(v) => ("#RETURN", v.clone()),
        Reply::Raise(e) => (
            "#ERROR",
            Value::Tuple(vec![
                Value::String(e.class.into()),
                Value::String(e.message.clone()),
            ]),
        ),
        Reply::Traceback(t) => ("#TRACEBACK", Value::String(t.clone())),
    };
    encode(&Value::Tuple(vec![
        Value::String(kind.into()),
        value,
        Value::I64(call as i64),
    ]))
}

/// The heartbeat sent while a corral client's call waits.
pub(crate) fn alive() -> Vec<u8> {
    encode(&Value::Tuple(vec![
        Value::String("#ALIVE".into()),
        Value::None,
        Value::I64(0),
    ]))
}

/// A reply as a corral client decodes it.
#[derive(Debug)]
pub(crate) enum Answer {
    Return(Value),
    Raise { class: String, message: String },
    Traceback(String),
    Alive,
}

pub(crate) fn decode_corral_reply(frame: &[u8]) -> Result<(u64, Answer), String> {
    let value = decode_plain(frame).map_err(|e| format!("an unreadable reply: {e}"))?;
    let Value::Tuple(mut parts) = value else {
        return Err("a reply is a tuple".into());
    };
    if parts.len() != 3 {
        return Err("a reply has three parts".into());
    }
    let call = as_u64(parts.pop().unwrap_or(Value::None)).ok_or("a bad call number")?;
    let value = parts.pop().unwrap_or(Value::None);
    let Some(Value::String(kind)) = parts.pop() else {
        return Err("a reply's kind is a str".into());
    };
    let answer = match (kind.as_str(), value) {
        ("#RETURN", v) => Answer::Return(v),
        ("#ALIVE", _) => Answer::Alive,
        ("#TRACEBACK", Value::String(t)) => Answer::Traceback(t),
        ("#ERROR", Value::Tuple(mut e)) if e.len() == 2 => {
            let message = match e.pop() {
                Some(Value::String(m)) => m,
                _ => String::new(),
            };
            let class = match e.pop() {
                Some(Value::String(c)) => c,
                _ => "Exception".into(),
            };
            Answer::Raise { class, message }
        }
        _ => return Err(format!("an unknown reply kind {kind:?}")),
    };
    Ok((call, answer))
}

/// The ids of this manager's proxies held inside `value`.
pub(crate) fn proxy_ids(value: &Value, out: &mut Vec<u64>) {
    match value {
        Value::Tuple(items) => {
            if let [Value::String(mark), _, _, id, ..] = items.as_slice()
                && mark == PROXY_MARK
            {
                if let Some(id) = as_u64(id.clone()) {
                    out.push(id);
                }
                return;
            }
            items.iter().for_each(|v| proxy_ids(v, out));
        }
        Value::List(items) => items.iter().for_each(|v| proxy_ids(v, out)),
        Value::Dict(d) => d.values().for_each(|v| proxy_ids(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips() {
        let frame = encode_request(Some(0x2a), "get", vec![Value::I64(7)], 9, 3);
        let r = decode_request(&frame).unwrap();
        assert_eq!(r.ident.as_deref(), Some("2a"));
        assert_eq!((r.method.as_str(), r.corral), ("get", Some((9, 3))));
        assert_eq!(r.args, vec![Value::I64(7)]);
    }

    #[test]
    fn python_objects_are_refused_unexecuted() {
        // pickle.dumps(os.system) at protocol 2: a GLOBAL.
        let frame = b"\x80\x02cposix\nsystem\nq\x00.";
        let err = decode_request(frame).unwrap_err();
        assert!(err.contains("plain data only"), "{err}");
    }

    #[test]
    fn a_set_that_cannot_be_ordered_is_refused_not_a_crash() {
        // Found by the fuzz target: serde-pickle's sort panicked.
        let frame = include_bytes!("../../fuzz/regressions/manager_request-unordered-set");
        assert!(decode_request(frame).is_err());
        assert!(!decoding());
    }

    #[test]
    fn a_request_that_would_decode_into_gigabytes_is_refused() {
        // Found by the fuzz target: DUP and TUPLE2 doubling a tuple.
        let frame = include_bytes!("../../fuzz/regressions/manager_request-duplicating-tuple");
        assert!(decode_request(frame).is_err());
    }

    #[test]
    fn an_error_reply_is_the_bytes_python_reads() {
        let bytes = python_exception(&Exc::new("KeyError", "nope"));
        assert!(bytes.windows(18).any(|w| w == b"cbuiltins\nKeyError"));
        let (call, answer) = decode_corral_reply(&encode_corral_reply(
            &Reply::Raise(Exc::new("Empty", "")),
            4,
        ))
        .unwrap();
        assert_eq!(call, 4);
        assert!(matches!(answer, Answer::Raise { class, .. } if class == "Empty"));
    }
}

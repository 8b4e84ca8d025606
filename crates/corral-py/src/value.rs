//! What crosses between the interpreter and a worker: a call and its outcome.
//!
//! Plain values (None, bool, int that fits 64 bits, float, str, bytes) cross
//! natively; everything else is pickled by the Python side
//! (`corral._support.dumps`, with cloudpickle where pickle cannot).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::support;

/// A Python value as data.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Arg {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(ByteBuf),
    Pickled(ByteBuf),
}

impl Arg {
    /// The value of `obj`, natively when it is a plain value.
    pub(crate) fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Arg> {
        if obj.is_none() {
            Ok(Arg::None)
        } else if obj.is_exact_instance_of::<PyBool>() {
            Ok(Arg::Bool(obj.extract()?))
        } else if obj.is_exact_instance_of::<PyInt>() {
            match obj.extract::<i64>() {
                Ok(v) => Ok(Arg::Int(v)),
                Err(_) => Arg::pickled(obj),
            }
        } else if obj.is_exact_instance_of::<PyFloat>() {
            Ok(Arg::Float(obj.extract()?))
        } else if obj.is_exact_instance_of::<PyString>() {
            Ok(Arg::Str(obj.extract()?))
        } else if obj.is_exact_instance_of::<PyBytes>() {
            Ok(Arg::Bytes(ByteBuf::from(obj.extract::<Vec<u8>>()?)))
        } else {
            Arg::pickled(obj)
        }
    }

    fn pickled(obj: &Bound<'_, PyAny>) -> PyResult<Arg> {
        let bytes = support::call(obj.py(), support::DUMPS, (obj,))?;
        Ok(Arg::Pickled(ByteBuf::from(bytes.extract::<Vec<u8>>()?)))
    }

    /// The Python value again.
    pub(crate) fn into_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(match self {
            Arg::None => py.None().into_bound(py),
            Arg::Bool(v) => PyBool::new(py, v).to_owned().into_any(),
            Arg::Int(v) => v.into_pyobject(py)?.into_any(),
            Arg::Float(v) => PyFloat::new(py, v).into_any(),
            Arg::Str(v) => PyString::new(py, &v).into_any(),
            Arg::Bytes(v) => PyBytes::new(py, &v).into_any(),
            Arg::Pickled(v) => support::call(py, support::LOADS, (PyBytes::new(py, &v),))?,
        })
    }
}

/// How the callable takes its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Mode {
    /// `f(arg)`.
    One,
    /// `f(*arg)`: `arg` is a tuple (`starmap`).
    Star,
    /// `f(*args, **kwargs)`: `arg` is the pair `(args, kwargs)`.
    ArgsKwargs,
}

/// One call of a Python callable in a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Call {
    /// The callable, pickled (by reference where it can be).
    pub(crate) func: ByteBuf,
    /// The parent's main script, run as `__mp_main__` in a worker that
    /// needs a function defined there.
    pub(crate) main: Option<String>,
    pub(crate) mode: Mode,
    pub(crate) arg: Arg,
}

/// How a call ended in the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Out {
    /// It returned this.
    Value(Arg),
    /// It raised: the exception and its formatted traceback, pickled.
    Raised(ByteBuf),
    /// It raised `SystemExit` with this code (a `Process` ends with it).
    Exit(i32),
}

/// The parts of a call, prepared once per `map` and reused for each item.
#[derive(Clone, Debug)]
pub(crate) struct Callable {
    pub(crate) func: ByteBuf,
    pub(crate) main: Option<String>,
    pub(crate) mode: Mode,
}

impl Callable {
    pub(crate) fn new(func: Vec<u8>, main: Option<String>, mode: Mode) -> Callable {
        Callable {
            func: ByteBuf::from(func),
            main,
            mode,
        }
    }

    /// The call of this callable on `arg`.
    pub(crate) fn call(&self, arg: &Bound<'_, PyAny>) -> PyResult<Call> {
        Ok(Call {
            func: self.func.clone(),
            main: self.main.clone(),
            mode: self.mode,
            arg: Arg::from_py(arg)?,
        })
    }
}

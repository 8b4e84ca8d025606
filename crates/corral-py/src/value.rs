//! What crosses between the interpreter and a worker: a call and its outcome.
//!
//! Plain values (None, bool, int that fits 64 bits, float, str, bytes) cross
//! natively; everything else is pickled by the Python side
//! (`corral._support.dumps`, with cloudpickle where pickle cannot).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// A tuple (a call's positional arguments, most often), item by item.
    Tuple(Vec<Arg>),
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
        } else if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
            tuple
                .iter()
                .map(|x| Arg::from_py(&x))
                .collect::<PyResult<_>>()
                .map(Arg::Tuple)
        } else {
            Arg::pickled(obj)
        }
    }

    /// `obj` pickled, whatever it is.
    pub(crate) fn pickled(obj: &Bound<'_, PyAny>) -> PyResult<Arg> {
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
            Arg::Tuple(items) => {
                let items: Vec<Bound<'_, PyAny>> = items
                    .into_iter()
                    .map(|x| x.into_py(py))
                    .collect::<PyResult<_>>()?;
                PyTuple::new(py, items)?.into_any()
            }
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

/// A callable as a worker loads it: pickled, with the parent's main script
/// (run as `__mp_main__` in a worker that needs a function defined there).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Func {
    pub(crate) bytes: ByteBuf,
    pub(crate) main: Option<String>,
}

/// One call of a Python callable in a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Call {
    /// The callable's id (0: none). A worker keeps the callables it loaded
    /// by id.
    pub(crate) fid: u64,
    /// The callable itself; a `map` sends it with the first item of each
    /// chunk only (a worker that lacks it answers [`Out::NeedFunc`]).
    pub(crate) func: Option<Arc<Func>>,
    pub(crate) mode: Mode,
    pub(crate) arg: Arg,
}

impl Call {
    /// A call that runs nothing: it names no callable a worker can have
    /// (id 0) and carries none, so it comes back [`Out::NeedFunc`]. Stands
    /// for an item whose argument could not be made data (the `map` then
    /// raises that error).
    pub(crate) fn nothing() -> Call {
        Call {
            fid: 0,
            func: None,
            mode: Mode::One,
            arg: Arg::None,
        }
    }
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
    /// The worker did not have the callable and the call did not carry it:
    /// nothing ran; the parent sends the argument (returned here) again,
    /// with the callable.
    NeedFunc(Arg),
    /// A batch of a `map` ran: the values, a pickled list with `None` where
    /// an item failed, and the failed items' outcomes by position.
    Batch(ByteBuf, Vec<(u32, Out)>),
}

/// A callable as Python holds it (`corral._corral._Func`): pickled once
/// per function object by `corral._support.dump_function`, with an id of
/// its own.
#[pyclass(frozen, name = "_Func", module = "corral._corral")]
#[derive(Debug)]
pub(crate) struct PyFunc {
    fid: u64,
    func: Arc<Func>,
}

#[pymethods]
impl PyFunc {
    #[new]
    #[pyo3(signature = (bytes, main=None))]
    fn new(bytes: Vec<u8>, main: Option<String>) -> PyFunc {
        // Ids are this process's, in order: a worker serves one parent, and
        // small ids cost a byte on the wire.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let fid = NEXT.fetch_add(1, Ordering::Relaxed);
        PyFunc {
            fid,
            func: Arc::new(Func {
                bytes: ByteBuf::from(bytes),
                main,
            }),
        }
    }
}

impl PyFunc {
    /// The `_Func` of the callable `f`: made once per function object (by
    /// `corral._support.dump_function`), then found in its cache.
    pub(crate) fn of<'py>(f: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyFunc>> {
        let py = f.py();
        let cache = support::get(py, support::FUNCTIONS)?.cast::<PyDict>()?;
        if let Some(hit) = cache.get_item(f.as_ptr() as usize)?
            && let Ok((func, made)) = hit.extract::<(Bound<'py, PyAny>, Bound<'py, PyFunc>)>()
            && func.is(f)
        {
            return Ok(made);
        }
        Ok(support::call(py, support::DUMP_FUNCTION, (f,))?.cast_into::<PyFunc>()?)
    }
}

/// A call's mode and argument for `f(*args, **kwargs)`.
pub(crate) fn packed<'py>(
    args: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Mode, Bound<'py, PyAny>)> {
    let args = match args.cast_exact::<PyTuple>() {
        Ok(tuple) => tuple.clone(),
        Err(_) => PyTuple::new(args.py(), args.try_iter()?.collect::<PyResult<Vec<_>>>()?)?,
    };
    let py = args.py();
    match kwargs {
        Some(kwargs) if kwargs.is_truthy()? => {
            let kwargs = py.get_type::<PyDict>().call1((kwargs,))?;
            let pair = PyTuple::new(py, [args.into_any(), kwargs])?;
            Ok((Mode::ArgsKwargs, pair.into_any()))
        }
        _ => Ok((Mode::Star, args.into_any())),
    }
}

/// A callable and how it takes its argument, for the calls of one API call.
#[derive(Clone, Debug)]
pub(crate) struct Callable {
    pub(crate) fid: u64,
    pub(crate) func: Arc<Func>,
    pub(crate) mode: Mode,
}

impl Callable {
    pub(crate) fn new(func: &PyFunc, mode: Mode) -> Callable {
        Callable {
            fid: func.fid,
            func: func.func.clone(),
            mode,
        }
    }

    /// The call of this callable on `arg`, carrying the callable itself.
    pub(crate) fn call(&self, arg: &Bound<'_, PyAny>) -> PyResult<Call> {
        self.call_with(arg, true)
    }

    /// The call of this callable on an argument already made data.
    pub(crate) fn call_arg(&self, arg: Arg) -> Call {
        Call {
            fid: self.fid,
            func: Some(self.func.clone()),
            mode: self.mode,
            arg,
        }
    }

    /// The call on a batch of items (a sequence, pickled as one value);
    /// with the callable's bytes only if `carry`.
    pub(crate) fn batch(&self, items: &Bound<'_, PyAny>, carry: bool) -> PyResult<Call> {
        Ok(Call {
            fid: self.fid,
            func: carry.then(|| self.func.clone()),
            mode: self.mode,
            arg: Arg::pickled(items)?,
        })
    }

    /// The call on `arg`; with the callable's bytes only if `carry`.
    pub(crate) fn call_with(&self, arg: &Bound<'_, PyAny>, carry: bool) -> PyResult<Call> {
        Ok(Call {
            fid: self.fid,
            func: carry.then(|| self.func.clone()),
            mode: self.mode,
            arg: Arg::from_py(arg)?,
        })
    }
}

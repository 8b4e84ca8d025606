//! What runs in a worker: a Python call, from data to data.

use std::cell::RefCell;
use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use serde_bytes::ByteBuf;

use crate::support;
use crate::value::{Arg, Call, Mode, Out};

/// Callables this worker has loaded, by id, and the last one used (the
/// items of a `map` all call the same).
type Loaded = (HashMap<u64, Py<PyAny>>, Option<(u64, Py<PyAny>)>);

thread_local! {
    static LOADED: RefCell<Loaded> = RefCell::new((HashMap::new(), None));
}

/// Forgets the callables loaded: run first in every child (with the GIL),
/// whose ids come from another parent than the process it was forked from.
pub(crate) fn forget_loaded() {
    LOADED.with_borrow_mut(|(cache, last)| {
        cache.clear();
        *last = None;
    });
}

/// The callable of `call`, loaded once per worker; `None` if this worker
/// lacks it and the call does not carry it.
fn callable<'py>(py: Python<'py>, call: &Call) -> PyResult<Option<Bound<'py, PyAny>>> {
    LOADED.with_borrow_mut(|(cache, last)| {
        if let Some((fid, f)) = last.as_ref()
            && *fid == call.fid
        {
            return Ok(Some(f.bind(py).clone()));
        }
        let f = load(py, cache, call)?;
        *last = f.as_ref().map(|f| (call.fid, f.clone().unbind()));
        Ok(f)
    })
}

/// The callable of `call` from the cache, else loaded from the call.
fn load<'py>(
    py: Python<'py>,
    cache: &mut HashMap<u64, Py<PyAny>>,
    call: &Call,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Some(f) = cache.get(&call.fid) {
        return Ok(Some(f.bind(py).clone()));
    }
    let Some(func) = &call.func else {
        return Ok(None);
    };
    let f = support::call(
        py,
        support::LOAD_FUNCTION,
        (func.bytes.as_slice(), func.main.as_deref()),
    )?;
    cache.insert(call.fid, f.clone().unbind());
    Ok(Some(f))
}

/// Calls the callable on the argument, as the mode says; the argument back
/// if the callable is missing here.
fn invoke<'py>(py: Python<'py>, call: Call) -> PyResult<Result<Bound<'py, PyAny>, Arg>> {
    let Some(f) = callable(py, &call)? else {
        return Ok(Err(call.arg));
    };
    apply(&f, call.mode, call.arg.into_py(py)?).map(Ok)
}

/// `f` called on `arg` as `mode` says.
fn apply<'py>(
    f: &Bound<'py, PyAny>,
    mode: Mode,
    arg: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    match mode {
        Mode::One => f.call1((arg,)),
        Mode::Star => f.call1(arg.cast_into::<PyTuple>()?),
        Mode::ArgsKwargs => {
            let (args, kwargs): (Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>) =
                arg.extract()?;
            f.call(args, kwargs.as_ref())
        }
    }
}

/// The outcome of an exception raised by a call (or by loading it).
fn raised(py: Python<'_>, err: PyErr) -> Out {
    if err.is_instance_of::<pyo3::exceptions::PySystemExit>(py) {
        let code = err.value(py).getattr("code").ok();
        let code = match code {
            Some(c) if c.is_none() => 0,
            Some(c) => c.extract::<i32>().unwrap_or(1),
            None => 1,
        };
        return Out::Exit(code);
    }
    let exc = err.into_value(py); // with its traceback attached
    match support::call(py, support::PACK_EXCEPTION, (exc,)).and_then(|b| b.extract::<Vec<u8>>()) {
        Ok(bytes) => Out::Raised(ByteBuf::from(bytes)),
        // pack_exception falls back to a RuntimeError itself; failing that
        // too, the worker has no working pickle: say so as a value.
        Err(e) => Out::Value(Arg::Str(format!("corral: an exception was lost: {e}"))),
    }
}

/// A pool task or a `Process` target: runs a Python call.
pub(crate) fn py_job(call: Call) -> Out {
    Python::attach(|py| match invoke(py, call) {
        Ok(Ok(value)) => match Arg::from_py(&value) {
            Ok(arg) => Out::Value(arg),
            Err(e) => raised(py, e),
        },
        Ok(Err(arg)) => Out::NeedFunc(arg),
        Err(e) => raised(py, e),
    })
}

/// A batch of a `map`: the call's argument is a pickled sequence of items;
/// each item is called on its own and fails alone ([`Out::Batch`]).
pub(crate) fn py_batch(call: Call) -> Out {
    Python::attach(|py| {
        let f = match callable(py, &call) {
            Ok(Some(f)) => f,
            Ok(None) => return Out::NeedFunc(call.arg),
            Err(e) => return raised(py, e),
        };
        run_batch(py, &f, call.mode, call.arg).unwrap_or_else(|e| raised(py, e))
    })
}

/// Calls `f` on each item of `items` (`corral._support.run_batch`).
fn run_batch(py: Python<'_>, f: &Bound<'_, PyAny>, mode: Mode, items: Arg) -> PyResult<Out> {
    let star = match mode {
        Mode::One => 0,
        Mode::Star => 1,
        Mode::ArgsKwargs => {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "corral: a map batch of keyword calls",
            ));
        }
    };
    let items = items.into_py(py)?;
    let (values, failed): (Vec<u8>, Vec<(u32, Vec<u8>)>) =
        support::call(py, support::RUN_BATCH, (f, star, items))?.extract()?;
    let failed = failed
        .into_iter()
        .map(|(i, exc)| (i, Out::Raised(ByteBuf::from(exc))))
        .collect();
    Ok(Out::Batch(ByteBuf::from(values), failed))
}

/// A `Process` target: as [`py_job`], and a raised exception's traceback is
/// printed in the child, as Python's `Process` does.
pub(crate) fn py_process(call: Call) -> Out {
    let out = py_job(call);
    if let Out::Raised(bytes) = &out {
        Python::attach(|py| {
            let _ = support::call(py, support::REPORT, (bytes.as_slice(),));
        });
    }
    out
}

/// A pool initializer: runs the Python initializer; an exception fails the
/// worker's start (reported with the traceback).
pub(crate) fn py_init(call: Call) {
    if let Out::Raised(bytes) = py_job(call) {
        let text = Python::attach(|py| {
            support::call(py, support::REMOTE_ERROR, (bytes.as_slice(),))
                .map(|e| e.to_string())
                .unwrap_or_else(|e| e.to_string())
        });
        panic!("the pool's initializer raised: {text}");
    }
}

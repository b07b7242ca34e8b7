//! The C API pieces the glue needs beyond pyo3's safe API, in the one module
//! of this crate with `unsafe`:
//! - borrowing any Python buffer (bytes, bytearray, memoryview, mmap, numpy)
//!   as `&[u8]` without copying it;
//! - filling a new `bytes` object without zeroing it first;
//! - reading a `str` as UTF-8 without a temporary `bytes` object;
//! - reading a `{str: int}` vocabulary dict without reference counting.
//!
//! pyo3 wraps `PyObject_GetBuffer` and `PyUnicode_AsUTF8AndSize` only for
//! the stable ABI of Python 3.11 / 3.10 and later, but the wheel is abi3 for
//! 3.9+. Both functions and the `Py_buffer` layout have been exported
//! unchanged by every CPython since 3.3 (later versions only added them to
//! the *documented* limited API), so we declare them here ourselves.
#![allow(unsafe_code)]

use std::os::raw::{c_char, c_int, c_void};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

/// `Py_buffer` from CPython's `object.h` (identical on 3.3..3.14).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

unsafe extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
    fn PyUnicode_AsUTF8AndSize(
        obj: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const c_char;
}

/// `PyBUF_SIMPLE`: one C-contiguous run of bytes; non-contiguous exporters
/// refuse it with `BufferError`, which is what we want.
const PYBUF_SIMPLE: c_int = 0;

/// An exported buffer, released on drop. While it lives the exporter keeps
/// the memory where it is (a bytearray cannot be resized, an mmap cannot be
/// closed), so the slice stays valid even with the GIL released.
pub(crate) struct InputBuffer {
    // Boxed so the address CPython filled in never moves.
    raw: Box<RawBuffer>,
}

impl InputBuffer {
    /// Exports `obj`'s buffer, or raises `TypeError`/`BufferError` as Python does.
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<InputBuffer> {
        let mut raw = Box::new(RawBuffer {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        });
        // SAFETY: the GIL is held (we have a `Bound`), `obj` is a live object
        // and `raw` is a writable Py_buffer for CPython to fill.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *raw, PYBUF_SIMPLE) };
        if rc != 0 {
            return Err(PyErr::take(obj.py())
                .unwrap_or_else(|| PyBufferError::new_err("object does not export a buffer")));
        }
        Ok(InputBuffer { raw })
    }

    /// The exported bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        let Ok(len) = usize::try_from(self.raw.len) else {
            return &[];
        };
        if len == 0 || self.raw.buf.is_null() {
            return &[];
        }
        // SAFETY: a successful PyBUF_SIMPLE export is `len` contiguous
        // readable bytes at `buf`, valid until PyBuffer_Release (our drop),
        // and `&self` keeps it from being released while the slice lives.
        // Another Python thread may still write into a *mutable* exporter
        // (bytearray) meanwhile; the codec reads every byte as untrusted
        // input, so that gives at worst a wrong verdict, as in C.
        unsafe { std::slice::from_raw_parts(self.raw.buf.cast::<u8>(), len) }
    }
}

/// A new `bytes` of `len` bytes filled by `fill` with the GIL released,
/// without the zeroing pass `PyBytes::new_with` makes (for 256 MiB that
/// pass costs as much as the copy that follows).
pub(crate) fn new_bytes_with<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [u8]) + Send,
) -> PyResult<Bound<'py, PyBytes>> {
    let size = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("bytes object too large"))?;
    // SAFETY: a NULL source asks CPython for an uninitialised object of
    // `size` bytes, which its owner may write before sharing it.
    let ptr = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), size) };
    if ptr.is_null() {
        return Err(PyErr::take(py)
            .unwrap_or_else(|| pyo3::exceptions::PyMemoryError::new_err("cannot allocate bytes")));
    }
    // SAFETY: `ptr` is a new, owned reference to a bytes object.
    let bytes = unsafe { Bound::from_owned_ptr(py, ptr) }.downcast_into::<PyBytes>()?;
    // SAFETY: the object is new and not yet shared with any other code, and
    // its data is exactly `len` bytes (PyBytes_AsString of a bytes object).
    let data = unsafe { ffi::PyBytes_AsString(ptr) }.cast::<u8>();
    if len > 0 && !data.is_null() {
        // SAFETY: see above; the slice does not outlive this function.
        let slice = unsafe { std::slice::from_raw_parts_mut(data, len) };
        py.allow_threads(|| fill(slice));
    }
    Ok(bytes)
}

/// The UTF-8 of a `str` without copying it (CPython caches it on the
/// object), or `None` for a `str` holding lone surrogates.
pub(crate) fn str_utf8<'a>(s: &'a Bound<'_, PyString>) -> Option<&'a [u8]> {
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: the GIL is held and `s` is a live str.
    let data = unsafe { PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut size) };
    if data.is_null() {
        // Lone surrogates: clear the UnicodeEncodeError, the caller falls back.
        let _ = PyErr::take(s.py());
        return None;
    }
    let len = usize::try_from(size).ok()?;
    // SAFETY: CPython keeps the UTF-8 buffer alive as long as the str, which
    // `'a` borrows.
    Some(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

impl Drop for InputBuffer {
    fn drop(&mut self) {
        // The release must run with the GIL; with_gil is a no-op when held.
        Python::with_gil(|_| {
            // SAFETY: `raw` was filled by a successful PyObject_GetBuffer and
            // is released exactly once, here.
            unsafe { PyBuffer_Release(&mut *self.raw) }
        });
    }
}

/// [`str_utf8`] as `&str`, or `None` for a `str` holding lone surrogates.
pub(crate) fn str_as_str<'a>(s: &'a Bound<'_, PyString>) -> Option<&'a str> {
    let utf8 = str_utf8(s)?;
    // SAFETY: PyUnicode_AsUTF8AndSize encodes with the strict UTF-8 codec
    // (it fails on lone surrogates, the one thing a str may hold that UTF-8
    // cannot), so the bytes are valid UTF-8; re-validating them cost ~15% of
    // a 152k-token vocabulary hash.
    Some(unsafe { std::str::from_utf8_unchecked(utf8) })
}

/// How [`dict_into_table`] ended.
pub(crate) enum DictScan {
    /// Every item was pushed.
    Done,
    /// A key or value of another type, a bool, or a key with lone
    /// surrogates: the caller takes the JSON path.
    NotStrInt,
    /// An int id that is negative or not below `u32::MAX`: the caller
    /// takes the path that writes any int.
    OtherInt,
}

/// Pushes every `(token, id)` item of a `{str: int}` dict into `table`,
/// reading the items through borrowed references: per item two C calls
/// fewer than pyo3's iterator (which takes and drops a reference to key
/// and value), for a 152k-token vocabulary about a millisecond.
pub(crate) fn dict_into_table(
    dict: &Bound<'_, PyDict>,
    table: &mut avp_handshake::hash::TokenTable,
) -> PyResult<DictScan> {
    let py = dict.py();
    let mut pos: ffi::Py_ssize_t = 0;
    let mut key: *mut ffi::PyObject = std::ptr::null_mut();
    let mut value: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: the GIL is held throughout, and nothing in the loop runs
    // Python code (only the C calls below, none of which calls back into
    // Python for exact or subclassed str/int objects, and TokenTable::push,
    // plain Rust), so the dict cannot change and its borrowed keys and
    // values stay alive for the iteration; the token bytes are copied
    // into `table` before the next item is read.
    while unsafe { ffi::PyDict_Next(dict.as_ptr(), &mut pos, &mut key, &mut value) } != 0 {
        // SAFETY: PyDict_Next gave live, borrowed references.
        let (is_str, is_int, is_bool) = unsafe {
            (
                ffi::PyUnicode_Check(key) != 0,
                ffi::PyLong_Check(value) != 0,
                ffi::PyBool_Check(value) != 0,
            )
        };
        if !is_str || !is_int || is_bool {
            return Ok(DictScan::NotStrInt); // json.dumps writes `true`, not 1
        }
        // SAFETY: `value` is an int (checked above); no Python code runs.
        let id = unsafe { ffi::PyLong_AsLongLong(value) };
        if id == -1 && PyErr::take(py).is_some() {
            return Ok(DictScan::OtherInt); // beyond 64 bits
        }
        let Some(id) = u32::try_from(id).ok().filter(|&id| id != u32::MAX) else {
            return Ok(DictScan::OtherInt);
        };
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: `key` is a live str (checked above).
        let data = unsafe { PyUnicode_AsUTF8AndSize(key, &mut size) };
        let len = usize::try_from(size).ok();
        let (false, Some(len)) = (data.is_null(), len) else {
            // Lone surrogates: clear the UnicodeEncodeError.
            let _ = PyErr::take(py);
            return Ok(DictScan::NotStrInt);
        };
        // SAFETY: CPython keeps the UTF-8 buffer alive as long as the str,
        // which the unchanged dict holds; it is valid UTF-8 (the strict codec
        // made it, see str_as_str), and the slice is dropped before the next
        // item is read.
        let token = unsafe {
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(data.cast::<u8>(), len))
        };
        table
            .push(token, id)
            .map_err(|e| crate::errors::handshake(py, &e))?;
    }
    Ok(DictScan::Done)
}

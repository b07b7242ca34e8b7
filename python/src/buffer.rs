//! Borrowing any Python buffer (bytes, bytearray, memoryview, mmap, numpy)
//! as `&[u8]` without copying it. The one module of this crate with
//! `unsafe`: the buffer protocol is a C API.
//!
//! pyo3 wraps `PyObject_GetBuffer` only for the stable ABI of Python 3.11
//! and later, but the wheel is abi3 for 3.9+. The function and the
//! `Py_buffer` layout have been exported unchanged by every CPython since
//! 3.3 (3.11 only added them to the *documented* limited API), so we
//! declare them here ourselves.
#![allow(unsafe_code)]

use std::os::raw::{c_char, c_int, c_void};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

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

"""One ``openvino.Core`` per process, and the thread's signal stack kept valid around code
that makes Cores of its own (NNCF).

Upstream: OpenVINO's CPU plugin (``src/plugins/intel_cpu/src/sigstack_manager.cpp``,
``SigAltStackSetup``, added by openvinotoolkit/openvino#11894 so that AMX state fits a
signal frame) gives the thread that loads it a new alternate signal stack, one per
``Core``, and when that Core's plugin is freed puts back the stack it replaced. Freed out
of order (a first Core dies before a second), the first plugin unmaps its stack and the
second then puts that unmapped stack back: the next signal Python handles on the thread
(``SA_ONSTACK``: SIGCHLD of a dataloader worker or a compiler process, SIGINT) cannot be
delivered and the process dies of SIGSEGV, with no traceback (openvino 2026.4.1;
``tests/upstream/test_openvino_core.py`` reproduces it in ten lines in its own process).

The workaround:

- :func:`core`: every Core the project uses is this one, its CPU plugin loaded at once, so
  its signal stack is set first and never freed before the process ends (the fused-op
  extension is added to it once: ``deploy.openvino_ext.shared_core``);
- :func:`signal_stack_kept`: around code that makes and drops its own Cores (NNCF's
  quantization compiles the graph in Cores of its own), the thread gets back the stack it
  had before (the shared Core's, alive for the process); the plugins still alive then free
  only their own stack when they go (they restore only a stack that is still theirs).

Delete this module when the upstream test's ``test_upstream_bug_still_present`` fails (the
plugin restores only a stack that is still mapped, or one stack per process), and call
``openvino.Core()`` again.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import sys

_CORE = None


def core():
    """The process's ``openvino.Core``, made and its CPU plugin loaded on first use."""
    global _CORE
    if _CORE is None:
        import openvino as ov
        made = ov.Core()
        try:  # loads the CPU plugin now: its signal stack is the first one set
            made.get_property('CPU', 'FULL_DEVICE_NAME')
        except RuntimeError:  # no CPU plugin: compile_model says so where it is asked for
            pass
        _CORE = made
    return _CORE


class _Stack(ctypes.Structure):  # struct stack_t (Linux)
    _fields_ = [('ss_sp', ctypes.c_void_p), ('ss_flags', ctypes.c_int),
                ('ss_size', ctypes.c_size_t)]


def _sigaltstack(new=None) -> _Stack:
    old = _Stack()
    ctypes.CDLL(None).sigaltstack(ctypes.byref(new) if new is not None else None,
                                  ctypes.byref(old))
    return old


@contextlib.contextmanager
def signal_stack_kept():
    """Run the block, free what it left behind, and give the thread back the alternate
    signal stack it had before where the block's Cores changed it."""
    if not sys.platform.startswith('linux'):
        yield
        return
    core()  # the stack kept is the shared Core's (or Python's), alive for the process
    before = _sigaltstack()
    try:
        yield
    finally:
        gc.collect()  # the block's Cores, freed now rather than at a later collection
        now = _sigaltstack()
        if (now.ss_sp, now.ss_size) != (before.ss_sp, before.ss_size):
            restore = _Stack(before.ss_sp, before.ss_flags & ~1, before.ss_size)  # SS_ONSTACK
            _sigaltstack(restore)

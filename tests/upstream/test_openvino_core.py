"""OpenVINO's CPU plugin and the thread's signal stack (upstream/openvino_core.py): each
``Core`` sets a new alternate signal stack and, freed, puts back the one it replaced; Cores
freed out of order leave an unmapped stack behind and the next signal Python handles kills
the process (SIGSEGV). Each case runs in its own Python process: real OpenVINO, a real
signal, a real Python handler."""
import signal
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import gc, os, signal
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    def model():
        x = ops.parameter([1, 4], np.float32)
        return ov.Model([ops.relu(x)], [x])

    def own_core():  # what NNCF and openvino.compile_model do: a Core of their own
        c = ov.Core()
        return c, c.compile_model(model(), 'CPU')

    def signal_arrives():  # a Python handler runs on the alternate stack (SA_ONSTACK)
        signal.signal(signal.SIGUSR1, lambda *_: print('handled'))
        os.kill(os.getpid(), signal.SIGUSR1)
""")


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=120)


def test_upstream_bug_still_present():
    """Stock OpenVINO: two Cores freed first-made-first; the signal then kills the process.
    When this fails, OpenVINO restores only stacks still mapped: delete the workaround."""
    proc = _run("""
        a, b = own_core(), own_core()
        del a; gc.collect()
        del b; gc.collect()
        signal_arrives()
        print('survived')
    """)
    assert proc.returncode == -signal.SIGSEGV and 'handled' not in proc.stdout, (
        'OpenVINO no longer leaves a freed signal stack behind: delete '
        'projects/dino_dinov2/upstream/openvino_core.py', proc.returncode, proc.stdout)


def test_shared_core_and_kept_stack_survive():
    """The project's path: its compiled models share one Core (freed in any order), and
    code making Cores of its own runs under signal_stack_kept()."""
    proc = _run("""
        from projects.dino_dinov2.upstream.openvino_core import core, signal_stack_kept
        assert core() is core()
        a = core().compile_model(model(), 'CPU')
        b = core().compile_model(model(), 'CPU')
        del a; gc.collect()
        del b; gc.collect()
        with signal_stack_kept():
            x, y = own_core(), own_core()
            del x; gc.collect()
            del y
        signal_arrives()
        print('survived')
    """)
    assert proc.returncode == 0 and proc.stdout.split() == ['handled', 'survived'], (
        proc.returncode, proc.stdout, proc.stderr[-2000:])

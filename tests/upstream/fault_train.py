"""``python tests/upstream/fault_train.py SECONDS N tools/train.py ARGS...``: tools/train.py
with the N-th atomic write of the process (counting from 1; a checkpoint and then its
``last_checkpoint`` pointer are two writes) paused half-way for SECONDS: half the data in
its temporary file, flushed, then the sleep, so a test can kill the process mid-write."""
import itertools
import os.path as osp
import runpy
import sys
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)

from projects.dino_dinov2.upstream import atomic_checkpoint  # noqa: E402


def main():
    seconds, nth, tool, *args = sys.argv[1:]
    count = itertools.count(1)
    write = atomic_checkpoint._write_data

    def paused(f, data):
        if next(count) != int(nth):
            return write(f, data)
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        time.sleep(float(seconds))
        f.write(data[half:])

    atomic_checkpoint._write_data = paused
    sys.argv = [tool, *args]
    runpy.run_path(tool, run_name='__main__')


if __name__ == '__main__':
    main()

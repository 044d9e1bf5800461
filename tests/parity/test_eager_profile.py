"""tools/parity/eager_profile.py: eager inference operator by operator (this project's
side; the original's runs in its own venv), and two runs set side by side."""
import json
import os.path as osp

import pytest

import eager_profile
from helpers import SYNTHETIC_CONFIG


def test_operators_and_against(synthetic_run, tmp_path, capsys):
    ckpt = osp.join(synthetic_run, 'epoch_2.pth')
    first = tmp_path / 'first.json'
    argv = [SYNTHETIC_CONFIG, ckpt, '--shape', '128x128', '--runs', '1', '--threads', '1']
    assert eager_profile.main(argv + ['--json', str(first)]) == 0
    table = json.loads(first.read_text())
    samplings = {k: v for k, v in table.items() if k.startswith('aten::grid_sampler_2d ')}
    assert samplings and all(calls >= 1 and ms > 0 for calls, ms in samplings.values())
    capsys.readouterr()
    assert eager_profile.main(argv + ['--against', str(first), '--top', '5']) == 0
    out = capsys.readouterr().out
    assert '| against: ms | calls |' in out and 'total ' in out and '; against ' in out
    rows = [line for line in out.splitlines() if line.startswith('| ') and '`' in line]
    assert len(rows) == 5
    assert all(line.split('|')[3].strip() != '-' for line in rows)  # same graph, same keys


@pytest.mark.parametrize('argv, message', [
    ([], 'give CONFIG CHECKPOINT, or --original SRC'),
    ([SYNTHETIC_CONFIG, 'x.pth', '--shape', '128'], "--shape '128'"),
    ([SYNTHETIC_CONFIG, 'x.pth', '--against', 'missing.json'], '--against missing.json'),
])
def test_flag_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eager_profile.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err

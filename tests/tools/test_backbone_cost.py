"""tools/backbone_cost.py: parameters, FLOPs and forward time of configs' backbones."""
from helpers import REPO


def test_costs_of_a_dinov2_and_a_dinov3_config(capsys):
    from tools.backbone_cost import main
    configs = [f'{REPO}/configs/dino_dinov2_b_12ep.py', f'{REPO}/configs/dino_dinov3_b_12ep.py']
    assert main([*configs, '--shape', '64', '96', '--iters', '1', '--warmup', '0',
                 '--cfg-options', 'model.backbone.model_kwargs.depth=1']) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith('| `dino_dino')]
    assert len(rows) == 2
    assert '`vit_base_patch14_dinov2.lvd142m`' in rows[0]
    assert '`vit_base_patch16_dinov3.lvd1689m`' in rows[1]
    # one block of width 768 on a 4x6 grid (+ prefix tokens): a fraction of a GFLOP each
    from analysis_tools.model_cost import measure
    cost = measure(configs[1], (64, 96), iters=1, warmup=0,
                   cfg_options={'model.backbone.model_kwargs.depth': 1})
    assert 0.1 < cost.backbone_gflops < 1 and cost.forward_s > 0
    assert 7 < cost.backbone_params_m < 9  # patch embedding + 1 block of ViT-B
    # printed to three figures, not rounded to '0 GFLOPs'
    from analysis_tools.model_cost import gflops_text
    assert f'dino_dinov3_b_12ep.py: {gflops_text(cost.backbone_gflops)} GFLOPs' in out
    assert ': 0 GFLOPs' not in out and float(gflops_text(cost.backbone_gflops)) > 0.1
    assert gflops_text(123.4) == '123' and gflops_text(0.01234) == '0.0123'
    assert cost.trainable_params_m < cost.detector_params_m  # the ViT is frozen

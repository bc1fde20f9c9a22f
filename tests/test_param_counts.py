"""Every `full` model has the parameter count of the reference it claims to be.

Parameters are built abstractly (`jax.eval_shape` of the workload's own `init_variables`: shapes only, no init), so
each check costs a trace, not a 25M-parameter initialisation. The reference figures are computed layer by layer by
transcriptions of the reference code below, and those transcriptions are themselves checked against torchvision's
published counts.

Counting convention: a flax model keeps conv/dense kernels and biases and the batch-norm scale and bias in `params`
(running statistics in `batch_stats`), exactly the tensors PyTorch counts in `model.parameters()` for an ordinary
`nn.BatchNorm2d`. The one difference is torchvision's `FrozenBatchNorm2d`, which stores its weight and bias as
buffers; our frozen BN keeps them in `params` (an ImageNet checkpoint maps onto them one to one, and the optimizer
masks them), so for RetinaNet the comparable figure is the reference's `parameters()` plus the frozen BN affines.
"""

import jax
import numpy as np
import pytest

from models import resnet
from suite.common import registry
from suite.common.errors import UserError


def torchvision_bottleneck_resnet(layers, groups=1, width_per_group=64, num_classes=None):
  """(conv + fc parameters, batch-norm channels) of torchvision's `ResNet(Bottleneck, layers, groups=...,
  width_per_group=...)` (torchvision/models/resnet.py; the MLPerf RetinaNet's copy is single_stage_detector/ssd/
  model/resnet.py): stem 7x7 conv 3->64 + BN; stage s has planes p = 64 * 2^s, grouped width
  w = int(p * width_per_group / 64) * groups, blocks 1x1 in->w, grouped 3x3 w->w (w * w/groups * 9 weights),
  1x1 w->4p, each + BN, the first block with a 1x1 in->4p projection + BN; convs have no bias. `num_classes=None`
  drops avgpool and fc, as the detection backbone's IntermediateLayerGetter does."""
  conv, bn = 3 * 64 * 7 * 7, 64
  inplanes = 64
  for stage, blocks in enumerate(layers):
    planes = 64 * 2**stage
    width = int(planes * width_per_group / 64) * groups
    for i in range(blocks):
      conv += inplanes * width + width * (width // groups) * 9 + width * planes * 4
      bn += width + width + planes * 4
      if i == 0:
        conv += inplanes * planes * 4
        bn += planes * 4
      inplanes = planes * 4
  fc = 0 if num_classes is None else inplanes * num_classes + num_classes
  return conv + fc, bn


def torchvision_basic_resnet(layers, strides):
  """(conv parameters, BN channels) of torchvision's `ResNet(BasicBlock, ...)` trunk without avgpool and fc, with
  stage strides as given: blocks of two 3x3 convs + BN; a 1x1 projection + BN where the stride or width changes
  (torchvision's `downsample`, which the MLPerf SSD keeps after `_ModifyBlock` sets layer3's stride to 1)."""
  conv, bn = 3 * 64 * 7 * 7, 64
  inplanes = 64
  for stage, (blocks, stride) in enumerate(zip(layers, strides)):
    planes = 64 * 2**stage
    for i in range(blocks):
      conv += inplanes * planes * 9 + planes * planes * 9
      bn += 2 * planes
      if i == 0 and (stride != 1 or inplanes != planes):
        conv += inplanes * planes
        bn += planes
      inplanes = planes
  return conv, bn


def conv2d(cin, cout, k, bias=True):
  return cin * cout * k * k + (cout if bias else 0)


def test_the_transcriptions_give_torchvisions_published_counts():
  """torchvision's model cards: resnet50 25,557,032; resnext50_32x4d 25,028,904; resnet34 21,797,672."""
  conv, bn = torchvision_bottleneck_resnet((3, 4, 6, 3), num_classes=1000)
  assert conv + 2 * bn == 25_557_032
  conv, bn = torchvision_bottleneck_resnet((3, 4, 6, 3), groups=32, width_per_group=4, num_classes=1000)
  assert conv + 2 * bn == 25_028_904
  conv, bn = torchvision_basic_resnet((3, 4, 6, 3), (1, 2, 2, 2))
  assert conv + 2 * bn + 512 * 1000 + 1000 == 21_797_672


def mlperf_retinanet_params(num_classes=264, num_anchors=9):
  """(parameters(), frozen BN affine) of the MLPerf RetinaNet: mlcommons/training single_stage_detector/ssd/model/
  retinanet.py `retinanet_resnext50_32x4d_fpn(num_classes=264)` (train.py: openimages-mlperf has 264 classes, no
  background slot).
  - backbone: torchvision resnext50_32x4d through layer4, no fc, FrozenBatchNorm2d (affine = buffers);
  - FPN (feature_pyramid_network.py): in_channels_list [512, 1024, 2048] (returned_layers [2, 3, 4]), per level a
    1x1 inner conv to 256 and a 3x3 layer conv 256->256, both with bias; LastLevelP6P7(256, 256): two 3x3 convs;
  - heads: classification and regression towers of 4 x (3x3 conv 256->256 + bias), then cls_logits 256->A*C and
    bbox_reg 256->A*4 (3x3, bias); one head shared by every level."""
  backbone_conv, frozen_bn = torchvision_bottleneck_resnet((3, 4, 6, 3), groups=32, width_per_group=4)
  fpn = sum(conv2d(c, 256, 1) + conv2d(256, 256, 3) for c in (512, 1024, 2048)) + 2 * conv2d(256, 256, 3)
  tower = 4 * conv2d(256, 256, 3)
  heads = tower + conv2d(256, num_anchors * num_classes, 3) + tower + conv2d(256, num_anchors * 4, 3)
  # 22,911,680 + 3,868,672 + 10,280,300 = 37,060,652; frozen BN affine 2 x 34,112 = 68,224.
  return backbone_conv + fpn + heads, 2 * frozen_bn


def mlperf_ssd300_params(label_num=81):
  """parameters() of the MLPerf SSD300 (mlcommons/training v1.1 single_stage_detector/ssd, now
  retired_benchmarks/ssd-v1/ssd: ssd300.py and base_model.py), label_num 81 (COCO's 80 + background, utils.py):
  - backbone ResNet34: torchvision resnet34 children [:7] = conv1, bn1, layer1..layer3 with layer3's stride 1
    (ordinary, trained nn.BatchNorm2d);
  - additional blocks (out_chan [256, 512, 512, 256, 256, 256]): 1x1 conv to 256, 256, 128, 128, 128 then a 3x3 conv
    to the next out_chan, all with bias, no BN;
  - per map a loc conv oc->nd*4 and a conf conv oc->nd*label_num (3x3, bias), num_defaults [4, 6, 6, 6, 4, 4]."""
  backbone_conv, bn = torchvision_basic_resnet((3, 4, 6), (1, 2, 1))
  out = (256, 512, 512, 256, 256, 256)
  extra = sum(conv2d(cin, mid, 1) + conv2d(mid, cout, 3) for cin, mid, cout in zip(out[:-1], (256, 256, 128, 128, 128),
                                                                                    out[1:]))
  heads = sum(conv2d(oc, nd * 4, 3) + conv2d(oc, nd * label_num, 3) for oc, nd in zip(out, (4, 6, 6, 6, 4, 4)))
  # 8,170,304 + 3,574,400 + 8,227,830.
  return backbone_conv + 2 * bn + extra + heads


# (workload, variant) -> the reference's parameter count, counted as our models count (see the module docstring).
REFERENCE_PARAMS = {
    # torchvision resnet50 (ResNet-50 v1.5), 1000 classes; the flax imagenet example agrees.
    ('resnet', 'resnet50'): 25_557_032,
    # 37,060,652 parameters() + 68,224 frozen BN weight and bias.
    ('ssd', 'retinanet'): sum(mlperf_retinanet_params()),
    ('ssd', 'ssd300'): mlperf_ssd300_params(),
    # MLPerf Inference's SSD-MobileNet-v1 (TF) and SSD-ResNet34 at 1200x1200 (ssd_r34.py: the SSD300 network with
    # other strides, so the same count), each transcribed from the reference code in test_ssd_inference_models.py.
    ('ssd', 'ssd_mobilenet'): 6_819_839,
    ('ssd', 'ssd_resnet34'): 19_972_534,
    # MobileNet-v1 1.0 at 224, 1000 classes: Keras MobileNet's 4,231,976 trainable parameters (test_mobilenet.py).
    ('mobilenet', 'mobilenet_v1'): 4_231_976,
    # The TF reference's Transformer-big variables (tests/test_transformer_model.py counts them layer by layer).
    ('transformer', 'big'): 210_804_736,
    # The PyTorch rnn_translator reference at its 32,320-token vocabulary (models/gnmt.py says where it comes from).
    ('gnmt', 'gnmt_v2'): 160_671_297,
    # The torchrec_dlrm reference's README run: 26 tables of 204,184,588 rows x 128 + bottom, DCN-v2 and top MLPs,
    # 26,151,671,809, plus 1,780 x 128 for table rows padded to a multiple of 128 (tests/test_dlrm_workload.py).
    ('dlrm_dcnv2', 'dcnv2'): 26_151_899_649,
    # neumf.py at ml-20m's 138,493 users and 26,744 items, 31,832,577 (tests/test_ncf.py counts the parts), plus the
    # 3 + 8 rows x (64 + 128) factors that pad the tables to a multiple of 128 rows.
    ('ncf', 'neumf'): 31_834_689,
    # Llama 3.1 8B (Meta's params.json: vocab 128,256, width 4,096, 32 layers, 32 heads with 8 KV heads, MLP 14,336,
    # untied embeddings): 2 x 525,336,576 + 32 x 218,112,000 + 4,096 (tests/test_llama_model.py counts the parts).
    ('llama31_8b', '8b'): 8_030_261_248,
}


def test_the_reference_figures():
  assert mlperf_retinanet_params() == (37_060_652, 68_224)
  assert mlperf_ssd300_params() == 19_972_534


def _full_variants():
  return [(name, variant) for name in registry.WORKLOADS for variant in registry.variants(name)]


def test_every_full_config_has_a_reference_count():
  """A new workload or variant must add its reference figure here."""
  assert sorted(_full_variants()) == sorted(REFERENCE_PARAMS)


def _param_count(name, variant):
  config = registry.get_config(name, 'full', variant)
  workload = registry.make_workload(name, config, 'full')
  params, _ = jax.eval_shape(workload.init_variables, jax.random.key(0))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize('name,variant', sorted(REFERENCE_PARAMS))
def test_full_model_has_the_reference_parameter_count(name, variant):
  assert _param_count(name, variant) == REFERENCE_PARAMS[(name, variant)]


@pytest.mark.parametrize('model', [dict(depth=50, stage_sizes=(0,)), dict(depth=50, stage_sizes=(3, 0, 6)),
                                   dict(depth=7, stage_sizes=())])
def test_resnet_without_real_stages_is_refused(model):
  """The old `(0,)` "use the depth" sentinel built a stem and a classifier and called it ResNet-50."""
  config = registry.get_config('resnet', 'full')
  config.model.update(**model)
  with pytest.raises(UserError, match='stage'):  # One line from the command line (tests/test_bad_input.py).
    registry.make_workload('resnet', config, 'full')
  with pytest.raises(ValueError, match='stage'):
    resnet.ResNet(stage_sizes=(), num_classes=10).init(jax.random.key(0), np.zeros((1, 32, 32, 3)), train=False)

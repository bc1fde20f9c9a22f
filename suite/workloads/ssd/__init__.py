"""MLPerf object detection (`ssd`): one class and module per variant, the default first.

`retinanet` (MLPerf Training 4.1.0 and MLPerf Inference), `ssd300` (the classic SSD, ruleset 1.1.0), and MLPerf
Inference's `ssd_mobilenet` (SSD-MobileNet-v1, 300x300) and `ssd_resnet34` (SSD-ResNet34, 1200x1200).
"""

from suite.workloads.ssd.common import coco_detections, coco_map  # noqa: F401
from suite.workloads.ssd.retinanet import RetinaNetWorkload, retinanet_loss  # noqa: F401
from suite.workloads.ssd.ssd300 import SSD300Workload, reference_tensor_names, ssd300_loss  # noqa: F401
from suite.workloads.ssd.ssd_mobilenet import SSDMobileNetWorkload
from suite.workloads.ssd.ssd_resnet34 import SSDResNet34Workload

VARIANTS = {RetinaNetWorkload.variant: RetinaNetWorkload, SSD300Workload.variant: SSD300Workload,
            SSDMobileNetWorkload.variant: SSDMobileNetWorkload, SSDResNet34Workload.variant: SSDResNet34Workload}


def get_config(scale: str, variant: str = ''):
  """A variant's config (default: retinanet), recording the variant as the registry does."""
  cls = VARIANTS[variant or RetinaNetWorkload.variant]
  config = cls.get_config(scale)
  config.variant = cls.variant
  return config

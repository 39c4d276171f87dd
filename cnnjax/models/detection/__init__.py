"""Object detectors on the zoo's backbones (chosen by registry name): YOLO v1, SSD and the
two-stage family (R-CNN, SPPNet, Fast R-CNN, Faster R-CNN). Each returns its raw outputs;
the matching task in `cnnjax.tasks` owns the loss and the decoding."""

from cnnjax.models.detection import ssd, two_stage, yolo

MODELS: dict = {**yolo.MODELS, **ssd.MODELS, **two_stage.MODELS}

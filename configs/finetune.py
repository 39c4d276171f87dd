"""Fine-tune torchvision's ImageNet ResNet-18 on the embedded digits (transfer learning).

Get the weights once (cnnjax never downloads), then train from them:

    mkdir -p pretrained && curl -L -o pretrained/resnet18-f37072fd.pth \\
        https://download.pytorch.org/models/resnet18-f37072fd.pth
    ./launch.sh train --config=configs/finetune.py --workdir=runs/finetune

Reading a .pth needs torch (`pip install -e '.[torch]'`); a .safetensors file needs only
the `safetensors` package. The head `fc` starts fresh with the dataset's class count; the
RGB stem is summed to the digits' one channel. Arguments: `probe` (linear probe: only `fc`
trains, at a larger learning rate), `smoke` (seconds, for tests; set
--config.init.checkpoint). Accuracy from the ImageNet weights has not been measured here:
this machine has no copy of them.
"""

from cnnjax.config import base as configlib


def get_config(arg=None):
    tokens = configlib.parse_arg(arg, {"probe", "smoke"})
    c = configlib.base_config()
    c.model.name = "resnet18"
    c.data.name = "digits"
    c.data.image_size = 32
    c.data.batch_size = 64
    c.data.aug.crop_padding = 2
    c.init.checkpoint = "pretrained/resnet18-f37072fd.pth"
    c.init.source = "torchvision"
    c.init.exclude = ("fc",)
    c.init.freeze_backbone = "probe" in tokens
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1 if "probe" in tokens else 0.01  # small: keep what was learnt
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 20
    c.train.num_steps = 300
    c.train.log_every_steps = 25
    c.train.checkpoint_every_steps = 100
    c.eval.every_steps = 100
    if "smoke" in tokens:
        configlib.apply_smoke(c)
    return c.lock()

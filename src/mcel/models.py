"""Model registry: float PyTorch networks used in the bit-error-tolerance literature.

timm-style surface: every architecture is a function decorated with `@register_model`,
`list_models("vgg*")` finds names and `create_model(name, num_classes, in_shape, **kw)`
builds one. Models are plain float modules; quantization is applied afterwards by
swapping their `nn.Conv2d` / `nn.Linear` layers (`quantize_model` also takes Conv1d and
Conv3d), so those are the only classes that hold weights (besides BatchNorm affine parameters).

Layer names follow one convention so that include/exclude patterns work across models:
convolutional trunks live in `features` (or `stem`/`layer1..3` for ResNet), fully
connected layers in `classifier`, and the last module of `classifier` (or `classifier`
itself for ResNet) is the output Linear, e.g. `features.0` is the first conv of VGG and
`classifier.*` matches every fully connected layer.

Any input shape (C, H, W) with H, W >= 8 works: sklearn digits (1, 8, 8), MNIST and
Fashion-MNIST (1, 28, 28), CIFAR-10 and SVHN (3, 32, 32).

>>> model = create_model("mlp", num_classes=10, in_shape=(1, 8, 8), hidden=32)
>>> model.eval()(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
>>> list_models("vgg*")
['vgg3', 'vgg7']

Your own architecture needs no registration to go through the command line, sweeps and
reports: name it as ``package.module:function`` (importable) or
``path/to/file.py:function``, a function that returns the float model and may take
``num_classes`` and ``in_shape`` (`resolve_model`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from mcel.errors import MCELError
from mcel.registry import Registry

__all__ = [
    "MODELS",
    "count_parameters",
    "create_model",
    "list_models",
    "register_model",
    "resolve_model",
]

ModelFn = Callable[..., nn.Module]

MODELS: Registry[ModelFn] = Registry("model")


def register_model(fn: ModelFn) -> ModelFn:
    """Register a model factory under its function name (timm's `@register_model`).

    The factory is called as `fn(num_classes=..., in_shape=..., **kwargs)`.
    """
    return MODELS.register()(fn)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style `pattern`."""
    return MODELS.names(pattern)


def resolve_model(name: str) -> ModelFn:
    """The factory ``name`` stands for: a registered model, or your own function as
    ``package.module:function`` or ``path/to/file.py:function`` (one MCELError line when
    it cannot be found). mcel does not see edits inside your function: a run's id comes
    from the name, so give a changed model a new name or a new run folder."""
    if ":" not in name:
        return MODELS.get(name)
    where, _, attr = name.rpartition(":")
    module = _load_file(where, name) if where.endswith(".py") else _import(where, name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise MCELError(f"model '{name}': {where} has no function '{attr}'")
    return fn


def _import(module: str, name: str):
    try:
        return importlib.import_module(module)
    except Exception as e:  # the user's module: any error in it is theirs to see
        raise MCELError(f"model '{name}': cannot import {module} ({type(e).__name__}: {e}); "
                        "put its folder on PYTHONPATH, or name the file: "
                        "path/to/file.py:function") from None


def _load_file(path: str, name: str):
    file = Path(path).resolve()
    if not file.is_file():
        raise MCELError(f"model '{name}': the file {path} does not exist")
    key = "mcel_user_model_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
    if key not in sys.modules:  # load once per process, as an import would
        if str(file.parent) not in sys.path:  # its own imports of files beside it work,
            sys.path.insert(0, str(file.parent))  # as when python runs it as a script
        spec = importlib.util.spec_from_file_location(key, file)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:
            raise MCELError(f"model '{name}': running {path} failed ({type(e).__name__}: "
                            f"{e})") from None
        sys.modules[key] = module
    return sys.modules[key]


def create_model(
    name: str,
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    **kwargs: object,
) -> nn.Module:
    """Build the float model `name` for inputs of shape (N, *in_shape).

    Args:
        name: a name from `list_models()`, or your own ``module:function`` /
            ``file.py:function`` (`resolve_model`; it gets ``num_classes`` and
            ``in_shape`` where its signature takes them).
        num_classes: size of the logit vector the model returns.
        in_shape: (channels, height, width) of one input (the conv models need height
            and width >= 8).
        **kwargs: architecture options of that model (see its docstring), e.g.
            `width=0.5` or `hidden=128`.

    Returns:
        An `nn.Module` in training mode mapping (N, C, H, W) to logits (N, num_classes).

    Raises:
        MCELError: unknown name, bad shape or class count, or an option the model
            does not take.
    """
    fn = resolve_model(name)
    shape = _check_shape(in_shape, least=1)  # each model checks what it needs
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise MCELError(f"num_classes must be a positive integer, got {num_classes!r}")
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    options = [p for p in params if p not in ("num_classes", "in_shape")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown and not takes_any:
        valid = ", ".join(options) or "none"
        raise MCELError(f"model '{name}' got unknown option(s) {', '.join(unknown)}; "
                        f"valid: {valid}")
    given = {"num_classes": num_classes, "in_shape": shape}
    shape_args = {k: v for k, v in given.items() if k in params or takes_any}
    model = fn(**shape_args, **kwargs)
    if not isinstance(model, nn.Module):
        raise MCELError(f"model '{name}' returned {type(model).__name__}, not an nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    """Total number of scalar parameters (weights, biases, BatchNorm affine terms)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- helpers


def _check_shape(in_shape: Sequence[int], least: int = 8) -> tuple[int, int, int]:
    """(C, H, W) as ints; ``least``: the smallest height and width the model can take (its
    poolings; 1 for models that only flatten)."""
    try:
        shape = tuple(int(s) for s in in_shape)
    except (TypeError, ValueError):
        raise MCELError(f"in_shape must be (channels, height, width), got {in_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise MCELError(f"in_shape must be (channels, height, width), got {in_shape!r}")
    if min(shape[1:]) < least:
        raise MCELError(f"in_shape {shape}: height and width must be at least {least} for "
                        "this model (an mlp takes any shape)")
    return shape  # type: ignore[return-value]


def _scaled(channels: int, width: float) -> int:
    if not width > 0:
        raise MCELError(f"width must be positive, got {width!r}")
    return max(1, round(channels * width))


def _flat_size(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    """Number of features after `features` and flattening, by a dry run.

    Runs in eval mode so BatchNorm running statistics stay untouched, and draws no
    random numbers, so construction stays deterministic under `torch.manual_seed`.
    """
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *in_shape))
    finally:
        features.train(was_training)
    return out[0].numel()


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant.
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class FeatureClassifier(nn.Module):
    """`classifier(flatten(features(x)))`: the layout of MLP, LeNet and VGG here."""

    def __init__(self, features: nn.Module, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ----------------------------------------------------------------------------- models


@register_model
def mlp(
    num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28), hidden: int = 256
) -> nn.Module:
    """Multilayer perceptron with two BatchNorm hidden layers.

    The fully connected baseline of the binarized-network bit-error studies
    (Buschjäger et al., "Margin-maximization in binarized neural networks for
    optimizing bit error tolerance", DATE 2021): flatten -> Linear(hidden) -> BN ->
    ReLU -> Linear(hidden) -> BN -> ReLU -> Linear(num_classes).

    Args:
        num_classes: number of logits.
        in_shape: (C, H, W) of one input.
        hidden: units in each of the two hidden layers.
    """
    if hidden < 1:
        raise MCELError(f"hidden must be a positive integer, got {hidden!r}")
    c, h, w = _check_shape(in_shape, least=1)
    classifier = nn.Sequential(
        nn.Linear(c * h * w, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return FeatureClassifier(nn.Identity(), classifier)


@register_model
def lenet5(num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28)) -> nn.Module:
    """LeNet-5 (LeCun et al., "Gradient-based learning applied to document
    recognition", Proc. IEEE 1998) with ReLU and max pooling.

    conv(6, 5x5, pad 2) -> ReLU -> maxpool2 -> conv(16, 5x5) -> ReLU -> maxpool2 ->
    fc120 -> ReLU -> fc84 -> ReLU -> fc(num_classes). Inputs under 12 pixels (e.g.
    8x8 digits) would shrink to nothing after the second conv, so that conv gets
    padding 2 as well there.

    Args:
        num_classes: number of logits.
        in_shape: (C, H, W) of one input.
    """
    c, h, w = _check_shape(in_shape)
    # Unpadded conv2 needs (side // 2) - 4 >= 2 pixels before the second pool.
    pad2 = 0 if min(h, w) >= 12 else 2
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    classifier = nn.Sequential(
        nn.Linear(_flat_size(features, (c, h, w)), 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )
    return FeatureClassifier(features, classifier)


@register_model
def vgg3(
    num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28), width: float = 1.0
) -> nn.Module:
    """VGG-3: two conv blocks and one hidden fully connected layer.

    The small VGG-style network of the bit-error-tolerance studies on
    (Fashion-)MNIST (Buschjäger et al., DATE 2021; Yayla et al.), after Simonyan &
    Zisserman, "Very deep convolutional networks", ICLR 2015:
    [conv3x3(64) -> BN -> ReLU -> maxpool2] x 2 -> fc(2048) -> BN -> ReLU ->
    fc(num_classes).

    Args:
        num_classes: number of logits.
        in_shape: (C, H, W) of one input.
        width: multiplier for the conv channels (64) and the hidden fc units (2048).
    """
    c, h, w = _check_shape(in_shape)
    ch, fc = _scaled(64, width), _scaled(2048, width)
    features = nn.Sequential(
        *_conv_bn_relu(c, ch),
        nn.MaxPool2d(2),
        *_conv_bn_relu(ch, ch),
        nn.MaxPool2d(2),
    )
    return FeatureClassifier(features, _fc_head(_flat_size(features, (c, h, w)), fc,
                                                num_classes))


def _fc_head(in_features: int, hidden: int, num_classes: int) -> nn.Sequential:
    """fc(hidden) -> BN -> ReLU -> fc(num_classes): the VGG classifier."""
    return nn.Sequential(
        nn.Linear(in_features, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


@register_model
def vgg7(
    num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28), width: float = 1.0
) -> nn.Module:
    """VGG-7: three stages of two 3x3 convs, as used for CIFAR-10 in the binarized and
    quantized network literature (Courbariaux et al. 2016; Buschjäger et al.,
    DATE 2021; Yayla et al.).

    [conv(128) x 2, pool] -> [conv(256) x 2, pool] -> [conv(512) x 2, pool] ->
    fc(1024) -> BN -> ReLU -> fc(num_classes); every conv is followed by BN and ReLU.
    An 8x8 input is pooled to 1x1, which is fine.

    Args:
        num_classes: number of logits.
        in_shape: (C, H, W) of one input.
        width: multiplier for all conv channels and the hidden fc units (1024).
    """
    c, h, w = _check_shape(in_shape)
    layers: list[nn.Module] = []
    c_in = c
    for channels in (128, 256, 512):
        ch = _scaled(channels, width)
        layers += [*_conv_bn_relu(c_in, ch), *_conv_bn_relu(ch, ch), nn.MaxPool2d(2)]
        c_in = ch
    features = nn.Sequential(*layers)
    fc = _scaled(1024, width)
    return FeatureClassifier(features, _fc_head(_flat_size(features, (c, h, w)), fc,
                                                num_classes))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; a 1x1 conv + BN shortcut (He et al.'s
    option B) where the shape changes, identity otherwise."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: stem conv, three stages of basic blocks, global average
    pooling, linear `classifier`."""

    def __init__(
        self, blocks_per_stage: int, num_classes: int, in_channels: int, width: float
    ) -> None:
        super().__init__()
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        c_in = widths[0]
        stages = []
        for i, c_out in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register_model
def resnet20(
    num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28), width: float = 1.0
) -> nn.Module:
    """ResNet-20 for small images (He et al., "Deep residual learning for image
    recognition", CVPR 2016, Sec. 4.2): 3x3 conv(16), three stages of three basic
    blocks with 16/32/64 channels (stride 2 at the start of stages 2 and 3),
    global average pooling, fc(num_classes). Downsampling shortcuts are 1x1 conv + BN.

    Args:
        num_classes: number of logits.
        in_shape: (C, H, W) of one input; global pooling makes any H, W >= 8 work.
        width: multiplier for the 16/32/64 channel counts.
    """
    c, _, _ = _check_shape(in_shape)
    return CifarResNet(3, num_classes, c, width)

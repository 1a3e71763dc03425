"""Registry-wide model tests: every registered model, both tasks.

Shapes, finiteness, gradients reaching every parameter (what DDP needs), the documented
input-length policy, front-end skipping, transfer-learning helpers, config round trips,
and parameter counts pinned against the papers' public reference code.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from audiocnn.cli.main import run
from audiocnn.errors import ModelError
from audiocnn.features.frontends import MelConfig, WaveformConfig
from audiocnn.models import create_model, get_model_class, list_models, register_model
from audiocnn.models.base import LENGTH_POLICIES, TaggingModel, count_parameters

# name: (exact parameter count with 50 outputs, "source of the reference number").
# The count is pinned exactly so that an accidental architecture change fails here. A
# third element, when present, is the reference's own number when it differs from ours;
# ours must then lie within 10% of it. Without one, the pin *is* the reference number.
PINNED_PARAMS: dict[str, tuple] = {
    "samplecnn": (
        1_869_874,
        "tae-jun/sample-cnn sample_cnn/model.py (Lee et al. 2017 3^9 model), trainable weights of its "
        "layer list counted: stem 768 + 9 blocks 1,554,240 + conv1 263,680 + dense 25,650; "
        "minzwon SampleCNN has the same count",
    ),
    "samplecnn-se": (
        24_742_706,
        "tae-jun/resemul model.py resemul(block_type='se', multi=True, amplifying_ratio=16) (Kim et al. "
        "2018 SE+multi), counted from its layer list; SE excitation layers are 22,059,264 of it",
    ),
    "fcn": (
        447_732,
        "minzwon/sota-music-tagging-models training/model.py FCN (n_mels=96, n_class=50), counted from its layer list",
    ),
    "shortchunk-cnn": (
        3_687_348,
        "minzwon/sota-music-tagging-models training/model.py ShortChunkCNN (n_channels=128, "
        "n_mels=128, n_class=50), counted from its layer list",
    ),
    "shortchunk-resnet": (
        12_104_244,
        "minzwon/sota-music-tagging-models training/model.py ShortChunkCNN_Res with modules.py "
        "Res_2d (n_channels=128, n_mels=128, n_class=50), counted from its layer list",
    ),
    "musicnn": (
        787_159,
        "musicnn 0.1.0 (jordipons/musicnn) MTT_musicnn TF checkpoint: sum of its trainable variables "
        "(kernels, biases, BN gamma/beta)",
    ),
    "crnn": (
        394_100,
        "minzwon/sota-music-tagging-models training/model.py CRNN with modules.py Conv_2d (n_mels=96, "
        "n_class=50): its layer list re-typed into a throw-away module and counted with torch",
    ),
    "harmonic-cnn": (
        3_631_551,
        "minzwon/sota-music-tagging-models training/model.py HarmonicCNN with modules.py HarmonicSTFT "
        "(learn_bw='only_Q': the one learnable Q; f0 a plain tensor), Conv_2d and Res_2d_mp (n_channels=128, "
        "n_harmonic=6, n_class=50): its layer list re-typed into a throw-away module and counted with torch",
    ),
    "cnnsa": (
        10_521_652,
        "minzwon/sota-music-tagging-models training/model.py CNNSA with modules.py Res_2d and "
        "attention_modules.py BertEncoder (2 layers, hidden 256, intermediate 1024) + BertPooler (the [CLS] "
        "vector a plain tensor; n_class=50): its layer list re-typed into a throw-away module and counted with torch",
    ),
    "vgg": (
        605_748,
        "musicnn 0.1.0 (jordipons/musicnn) MTT_vgg TF checkpoint: sum of its trainable variables "
        "(kernels, biases, BN gamma/beta)",
    ),
}

# The zoo: models registered by audiocnn's own modules (other test files register
# throw-away models in the same registry; those are not part of it).
MODELS = [n for n in list_models() if get_model_class(n).__module__.startswith("audiocnn.models.")]
TASKS = ("single-label", "multi-label")
NUM_CLASSES = 7
BATCH = 2


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def build(name: str, task: str = "multi-label", num_classes: int = NUM_CLASSES, **kw) -> TaggingModel:
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, task=task, **kw)


def audio(model: TaggingModel, length: int | None = None, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    n = model.input_length if length is None else length
    return 0.1 * torch.randn(batch, n, generator=g)


def loss_for(task: str, logits: torch.Tensor) -> torch.Tensor:
    n = logits.shape[-1]
    if task == "single-label":
        return nn.functional.cross_entropy(logits, torch.arange(logits.shape[0]) % n)
    target = (torch.arange(logits.numel()).reshape(logits.shape) % 3 == 0).float()
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


# ------------------------------------------------------------------------ registry
def test_zoo_has_the_papers_models():
    for name in ("samplecnn", "samplecnn-se", "fcn", "shortchunk-cnn", "shortchunk-resnet", "crnn", "harmonic-cnn"):
        assert name in MODELS
    assert "cnnsa" in MODELS and len(MODELS) == 10


@pytest.mark.parametrize("name", MODELS)
def test_every_registered_model_declares_itself(name):
    model = build(name)
    assert name in PINNED_PARAMS, f"{name} has no PINNED_PARAMS entry in tests/test_models.py"
    assert model.registry_name == name
    assert model.spec.input_kind in ("waveform", "mel")
    assert model.spec.reference
    assert model.length_policy in LENGTH_POLICIES, (
        f"{name}: set the class attribute length_policy to 'fixed' or 'adaptive' "
        "(see audiocnn/models/base.py) and document it in the class docstring"
    )
    policy_doc = (type(model).__doc__ or "").lower()
    assert model.length_policy in policy_doc, f"{name}'s docstring does not state its input-length policy"
    json.dumps(model.init_kwargs)  # checkpoints store these as JSON
    assert "frontend" not in model.init_kwargs


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_is_pinned(name):
    assert name in PINNED_PARAMS, f"pin the parameter count of {name} in PINNED_PARAMS"
    pinned, source, *reference = PINNED_PARAMS[name]
    assert isinstance(source, str) and len(source) > 10
    model = build(name, num_classes=50)
    n = count_parameters(model)
    assert n == pinned, f"{name}: {n} parameters, pinned {pinned} ({source})"
    ref = reference[0] if reference else pinned
    assert abs(n - ref) <= 0.10 * ref, f"{name}: {n} parameters, reference {ref} ({source})"


def test_duplicate_name_is_rejected():
    class Other(TaggingModel):
        pass

    with pytest.raises(ModelError, match="already registered"):
        register_model("samplecnn")(Other)


def test_typo_suggests_close_match():
    with pytest.raises(ModelError, match="did you mean 'samplecnn'"):
        create_model("samplecnm", num_classes=3)
    with pytest.raises(ModelError, match="did you mean 'shortchunk-resnet'"):
        create_model("shortchunk_resnet", num_classes=3)


def test_bad_create_arguments():
    with pytest.raises(ModelError, match="task"):
        create_model("samplecnn", num_classes=3, task="multiclass")
    with pytest.raises(ModelError, match="num_classes"):
        create_model("samplecnn", num_classes=0)
    with pytest.raises(ModelError, match="bad arguments for model 'fcn'"):
        create_model("fcn", num_classes=3, chanels=[1, 2])


# -------------------------------------------------------------------- forward/back
@pytest.mark.parametrize("name", MODELS)
def test_both_tasks_forward_and_every_parameter_gets_a_gradient(name):
    # Single-label: one training step with cross-entropy; every parameter must get a
    # gradient (what DDP needs without find_unused_parameters).
    model = build(name, "single-label").train()
    logits = model(audio(model))
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    proba = model.predict_proba(logits.detach())
    torch.testing.assert_close(proba.sum(-1), torch.ones(BATCH))
    loss_for("single-label", logits).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]} (DDP would need find_unused_parameters)"
    dead = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not dead, f"{name}: non-finite gradients in {dead[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.head.parameters())

    # Multi-label: same architecture, independent sigmoids, BCE loss is finite.
    multi = build(name, "multi-label").eval()
    assert {k: v.shape for k, v in multi.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = multi(audio(multi))
    assert logits.shape == (BATCH, NUM_CLASSES) and torch.isfinite(logits).all()
    proba = multi.predict_proba(logits)
    torch.testing.assert_close(proba, torch.sigmoid(logits))
    assert torch.isfinite(loss_for("multi-label", logits))


@pytest.mark.parametrize("name", MODELS)
def test_from_features_equals_end_to_end(name):
    model = build(name).eval()
    x = audio(model)
    with torch.no_grad():
        end_to_end = model(x)
        feats = model.frontend(x)
        assert tuple(feats.shape[1:]) == model.feature_shape()
        skipped = model(feats, from_features=True)
        emb = model.embed(feats, from_features=True)
    torch.testing.assert_close(skipped, end_to_end)
    assert emb.dim() == 2 and emb.shape[0] == BATCH
    torch.testing.assert_close(model.head(emb), end_to_end)


@pytest.mark.parametrize("name", MODELS)
def test_input_length_policy(name):
    model = build(name).eval()
    native = model.input_length
    too_short = model.min_input_length - max(model.min_input_length // 10, 512)
    with torch.no_grad():
        with pytest.raises(ModelError, match=r"\d+"):
            model(audio(model, too_short))
        with pytest.raises(ModelError):
            model(model.frontend(audio(model, too_short)), from_features=True)
        longer = audio(model, native + native // 2)
        if model.length_policy == "fixed":
            assert model.min_input_length == native
            with pytest.raises(ModelError, match=str(model.input_frames)):
                model(longer)
            with pytest.raises(ModelError):
                model(model.frontend(longer), from_features=True)
        else:
            assert model(longer).shape == (BATCH, NUM_CLASSES)
            assert model(audio(model, model.min_input_length)).shape == (BATCH, NUM_CLASSES)
            assert model.min_input_length <= native


@pytest.mark.parametrize("name", MODELS)
def test_wrong_feature_shape_is_a_clear_error(name):
    model = build(name).eval()
    feats = model.frontend(audio(model))
    bad = feats[:, :-1] if feats.dim() == 3 else feats.unsqueeze(1).expand(-1, 2, -1)
    with pytest.raises(ModelError, match="expects"):
        model(bad, from_features=True)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_on_cpu(name):
    model = build(name).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(audio(model, model.min_input_length, batch=1))
    assert logits.shape == (1, NUM_CLASSES)
    assert torch.isfinite(logits.float()).all()


# ------------------------------------------------------------- transfer learning
@pytest.mark.parametrize("name", MODELS)
def test_reset_head_and_backbone_parameters(name):
    model = build(name)
    backbone_before = {id(p) for p in model.backbone_parameters()}
    head_before = {id(p) for p in model.head.parameters()}
    assert backbone_before and head_before and not backbone_before & head_before
    everything = {id(p) for p in model.parameters()} - {id(p) for p in model.frontend.parameters()}
    assert backbone_before | head_before == everything

    model.reset_head(3)
    assert model.num_classes == 3
    assert {id(p) for p in model.backbone_parameters()} == backbone_before
    assert not {id(p) for p in model.head.parameters()} & head_before
    model.eval()
    with torch.no_grad():
        assert model(audio(model)).shape == (BATCH, 3)
    with pytest.raises(ModelError):
        model.reset_head(0)


@pytest.mark.parametrize("name", MODELS)
def test_init_kwargs_rebuild_the_same_model(name, tmp_path):
    from audiocnn.models.checkpoint import load_checkpoint, model_metadata, save_checkpoint

    model = build(name, "single-label", num_classes=4).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, model_metadata(model, list("abcd")))
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.init_kwargs == model.init_kwargs
    assert loaded.frontend_config == model.frontend_config
    assert (loaded.num_classes, loaded.task) == (4, "single-label")
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


# --------------------------------------------------------- hyper-parameters/config
def test_samplecnn_architecture_follows_the_paper():
    model = build("samplecnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [c.out_channels for c in convs] == [128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512]
    assert [c.kernel_size[0] for c in convs] == [3] * 10 + [1]
    assert convs[0].stride == (3,) and model.sample_rate == 22050 and model.input_length == 3**10
    assert model.head[0].p == 0.5
    # A shallower stack implies a shorter native input.
    small = build("samplecnn", blocks=[16, 16, 32])
    assert small.input_length == 3 * 3**3
    assert small(audio(small)).shape == (BATCH, NUM_CLASSES)
    with pytest.raises(ModelError, match="does not fit"):
        build("samplecnn", input_length=44100)
    with pytest.raises(ModelError, match="waveform"):
        build("samplecnn", frontend=MelConfig())


def test_samplecnn_se_blocks_and_aggregation():
    model = build("samplecnn-se")
    assert [se.fc1.out_features // se.fc1.in_features for se in model.se] == [16] * 9
    assert model.embedding_dim == 256 + 256 + 512
    single = build("samplecnn-se", multi_level=1, amplifying_ratio=2, blocks=[8, 8, 16])
    assert single.embedding_dim == 16 and single.init_kwargs["input_length"] == 81
    assert single(audio(single, 200)).shape == (BATCH, NUM_CLASSES)


def test_fcn_choi_setting_is_configurable():
    choi = build(
        "fcn",
        channels=[32, 128, 128, 192, 256],
        activation="elu",
        input_length=349440,
        frontend=MelConfig(sample_rate=12000, n_fft=512, hop_length=256, n_mels=96),
    )
    assert choi.input_frames == 1366 and choi.sample_rate == 12000
    assert any(isinstance(m, nn.ELU) for m in choi.modules())
    assert choi.eval()(audio(choi)).shape == (BATCH, NUM_CLASSES)
    with pytest.raises(ModelError, match="1 x 1"):
        build("fcn", input_length=160000)
    with pytest.raises(ModelError, match="n_mels"):
        build("fcn", n_mels=128, frontend=MelConfig(n_mels=96))


def test_shortchunk_frontend_and_widths():
    model = build("shortchunk-cnn")
    c = model.frontend_config
    assert (c.sample_rate, c.n_fft, c.hop_length, c.n_mels, c.compression) == (16000, 512, 256, 128, "db")
    assert model.input_frames == 231
    widths = [m.out_channels for m in model.layers.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [128, 128, 256, 256, 256, 256, 512]
    narrow = build("shortchunk-resnet", n_channels=8)
    assert narrow.init_kwargs["channels"] == [8, 8, 16, 16, 16, 16, 32]
    with pytest.raises(ModelError, match="mel bins"):
        build("shortchunk-cnn", n_mels=96)
    with pytest.raises(ModelError, match="mel"):
        build("shortchunk-cnn", frontend=WaveformConfig())
    as_dict = build("shortchunk-cnn", n_channels=4, frontend=model.frontend_config.to_dict())
    assert as_dict.frontend_config == model.frontend_config


def test_channels_last_and_compile():
    model = build("shortchunk-cnn", n_channels=8).eval().to(memory_format=torch.channels_last)
    x = audio(model)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), eager)


# ----------------------------------------------------------------------------- CLI
def test_cli_models_json(capsys):
    assert run(["models", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert names == sorted(names) and set(MODELS) <= set(names)
    for r in rows:
        if r["name"] in PINNED_PARAMS:  # unpinned models fail test_parameter_count_is_pinned
            assert r["parameters"] == PINNED_PARAMS[r["name"]][0]
        assert r["input_kind"] in ("waveform", "mel")
        assert r["input_seconds"] == pytest.approx(r["input_length"] / r["sample_rate"], abs=1e-3)
        assert r["reference"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["samplecnn"]["input_length"] == 59049 and by_name["samplecnn"]["sample_rate"] == 22050
    assert by_name["fcn"]["input_seconds"] == pytest.approx(29.1)


def test_cli_models_table_and_bad_format(capsys):
    assert run(["models"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        assert name in out
    assert "24.74M" in out
    assert run(["models", "--format", "xml"]) == 2
    assert "--format" in capsys.readouterr().err

"""Encoder: backbone families, pooling, whitening, ImageNet weights and real-data recall."""
import csv
import os
import time

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torchvision

from vpr_ros.core.errors import ModelFileError, VPRError
from vpr_ros.core.preprocess import preprocess
from vpr_ros.model import backbones, imagenet
from vpr_ros.model import encoder as encoder_mod
from vpr_ros.model.encoder import build_encoder, Encoder, GeM, ModelSpec, VPRNet
from vpr_ros.model.whitening import apply_whitening, fit_pca_whitening

torch.set_num_threads(2)


@pytest.fixture(scope='module')
def default_encoder() -> Encoder:
    return build_encoder('', device='cpu')


@pytest.fixture(scope='module')
def images() -> list:
    cat = skimage.data.chelsea()
    rng = np.random.default_rng(0)
    return [cat, np.ascontiguousarray(cat[::-1]), cat[40:240, 60:300],
            rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)]


@pytest.mark.parametrize('backbone, dim', [
    ('mobilenet_v2', 1280), ('resnet18', 512), ('resnet50', 2048), ('densenet121', 1024)])
def test_backbone_families(backbone: str, dim: int, images: list) -> None:
    # MobileNetV2's ImageNet weights are offline; the others run from random init. (A random
    # MobileNetV2 in eval mode saturates its ReLU6 everywhere: every descriptor is the same.)
    torch.manual_seed(0)
    net = VPRNet(ModelSpec(backbone=backbone, image_size=(64, 64)),
                 pretrained=backbone == 'mobilenet_v2')
    enc = Encoder(net, 'test', device='cpu')
    assert enc.dim == dim and enc.spec.backbone == backbone
    a = enc.embed(images, 'rgb8')
    assert a.shape == (len(images), dim) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.array_equal(a, enc.embed(images, 'rgb8'))  # deterministic (eval mode)
    assert not np.allclose(a[0], a[3], atol=1e-3)  # different pictures, different vectors
    assert np.allclose(enc.embed_one(images[2], 'rgb8'), a[2], atol=1e-5)


def test_gem_vs_avg(images: list) -> None:
    gem = VPRNet(ModelSpec(image_size=(64, 64), pooling='gem', gem_p=3.0), pretrained=True)
    avg = VPRNet(ModelSpec(image_size=(64, 64), pooling='avg'))
    avg.backbone.load_state_dict(gem.backbone.state_dict())
    x = torch.stack([preprocess(im, (64, 64), 'rgb8') for im in images])
    with torch.no_grad():
        dg, da = gem.eval()(x), avg.eval()(x)
        assert not torch.allclose(dg, da, atol=1e-3)
        # GeM with p = 1 is average pooling (activations after ReLU6 are >= 0).
        gem.pool.p.fill_(1.0)
        assert torch.allclose(gem(x), da, atol=1e-4)
        # And p -> large approaches max pooling.
        feats = gem.backbone(x)
        gem.pool.p.fill_(60.0)
        mx = feats.amax(dim=(2, 3))
        assert torch.allclose(gem.pool(feats), mx, rtol=0.1, atol=1e-3)
    assert isinstance(gem.pool, GeM) and gem.pool.p.requires_grad


def test_gem_matches_textbook_formula_and_gradients() -> None:
    # The max-rescaled GeM must equal mean(x**p)**(1/p), gradients included (x and p).
    torch.manual_seed(0)
    x = (torch.rand(2, 5, 4, 3, dtype=torch.float64) * 4).requires_grad_()
    pool = GeM(2.5).double()
    out = pool(x)
    p = pool.p
    ref = x.clamp(min=1e-6).pow(p.view(1, 1, 1, 1)).mean(dim=(2, 3)).pow(1 / p)
    assert torch.allclose(out, ref)
    w = torch.randn_like(out)
    gx, gp = torch.autograd.grad((out * w).sum(), (x, p))
    rx, rp = torch.autograd.grad((ref * w).sum(), (x, p))
    assert torch.allclose(gx, rx) and torch.allclose(gp, rp)


def test_batch_equals_single(default_encoder: Encoder, images: list) -> None:
    batch = default_encoder.embed(images, 'rgb8')
    singles = np.stack([default_encoder.embed_one(im, 'rgb8') for im in images])
    assert np.allclose(batch, singles, atol=1e-5)
    default_encoder.batch_size = 3  # chunked batches give the same rows
    try:
        assert np.allclose(default_encoder.embed(images, 'rgb8'), batch, atol=1e-5)
    finally:
        default_encoder.batch_size = 32
    assert default_encoder.embed([], 'rgb8').shape == (0, 1280)
    bgr = [np.ascontiguousarray(im[:, :, ::-1]) for im in images]
    assert np.allclose(default_encoder.embed(bgr, 'bgr8'), batch, atol=1e-5)


def test_default_is_imagenet_mobilenet_v2(default_encoder: Encoder) -> None:
    spec = default_encoder.spec
    assert (spec.backbone, spec.pooling, spec.gem_p, spec.image_size) == \
        ('mobilenet_v2', 'gem', 3.0, (224, 224))
    path = encoder_mod.hub_checkpoint_path('mobilenet_v2')
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    ours = default_encoder.net.backbone.state_dict()
    expected = encoder_mod.torchvision_to_trunk_state('mobilenet_v2', ckpt)
    assert set(ours) == set(expected)
    for k, v in expected.items():
        assert torch.equal(ours[k].cpu().float(), v.float()), k
    # Fingerprint: spec tag plus the weights file's sha256 prefix (torchvision's b0353104).
    fp = default_encoder.fingerprint
    assert fp == 'builtin:mobilenet_v2-gem3-224x224:b0353104'
    assert build_encoder('', device='cpu').fingerprint == fp


def test_default_weights_classify_a_cat() -> None:
    # The full torchvision classifier from the same weights (through our hash-checked,
    # weights_only loader, never torchvision's pickle-running one), fed by our preprocessing.
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    model = backbones.get('mobilenet_v2').build()
    assert imagenet.load_into(model, 'mobilenet_v2') == backbones.MOBILENET_V2_SHA256
    model.eval()
    x = preprocess(skimage.data.chelsea(), (224, 224), 'rgb8')[None]
    with torch.no_grad():
        top = int(model(x).argmax())
    assert 281 <= top <= 285, (top, weights.meta['categories'][top])


def test_whitening_on_net(images: list) -> None:
    net = VPRNet(ModelSpec(image_size=(64, 64)), pretrained=True)
    enc = Encoder(net, 'test', device='cpu')
    rng = np.random.default_rng(0)
    many = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(40)] + images
    plain = enc.embed(many, 'rgb8')
    mean, proj = fit_pca_whitening(plain, 16)
    assert mean.shape == (1280,) and proj.shape == (16, 1280)
    net.set_whitening(mean, proj)
    assert net.dim == 16 and enc.dim == 16 and enc.spec.whitening_dim == 16
    white = enc.embed(many, 'rgb8')
    assert white.shape == (len(many), 16)
    assert np.allclose(np.linalg.norm(white, axis=1), 1, atol=1e-5)
    assert np.allclose(white, apply_whitening(plain, mean, proj), atol=1e-4)
    net.set_whitening(None, None)
    assert net.dim == 1280
    with pytest.raises(VPRError, match='whitening'):
        net.set_whitening(mean[:10], proj)


def test_fit_pca_whitening_math() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0
    mean, proj = fit_pca_whitening(x, 4)
    y = (x - mean) @ proj.T
    # Whitened training data: zero mean, identity covariance on the kept components.
    assert np.allclose(y.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(y.T @ y / len(x), np.eye(4), atol=1e-4)
    # Components ordered by variance: projection rows span the top eigenvectors.
    w, v = np.linalg.eigh(np.cov(x.T, bias=True))
    top = v[:, np.argsort(w)[::-1][:4]]
    rows = proj / np.linalg.norm(proj, axis=1, keepdims=True)
    assert np.allclose(np.abs(rows @ top), np.eye(4), atol=1e-4)
    out = apply_whitening(x, mean, proj)
    assert out.shape == (500, 4) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert apply_whitening(x[0], mean, proj).shape == (4,)
    # Fewer samples than dimensions takes the SVD path and gives the same whitening property.
    small = rng.normal(size=(20, 50))
    m2, p2 = fit_pca_whitening(small, 10)
    y2 = (small - m2) @ p2.T
    assert np.allclose(y2.T @ y2 / 20, np.eye(10), atol=1e-4)
    with pytest.raises(VPRError, match='out_dim'):
        fit_pca_whitening(small, 20)
    with pytest.raises(VPRError, match='out_dim'):
        fit_pca_whitening(x, 7)


@pytest.mark.parametrize('backbone, trainable', [
    ('mobilenet_v2', {'17', '18'}), ('resnet18', {'layer3', 'layer4'}),
    ('densenet121', {'denseblock3', 'transition3', 'denseblock4', 'norm5'})])
def test_set_trainable_blocks(backbone: str, trainable: set) -> None:
    net = VPRNet(ModelSpec(backbone=backbone, image_size=(64, 64)))
    net.set_trainable_blocks(2)
    on = {n.split('.')[1] for n, p in net.named_parameters()
          if p.requires_grad and n.startswith('backbone.')}
    assert on == trainable
    assert net.pool.p.requires_grad
    net.train()
    for name, module in net.backbone.named_children():
        if name not in trainable and any(True for _ in module.parameters()):
            assert not module.training, name  # frozen BatchNorm keeps its statistics
        if name in trainable:
            assert module.training, name
    # A step moves only the trainable parts.
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    for n, p in net.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        if not p.requires_grad:
            assert not moved, n
    net.set_trainable_blocks(-1)
    assert all(p.requires_grad for p in net.parameters())
    net.train()
    assert all(m.training for m in net.modules())


def test_missing_resnet_weights_fail_fast(tmp_path, monkeypatch) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    monkeypatch.setattr(imagenet, '_can_reach', lambda url, timeout=3.0: False)
    try:
        t = time.monotonic()
        with pytest.raises(ModelFileError, match='resnet18.*not available offline'):
            VPRNet(ModelSpec(backbone='resnet18'), pretrained=True)
        assert time.monotonic() - t < 10
    finally:
        torch.hub.set_dir(old)


def test_local_backbone_checkpoint(tmp_path) -> None:
    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None)
    path = str(tmp_path / 'resnet18.pth')
    torch.save(model.state_dict(), path)
    net = VPRNet(ModelSpec(backbone='resnet18', image_size=(64, 64)), checkpoint=path)
    assert torch.equal(net.backbone.layer4[1].conv2.weight, model.layer4[1].conv2.weight)
    with pytest.raises(ModelFileError, match='does not fit'):
        VPRNet(ModelSpec(backbone='resnet34', image_size=(64, 64)), checkpoint=path)
    with pytest.raises(ModelFileError, match='cannot read'):
        VPRNet(ModelSpec(backbone='resnet18'), checkpoint=str(tmp_path / 'nope.pth'))


def test_build_encoder_at_another_input_size(default_encoder: Encoder, images: list) -> None:
    from vpr_ros.core.preprocess import preprocess_batch

    enc = build_encoder('', device='cpu', image_size=(96, 128))
    assert enc.spec.image_size == (96, 128)
    assert enc.fingerprint == default_encoder.fingerprint + '@96x128'
    got = enc.embed(images)
    want = enc.embed_tensor(preprocess_batch(images, (96, 128), 'rgb8', enc.spec.mean,
                                             enc.spec.std))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, default_encoder.embed(images), atol=1e-3)
    same = build_encoder('', device='cpu', image_size=(224, 224))
    assert same.fingerprint == default_encoder.fingerprint  # its own size: no mark
    with pytest.raises(VPRError, match='image_size'):
        build_encoder('', device='cpu', image_size=(8, 8))


def test_spec_and_device_validation() -> None:
    with pytest.raises(VPRError, match='backbone'):
        ModelSpec(backbone='vgg16')
    with pytest.raises(VPRError, match='pooling'):
        ModelSpec(pooling='max')
    with pytest.raises(VPRError, match='image_size'):
        ModelSpec(image_size=(8, 8))
    net = VPRNet(ModelSpec(image_size=(64, 64)))
    with pytest.raises(VPRError, match='device'):
        Encoder(net, 'x', device='tpu')
    if not torch.cuda.is_available():
        with pytest.raises(VPRError, match='CUDA'):
            Encoder(net, 'x', device='cuda')
    assert Encoder(net, 'x', device='auto').device.type == \
        ('cuda' if torch.cuda.is_available() else 'cpu')


def _read_corridor(root: str) -> tuple[list, list, list]:
    with open(os.path.join(root, 'ground_truth.csv')) as f:
        rows = list(csv.DictReader(f))
    refs = sorted(os.listdir(os.path.join(root, 'ref')))
    ref_index = {f'ref/{name}': i for i, name in enumerate(refs)}
    queries = [r['query_image'] for r in rows]
    positives = [{ref_index[p] for p in r['correct_ref_images'].split(';') if p} for r in rows]
    ref_imgs = [cv2.imread(os.path.join(root, 'ref', n), cv2.IMREAD_COLOR) for n in refs]
    q_imgs = [cv2.imread(os.path.join(root, q), cv2.IMREAD_COLOR) for q in queries]
    return ref_imgs, q_imgs, positives


def test_default_encoder_corridor_recall(corridor_dir: str, default_encoder: Encoder) -> None:
    refs, queries, positives = _read_corridor(corridor_dir)
    assert len(refs) == 111 and len(queries) == 111
    r = default_encoder.embed(refs, 'bgr8')
    q = default_encoder.embed(queries, 'bgr8')
    ranks = np.argsort(-(q @ r.T), axis=1)
    recall = {k: float(np.mean([bool(set(ranks[i, :k]) & positives[i])
                                for i in range(len(queries))])) for k in (1, 5)}
    print(f'corridor R@1={recall[1]:.3f} R@5={recall[5]:.3f}')
    assert recall[1] >= 0.60, recall
    assert recall[5] >= recall[1]


@pytest.mark.parametrize('name', backbones.BACKBONES)
def test_backbone_table_rows_agree_with_the_networks(name: str) -> None:
    # One row per backbone; its channels, trunk keys and blocks must match what torchvision
    # builds, so nothing else in the package needs to describe a backbone.
    entry = backbones.get(name)
    assert entry.name == name and entry.weights_file.startswith(name + '-')
    assert entry.url.endswith('/' + entry.weights_file) and len(entry.hash_prefix) == 8
    assert entry.sha256 is None or (len(entry.sha256) == 64
                                    and entry.sha256.startswith(entry.hash_prefix))
    assert torchvision.models.get_model_weights(name).IMAGENET1K_V1.url == entry.url
    classifier = entry.build()
    trunk_state = entry.to_trunk_state(classifier.state_dict())
    net = VPRNet(ModelSpec(backbone=name, image_size=(64, 64)))
    assert set(trunk_state) == set(net.backbone.state_dict())
    assert net.feature_dim == entry.channels == net.dim
    with torch.no_grad():
        feats = net.backbone.eval()(torch.zeros(1, 3, 64, 64))
    assert feats.shape[1] == entry.channels
    children = [n for n, _ in net.backbone.named_children()]
    assert [n for block in net._blocks for n in block] == children  # blocks tile the trunk


def test_densenet_old_checkpoint_keys_are_renamed() -> None:
    entry = backbones.get('densenet121')
    new = 'features.denseblock1.denselayer1.norm1.weight'
    old = 'features.denseblock1.denselayer1.norm.1.weight'
    assert entry.to_trunk_state({old: 1, 'classifier.weight': 2}) == \
        {'denseblock1.denselayer1.norm1.weight': 1}
    assert entry.to_trunk_state({new: 1}) == {'denseblock1.denselayer1.norm1.weight': 1}
    with pytest.raises(VPRError, match='unknown backbone .*supported: mobilenet_v2'):
        backbones.get('vgg16')


def test_embed_of_a_list_is_one_forward(default_encoder: Encoder, images: list) -> None:
    # Several queued frames: one preprocessing buffer and one forward pass, not one per frame.
    calls = []
    hook = default_encoder.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        many = default_encoder.embed(images * 2, 'rgb8')
        assert calls == [torch.Size([8, 3, 224, 224])]
        one = default_encoder.embed_one(images[1], 'rgb8')
    finally:
        hook.remove()
    assert len(calls) == 2 and np.allclose(many[5], one, atol=1e-5)
    assert default_encoder.fp16 is False  # fp16 autocast is CUDA-only
    assert Encoder(VPRNet(ModelSpec(image_size=(64, 64))), 'x', device='cpu',
                   fp16=True).fp16 is False


def test_onnxruntime_backend_gives_the_same_descriptors(default_encoder: Encoder,
                                                         images: list) -> None:
    # bench_gpu.py --onnx measured ONNX Runtime faster on CPU; it must not change a descriptor.
    enc = build_encoder('', device='cpu', backend='onnxruntime')
    assert enc.backend == 'onnxruntime' and default_encoder.backend == 'torch'
    assert enc.fingerprint == default_encoder.fingerprint  # maps stay compatible
    want = default_encoder.embed(images, 'rgb8')
    got = enc.embed(images, 'rgb8')
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(enc.embed_one(images[2], 'rgb8'), want[2], atol=1e-5)
    assert enc.embed([], 'rgb8').shape == (0, 1280)
    # whitened nets export too; a net changed after its export is refused, not run stale
    rng = np.random.default_rng(0)
    many = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(20)]
    mean, proj = fit_pca_whitening(default_encoder.embed(many), 8)
    net = VPRNet(ModelSpec(image_size=(64, 64)), pretrained=True)
    net.set_whitening(mean, proj)
    white_t = Encoder(net, 'w', device='cpu').embed(images)
    white_o = Encoder(net, 'w', device='cpu', backend='auto')
    assert white_o.backend == 'onnxruntime'
    np.testing.assert_allclose(white_o.embed(images), white_t, atol=1e-5)
    net.set_whitening(None, None)
    with pytest.raises(VPRError, match='changed after its ONNX export'):
        white_o.embed(images)
    with pytest.raises(VPRError, match='backend'):
        Encoder(net, 'x', device='cpu', backend='tensorrt')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_fp16_and_batches_match_cpu(default_encoder: Encoder, images: list) -> None:
    # The GPU path (fp16 autocast, channels_last, cuDNN autotune, pinned batches) must give the
    # CPU's descriptors up to fp16 rounding, one frame or a batch of queued frames alike.
    enc = build_encoder('', device='cuda')
    assert enc.fp16 and enc.channels_last and enc.backend == 'torch'
    enc.warmup((1, len(images)))
    want = default_encoder.embed(images, 'rgb8')
    got = enc.embed(images, 'rgb8')
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4)
    assert float((got * want).sum(axis=1).min()) > 0.999
    assert np.allclose(enc.embed_one(images[3], 'rgb8'), got[3], atol=2e-3)
    enc.fp16 = False
    np.testing.assert_allclose(enc.embed(images, 'rgb8'), want, atol=1e-3)
    with pytest.raises(VPRError, match='CPU'):
        build_encoder('', device='cuda', backend='onnxruntime')

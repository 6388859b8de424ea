"""Fused decoder + cross-entropy: same loss and gradients as the plain path, in a learner too."""
import pytest
import torch
import torch.nn.functional as F

from ulmfit_callbacks import BF16Autocast, SlantedTriangularLR, ulmfit_lm_learner
from ulmfit_callbacks.losses import DecoderInput, LMLoss, linear_cross_entropy


@pytest.mark.parametrize("chunk,block", [(1, 1), (7, 1024), (7, 10), (3, 4), (128, 1024), (1000, 1000)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_linear_then_cross_entropy_in_fp64(chunk, block, bias):
    torch.manual_seed(chunk + block)
    h = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(33, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(33, dtype=torch.float64, requires_grad=True) if bias else None
    y = torch.randint(0, 33, (50,))
    ref = F.cross_entropy(F.linear(h, w, b), y)
    got = linear_cross_entropy(h, w, b, y, chunk, block)
    assert torch.allclose(ref, got.double(), atol=1e-6)
    params = [t for t in (h, w, b) if t is not None]
    for a, c in zip(torch.autograd.grad(ref * 3, params), torch.autograd.grad(got * 3, params)):
        assert torch.allclose(a, c.double(), atol=1e-6)


def test_bf16_hidden_states_close_to_fp32():
    torch.manual_seed(0)
    h, w = torch.randn(300, 16), torch.randn(500, 16) * 0.3
    y = torch.randint(0, 500, (300,))
    ref = F.cross_entropy(F.linear(h, w), y)
    got = linear_cross_entropy(h.bfloat16(), w, None, y)
    assert got.dtype == torch.float32 and abs(got.item() - ref.item()) < 0.02 * ref.item()


def test_fp16_hidden_states_with_a_loss_scale():
    """fp16 GEMMs, fp32 softmax statistics: close to fp64, also with fastai's loss scale (2**16) flowing back."""
    torch.manual_seed(0)
    h64, w64 = torch.randn(300, 16, dtype=torch.float64), torch.randn(500, 16, dtype=torch.float64) * 0.3
    b64, y = torch.randn(500, dtype=torch.float64) * 0.1, torch.randint(0, 500, (300,))
    ref = [t.clone().requires_grad_() for t in (h64, w64, b64)]
    loss_ref = F.cross_entropy(F.linear(*ref), y)
    loss_ref.backward()
    h, w, b = h64.half().requires_grad_(), w64.float().requires_grad_(), b64.float().requires_grad_()
    loss = linear_cross_entropy(h, w, b, y, chunk=64, block=128)
    assert loss.dtype == torch.float32 and abs(loss.item() - loss_ref.item()) < 2e-3 * loss_ref.item()
    (loss * 2.0 ** 16).backward()
    assert h.grad.dtype == torch.float16 and w.grad.dtype == b.grad.dtype == torch.float32
    for got, want in ((h.grad, ref[0].grad), (w.grad, ref[1].grad), (b.grad, ref[2].grad)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double() / 2.0 ** 16, want, atol=2e-3 * want.abs().max().item(), rtol=0)


def test_gemms_in_the_hidden_dtype_inside_autocast():
    """fastai's MixedPrecision computes the loss inside its autocast region: the fused loss ignores it."""
    torch.manual_seed(0)
    h, w, y = torch.randn(40, 8), torch.randn(30, 8), torch.randint(0, 30, (40,))
    outside = linear_cross_entropy(h, w, None, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = linear_cross_entropy(h, w, None, y)
    assert torch.equal(inside, outside)


def test_decoder_input_passes_fastais_to_float():
    """``to_float`` (fastai's MixedPrecision.after_pred) leaves the decoder input as it is."""
    from fastai.torch_core import to_float
    d = DecoderInput(torch.randn(2, 3, 4).half(), torch.randn(9, 4), None)
    assert torch.is_floating_point(d) and d.dtype == torch.float16
    assert to_float(d) is d and to_float((d, torch.ones(1).half()))[1].dtype == torch.float32


def test_gradients_only_where_autograd_wants_them():
    torch.manual_seed(0)
    h, w = torch.randn(20, 4, requires_grad=True), torch.randn(9, 4)  # weight frozen
    y = torch.randint(0, 9, (20,))
    loss = linear_cross_entropy(h, w, None, y, 3, 6)
    (g,) = torch.autograd.grad(loss, [h], retain_graph=True)
    assert torch.equal(torch.autograd.grad(loss, [h])[0], g)  # a second backward gives the same gradient
    hr = h.detach().requires_grad_()
    (ref,) = torch.autograd.grad(F.cross_entropy(F.linear(hr, w), y), [hr])
    assert torch.allclose(g, ref, atol=1e-6)
    with torch.no_grad():  # no gradient work, same value
        assert torch.allclose(linear_cross_entropy(h, w, None, y), loss.detach())
    with pytest.raises(ValueError, match="chunk and block"):
        linear_cross_entropy(h, w, None, y, 0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected h"):
        linear_cross_entropy(torch.randn(2, 3, 4), torch.randn(5, 4), None, torch.zeros(2, dtype=torch.long))


def test_lm_loss_handles_logits_and_decoder_inputs():
    torch.manual_seed(0)
    h, w, b = torch.randn(2, 5, 4), torch.randn(9, 4), torch.randn(9)
    y = torch.randint(0, 9, (2, 5))
    d = DecoderInput(h, w, b)
    assert d.shape == (2, 5, 9)
    loss = LMLoss()
    assert torch.allclose(loss(d, y), loss(d.logits(), y), atol=1e-6)


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_and_plain_learners_train_alike(lm_dls, tiny_config, bf16):
    def run(fused):
        torch.manual_seed(0)
        lm_dls.train.rng = __import__("numpy").random.default_rng(0)
        learn = ulmfit_lm_learner(lm_dls, config=tiny_config, fused_loss=fused)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, cbs=[SlantedTriangularLR(1e-2)] + ([BF16Autocast()] if bf16 else []))
        return learn
    a, b = run(True), run(False)
    assert isinstance(a.loss_func, LMLoss)
    # One step's gradients are equal in fp64 (the tests above). Over an epoch, Adam magnifies
    # last-bit differences between two correct GEMM orders (they differ between CPUs: a weight
    # with a near-zero gradient moves by about lr either way), so the trajectories are compared
    # with tolerances that hold on any CPU: the weights agree to 1% of their size on average and
    # the validation losses to 0.1%. bf16 rounds differently again (bias added in fp32 here, in bf16 by
    # autocast's linear).
    if not bf16:
        for k, v in a.model.state_dict().items():
            if v.is_floating_point() and v.abs().sum() > 0:
                diff = (v - b.model.state_dict()[k]).abs().mean() / v.abs().mean()
                assert diff < 0.01, f"{k}: mean difference {float(diff):.2%} of the mean weight"
    va, vb = a.recorder.values[-1][1], b.recorder.values[-1][1]
    assert abs(va - vb) < (0.03 if bf16 else 1e-3) * vb
    # before Adam has magnified anything, the first steps' training losses agree closely
    first_a, first_b = (torch.stack(list(x.recorder.losses[:5])) for x in (a, b))
    torch.testing.assert_close(first_a, first_b, rtol=1e-2 if bf16 else 1e-5, atol=0)


def test_the_loss_owns_the_fusion(tiny_config):
    """LMLoss.attach fuses the decoder in place (same parameters, tying and state dict); detach undoes it;
    the model's own code knows nothing of the loss."""
    import ast

    import ulmfit_callbacks.models.awd_lstm as awd
    from ulmfit_callbacks.losses import FusedLinear
    from ulmfit_callbacks.models import AWDLSTMLanguageModel
    imported = [n.module or "" for n in ast.walk(ast.parse(open(awd.__file__).read())) if isinstance(n, ast.ImportFrom)]
    assert imported and not any("losses" in m for m in imported)  # the model does not import the loss
    torch.manual_seed(0)
    model = AWDLSTMLanguageModel(30, tiny_config)
    keys, weight = list(model.state_dict()), model.decoder.decoder.weight
    x, y = torch.randint(0, 30, (2, 6)), torch.randint(0, 30, (2, 6))
    torch.manual_seed(1)  # same dropout masks, same (reset) carried state
    plain = LMLoss()(model(x)[0], y)
    loss = LMLoss()
    assert loss.attach(model) is model and type(model.decoder.decoder) is FusedLinear
    assert list(model.state_dict()) == keys and model.decoder.decoder.weight is weight is model.encoder.embedding.weight
    torch.manual_seed(1)
    model.reset()
    out = model(x)[0]
    assert isinstance(out, DecoderInput)
    assert torch.allclose(loss(out, y), plain, atol=1e-5)
    assert isinstance(model.eval()(x)[0], torch.Tensor)  # evaluation: logits
    LMLoss.detach(model.train())
    assert type(model.decoder.decoder) is torch.nn.Linear and isinstance(model(x)[0], torch.Tensor)
    with pytest.raises(TypeError, match="linear decoder"):
        LMLoss().attach(torch.nn.Linear(3, 3))


def test_own_loss_gets_logits(lm_dls, tiny_config):
    from fastai.losses import CrossEntropyLossFlat
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config, loss_func=CrossEntropyLossFlat())
    assert type(learn.model.decoder.decoder) is torch.nn.Linear
    assert type(ulmfit_lm_learner(lm_dls, config=tiny_config).model.decoder.decoder).__name__ == "FusedLinear"

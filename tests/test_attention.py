"""rcg.layers attention: the official float32 path (logits and softmax upcast, also under autocast) and the fused
path (in the autocast dtype, for CUDA under bf16 autocast) compute softmax(q k^T / sqrt(d)) v; the choice between
them is made by ``fused_attention`` alone."""
import math

import pytest
import torch

from rcg import layers
from rcg.layers import Attention, attention, fused_attention


def qkv(B=2, H=6, N=97, d=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g).to(dtype) for _ in range(3)]


def reference(q, k, v):
    """The plain math, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


@pytest.mark.parametrize("shape", [(2, 1, 5, 8), (2, 6, 97, 32), (1, 12, 257, 64)])
def test_both_paths_compute_softmax_attention_in_fp32(shape):
    q, k, v = qkv(*shape)
    want = reference(q, k, v)
    plain, fused = attention(q, k, v, fused=False), attention(q, k, v, fused=True)
    assert plain.dtype == fused.dtype == torch.float32
    torch.testing.assert_close(plain.double(), want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(fused.double(), want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(fused, plain, atol=2e-6, rtol=1e-5)


def test_attention_is_not_trivial():
    """The inputs give sharp, position-dependent attention (not a uniform average the paths agree on trivially)."""
    q, k, v = qkv()
    out = attention(q, k, v)
    assert (out - v.mean(2, keepdim=True)).abs().max() > 0.5


def test_default_path_upcasts_under_cpu_bf16_autocast():
    q, k, v = qkv(dtype=torch.bfloat16)
    exact = attention(q.float(), k.float(), v.float())          # fp32 computation of the bf16-rounded inputs
    with torch.autocast("cpu", torch.bfloat16):
        plain = attention(q, k, v)
        fused = attention(q, k, v, fused=True)
    assert plain.dtype == torch.float32 and fused.dtype == torch.bfloat16
    torch.testing.assert_close(plain, exact, atol=1e-6, rtol=1e-6)
    err = (fused.float() - exact).abs().max().item()
    assert 0 < err < 3e-2, err                                   # bf16 arithmetic: close, but not the fp32 result
    torch.testing.assert_close(fused.float(), exact, atol=3e-2, rtol=2e-2)


def test_module_forced_fused_matches_default_in_fp32(monkeypatch):
    torch.manual_seed(0)
    m = Attention(96, 6).eval()
    x = torch.randn(3, 50, 96)
    plain = m(x)
    monkeypatch.setattr(layers, "fused_attention", lambda x: True)
    torch.testing.assert_close(m(x), plain, atol=2e-6, rtol=1e-5)
    assert [n for n, _ in m.named_parameters()] == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]


def test_module_paths_under_cpu_bf16_autocast(monkeypatch):
    """Default: the attention output fed to ``proj`` is float32 (upcast); forced fused: bf16."""
    torch.manual_seed(0)
    m = Attention(96, 6).eval()
    x = torch.randn(3, 50, 96)
    seen = []
    m.proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", torch.bfloat16):
        plain = m(x)
        monkeypatch.setattr(layers, "fused_attention", lambda x: True)
        fused = m(x)
    assert seen == [torch.float32, torch.bfloat16]
    torch.testing.assert_close(fused.float(), plain.float(), atol=5e-2, rtol=5e-2)


def test_fused_only_for_cuda_under_bf16_autocast(monkeypatch):
    x = torch.randn(2, 3)
    assert not fused_attention(x)
    with torch.autocast("cpu", torch.bfloat16):
        assert not fused_attention(x)                            # CPU autocast: the official fp32 path
    # a CUDA tensor (without a GPU: a stand-in reporting is_cuda) with CUDA autocast in several states
    cuda_x = type("FakeCuda", (), {"is_cuda": True})()
    state = {"enabled": False, "dtype": torch.bfloat16}
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: state["enabled"])
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: state["dtype"])
    assert not fused_attention(cuda_x)                           # autocast off (fp32 training)
    state["enabled"] = True
    assert fused_attention(cuda_x)                               # bf16 autocast on CUDA
    state["dtype"] = torch.float16
    assert not fused_attention(cuda_x)                           # fp16 autocast keeps the fp32 softmax
    state.update(enabled=True, dtype=torch.bfloat16)
    assert not fused_attention(x)                                # a CPU tensor never


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_on_cuda_under_bf16_autocast():
    x = torch.randn(2, 5, 8, device="cuda")
    assert not fused_attention(x)
    with torch.autocast("cuda", torch.bfloat16):
        assert fused_attention(x)
        q, k, v = (t.cuda() for t in qkv(dtype=torch.bfloat16))
        out = Attention(8 * 6, 6).cuda()(torch.randn(2, 97, 48, device="cuda"))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(attention(q, k, v, fused=True).float(), reference(q, k, v).float(), atol=3e-2,
                               rtol=2e-2)

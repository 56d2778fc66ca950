"""The block and language-model skeleton shared by every version (rwkv/model/base.py)."""

import torch


def test_relu_square_matches_autograd_composition():
    """The fused channel-mix activation: value and gradient equal relu(x).square() exactly, zeros included."""
    from rwkv.model.base import relu_square

    x = torch.randn(3, 17, 40, dtype=torch.float64)
    x[0, 0, :5] = 0.0  # relu's kink: both give gradient 0 there
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(x)
    ya, yb = relu_square(a), torch.relu(b).square()
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)
    assert torch.autograd.gradcheck(relu_square, (torch.randn(4, 6, dtype=torch.float64, requires_grad=True),))

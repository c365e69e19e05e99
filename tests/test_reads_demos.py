"""A trained apprentice reads its demonstrations (the gates are learned, never set by hand).

The toy of `bench/toy_reads_demos.py`: a tiny pixel UNet is trained as a base on discs of
random colour under one fixed prompt (the words cannot say the colour), then the real
`ApprenticeUNet` learns from rows whose demos are other discs of the target's colour. On
unseen colours its renders with the subject's own demos must differ from its renders with
another subject's demos and be closer to the subject's colour.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_trained_apprentice_renders_the_colour_of_its_own_demos():
    import toy_reads_demos as toy

    torch.set_num_threads(2)
    rec = toy.ToyRecipe(base_steps=300, steps=300, lr=1e-3, train_base=0)
    text = torch.randn(toy.L, toy.D, generator=torch.Generator().manual_seed(99))
    base = toy.train_base(rec, text)
    app, loss = toy.train_apprentice(rec, base, text)
    gates = [float(torch.tanh(g)) for g in app.gate_parameters()]
    assert max(abs(g) for g in gates) > 0.02, f"training left every gate at ~0: {gates}"

    res = toy.evaluate(app, text, rec)
    # Measured (2026-12-04): own 136.9, swap 155.1, gain 18.2, pixels 6.4; untrained gates give 0.0.
    assert res["own_vs_swap_pixels"] > 1.0, res
    assert res["colour_gain"] > 5.0, res

    # The same model without its demos is the base: the difference comes from the demos alone.
    with torch.no_grad():
        x = torch.randn(2, 3, toy.R, toy.R)
        t = torch.full((2,), 500)
        states = text.expand(2, -1, -1)
        assert torch.allclose(app(x, t, states, None), base(x, t, states).sample, atol=1e-6)

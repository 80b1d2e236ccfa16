"""DLL for the Elman RNN (Appendix B, eqs. 10-30), grouped by oracle:

* equivalence: with Θ_y = W_y and Θ_h = W_h, DLL's ΔW equal minus the autograd gradient of the
  same loss through the whole window, i.e. full (untruncated) BPTT; DLL-FA's frozen Θ differs;
* closed form: ΔΘ_y (27) and ΔΘ_h (29) against a step-by-step loop written from the equations;
* convergence: the apical dynamics (17)-(18) settle to the closed form (19)-(20);
* C1: changing W_y and W_h after the forward pass leaves ξ^h unchanged (and changes BP's).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bioplausible.algorithms import create_algorithm
from bioplausible.models import create_model

STEPS, FEATURES, CLASSES, HIDDEN, BATCH = 5, 3, 4, 6, 7


def small_rnn(readout="all", seed=0, output_bias=False):
    torch.manual_seed(seed)
    model = create_model("elman_rnn", (STEPS, FEATURES), CLASSES, hidden=HIDDEN, readout=readout,
                         output_bias=output_bias)
    return model.double()


def sequence_batch(readout="all", regression=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, STEPS, FEATURES, generator=g, dtype=torch.float64)
    if regression:
        return x, torch.randn(BATCH, CLASSES, generator=g, dtype=torch.float64)
    shape = (BATCH, STEPS) if readout == "all" else (BATCH,)
    return x, torch.randint(0, CLASSES, shape, generator=g)


def tie(rule):
    with torch.no_grad():
        rule.recurrent.theta_y.copy_(rule.model.cell.W_y.weight)
        rule.recurrent.theta_h.copy_(rule.model.cell.W_h.weight)


CASES = [("all", "mse", False, False), ("all", "ce", False, True), ("last", "mse", False, False),
         ("last", "ce", False, False), ("last", "mse", True, True)]


@pytest.mark.parametrize("readout,loss,regression,output_bias", CASES,
                         ids=["all-mse", "all-ce-bias", "last-mse", "last-ce", "regression-bias"])
def test_tied_theta_gives_bptt_weight_updates(readout, loss, regression, output_bias):
    reference = small_rnn(readout, output_bias=output_bias)
    bp = create_algorithm("bp", copy.deepcopy(reference), loss=loss)
    dll = create_algorithm("dll", copy.deepcopy(reference), loss=loss)
    tie(dll)
    x, y = sequence_batch(readout, regression)
    bp_result = bp.compute_updates(x, y)
    dll_result = dll.compute_updates(x, y)
    torch.testing.assert_close(dll_result.loss, bp_result.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(dll_result.output, bp_result.output, rtol=0, atol=1e-12)
    dll_params = dict(dll.model.named_parameters())
    for name, p_bp in bp.model.named_parameters():
        torch.testing.assert_close(dll_params[name].grad, p_bp.grad, rtol=0, atol=1e-10, msg=name)


def test_dll_fa_differs_from_bptt_and_keeps_theta_frozen():
    reference = small_rnn()
    bp = create_algorithm("bp", copy.deepcopy(reference), loss="mse")
    fa = create_algorithm("dll_fa", copy.deepcopy(reference))
    assert not any(p is fa.recurrent.theta_y for p in fa.parameters())  # buffers, not parameters
    x, y = sequence_batch()
    bp.compute_updates(x, y)
    fa.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    theta = [fa.recurrent.theta_y.clone(), fa.recurrent.theta_h.clone()]
    fa.train_step(x, y)
    cell, fa_cell = bp.model.cell, fa.model.cell
    # W_y's update needs no error from below: identical. W_x and W_h get random-feedback errors.
    torch.testing.assert_close(fa_cell.W_y.weight.grad, cell.W_y.weight.grad, rtol=0, atol=1e-12)
    assert not torch.allclose(fa_cell.W_h.weight.grad, cell.W_h.weight.grad, atol=1e-3)
    assert not torch.allclose(fa_cell.W_x.weight.grad, cell.W_x.weight.grad, atol=1e-3)
    assert torch.equal(fa.recurrent.theta_y, theta[0]) and torch.equal(fa.recurrent.theta_h, theta[1])


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_theta_updates_are_equations_27_and_29(loss):
    """Step-by-step Appendix B with untied Θ: ξ^y_t, ξ^h_t by (19)-(20), then (21)-(29)."""
    model = small_rnn()
    dll = create_algorithm("dll", model, loss=loss)
    x, y = sequence_batch()
    dll.compute_updates(x, y)
    cell, th_y, th_h = model.cell, dll.recurrent.theta_y, dll.recurrent.theta_h
    W_x, b, W_h, W_y = cell.W_x.weight, cell.W_x.bias, cell.W_h.weight, cell.W_y.weight
    with torch.no_grad():
        h, pre, hs = torch.zeros(BATCH, HIDDEN, dtype=torch.float64), [], []
        for t in range(STEPS):
            pre.append(h @ W_h.T + x[:, t] @ W_x.T + b)
            h = torch.tanh(pre[-1])
            hs.append(h)
        fp = [1 - torch.tanh(a) ** 2 for a in pre]
        xi_y = []
        for t in range(STEPS):
            out, onehot = hs[t] @ W_y.T, F.one_hot(y[:, t], CLASSES).double()
            xi_y.append(onehot - (out if loss == "mse" else out.softmax(-1)))
        xi_h = [None] * STEPS
        xi_h[-1] = xi_y[-1] @ th_y  # (20)
        for t in range(STEPS - 2, -1, -1):  # (19)
            xi_h[t] = xi_y[t] @ th_y + (xi_h[t + 1] * fp[t + 1]) @ th_h
        n = BATCH * STEPS
        d_theta_y = -sum(xi_y[t].T @ xi_h[t] for t in range(STEPS)) / n  # (27)
        d_theta_h = -sum((xi_h[t + 1] * fp[t + 1]).T @ xi_h[t] for t in range(STEPS - 1)) / n  # (29)
        d_w_h = sum((xi_h[t] * fp[t]).T @ (hs[t - 1] if t else torch.zeros_like(hs[0]))
                    for t in range(STEPS)) / n  # (25)
    torch.testing.assert_close(th_y.grad, -d_theta_y, rtol=0, atol=1e-12)
    torch.testing.assert_close(th_h.grad, -d_theta_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(W_h.grad, -d_w_h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps,eta_x,atol", [(STEPS, 1.0, 1e-13), (200, 0.5, 1e-10)])
def test_settling_converges_to_the_closed_form(steps, eta_x, atol):
    """With η_x = 1 the synchronous iteration is exact after T steps (the recursion is
    triangular in time); with η_x < 1 it converges geometrically."""
    reference = small_rnn()
    closed = create_algorithm("dll", copy.deepcopy(reference))
    settled = create_algorithm("dll", copy.deepcopy(reference), settle_steps=steps, eta_x=eta_x)
    settled.load_state_dict(closed.state_dict())
    x, y = sequence_batch()
    closed.compute_updates(x, y)
    settled.compute_updates(x, y)
    settled_params = dict(settled.named_parameters())
    for name, p in closed.named_parameters():
        torch.testing.assert_close(settled_params[name].grad, p.grad, rtol=0, atol=atol, msg=name)
    too_few = create_algorithm("dll", copy.deepcopy(reference), settle_steps=2, eta_x=1.0)
    too_few.load_state_dict(closed.state_dict())
    too_few.compute_updates(x, y)
    assert not torch.allclose(too_few.model.cell.W_x.weight.grad, closed.model.cell.W_x.weight.grad)


def input_weight_update(name: str, perturb: bool) -> torch.Tensor:
    """ΔW_x = Σ_t [ξ^h_t ⊙ f'(a_t)] x_tᵀ reveals ξ^h. W_y runs once, after the time loop; its
    forward hook perturbs W_y and W_h after the forward pass, before any error is computed."""
    model = small_rnn(seed=3)
    rule = create_algorithm(name, model, loss="mse")
    cell = model.cell

    def perturb_weights(*_):
        if perturb:  # .data: change the weights without autograd noticing, after the forward
            for layer in (cell.W_y, cell.W_h):
                layer.weight.data.add_(torch.randn_like(layer.weight))

    cell.W_y.register_forward_hook(perturb_weights)
    rule.compute_updates(*sequence_batch())
    return cell.W_x.weight.grad.clone()


@pytest.mark.parametrize("name", ["bp", "dll", "dll_fa"])
def test_c1_probe_for_the_rnn(name):
    from bioplausible.algorithms import ALGORITHMS

    unchanged = torch.equal(input_weight_update(name, False), input_weight_update(name, True))
    assert unchanged == ALGORITHMS.get(name).flags.no_weight_transport


def test_diagnostics_are_zero_with_tied_theta():
    """∠(Θ, W) and ∠(ΔW, BPTT's -∇W) for Θ_y and Θ_h: both vanish when Θ is tied to W."""
    rule = create_algorithm("dll", small_rnn())
    tie(rule)
    diagnostics = rule.epoch_diagnostics(*sequence_batch())
    angles = {"angle_theta_W/0", "angle_theta_W/1", "angle_update_grad/0", "angle_update_grad/1"}
    ratios = {"theta_norm_ratio/0", "theta_norm_ratio/1", "update_norm_ratio/0", "update_norm_ratio/1"}
    assert set(diagnostics) == angles | ratios
    assert max(diagnostics[k] for k in angles) < 1e-3
    assert all(diagnostics[k] == pytest.approx(1.0, abs=1e-5) for k in ratios)


def test_diagnostics_of_a_truncated_settle_compare_with_bptts_gradient():
    """settle_steps = 1: the reference stays BPTT's gradient (an independent BP rule), so W_h's
    ratio is the truncated update's norm over BPTT's, not 1."""
    reference = small_rnn()
    rule = create_algorithm("dll", copy.deepcopy(reference), settle_steps=1, eta_x=0.5)
    bp = create_algorithm("bp", copy.deepcopy(reference), loss=rule.hp.loss)
    tie(rule)
    x, y = sequence_batch()
    diagnostics = rule.epoch_diagnostics(x, y)
    assert rule.recurrent.settle_steps == 1
    rule.compute_updates(x, y)
    bp.compute_updates(x, y)
    for i, name in enumerate(["W_y", "W_h"]):
        update = getattr(rule.model.cell, name).weight.grad
        grad = getattr(bp.model.cell, name).weight.grad
        assert diagnostics[f"update_norm_ratio/{i}"] == pytest.approx((update.norm() / grad.norm()).item(), rel=1e-9)
    assert diagnostics["update_norm_ratio/0"] == pytest.approx(1.0, abs=1e-9)
    assert diagnostics["update_norm_ratio/1"] < 0.9

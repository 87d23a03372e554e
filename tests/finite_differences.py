"""Central finite differences shared by the gradient tests (imported as a plain module: the
tests folder is on sys.path under pytest's default import mode)."""
import numpy as np


def fd_grad(fun, x, eps=1e-6):
    """Central finite-difference gradient of a scalar function of the array x (any shape),
    float64: grad_p = (f(x + eps e_p) - f(x - eps e_p)) / (2 eps)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for p in range(flat.size):
        old = flat[p]
        flat[p] = old + eps
        fp = fun(x)
        flat[p] = old - eps
        fm = fun(x)
        flat[p] = old
        gflat[p] = (fp - fm) / (2 * eps)
    return grad

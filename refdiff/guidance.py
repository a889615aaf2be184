r"""Classifier guidance and classifier-free guidance, with exact ingredients for labelled mixtures.

A model is any callable ``f(x, t) -> array`` of x's shape. Guidance wraps
models into a new model of the same kind, a plain callable a sampler takes
like any other.

* :func:`classifier_guidance`:
  :math:`\tilde s=s(x_t)+\gamma\,\nabla_x\log p_t(y|x_t)`, in eps form
  :math:`\tilde\epsilon=\epsilon-\gamma\sigma_t\nabla_x\log p_t(y|x_t)`
  (Dhariwal & Nichol 2021, sec. 4.1-4.2, Algorithms 1-2; Song et al. 2021,
  sec. 5, conditional generation);
* :func:`classifier_free_guidance`:
  :math:`\tilde f=(1-\gamma)\,f(x_t)+\gamma\,f(x_t|y)` for f any of score,
  eps, x0, v (Ho & Salimans 2022, eq. 6);
* :class:`LabelledMixture`: a Gaussian mixture with a class per component,
  whose conditional laws, noisy classifier :math:`p_t(y|x_t)` and its
  gradient are exact at every t, so guidance can be checked to rounding.

Notation: :math:`\gamma` (no subscript, the argument ``gamma``) is the
guidance scale; :math:`\gamma_t` and :math:`\sigma_t` are the process's
``mean_coef`` and ``std``, as in :mod:`refdiff.param`.

Guidance scale conventions (PITFALLS 18). Here :math:`\gamma` multiplies the
classifier gradient, and

.. math::

    (1-\gamma)\,u+\gamma\,c \;=\; u+\gamma\,(c-u) \;=\; (1+w)\,c-w\,u \quad\text{with}\quad w=\gamma-1,

so :math:`\gamma` is the scale of the "u + scale (c - u)" convention
(diffusers' ``guidance_scale``, Dhariwal & Nichol's classifier scale s), and
Ho & Salimans' :math:`w` (eq. 6, :math:`(1+w)\,\epsilon(z,c)-w\,\epsilon(z)`)
is :math:`\gamma-1`. :math:`\gamma=0` is the unconditional model,
:math:`\gamma=1` the conditional one (Ho & Salimans' w = 0).

What guided sampling targets. By Bayes,
:math:`\nabla\log p_t(x|y)=\nabla\log p_t(x)+\nabla\log p_t(y|x)`, so with an
exact classifier both guidances give the same field

.. math::

    \tilde s_t=\nabla\log p_t(x)+\gamma\nabla\log p_t(y|x)
    =\nabla_x\log\big[p_t(x)^{1-\gamma}\,p_t(x|y)^{\gamma}\big],

and at :math:`\gamma=1` the exact conditional score. For
:math:`\gamma\ne1` it is, at each t separately, the score of the tilted
density :math:`p_t(x)^{1-\gamma}p_t(x|y)^\gamma/Z_t`; but that family is in
general *not* the diffusion of the tilted data law
:math:`p_0(x)^{1-\gamma}p_0(x|y)^\gamma/Z_0` (tilting and convolving with
the Gaussian kernel do not commute). Sampling with :math:`\tilde s_t` is
therefore not sampling a known sharpened distribution, and the reverse SDE
and the probability-flow ODE driven by it need not even share their
marginals; only :math:`\gamma\in\{0,1\}` is exact. Large :math:`\gamma`
also makes the ODE stiff (PITFALLS 20).

Prediction kinds. Every conversion of :mod:`refdiff.param` at fixed
:math:`(x_t,t)` is affine in the prediction, :math:`f=A_t\,s+B_t\,x_t`;
the classifier-free weights :math:`1-\gamma` and :math:`\gamma` sum to 1, so
the combination of any kind is the image of the combination of scores:
classifier-free guidance commutes with :func:`refdiff.param.convert` for
eps, x0, score and v alike. Classifier guidance adds a gradient instead and
does not commute: its term is :math:`A_t\gamma\nabla\log p_t(y|x)` in the
kind with slope :math:`A_t` (:math:`-\sigma_t` for eps), which
:func:`classifier_guidance` applies by going through the score.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .analytic import GaussianMixture
from .backend import as_float_array, device_of, namespace, to_numpy
from .param import PREDICTIONS, convert

__all__ = ["LabelledMixture", "classifier_free_guidance", "classifier_guidance"]

_KINDS = ("classifier", "cfg")


# ----------------------------------------------------------------- helpers
def _check_gamma(gamma) -> float:
    """The guidance scale as a finite float >= 0."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"gamma must be a real number >= 0, got {type(gamma).__name__} {gamma!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    return float(gamma)


def _check_prediction(prediction) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def _check_callable(fn, name):
    if not callable(fn):
        raise TypeError(f"{name} must be a callable f(x, t), got {type(fn).__name__}")


def _evaluate(fn, name, x, t):
    """``fn(x, t)``, checked to be a float array of x's shape."""
    out = as_float_array(fn(x, t), f"{name}(x, t)")
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"{name}(x, t) must return an array of x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
    return out


# ------------------------------------------------------------ the wrappers
def classifier_guidance(model, classifier_grad_fn, gamma, prediction: str = "score", process=None):
    r"""Classifier guidance: :math:`\tilde s(x_t,t)=s(x_t,t)+\gamma\,\nabla_x\log p_t(y|x_t)`.

    Dhariwal & Nichol 2021 (sec. 4.1, Algorithm 1: the mean shift
    :math:`s\Sigma\nabla\log p_\phi(y|x_t)` is this score shift times the
    step's variance; sec. 4.2, Algorithm 2: the eps form
    :math:`\hat\epsilon=\epsilon-\sqrt{1-\bar\alpha_t}\,\nabla\log p_\phi(y|x_t)`);
    Song et al. 2021, sec. 5 (conditional reverse SDE).

    Parameters
    ----------
    model : callable ``(x, t) -> array`` of x's shape
        The unconditional model, predicting ``prediction``.
    classifier_grad_fn : callable ``(x, t) -> array`` of x's shape
        :math:`\nabla_x\log p_t(y|x_t)`, with the label ``y`` bound in by the
        caller (e.g. :meth:`LabelledMixture.classifier_grad`).
    gamma : float >= 0
        Guidance scale; 0 gives ``model`` back, 1 the conditional model
        when the classifier is exact. See the module notes for what other
        values target.
    prediction : {"score", "eps", "x0", "v"}
        The kind ``model`` predicts and the guided model returns. For a
        kind other than score the prediction is converted to a score, shifted
        and converted back (:func:`refdiff.param.convert`), which is
        :math:`\tilde\epsilon=\epsilon-\gamma\sigma_t\nabla\log p_t(y|x_t)`
        for eps.
    process : DiscreteSchedule or SDE, optional
        Needed (only) when ``prediction`` is not ``"score"``.

    Returns
    -------
    callable ``(x, t) -> array``
        The guided model, of the same kind as ``model``.

    Raises
    ------
    TypeError
        If a model is not callable or ``gamma`` is not a real number.
    ValueError
        For a negative or non-finite ``gamma``, an unknown ``prediction``,
        a missing ``process``, or (at call time) an output not of x's shape.
    """
    _check_callable(model, "model")
    _check_callable(classifier_grad_fn, "classifier_grad_fn")
    gamma = _check_gamma(gamma)
    prediction = _check_prediction(prediction)
    if prediction != "score" and process is None:
        raise ValueError(f"classifier guidance of a {prediction!r} model needs the process (to convert through the score)")

    def guided(x, t):
        x = as_float_array(x, "x")
        pred = _evaluate(model, "model", x, t)
        grad = _evaluate(classifier_grad_fn, "classifier_grad_fn", x, t)
        if prediction == "score":
            return pred + gamma * grad
        score = convert(pred, prediction, "score", x, process, t)
        return convert(score + gamma * grad, "score", prediction, x, process, t)

    return guided


def classifier_free_guidance(uncond_fn, cond_fn, gamma, prediction: str = "score"):
    r"""Classifier-free guidance: :math:`\tilde f=(1-\gamma)\,f(x_t)+\gamma\,f(x_t|y)`.

    Ho & Salimans 2022, eq. 6, written :math:`(1+w)c-wu` there: here
    :math:`\gamma=1+w`, and equivalently :math:`\tilde f=u+\gamma(c-u)`
    (the diffusers convention, its ``guidance_scale`` being :math:`\gamma`).

    Parameters
    ----------
    uncond_fn, cond_fn : callable ``(x, t) -> array`` of x's shape
        The unconditional and the conditional model (label bound in by the
        caller), both predicting ``prediction``.
    gamma : float >= 0
        0 gives ``uncond_fn``, 1 gives ``cond_fn``.
    prediction : {"score", "eps", "x0", "v"}
        What both models predict. The combination is the same guided model
        in every kind: each conversion of :mod:`refdiff.param` is affine in
        the prediction and the weights sum to 1, so combining eps (or x0,
        or v) predictions equals converting the combined scores. The
        argument is checked and documents the models' kind; the arithmetic
        does not depend on it.

    Returns
    -------
    callable ``(x, t) -> array``
        The guided model, of the same kind as the inputs.

    Raises
    ------
    TypeError
        If a model is not callable or ``gamma`` is not a real number.
    ValueError
        For a negative or non-finite ``gamma``, an unknown ``prediction``,
        or (at call time) an output not of x's shape.
    """
    _check_callable(uncond_fn, "uncond_fn")
    _check_callable(cond_fn, "cond_fn")
    gamma = _check_gamma(gamma)
    _check_prediction(prediction)

    def guided(x, t):
        x = as_float_array(x, "x")
        u = _evaluate(uncond_fn, "uncond_fn", x, t)
        c = _evaluate(cond_fn, "cond_fn", x, t)
        return (1.0 - gamma) * u + gamma * c  # = u + gamma (c - u)

    return guided


# ---------------------------------------------------- exact ground truth
class LabelledMixture:
    r"""A Gaussian mixture whose components carry class labels: exact classifier and conditionals at any t.

    With component k in class :math:`c(k)`, the joint is
    :math:`p(x,y)=\sum_{k:c(k)=y}w_k\mathcal N(x;\mu_k,\Sigma_k)`, so

    .. math::

        p(y)=\sum_{c(k)=y}w_k,\qquad
        p_t(x|y)=\sum_{c(k)=y}\frac{w_k}{p(y)}\mathcal N(x;\gamma_t\mu_k,C_k),\qquad
        p_t(y|x)=\sum_{c(k)=y}p_t(k|x),

    with :math:`C_k=\gamma_t^2\Sigma_k+\sigma_t^2I` (labels are attached to
    :math:`x_0`, and diffusion acts on x only), and the noisy classifier's
    gradient is :math:`\nabla\log p_t(y|x)=\nabla\log p_t(x|y)-\nabla\log p_t(x)`.

    Parameters
    ----------
    mixture : GaussianMixture
    labels : int array_like, shape (K,)
        The class of each component. Every class must have positive weight.

    Attributes
    ----------
    mixture : GaussianMixture
    labels : ndarray of int64, shape (K,)
    classes : ndarray of int64, shape (C,)
        The distinct labels, sorted; column j of :meth:`class_posterior`
        and entry j of :meth:`class_prior` belong to ``classes[j]``.

    Methods taking ``(x, ..., process=None, t=None)`` evaluate at the data
    (t = 0) without a process and at the diffused marginal otherwise, as
    :class:`~refdiff.analytic.GaussianMixture` does; ``y`` is one int for
    every row or an int array of shape (N,), one label per row.
    """

    def __init__(self, mixture, labels):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        lab = np.asarray(to_numpy(labels))
        if lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"labels must be an integer array, got dtype {lab.dtype}")
        K = mixture.n_components
        if lab.shape != (K,):
            raise ValueError(f"labels must have shape (K,) = ({K},), one class per component, got {lab.shape}")
        lab = lab.astype(np.int64)
        classes = np.unique(lab)
        onehot = (lab[:, None] == classes[None, :]).astype(np.float64)  # (K, C)
        prior = mixture.weights @ onehot  # (C,)
        if np.any(prior <= 0):
            c = int(classes[np.argmin(prior)])
            raise ValueError(f"every class needs positive total weight; class {c} has weight 0")
        self.mixture, self.labels, self.classes = mixture, lab, classes
        self._onehot, self._prior = onehot, prior
        # sub-mixtures built once from the public attributes (a full-covariance one factorises its covs)
        self._conditionals = {}
        for j, c in enumerate(classes):
            idx = np.flatnonzero(lab == c)
            w = mixture.weights[idx] / prior[j]
            self._conditionals[int(c)] = GaussianMixture(w / w.sum(), mixture.means[idx], mixture.covs[idx])
        for a in (self.labels, self.classes, self._onehot, self._prior):
            a.flags.writeable = False

    @property
    def n_classes(self) -> int:
        return self.classes.shape[0]

    def __repr__(self):
        return f"LabelledMixture({self.mixture!r}, classes={self.classes.tolist()})"

    # ------------------------------------------------------------ labels
    def _check_y(self, y, n=None):
        """Host int64 labels: a 0-d array, or shape (n,) when per example; each a known class."""
        arr = np.asarray(to_numpy(y))
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"y must be an int or an int array of labels, got {type(y).__name__} of dtype {arr.dtype}")
        if arr.ndim > 1 or (arr.ndim == 1 and n is not None and arr.shape[0] != n):
            want = "a scalar or shape (N,)" if n is None else f"a scalar or shape ({n},)"
            raise ValueError(f"y must be {want} (one label per example), got shape {arr.shape}")
        unknown = np.setdiff1d(arr, self.classes)
        if unknown.size:
            raise ValueError(f"y must be one of the classes {self.classes.tolist()}, got {unknown[:5].tolist()}")
        return arr.astype(np.int64)

    def _per_class(self, x, y, fn):
        """Row i of ``fn(y_i, conditional(y_i))`` for each i, evaluating each needed class once on all rows."""
        y = self._check_y(y, x.shape[0])
        if y.ndim == 0:
            return fn(int(y), self._conditionals[int(y)])
        xp = namespace(x)
        out = None
        for c in np.unique(y):
            val = fn(int(c), self._conditionals[int(c)])  # (N,) or (N, D)
            mask = xp.asarray(y == c, device=device_of(x))
            mask = mask if val.ndim == 1 else mask[:, None]
            out = val if out is None else xp.where(mask, val, out)
        return out

    # ----------------------------------------------------------- queries
    def conditional(self, y) -> GaussianMixture:
        r"""The class-y data law :math:`p_0(x|y)`: the components of class y, weights renormalised by :math:`p(y)`."""
        y = self._check_y(y)
        if y.ndim != 0:
            raise ValueError(f"conditional takes one label, got shape {y.shape}")
        return self._conditionals[int(y)]

    def class_prior(self) -> np.ndarray:
        r""":math:`p(y)=\sum_{c(k)=y}w_k`, shape (C,), in the order of ``classes`` (float64)."""
        return self._prior.copy()

    def class_posterior(self, x, process=None, t=None):
        r""":math:`p_t(y|x)=\sum_{c(k)=y}p_t(k|x)`, shape (N, C); rows sum to 1."""
        r = self.mixture.component_posterior(x, process, t)  # (N, K)
        xp = namespace(r)
        return r @ xp.astype(xp.asarray(self._onehot, device=device_of(r)), r.dtype)

    def class_log_prob(self, x, y, process=None, t=None):
        r""":math:`\log p_t(y|x)=\log p_t(x|y)+\log p(y)-\log p_t(x)`, shape (N,).

        Computed from the two log-densities, so it stays finite where
        :math:`p_t(y|x)` underflows. At a point so far from every component
        that both densities underflow to 0 (log -inf), it is the log of
        :meth:`class_posterior` there, which the mixture forms from its
        quadratic forms scaled by a power of two.
        """
        x = as_float_array(x, "x")
        xp = namespace(x)
        log_prior = dict(zip(self.classes.tolist(), np.log(self._prior).tolist()))
        log_joint = self._per_class(x, y, lambda c, gm: gm.log_prob(x, process, t) + log_prior[c])
        log_p = self.mixture.log_prob(x, process, t)
        far = log_p == -math.inf
        with np.errstate(invalid="ignore"):  # -inf - -inf at the far points, replaced below
            out = log_joint - log_p
        if bool(xp.any(far)):
            y_rows = xp.asarray(self._check_y(y, x.shape[0]), device=device_of(x))
            classes = xp.asarray(self.classes, device=device_of(x))
            pick = xp.astype(xp.reshape(y_rows, (-1, 1)) == xp.reshape(classes, (1, -1)), out.dtype)  # (N or 1, C)
            post = xp.sum(self.class_posterior(x, process, t) * pick, axis=1)
            with np.errstate(divide="ignore"):  # a class with no weight left there: log 0 = -inf
                out = xp.where(far, xp.log(post), out)
        return out

    def classifier_log_prob_grad(self, x, y, process=None, t=None):
        r"""The exact noisy classifier's gradient, shape (N, D).

        :math:`\nabla_x\log p_t(y|x)=\nabla\log p_t(x|y)-\nabla\log p_t(x)`
        (Bayes; :math:`\log p(y)` does not depend on x).
        """
        x = as_float_array(x, "x")
        cond = self._per_class(x, y, lambda c, gm: gm.score(x, process, t))
        return cond - self.mixture.score(x, process, t)

    # ------------------------------------------------- models (x, t) -> f
    def _model(self, score_fn, process, prediction):
        """Bind ``score_fn(x, t)`` to ``process`` and return it as a ``prediction`` model."""
        if process is None:
            raise ValueError("a model needs a process (DiscreteSchedule or SDE) to evaluate p_t")
        prediction = _check_prediction(prediction)

        def model(x, t):
            x = as_float_array(x, "x")
            s = score_fn(x, t)
            return s if prediction == "score" else convert(s, "score", prediction, x, process, t)

        return model

    def uncond_model(self, process, prediction: str = "score"):
        r"""The exact unconditional model :math:`(x,t)\mapsto\nabla\log p_t(x)` (or its eps, x0, v)."""
        return self._model(lambda x, t: self.mixture.score(x, process, t), process, prediction)

    def cond_model(self, y, process, prediction: str = "score"):
        r"""The exact conditional model :math:`(x,t)\mapsto\nabla\log p_t(x|y)` (or its eps, x0, v)."""
        self._check_y(y)
        return self._model(lambda x, t: self._per_class(x, y, lambda c, gm: gm.score(x, process, t)), process, prediction)

    def classifier_grad(self, y, process):
        r"""The callable :math:`(x,t)\mapsto\nabla_x\log p_t(y|x)`, for :func:`classifier_guidance`."""
        self._check_y(y)
        if process is None:
            raise ValueError("classifier_grad needs a process (DiscreteSchedule or SDE) to evaluate p_t")
        return lambda x, t: self.classifier_log_prob_grad(x, y, process, t)

    def guided_model(self, y, gamma, process, kind: str = "classifier", prediction: str = "score"):
        r"""The exactly guided model :math:`\nabla\log p_t(x)+\gamma\nabla\log p_t(y|x)` (or its eps, x0, v).

        Parameters
        ----------
        y : int or int array (N,)
        gamma : float >= 0
        process : DiscreteSchedule or SDE
        kind : {"classifier", "cfg"}
            Built with :func:`classifier_guidance` from the unconditional
            model and the exact classifier, or with
            :func:`classifier_free_guidance` from the unconditional and
            conditional models. With exact ingredients both are the same
            field (module notes); they differ only in rounding.
        prediction : {"score", "eps", "x0", "v"}
            What the returned model predicts.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if kind == "cfg":
            score = classifier_free_guidance(self.uncond_model(process), self.cond_model(y, process), gamma)
        else:
            score = classifier_guidance(self.uncond_model(process), self.classifier_grad(y, process), gamma)
        return self._model(score, process, prediction)

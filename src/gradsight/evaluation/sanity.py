"""Sanity checks for saliency maps (Adebayo et al. 2018): does a map change when the weights are randomised?

Example:
    >>> import gradsight                                                                  # doctest: +SKIP
    >>> report = gradsight.sanity_check("efficientnet_lite0", methods=["gradient", "guided_backprop"])  # doctest: +SKIP
    >>> report.verdicts()                                                                 # doctest: +SKIP
    {'gradient': True, 'guided_backprop': False}

Model randomisation re-initialises the model's parameter blocks with their own initialisers, seeded, on a copy
(the user's model is never touched): "cascade" from the top (logits) down, one more block each step, as in
the paper; "independent" one block at a time. Each randomised map is compared with the original by the paper's
four similarities (``evaluation.similarity``). A method *depends on the weights* when the rank correlation of
|map| with the original, averaged over the randomisation steps and the images, is below ``threshold`` (0.5 by
default): the area under the similarity-against-depth curve, Quantus' ``return_average_correlation``. Not the
last step alone: on the embedded model guided backprop keeps its picture (Spearman >= 0.98) while the
classifier, the head and the last stage are randomised, and changes only when the lowest blocks are, so the
fully randomised model alone would call it weight-dependent; the average says what the paper's figure shows.
The data-randomisation counterpart here is the random-logit check: the map of a random other class against
the map of the explained class.

Each layer is re-drawn from its own random stream, named by the seed and the layer's path (PyTorch: each
module with ``reset_parameters``; Keras: each weight), so a block gets the same random weights in a cascade and
in an independent copy, whatever other blocks are listed. Parameters that no initialiser of their own reaches
(torchvision ConvNeXt's ``layer_scale``, a custom module's bare ``nn.Parameter``, MultiheadAttention's
``in_proj_weight``, a Keras LayerScale or Normalization layer; with the default blocks also the parameters in
no block, such as a ViT's ``class_token``) keep their values in every randomised copy: never silently, they
are listed in ``SanityReport.kept``, its JSON and figure, and announced by one ``UserWarning``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..adapters.discovery import adapter_for
from ..errors import BadInputError
from ..methods.attribute import attribute
from ..methods.registry import get_method
from ..methods.registry import method_options as checked_options
from ..models.registry import as_loaded_model
from .similarity import MEASURES, check_shapes, similarities

ORDERS = ("cascade", "independent")
DEFAULT_THRESHOLD = 0.5
OUTSIDE = "(outside the blocks)"  # the key in ``kept`` of parameters that belong to no block randomised


@dataclass(frozen=True, eq=False)
class SanityReport:
    """Similarities of randomised maps to the original ones, per method, randomisation step and image.

    ``steps``: the block randomised last at each step: cascade step s has blocks[:s + 1] randomised,
    independent step s only blocks[s];
    ``scores[method][measure]``: (steps, N) similarities; ``maps[method]``: (1 + steps, N, H, W), the original
    first; ``random_logit[method][measure]``: (N,) similarity of a random other class's map to the original;
    ``kept``: {block: names of its parameters that every randomised copy keeps as they were} (no initialiser
    re-draws them), with the default blocks also ``OUTSIDE``: the parameters in no block. Empty when every
    parameter was re-drawn.
    """

    model_name: str
    order: str
    methods: tuple[str, ...]
    blocks: tuple[str, ...]
    steps: tuple[str, ...]
    scores: dict[str, dict[str, np.ndarray]]
    maps: dict[str, np.ndarray]
    random_logit: dict[str, dict[str, np.ndarray]]
    random_classes: np.ndarray
    targets: np.ndarray
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, tuple[str, ...]] = field(default_factory=dict)
    photos: tuple = field(default=(), repr=False)

    def kept_note(self, limit: int = 4) -> str:
        """One sentence naming the parameters kept in every randomised copy; "" when there are none."""
        return kept_note(self.kept, limit)

    def final_similarity(self, method: str, measure: str = "spearman_abs") -> float:
        """Mean similarity over images after the last randomisation step."""
        return float(self.scores[method][measure][-1].mean())

    def mean_similarity(self, method: str, measure: str = "spearman_abs") -> float:
        """Similarity averaged over every randomisation step and image: what the verdict compares."""
        return float(self.scores[method][measure].mean())

    def verdicts(self) -> dict[str, bool]:
        """method -> True when its map depends on the weights (see the module docstring for the rule)."""
        return {m: self.mean_similarity(m) < self.threshold for m in self.methods}

    def as_dict(self) -> dict:
        steps = "cascade step (the top block, then one more each step)" if self.order == "cascade" else \
            "step (one block randomised at a time)"
        rule = (f"a method depends on the weights when the Spearman rank correlation of |map| with the original, "
                f"averaged over every {steps} and every image, is below {self.threshold:g}")
        if self.kept:
            rule += ". " + self.kept_note()
        return {
            "model": self.model_name, "order": self.order, "seed": self.seed, "blocks": list(self.blocks),
            "steps": list(self.steps), "targets": self.targets.tolist(), "options": self.options,
            "verdict_rule": rule,
            "kept_parameters": {block: list(names) for block, names in self.kept.items()},
            "verdicts": {m: {"depends_on_weights": bool(v), "mean_spearman_abs": self.mean_similarity(m),
                             "final_spearman_abs": self.final_similarity(m)} for m, v in self.verdicts().items()},
            "similarities": {m: {measure: {"mean": self.scores[m][measure].mean(axis=1).tolist(),
                                           "per_image": self.scores[m][measure].tolist()} for measure in MEASURES}
                             for m in self.methods},
            "random_logit": {"classes": self.random_classes.tolist(),
                             **{m: {k: v.tolist() for k, v in d.items()} for m, d in self.random_logit.items()}},
        }


def sanity_check(model: Any, images: Any = None, *, methods=("gradient", "guided_backprop", "grad_cam"),
                 order: str = "cascade", blocks: list[str] | None = None, seed: int = 0, target: Any = None,
                 threshold: float = DEFAULT_THRESHOLD, batch_size: int = 8, method_options: dict | None = None,
                 preprocess=None) -> SanityReport:
    """Model-randomisation test of every method in ``methods`` on ``images`` (default: the bundled photo).

    ``blocks``: the parameter blocks to randomise, top (logits) first; by default the adapter's own list of
    the model's blocks. ``method_options``: {method: {option: value}}. The explained class is the original
    model's prediction (or ``target``) at every step, so only the weights change.
    """
    if order not in ORDERS:
        raise BadInputError("order", expected=f"one of {', '.join(ORDERS)}", got=repr(order))
    methods = tuple([methods] if isinstance(methods, str) else methods)
    if not methods:
        raise BadInputError("methods", expected="at least one method name", got="none")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
        raise BadInputError("threshold", expected="a rank correlation between -1 and 1", got=repr(threshold))
    options = dict(method_options or {})
    strays = sorted(set(options) - set(methods))
    if strays:
        raise BadInputError("method_options", expected=f"options of the methods checked ({', '.join(methods)})",
                            got=f"options for {', '.join(repr(m) for m in strays)}", fix="add it to methods")
    for m in methods:  # every name and option is checked before the first map is computed
        checked_options(get_method(m), options.get(m, {}))
    loaded = as_loaded_model(model, preprocess=preprocess)
    adapter = adapter_for(loaded.module)
    defaulted = blocks is None
    if blocks is not None:
        blocks = tuple([blocks] if isinstance(blocks, str) else blocks)
        if not blocks:
            raise BadInputError("blocks", expected="at least one block to randomise", got="an empty list",
                                fix="leave blocks out to randomise every block of the model")
    else:
        blocks = tuple(adapter.parameter_blocks(loaded.module))
        if not blocks:
            raise BadInputError("model", expected="layers with parameters to re-initialise (each with an "
                                "initialiser of its own)", got="none in this model",
                                fix="name the blocks to randomise with blocks=[...]")
    # Every block is re-initialised once here, so a block that cannot be is refused before any map is computed;
    # this copy is the cascade's last step.
    everything = adapter.modified_copy(loaded.module, "reinit", layers=list(blocks), seed=seed)
    kept = {OUTSIDE if block == "" else block: tuple(names) for block, names in
            adapter.kept_parameters(loaded.module, list(blocks), outside=defaulted).items()}
    if kept:
        warnings.warn(f"gradsight sanity_check: {kept_note(kept)} They are listed in SanityReport.kept.",
                      UserWarning, stacklevel=2)
    # fast=False: BatchNorm folding is prepared once per model object and pays only when a model is reused;
    # every randomised copy is new (on ResNet50 folding made a step 3x slower). One path for all maps.
    originals = {m: attribute(loaded, images, method=m, target=target, batch_size=batch_size, fast=False,
                              **options.get(m, {})) for m in methods}
    first = originals[methods[0]]
    check_shapes(*(originals[m].maps.shape[1:] for m in methods))  # before the randomised maps, not after
    targets = first.targets
    # Step s randomises blocks[:s + 1] (cascade) or blocks[s] alone (independent); columns are named by blocks[s].
    steps = list(blocks)
    layer_sets = [blocks[:i + 1] for i in range(len(blocks))] if order == "cascade" else [(b,) for b in blocks]
    scores = {m: {k: np.zeros((len(steps), len(targets))) for k in MEASURES} for m in methods}
    maps = {m: [originals[m].maps] for m in methods}
    for s, layers in enumerate(layer_sets):
        randomised = everything if tuple(layers) == blocks else adapter.modified_copy(
            loaded.module, "reinit", layers=list(layers), seed=seed)
        copy = _like(loaded, randomised)
        for m in methods:
            result = attribute(copy, images, method=m, target=list(targets), batch_size=batch_size, fast=False,
                               **options.get(m, {}))
            maps[m].append(result.maps)
            for i in range(len(targets)):
                for k, v in similarities(originals[m].maps[i], result.maps[i]).items():
                    scores[m][k][s, i] = v
    classes = first.logits.shape[1]
    # One generator per (seed, target): an image's random class does not depend on the other images.
    random_classes = np.array([(t + 1 + np.random.default_rng([seed, int(t)]).integers(classes - 1)) % classes
                               for t in targets])
    random_logit = {}
    for m in methods:
        other = attribute(loaded, images, method=m, target=list(random_classes), batch_size=batch_size, fast=False,
                          **options.get(m, {}))
        random_logit[m] = {k: np.array([similarities(originals[m].maps[i], other.maps[i])[k]
                                        for i in range(len(targets))]) for k in MEASURES}
    return SanityReport(loaded.name, order, methods, blocks, tuple(steps), scores,
                        {m: np.stack(v) for m, v in maps.items()}, random_logit, random_classes, targets,
                        threshold, seed, {m: dict(originals[m].options) for m in methods}, kept, first.photos)


def kept_note(kept: dict[str, tuple[str, ...]], limit: int = 4) -> str:
    """One sentence naming the parameters that every randomised copy keeps; "" when there are none.

    Example:
        >>> kept_note({"features.1": ("features.1.0.layer_scale",)})[:52]
        "1 parameter keeps the model's values in every random"
    """
    names = [n for block in kept.values() for n in block]
    if not names:
        return ""
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    many = len(names) > 1
    return (f"{len(names)} parameter{'s keep' if many else ' keeps'} the model's values in every randomised copy "
            f"(no initialiser of {'their' if many else 'its'} own re-draws {'them' if many else 'it'}; in "
            f"{', '.join(kept)}): {shown}.")


def _like(loaded, module):
    from ..models.spec import LoadedModel

    return LoadedModel(module, loaded.spec)

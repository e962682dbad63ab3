"""How a training run on your own data sets up the model's preprocessing (:mod:`deepsets.nn.preprocess`).

* the transform per feature: ``--transform SPEC [FEATURE=SPEC ...]``; without it, FCS input gets ``arcsinh`` with
  cofactor 150 (flow cytometry) or 5 (mass cytometry, when the file's ``$CYT`` keyword or its channel names say
  so), any other input none;
* standardisation (unless ``--no-standardize``): each feature's mean and standard deviation over the training
  sets' elements (as training sees them: subsets of ``--set-size``), after the transform.

Both are stored in the model (its config and buffers), so a checkpoint, a Hub folder and an exported graph take
raw elements. The paper's tasks train as the paper did: no transform, no standardisation.
"""
from __future__ import annotations

from ..data import DataError
from ..nn.preprocess import describe, parse_transform

FLOW_COFACTOR, MASS_COFACTOR = 150, 5


def default_transform(base) -> tuple[str | None, str]:
    """``(spec, why)`` of the default transform for a training dataset."""
    reader = getattr(base, "reader", None)
    if type(reader).__name__ != "FCSFolderReader":
        return None, ""
    if getattr(reader, "mass_cytometry", False):
        return f"arcsinh:{MASS_COFACTOR}", "FCS files of a mass cytometer ($CYT / metal channel names)"
    return f"arcsinh:{FLOW_COFACTOR}", "FCS files of a flow cytometer (mass cytometry would get cofactor 5)"


def resolve_transform(given, feature_names, base=None) -> tuple[list[str] | None, str]:
    """Per-feature transform specs (``None``: no transform) and a note on where they come from.

    ``given``: ``None`` (the input's default), or specs: a bare ``SPEC`` for every feature, then ``FEATURE=SPEC``
    for single features (by name, or 0-based index)."""
    names = [str(n) for n in feature_names]
    if given is None:
        spec, why = default_transform(base) if base is not None else (None, "")
        return ([spec] * len(names) if spec else None), why
    if isinstance(given, str):
        given = given.split()
    every, single = None, {}
    for item in given:
        item = str(item)
        if "=" in item:
            feat, _, spec = item.rpartition("=")
            if feat in names:
                i = names.index(feat)
            elif feat.isdigit() and int(feat) < len(names):
                i = int(feat)
            else:
                raise DataError(f"--transform {item}: no feature {feat!r}; the features are "
                                f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
            parse_transform(spec)
            single[i] = spec
        else:
            if every is not None:
                raise ValueError(f"--transform: one SPEC for every feature, then FEATURE=SPEC; got {every!r} and "
                                 f"{item!r}")
            parse_transform(item)
            every = item
    specs = [single.get(i, every or "none") for i in range(len(names))]
    if all(parse_transform(s)[0] == "none" for s in specs):
        return None, "--transform"
    return specs, "--transform"


def fit_to_training_sets(model, train_set, limit: int = 2_000_000) -> int:
    """One pass over the training sets as training sees them (subsets of ``--set-size``): fit the model's
    standardisation on their elements (at most ``limit``), and record in ``model.config.trained_set_size`` the
    largest set the model is trained on. Returns that size."""
    pre = getattr(model, "preprocess", None)
    fit = pre is not None and pre.standardize
    used = largest = 0

    def sets():
        nonlocal used, largest
        for i in range(len(train_set)):
            x = train_set[i][0]
            largest = max(largest, len(x))
            if fit and used < limit:
                used += len(x)
                yield x

    if fit:
        pre.fit(sets())  # (reads every set: the sizes of those past the limit too)
    else:
        for _ in sets():
            pass
    if largest:
        model.config.trained_set_size = int(largest)
        for member in getattr(model, "members", []):
            member.config.trained_set_size = int(largest)
    return largest


def summary(specs, names, standardize: bool, why: str) -> str:
    what = describe(specs, names) if specs else "no transform"
    if why and specs:
        what += f" ({why})"
    return f"preprocessing: {what}" + (", then standardised (training elements' mean and s.d.)" if standardize
                                       else "")

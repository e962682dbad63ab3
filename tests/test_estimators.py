"""SetRegressor / SetClassifier follow scikit-learn's conventions: explicit constructor parameters, scikit-learn's
own get_params / set_params, the API checks of ``sklearn.utils.estimator_checks``; the checks that feed one 2-D
array are listed below with why they do not apply, and the conventions they test are checked here on sets."""
import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn import clone  # noqa: E402
from sklearn.utils import estimator_checks as ec  # noqa: E402

from deepsets import SetClassifier, SetRegressor  # noqa: E402

ESTIMATORS = (SetRegressor, SetClassifier)

#: the checks of ``sklearn.utils.estimator_checks`` that apply to estimators of sets: parameters, cloning, tags
RUN = ("check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types", "check_estimator_repr",
       "check_no_attributes_set_in_init", "check_estimators_unfitted", "check_do_not_raise_errors_in_init_or_set_params",
       "check_mixin_order", "check_parameters_default_constructible", "check_get_params_invariance",
       "check_set_params")

_2D = ("fits or predicts on one 2-D array X [samples, features]; X here is a list of sets [n_i, D], which no 2-D "
       "array is (fit raises DataError); the convention it tests is checked on sets in test_fit_on_sets_*")
_WEIGHTS = "fit takes no sample_weight (every set counts once, as in deepsets train)"
#: the checks left out, and why (everything scikit-learn runs on a 2-D regressor or classifier, less :data:`RUN`)
SKIPPED = {
    **dict.fromkeys((
        "check_dict_unchanged", "check_dont_overwrite_parameters", "check_estimators_overwrite_params",
        "check_estimators_fit_returns_self", "check_fit_check_is_fitted", "check_fit_idempotent",
        "check_n_features_in_after_fitting", "check_estimators_pickle", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_fit_score_takes_y", "check_pipeline_consistency",
        "check_regressors_train", "check_classifiers_train", "check_classifiers_classes",
        "check_regressor_multioutput", "check_supervised_y_no_nan", "check_regressors_int",
        "check_regressors_no_decision_function", "check_decision_proba_consistency"), _2D),
    **dict.fromkeys((
        "check_all_zero_sample_weights_error", "check_sample_weight_equivalence_on_dense_data",
        "check_sample_weight_equivalence_on_sparse_data", "check_sample_weights_list",
        "check_sample_weights_not_an_array", "check_sample_weights_not_overwritten",
        "check_sample_weights_pandas_series", "check_sample_weights_shape",
        "check_classifiers_one_label_sample_weights"), _WEIGHTS),
    **dict.fromkeys(("check_estimator_sparse_array", "check_estimator_sparse_matrix", "check_estimator_sparse_tag"),
                    "sparse matrices of samples: a set is a dense array of elements"),
    "check_array_api_input": "array API namespaces for 2-D arrays; the model runs in PyTorch on lists of sets",
    "check_estimators_dtypes": "casts a 2-D array to other dtypes; sets of any numeric dtype are read as float32",
    "check_f_contiguous_array_estimator": "memory layout of a 2-D array; each set is copied into a padded batch",
    "check_readonly_memmap_input": "read-only memory maps of a 2-D array; a set is copied into a padded batch",
    "check_fit2d_1sample": "a 2-D array of one sample; one set cannot be split into training and validation sets",
    "check_fit2d_1feature": "a 2-D array of one feature; sets of one feature are [n_i, 1] arrays (tested on sets)",
    "check_estimators_partial_fit_n_features": "no partial_fit: fit trains a new model",
    "check_non_transformer_estimators_n_iter": "no max_iter / n_iter_: the budget is epochs and max_steps",
    "check_positive_only_tag_during_fit": "a 2-D array with negative values; any real feature values are valid",
    "check_regressor_data_not_an_array": "2-D array-likes of samples; X is already a list (of sets)",
    "check_classifier_data_not_an_array": "2-D array-likes of samples; X is already a list (of sets)",
    "check_classifier_multioutput": "one label per set: a multi-output y is not a classification target here",
    "check_classifiers_one_label": "one class cannot train a classifier; fit raises a clear error (tested on sets)",
    "check_classifiers_regression_target": "continuous y on a 2-D X; the labels' type is checked on sets",
}


@pytest.mark.parametrize("check", RUN)
@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_scikit_learn_api_checks(cls, check):
    getattr(ec, check)(cls.__name__, cls())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_check_estimator_runs_what_applies_to_sets(cls):
    """Its input tags say X is not a 2-D array, so ``check_estimator`` runs only what needs no data, and passes."""
    results = ec.check_estimator(cls(), on_skip=None)
    assert results and all(r["status"] == "passed" for r in results), results


def test_every_check_left_out_is_named_with_its_reason():
    """Every check scikit-learn runs on a 2-D regressor or classifier is run above or listed in SKIPPED."""
    import warnings

    from sklearn.dummy import DummyClassifier, DummyRegressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = {ec._check_name(check) for est in (DummyRegressor(), DummyClassifier())
                 for _, check in ec.estimator_checks_generator(est, legacy=True, mark=None)}
    assert not set(RUN) & set(SKIPPED)
    missing = sorted(names - set(RUN) - set(SKIPPED))
    assert not missing, f"checks neither run nor justified in SKIPPED: {missing}"
    assert all(isinstance(v, str) and v for v in SKIPPED.values())


def _sets(n: int, seed: int, dim: int = 2):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.3, 3.0, n)
    return [rng.normal(size=(int(rng.integers(3, 12)), dim)).astype(np.float32) * s for s in scales], scales


QUICK = {"depth": 1, "dim": 8, "max_steps": 2, "batch_size": 8, "set_size": None}


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_fit_on_sets_follows_the_conventions(cls):
    """What the 2-D data checks test, on sets: fit returns the estimator, leaves its parameters (and their contents)
    as they were, sets only attributes ending in ``_``, ``n_features_in_``; a clone is unfitted with the same
    parameters; the fitted estimator pickles and predicts the same; ragged sets of one feature work."""
    X, scales = _sets(24, 0, dim=1)
    y = scales if cls is SetRegressor else np.where(scales > np.median(scales), "wide", "narrow")
    est = cls(**QUICK, model_options={}, transform=["none"])
    params = pickle.dumps(est.get_params())
    before = set(vars(est))
    assert est.fit(X, y) is est
    assert pickle.dumps(est.get_params()) == params
    assert all(k.endswith("_") for k in set(vars(est)) - before)
    assert est.n_features_in_ == 1
    fresh = clone(est)
    assert fresh.get_params() == est.get_params() and not hasattr(fresh, "module_")
    pred = est.predict(X[:5])
    assert len(pred) == 5
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(X[:5]), pred)
    if cls is SetClassifier:
        assert list(est.classes_) == ["narrow", "wide"]
        with pytest.raises(ValueError, match="class"):
            clone(est).fit(X, ["one"] * len(X))


def test_create_model_keywords_are_parameters():
    """The Set Transformer keywords and any other create_model keyword (``model_options``) reach the model."""
    X, scales = _sets(16, 1)
    reg = SetRegressor(model="settransformer++", heads=2, num_inducing=3, **QUICK).fit(X, scales)
    config = reg.module_.model.config
    assert (config.heads, config.num_inducing, config.dim, config.depth) == (2, 3, 8, 1)
    with pytest.raises(TypeError, match="unknown option"):
        SetRegressor(model_options={"no_such_option": 1}, **QUICK).fit(X, scales)

"""The exact (module, name) pairs a model file may name (DESIGN.md, "Model loading is safe by default").

The list was found empirically: every classifier family invaudit supports (binary, multiclass and
string labels; pipelines of scalers, PCA, PowerTransformer, QuantileTransformer and ufunc
FunctionTransformers; MLPs with every activation and solver; trees, forests, both gradient
boostings with their options) was fitted and pickled under protocols 3-5 and with ``joblib.dump``
(uncompressed, zlib, gzip, bz2, lzma), with scikit-learn 1.9.1 / numpy 2.4, 1.7.2 / numpy 2.3 and
1.5.2 / numpy 1.26, and every name the unpickler asked for was recorded. A handful of siblings of
recorded names that a user's option reaches (other SGD losses, other early-stopping scorers, a few
more invertible ufuncs) are added by hand and marked so.

Pairs are exact: ``("numpy", "log1p")`` allows that ufunc and nothing else from ``numpy``.
Nothing here may reach the import system, ``eval``/``exec``, attribute lookup by an arbitrary name
or the file system when called with arguments chosen by the file's author; ``builtins.getattr``
is needed by one scikit-learn wart and is therefore replaced by a restricted version (see
``BOUND_METHODS``).
"""

from __future__ import annotations

# numpy's array and scalar reconstruction, under numpy 2 (``numpy._core``) and numpy 1
# (``numpy.core``) spellings. Object-dtype arrays are allowed: their elements are unpickled by the
# same restricted unpickler, so each element is itself checked against this list.
_NUMPY = {
    ("numpy", "ndarray"),  # the subtype argument of _reconstruct; joblib's wrapper `subclass`
    ("numpy", "dtype"),
    ("numpy", "float64"),  # a type used as a parameter value (HGB's internal OrdinalEncoder)
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
}

# Random states kept by fitted estimators (MLP ``_random_state``, GB ``_rng``, a RandomState passed
# as ``random_state``, HGB's feature-subsampling Generator). The ctors only build a RandomState /
# Generator around a named or given bit generator.
_NUMPY_RANDOM = {
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
}

# Element-wise invertible ufuncs a FunctionTransformer may hold as func / inverse_func. numpy 2
# pickles a ufunc as ("numpy", name), numpy 1 as ("numpy.core._multiarray_umath", name).
# Recorded: log/exp, log1p/expm1, sqrt/square, arcsinh/sinh; added by hand: the rest.
_UFUNC_NAMES = (
    "log", "exp", "log1p", "expm1", "log2", "exp2", "sqrt", "square", "cbrt",
    "arcsinh", "sinh", "arctanh", "tanh", "negative", "reciprocal",
)
_UFUNCS = {
    (module, name)
    for name in _UFUNC_NAMES
    for module in ("numpy", "numpy.core._multiarray_umath", "numpy._core._multiarray_umath")
}

_JOBLIB = {
    # joblib.dump's placeholder for an array whose bytes follow in the file (read by our own code,
    # never by joblib's; see model_file._RestrictedNumpyUnpickler).
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
}

_ESTIMATORS = {
    # linear
    ("sklearn.linear_model._logistic", "LogisticRegression"),
    ("sklearn.svm._classes", "LinearSVC"),
    ("sklearn.linear_model._stochastic_gradient", "SGDClassifier"),
    ("sklearn.linear_model._ridge", "RidgeClassifier"),
    ("sklearn.discriminant_analysis", "LinearDiscriminantAnalysis"),
    ("sklearn.multiclass", "OneVsRestClassifier"),
    ("sklearn.multiclass", "_ConstantPredictor"),  # OvR column that is constant
    # pipelines and transforms
    ("sklearn.pipeline", "Pipeline"),
    ("sklearn.preprocessing._data", "StandardScaler"),
    ("sklearn.preprocessing._data", "MinMaxScaler"),
    ("sklearn.preprocessing._data", "MaxAbsScaler"),
    ("sklearn.preprocessing._data", "RobustScaler"),
    ("sklearn.preprocessing._data", "PowerTransformer"),
    ("sklearn.preprocessing._data", "QuantileTransformer"),
    ("sklearn.preprocessing._function_transformer", "FunctionTransformer"),
    ("sklearn.decomposition._pca", "PCA"),
    ("sklearn.preprocessing._label", "LabelEncoder"),
    ("sklearn.preprocessing._label", "LabelBinarizer"),  # MLP, OvR, RidgeClassifier
    # neural network
    ("sklearn.neural_network._multilayer_perceptron", "MLPClassifier"),
    ("sklearn.neural_network._stochastic_optimizers", "SGDOptimizer"),
    ("sklearn.neural_network._stochastic_optimizers", "AdamOptimizer"),
    # trees
    ("sklearn.tree._classes", "DecisionTreeClassifier"),
    ("sklearn.tree._classes", "ExtraTreeClassifier"),
    ("sklearn.tree._classes", "DecisionTreeRegressor"),  # GradientBoosting's stages
    ("sklearn.tree._tree", "Tree"),
    ("sklearn.ensemble._forest", "RandomForestClassifier"),
    ("sklearn.ensemble._forest", "ExtraTreesClassifier"),
    ("sklearn.ensemble._gb", "GradientBoostingClassifier"),
    ("sklearn.dummy", "DummyClassifier"),  # GradientBoosting's init_
    ("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", "HistGradientBoostingClassifier"),
    ("sklearn.ensemble._hist_gradient_boosting.binning", "_BinMapper"),
    ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
    # HGB with categorical features keeps a ColumnTransformer(OrdinalEncoder, FunctionTransformer(
    # partial(check_array, dtype=[np.float64]))); the column selector may be a slice.
    ("sklearn.compose._column_transformer", "ColumnTransformer"),
    ("sklearn.compose._column_transformer", "_RemainderColsList"),  # scikit-learn 1.5
    ("sklearn.preprocessing._encoders", "OrdinalEncoder"),
    ("sklearn.utils.validation", "check_array"),
    ("functools", "partial"),
    ("builtins", "slice"),
    # HGB early stopping with a scorer other than the loss keeps the scorer (accuracy recorded;
    # the other common classification scorings added by hand)
    ("sklearn.metrics._scorer", "_Scorer"),
    ("sklearn.metrics._classification", "accuracy_score"),
    ("sklearn.metrics._classification", "balanced_accuracy_score"),
    ("sklearn.metrics._classification", "f1_score"),
    ("sklearn.metrics._classification", "precision_score"),
    ("sklearn.metrics._classification", "recall_score"),
    ("sklearn.metrics._classification", "log_loss"),
    ("sklearn.metrics._ranking", "roc_auc_score"),
    ("sklearn.metrics._ranking", "average_precision_score"),
    # ... and a bound method of itself (see BOUND_METHODS)
    ("builtins", "getattr"),
}

# Loss and link objects (GradientBoosting, HistGradientBoosting, SGDClassifier).
_LOSSES = {
    ("sklearn._loss.loss", "HalfBinomialLoss"),
    ("sklearn._loss.loss", "HalfMultinomialLoss"),
    ("sklearn._loss.loss", "ExponentialLoss"),
    ("sklearn._loss.link", "LogitLink"),
    ("sklearn._loss.link", "HalfLogitLink"),
    ("sklearn._loss.link", "MultinomialLogit"),
    ("sklearn._loss.link", "Interval"),
    # SGDClassifier's loss function objects: scikit-learn >= 1.6 ...
    ("sklearn._loss._loss", "CyHalfSquaredError"),
    ("sklearn._loss._loss", "CyHuberLoss"),
    ("sklearn.linear_model._sgd_fast", "Hinge"),
    ("sklearn.linear_model._sgd_fast", "SquaredHinge"),
    ("sklearn.linear_model._sgd_fast", "ModifiedHuber"),
    ("sklearn.linear_model._sgd_fast", "EpsilonInsensitive"),
    ("sklearn.linear_model._sgd_fast", "SquaredEpsilonInsensitive"),
    # ... and <= 1.5
    ("sklearn.linear_model._sgd_fast", "Log"),
    ("sklearn.linear_model._sgd_fast", "Huber"),
    ("sklearn.linear_model._sgd_fast", "SquaredLoss"),
}
_CY_LOSSES = ("CyHalfBinomialLoss", "CyHalfMultinomialLoss", "CyExponentialLoss")
for _name in _CY_LOSSES:
    for _module in ("sklearn._loss._loss", "_loss"):
        _LOSSES.add((_module, _name))
        _LOSSES.add((_module, f"__pyx_unpickle_{_name}"))
del _name, _module

# Every classifier in ``sklearn.utils.all_estimators(type_filter="classifier")`` (scikit-learn 1.9.1),
# and the transformers people ship in a Pipeline, ColumnTransformer or FeatureUnion, with the
# sub-objects they pickle. Recorded by fitting each (binary and multiclass; meta-estimators around
# a LogisticRegression) and pickling at protocols 0-5 and with joblib.dump; the few marked
# "by hand" are siblings a user's option reaches. Compiled parts whose state scikit-learn trusts
# (libsvm arrays, KD/ball trees, trees) are checked after loading (model_file._check_fitted_state).
_CLASSIFIERS = {
    ("sklearn.calibration", "CalibratedClassifierCV"),
    ("sklearn.calibration", "_CalibratedClassifier"),
    ("sklearn.calibration", "_SigmoidCalibration"),
    ("sklearn.calibration", "_TemperatureScaling"),  # by hand: method="temperature" (its state: beta_)
    ("sklearn.frozen._frozen", "FrozenEstimator"),  # by hand: calibrating a fitted model (its state: estimator)
    ("sklearn.isotonic", "IsotonicRegression"),  # by hand: method="isotonic"
    ("sklearn.discriminant_analysis", "QuadraticDiscriminantAnalysis"),  # by hand
    ("sklearn.ensemble._bagging", "BaggingClassifier"),
    ("sklearn.ensemble._stacking", "StackingClassifier"),
    ("sklearn.ensemble._voting", "VotingClassifier"),
    ("sklearn.ensemble._weight_boosting", "AdaBoostClassifier"),
    ("sklearn.gaussian_process._gpc", "GaussianProcessClassifier"),
    ("sklearn.gaussian_process._gpc", "_BinaryGaussianProcessClassifierLaplace"),
    ("sklearn.linear_model._logistic", "LogisticRegressionCV"),
    ("sklearn.linear_model._passive_aggressive", "PassiveAggressiveClassifier"),
    ("sklearn.linear_model._perceptron", "Perceptron"),
    ("sklearn.linear_model._ridge", "RidgeClassifierCV"),
    ("sklearn.model_selection._classification_threshold", "TunedThresholdClassifierCV"),
    ("sklearn.model_selection._classification_threshold", "FixedThresholdClassifier"),  # by hand
    ("sklearn.metrics._scorer", "_CurveScorer"),
    ("sklearn.multiclass", "OneVsOneClassifier"),
    ("sklearn.multiclass", "OutputCodeClassifier"),
    ("sklearn.multioutput", "ClassifierChain"),
    ("sklearn.multioutput", "MultiOutputClassifier"),
    ("sklearn.naive_bayes", "BernoulliNB"),
    ("sklearn.naive_bayes", "CategoricalNB"),
    ("sklearn.naive_bayes", "ComplementNB"),
    ("sklearn.naive_bayes", "GaussianNB"),
    ("sklearn.naive_bayes", "MultinomialNB"),
    ("sklearn.neighbors._classification", "KNeighborsClassifier"),
    ("sklearn.neighbors._classification", "RadiusNeighborsClassifier"),
    ("sklearn.neighbors._nearest_centroid", "NearestCentroid"),
    ("sklearn.neighbors._kd_tree", "KDTree"),
    ("sklearn.neighbors._kd_tree", "newObj"),  # newObj(cls): only for these classes (checked)
    ("sklearn.neighbors._ball_tree", "BallTree"),  # by hand: algorithm="ball_tree"
    ("sklearn.neighbors._ball_tree", "newObj"),
    ("sklearn.metrics._dist_metrics", "newObj"),
    ("sklearn.semi_supervised._label_propagation", "LabelPropagation"),
    ("sklearn.semi_supervised._label_propagation", "LabelSpreading"),
    ("sklearn.semi_supervised._self_training", "SelfTrainingClassifier"),
    ("sklearn.svm._classes", "SVC"),
    ("sklearn.svm._classes", "NuSVC"),
    ("sklearn.utils._bunch", "Bunch"),  # StackingClassifier's named_estimators_
    ("sklearn.utils._metadata_requests", "MetadataRequest"),
    ("sklearn.utils._metadata_requests", "MethodMetadataRequest"),
}
# KNN's distance metrics (Euclidean recorded; the other built-in metrics by hand).
_CLASSIFIERS |= {("sklearn.metrics._dist_metrics", f"{name}Distance{bits}")
                 for name in ("Euclidean", "SEuclidean", "Manhattan", "Chebyshev", "Minkowski")
                 for bits in ("64", "32")}
# GaussianProcessClassifier's kernels (RBF, ConstantKernel, Product recorded; the rest by hand).
_CLASSIFIERS |= {("sklearn.gaussian_process.kernels", name) for name in (
    "ConstantKernel", "Product", "RBF", "Sum", "WhiteKernel", "Matern", "RationalQuadratic",
    "DotProduct", "ExpSineSquared", "Exponentiation")}

_TRANSFORMERS = {
    ("sklearn.impute._base", "SimpleImputer"),
    ("sklearn.impute._base", "MissingIndicator"),
    ("sklearn.impute._knn", "KNNImputer"),
    ("sklearn.preprocessing._encoders", "OneHotEncoder"),
    ("sklearn.preprocessing._target_encoder", "TargetEncoder"),
    ("sklearn.preprocessing._discretization", "KBinsDiscretizer"),
    ("sklearn.preprocessing._polynomial", "PolynomialFeatures"),
    ("sklearn.preprocessing._data", "Binarizer"),
    ("sklearn.preprocessing._data", "Normalizer"),
    ("sklearn.decomposition._truncated_svd", "TruncatedSVD"),
    ("sklearn.pipeline", "FeatureUnion"),
    ("sklearn.compose._column_transformer", "make_column_selector"),
    ("sklearn.feature_selection._variance_threshold", "VarianceThreshold"),
    ("sklearn.feature_selection._univariate_selection", "SelectKBest"),
    ("sklearn.feature_selection._univariate_selection", "SelectPercentile"),
    ("sklearn.feature_selection._univariate_selection", "SelectFpr"),
    ("sklearn.feature_selection._univariate_selection", "SelectFdr"),  # by hand
    ("sklearn.feature_selection._univariate_selection", "SelectFwe"),  # by hand
    ("sklearn.feature_selection._univariate_selection", "GenericUnivariateSelect"),
    ("sklearn.feature_selection._univariate_selection", "f_classif"),
    ("sklearn.feature_selection._univariate_selection", "chi2"),  # by hand
    ("sklearn.feature_selection._mutual_info", "mutual_info_classif"),
    ("sklearn.feature_selection._from_model", "SelectFromModel"),
    ("sklearn.feature_selection._rfe", "RFE"),
    ("sklearn.feature_selection._rfe", "RFECV"),  # by hand
    ("sklearn.feature_selection._sequential", "SequentialFeatureSelector"),  # by hand
}

# LightGBM and XGBoost scikit-learn wrappers (the ``boost`` extra), recorded by pickling binary and
# multiclass LGBMClassifier / XGBClassifier (lightgbm 4.7, xgboost 3.2; numeric and categorical
# features; early stopping) at protocols 0-5 and with joblib.dump. Each wrapper keeps its booster,
# and each booster pickles its model as data: LightGBM's Booster as the model text
# (``model_to_string``), XGBoost's as a bytearray of UBJSON (``XGBoosterSerializeToBuffer``). Their
# ``__setstate__`` hand that data to compiled parsers that trust node and feature indices, so the
# classes in ``STATE_ONLY`` may only be created empty (NEWOBJ / copy_reg) and given a state that
# model_file checks first (model_file._check_lightgbm_state / _check_xgboost_state); calling them
# with arguments (``Booster(model_file=...)`` reads a file) is refused.
_BOOSTERS = {
    ("lightgbm.sklearn", "LGBMClassifier"),
    ("lightgbm.basic", "Booster"),
    ("xgboost.sklearn", "XGBClassifier"),
    ("xgboost.core", "Booster"),
    # LightGBM's best_score: defaultdict(OrderedDict) (the factory is checked)
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    # XGBoost's model buffer at protocols 0-4: bytearray(bytes) / bytearray(str, "latin-1")
    # (the arguments are checked: bytearray(n) would allocate n bytes)
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    # XGBClassifier(callbacks=[...]) keeps its training callbacks (only used while fitting);
    # EvaluationMonitor keeps its logger, which may never be called while loading (NEVER_CALLED)
    ("xgboost.callback", "EarlyStopping"),
    ("xgboost.callback", "EvaluationMonitor"),
    ("xgboost.collective", "communicator_print"),
}

# Functions a model may hold as a value but that a pickle may not call (REDUCE) while loading.
NEVER_CALLED: frozenset[tuple[str, str]] = frozenset({("xgboost.collective", "communicator_print")})

STATE_ONLY: frozenset[tuple[str, str]] = frozenset({
    ("lightgbm.sklearn", "LGBMClassifier"),
    ("lightgbm.basic", "Booster"),
    ("xgboost.sklearn", "XGBClassifier"),
    ("xgboost.core", "Booster"),
})

# What protocols 0-2 need for ordinary objects and bytes (the unpickler checks each use:
# _reconstructor only builds an allowlisted class on object (or a dict subclass on dict),
# _codecs.encode only turns a str into latin-1 bytes, bytes() only makes b"").
_OLD_PROTOCOLS = {
    ("copy_reg", "_reconstructor"),
    ("__builtin__", "object"),
    ("__builtin__", "dict"),
    ("__builtin__", "slice"),
    ("__builtin__", "bytes"),
    ("_codecs", "encode"),
}

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    _NUMPY | _NUMPY_RANDOM | _UFUNCS | _JOBLIB | _ESTIMATORS | _LOSSES | _CLASSIFIERS
    | _TRANSFORMERS | _OLD_PROTOCOLS | _BOOSTERS
)

# scikit-learn 1.5 wheels name the Cython module ``sklearn._loss._loss`` as ``_loss`` in pickles
# (it registers itself under that name in sys.modules). We never import a top-level ``_loss``
# (a stray ``_loss.py`` on sys.path would run); allowed pairs are looked up in the real module.
MODULE_ALIASES: dict[str, str] = {"_loss": "sklearn._loss._loss"}

# ``builtins.getattr`` may only fetch these bound methods: (class module, class name, attribute).
# HistGradientBoosting's early stopping patches ``self._raw_predict`` and restores it as an
# instance attribute, so a fitted model with a scorer pickles ``getattr(model, "_raw_predict")``.
BOUND_METHODS: frozenset[tuple[str, str, str]] = frozenset({
    ("sklearn.ensemble._hist_gradient_boosting.gradient_boosting",
     "HistGradientBoostingClassifier", "_raw_predict"),
})

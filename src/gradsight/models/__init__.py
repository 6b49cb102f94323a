"""Models as users have them: named models with their preprocessing and class names, or any module.

``registry`` has the two loading verbs, ``load_model`` (names) and ``as_loaded_model`` (anything);
``factory`` resolves ``package.module:factory`` names, ``spec`` holds what a model needs besides its weights
(preprocessing, class names), ``names`` the names gradsight knows by itself and the seed CNN's layers,
``imagenet`` the ImageNet class names.
"""

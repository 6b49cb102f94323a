"""Models as users have them: named models with their preprocessing and class names, or any module.

``registry.load_model`` resolves names, ``spec`` holds what a model needs besides its weights (preprocessing,
class names), ``names`` the names gradsight knows by itself, ``imagenet`` the ImageNet class names.
"""

"""Training: the one loop, fine-tuning recipes, the cached model store and the built-in recipes.

- :mod:`.loop`: ``train_loop`` and the one weight-decay rule (``make_optimizer``)
- :mod:`.recipes`: ``Recipe``, ``register_recipe``, the cache-key hash with stable function identifiers
- :mod:`.sequence`, :mod:`.masked_pairs`: what a recipe trains (sequence heads; a masked LM on minimal pairs)
- :mod:`.store`: ``pretrained``, ``pretrained_info`` (train on first use, cache, lock)
- :mod:`.zoo`: the built-in ``sst2``, ``stsb`` and ``blimp`` recipes (importing this package registers them)
"""

from . import zoo
from .recipes import Recipe, get_recipe, list_recipes, register_recipe
from .store import cached_path, is_cached, pretrained, pretrained_info

__all__ = ["Recipe", "cached_path", "get_recipe", "is_cached", "list_recipes", "pretrained", "pretrained_info",
           "register_recipe", "zoo"]

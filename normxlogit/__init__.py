"""NormXLogit: token attribution for any transformer from one forward pass.

    import normxlogit as nx
    model, tokenizer = nx.pretrained("sst2")
    attrs = nx.explain(model, tokenizer, ["a gripping film .", "dull ."], method="normxlogit")

The package is layered; each layer imports only those below it: ``settings`` and ``models``; ``core`` (heads, inputs,
registry, explain, attribution); ``methods``; ``evaluation``; ``data``; ``training``; ``studies``; and on top this
facade and the CLI. Importing it registers every method and recipe.
"""

import warnings

# In a notebook without ipywidgets, tqdm.auto (imported by transformers and by us) falls back to the text progress bar,
# which is what the book wants, but first warns with a local path. Silence only that message.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

from . import methods, training  # noqa: E402,F401  (registers the methods and the recipes)
from .core.attribution import Attribution, load_attributions, save_attributions
from .core.explain import explain
from .core.heads import HEADS, HeadSpec, UnsupportedModelError, list_architectures, resolve_head
from .core.inputs import replacement_token_id
from .core.label_words import LabelWordHead, chat_template
from .core.registry import Batch, get_method, list_methods, register_method
from .data.evidence import evidence_data
from .evaluation.agreement import correlation_summary, layer_correlations, rank_correlations, token_table
from .evaluation.alignment import average_precision, dp, evaluate_alignment, layerwise_scores
from .evaluation.faithfulness import evaluate, evaluate_methods
from .evaluation.results import FaithfulnessResult, aopc_table
from .methods.occlusion import occlude
from .models import DEFAULT_MODEL, ModelLoadError, UntrainedHeadError, default_model_path, load_model
from .settings import cache_dir, pick, profile, resource
from .studies.readouts import layer_agreement, layer_readouts
from .training import pretrained, pretrained_info
from . import data, evaluation, settings, studies  # noqa: E402  (subpackages as nx.data, nx.evaluation, ...)
from .corpus import evaluate_dataset, explain_dataset, load_corpus, load_dataset_attributions, to_attributions
from .generation import (GenerationAttribution, GenerationFaithfulness, GenerationInvariantError, GenerationReport,
                         evaluate_generation, evaluate_generation_methods, explain_generation,
                         list_evaluation_methods, list_generation_methods, sentence_spans)

__version__ = "0.1.0"

__all__ = [
    "Attribution", "Batch", "DEFAULT_MODEL", "HEADS", "HeadSpec", "ModelLoadError", "UnsupportedModelError",
    "UntrainedHeadError",
    "cache_dir", "default_model_path", "explain", "get_method", "list_architectures", "list_methods",
    "load_attributions", "load_model", "methods", "pick", "profile", "register_method", "resolve_head", "resource",
    "save_attributions",
    # prompted causal LMs as classifiers (template=, label_words= in explain and evaluate)
    "LabelWordHead", "chat_template",
    # faithfulness
    "FaithfulnessResult", "aopc_table", "evaluate", "evaluate_methods",
    # layer-wise read-outs, rank agreement and occlusion
    "correlation_summary", "layer_agreement", "layer_correlations", "layer_readouts", "occlude", "rank_correlations",
    "replacement_token_id", "token_table",
    # layer-wise evidence alignment on BLiMP
    "average_precision", "dp", "evaluate_alignment", "evidence_data", "layerwise_scores",
    # models
    "pretrained", "pretrained_info",
    # subpackages
    "data", "evaluation", "settings", "studies", "training",
    # corpus scale
    "evaluate_dataset", "explain_dataset", "load_corpus", "load_dataset_attributions", "to_attributions",
    # generations of causal LMs
    "GenerationAttribution", "GenerationInvariantError", "explain_generation", "list_generation_methods",
    # sources, citations and the faithfulness of generation attributions
    "GenerationFaithfulness", "GenerationReport", "evaluate_generation", "evaluate_generation_methods",
    "list_evaluation_methods", "sentence_spans",
]

"""NormXLogit: token attribution for any transformer from one forward pass.

    import normxlogit as nx
    model, tokenizer = nx.pretrained("sst2")
    attrs = nx.explain(model, tokenizer, ["a gripping film .", "dull ."], method="normxlogit")
"""

from . import methods, occlusion, value_zeroing  # these register leave_one_out, value_zeroing
from .attribution import Attribution, load_attributions, save_attributions
from .explain import explain
from . import baselines  # registers gradient_norm, grad_x_input, integrated_gradients, random
from .faithfulness import FaithfulnessResult, aopc_table, evaluate, evaluate_methods
from .heads import HEADS, HeadSpec, UnsupportedModelError, list_architectures, resolve_head
from .layers import (correlation_summary, layer_agreement, layer_correlations, layer_readouts, rank_correlations,
                     token_table)
from .methods import Batch, get_method, list_methods, register_method
from .models import DEFAULT_MODEL, ModelLoadError, default_model_path, load_model
from .occlusion import occlude, replacement_token_id
from .settings import cache_dir, pick, profile
from . import blimp_model, evidence  # blimp_model registers the "blimp" fine-tuning recipe
from .blimp_model import evidence_data
from .evidence import average_precision, dp, evaluate_alignment, layerwise_scores
from .finetune import pretrained, pretrained_info
from .generation import GenerationAttribution, GenerationInvariantError, explain_generation, list_generation_methods

__version__ = "0.1.0"

__all__ = [
    "Attribution", "Batch", "DEFAULT_MODEL", "HEADS", "HeadSpec", "ModelLoadError", "UnsupportedModelError",
    "cache_dir", "default_model_path", "explain", "get_method", "list_architectures", "list_methods",
    "load_attributions", "load_model", "methods", "pick", "profile", "register_method", "resolve_head",
    "save_attributions",
    # chapter 4: baselines and faithfulness
    "FaithfulnessResult", "aopc_table", "baselines", "evaluate", "evaluate_methods",
    # chapter 3: layer-wise read-outs and leave-one-out occlusion
    "correlation_summary", "layer_agreement", "layer_correlations", "layer_readouts", "occlude", "rank_correlations",
    "replacement_token_id", "token_table",
    # chapter 5: layer-wise evidence alignment on BLiMP
    "average_precision", "dp", "evaluate_alignment", "evidence", "evidence_data", "layerwise_scores",
    "pretrained", "pretrained_info",
    # chapter 6: generations of causal LMs
    "GenerationAttribution", "GenerationInvariantError", "explain_generation", "list_generation_methods",
]

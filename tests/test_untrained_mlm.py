"""Loading MiniLM as a masked LM before fine-tuning: the new head's names are returned, not warned about."""

from transformers.utils import logging as hf_logging

from normxlogit.training.masked_pairs import check_mlm_head, untrained_mlm


def test_untrained_mlm_returns_the_new_head_quietly(capfd):
    verbosity = hf_logging.get_verbosity()
    model, new = untrained_mlm()
    assert "newly initialized" not in capfd.readouterr().err
    assert hf_logging.get_verbosity() == verbosity  # the caller's logging is left as it was
    assert new and all(name.startswith("cls.predictions.") for name in new)
    assert "cls.predictions.transform.dense.weight" in new
    check_mlm_head(model)  # the decoder is tied to the word embeddings
    assert not model.training
